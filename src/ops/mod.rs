//! What an operator reads: the access log (one line per request), the
//! event log (levelled lines on stderr), the escaping both use for what
//! clients sent, the metrics (per-worker counters, summed when scraped)
//! and the health state behind `/readyz`.

pub mod access_log;
pub mod escape;
pub mod health;
pub mod log;
pub mod metrics;
pub mod summary;
pub mod tier;
