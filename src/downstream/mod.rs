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

pub use body::{BodyDeadline, BodyError, PendingBody};
pub use metered::Metered;
pub use reply::Reply;

use crate::config::Config;
use crate::ops::metrics::ListenerKind;
use crate::wire::addr::{forwarded_client, ClientAddr};
use crate::wire::http::{name_eq, HostPort, RequestHead};

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

    /// The base URL the client used to reach us, e.g.
    /// `https://mirror.example.com`: realms handed out and the landing page
    /// are built on it, so a client's Host must not choose where other
    /// clients are sent. `public_url` wins; where the config names its hosts
    /// (`domain`, registries' `hosts`), a Host naming one of them is used
    /// as sent and any other gets `domain` when there is one (a registry's
    /// `hosts` select that registry, so none stands for the mirror); otherwise
    /// the Host (checked at parse time: a plain `host[:port]`), or the local
    /// address for an HTTP/1.0 client without.
    pub fn base_url(&self, cfg: &Config, host: Option<&str>) -> String {
        if let Some(u) = &cfg.public_url {
            return u.origin.to_string();
        }
        let scheme = if self.listener == ListenerKind::Https {
            "https"
        } else {
            "http"
        };
        let named = cfg
            .domain
            .iter()
            .map(String::as_str)
            .chain(cfg.host_routes.iter().map(|r| r.host.as_str()));
        let mut named = named;
        let asked = host.and_then(HostPort::parse);
        if let Some(h) = asked {
            let name = h.host.strip_suffix('.').unwrap_or(h.host);
            if named.any(|n| n.eq_ignore_ascii_case(name)) {
                return format!("{scheme}://{}", host.unwrap_or(name));
            }
        }
        // Only `domain` stands for the mirror as a whole. A registry's
        // `hosts` each select that registry: a realm on one of them, handed
        // to a client of another registry, would fetch the other's token.
        // Without a domain, the client's Host (checked at the head).
        let Some(canonical) = cfg.domain.as_deref() else {
            return match host {
                Some(h) => format!("{scheme}://{h}"),
                None => format!("{scheme}://{}", self.local),
            };
        };
        let default_port = if scheme == "https" { 443 } else { 80 };
        match self.local.port() {
            p if p == default_port => format!("{scheme}://{canonical}"),
            p => format!("{scheme}://{canonical}:{p}"),
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
