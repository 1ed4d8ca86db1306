//! Start-up and the workers: N threads, each one monoio runtime pinned to a
//! CPU, with its own SO_REUSEPORT listeners, its own upstream pools and TLS
//! configs. The kernel spreads connections across the listeners; after
//! start-up nothing crosses threads. `accept`: each connection's opening
//! phases (PROXY header, TLS handshake) before HTTP.

mod accept;

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use monoio::net::{ListenerOpts, TcpListener};
use rustls::pki_types::CertificateDer;

use crate::acme::{self, Acme};
use crate::cache::Cache;
use crate::config::{CertSource, Config, Driver, MetricsListen};
use crate::ops::health::CacheState;
use crate::ops::log::Level;
use crate::ops::metrics::{ListenerKind, Metrics};
use crate::tls::{self, ServerCerts};
use crate::upstream::{Trust, TrustKey, Upstreams};
use crate::worker::Worker;

/// What every worker is built from (read-only, shared at start-up only).
struct Shared {
    cfg: Arc<Config>,
    /// Certificates per `tls_listeners` entry: parsed files, or ACME's store.
    server_tls: Vec<ServerCerts>,
    /// Extra CA roots per registry.
    extra_roots: Vec<Vec<CertificateDer<'static>>>,
    /// The content cache (one for all workers).
    cache: Option<Arc<Cache>>,
    /// Access knowledge (the cache's, or memory-only; see `Worker::access`).
    access: Option<Arc<crate::cache::access::Access>>,
    /// ACME's certificate store and challenge answers (with `[acme]`).
    acme: Option<Arc<acme::Shared>>,
    /// Counters (a slot per worker) and health flags.
    metrics: Arc<Metrics>,
}

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

/// Loads TLS material, starts the workers and blocks until they end.
/// `ready` is called once every worker listens.
pub fn run(cfg: Config, ready: impl FnOnce(&Bound)) -> io::Result<()> {
    // ACME: a stored certificate is installed before the listeners open;
    // ordering and renewing start once they serve (the challenges need them).
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
    let server_tls = cfg
        .tls_listeners
        .iter()
        .map(|l| match (&l.certs, &acme_shared) {
            (CertSource::Files { cert, key }, _) => tls::load_server(cert, key)
                .map(ServerCerts::Static)
                .map_err(|e| e.to_string()),
            (CertSource::Acme, Some(shared)) => Ok(ServerCerts::Acme(shared.certs.clone())),
            (CertSource::Acme, None) => Err("a tls_listener without cert/key needs [acme]".into()),
        })
        .collect::<Result<Vec<_>, String>>()
        .map_err(io::Error::other)?;
    let extra_roots = cfg
        .registries
        .iter()
        .map(|r| {
            r.ca_file
                .as_deref()
                .map(tls::load_certs)
                .unwrap_or(Ok(Vec::new()))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(io::Error::other)?;
    for roots in &extra_roots {
        tls::client_config(roots).map_err(io::Error::other)?;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = if cfg.workers == 0 { cores } else { cfg.workers };
    let metrics = Arc::new(Metrics::new(workers, cfg.registries.len()));
    // An unusable cache directory is not fatal: the mirror relays without
    // storing, and says so (and `/readyz` with it).
    let cache = cfg.cache.as_ref().and_then(|c| match Cache::open(c) {
        Ok(cache) => {
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
    });
    // Access knowledge is the cache's; without a cache, upstream
    // credentials still need it (whose token is anonymous, which repository
    // is public) and get a memory-only one.
    let access = match &cache {
        Some(c) => Some(c.access.clone()),
        None if cfg.registries.iter().any(|r| r.credentials.is_some()) => {
            Some(Arc::new(crate::cache::access::Access::default()))
        }
        None => None,
    };
    let mut cfg = cfg;
    let mut shared = Arc::new(Shared {
        cfg: Arc::new(cfg.clone()),
        server_tls,
        extra_roots,
        cache,
        access,
        acme: acme_shared,
        metrics,
    });

    // Worker 0 binds first so that port 0 resolves to one real port, which
    // the other workers then share through SO_REUSEPORT.
    let mut handles = Vec::new();
    let mut bound = None;
    for id in 0..workers {
        let (tx, rx) = mpsc::channel::<io::Result<Bound>>();
        let sh = shared.clone();
        let handle = std::thread::Builder::new()
            .name(format!("ocirelay-w{id}"))
            .spawn(move || worker_thread(id, id % cores, sh, tx))?;
        let b = rx
            .recv()
            .map_err(|_| io::Error::other("worker died during start-up"))??;
        if id == 0 {
            cfg.listen = b.plain.clone();
            cfg.proxy_protocol_listen = b.proxy_protocol.clone();
            for (l, a) in cfg.tls_listeners.iter_mut().zip(&b.tls) {
                l.addr = *a;
            }
            shared = Arc::new(Shared {
                cfg: Arc::new(cfg.clone()),
                server_tls: shared.server_tls.clone(),
                extra_roots: shared.extra_roots.clone(),
                cache: shared.cache.clone(),
                access: shared.access.clone(),
                acme: shared.acme.clone(),
                metrics: shared.metrics.clone(),
            });
            bound = Some(b);
        }
        handles.push(handle);
    }
    shared.metrics.health.set_listening();
    if let Some(b) = &bound {
        ready(b);
    }
    // The manager thread runs for the life of the process; it is not
    // joined (the workers' end is the process's end).
    if let Some(a) = acme {
        a.spawn()?;
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// io_uring setups a worker tries, best first, until the kernel takes one
/// (it answers EINVAL to flags it does not know). COOP_TASKRUN: ~11% less
/// CPU per small request; not DEFER_TASKRUN (15-20% slower at 256
/// connections with monoio). Measurements: `docs/design.md`, "io_uring".
fn uring_setups() -> [(&'static str, io_uring::Builder); 2] {
    let mut coop = io_uring::IoUring::builder();
    coop.setup_coop_taskrun().setup_taskrun_flag();
    [
        ("coop_taskrun", coop),
        ("default setup", io_uring::IoUring::builder()),
    ]
}

fn worker_thread(id: usize, cpu: usize, sh: Arc<Shared>, started: mpsc::Sender<io::Result<Bound>>) {
    let pinned = monoio::utils::bind_to_cpu_set([cpu]).is_ok();
    let announce = |driver: &str| {
        crate::event!(
            Level::Info,
            Some(id),
            "worker {id} on {driver}{}",
            if pinned {
                format!(", pinned to cpu {cpu}")
            } else {
                String::new()
            }
        )
    };
    // io_uring when the kernel has it (and the operator did not say
    // otherwise); epoll when it is missing or disabled by sysctl.
    let uring = match sh.cfg.driver {
        Driver::Auto => monoio::utils::detect_uring(),
        Driver::IoUring => true,
        Driver::Legacy => false,
    };
    let tx = started.clone();
    let auto = sh.cfg.driver == Driver::Auto;
    let body = async move {
        match start_worker(id, &sh).await {
            Ok((bound, tasks)) => {
                let _ = tx.send(Ok(bound));
                for t in tasks {
                    t.await;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    };
    let pool = || Box::new(monoio::blocking::DefaultThreadPool::new(1));
    let mut uring_error = None;
    if uring {
        for (setup, urb) in uring_setups() {
            // `with_entries` sizes the SQ (CQ: twice that); `uring_builder`
            // only carries the setup flags, the two do not interact.
            let built = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .uring_builder(urb)
                .enable_timer()
                .with_entries(1024)
                .attach_thread_pool(pool())
                .build();
            match built {
                Ok(mut rt) => {
                    announce(&format!("io_uring driver ({setup})"));
                    rt.block_on(body);
                    return;
                }
                Err(e) => uring_error = Some(e),
            }
        }
        if !auto {
            let e = uring_error.unwrap_or_else(|| io::Error::other("no io_uring setup"));
            let _ = started.send(Err(io::Error::new(
                e.kind(),
                format!("cannot start the io_uring driver: {e}"),
            )));
            return;
        }
    }
    match &uring_error {
        Some(e) => announce(&format!("legacy (epoll) driver (io_uring: {e})")),
        None => announce("legacy (epoll) driver"),
    }
    let built = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .attach_thread_pool(pool())
        .build()
        .map(|mut rt| rt.block_on(body));
    if let Err(e) = built {
        let _ = started.send(Err(io::Error::new(
            e.kind(),
            format!("cannot start the legacy driver: {e}"),
        )));
    }
}

async fn start_worker(
    id: usize,
    sh: &Shared,
) -> io::Result<(Bound, Vec<monoio::task::JoinHandle<()>>)> {
    let cfg = sh.cfg.clone();
    // One client config per distinct set of extra roots, built on this
    // thread (rustls session caches are then per worker); each registry
    // names its trust by content, not by position.
    let keys: Vec<TrustKey> = sh.extra_roots.iter().map(|r| TrustKey::of(r)).collect();
    let mut trusts: Vec<Trust> = Vec::new();
    for (key, roots) in keys.iter().zip(&sh.extra_roots) {
        if trusts.iter().all(|t| t.key != *key) {
            let config = tls::client_config(roots).map_err(io::Error::other)?;
            trusts.push(Trust { key: *key, config });
        }
    }
    let w = Rc::new(Worker::new(
        id,
        cfg.clone(),
        Upstreams::new(trusts, cfg.timeouts),
        keys,
        sh.cache.clone(),
        sh.access.clone(),
        sh.acme.clone(),
        sh.metrics.recorder(id),
    ));
    let opts = ListenerOpts::new()
        .reuse_port(true)
        .reuse_addr(true)
        .backlog(1024);
    let mut bound = Bound {
        plain: Vec::new(),
        proxy_protocol: Vec::new(),
        tls: Vec::new(),
        metrics: None,
    };
    let mut tasks = Vec::new();
    tasks.push(monoio::spawn(crate::worker::trim_memory()));
    if w.access_log.is_some() {
        let w = w.clone();
        tasks.push(monoio::spawn(async move {
            loop {
                monoio::time::sleep(Duration::from_secs(1)).await;
                if let Some(log) = &w.access_log {
                    log.flush();
                }
            }
        }));
    }
    let bind = |addr: &SocketAddr| {
        TcpListener::bind_with_config(addr, &opts)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
    };
    let plain = [(&cfg.listen, false), (&cfg.proxy_protocol_listen, true)];
    for (addrs, proxy_protocol) in plain {
        for addr in addrs {
            let l = bind(addr)?;
            let at = l.local_addr()?;
            match proxy_protocol {
                false => bound.plain.push(at),
                true => bound.proxy_protocol.push(at),
            }
            let kind = accept::Listener {
                tls: None,
                proxy_protocol,
                kind: ListenerKind::Http,
            };
            tasks.push(monoio::spawn(accept::accept_loop(w.clone(), l, kind)));
        }
    }
    for (i, t) in cfg.tls_listeners.iter().enumerate() {
        let l = bind(&t.addr)?;
        bound.tls.push(l.local_addr()?);
        let kind = accept::Listener {
            tls: Some(tls::server_config(&sh.server_tls[i]).map_err(io::Error::other)?),
            proxy_protocol: t.proxy_protocol,
            kind: ListenerKind::Https,
        };
        tasks.push(monoio::spawn(accept::accept_loop(w.clone(), l, kind)));
    }
    if let (0, Some(l)) = (id, metrics_listener(&cfg)?) {
        bound.metrics = Some(l.local_addr()?);
        let kind = accept::Listener {
            tls: None,
            proxy_protocol: false,
            kind: ListenerKind::Ops,
        };
        tasks.push(monoio::spawn(accept::accept_loop(w.clone(), l, kind)));
    }
    Ok((bound, tasks))
}

/// The metrics listener, bound by worker 0 alone and without SO_REUSEPORT:
/// scrapes are few, and a second process on the same address must fail to
/// bind rather than share it (a scraper would see either process's
/// numbers). A taken default address is passed over with a warning.
fn metrics_listener(cfg: &Config) -> io::Result<Option<TcpListener>> {
    let MetricsListen::Own { addr, configured } = cfg.metrics else {
        return Ok(None);
    };
    let opts = ListenerOpts::new().reuse_addr(true).backlog(64);
    match TcpListener::bind_with_config(addr, &opts) {
        Ok(l) => Ok(Some(l)),
        Err(e) if !configured => {
            crate::event!(
                Level::Warn,
                Some(0),
                "metrics: cannot listen on {addr} ({e}); starting without a metrics listener (set metrics_listen)"
            );
            Ok(None)
        }
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} (metrics_listen): {e}"),
        )),
    }
}
