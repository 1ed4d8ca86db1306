//! TLS on both ends of a relay: rustls does the handshake; the data phase is
//! ocirelay's own record layer (see `docs/design.md`, "TLS").
//!
//! - `config`: server and client configs, certificate and key loading.
//! - `certstore`: [`CertStore`], the hot-swappable certificate of ACME
//!   listeners (and their TLS-ALPN-01 answers).
//! - `handshake`: rustls driven through our buffers, then the switch to ours;
//! - `stream`: a [`stream::TlsStream`] in the data phase over monoio's TCP
//!   stream: reading and opening records, sealing and writing;
//! - `inbound`: the receiving state machine (records in; alerts, tickets
//!   and the peer's key updates handled), without I/O;
//! - `control`: control message codes, our key updates;
//! - `reseal`: another stream's records re-encrypted in place (relays);
//! - `error`: [`error::TlsError`].
//! - `record`: the record cipher (seal/open in place, sequence numbers).

pub mod certstore;
pub mod config;
mod control;
pub mod error;
mod handshake;
pub mod inbound;
pub mod record;
mod reseal;
mod slots;
pub mod stream;

pub use certstore::{certified_key, challenge_key, CertStore, ACME_TLS_ALPN};
pub use config::{
    client_config, load_certs, load_server, server_config, MaterialError, ServerCerts,
    ServerMaterial,
};
