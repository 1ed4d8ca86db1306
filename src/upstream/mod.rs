//! The upstream side: connections to registries, token realms and CDNs.
//!
//! Each worker owns one [`Upstreams`]: its resolver cache, its TLS client
//! configs and its idle-connection pool. Nothing here is shared across
//! threads, so nothing here locks.

mod connect;
mod dns;
mod exchange;
mod io;
mod pool;

pub use exchange::{Exchange, RespFraming, ResponseHead};
pub use io::UpstreamIo;
pub use pool::{Conn, PoolKey, TrustId, Upstreams};
