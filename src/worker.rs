//! Per-worker state: everything a worker thread needs to serve requests,
//! owned by that thread alone (`Rc`, `RefCell`; no locks). Handles only:
//! the config, the upstream pools, trust keys, learned realms, relay
//! buffers and the access log.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cache::Cache;
use crate::config::{Config, RegistryId};
use crate::ops::access_log::AccessLog;
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
    pub access_log: Option<AccessLog>,
    pub bufs: BufPool,
    /// The content cache, shared by all workers (None when disabled or
    /// when its directory could not be used).
    pub cache: Option<Arc<Cache>>,
    /// The trust each registry's upstream is verified with, by registry.
    trust: Vec<TrustKey>,
    /// Token realm learned from each registry's own challenge, by registry.
    realms: RefCell<Vec<Option<(Realm, Instant)>>>,
}

impl Worker {
    /// `trust[i]`: the trust key of the `i`th registry of `cfg`.
    pub fn new(
        id: usize,
        cfg: Arc<Config>,
        upstreams: Upstreams,
        trust: Vec<TrustKey>,
        cache: Option<Arc<Cache>>,
    ) -> Worker {
        let n = cfg.registries.len();
        assert_eq!(trust.len(), n, "one trust key per registry");
        Worker {
            id,
            access_log: cfg.access_log.then(AccessLog::default),
            cfg,
            upstreams,
            bufs: BufPool::default(),
            cache,
            trust,
            realms: RefCell::new(vec![None; n]),
        }
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
