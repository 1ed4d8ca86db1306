//! Accepting client connections: a listener's accept loop, then each
//! connection's opening phases before HTTP, in order:
//!
//! ```text
//! proxy   the PROXY header, on listeners behind a load balancer -> who the client is
//! tls     the handshake, on TLS listeners (after the PROXY header)
//! serve   conn::serve: HTTP until the connection ends
//! ```
//!
//! The first two share one deadline (`client_header_secs`). Each
//! connection counts as open on its core from accept to end (the drain
//! waits for them). A drain cancels the pending accept (a connection the
//! kernel completed anyway is still served) and closes the socket by
//! dropping it.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, CancelHandle};
use monoio::net::{TcpListener, TcpStream};

use super::fds;
use crate::conn;
use crate::downstream::ClientCtx;
use crate::ops::log::Level;
use crate::ops::metrics::ListenerKind;
use crate::tls;
use crate::wire::addr::ClientAddr;
use crate::wire::proxy_protocol::{self, Addresses, ProxyError, Scan};
use crate::worker::{Core, OpenConnection};

/// This core's TLS server configs, one per `tls_listeners` entry; replaced
/// on a reload (new certificates apply to new connections).
pub(super) type Acceptors = Rc<RefCell<Vec<Arc<rustls::ServerConfig>>>>;

/// What a listener expects at the start of each connection.
pub(super) struct Listener {
    /// TLS listeners: which `tls_listeners` entry, and this core's configs.
    pub tls: Option<(usize, Acceptors)>,
    /// Behind a load balancer: trusted peers send a PROXY header first.
    pub proxy_protocol: bool,
    /// Public (plain or TLS) or the operator's (metrics and health only).
    pub kind: ListenerKind,
}

/// What one connection expects, fixed when it is accepted.
struct Opening {
    /// The server config (of the generation current at accept).
    tls: Option<Arc<rustls::ServerConfig>>,
    proxy_protocol: bool,
}

pub(super) async fn accept_loop(
    core: Rc<Core>,
    listener: TcpListener,
    kind: Listener,
    stop: CancelHandle,
) {
    let local = listener
        .local_addr()
        .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
    let capped = kind.kind != ListenerKind::Ops;
    let mut backoff = fds::AcceptBackoff::new();
    loop {
        if capped {
            wait_for_room(&core).await;
        }
        let (stream, peer) = match listener.cancelable_accept(stop.clone()).await {
            Ok(s) => s,
            // Cancelled by the drain: `listener` closes as this returns.
            Err(_) if core.draining() => return,
            Err(e) => {
                // The operator's listener answers health checks from a
                // descriptor held back for them (see `fds::release_reserve`).
                if !capped && fds::out_of_fds(&e) && fds::release_reserve() {
                    continue;
                }
                let wait = backoff.failed(core.worker().id, &e);
                monoio::time::sleep(wait).await;
                continue;
            }
        };
        backoff.succeeded();
        if capped && core.open_connections() >= fds::worker_cap(&core.worker().cfg) {
            // At the cap with a keep-alive connection idle (`wait_for_room`):
            // the idlest makes room for this one.
            core.close_idlest();
        }
        let _ = stream.set_nodelay(true);
        let cx = ClientCtx {
            listener: kind.kind,
            fd: std::os::fd::AsRawFd::as_raw_fd(&stream),
            client: ClientAddr::from_socket(peer),
            local,
        };
        let opening = Opening {
            tls: kind.tls.as_ref().map(|(i, a)| a.borrow()[*i].clone()),
            proxy_protocol: kind.proxy_protocol,
        };
        let open = core.open_connection();
        let (core, listener) = (core.clone(), kind.kind);
        monoio::spawn(async move {
            // Open from accept to close, handshake included, in the
            // metrics of the generation it was accepted under.
            let w = core.worker();
            let _counted = w.metrics.connection(listener);
            connection(core.clone(), open, stream, cx, opening).await;
            // Its descriptor is closed: back to the reserve if it came from
            // it. The close may complete a little later (io_uring closes
            // asynchronously), hence a few tries; public accept loops out of
            // descriptors wait longer than these between theirs.
            if listener == ListenerKind::Ops {
                for _ in 0..REFILL_TRIES {
                    if fds::refill_reserve() {
                        break;
                    }
                    monoio::time::sleep(REFILL_WAIT).await;
                }
            }
        });
    }
}

/// How often, and how far apart, the operator's listener tries to take its
/// reserved descriptor back.
const REFILL_TRIES: usize = 20;
const REFILL_WAIT: Duration = Duration::from_millis(2);

/// Waits while this core is at its share of the connection cap with no
/// keep-alive connection idle to close for a new one (new connections wait
/// in the listen backlog meanwhile), and while the operator's reserved
/// descriptor is gone, until it is back (see `fds::reserve_empty`). A poll:
/// rare, and cheaper than a waker on every close.
async fn wait_for_room(core: &Core) {
    const POLL: Duration = Duration::from_millis(20);
    loop {
        if core.draining() {
            return;
        }
        let full = core.open_connections() >= fds::worker_cap(&core.worker().cfg);
        let reserve_back = !fds::reserve_empty() || fds::refill_reserve();
        if reserve_back && (!full || core.has_idle()) {
            return;
        }
        monoio::time::sleep(POLL).await;
    }
}

/// One connection's opening phases, then HTTP. `_open` counts it as open
/// until it ends.
async fn connection(
    core: Rc<Core>,
    _open: OpenConnection,
    mut stream: TcpStream,
    mut cx: ClientCtx,
    kind: Opening,
) {
    if kind.tls.is_none() && !kind.proxy_protocol {
        // Nothing to open: HTTP at once, without arming a timer.
        return conn::serve(core, stream, cx, Vec::new()).await;
    }
    let w = core.worker();
    let opening = async {
        // ---- proxy: who the client is ----
        let mut read = Vec::new();
        if kind.proxy_protocol {
            let (client, local, rest) = proxy_header(&w.cfg, &mut stream, cx).await?;
            (cx.client, cx.local, read) = (client, local, rest);
        }
        // ---- tls ----
        match kind.tls {
            None => Ok(Opened::Plain(stream, read)),
            Some(config) => tls::stream::accept_after(config, stream, read)
                .await
                .map(|s| Opened::Tls(Box::new(s)))
                .map_err(Refused::Tls),
        }
    };
    // Boxed: the handshake's state would otherwise stay in every
    // connection's task for its whole life (see conn::serve).
    let opened = match monoio::time::timeout(w.cfg.timeouts.client_header, Box::pin(opening)).await
    {
        Ok(Ok(o)) => o,
        Ok(Err(why)) => {
            let level = why.level();
            if crate::ops::log::enabled(level) {
                crate::event!(
                    level,
                    Some(w.id),
                    "connection from {} refused: {why}",
                    cx.client
                );
            }
            return;
        }
        Err(_) => return, // too slow to open: closed, as a slow head would be
    };
    // ---- serve ----
    // The connection's requests each take the generation current when
    // they arrive, not this one.
    drop(w);
    match opened {
        Opened::Plain(s, read) => conn::serve(core, s, cx, read).await,
        // Boxed apart: a TLS connection's task is ~14 KiB (the record
        // layer's state lives in it), a plain one's ~6 KiB, and without the
        // box every connection's task is the larger (print-type-sizes).
        Opened::Tls(s) => Box::pin(conn::serve(core, *s, cx, Vec::new())).await,
    }
}

/// A connection ready for HTTP.
enum Opened {
    /// Plain TCP and the bytes already read from it.
    Plain(TcpStream, Vec<u8>),
    Tls(Box<tls::stream::ServerTls>),
}

/// Why a connection was closed before HTTP.
#[derive(Debug)]
enum Refused {
    /// A PROXY header from a peer not in `trusted_proxies`: a client
    /// claiming to be someone else.
    Untrusted,
    /// A trusted proxy's connection without a PROXY header, on a listener
    /// that expects one.
    Missing,
    /// A PROXY header that does not parse.
    Malformed(ProxyError),
    /// The peer closed or failed before its header was complete.
    Cut(Option<io::Error>),
    /// The TLS handshake failed.
    Tls(io::Error),
}

impl Refused {
    /// How loudly to say so: a misconfigured load balancer is the
    /// operator's to fix; a stranger's forgery is worth a line; broken
    /// connections and failed handshakes are the internet's usual noise.
    fn level(&self) -> Level {
        match self {
            Refused::Missing | Refused::Malformed(_) => Level::Warn,
            // A CA validating a domain (RFC 8737) is worth a line.
            Refused::Untrusted => Level::Info,
            Refused::Tls(e) if is_acme_validation(e) => Level::Info,
            Refused::Cut(_) | Refused::Tls(_) => Level::Debug,
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Untrusted => {
                f.write_str("it sent a PROXY header but is not in trusted_proxies")
            }
            Refused::Missing => {
                f.write_str("a trusted proxy sent no PROXY header on a PROXY protocol listener")
            }
            Refused::Malformed(e) => write!(f, "malformed PROXY header: {e}"),
            Refused::Cut(None) => f.write_str("closed before its PROXY header was complete"),
            Refused::Cut(Some(e)) => write!(f, "PROXY header not read: {e}"),
            Refused::Tls(e) if is_acme_validation(e) => {
                f.write_str("acme: answered a TLS-ALPN-01 validation (closed after the handshake)")
            }
            Refused::Tls(e) => write!(f, "TLS handshake: {e}"),
        }
    }
}

/// The proxy phase: on a PROXY protocol listener, a trusted peer's
/// connection must start with a PROXY header, which names the client (and
/// the address it connected to); any other peer is a client itself and must
/// not send one. Returns the client, the local address it reached, and the
/// bytes read after the header.
///
/// Why a trusted peer without a header is refused rather than served as
/// itself: its requests would all be logged (and, later, limited) as the
/// load balancer's, silently; a closed connection shows the mistake at
/// once. Untrusted peers without a header are served (a listener can take
/// both the balancer's and direct clients, and a direct client's own
/// address is the truth).
async fn proxy_header(
    cfg: &crate::config::Config,
    stream: &mut TcpStream,
    cx: ClientCtx,
) -> Result<(ClientAddr, SocketAddr, Vec<u8>), Refused> {
    let trusted = cfg.trusts(cx.client.ip);
    // A v1 header and a request behind it usually arrive in one segment.
    let mut buf: Vec<u8> = Vec::with_capacity(512);
    loop {
        match proxy_protocol::scan(&buf).map_err(Refused::Malformed)? {
            Scan::Header(_) if !trusted => return Err(Refused::Untrusted),
            Scan::Header(h) => {
                buf.drain(..h.len);
                return Ok(match h.addresses {
                    Addresses::Tcp {
                        source,
                        destination,
                    } => (ClientAddr::from_socket(source), destination, buf),
                    Addresses::Unknown => (cx.client, cx.local, buf),
                });
            }
            Scan::NotProxy if trusted => return Err(Refused::Missing),
            Scan::NotProxy => return Ok((cx.client, cx.local, buf)),
            Scan::Incomplete => {}
        }
        // The scanner bounds what it waits for (107 bytes for v1, the
        // declared length for v2), so the buffer never outgrows V2_MAX.
        if buf.len() == buf.capacity() {
            buf.reserve_exact((buf.len() * 2).min(proxy_protocol::V2_MAX) - buf.len());
        }
        let (len, cap) = (buf.len(), buf.capacity());
        let (res, back) = stream.read(buf.slice_mut(len..cap)).await;
        buf = back.into_inner();
        match res {
            Ok(0) => return Err(Refused::Cut(None)),
            Ok(_) => {}
            Err(e) => return Err(Refused::Cut(Some(e))),
        }
    }
}

/// Whether a TLS accept ended because a CA validated a domain (RFC 8737):
/// the handshake answered the challenge, and no HTTP follows.
fn is_acme_validation(e: &io::Error) -> bool {
    matches!(
        tls::error::TlsError::of(e),
        Some(tls::error::TlsError::AcmeValidation)
    )
}
