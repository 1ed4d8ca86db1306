//! File descriptors: the process's limit (raised to the hard one at start),
//! the cap on client connections derived from it, what an accept loop does
//! when the kernel has no descriptor left (`EMFILE`, `ENFILE`), and the
//! reserve that keeps the operator's listener answering then.
//!
//! How the cap is shared: each worker takes `max_connections / workers`
//! (rounded up) for its own listeners and counts only its own connections,
//! with no counter shared across threads. The kernel spreads new
//! connections evenly over the SO_REUSEPORT listeners (by a hash of the
//! client's address and port), so the shares fill together. At its share a
//! worker closes its idlest keep-alive connection for each new one; with
//! none idle it stops accepting until one closes, and new connections wait
//! in the listen backlog. The operator's listener (`metrics_listen`) is not
//! capped: `/healthz` answers while the public listeners are full.
//!
//! Why a third of the limit: besides its own socket a connection may hold
//! an upstream connection and a cache file at once.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::ops::log::Level;

/// Descriptors kept out of the connection budget: listeners, the cache
/// index and log files, io_uring rings, DNS and ACME sockets.
const RESERVED_FDS: u64 = 128;
/// The smallest derived cap (a tiny limit still serves someone).
const MIN_CONNECTIONS: usize = 16;

/// The derived cap, all workers together (set once at start).
static DERIVED: AtomicUsize = AtomicUsize::new(usize::MAX);
/// Worker threads (set once at start).
static WORKERS: AtomicUsize = AtomicUsize::new(1);

/// Raises the soft descriptor limit to the hard one and derives the
/// connection cap from it; says both on the event log.
pub(super) fn start(workers: usize, cfg: &Config) {
    WORKERS.store(workers.max(1), Ordering::Relaxed);
    reserve();
    let limit = match crate::sys::raise_fd_limit() {
        Ok(l) => l,
        Err(e) => {
            crate::event!(
                Level::Warn,
                None,
                "cannot read or raise the file descriptor limit: {e}"
            );
            return;
        }
    };
    let derived = derived_cap(limit.now);
    DERIVED.store(derived, Ordering::Relaxed);
    let raised = if limit.before < limit.now {
        format!(
            "raised from {} to the hard limit, {}",
            limit.before, limit.now
        )
    } else {
        format!("{} (the hard limit)", limit.now)
    };
    let cap = match cfg.limits.max_connections {
        Some(n) => format!("{n} (max_connections)"),
        None => format!("{derived} (derived from the limit)"),
    };
    crate::event!(
        Level::Info,
        None,
        "file descriptors: {raised}; client connections capped at {cap}, shared by {workers} worker(s)"
    );
}

/// The cap a descriptor limit allows: a third of what is left after the
/// reserve (see the module comment).
fn derived_cap(limit: u64) -> usize {
    let per_conn = limit.saturating_sub(RESERVED_FDS) / 3;
    usize::try_from(per_conn)
        .unwrap_or(usize::MAX)
        .max(MIN_CONNECTIONS)
}

/// This worker's share of the cap under `cfg`.
pub(super) fn worker_cap(cfg: &Config) -> usize {
    let total = cfg
        .limits
        .max_connections
        .unwrap_or_else(|| DERIVED.load(Ordering::Relaxed));
    total.div_ceil(WORKERS.load(Ordering::Relaxed))
}

/// Whether an accept failed for want of descriptors (the process's or
/// the system's): the one failure worth a reserve and a longer wait.
pub(super) fn out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// Pacing of an accept loop whose accepts fail: an exponential wait (so a
/// loop out of descriptors sleeps instead of spinning) and one log line
/// per [`LOG_EVERY`] at most, counting the failures in between.
pub(super) struct AcceptBackoff {
    wait: Duration,
    failed: u64,
    logged: Option<Instant>,
}

const FIRST_WAIT: Duration = Duration::from_millis(5);
/// The longest wait: a descriptor freed is used within this long.
const MAX_WAIT: Duration = Duration::from_millis(500);
const LOG_EVERY: Duration = Duration::from_secs(10);

impl AcceptBackoff {
    pub(super) fn new() -> AcceptBackoff {
        AcceptBackoff {
            wait: Duration::ZERO,
            failed: 0,
            logged: None,
        }
    }

    /// Notes a failed accept (logging it if a line is due); returns how
    /// long to wait before the next.
    pub(super) fn failed(&mut self, worker: usize, e: &io::Error) -> Duration {
        self.failed += 1;
        self.wait = (self.wait * 2).clamp(FIRST_WAIT, MAX_WAIT);
        let due = self.logged.is_none_or(|at| at.elapsed() >= LOG_EVERY);
        if due {
            let more = match self.failed - 1 {
                0 => String::new(),
                n => format!(" ({n} more since the last line)"),
            };
            crate::event!(
                Level::Warn,
                Some(worker),
                "accept failed: {e}{more}; retrying in up to {} ms",
                MAX_WAIT.as_millis()
            );
            self.logged = Some(Instant::now());
            self.failed = 0;
        }
        self.wait
    }

    /// An accept succeeded: the next failure starts from a short wait.
    pub(super) fn succeeded(&mut self) {
        self.wait = Duration::ZERO;
    }
}

/// One descriptor held back (on `/dev/null`) for the operator's listener:
/// out of descriptors, an accept there closes this one to take a health
/// check, and the connection's end takes it back. Public accept loops back
/// off meanwhile, so the descriptor freed is the one the next accept gets.
/// One for the process, not one per worker: the workers' accepts on the
/// operator's listener race for the descriptor freed, and whichever serves
/// the check must be the one that refills it. Touched only out of
/// descriptors and around health checks, never on the data path.
static RESERVE: Mutex<Option<File>> = Mutex::new(None);
/// Whether [`RESERVE`] holds its descriptor: read before every public
/// accept, so an atomic rather than the lock.
static RESERVED: AtomicBool = AtomicBool::new(false);
/// Whether there is a reserve at all: none when `/dev/null` could not be
/// opened at start (then public loops must never wait for it).
static RESERVING: AtomicBool = AtomicBool::new(false);

/// Whether the reserve is empty: a health check took it, or a public
/// accept took the descriptor a check's close freed. Public accept loops
/// then wait and refill it first ([`refill_reserve`]), so that the next
/// descriptor freed goes to the reserve, not to another client.
pub(super) fn reserve_empty() -> bool {
    RESERVING.load(Ordering::Relaxed) && !RESERVED.load(Ordering::Relaxed)
}

/// Fills the reserve at start.
pub(super) fn reserve() {
    let on = refill_reserve();
    RESERVING.store(on, Ordering::Relaxed);
    if !on {
        crate::event!(
            Level::Warn,
            None,
            "cannot open /dev/null: no descriptor is kept for health checks"
        );
    }
}

/// Frees the reserved descriptor; whether there was one.
pub(super) fn release_reserve() -> bool {
    let mut r = super::lock(&RESERVE);
    RESERVED.store(false, Ordering::Relaxed);
    r.take().is_some()
}

/// Takes a descriptor back if the reserve is empty (a connection of the
/// operator's listener has just closed); whether it is full.
pub(super) fn refill_reserve() -> bool {
    let mut r = super::lock(&RESERVE);
    if r.is_none() {
        *r = File::open("/dev/null").ok();
    }
    RESERVED.store(r.is_some(), Ordering::Relaxed);
    r.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_cap_is_a_third_of_the_limit_past_the_reserve() {
        assert_eq!(derived_cap(1024), 298);
        assert_eq!(derived_cap(1_048_576), 349_482);
        assert_eq!(derived_cap(100), MIN_CONNECTIONS);
    }

    #[test]
    fn backoff_doubles_up_to_its_ceiling_and_restarts_after_a_success() {
        let mut b = AcceptBackoff::new();
        let e = io::Error::from_raw_os_error(libc::EMFILE);
        assert!(out_of_fds(&e));
        let waits: Vec<_> = (0..10).map(|_| b.failed(0, &e)).collect();
        assert_eq!(waits[0], FIRST_WAIT);
        assert_eq!(waits[1], FIRST_WAIT * 2);
        assert_eq!(*waits.last().unwrap(), MAX_WAIT);
        assert!(waits.windows(2).all(|w| w[0] <= w[1]));
        b.succeeded();
        assert_eq!(b.failed(0, &e), FIRST_WAIT);
    }

    #[test]
    fn the_log_line_is_rate_limited_and_counts_what_it_skipped() {
        let mut b = AcceptBackoff::new();
        let e = io::Error::from_raw_os_error(libc::EMFILE);
        b.failed(0, &e);
        let first = b.logged;
        for _ in 0..100 {
            b.failed(0, &e);
        }
        assert_eq!(b.logged, first, "no second line within LOG_EVERY");
        assert_eq!(b.failed, 100, "the skipped failures are counted");
    }
}
