//! Per-worker state: everything a worker thread needs to serve requests,
//! owned by that thread alone (`Rc`, `RefCell`; no locks). Handles only:
//! the config, the upstream pools, trust keys, learned realms, relay
//! buffers, the access log, this worker's metrics slot, and the state
//! shared with background threads (cache, access knowledge, ACME).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::acme;
use crate::cache::access::Access;
use crate::cache::Cache;
use crate::config::{Config, RegistryId};
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
    pub access_log: Option<AccessLog>,
    pub bufs: BufPool,
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
    ) -> Worker {
        let n = cfg.registries.len();
        assert_eq!(trust.len(), n, "one trust key per registry");
        let reg_labels = metrics
            .shared()
            .registry_labels(cfg.registries.iter().map(|r| r.name.as_str()));
        Worker {
            metrics,
            reg_labels,
            id,
            access_log: cfg
                .access_log
                .then(|| AccessLog::new(cfg.access_log_format)),
            cfg,
            upstreams,
            bufs: BufPool::default(),
            cache,
            access,
            acme,
            trust,
            realms: RefCell::new(vec![None; n]),
            operator_tokens: RefCell::new(HashMap::new()),
        }
    }

    /// Whether every TLS listener has a certificate to serve (readiness):
    /// files are loaded before the listeners open; ACME's arrives later.
    pub fn certificates_loaded(&self) -> bool {
        self.acme.as_ref().is_none_or(|a| a.certs.loaded())
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
