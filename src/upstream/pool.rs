//! Per-worker upstream connections: the pool of idle keep-alive connections
//! and the [`Conn`] type that carries one connection plus its read buffer.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::AsyncReadRent;

use super::dns::Resolver;
use super::io::UpstreamIo;
use super::trust::{Trust, TrustKey};
use crate::config::Timeouts;
use crate::wire::url::Origin;

/// Everything that decides whether a connection may be reused for a request:
/// scheme, host (also the SNI name), port, and the trust settings it was
/// verified with. A connection made under one trust context is never handed
/// to a request of another.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub origin: Origin,
    pub trust: TrustKey,
}

/// Idle connections kept per key; more are closed.
const MAX_IDLE_PER_KEY: usize = 64;
/// Read buffer of a connection: large enough for any sane response head.
pub(crate) const CONN_BUF: usize = 32 * 1024;

/// One upstream connection with its read buffer.
pub struct Conn {
    pub(crate) io: UpstreamIo,
    pub(crate) key: PoolKey,
    /// Bytes read and not yet consumed are `buf[pos..]`.
    pub(crate) buf: Vec<u8>,
    pub(crate) pos: usize,
    /// Whether this connection served a request before (a failure on a reused
    /// connection before any response byte is retried once).
    pub(crate) reused: bool,
    pub(crate) idle_since: Instant,
    pub(crate) read_timeout: Duration,
}

impl Conn {
    pub(crate) fn new(io: UpstreamIo, key: PoolKey, read_timeout: Duration) -> Conn {
        Conn {
            io,
            key,
            buf: Vec::with_capacity(CONN_BUF),
            pos: 0,
            reused: false,
            idle_since: Instant::now(),
            read_timeout,
        }
    }

    pub fn key(&self) -> &PoolKey {
        &self.key
    }

    /// Buffered bytes not consumed yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Marks `n` buffered bytes as consumed.
    pub fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.buf.len() {
            self.pos = 0;
            self.buf.clear();
        }
    }

    /// Reads more bytes into the connection's own buffer (appending), with
    /// the read timeout. Returns 0 at end of stream.
    pub(crate) async fn fill(&mut self) -> io::Result<usize> {
        match monoio::time::timeout(self.read_timeout, self.read_more()).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "upstream read timed out",
            )),
        }
    }

    /// [`Conn::fill`] without a timeout of its own: for callers that bound a
    /// whole step (request and response head) with one deadline. If the
    /// read is cancelled, the buffer goes with it and the connection must
    /// be dropped.
    pub(crate) async fn read_more(&mut self) -> io::Result<usize> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        if self.buf.len() == self.buf.capacity() {
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            } else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "response head too large",
                ));
            }
        }
        // The buffer goes with the read. If the read is cancelled (a
        // timeout), it does not come back: the connection then holds
        // nothing, and `buffered` must be empty rather than out of range.
        let pos = std::mem::take(&mut self.pos);
        let buf = std::mem::take(&mut self.buf);
        let len = buf.len();
        let cap = buf.capacity();
        let slice = buf.slice_mut(len..cap);
        let (res, slice) = self.io.read(slice).await;
        self.buf = slice.into_inner();
        self.pos = pos;
        res
    }

    /// Reads body bytes into `buf`, with the read timeout. Callers drain
    /// [`Conn::buffered`] first. On timeout the buffer went with the
    /// cancelled read (`None`), and the connection must be dropped.
    pub async fn read_body<T: IoBufMut>(&mut self, buf: T) -> (io::Result<usize>, Option<T>) {
        debug_assert!(self.buffered().is_empty());
        match monoio::time::timeout(self.read_timeout, self.io.read(buf)).await {
            Ok((r, b)) => (r, Some(b)),
            Err(_) => (
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "upstream read timed out",
                )),
                None,
            ),
        }
    }
}

/// Drops the connections of `list` idle for `bound` or longer. Oldest first
/// (pushed in time order, taken from the end): the stale ones are a
/// prefix, found with one clock read; most of the time the oldest is fresh
/// and only that one connection is looked at.
fn close_stale(list: &mut Vec<Conn>, now: Instant, bound: Duration) {
    let stale = |c: &Conn| now.duration_since(c.idle_since) >= bound;
    if list.first().is_some_and(stale) {
        let n = list.partition_point(stale);
        list.drain(..n);
    }
}

/// Idle connections by key. A worker talks to a handful of origins, so a
/// short list scanned in place beats hashing a key per request.
type IdlePool = RefCell<Vec<(PoolKey, Vec<Conn>)>>;

/// A worker's upstream machinery: resolver, TLS connectors, idle pool.
/// The resolver cache and the idle pool outlive a config generation (see
/// [`Upstreams::reconfigured`]).
pub struct Upstreams {
    pub(crate) resolver: Rc<Resolver>,
    /// One client config per distinct trust (a handful: scanned in place).
    pub(crate) tls: Vec<Trust>,
    pub(crate) timeouts: Timeouts,
    idle: Rc<IdlePool>,
}

impl Upstreams {
    /// `tls`: the client config for each trust key requests will name.
    pub fn new(mut tls: Vec<Trust>, timeouts: Timeouts) -> Upstreams {
        tls.dedup_by_key(|t| t.key);
        Upstreams {
            resolver: Rc::default(),
            tls,
            timeouts,
            idle: Rc::default(),
        }
    }

    /// The upstreams of a reloaded config: the same resolver cache and idle
    /// pool, with `tls` and `timeouts` of the new config. Idle connections
    /// verified under a trust the new config no longer names are closed;
    /// the others stay pooled, since their key says everything they were
    /// verified with (a CA file whose content did not change keeps its
    /// connections, and one whose content changed has a new key).
    pub fn reconfigured(&self, mut tls: Vec<Trust>, timeouts: Timeouts) -> Upstreams {
        tls.dedup_by_key(|t| t.key);
        self.idle
            .borrow_mut()
            .retain(|(k, _)| tls.iter().any(|t| t.key == k.trust));
        Upstreams {
            resolver: self.resolver.clone(),
            tls,
            timeouts,
            idle: self.idle.clone(),
        }
    }

    /// An idle connection to `origin` under `trust`, if a fresh enough one
    /// is pooled.
    pub(crate) fn checkout(&self, origin: &Origin, trust: TrustKey) -> Option<Conn> {
        let mut idle = self.idle.borrow_mut();
        let (_, list) = idle
            .iter_mut()
            .find(|(k, _)| k.trust == trust && k.origin == *origin)?;
        // Idle longer than `upstream_idle`: upstreams (and their load
        // balancers) drop idle connections after a while, and a reused dead
        // connection costs a retry.
        while let Some(mut conn) = list.pop() {
            // Bytes past the last response (or its close) are never taken
            // for the next answer.
            if conn.idle_since.elapsed() < self.timeouts.upstream_idle && !conn.io.peer_spoke() {
                // Pooled under an older config generation, perhaps.
                conn.read_timeout = self.timeouts.upstream_read;
                return Some(conn);
            }
        }
        None
    }

    /// Returns a connection whose last response was read completely.
    pub fn release(&self, mut conn: Conn) {
        if !conn.buffered().is_empty() {
            return; // stray bytes: the framing is off, do not reuse
        }
        let now = Instant::now();
        conn.reused = true;
        conn.idle_since = now;
        if !conn.io.park() {
            return; // closed, failed or with stray records: not reusable
        }
        let mut idle = self.idle.borrow_mut();
        let i = match idle.iter().position(|(k, _)| *k == conn.key) {
            Some(i) => i,
            None => {
                idle.push((conn.key.clone(), Vec::new()));
                idle.len() - 1
            }
        };
        let list = &mut idle[i].1;
        close_stale(list, now, self.timeouts.upstream_idle);
        if list.len() < MAX_IDLE_PER_KEY {
            list.push(conn);
        }
    }

    /// Closes the pooled connections idle for `upstream_idle` or longer
    /// (run by each worker every second). Without it a connection only
    /// reused now and then stays open for as long as the upstream keeps it:
    /// a file descriptor, TLS buffers, and a socket the upstream's load
    /// balancer may be about to reset.
    pub fn close_idle(&self) {
        let now = Instant::now();
        let bound = self.timeouts.upstream_idle;
        let mut idle = self.idle.borrow_mut();
        for (_, list) in idle.iter_mut() {
            close_stale(list, now, bound);
        }
        idle.retain(|(_, list)| !list.is_empty());
    }

    /// The client config for `key` (a reload keeps the ones whose key did
    /// not change, with their session caches).
    pub fn trust(&self, key: TrustKey) -> Option<&Trust> {
        self.tls.iter().find(|t| t.key == key)
    }

    /// Number of idle pooled connections (for tests and metrics).
    pub fn idle_count(&self) -> usize {
        self.idle.borrow().iter().map(|(_, l)| l.len()).sum()
    }
}
