//! Start-up, the workers and the process's lifecycle: N threads, each one
//! monoio runtime pinned to a CPU, with its own SO_REUSEPORT listeners, its
//! own upstream pools and TLS configs. The kernel spreads connections
//! across the listeners; after start-up nothing crosses threads but what
//! the lifecycle hands the workers (a new config generation, the drain).
//!
//! - `generation`: a config with its certificates and CA roots loaded;
//! - `listeners`: the listening sockets, bound or taken over;
//! - `handover`: giving them to a successor process, taking a predecessor's;
//! - `thread`: one worker thread (runtime, generations, drain);
//! - `fds`: the descriptor limit, the connection cap, out-of-descriptor
//!   accepts;
//! - `accept`: the accept loop of one listening socket, and each
//!   connection's opening phases (PROXY header, TLS handshake) before HTTP;
//! - `lifecycle`: signals (SIGHUP reload, SIGTERM drain) on a thread of
//!   their own, and [`lifecycle::Lifecycle`], what crosses to the workers;
//! - `notify`: `READY=1` and `STOPPING=1` for systemd.

mod accept;
mod fds;
mod generation;
mod handover;
mod lifecycle;
mod listeners;
mod notify;
mod thread;

use std::io;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};

use crate::acme::{self, Acme};
use crate::cache::Cache;
use crate::config::{Config, ConfigSource};
use crate::gate::limits::Limiter;
use crate::ops::health::CacheState;
use crate::ops::log::{self, Level};
use crate::ops::metrics::Metrics;
use generation::Generation;
use lifecycle::{Fixed, Lifecycle, Reloader};

/// Addresses actually bound (port 0 resolved), for the start-up message.
pub struct Bound {
    pub plain: Vec<SocketAddr>,
    /// Plain listeners that expect PROXY headers (`proxy_protocol_listen`).
    pub proxy_protocol: Vec<SocketAddr>,
    /// One per `tls_listeners` entry, in order.
    pub tls: Vec<SocketAddr>,
    /// The metrics listener (`metrics_listen`), when it has one of its own.
    pub metrics: Option<SocketAddr>,
}

/// Loads TLS material, takes over or binds the listening sockets, starts
/// the workers and blocks until they end (after a drain). `cfg` is what
/// `source` loaded; a reload (SIGHUP) loads `source` again. `ready` is
/// called once every worker accepts.
pub fn run(source: ConfigSource, cfg: Config, ready: impl FnOnce(&Bound)) -> io::Result<()> {
    // Before any thread starts, so that every thread inherits the mask.
    crate::sys::block_lifecycle_signals()?;
    log::set_threshold(cfg.log_level);
    let fixed = Fixed::of(&cfg);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = if cfg.workers == 0 { cores } else { cfg.workers };
    fds::start(workers, &cfg);
    // ACME: a stored certificate is installed before the listeners open;
    // ordering and renewing start once they serve (the challenges need
    // them).
    let acme_shared = cfg.acme.as_ref().map(|_| Arc::new(acme::Shared::default()));
    let mut acme = match (&cfg.acme, &acme_shared) {
        (Some(a), Some(shared)) => {
            Some(Acme::new(a.clone(), shared.clone()).map_err(io::Error::other)?)
        }
        _ => None,
    };
    if let Some(a) = &mut acme {
        a.load_stored();
    }
    let metrics = Arc::new(Metrics::new(workers, cfg.registries.len()));
    let cache = open_cache(&cfg, &metrics);
    let access = cache.as_ref().map(|c| c.access.clone());
    let mut first = Generation::load(1, cfg, access, acme_shared).map_err(io::Error::other)?;

    // Taken over only now that everything that can fail before serving
    // has been loaded: a predecessor stops listening for successors once
    // it handed its sockets over.
    let handover = first.cfg.handover_socket.clone();
    let taken = match &handover {
        Some(at) => handover::take_over(at)
            .map_err(|e| io::Error::new(e.kind(), format!("handover from {at}: {e}")))?,
        None => Vec::new(),
    };
    let listeners = listeners::open(&first.cfg, workers, taken)?;
    if listeners.adopted > 0 {
        crate::event!(
            Level::Info,
            None,
            "took over {} listening sockets from the process on {}",
            listeners.adopted,
            handover.as_ref().map_or(String::new(), |h| h.to_string())
        );
    }
    let bound = Bound {
        plain: listeners.plain.clone(),
        proxy_protocol: listeners.proxy_protocol.clone(),
        tls: listeners.tls.clone(),
        metrics: listeners.metrics,
    };
    // Port 0 resolved: the config the workers see names the real ports.
    {
        let cfg = Arc::make_mut(&mut first.cfg);
        cfg.listen = bound.plain.clone();
        cfg.proxy_protocol_listen = bound.proxy_protocol.clone();
        for (l, a) in cfg.tls_listeners.iter_mut().zip(&bound.tls) {
            l.addr = *a;
        }
    }
    let keeper = match &handover {
        Some(at) => Some(handover::keep(at, listeners.copies()?)?),
        None => None,
    };
    let life = Arc::new(Lifecycle::new(first, workers));
    let limiter = Arc::new(Limiter::new());

    let mut handles = Vec::new();
    for (id, sockets) in listeners.per_worker.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel::<io::Result<()>>();
        let start = thread::Start {
            id,
            cpu: id % cores,
            life: life.clone(),
            cache: cache.clone(),
            metrics: metrics.clone(),
            limiter: limiter.clone(),
            listeners: sockets,
            started: tx,
        };
        let handle = std::thread::Builder::new()
            .name(format!("ocirelay-w{id}"))
            .spawn(move || thread::run(start))?;
        rx.recv()
            .map_err(|_| io::Error::other("worker died during start-up"))??;
        handles.push(handle);
    }
    metrics.health.set_listening();
    ready(&bound);
    notify::notify("READY=1");
    // The ACME thread runs for the life of the process; it is not joined
    // (the workers' end is the process's end).
    if let Some(a) = acme {
        a.spawn()?;
    }
    let reloader = Reloader {
        source,
        fixed,
        cache,
    };
    lifecycle::start(life, reloader, keeper)?;
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// The lifecycle's mutexes (generation, doorbells, handover) hold values
/// replaced whole, never left half-written: one a panicking holder left
/// poisoned is still good to use.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The content cache, with its eviction thread. An unusable directory is
/// not fatal: the mirror relays without storing, and says so (and
/// `/readyz` with it).
fn open_cache(cfg: &Config, metrics: &Arc<Metrics>) -> Option<Arc<Cache>> {
    let c = cfg.cache.as_ref()?;
    match Cache::open(c) {
        Ok(mut cache) => {
            // The shared tier: its state goes to `/readyz` and `/metrics`
            // through the metrics' shared `TierHealth`.
            cache.tier =
                c.s3.as_ref()
                    .map(|s3| crate::cache::s3::tier::Tier::new(s3, metrics.tier.clone()));
            let cache = Arc::new(cache);
            metrics.health.set_cache(CacheState::Writable);
            crate::cache::evict::start(cache.clone(), metrics.clone());
            Some(cache)
        }
        Err(e) => {
            crate::event!(
                Level::Warn,
                None,
                "cache: cannot use {}: {e}; relaying without a cache",
                c.dir.display()
            );
            metrics.health.set_cache(CacheState::Unusable);
            None
        }
    }
}
