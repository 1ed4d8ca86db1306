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
use crate::ops::metrics::ListenerKind;
use crate::wire::addr::{forwarded_client, ClientAddr};
use crate::wire::http::{name_eq, RequestHead};

/// Where a client connection came in, and who the client is.
#[derive(Debug, Clone, Copy)]
pub struct ClientCtx {
    /// Which listener: a public one (plain or TLS) or the operator's.
    pub listener: ListenerKind,
    /// The client socket, for an abortive close (see [`Outcome::Abort`]).
    pub fd: std::os::fd::RawFd,
    /// The client: the TCP peer, or whom a trusted proxy says it forwards
    /// (its PROXY header, for the connection; `X-Forwarded-For`, for one
    /// request: see [`ClientCtx::for_request`]). Everything that names or
    /// counts clients uses this.
    pub client: ClientAddr,
    pub local: SocketAddr,
}

impl ClientCtx {
    /// The context of one request on this connection: when the connection
    /// comes from a trusted proxy, the client its `X-Forwarded-For` names
    /// (see [`forwarded_client`]); otherwise the connection's own. With no
    /// `trusted_proxies` this is one emptiness check.
    pub fn for_request(&self, cfg: &Config, head: &RequestHead<'_>) -> ClientCtx {
        if cfg.trusted_proxies.is_empty() || !cfg.trusts(self.client.ip) {
            return *self;
        }
        let last_first = head
            .headers
            .iter()
            .rev()
            .filter(|h| name_eq(h.name, "x-forwarded-for"))
            .map(|h| h.value);
        match forwarded_client(last_first, |ip| cfg.trusts(ip)) {
            Some(client) => ClientCtx { client, ..*self },
            None => *self,
        }
    }

    /// The base URL the client used to reach us (`public_url` wins), e.g.
    /// `https://mirror.example.com` — realms handed out are built on it.
    pub fn base_url(&self, cfg: &Config, host: Option<&str>) -> String {
        if let Some(u) = &cfg.public_url {
            return u.origin.to_string();
        }
        let scheme = if self.listener == ListenerKind::Https {
            "https"
        } else {
            "http"
        };
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
