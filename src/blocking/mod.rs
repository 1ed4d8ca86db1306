//! I/O that blocks its thread: for the commands (`ocirelay cache warm`) and
//! background threads (ACME), never for a worker, whose runtime would stall.
//!
//! - `http`: a small HTTP/1.1 client over std::net and rustls.

pub mod http;
