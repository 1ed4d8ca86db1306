//! One worker thread: a monoio runtime (io_uring, else epoll) pinned to a
//! CPU, its [`Core`] (the per-core state of the current config
//! generation), an accept loop per listening socket, and its lifecycle
//! task, which installs each new generation and runs the drain. The thread
//! ends when its drain has ended: every connection it accepted is closed.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use monoio::io::Canceller;
use monoio::net::TcpListener;

use super::accept::{accept_loop, Acceptors, Listener};
use super::generation::Generation;
use super::lifecycle::Lifecycle;
use super::listeners::{Kind, ListeningSocket};
use crate::cache::Cache;
use crate::config::Driver;
use crate::gate::limits::Limiter;
use crate::ops::log::Level;
use crate::ops::metrics::{ListenerKind, Metrics};
use crate::tls;
use crate::upstream::{Trust, TrustKey, Upstreams};
use crate::worker::{Core, Worker};

/// What a worker thread starts from.
pub struct Start {
    pub id: usize,
    pub cpu: usize,
    pub life: Arc<Lifecycle>,
    /// The content cache (one for all workers).
    pub cache: Option<Arc<Cache>>,
    /// Counters (a slot per worker) and health flags.
    pub metrics: Arc<Metrics>,
    /// The per-client limits' budgets, shared by every worker.
    pub limiter: Arc<Limiter>,
    pub listeners: Vec<ListeningSocket>,
    /// Told once the worker accepts (or why it could not start).
    pub started: mpsc::Sender<io::Result<()>>,
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

pub fn run(s: Start) {
    let (id, cpu) = (s.id, s.cpu);
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
    let driver = s.life.current().cfg.driver;
    // io_uring when the kernel has it (and the operator did not say
    // otherwise); epoll when it is missing or disabled by sysctl.
    let uring = match driver {
        Driver::Auto => monoio::utils::detect_uring(),
        Driver::IoUring => true,
        Driver::Legacy => false,
    };
    let started = s.started.clone();
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
                    rt.block_on(serve(s, true));
                    return;
                }
                Err(e) => uring_error = Some(e),
            }
        }
        if driver != Driver::Auto {
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
        .map(|mut rt| rt.block_on(serve(s, false)));
    if let Err(e) = built {
        let _ = started.send(Err(io::Error::new(
            e.kind(),
            format!("cannot start the legacy driver: {e}"),
        )));
    }
}

/// The worker's life on its runtime: start, then follow the lifecycle.
async fn serve(s: Start, uring: bool) {
    let Start {
        id,
        life,
        cache,
        metrics,
        limiter,
        listeners,
        started,
        ..
    } = s;
    let generation = life.current();
    let (core, acceptors) = match first_worker(id, &generation, cache, &metrics, limiter) {
        Ok(w) => w,
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    let stop = Canceller::new();
    let mut accepting = Vec::new();
    for l in listeners {
        // epoll needs a non-blocking socket; io_uring's accept waits on its
        // own (as monoio binds them). A socket taken over from a process on
        // the other driver keeps its mode: the mode belongs to the socket,
        // which that process still accepts on.
        let socket = match (if uring {
            Ok(())
        } else {
            l.socket.set_nonblocking(true)
        })
        .and_then(|()| TcpListener::from_std(l.socket))
        {
            Ok(s) => s,
            Err(e) => {
                let _ = started.send(Err(e));
                return;
            }
        };
        let kind = match l.kind {
            Kind::Plain | Kind::ProxyProtocol => Listener {
                tls: None,
                proxy_protocol: l.kind == Kind::ProxyProtocol,
                kind: ListenerKind::Http,
            },
            Kind::Tls(i) => Listener {
                tls: Some((i, acceptors.clone())),
                proxy_protocol: generation.cfg.tls_listeners[i].proxy_protocol,
                kind: ListenerKind::Https,
            },
            Kind::Metrics => Listener {
                tls: None,
                proxy_protocol: false,
                kind: ListenerKind::Ops,
            },
        };
        accepting.push(monoio::spawn(accept_loop(
            core.clone(),
            socket,
            kind,
            stop.handle(),
        )));
    }
    monoio::spawn(crate::worker::trim_memory());
    let flushing = core.clone();
    monoio::spawn(async move {
        loop {
            monoio::time::sleep(Duration::from_secs(1)).await;
            let w = flushing.worker();
            w.flush_access_log();
            w.upstreams.close_idle();
        }
    });
    // The shared tier's writes queued on this worker (uploads of verified
    // objects, tag records, access notes), sent while the tier answers:
    // never on a request.
    let uploading = core.clone();
    monoio::spawn(async move {
        loop {
            let w = uploading.worker();
            let sent = match w.cache.as_ref().and_then(|c| c.tier.as_ref()) {
                Some(tier) => {
                    tier.heartbeat(&w.upstreams).await;
                    tier.drain(&w.upstreams).await
                }
                None => false,
            };
            drop(w);
            if !sent {
                monoio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let _ = started.send(Ok(()));
    drop(started);

    let mut seen = generation.number;
    loop {
        life.bell(id).rung().await;
        let next = life.current();
        if next.number != seen {
            seen = next.number;
            match next_worker(&core.worker(), &next, &acceptors) {
                Ok(w) => {
                    core.install(w);
                    life.installed(id, seen);
                }
                Err(e) => crate::event!(
                    Level::Error,
                    Some(id),
                    "config generation {seen}: {e}; this worker keeps the one before"
                ),
            }
        }
        if life.draining() {
            drain(id, &core, stop, accepting).await;
            return;
        }
    }
}

/// The drain on this core: stop accepting, end idle connections, wait for
/// the others to finish their response.
async fn drain(
    id: usize,
    core: &Core,
    stop: Canceller,
    accepting: Vec<monoio::task::JoinHandle<()>>,
) {
    core.start_drain();
    stop.cancel();
    // Each accept loop ends once its accept has completed: cancelled, or
    // with a connection the kernel handed over anyway, which is then
    // counted and served. Leaving earlier could drop such a connection
    // with the runtime.
    for a in accepting {
        a.await;
    }
    crate::event!(
        Level::Info,
        Some(id),
        "draining with {} connection(s) open",
        core.open_connections()
    );
    // Rare and short: a poll every 20 ms beats a waker on every close.
    while core.open_connections() > 0 {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    core.worker().flush_access_log();
}

/// The core's state for the first generation, and its TLS server configs.
fn first_worker(
    id: usize,
    g: &Generation,
    cache: Option<Arc<Cache>>,
    metrics: &Arc<Metrics>,
    limiter: Arc<Limiter>,
) -> io::Result<(Rc<Core>, Acceptors)> {
    let (trusts, keys) = trusts(g, |_| None)?;
    let worker = Worker::new(
        id,
        g.cfg.clone(),
        Upstreams::new(trusts, g.cfg.timeouts),
        keys,
        cache,
        g.access.clone(),
        g.acme.clone(),
        metrics.recorder(id),
        limiter,
    );
    let acceptors = Rc::new(RefCell::new(server_configs(g)?));
    Ok((Core::new(worker), acceptors))
}

/// The next generation's state for this core, from the current one: client
/// configs of unchanged trust are kept (with their session caches), so are
/// the pools and buffers (see `Worker::reloaded`); new certificates go
/// into `acceptors`.
fn next_worker(old: &Worker, g: &Generation, acceptors: &Acceptors) -> io::Result<Worker> {
    let (trusts, keys) = trusts(g, |key| old.upstreams.trust(key).cloned())?;
    let configs = server_configs(g)?;
    let upstreams = old.upstreams.reconfigured(trusts, g.cfg.timeouts);
    *acceptors.borrow_mut() = configs;
    Ok(old.reloaded(g.cfg.clone(), upstreams, keys, g.access.clone()))
}

/// One client config per distinct set of extra roots (`known` gives one
/// already built), built on this thread (rustls session caches are then
/// per worker); each registry names its trust by content, not position.
fn trusts(
    g: &Generation,
    known: impl Fn(TrustKey) -> Option<Trust>,
) -> io::Result<(Vec<Trust>, Vec<TrustKey>)> {
    let keys: Vec<TrustKey> = g.extra_roots.iter().map(|r| TrustKey::of(r)).collect();
    let mut trusts: Vec<Trust> = Vec::new();
    // The shared tier's store is verified under a trust of its own, named
    // by no registry (`S3Client::trust` computes the same key).
    let s3 = g.s3_roots.iter().map(|r| (TrustKey::of(r), r));
    for (key, roots) in keys.iter().copied().zip(&g.extra_roots).chain(s3) {
        if trusts.iter().any(|t| t.key == key) {
            continue;
        }
        let trust = match known(key) {
            Some(t) => t,
            None => Trust {
                key,
                config: tls::client_config(roots).map_err(io::Error::other)?,
            },
        };
        trusts.push(trust);
    }
    Ok((trusts, keys))
}

fn server_configs(g: &Generation) -> io::Result<Vec<Arc<rustls::ServerConfig>>> {
    g.server_tls
        .iter()
        .map(|m| tls::server_config(m).map_err(io::Error::other))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::s3::S3Client;
    use crate::config::Config;

    #[test]
    fn the_shared_tiers_ca_file_is_a_worker_trust_under_the_clients_key() {
        let dir = std::env::temp_dir().join(format!("ocirelay-s3trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, params.self_signed(&key).unwrap().pem()).unwrap();
        let cfg = Config::parse(&format!(
            "listen = [\"127.0.0.1:1\"]\n[cache]\ndir = \"{}\"\n[cache.s3]\n\
             endpoint = \"https://s3.example\"\nbucket = \"mirror\"\npath_style = true\n\
             access_key_id = \"a\"\nsecret_access_key = \"b\"\nca_file = \"{}\"\n",
            dir.join("cache").display(),
            ca.display()
        ))
        .unwrap();
        let client = S3Client::new(cfg.cache.as_ref().unwrap().s3.as_ref().unwrap());
        let registries = cfg.registries.len();
        let g = Generation::load(1, cfg, None, None).unwrap();
        let (trusts, keys) = trusts(&g, |_| None).unwrap();
        assert_eq!(keys.len(), registries, "one key per registry, as before");
        assert!(
            trusts.iter().any(|t| t.key == client.trust()),
            "the store's trust is registered"
        );
        assert_ne!(client.trust(), TrustKey::of(&[]));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
