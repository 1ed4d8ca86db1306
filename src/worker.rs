//! Per-worker state: everything a worker thread needs to serve requests,
//! owned by that thread alone (`Rc`, `RefCell`; no locks). Handles only:
//! the config, the upstream pools, trust keys, learned realms, relay
//! buffers, the access log, this worker's metrics slot, and the state
//! shared with background threads (cache, access knowledge, ACME).
//!
//! A [`Worker`] is one config generation's state; a [`Core`] is the
//! thread's serving state across generations: the current `Worker`
//! (replaced on a reload, while requests under way keep the one they
//! started with), whether the process is draining, and how many client
//! connections are open.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::acme;
use crate::cache::access::Access;
use crate::cache::Cache;
use crate::config::{Config, RegistryId};
use crate::gate::limits::Limiter;
use crate::ops::access_log::AccessLog;
use crate::ops::metrics::{Recorder, RegLabel};
use crate::relay::BufPool;
use crate::upstream::{TrustKey, Upstreams};
use crate::wire::url::Url;

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
    pub access_log: Option<Rc<AccessLog>>,
    /// The thread's access log buffer, whether this generation writes to
    /// it or not (a reload may turn the log on; one buffer keeps the lines
    /// of old and new generations in order).
    log_buf: Rc<AccessLog>,
    /// Relay buffers, kept across generations.
    pub bufs: Rc<BufPool>,
    /// The content cache, shared by all workers (None when disabled or
    /// when its directory could not be used).
    pub cache: Option<Arc<Cache>>,
    /// What is known of who may read what upstream: the cache's, or (cache
    /// off, a registry with credentials) a memory-only one. None: neither.
    pub access: Option<Arc<Access>>,
    /// ACME's certificate store and pending HTTP-01 answers, shared with
    /// the ACME thread (None without `[acme]`).
    pub acme: Option<Arc<acme::Shared>>,
    /// This worker's metrics slot (and the shared state behind it).
    pub metrics: Recorder,
    /// The per-client limits' shared budgets (one for every worker).
    pub limiter: Arc<Limiter>,
    /// Each registry's metrics label, by registry.
    reg_labels: Vec<RegLabel>,
    /// The trust each registry's upstream is verified with, by registry.
    trust: Vec<TrustKey>,
    /// Token realm learned from each registry's own challenge, by registry.
    realms: RefCell<Vec<Option<(Realm, Instant)>>>,
    /// `Authorization` values for the operator's account, by registry and
    /// repository, until they expire (see `pull::upstream_auth`). Per
    /// worker: a token request per repository per core per token lifetime
    /// costs less than a lock shared with every pull.
    operator_tokens: RefCell<HashMap<(RegistryId, String), OperatorToken>>,
    /// Mirror logins verified on this worker (`gate::auth`), kept across
    /// reloads (an entry holds the hash it verified against).
    pub logins: Rc<crate::gate::auth::AuthCache>,
}

/// An `Authorization` value for the operator's account, and until when.
type OperatorToken = (Arc<[u8]>, Instant);

/// Operator tokens kept per worker; past it the memo is cleared.
const MAX_OPERATOR_TOKENS: usize = 10_000;

impl Worker {
    /// `trust[i]`: the trust key of the `i`th registry of `cfg`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: usize,
        cfg: Arc<Config>,
        upstreams: Upstreams,
        trust: Vec<TrustKey>,
        cache: Option<Arc<Cache>>,
        access: Option<Arc<Access>>,
        acme: Option<Arc<acme::Shared>>,
        metrics: Recorder,
        limiter: Arc<Limiter>,
    ) -> Worker {
        let n = cfg.registries.len();
        assert_eq!(trust.len(), n, "one trust key per registry");
        let reg_labels = metrics
            .shared()
            .registry_labels(cfg.registries.iter().map(|r| r.name.as_str()));
        let log_buf = Rc::new(AccessLog::new(cfg.access_log_format));
        Worker {
            metrics,
            limiter,
            reg_labels,
            id,
            access_log: cfg.access_log.then(|| log_buf.clone()),
            log_buf,
            cfg,
            upstreams,
            bufs: Rc::default(),
            cache,
            access,
            acme,
            trust,
            realms: RefCell::new(vec![None; n]),
            operator_tokens: RefCell::new(HashMap::new()),
            logins: Rc::default(),
        }
    }

    /// Whether every TLS listener has a certificate to serve (readiness):
    /// files are loaded before the listeners open; ACME's arrives later.
    pub fn certificates_loaded(&self) -> bool {
        self.acme.as_ref().is_none_or(|a| a.certs.loaded())
    }

    /// The next generation, from a reloaded `cfg` (`upstreams` and `trust`
    /// built for it, see [`Upstreams::reconfigured`]): it keeps this one's
    /// relay buffers, access log buffer and metrics slot (registries keep
    /// their labels by name), and the token realm of every
    /// registry whose name, upstream and trust did not change. The
    /// operator's upstream tokens are not kept: they are keyed by registry
    /// position, and the account may have changed (one token request per
    /// repository and worker fetches them again).
    pub fn reloaded(
        &self,
        cfg: Arc<Config>,
        upstreams: Upstreams,
        trust: Vec<TrustKey>,
        access: Option<Arc<Access>>,
    ) -> Worker {
        let n = cfg.registries.len();
        assert_eq!(trust.len(), n, "one trust key per registry");
        self.log_buf.set_format(cfg.access_log_format);
        let old = self.realms.borrow();
        let realms = cfg
            .registries
            .iter()
            .zip(&trust)
            .map(|(r, key)| {
                let same = self
                    .cfg
                    .registries
                    .iter()
                    .zip(&self.trust)
                    .position(|(o, k)| o.name == r.name && o.upstream == r.upstream && k == key)?;
                old[same].clone()
            })
            .collect();
        let metrics = self.metrics.shared().recorder(self.id);
        let reg_labels = metrics
            .shared()
            .registry_labels(cfg.registries.iter().map(|r| r.name.as_str()));
        Worker {
            metrics,
            limiter: self.limiter.clone(),
            reg_labels,
            id: self.id,
            access_log: cfg.access_log.then(|| self.log_buf.clone()),
            log_buf: self.log_buf.clone(),
            cfg,
            upstreams,
            bufs: self.bufs.clone(),
            cache: self.cache.clone(),
            access,
            acme: self.acme.clone(),
            trust,
            realms: RefCell::new(realms),
            operator_tokens: RefCell::new(HashMap::new()),
            logins: self.logins.clone(),
        }
    }

    /// Writes out the access log lines buffered on this thread.
    pub fn flush_access_log(&self) {
        self.log_buf.flush();
    }

    /// The operator's `Authorization` for `repo` at `reg`, if one is held
    /// and still valid.
    pub fn operator_token(&self, reg: RegistryId, repo: &str) -> Option<Arc<[u8]>> {
        let tokens = self.operator_tokens.borrow();
        // The key is built for the probe: once per anonymous pull that goes
        // upstream, beside an upstream round trip.
        match tokens.get(&(reg, repo.to_string())) {
            Some((t, until)) if *until > Instant::now() => Some(t.clone()),
            _ => None,
        }
    }

    /// Keeps the operator's `Authorization` for `repo` until `until`.
    pub fn keep_operator_token(
        &self,
        reg: RegistryId,
        repo: &str,
        value: Arc<[u8]>,
        until: Instant,
    ) {
        let mut tokens = self.operator_tokens.borrow_mut();
        if tokens.len() >= MAX_OPERATOR_TOKENS {
            tokens.clear();
        }
        tokens.insert((reg, repo.to_string()), (value, until));
    }

    /// The upstream refused the operator's token for `repo`: ask for a new
    /// one next time.
    pub fn forget_operator_token(&self, reg: RegistryId, repo: &str) {
        self.operator_tokens
            .borrow_mut()
            .remove(&(reg, repo.to_string()));
    }

    /// Registry `reg`'s metrics label.
    pub fn reg_label(&self, reg: RegistryId) -> RegLabel {
        self.reg_labels[reg.index()]
    }

    /// The trust registry `reg`'s upstream (and its realm and redirects)
    /// are verified with.
    pub fn trust(&self, reg: RegistryId) -> TrustKey {
        self.trust[reg.index()]
    }

    /// The upstream token realm of registry `reg`, if learned recently.
    pub fn realm(&self, reg: RegistryId) -> Option<Realm> {
        match &self.realms.borrow()[reg.index()] {
            Some((realm, at)) if at.elapsed() < REALM_TTL => Some(realm.clone()),
            _ => None,
        }
    }

    /// Records the realm an upstream challenge of registry `reg` named.
    pub fn learn_realm(&self, reg: RegistryId, realm: Realm) {
        let mut realms = self.realms.borrow_mut();
        match &mut realms[reg.index()] {
            Some((old, at)) if *old == realm => *at = Instant::now(),
            slot => *slot = Some((realm, Instant::now())),
        }
    }
}

/// Runs for the life of a worker: every [`TRIM_EVERY`], lets mimalloc free
/// this thread's empty pages and purge what has been free longer than its
/// purge delay; after a burst an idle worker otherwise kept them resident
/// (5-9 MiB after 32 concurrent blob relays). ~85 µs per tick when idle,
/// < 0.01% of a core. See `docs/design.md`, "Memory".
pub async fn trim_memory() {
    loop {
        monoio::time::sleep(TRIM_EVERY).await;
        crate::sys::trim_thread_heap();
    }
}

/// One core's serving state across config generations (see the module
/// comment). Only its own thread touches it.
pub struct Core {
    current: RefCell<Rc<Worker>>,
    draining: Cell<bool>,
    /// Keep-alive connections waiting idle between requests, woken when a
    /// drain starts or when they are the idlest at the connection cap.
    idle: RefCell<IdleWaiters>,
    open: Cell<usize>,
}

/// The idle connections by when they began to wait: keys grow, so the
/// first key is the idlest connection.
#[derive(Default)]
struct IdleWaiters {
    next: u64,
    wakers: BTreeMap<u64, Waker>,
    /// Idle connections told to close (see [`Core::close_idlest`]) that
    /// have not seen it yet.
    closed: HashSet<u64>,
}

impl Core {
    pub fn new(first: Worker) -> Rc<Core> {
        Rc::new(Core {
            current: RefCell::new(Rc::new(first)),
            draining: Cell::new(false),
            idle: RefCell::default(),
            open: Cell::new(0),
        })
    }

    /// The current generation: what a request starting now runs with.
    pub fn worker(&self) -> Rc<Worker> {
        self.current.borrow().clone()
    }

    /// Makes `next` the generation new requests run with; requests under
    /// way keep theirs until they end.
    pub fn install(&self, next: Worker) {
        let old = std::mem::replace(&mut *self.current.borrow_mut(), Rc::new(next));
        // Lines an old generation buffered go out before the new one's.
        old.flush_access_log();
    }

    /// Whether the process is draining: no new connections; a connection
    /// ends after the response under way (or at once when idle).
    pub fn draining(&self) -> bool {
        self.draining.get()
    }

    /// Starts the drain on this core and wakes every idle connection.
    pub fn start_drain(&self) {
        self.draining.set(true);
        let wakers = std::mem::take(&mut self.idle.borrow_mut().wakers);
        for w in wakers.into_values() {
            w.wake();
        }
    }

    /// Resolves when an idle keep-alive connection is to close: a drain
    /// has started, or it was the idlest at the connection cap.
    pub fn idle_closed(&self) -> IdleClosed<'_> {
        IdleClosed {
            core: self,
            key: None,
        }
    }

    /// Whether a keep-alive connection waits idle on this core.
    pub fn has_idle(&self) -> bool {
        !self.idle.borrow().wakers.is_empty()
    }

    /// Tells the connection idle the longest to close (the connection cap
    /// is reached and a new one came); whether there was one. A connection
    /// in the middle of a request is never chosen: only those waiting for
    /// their next request are listed.
    pub fn close_idlest(&self) -> bool {
        let mut idle = self.idle.borrow_mut();
        let Some((key, waker)) = idle.wakers.pop_first() else {
            return false;
        };
        idle.closed.insert(key);
        drop(idle);
        waker.wake();
        true
    }

    /// Counts a client connection as open until the guard is dropped.
    pub fn open_connection(self: &Rc<Self>) -> OpenConnection {
        self.open.set(self.open.get() + 1);
        OpenConnection(self.clone())
    }

    /// Client connections open on this core (handshakes included).
    pub fn open_connections(&self) -> usize {
        self.open.get()
    }
}

/// A client connection counted by [`Core::open_connection`].
pub struct OpenConnection(Rc<Core>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get() - 1);
    }
}

/// See [`Core::idle_closed`].
pub struct IdleClosed<'a> {
    core: &'a Core,
    key: Option<u64>,
}

impl Future for IdleClosed<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.core.draining.get() {
            return Poll::Ready(());
        }
        let mut idle = self.core.idle.borrow_mut();
        let key = match self.key {
            Some(k) if idle.closed.remove(&k) => {
                drop(idle);
                self.key = None;
                return Poll::Ready(());
            }
            Some(k) => k,
            None => {
                idle.next += 1;
                idle.next
            }
        };
        idle.wakers.insert(key, cx.waker().clone());
        drop(idle);
        self.key = Some(key);
        Poll::Pending
    }
}

impl Drop for IdleClosed<'_> {
    fn drop(&mut self) {
        if let Some(k) = self.key {
            let mut idle = self.core.idle.borrow_mut();
            idle.wakers.remove(&k);
            idle.closed.remove(&k);
        }
    }
}
