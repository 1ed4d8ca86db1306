//! The client end of a request: where the connection came from
//! ([`ClientCtx`]), what the connection does after the response
//! ([`Outcome`]), the request body ([`body::PendingBody`]), the counting
//! stream ([`metered::Metered`]) and [`reply::Reply`], the one writer of
//! response heads and small bodies, which also makes the keep-alive
//! decision.

pub mod body;
pub mod metered;
pub mod reply;

use std::net::SocketAddr;

pub use body::{BodyError, PendingBody};
pub use metered::Metered;
pub use reply::Reply;

use crate::config::Config;
use crate::wire::addr::ClientAddr;

/// Where a client connection came in, and who the client is.
#[derive(Debug, Clone, Copy)]
pub struct ClientCtx {
    pub tls: bool,
    /// The client socket, for an abortive close (see [`Outcome::Abort`]).
    pub fd: std::os::fd::RawFd,
    /// The client. Everything that names or counts clients uses this.
    pub client: ClientAddr,
    pub local: SocketAddr,
}

impl ClientCtx {
    /// The base URL the client used to reach us (`public_url` wins), e.g.
    /// `https://mirror.example.com` — realms handed out are built on it.
    pub fn base_url(&self, cfg: &Config, host: Option<&str>) -> String {
        if let Some(u) = &cfg.public_url {
            return u.origin.to_string();
        }
        let scheme = if self.tls { "https" } else { "http" };
        match host {
            Some(h) => format!("{scheme}://{h}"),
            None => format!("{scheme}://{}", self.local),
        }
    }
}

/// What the connection does after a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    KeepAlive,
    Close,
    /// Reset the connection: a body already under way failed, and for a
    /// close-delimited body an orderly close would make a truncated (or
    /// unverified) body look complete.
    Abort,
}
