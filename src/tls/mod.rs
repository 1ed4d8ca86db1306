//! TLS on both ends of a relay: rustls does the handshake; the data phase is
//! ocirelay's own record layer (see `docs/design.md`, "TLS").
//!
//! - `config`: server and client configs, certificate and key loading.
//! - `stream`: a [`stream::TlsStream`] over monoio's TCP stream: handshake,
//!   data phase, control messages, in-place reseal.
//! - `record`: the record cipher (seal/open in place, sequence numbers).

pub mod config;
pub mod record;
pub mod stream;

pub use config::{client_config, load_certs, load_server, server_config, ServerMaterial};
