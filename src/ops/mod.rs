//! What an operator reads: the access log (one line per request) and the
//! event log (levelled lines on stderr), and the escaping both use for
//! what clients sent.

pub mod access_log;
pub mod escape;
pub mod log;
pub mod summary;
