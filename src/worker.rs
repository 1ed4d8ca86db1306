//! Per-worker state: everything a worker thread needs to serve requests,
//! owned by that thread alone (`Rc`, `RefCell`; no locks).

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::ops::access_log::AccessLog;
use crate::upstream::Upstreams;
use crate::wire::url::Url;

/// Size of a body relay buffer. Large reads and writes keep syscalls (and
/// TLS record overhead) per byte low.
pub const RELAY_BUF: usize = 256 * 1024;
/// Relay buffers kept for reuse per worker. A few cover the steady state
/// (each one saves a 256 KiB allocation and its page faults); more only
/// pin the high-water mark of a burst: with 32, a burst of concurrent blob
/// relays left up to 8 MiB per worker resident for good. Buffers past this
/// go back to the allocator.
const MAX_POOLED_BUFS: usize = 4;
/// How long a learned token realm is trusted before it is learned again.
const REALM_TTL: Duration = Duration::from_secs(600);
/// How often a worker hands allocator pages it no longer uses back to the
/// OS (see [`trim_memory`]).
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// Where a registry's tokens come from, as its own challenge said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Realm {
    pub url: Url,
    pub service: Option<String>,
}

pub struct Worker {
    pub id: usize,
    pub cfg: Arc<Config>,
    pub upstreams: Upstreams,
    /// Access log lines, buffered (None when `access_log = false`).
    pub access_log: Option<AccessLog>,
    /// Token realm learned from each registry's own challenge, by index.
    realms: RefCell<Vec<Option<(Realm, Instant)>>>,
    bufs: RefCell<Vec<Vec<u8>>>,
}

impl Worker {
    pub fn new(id: usize, cfg: Arc<Config>, upstreams: Upstreams) -> Worker {
        let n = cfg.registries.len();
        Worker {
            id,
            access_log: cfg.access_log.then(AccessLog::default),
            cfg,
            upstreams,
            realms: RefCell::new(vec![None; n]),
            bufs: RefCell::new(Vec::new()),
        }
    }

    /// The upstream token realm of registry `reg`, if learned recently.
    pub fn realm(&self, reg: usize) -> Option<Realm> {
        match &self.realms.borrow()[reg] {
            Some((realm, at)) if at.elapsed() < REALM_TTL => Some(realm.clone()),
            _ => None,
        }
    }

    /// Records the realm an upstream challenge of registry `reg` named.
    pub fn learn_realm(&self, reg: usize, realm: Realm) {
        let mut realms = self.realms.borrow_mut();
        match &mut realms[reg] {
            Some((old, at)) if *old == realm => *at = Instant::now(),
            slot => *slot = Some((realm, Instant::now())),
        }
    }

    /// A relay buffer (empty, capacity [`RELAY_BUF`]).
    pub fn take_buf(&self) -> Vec<u8> {
        self.bufs
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(RELAY_BUF))
    }

    /// Returns a relay buffer for reuse.
    pub fn give_buf(&self, mut buf: Vec<u8>) {
        if buf.capacity() >= RELAY_BUF {
            buf.clear();
            let mut bufs = self.bufs.borrow_mut();
            if bufs.len() < MAX_POOLED_BUFS {
                bufs.push(buf);
            }
        }
    }
}

/// Runs for the life of a worker: every [`TRIM_EVERY`], lets mimalloc free
/// this thread's empty pages and purge (`MADV_DONTNEED`) what has been free
/// longer than its purge delay. mimalloc only does that work from inside an
/// allocation or free, so after a burst an idle worker kept its empty pages
/// resident until traffic came back (5-9 MiB after 32 concurrent blob
/// relays). A non-forced collect of one thread's heap is cheap: an idle
/// worker spends ~85 µs per tick on it (wake-up included), < 0.01% of a core.
/// (`mi_collect` acts on the calling thread's heap, hence one per worker;
/// where mimalloc is not the global allocator, e.g. in tests, it finds an
/// empty heap and returns.)
pub async fn trim_memory() {
    loop {
        monoio::time::sleep(TRIM_EVERY).await;
        // SAFETY: no arguments to uphold; safe to call from any thread.
        unsafe { libmimalloc_sys::mi_collect(false) };
    }
}
