//! The process's life after start-up: SIGHUP reloads the config, SIGTERM
//! (or SIGINT) drains and ends it, a second SIGTERM/SIGINT ends it at once.
//!
//! Signals are blocked in every thread (`sys::block_lifecycle_signals`,
//! first thing in `server::run`) and taken by one small thread here with
//! `sigtimedwait`: no handler runs inside a worker, and no second runtime
//! is involved. What the thread decides reaches the workers through
//! [`Lifecycle`], the one shared type of this module: the current
//! [`Generation`] behind a mutex (taken on a reload and once per worker
//! after it, never per request), a drain flag, and one [`Doorbell`] per
//! worker, a cross-thread waker (monoio's `sync` feature) that wakes the
//! worker's lifecycle task at once instead of it polling.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use super::generation::{Generation, LoadError};
use super::handover::Keeper;
use super::lock;
use crate::cache::Cache;
use crate::config::{AcmeConfig, Config, ConfigSource, Driver, HandoverSocket, MetricsListen};
use crate::ops::log::{self, Level};
use crate::sys::{self, Signal};

/// What the lifecycle thread tells the workers (see the module comment).
pub struct Lifecycle {
    current: Mutex<Arc<Generation>>,
    draining: AtomicBool,
    bells: Vec<Doorbell>,
    /// The generation each worker serves new requests with.
    installed: Vec<AtomicU64>,
}

impl Lifecycle {
    pub fn new(first: Generation, workers: usize) -> Lifecycle {
        let number = first.number;
        Lifecycle {
            current: Mutex::new(Arc::new(first)),
            draining: AtomicBool::new(false),
            bells: (0..workers).map(|_| Doorbell::default()).collect(),
            installed: (0..workers).map(|_| AtomicU64::new(number)).collect(),
        }
    }

    /// Worker `id` serves new requests with generation `number` now.
    pub fn installed(&self, id: usize, number: u64) {
        self.installed[id].store(number, Ordering::SeqCst);
    }

    /// Waits (up to `limit`) until every worker serves generation `number`,
    /// so that "applied" in the log means what it says.
    fn wait_installed(&self, number: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self
            .installed
            .iter()
            .any(|n| n.load(Ordering::SeqCst) < number)
        {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// The generation new requests should run with.
    pub fn current(&self) -> Arc<Generation> {
        lock(&self.current).clone()
    }

    /// Makes `next` current and wakes every worker to pick it up.
    fn publish(&self, next: Generation) {
        *lock(&self.current) = Arc::new(next);
        self.ring_all();
    }

    /// Starts the drain on every worker.
    fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.ring_all();
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Worker `id`'s doorbell.
    pub fn bell(&self, id: usize) -> &Doorbell {
        &self.bells[id]
    }

    fn ring_all(&self) {
        for b in &self.bells {
            b.ring();
        }
    }
}

/// Wakes one worker's lifecycle task from another thread. A ring while the
/// task is busy is not lost: the next wait returns at once.
#[derive(Default)]
pub struct Doorbell {
    rung: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Doorbell {
    fn ring(&self) {
        self.rung.store(true, Ordering::SeqCst);
        let waker = lock(&self.waker).take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Resolves at the next ring (at once if one came since the last wait).
    pub async fn rung(&self) {
        std::future::poll_fn(|cx| {
            if self.rung.swap(false, Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *lock(&self.waker) = Some(cx.waker().clone());
            // A ring between the check and storing the waker found no waker
            // to wake; it left the flag set.
            if self.rung.swap(false, Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// Builds the next generation from the config's source.
pub struct Reloader {
    pub source: ConfigSource,
    /// The settings a running process keeps, as the process started with
    /// them (before port 0 was resolved).
    pub fixed: Fixed,
    /// The process's cache, whose policy a reload updates.
    pub cache: Option<Arc<Cache>>,
}

impl Reloader {
    /// Reads and checks the config and everything it names; publishes it
    /// only if all of it loaded. Returns the new generation's number.
    fn reload(&self, life: &Lifecycle) -> Result<u64, LoadError> {
        let mut cfg = self.source.load().map_err(LoadError::Config)?;
        let running = life.current();
        for setting in self.fixed.keep(&running.cfg, &mut cfg) {
            crate::event!(
                Level::Warn,
                None,
                "reload: {} changed in {}; that needs a restart (see README, \"Reload and upgrade\"): the running one is kept",
                setting,
                self.source
            );
        }
        let next = Generation::load(
            running.number + 1,
            cfg,
            running.access.clone(),
            running.acme.clone(),
        )?;
        if let (Some(cache), Some(c)) = (&self.cache, &next.cfg.cache) {
            cache.set_policy(c);
        }
        log::set_threshold(next.cfg.log_level);
        let number = next.number;
        life.publish(next);
        if !life.wait_installed(number, INSTALL_WAIT) {
            crate::event!(
                Level::Warn,
                None,
                "reload: not every worker took generation {number} within {}s",
                INSTALL_WAIT.as_secs()
            );
        }
        Ok(number)
    }
}

/// How long a reload waits for the workers to take a new generation: each
/// does between two polls of its event loop, within milliseconds.
const INSTALL_WAIT: Duration = Duration::from_secs(5);

/// What a running process cannot change: its listening sockets (what they
/// expect first, the workers they belong to and the driver they run on;
/// the metrics listener too), the cache directory, the handover socket and
/// the ACME account (its thread starts once).
pub struct Fixed {
    listen: Vec<SocketAddr>,
    proxy_listen: Vec<SocketAddr>,
    /// Each TLS listener's address and whether it expects PROXY headers.
    tls: Vec<(SocketAddr, bool)>,
    workers: usize,
    driver: Driver,
    cache_dir: Option<PathBuf>,
    handover: Option<HandoverSocket>,
    acme: Option<AcmeConfig>,
    metrics: MetricsListen,
}

impl Fixed {
    pub fn of(cfg: &Config) -> Fixed {
        Fixed {
            listen: cfg.listen.clone(),
            proxy_listen: cfg.proxy_protocol_listen.clone(),
            tls: tls_sockets(cfg),
            workers: cfg.workers,
            driver: cfg.driver,
            cache_dir: cfg.cache.as_ref().map(|c| c.dir.clone()),
            handover: cfg.handover_socket.clone(),
            acme: cfg.acme.clone(),
            metrics: cfg.metrics,
        }
    }

    /// Puts the running values of the fixed settings into `cfg` (a
    /// reloaded config) and names those the file changed.
    fn keep(&self, running: &Config, cfg: &mut Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let c = &mut changed;
        keep(
            c,
            "`listen`",
            &mut cfg.listen,
            &self.listen,
            &running.listen,
        );
        keep(
            c,
            "`proxy_protocol_listen`",
            &mut cfg.proxy_protocol_listen,
            &self.proxy_listen,
            &running.proxy_protocol_listen,
        );
        let tls = tls_sockets(cfg);
        if tls.len() != self.tls.len() {
            changed.push("the number of [[tls_listener]]s");
            cfg.tls_listeners = running.tls_listeners.clone();
        } else {
            if tls != self.tls {
                changed.push("a [[tls_listener]] `addr` or `proxy_protocol`");
            }
            // Certificates and keys apply; the sockets stay as they are.
            for (new, old) in cfg.tls_listeners.iter_mut().zip(&running.tls_listeners) {
                new.addr = old.addr;
                new.proxy_protocol = old.proxy_protocol;
            }
        }
        let c = &mut changed;
        keep(
            c,
            "`workers`",
            &mut cfg.workers,
            &self.workers,
            &running.workers,
        );
        keep(
            c,
            "`driver`",
            &mut cfg.driver,
            &self.driver,
            &running.driver,
        );
        let dir = cfg.cache.as_ref().map(|c| c.dir.clone());
        if dir != self.cache_dir {
            changed.push("[cache] `enabled` or `dir`");
            cfg.cache = match (cfg.cache.take(), &running.cache) {
                (Some(new), Some(old)) => Some(crate::config::CacheConfig {
                    dir: old.dir.clone(),
                    ..new
                }),
                (_, old) => old.clone(),
            };
        }
        // The shared tier is built with the cache, once per process.
        let s3 = cfg.cache.as_ref().and_then(|c| c.s3.clone());
        let running_s3 = running.cache.as_ref().and_then(|c| c.s3.clone());
        if s3 != running_s3 {
            changed.push("[cache.s3]");
            if let Some(c) = cfg.cache.as_mut() {
                c.s3 = running_s3;
            }
        }
        let c = &mut changed;
        keep(
            c,
            "`handover_socket`",
            &mut cfg.handover_socket,
            &self.handover,
            &running.handover_socket,
        );
        keep(c, "[acme]", &mut cfg.acme, &self.acme, &running.acme);
        let metrics = &running.metrics;
        keep(
            c,
            "`metrics_listen`",
            &mut cfg.metrics,
            &self.metrics,
            metrics,
        );
        changed
    }
}

/// A fixed setting of a reloaded config: named in `changed` when the file
/// says otherwise than at start-up (`started`), and set to what runs either
/// way (`running`: the same, with port 0 resolved).
fn keep<T: PartialEq + Clone>(
    changed: &mut Vec<&'static str>,
    name: &'static str,
    file: &mut T,
    started: &T,
    running: &T,
) {
    if file != started {
        changed.push(name);
    }
    *file = running.clone();
}

fn tls_sockets(cfg: &Config) -> Vec<(SocketAddr, bool)> {
    cfg.tls_listeners
        .iter()
        .map(|t| (t.addr, t.proxy_protocol))
        .collect()
}

/// Ends the process without waiting for the workers: after the drain
/// timeout (0), or on a second signal (128 + its number, as a shell
/// reports a process a signal ended).
fn exit_now(code: i32) -> ! {
    std::process::exit(code)
}

/// Starts the lifecycle thread: it runs for the life of the process.
pub fn start(
    life: Arc<Lifecycle>,
    reloader: Reloader,
    keeper: Option<Keeper>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ocirelay-life".into())
        .spawn(move || watch(&life, &reloader, keeper))?;
    Ok(())
}

/// How long the thread sleeps in `sigtimedwait` when nothing is due.
const IDLE_WAIT: Duration = Duration::from_secs(3600);

fn watch(life: &Lifecycle, reloader: &Reloader, keeper: Option<Keeper>) {
    let mut deadline: Option<Instant> = None;
    loop {
        let wait = deadline.map_or(IDLE_WAIT, |d| d.saturating_duration_since(Instant::now()));
        match sys::wait_signal(wait) {
            Some(Signal::Hangup) if deadline.is_some() => {
                crate::event!(Level::Info, None, "SIGHUP while draining: no reload");
            }
            Some(Signal::Hangup) => match reloader.reload(life) {
                Ok(n) => crate::event!(
                    Level::Info,
                    None,
                    "reload: {}: config generation {n} applied",
                    reloader.source
                ),
                Err(e) => crate::event!(
                    Level::Error,
                    None,
                    "reload: {}: {e}; the running config is kept",
                    reloader.source
                ),
            },
            Some(sig @ (Signal::Terminate | Signal::Interrupt)) => {
                if deadline.is_some() {
                    crate::event!(
                        Level::Warn,
                        None,
                        "second {}: exiting now, requests under way are cut",
                        sig.name()
                    );
                    exit_now(128 + sig.number());
                }
                // The handed-over copies go first: when the workers then
                // close theirs, a socket no successor took closes, and new
                // connections are refused instead of queueing unanswered.
                if let Some(k) = &keeper {
                    k.close();
                }
                let limit = life.current().cfg.timeouts.drain;
                deadline = Some(Instant::now() + limit);
                crate::event!(
                    Level::Info,
                    None,
                    "{}: draining: listeners closed, requests under way get up to {}s to finish",
                    sig.name(),
                    limit.as_secs()
                );
                life.drain();
                super::notify::notify("STOPPING=1");
            }
            None => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    crate::event!(
                        Level::Warn,
                        None,
                        "drain timeout: exiting with requests still under way"
                    );
                    exit_now(0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text).unwrap()
    }

    #[test]
    fn a_reload_keeps_what_needs_a_restart_and_names_it() {
        let started = parse("listen = [\"127.0.0.1:0\"]\nworkers = 2\n");
        let fixed = Fixed::of(&started);
        // What runs: port 0 resolved.
        let mut running = started.clone();
        running.listen = vec!["127.0.0.1:5123".parse().unwrap()];

        // The same file: nothing named, the resolved port kept.
        let mut same = started.clone();
        assert!(fixed.keep(&running, &mut same).is_empty());
        assert_eq!(same.listen, running.listen);

        let mut moved = parse(
            "listen = [\"127.0.0.1:9\"]\nworkers = 4\ndriver = \"legacy\"\nhandover_socket = \"@x\"\n[cache]\ndir = \"/elsewhere\"\n",
        );
        let named = fixed.keep(&running, &mut moved);
        assert_eq!(
            named,
            [
                "`listen`",
                "`workers`",
                "`driver`",
                "[cache] `enabled` or `dir`",
                "`handover_socket`"
            ]
        );
        assert_eq!(moved.listen, running.listen);
        assert_eq!((moved.workers, moved.driver), (2, Driver::Auto));
        assert_eq!(moved.cache.unwrap().dir, started.cache.unwrap().dir);
        assert_eq!(moved.handover_socket, None);
    }
}
