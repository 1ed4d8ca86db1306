//! The listening sockets: one per worker and address, bound with
//! `SO_REUSEPORT` (the kernel spreads connections across them), or taken
//! over from the process running before this one (`handover`); and the
//! metrics listener, one socket for worker 0.
//!
//! They are made here, before the workers start, rather than by each
//! worker: the handover needs a copy of every one of them.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{Config, MetricsListen};
use crate::ops::log::Level;

/// Accept queue length asked for; the kernel caps it at
/// `net.core.somaxconn` (see `deploy/sysctl.conf`).
const BACKLOG: i32 = 1024;

/// What a listening socket serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Plain,
    /// Plain, behind a load balancer (`proxy_protocol_listen`).
    ProxyProtocol,
    /// TLS with the certificate of `tls_listeners[i]`.
    Tls(usize),
    /// The operator's: `/metrics`, `/healthz`, `/readyz` (`metrics_listen`).
    Metrics,
}

/// One listening socket of one worker.
pub struct ListeningSocket {
    pub socket: TcpListener,
    pub kind: Kind,
}

/// Every worker's listening sockets, and the addresses they are bound to.
pub struct Listeners {
    /// `per_worker[i]`: worker i's sockets.
    pub per_worker: Vec<Vec<ListeningSocket>>,
    /// Bound addresses (port 0 resolved), in config order.
    pub plain: Vec<SocketAddr>,
    pub proxy_protocol: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    /// How many of the sockets came from the previous process.
    pub adopted: usize,
}

impl Listeners {
    /// Copies of every socket, for the handover to a successor.
    pub fn copies(&self) -> io::Result<Vec<OwnedFd>> {
        self.per_worker
            .iter()
            .flatten()
            .map(|l| l.socket.try_clone().map(OwnedFd::from))
            .collect()
    }
}

/// The sockets for every address of `cfg` and `workers` workers. Sockets
/// in `taken` (from a handover) serve their own address: socket j of an
/// address goes to worker j % workers (so every one of them is accepted
/// on), and workers left without one bind a new one beside them. Taken
/// sockets for addresses `cfg` no longer has are closed here (the old
/// process still holds them until it drains).
pub fn open(cfg: &Config, workers: usize, mut taken: Vec<TcpListener>) -> io::Result<Listeners> {
    let plain = cfg.listen.iter().map(|a| (*a, Kind::Plain));
    let proxied = cfg
        .proxy_protocol_listen
        .iter()
        .map(|a| (*a, Kind::ProxyProtocol));
    let tls = cfg
        .tls_listeners
        .iter()
        .enumerate()
        .map(|(i, t)| (t.addr, Kind::Tls(i)));
    let wanted = plain.chain(proxied).chain(tls);
    let mut out = Listeners {
        per_worker: (0..workers).map(|_| Vec::new()).collect(),
        plain: Vec::new(),
        proxy_protocol: Vec::new(),
        tls: Vec::new(),
        metrics: None,
        adopted: 0,
    };
    for (addr, kind) in wanted {
        let mine: Vec<TcpListener> = {
            let (mine, rest) = taken
                .into_iter()
                .partition(|s| addr.port() != 0 && s.local_addr().ok() == Some(addr));
            taken = rest;
            mine
        };
        out.adopted += mine.len();
        let mut bound = mine.first().map(|s| s.local_addr()).transpose()?;
        let mut have = vec![false; workers];
        for (j, socket) in mine.into_iter().enumerate() {
            have[j % workers] = true;
            out.per_worker[j % workers].push(ListeningSocket { socket, kind });
        }
        for (w, _) in have.iter().enumerate().filter(|(_, h)| !**h) {
            // The first socket resolves port 0; the others join its port.
            let socket = bind(bound.unwrap_or(addr))
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            bound.get_or_insert(socket.local_addr()?);
            out.per_worker[w].push(ListeningSocket { socket, kind });
        }
        let bound = bound.expect("at least one worker");
        match kind {
            Kind::Plain => out.plain.push(bound),
            Kind::ProxyProtocol => out.proxy_protocol.push(bound),
            Kind::Tls(_) => out.tls.push(bound),
            Kind::Metrics => unreachable!("not among the public addresses"),
        }
    }
    metrics_socket(cfg, taken, &mut out)?;
    Ok(out)
}

/// The metrics listener, worker 0's alone and bound without SO_REUSEPORT:
/// scrapes are few, and an unrelated process on the same address must fail
/// to bind rather than share it (a scraper would see either process's
/// numbers). A successor takes it over like the others (scrapes reach
/// either process until the old one drains). A taken default address is
/// passed over with a warning.
fn metrics_socket(cfg: &Config, taken: Vec<TcpListener>, out: &mut Listeners) -> io::Result<()> {
    let MetricsListen::Own { addr, configured } = cfg.metrics else {
        return Ok(());
    };
    let mine: Vec<TcpListener> = taken
        .into_iter()
        .filter(|s| s.local_addr().ok() == Some(addr))
        .collect();
    out.adopted += mine.len();
    let sockets = if mine.is_empty() {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        match socket.bind(&addr.into()).and_then(|()| socket.listen(64)) {
            Ok(()) => vec![socket.into()],
            Err(e) if !configured => {
                crate::event!(
                    Level::Warn,
                    Some(0),
                    "metrics: cannot listen on {addr} ({e}); starting without a metrics listener (set metrics_listen)"
                );
                return Ok(());
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot listen on {addr} (metrics_listen): {e}"),
                ))
            }
        }
    } else {
        mine
    };
    out.metrics = Some(sockets[0].local_addr()?);
    for socket in sockets {
        out.per_worker[0].push(ListeningSocket {
            socket,
            kind: Kind::Metrics,
        });
    }
    Ok(())
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_port(true)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}
