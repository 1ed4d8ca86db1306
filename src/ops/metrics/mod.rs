//! Metrics: counters per worker, summed when scraped, written in the
//! Prometheus text format (0.0.4).
//!
//! Nothing on the data path is shared between workers or locked: each
//! worker writes only its own slot, through its [`Recorder`], with relaxed
//! atomic adds; a scrape, on whichever thread answers `/metrics`, reads
//! every slot and sums. A slot is a fixed-size open-addressing table from a
//! series key (a family and label indices packed into a `u64`) to a
//! counter. It has exactly one writer, so claiming an empty entry for a new
//! key is a plain store, and a reader sees the entry once its key is
//! published (release/acquire).
//!
//! Label values come from bounded sets only: route kinds, methods, status
//! codes (100..=599), cache outcomes, upstream failure kinds, and registry
//! names from the config (through a label table, [`RegLabel`]). Nothing a
//! client sends becomes a label value.
//!
//! What each series means is in the README ("Metrics and health"); the names of the
//! distribution registry's series are used where the meaning is the same,
//! so that its dashboards work.
//!
//! - `table`: the series keys and a worker's table (one writer, any
//!   readers);
//! - `expo`: the exposition: every family, its labels and help, written
//!   from the summed tables.

mod expo;
mod table;

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::health::{Health, UpstreamFailure};
use super::summary::{CacheStatus, RequestSummary};
use crate::wire::method::Method;
use table::{Family, Key, Table, NO_REGISTRY};

pub use table::RegLabel;

/// Upper bounds of the duration histograms, in milliseconds: the
/// distribution registry's buckets (5 ms to 60 s), so that the `le` labels
/// of its dashboards match.
const BUCKETS_MS: [u64; 13] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 60_000,
];
/// The `+Inf` bucket's index.
const INF_BUCKET: u16 = BUCKETS_MS.len() as u16;

/// Which listener a client connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// A plain-HTTP public listener (`listen`).
    Http,
    /// A TLS public listener (`[[tls_listener]]`).
    Https,
    /// The operator's listener (`metrics_listen`): metrics and health only.
    Ops,
}

impl ListenerKind {
    const ALL: [ListenerKind; 3] = [ListenerKind::Http, ListenerKind::Https, ListenerKind::Ops];

    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Http => "http",
            ListenerKind::Https => "https",
            ListenerKind::Ops => "ops",
        }
    }
}

/// What a per-client limit did to a request (`[client_limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// Refused: over the client's request rate.
    Requests,
    /// Refused: the client's connection cap was reached at accept.
    Connections,
    /// Served, its bytes slowed by a byte rate (the client's or the
    /// process's).
    Bytes,
}

impl Limited {
    const ALL: [Limited; 3] = [Limited::Requests, Limited::Connections, Limited::Bytes];

    pub fn as_str(self) -> &'static str {
        match self {
            Limited::Requests => "requests",
            Limited::Connections => "connections",
            Limited::Bytes => "bytes",
        }
    }

    fn from_index(i: u8) -> Option<Limited> {
        Limited::ALL.get(usize::from(i)).copied()
    }
}

/// One worker's counters, on cache lines of their own.
#[repr(align(64))]
struct Slot {
    table: Table,
    /// Open client connections by [`ListenerKind`] (the worker that counts one
    /// up counts it down: a connection stays on its worker).
    connections: [AtomicU64; 3],
}

/// What the cache's background thread measures on disk (it is their only
/// writer; see [`Metrics::walked`]).
#[derive(Default)]
pub struct Disk {
    /// Objects and bytes in the store at the last walk (every 30 s).
    objects: AtomicU64,
    bytes: AtomicU64,
    /// What the workers had stored by then ([`Metrics::stored`]): what
    /// they store after it is added to the walk's numbers until the next.
    stored_objects: AtomicU64,
    stored_bytes: AtomicU64,
    /// Whether a walk has happened yet.
    walked: AtomicBool,
    /// Objects and bytes removed to stay under `max_size`.
    evicted_objects: AtomicU64,
    evicted_bytes: AtomicU64,
}

/// What a walk of the store found (and removed to stay under the cap).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Walk {
    pub objects: u64,
    pub bytes: u64,
    pub evicted_objects: u64,
    pub evicted_bytes: u64,
}

/// The process's operational state, shared by all workers (built once in
/// `server`): the per-worker counters, the registry label table, what the
/// cache measures on disk and the health flags.
pub struct Metrics {
    slots: Box<[Slot]>,
    /// Registry names by [`RegLabel`]; appended to when a worker is built
    /// from a config, never on the data path.
    registries: Mutex<Vec<String>>,
    pub disk: Disk,
    pub health: Health,
    /// The shared tier's state and counters (`cache::s3::tier` writes).
    pub tier: std::sync::Arc<crate::ops::tier::TierHealth>,
}

/// Entries per worker table: room for every label combination a busy
/// mirror sees (~500 histogram and route series plus ~100 per registry),
/// kept under a quarter full so that probes stay short.
fn table_capacity(registries: usize) -> usize {
    4 * (1024 + 128 * registries)
}

impl Metrics {
    /// Counters for `workers` workers, sized for `registries` registries.
    pub fn new(workers: usize, registries: usize) -> Metrics {
        Metrics {
            slots: (0..workers.max(1))
                .map(|_| Slot {
                    table: Table::with_capacity(table_capacity(registries)),
                    connections: Default::default(),
                })
                .collect(),
            registries: Mutex::new(Vec::new()),
            disk: Disk::default(),
            health: Health::default(),
            tier: Default::default(),
        }
    }

    /// The label of each of `names`, in order, adding the names not seen
    /// before (at start-up or when a worker is rebuilt from a new config).
    pub fn registry_labels<'n>(&self, names: impl Iterator<Item = &'n str>) -> Vec<RegLabel> {
        let mut table = self.registries.lock().unwrap_or_else(|e| e.into_inner());
        names
            .map(|name| {
                let i = match table.iter().position(|n| n == name) {
                    Some(i) => i,
                    None => {
                        table.push(name.to_string());
                        table.len() - 1
                    }
                };
                RegLabel(u16::try_from(i).unwrap_or(NO_REGISTRY - 1))
            })
            .collect()
    }

    /// The writer of worker `id`'s slot. One per worker, made by `server`
    /// for the worker it starts: a slot has exactly one writer.
    pub fn recorder(self: &Arc<Metrics>, id: usize) -> Recorder {
        Recorder {
            metrics: self.clone(),
            slot: id % self.slots.len(),
            _one_thread: PhantomData,
        }
    }

    /// Every worker's entries, added up per series (the last-seen values
    /// are handled by [`Metrics::upstreams`]).
    fn summed(&self) -> BTreeMap<Key, u64> {
        let mut sums = BTreeMap::new();
        for s in self.slots.iter() {
            for (k, v) in s.table.entries() {
                *sums.entry(k).or_insert(0u64) += v;
            }
        }
        sums
    }

    /// What each registry's upstream did last, across workers: the latest
    /// answer, the latest failure (and what it was), the latest
    /// `ratelimit-remaining`. By label; registries never contacted are left
    /// out.
    pub fn upstreams(&self) -> BTreeMap<RegLabel, UpstreamSeen> {
        let mut seen: BTreeMap<RegLabel, UpstreamSeen> = BTreeMap::new();
        for s in self.slots.iter() {
            // This worker's values per registry, then merged: a failure's
            // kind goes with the failure's time, a count with its time.
            let mut mine: BTreeMap<RegLabel, ([u64; 3], [u64; 2])> = BTreeMap::new();
            for (k, v) in s.table.entries() {
                let Some(reg) = k.registry() else { continue };
                let (fail, rate) = mine.entry(reg).or_default();
                match k.family {
                    Family::UpstreamOk => fail[0] = v,
                    Family::UpstreamFail => fail[1] = v,
                    Family::UpstreamFailWhat => fail[2] = v,
                    Family::RateRemaining => rate[0] = v,
                    Family::RateSeen => rate[1] = v,
                    _ => {}
                }
            }
            for (reg, ([ok, fail, what], [remaining, at])) in mine {
                if ok == 0 && fail == 0 {
                    continue;
                }
                let e = seen.entry(reg).or_default();
                e.last_ok = e.last_ok.max(ok);
                if fail > e.last_fail {
                    e.last_fail = fail;
                    e.failure = UpstreamFailure::from_code(what);
                }
                if at > 0 && at >= e.ratelimit_at {
                    e.ratelimit_at = at;
                    e.ratelimit_remaining = Some(remaining);
                }
            }
        }
        seen
    }

    /// Objects and bytes the workers stored in the cache since start.
    pub fn stored(&self) -> (u64, u64) {
        let (mut objects, mut bytes) = (0, 0);
        for s in self.slots.iter() {
            for (k, v) in s.table.entries() {
                match k.family {
                    Family::StoredObjects => objects += v,
                    Family::StoredBytes => bytes += v,
                    _ => {}
                }
            }
        }
        (objects, bytes)
    }

    /// Records a walk of the store, which began when the workers had
    /// stored `stored_before` ([`Metrics::stored`]). Called by the cache's
    /// background thread only.
    pub fn walked(&self, walk: Walk, stored_before: (u64, u64)) {
        let d = &self.disk;
        d.objects.store(walk.objects, Ordering::Relaxed);
        d.bytes.store(walk.bytes, Ordering::Relaxed);
        d.stored_objects.store(stored_before.0, Ordering::Relaxed);
        d.stored_bytes.store(stored_before.1, Ordering::Relaxed);
        d.evicted_objects
            .fetch_add(walk.evicted_objects, Ordering::Relaxed);
        d.evicted_bytes
            .fetch_add(walk.evicted_bytes, Ordering::Relaxed);
        d.walked.store(true, Ordering::Release);
    }

    /// Objects and bytes in the store now: the last walk's, plus what was
    /// stored since it began (an object stored during the walk may count
    /// twice until the next one). None before the first walk.
    pub fn disk_usage(&self) -> Option<(u64, u64)> {
        let d = &self.disk;
        if !d.walked.load(Ordering::Acquire) {
            return None;
        }
        let (objects, bytes) = self.stored();
        let since = |now: u64, then: &AtomicU64| now.saturating_sub(then.load(Ordering::Relaxed));
        Some((
            d.objects.load(Ordering::Relaxed) + since(objects, &d.stored_objects),
            d.bytes.load(Ordering::Relaxed) + since(bytes, &d.stored_bytes),
        ))
    }

    /// The registry name of `label`.
    pub fn registry_name(&self, label: RegLabel) -> Option<String> {
        let table = self.registries.lock().unwrap_or_else(|e| e.into_inner());
        table.get(usize::from(label.0)).cloned()
    }

    /// The cache's counters since start, summed over workers, routes and
    /// registries (what `ocirelay cache stats` and the landing page show).
    pub fn cache_counts(&self) -> CacheCounts {
        let mut c = CacheCounts::default();
        for (k, v) in self.summed() {
            match k.family {
                Family::CacheResult => match CacheStatus::from_index(k.method) {
                    Some(CacheStatus::Hit) => c.hits += v,
                    Some(CacheStatus::Miss) => c.misses += v,
                    Some(CacheStatus::Coalesced) => c.coalesced += v,
                    Some(CacheStatus::Revalidated) => c.revalidated += v,
                    Some(CacheStatus::Stale) => c.stale += v,
                    _ => {}
                },
                Family::CacheServed => c.bytes_served += v,
                _ => {}
            }
        }
        c
    }

    /// Open client connections on `listener`, over all workers.
    fn connections(&self, listener: ListenerKind) -> u64 {
        self.slots
            .iter()
            .map(|s| s.connections[listener as usize].load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add)
    }

    /// Series updates that found no room in a worker's table.
    fn dropped(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.table.dropped.load(Ordering::Relaxed))
            .sum()
    }
}

/// What a registry's upstream did last (see [`Metrics::upstreams`]); times
/// are unix milliseconds, 0 for never.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamSeen {
    pub last_ok: u64,
    pub last_fail: u64,
    pub failure: Option<UpstreamFailure>,
    pub ratelimit_remaining: Option<u64>,
    ratelimit_at: u64,
}

/// The cache's counters, summed (see [`Metrics::cache_counts`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheCounts {
    pub hits: u64,
    pub misses: u64,
    pub coalesced: u64,
    pub revalidated: u64,
    pub stale: u64,
    /// Bytes sent to clients for answers from the cache.
    pub bytes_served: u64,
}

impl CacheCounts {
    /// Requests answered from the cache, of all it took part in (0 when
    /// there were none).
    pub fn hit_ratio(&self) -> f64 {
        let served = self.served();
        let all = served + self.misses;
        if all == 0 {
            0.0
        } else {
            served as f64 / all as f64
        }
    }

    /// Requests answered from the cache without an upstream transfer.
    pub fn served(&self) -> u64 {
        self.hits + self.coalesced + self.revalidated + self.stale
    }
}

/// Worker `slot`'s writer: what the data path calls. Not `Send`: it stays
/// on the worker's thread, the slot's one writer.
pub struct Recorder {
    metrics: Arc<Metrics>,
    slot: usize,
    _one_thread: PhantomData<*const ()>,
}

impl Recorder {
    /// The shared state, for scrapes and health checks.
    pub fn shared(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn table(&self) -> &Table {
        &self.metrics.slots[self.slot].table
    }

    /// One finished request: what it was, how it ended, how long it took.
    /// Recorded once its response is out, so a client may see the last
    /// byte before the counts move; a reader that sees the request counted
    /// sees the rest of it counted too.
    pub fn request(
        &self,
        s: &RequestSummary<'_>,
        method: Method,
        reg: Option<RegLabel>,
        took: Duration,
    ) {
        let t = self.table();
        let m = method_index(method);
        let base = Key::new(Family::Requests, reg).route(s.route);
        t.add(
            Key {
                family: Family::ResponseBytes,
                ..base
            },
            s.bytes,
        );
        let timed = Key::new(Family::Duration, None).route(s.route).method(m);
        t.add(timed.code(bucket_of(took)), 1);
        t.add(
            Key {
                family: Family::DurationSum,
                ..timed
            },
            nanos(took),
        );
        if s.pulled > 0 {
            t.add(
                Key {
                    family: Family::Pulled,
                    ..base
                },
                s.pulled,
            );
        }
        if s.stored > 0 {
            t.add(
                Key {
                    family: Family::StoredObjects,
                    ..base
                },
                1,
            );
            t.add(
                Key {
                    family: Family::StoredBytes,
                    ..base
                },
                s.stored,
            );
        }
        if s.cache != CacheStatus::None {
            t.add(
                Key {
                    family: Family::CacheResult,
                    ..base
                }
                .method(s.cache.index()),
                1,
            );
        }
        if s.cache.served_from_cache() {
            t.add(
                Key {
                    family: Family::CacheServed,
                    ..base
                },
                s.bytes,
            );
            t.add(
                Key {
                    family: Family::CacheSaved,
                    ..base
                },
                s.from_cache,
            );
        }
        // Last: a scrape that counts this request sees all of the above.
        t.add_last(base.method(m).code(s.status), 1);
    }

    /// An upstream answered `status`; `remaining`: its
    /// `ratelimit-remaining`, if it sent one. A 5xx counts as a failure of
    /// the upstream, anything else as an answer.
    pub fn upstream_answer(&self, reg: RegLabel, status: u16, remaining: Option<u64>) {
        let t = self.table();
        let base = Key::new(Family::UpstreamRequests, Some(reg));
        t.add(base.code(status), 1);
        let now = unix_ms();
        if (500..600).contains(&status) {
            self.upstream_failed_at(reg, UpstreamFailure::Status(status), now);
        } else {
            t.set(Key::new(Family::UpstreamOk, Some(reg)), now);
        }
        if let Some(n) = remaining {
            t.set(Key::new(Family::RateRemaining, Some(reg)), n);
            t.set(Key::new(Family::RateSeen, Some(reg)), now);
        }
    }

    /// An upstream request got no answer (or a redirect could not be
    /// followed).
    pub fn upstream_error(&self, reg: RegLabel, failure: UpstreamFailure) {
        let errors = Key::new(Family::UpstreamErrors, Some(reg));
        self.table().add(
            Key {
                route: failure.code() as u8,
                ..errors
            },
            1,
        );
        // A redirect that cannot be followed was still an answer.
        if failure != UpstreamFailure::Redirect {
            self.upstream_failed_at(reg, failure, unix_ms());
        }
    }

    fn upstream_failed_at(&self, reg: RegLabel, failure: UpstreamFailure, now: u64) {
        let t = self.table();
        t.set(
            Key::new(Family::UpstreamFailWhat, Some(reg)),
            failure.code(),
        );
        t.set(Key::new(Family::UpstreamFail, Some(reg)), now);
    }

    /// A redirect was followed.
    pub fn redirect(&self, reg: RegLabel) {
        self.table()
            .add(Key::new(Family::UpstreamRedirects, Some(reg)), 1);
    }

    /// A fetch got its final response head after `took`.
    pub fn upstream_time(&self, reg: RegLabel, took: Duration) {
        let t = self.table();
        t.add(
            Key::new(Family::UpstreamDuration, Some(reg)).code(bucket_of(took)),
            1,
        );
        t.add(
            Key::new(Family::UpstreamDurationSum, Some(reg)),
            nanos(took),
        );
    }

    /// A per-client limit refused or slowed a request.
    pub fn limited(&self, what: Limited) {
        self.table().add(
            Key {
                route: what as u8,
                ..Key::new(Family::Limited, None)
            },
            1,
        );
    }

    /// A client connection opened on `listener`; it counts as open until
    /// the guard is dropped.
    pub fn connection(&self, listener: ListenerKind) -> OpenConnection<'_> {
        let c = &self.metrics.slots[self.slot].connections[listener as usize];
        c.fetch_add(1, Ordering::Relaxed);
        OpenConnection(c)
    }
}

/// Counts one open client connection until dropped.
pub struct OpenConnection<'a>(&'a AtomicU64);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Methods as label indices: each [`Method`] in the order of its variants.
const METHODS: [Method; 8] = [
    Method::Get,
    Method::Head,
    Method::Post,
    Method::Put,
    Method::Patch,
    Method::Delete,
    Method::Options,
    Method::Other,
];

fn method_index(m: Method) -> u8 {
    METHODS.iter().position(|x| *x == m).unwrap_or(7) as u8
}

fn bucket_of(d: Duration) -> u16 {
    let ms = d.as_secs_f64() * 1000.0;
    BUCKETS_MS
        .iter()
        .position(|&b| ms <= b as f64)
        .map_or(INF_BUCKET, |i| i as u16)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::ops::summary::RouteKind;

    /// A request of `route` answered `status` with `bytes`.
    pub(crate) fn summary(route: RouteKind, status: u16, bytes: u64) -> RequestSummary<'static> {
        RequestSummary {
            route,
            status,
            bytes,
            ..RequestSummary::default()
        }
    }

    /// The value of `series` (name and labels, as written) in `text`.
    pub(crate) fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn the_latest_upstream_outcome_wins_across_workers() {
        let m = Arc::new(Metrics::new(2, 1));
        let reg = m.registry_labels(["docker.io"].into_iter())[0];
        let (a, b) = (m.recorder(0), m.recorder(1));
        a.upstream_answer(reg, 200, Some(76));
        std::thread::sleep(Duration::from_millis(5));
        b.upstream_error(reg, UpstreamFailure::Connect);
        let u = m.upstreams()[&reg];
        assert!(u.last_fail > u.last_ok && u.last_ok > 0, "{u:?}");
        assert_eq!(u.failure, Some(UpstreamFailure::Connect));
        assert_eq!(u.ratelimit_remaining, Some(76));
        std::thread::sleep(Duration::from_millis(5));
        a.upstream_answer(reg, 503, None);
        assert_eq!(
            m.upstreams()[&reg].failure,
            Some(UpstreamFailure::Status(503))
        );
        let text = m.render(&[]);
        assert_eq!(
            value(
                &text,
                r#"ocirelay_upstream_errors_total{registry="docker.io",kind="connect"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                r#"ocirelay_upstream_requests_total{registry="docker.io",code="503"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                r#"ocirelay_upstream_ratelimit_remaining{registry="docker.io"}"#
            ),
            Some(76.0)
        );
    }

    #[test]
    fn the_store_size_is_the_last_walk_plus_what_was_stored_since() {
        let m = Arc::new(Metrics::new(1, 1));
        let r = m.recorder(0);
        assert_eq!(m.disk_usage(), None, "no walk yet");
        let mut s = summary(RouteKind::Blob, 200, 0);
        s.stored = 100;
        r.request(&s, Method::Get, None, Duration::ZERO);
        let walk = Walk {
            objects: 3,
            bytes: 1000,
            evicted_objects: 1,
            evicted_bytes: 50,
        };
        m.walked(walk, m.stored());
        assert_eq!(m.disk_usage(), Some((3, 1000)), "the walk saw it");
        r.request(&s, Method::Get, None, Duration::ZERO);
        assert_eq!(m.disk_usage(), Some((4, 1100)));
        let text = m.render(&[]);
        assert_eq!(value(&text, "ocirelay_cache_bytes"), Some(1100.0));
        assert_eq!(
            value(&text, "ocirelay_cache_evicted_objects_total"),
            Some(1.0)
        );
        assert_eq!(
            value(&text, r#"ocirelay_cache_stored_bytes_total{type="blob"}"#),
            Some(200.0)
        );
    }

    #[test]
    fn registry_labels_survive_a_new_config() {
        let m = Metrics::new(1, 2);
        let first = m.registry_labels(["a.example", "b.example"].into_iter());
        let again = m.registry_labels(["b.example", "c.example"].into_iter());
        assert_eq!(again[0], first[1]);
        assert_eq!(m.registry_name(again[1]).as_deref(), Some("c.example"));
    }

    #[test]
    fn open_connections_are_counted_until_closed() {
        let m = Arc::new(Metrics::new(1, 0));
        let r = m.recorder(0);
        let one = r.connection(ListenerKind::Https);
        let two = r.connection(ListenerKind::Https);
        assert_eq!(m.connections(ListenerKind::Https), 2);
        drop(one);
        drop(two);
        assert_eq!(m.connections(ListenerKind::Https), 0);
    }
}
