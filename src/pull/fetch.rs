//! The fetch phase: one request upstream, redirects followed here (a CDN's
//! 307 included), credentials only ever sent to the origin they were given
//! for. Shared by registry requests and the token endpoint. Each exchange
//! is counted here, for the registry it was made for: its status, the
//! rate limit it announced, its failure, the redirects followed, the time
//! to the final head; and whether the upstream answered, for `/readyz`.

use std::time::Instant;

use crate::config::RegistryId;
use crate::error::UpstreamError;
use crate::ops::health::UpstreamFailure;
use crate::upstream::{Conn, Exchange, ResponseHead};
use crate::wire::addr::is_private;
use crate::wire::method::Method;
use crate::wire::oci::ratelimit_remaining;
use crate::wire::url::{Origin, Scheme, Url};
use crate::worker::Worker;

/// Redirect hops followed before giving up (clients allow 10 as well).
pub const MAX_REDIRECTS: usize = 10;

/// Redirect bodies up to this size are read to keep their connection.
const MAX_DRAINED: u64 = 64 * 1024;

/// A request ocirelay sends upstream, possibly across redirects.
#[derive(Clone)]
pub struct Fetch<'a> {
    pub method: Method,
    pub url: Url,
    /// The registry this is for: the trust its upstream (and its realm and
    /// redirects) is verified with, and the label it is counted under.
    pub registry: RegistryId,
    pub headers: Vec<(&'a str, &'a [u8])>,
    /// Sent only to `auth_origin`, never to a redirect target elsewhere.
    pub authorization: Option<&'a [u8]>,
    pub body: Option<&'a [u8]>,
}

/// What a fetch brought back: the connection with the response head read
/// (the body still on it), and the URL that answered.
pub struct Fetched {
    pub conn: Conn,
    pub head: ResponseHead,
    pub url: Url,
    /// The status the first origin (the one asked) answered with, before
    /// any redirect: what the registry itself said.
    pub first_status: u16,
}

impl Fetched {
    /// The registry itself granted the request: it answered 200, or sent
    /// the client to its storage with a 307/308 (distribution's blob
    /// redirect), and the final answer is a 200. A 301/302/303 chain (a
    /// login page, say) proves nothing about access.
    pub fn granted(&self) -> bool {
        self.head.status == 200 && matches!(self.first_status, 200 | 307 | 308)
    }
}

/// Sends `f`, following up to [`MAX_REDIRECTS`] redirects with the method,
/// headers and query string kept, and credentials dropped whenever the
/// target is not the origin they were given for.
pub async fn fetch(w: &Worker, f: Fetch<'_>) -> Result<Fetched, UpstreamError> {
    let reg = w.reg_label(f.registry);
    let started = Instant::now();
    let fetched = follow(w, f).await;
    match &fetched {
        Ok(_) => w.metrics.upstream_time(reg, started.elapsed()),
        Err(e) => w.metrics.upstream_error(reg, UpstreamFailure::of(e)),
    }
    fetched
}

/// [`fetch`]'s exchanges, hop by hop.
async fn follow(w: &Worker, mut f: Fetch<'_>) -> Result<Fetched, UpstreamError> {
    let reg = w.reg_label(f.registry);
    // The origin the credentials were given for, kept once a redirect
    // leaves it (until then it is `f.url`'s).
    let mut auth_origin: Option<Origin> = None;
    let own_headers = f.headers.len();
    let mut first_status = None;
    for hop in 0..=MAX_REDIRECTS {
        f.headers.truncate(own_headers);
        if let Some(a) = f.authorization {
            if auth_origin.as_ref().is_none_or(|o| f.url.origin == *o) {
                f.headers.push(("Authorization", a));
            }
        }
        let ex = Exchange {
            method: f.method,
            url: &f.url,
            trust: w.trust(f.registry),
            headers: &f.headers,
            body: f.body,
            read_timeout: None,
        };
        let (conn, head) = w.upstreams.send(&ex).await?;
        let remaining = head
            .header(&conn, "ratelimit-remaining")
            .and_then(ratelimit_remaining);
        w.metrics.upstream_answer(reg, head.status, remaining);
        let first = *first_status.get_or_insert(head.status);
        let location = match head.status {
            301 | 302 | 303 | 307 | 308 => head.header(&conn, "location").map(<[u8]>::to_vec),
            _ => None,
        };
        let Some(location) = location else {
            return Ok(Fetched {
                conn,
                head,
                url: f.url,
                first_status: first,
            });
        };
        if hop == MAX_REDIRECTS {
            break;
        }
        let location = String::from_utf8(location).map_err(|_| UpstreamError::Redirect {
            reason: "redirect Location is not text".into(),
        })?;
        let next = f.url.join(&location).map_err(|e| UpstreamError::Redirect {
            reason: format!("bad redirect Location: {e}"),
        })?;
        if next.origin.scheme == Scheme::Http
            && f.url.origin.scheme == Scheme::Https
            && !w.cfg.debug
        {
            return Err(UpstreamError::Redirect {
                reason: "refusing a redirect from https to plain http".into(),
            });
        }
        if !may_redirect_to(w, f.registry, &next.origin).await {
            return Err(UpstreamError::Redirect {
                reason: format!(
                    "refusing a redirect to {}, a private address (redirect_private = false)",
                    next.origin.host
                ),
            });
        }
        release_after(w, conn, &head, MAX_DRAINED).await;
        if head.status == 303 && f.method != Method::Head {
            f.method = Method::Get;
            f.body = None;
        }
        if auth_origin.is_none() {
            auth_origin = Some(f.url.origin.clone());
        }
        w.metrics.redirect(reg);
        f.url = next;
    }
    Err(UpstreamError::Redirect {
        reason: format!("more than {MAX_REDIRECTS} redirects"),
    })
}

/// Whether registry `reg`'s redirects may lead to `to`: always when its
/// `redirect_private` allows it (by default, when its own upstream is at a
/// private address); otherwise only when no address `to` resolves to is
/// private (loopback, RFC 1918, link-local: the mirror's own network and a
/// cloud's metadata service). The resolver's cache makes the connect that
/// follows use the addresses checked here.
async fn may_redirect_to(w: &Worker, reg: RegistryId, to: &Origin) -> bool {
    let registry = w.cfg.registry(reg);
    let resolver = &w.upstreams.resolver;
    let private = |addrs: &[std::net::SocketAddr]| addrs.iter().any(|a| is_private(a.ip()));
    let allowed = match registry.redirect_private {
        Some(allowed) => allowed,
        None => {
            let up = &registry.upstream;
            resolver
                .resolve(&up.host, up.port)
                .await
                .is_ok_and(|a| private(&a))
        }
    };
    if allowed {
        return true;
    }
    // A name that does not resolve fails at connect, as before.
    resolver
        .resolve(&to.host, to.port)
        .await
        .map_or(true, |a| !private(&a))
}

/// Drains a small body that nobody reads (a redirect's, a ping's) and pools
/// the connection if it ended cleanly; otherwise drops it.
pub async fn release_after(w: &Worker, mut conn: Conn, head: &ResponseHead, max: u64) {
    conn.consume(head.head_len);
    if head.keep_alive && conn.drain(head.framing, max).await {
        w.upstreams.release(conn);
    }
}
