//! ocirelay: a thread-per-core io_uring mirror for Docker Hub and other OCI
//! registries.

pub mod config;
pub mod conn;
pub mod error;
pub mod landing;
pub mod ops;
pub mod pull;
pub mod relay;
pub mod route;
pub mod server;
pub mod tls;
pub mod token;
pub mod upstream;
pub mod wire;
pub mod worker;
