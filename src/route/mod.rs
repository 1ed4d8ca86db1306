//! What is asked, and of whom: `classify` turns a method and path into a
//! [`classify::Route`]; `registry` picks the upstream registry (by host,
//! `?ns=`, path prefix or default) and the repository's upstream name.

pub mod classify;
pub mod registry;
