//! The exposition: every family in the Prometheus text format (0.0.4),
//! with its help and labels, written from the workers' tables summed.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::table::{Family, Key, NO_REGISTRY};
use super::{ListenerKind, Metrics, UpstreamSeen, BUCKETS_MS, INF_BUCKET, METHODS};
use crate::ops::health::UpstreamFailure;
use crate::ops::summary::{CacheStatus, RouteKind};
use crate::wire::method::Method;

impl Metrics {
    /// Writes every series in the Prometheus text format. `ready` is the
    /// outcome of each readiness check (see `ops::health`).
    pub fn render(&self, ready: &[(&str, bool)]) -> String {
        let sums = self.summed();
        let names = self
            .registries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let reg_name = |reg: u16| names.get(usize::from(reg));
        let mut out = Expo::default();
        let of = |f: Family| sums.iter().filter(move |(k, _)| k.family == f);

        for (family, name, shape, help) in COUNTERS {
            out.family(name, "counter", help);
            for (k, v) in of(family) {
                if let Some(l) = shape.labels(k, reg_name(k.reg)) {
                    out.sample(name, &l, *v);
                }
            }
        }
        out.histogram(
            "registry_http_request_duration_seconds",
            "Time from a request head read to the last byte of its response written, by route kind and method.",
            of(Family::Duration).map(|(k, v)| ((k.route, k.method), k.code, *v)),
            of(Family::DurationSum).map(|(k, v)| ((k.route, k.method), *v)),
            |&(route, method), l| {
                l.route(route).method(method);
            },
        );
        out.histogram(
            "ocirelay_upstream_request_duration_seconds",
            "Time from sending a request upstream to the final response head (redirects included), by registry.",
            of(Family::UpstreamDuration).map(|(k, v)| (k.reg, k.code, *v)),
            of(Family::UpstreamDurationSum).map(|(k, v)| (k.reg, *v)),
            |&reg, l| {
                l.registry(reg_name(reg));
            },
        );
        out.family(
            "ocirelay_client_connections",
            "gauge",
            "Open client connections, by listener.",
        );
        for listener in ListenerKind::ALL {
            let mut l = Labels::default();
            l.add("listener", listener.as_str());
            out.sample(
                "ocirelay_client_connections",
                &l,
                self.connections(listener) as i64,
            );
        }
        self.render_proxy(&mut out, &sums, &names);
        self.render_disk(&mut out);
        self.render_upstreams(&mut out, &names);
        self.render_tier(&mut out);

        out.family(
            "ocirelay_ready",
            "gauge",
            "Readiness checks as /readyz sees them (1 passing, 0 failing).",
        );
        for (check, ok) in ready {
            let mut l = Labels::default();
            l.add("check", check);
            out.sample("ocirelay_ready", &l, u8::from(*ok));
        }
        out.family(
            "ocirelay_metrics_dropped_total",
            "counter",
            "Metric updates dropped because a worker's series table was full (expected to stay 0).",
        );
        out.sample(
            "ocirelay_metrics_dropped_total",
            &Labels::default(),
            self.dropped(),
        );
        out.family(
            "ocirelay_build_info",
            "gauge",
            "The running ocirelay's version.",
        );
        let mut l = Labels::default();
        l.add("version", env!("CARGO_PKG_VERSION"));
        out.sample("ocirelay_build_info", &l, 1);
        out.text
    }

    /// The shared tier's series (only when one is configured).
    fn render_tier(&self, out: &mut Expo) {
        use crate::ops::tier::{TierCount, TierState};
        let t = &self.tier;
        if t.state() == TierState::Off {
            return;
        }
        let none = Labels::default();
        out.family(
            "ocirelay_shared_tier_up",
            "gauge",
            "1 while the shared tier's store answers, 0 while nodes serve from disk and upstream without it.",
        );
        out.sample(
            "ocirelay_shared_tier_up",
            &none,
            u8::from(t.state() == TierState::Up),
        );
        out.family(
            "ocirelay_shared_tier_uploads_pending",
            "gauge",
            "Verified objects on this node's disk waiting to be uploaded to the shared tier.",
        );
        out.sample("ocirelay_shared_tier_uploads_pending", &none, t.pending());
        for what in TierCount::ALL {
            let (name, help) = what.series();
            out.family(name, "counter", help);
            out.sample(name, &none, t.count(what));
        }
    }

    /// The distribution registry's proxy series: `type` is the route kind
    /// (blob, manifest; also tags, referrers, base and token for pulled
    /// bytes), with a `registry` label added. Blob and manifest series start
    /// at 0 for every registry, as distribution's do, so that the first
    /// count shows in a rate.
    fn render_proxy(&self, out: &mut Expo, sums: &BTreeMap<Key, u64>, names: &[String]) {
        const FAMILIES: [(&str, &str); 4] = [
            (
                "registry_proxy_requests_total",
                "Blob and manifest requests, by type and registry, cached or not.",
            ),
            (
                "registry_proxy_hits_total",
                "Requests answered from the cache (hit, coalesced, revalidated or stale), by type and registry.",
            ),
            (
                "registry_proxy_misses_total",
                "Requests fetched upstream and stored in the cache, by type and registry.",
            ),
            (
                "registry_proxy_pulled_bytes_total",
                "Body bytes received from upstreams, by type (route kind) and registry.",
            ),
        ];
        const PULLED: usize = 3;
        let content = |route: u8| {
            matches!(
                RouteKind::from_index(route),
                Some(RouteKind::Blob | RouteKind::Manifest)
            )
        };
        let mut proxy: BTreeMap<(u16, u8), [u64; 4]> = BTreeMap::new();
        for i in 0..names.len() {
            for r in [RouteKind::Blob, RouteKind::Manifest] {
                proxy.insert((i as u16, r.index()), [0; 4]);
            }
        }
        for (k, v) in sums {
            let i = match k.family {
                Family::Requests if content(k.route) && k.reg != NO_REGISTRY => 0,
                Family::CacheResult => match CacheStatus::from_index(k.method) {
                    Some(CacheStatus::Miss) => 2,
                    Some(_) => 1,
                    None => continue,
                },
                Family::Pulled if k.reg != NO_REGISTRY => PULLED,
                _ => continue,
            };
            proxy.entry((k.reg, k.route)).or_default()[i] += v;
        }
        for (i, (name, help)) in FAMILIES.into_iter().enumerate() {
            out.family(name, "counter", help);
            for (&(reg, route), counts) in &proxy {
                if content(route) || (i == PULLED && counts[PULLED] > 0) {
                    let mut l = Labels::default();
                    l.add("type", route_str(route))
                        .registry(names.get(usize::from(reg)));
                    out.sample(name, &l, counts[i]);
                }
            }
        }
    }

    /// The store's size and evictions, once the cache has walked it.
    fn render_disk(&self, out: &mut Expo) {
        let Some((objects, bytes)) = self.disk_usage() else {
            return;
        };
        let d = &self.disk;
        for (name, kind, help, v) in [
            (
                "ocirelay_cache_objects",
                "gauge",
                "Objects (blobs and manifests) in the cache directory: the last walk's count (every 30 s) plus what was stored since.",
                objects,
            ),
            (
                "ocirelay_cache_bytes",
                "gauge",
                "Bytes of objects in the cache directory: the last walk's sum (every 30 s) plus what was stored since.",
                bytes,
            ),
            (
                "ocirelay_cache_evicted_objects_total",
                "counter",
                "Objects removed to keep the cache under max_size.",
                d.evicted_objects.load(Ordering::Relaxed),
            ),
            (
                "ocirelay_cache_evicted_bytes_total",
                "counter",
                "Bytes removed to keep the cache under max_size.",
                d.evicted_bytes.load(Ordering::Relaxed),
            ),
        ] {
            out.family(name, kind, help);
            out.sample(name, &Labels::default(), v);
        }
    }

    /// What each registry's upstream did last.
    fn render_upstreams(&self, out: &mut Expo, names: &[String]) {
        type Pick = fn(&UpstreamSeen) -> Option<f64>;
        let upstreams = self.upstreams();
        let gauges: [(&str, &str, Pick); 3] = [
            (
                "ocirelay_upstream_last_answer_timestamp_seconds",
                "When the registry's upstream last answered (unix time).",
                |u| (u.last_ok > 0).then_some(u.last_ok as f64 / 1000.0),
            ),
            (
                "ocirelay_upstream_last_failure_timestamp_seconds",
                "When the registry's upstream last failed to answer or answered 5xx (unix time).",
                |u| (u.last_fail > 0).then_some(u.last_fail as f64 / 1000.0),
            ),
            (
                "ocirelay_upstream_ratelimit_remaining",
                "The last ratelimit-remaining header seen from the registry (Docker Hub: pulls left in its window).",
                |u| u.ratelimit_remaining.map(|n| n as f64),
            ),
        ];
        for (name, help, pick) in gauges {
            out.family(name, "gauge", help);
            for (reg, u) in &upstreams {
                if let Some(v) = pick(u) {
                    let mut l = Labels::default();
                    l.registry(names.get(usize::from(reg.0)));
                    out.sample(name, &l, v);
                }
            }
        }
    }
}

/// How the keys of a [`COUNTERS`] family are labelled.
#[derive(Clone, Copy)]
enum Shape {
    /// handler, method, code, registry
    Request,
    /// handler, registry
    RouteReg,
    /// type (the route kind), registry
    TypeReg,
    /// type, registry, result (the cache outcome)
    CacheResult,
    /// registry, code
    UpstreamCode,
    /// registry, kind (the failure)
    UpstreamKind,
    /// registry
    Reg,
    /// limit (which per-client limit acted)
    Limit,
}

impl Shape {
    fn labels(self, k: &Key, registry: Option<&String>) -> Option<Labels> {
        let mut l = Labels::default();
        match self {
            Shape::Request => {
                l.route(k.route)
                    .method(k.method)
                    .add("code", &k.code.to_string())
                    .registry(registry);
            }
            Shape::RouteReg => {
                l.route(k.route).registry(registry);
            }
            Shape::TypeReg => {
                l.add("type", route_str(k.route)).registry(registry);
            }
            Shape::CacheResult => {
                let result = CacheStatus::from_index(k.method)?;
                l.add("type", route_str(k.route))
                    .registry(registry)
                    .add("result", result.as_str());
            }
            Shape::UpstreamCode => {
                l.registry(registry).add("code", &k.code.to_string());
            }
            Shape::UpstreamKind => {
                let kind = UpstreamFailure::from_code(u64::from(k.route))?;
                l.registry(registry).add("kind", kind.as_str());
            }
            Shape::Reg => {
                l.registry(registry);
            }
            Shape::Limit => {
                l.add("limit", super::Limited::from_index(k.route)?.as_str());
            }
        }
        Some(l)
    }
}

/// The counter families written entry by entry: family, name, labels, help.
const COUNTERS: [(Family, &str, Shape, &str); 10] = [
    (
        Family::Requests,
        "registry_http_requests_total",
        Shape::Request,
        "Requests answered, by route kind (handler), method, status sent and registry.",
    ),
    (
        Family::ResponseBytes,
        "ocirelay_http_response_bytes_total",
        Shape::RouteReg,
        "Bytes written to clients (heads included), by route kind and registry.",
    ),
    (
        Family::CacheResult,
        "ocirelay_cache_requests_total",
        Shape::CacheResult,
        "Requests the cache took part in, by type, registry and result (hit, miss, coalesced, revalidated, stale).",
    ),
    (
        Family::CacheServed,
        "ocirelay_cache_served_bytes_total",
        Shape::TypeReg,
        "Bytes sent to clients (heads included) for answers from the cache, by type and registry.",
    ),
    (
        Family::CacheSaved,
        "ocirelay_cache_saved_bytes_total",
        Shape::TypeReg,
        "Body bytes answered from the cache, which the upstream would otherwise have sent, by type and registry.",
    ),
    (
        Family::StoredBytes,
        "ocirelay_cache_stored_bytes_total",
        Shape::TypeReg,
        "Bytes of objects stored in the cache (verified, then renamed into place), by type and registry.",
    ),
    (
        Family::UpstreamRequests,
        "ocirelay_upstream_requests_total",
        Shape::UpstreamCode,
        "Requests sent upstream (each redirect hop counts), by registry and status received.",
    ),
    (
        Family::UpstreamErrors,
        "ocirelay_upstream_errors_total",
        Shape::UpstreamKind,
        "Upstream requests that got no answer, by registry and kind (resolve, connect, tls, timeout, io, bad_response, redirect).",
    ),
    (
        Family::UpstreamRedirects,
        "ocirelay_upstream_redirects_total",
        Shape::Reg,
        "Redirects followed upstream, by registry.",
    ),
    (
        Family::Limited,
        "ocirelay_limited_requests_total",
        Shape::Limit,
        "Requests the per-client limits acted on: refused with 429 (requests, connections) or slowed (bytes).",
    ),
];

fn route_str(i: u8) -> &'static str {
    RouteKind::from_index(i).map_or("", RouteKind::as_str)
}

/// A sample's labels, written `{a="x",b="y"}` with values escaped.
#[derive(Default)]
struct Labels(String);

impl Labels {
    fn add(&mut self, name: &str, value: &str) -> &mut Labels {
        if !self.0.is_empty() {
            self.0.push(',');
        }
        self.0.push_str(name);
        self.0.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => self.0.push_str("\\\\"),
                '"' => self.0.push_str("\\\""),
                '\n' => self.0.push_str("\\n"),
                c => self.0.push(c),
            }
        }
        self.0.push('"');
        self
    }

    fn route(&mut self, route: u8) -> &mut Labels {
        self.add("handler", route_str(route))
    }

    fn method(&mut self, method: u8) -> &mut Labels {
        let m = METHODS.get(usize::from(method)).copied();
        self.add("method", m.map_or("OTHER", Method::as_str))
    }

    /// `registry="name"`, or nothing when the series has no registry.
    fn registry(&mut self, name: Option<&String>) -> &mut Labels {
        match name {
            Some(n) => self.add("registry", n),
            None => self,
        }
    }
}

/// The exposition being written.
#[derive(Default)]
struct Expo {
    text: String,
}

impl Expo {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &Labels, value: impl std::fmt::Display) {
        self.text.push_str(name);
        if !labels.0.is_empty() {
            let _ = write!(self.text, "{{{}}}", labels.0);
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// A histogram family from per-bucket counts (`(group, bucket, n)`,
    /// sorted by group) and nanosecond sums per group; `label` writes a
    /// group's labels.
    fn histogram<G: Ord + Copy>(
        &mut self,
        name: &str,
        help: &str,
        buckets: impl Iterator<Item = (G, u16, u64)>,
        sums: impl Iterator<Item = (G, u64)>,
        label: impl Fn(&G, &mut Labels),
    ) {
        self.family(name, "histogram", help);
        let mut groups: BTreeMap<G, ([u64; BUCKETS_MS.len() + 1], u64)> = BTreeMap::new();
        for (g, b, n) in buckets {
            groups.entry(g).or_default().0[usize::from(b.min(INF_BUCKET))] += n;
        }
        for (g, ns) in sums {
            groups.entry(g).or_default().1 += ns;
        }
        for (g, (counts, ns)) in &groups {
            let mut base = Labels::default();
            label(g, &mut base);
            let mut cumulative = 0;
            for (i, n) in counts.iter().enumerate() {
                cumulative += n;
                let le = match BUCKETS_MS.get(i) {
                    Some(ms) => (*ms as f64 / 1000.0).to_string(),
                    None => "+Inf".to_string(),
                };
                let mut l = Labels(base.0.clone());
                l.add("le", &le);
                self.sample(&format!("{name}_bucket"), &l, cumulative);
            }
            self.sample(&format!("{name}_sum"), &base, *ns as f64 / 1e9);
            self.sample(&format!("{name}_count"), &base, cumulative);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::ops::metrics::tests::{summary, value};

    #[test]
    fn workers_count_apart_and_a_scrape_sums_them() {
        let m = Arc::new(Metrics::new(2, 1));
        let reg = m.registry_labels(["docker.io"].into_iter())[0];
        let (a, b) = (m.recorder(0), m.recorder(1));
        let mut s = summary(RouteKind::Blob, 200, 1000);
        s.cache = CacheStatus::Hit;
        s.from_cache = 900;
        a.request(&s, Method::Get, Some(reg), Duration::from_millis(3));
        b.request(&s, Method::Get, Some(reg), Duration::from_millis(30));
        s.cache = CacheStatus::Miss;
        s.pulled = 900;
        b.request(&s, Method::Get, Some(reg), Duration::from_secs(100));
        let text = m.render(&[("listeners", true)]);
        let blob = r#"type="blob",registry="docker.io""#;
        // Cumulative buckets: 3 ms <= 5 ms, 30 ms <= 50 ms, 100 s only in +Inf.
        let h = r#"registry_http_request_duration_seconds_bucket{handler="blob",method="GET",le="#;
        let get = r#"{handler="blob",method="GET"}"#;
        for (series, want) in [
            (
                r#"registry_http_requests_total{handler="blob",method="GET",code="200",registry="docker.io"}"#.to_string(),
                3.0,
            ),
            (format!("registry_proxy_requests_total{{{blob}}}"), 3.0),
            (format!("registry_proxy_hits_total{{{blob}}}"), 2.0),
            (format!("registry_proxy_misses_total{{{blob}}}"), 1.0),
            (format!("registry_proxy_pulled_bytes_total{{{blob}}}"), 900.0),
            (
                r#"registry_proxy_hits_total{type="manifest",registry="docker.io"}"#.to_string(),
                0.0,
            ),
            (format!("ocirelay_cache_served_bytes_total{{{blob}}}"), 2000.0),
            (format!("ocirelay_cache_saved_bytes_total{{{blob}}}"), 1800.0),
            (format!("{h}\"0.005\"}}"), 1.0),
            (format!("{h}\"0.05\"}}"), 2.0),
            (format!("{h}\"60\"}}"), 2.0),
            (format!("{h}\"+Inf\"}}"), 3.0),
            (format!("registry_http_request_duration_seconds_count{get}"), 3.0),
            (format!("registry_http_request_duration_seconds_sum{get}"), 100.033),
            (r#"ocirelay_ready{check="listeners"}"#.to_string(), 1.0),
        ] {
            assert_eq!(value(&text, &series), Some(want), "{series}\n{text}");
        }
        assert_eq!(m.cache_counts().hits, 2);
        assert_eq!(m.cache_counts().bytes_served, 2000);
    }

    #[test]
    fn label_values_are_escaped() {
        let mut l = Labels::default();
        l.add("registry", "a\"b\\c\nd");
        assert_eq!(l.0, r#"registry="a\"b\\c\nd""#);
    }
}
