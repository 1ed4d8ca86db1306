//! Health: what `/readyz` checks and the landing page shows, kept as state
//! that the parts which know update as they go, so that answering costs a
//! few loads and no I/O:
//!
//! - listeners: set by `server` once every worker listens;
//! - the cache directory: probed every 2 s by the cache's background
//!   thread (`cache::evict`), which writes the answer here;
//! - certificates: whether every TLS listener has one (files are loaded
//!   before the listeners open; ACME's store says when it has its own),
//!   handed to [`readiness`] by its caller;
//! - upstreams: the time of each registry's last answer and last failure,
//!   written by the data path as it fetches (in the metrics' slots, see
//!   [`Metrics::upstreams`]).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::metrics::{Metrics, UpstreamSeen};
use crate::error::UpstreamError;

/// An upstream outcome older than this no longer decides readiness: a
/// mirror taken out of rotation gets no traffic to learn that its upstream
/// is back, so a failure is forgotten after a minute and the next requests
/// find out again.
pub const RECENT: Duration = Duration::from_secs(60);

/// The process's health flags.
#[derive(Default)]
pub struct Health {
    listening: AtomicBool,
    cache: AtomicU8,
}

/// Where the content cache stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CacheState {
    /// Not configured (`enabled = false`).
    Off = 0,
    /// Its directory took the last probe write.
    Writable,
    /// Its directory refused the last probe write (read-only, full, gone).
    Unwritable,
    /// Configured, but it could not be opened at start: the mirror relays
    /// without it.
    Unusable,
}

/// Whether the TLS listeners have what they need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Certificates {
    /// No TLS listener: nothing to load.
    NotNeeded,
    /// Every TLS listener has a certificate.
    Loaded,
    /// A TLS listener waits for its certificate (an ACME order pending).
    Missing,
}

impl Health {
    /// Every worker listens.
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::Relaxed);
    }

    pub fn listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    /// Records the cache's state; returns the one before (to log changes).
    pub fn set_cache(&self, s: CacheState) -> CacheState {
        cache_state(self.cache.swap(s as u8, Ordering::Relaxed))
    }

    pub fn cache(&self) -> CacheState {
        cache_state(self.cache.load(Ordering::Relaxed))
    }
}

fn cache_state(v: u8) -> CacheState {
    match v {
        1 => CacheState::Writable,
        2 => CacheState::Unwritable,
        3 => CacheState::Unusable,
        _ => CacheState::Off,
    }
}

/// Why an upstream request failed: no answer (the kinds of
/// [`UpstreamError`]), or an answer with a 5xx status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    Resolve,
    Connect,
    Tls,
    Timeout,
    Io,
    BadResponse,
    Redirect,
    Status(u16),
}

impl UpstreamFailure {
    /// Every kind without an answer, by code (1..=7).
    const KINDS: [UpstreamFailure; 7] = [
        UpstreamFailure::Resolve,
        UpstreamFailure::Connect,
        UpstreamFailure::Tls,
        UpstreamFailure::Timeout,
        UpstreamFailure::Io,
        UpstreamFailure::BadResponse,
        UpstreamFailure::Redirect,
    ];

    pub fn of(e: &UpstreamError) -> UpstreamFailure {
        match e {
            UpstreamError::Resolve { .. } => UpstreamFailure::Resolve,
            UpstreamError::Connect { .. } => UpstreamFailure::Connect,
            UpstreamError::Tls { .. } => UpstreamFailure::Tls,
            UpstreamError::Timeout { .. } => UpstreamFailure::Timeout,
            UpstreamError::Io { .. } => UpstreamFailure::Io,
            UpstreamError::BadResponse { .. } => UpstreamFailure::BadResponse,
            UpstreamError::Redirect { .. } => UpstreamFailure::Redirect,
        }
    }

    /// A number for the metrics' slots: 1..=7, or the status (>= 100).
    pub fn code(self) -> u64 {
        match self {
            UpstreamFailure::Status(s) => u64::from(s),
            kind => Self::KINDS
                .iter()
                .position(|k| *k == kind)
                .map_or(0, |i| i as u64 + 1),
        }
    }

    pub fn from_code(c: u64) -> Option<UpstreamFailure> {
        match c {
            100..=599 => Some(UpstreamFailure::Status(c as u16)),
            _ => Self::KINDS.get((c as usize).checked_sub(1)?).copied(),
        }
    }

    /// The metrics' `kind` label; `status` for an answer.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamFailure::Resolve => "resolve",
            UpstreamFailure::Connect => "connect",
            UpstreamFailure::Tls => "tls",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::Io => "io",
            UpstreamFailure::BadResponse => "bad_response",
            UpstreamFailure::Redirect => "redirect",
            UpstreamFailure::Status(_) => "status",
        }
    }
}

impl std::fmt::Display for UpstreamFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamFailure::Status(s) => write!(f, "answered {s}"),
            UpstreamFailure::BadResponse => f.write_str("bad response"),
            kind => write!(f, "{} error", kind.as_str()),
        }
    }
}

/// A registry's upstream, from its latest outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamState {
    /// Not asked anything since the start.
    Unknown,
    /// Its latest outcome was an answer, `ago`.
    Answering { ago: Duration },
    /// Its latest outcome was a failure, `ago`.
    Failing {
        ago: Duration,
        failure: Option<UpstreamFailure>,
    },
}

impl UpstreamState {
    pub fn of(seen: Option<&UpstreamSeen>, now: SystemTime) -> UpstreamState {
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let ago = |ms: u64| Duration::from_millis(now_ms.saturating_sub(ms));
        match seen {
            None => UpstreamState::Unknown,
            Some(s) if s.last_ok == 0 && s.last_fail == 0 => UpstreamState::Unknown,
            Some(s) if s.last_ok >= s.last_fail => UpstreamState::Answering {
                ago: ago(s.last_ok),
            },
            Some(s) => UpstreamState::Failing {
                ago: ago(s.last_fail),
                failure: s.failure,
            },
        }
    }
}

/// One readiness check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    /// Left out of the verdict by the asker (`/readyz?exclude=NAME`).
    pub excluded: bool,
}

/// Every readiness check, in the order `/readyz` lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub checks: Vec<Check>,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.checks.iter().all(|c| c.ok || c.excluded)
    }

    /// The checks named in `query`'s `exclude=NAME` parameters (as
    /// Kubernetes' own `/readyz?exclude=`) are shown but do not count. A
    /// fleet whose nodes all serve from their caches and the shared tier
    /// may prefer to stay in rotation while the upstream is down:
    /// `/readyz?exclude=upstreams`.
    pub fn excluding(mut self, query: Option<&str>) -> Readiness {
        let names: Vec<&str> = query
            .unwrap_or("")
            .split('&')
            .filter_map(|p| p.strip_prefix("exclude="))
            .collect();
        for c in &mut self.checks {
            c.excluded = names.contains(&c.name);
        }
        self
    }

    /// The text `/readyz` answers: `ready` or `not ready`, then one line
    /// per check.
    pub fn text(&self) -> String {
        let mut out = String::from(if self.ready() {
            "ready\n"
        } else {
            "not ready\n"
        });
        for c in &self.checks {
            let verdict = match (c.ok, c.excluded) {
                (true, _) => "ok",
                (false, false) => "failing",
                (false, true) => "failing, excluded",
            };
            out.push_str(&format!("{}: {verdict} ({})\n", c.name, c.detail));
        }
        out
    }

    /// `(name, passing)` per check, for the metrics.
    pub fn summary(&self) -> Vec<(&'static str, bool)> {
        self.checks.iter().map(|c| (c.name, c.ok)).collect()
    }
}

/// The readiness checks, from state only:
///
/// - listeners: every worker listens;
/// - cache: off, or its directory took the last probe write;
/// - certificates: every TLS listener has one (`certificates`);
/// - upstreams: not (some registry failed within [`RECENT`] and none
///   answered within it). One failing registry among several that answer
///   leaves the mirror ready: the others are served, and taking it out of
///   rotation would not bring the failing one back. Registries never asked
///   count for nothing (no probe is sent from here).
pub fn readiness(m: &Metrics, certificates: Certificates, now: SystemTime) -> Readiness {
    let h = &m.health;
    let mut checks = Vec::with_capacity(4);
    checks.push(Check {
        name: "listeners",
        ok: h.listening(),
        detail: if h.listening() {
            "every worker listens".into()
        } else {
            "starting".into()
        },
        excluded: false,
    });
    let (ok, detail) = match h.cache() {
        CacheState::Off => (true, "off"),
        CacheState::Writable => (true, "directory writable"),
        CacheState::Unwritable => (false, "directory not writable"),
        CacheState::Unusable => (false, "configured but not in use: it could not be opened"),
    };
    checks.push(Check {
        name: "cache",
        ok,
        detail: detail.into(),
        excluded: false,
    });
    let (ok, detail) = match certificates {
        Certificates::NotNeeded => (true, "no TLS listener"),
        Certificates::Loaded => (true, "loaded"),
        Certificates::Missing => (false, "a TLS listener has no certificate yet"),
    };
    // The shared tier never makes a node unready: without it the node
    // still serves from its disk and the upstream (its line says how).
    if m.tier.state() != crate::ops::tier::TierState::Off {
        checks.push(Check {
            name: "shared_tier",
            ok: true,
            detail: m.tier.detail(),
            excluded: false,
        });
    }
    checks.push(Check {
        name: "certificates",
        ok,
        detail: detail.into(),
        excluded: false,
    });
    let (mut answering, mut failing) = (Vec::new(), Vec::new());
    for (label, seen) in m.upstreams() {
        let name = m.registry_name(label).unwrap_or_default();
        match UpstreamState::of(Some(&seen), now) {
            UpstreamState::Answering { ago } if ago < RECENT => answering.push(name),
            UpstreamState::Failing { ago, failure } if ago < RECENT => {
                let why = failure.map_or("failed".to_string(), |f| f.to_string());
                failing.push(format!("{name}: {why} {}s ago", ago.as_secs()));
            }
            _ => {}
        }
    }
    let ok = failing.is_empty() || !answering.is_empty();
    let mut detail = Vec::new();
    if !answering.is_empty() {
        detail.push(format!("answering: {}", answering.join(", ")));
    }
    if !failing.is_empty() {
        detail.push(format!("failing: {}", failing.join(", ")));
    }
    if detail.is_empty() {
        detail.push(format!("none asked in the last {}s", RECENT.as_secs()));
    }
    checks.push(Check {
        name: "upstreams",
        ok,
        detail: detail.join("; "),
        excluded: false,
    });
    Readiness { checks }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn upstream_check(m: &Metrics) -> Check {
        readiness(m, Certificates::NotNeeded, SystemTime::now())
            .checks
            .pop()
            .unwrap()
    }

    #[test]
    fn failure_codes_round_trip() {
        for f in UpstreamFailure::KINDS
            .into_iter()
            .chain([UpstreamFailure::Status(503)])
        {
            assert_eq!(UpstreamFailure::from_code(f.code()), Some(f));
        }
        assert_eq!(UpstreamFailure::from_code(0), None);
        assert_eq!(UpstreamFailure::from_code(8), None);
    }

    #[test]
    fn one_answering_registry_keeps_the_mirror_ready() {
        let m = Arc::new(Metrics::new(1, 2));
        let r = m.recorder(0);
        let regs = m.registry_labels(["docker.io", "ghcr.io"].into_iter());
        // Outcomes are timed to the millisecond: one apart from the next.
        let tick = || std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(upstream_check(&m).ok, "nothing asked yet");
        r.upstream_error(regs[0], UpstreamFailure::Connect);
        let c = upstream_check(&m);
        assert!(!c.ok, "{c:?}");
        assert!(c.detail.contains("docker.io: connect error"), "{c:?}");
        tick();
        r.upstream_answer(regs[1], 200, None);
        assert!(upstream_check(&m).ok, "ghcr.io answers");
        tick();
        r.upstream_answer(regs[1], 502, None);
        assert!(!upstream_check(&m).ok, "both fail");
        tick();
        r.upstream_answer(regs[0], 404, None);
        assert!(upstream_check(&m).ok, "docker.io answers again");
    }

    #[test]
    fn flags_decide_the_other_checks() {
        let m = Metrics::new(1, 0);
        let ready = |c| readiness(&m, c, SystemTime::now());
        assert!(!ready(Certificates::Loaded).ready(), "not listening yet");
        m.health.set_listening();
        assert!(ready(Certificates::Loaded).ready());
        assert_eq!(m.health.set_cache(CacheState::Unwritable), CacheState::Off);
        let r = ready(Certificates::Loaded);
        assert!(!r.ready());
        assert!(r.text().starts_with("not ready\n"), "{}", r.text());
        assert!(r.text().contains("cache: failing (directory not writable)"));
        m.health.set_cache(CacheState::Writable);
        let r = ready(Certificates::Missing);
        assert!(!r.ready());
        assert!(r
            .text()
            .contains("certificates: failing (a TLS listener has no certificate yet)"));
        assert!(ready(Certificates::NotNeeded).ready());
    }
}
