//! What an operator reads: the access log (one line per request) and the
//! event log (levelled lines on stderr).

pub mod access_log;
pub mod log;
pub mod summary;
