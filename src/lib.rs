//! ocirelay: a thread-per-core io_uring mirror for Docker Hub and other OCI
//! registries.
//!
//! The data path, in the order a request meets it:
//! `server` (workers, listeners, accept) -> `conn` (HTTP/1.1 connection loop,
//! `http` parsing) -> `router` (what is asked) -> `registry` (which upstream)
//! -> `proxy` / `token` (headers, redirects, challenges) -> `upstream` (pools,
//! TLS, exchange) -> `relay` (streaming the body back) -> `conn` (next
//! request). Cross-cutting: `config`, `tls`, `auth`, `names`, `url`, `error`.

pub mod access_log;
pub mod auth;
pub mod config;
pub mod conn;
pub mod error;
pub mod http;
pub mod landing;
pub mod names;
pub mod proxy;
pub mod registry;
pub mod relay;
pub mod router;
pub mod server;
pub mod tls;
pub mod tls_record;
pub mod tls_stream;
pub mod token;
pub mod upstream;
pub mod url;
pub mod worker;
