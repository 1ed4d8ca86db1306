//! The upstream side: connections to registries, token realms and CDNs.
//!
//! Each worker owns one [`Upstreams`]: its resolver cache, its TLS client
//! configs and its idle-connection pool. Nothing here is shared across
//! threads, so nothing here locks.

mod connect;
mod dns;
mod drain;
mod exchange;
mod io;
mod pool;
mod trust;
mod upload;

pub use crate::wire::http::RespFraming;
pub use exchange::{Exchange, ResponseHead};
pub use io::UpstreamIo;
pub use pool::{Conn, PoolKey, Upstreams};
pub use trust::{Trust, TrustKey};
pub use upload::SendFileError;
