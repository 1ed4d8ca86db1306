//! `/metrics` as the tests read it: one scrape of a relay's metrics
//! listener, parsed into samples, and Debian's `promtool` to check it.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::relay::Relay;

/// One scrape, parsed.
pub struct Scrape {
    pub text: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    /// Scrapes `relay`'s metrics listener.
    pub fn of(relay: &Relay) -> Scrape {
        let r = relay.metrics_client().get("/metrics").unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        Scrape::parse(r.text())
    }

    /// Scrapes `relay` until `n` more requests of route kind `handler`
    /// than in `before` are counted, for at most 10 s: a request is counted
    /// once it has finished, just after its client got the last byte, and
    /// everything it moved is counted by then.
    pub fn after(relay: &Relay, before: &Scrape, handler: &str, n: f64) -> Scrape {
        let series = "registry_http_requests_total";
        let want = before.sum(series, &[("handler", handler)]) + n;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = Scrape::of(relay);
            let got = s.sum(series, &[("handler", handler)]);
            if got >= want || Instant::now() > deadline {
                assert_eq!(got, want, "{handler} requests counted");
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn parse(text: String) -> Scrape {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("name value");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, parse_labels(l.strip_suffix('}').expect("}"))),
                None => (series, BTreeMap::new()),
            };
            samples.push((name.to_string(), labels, value));
        }
        Scrape { text, samples }
    }

    /// The value of `name` with exactly `labels`; 0 when there is no such
    /// series (a series appears at its first count).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && *l == want)
            .map_or(0.0, |(_, _, v)| *v)
    }

    /// Whether a series `name` with exactly `labels` is there at all.
    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples.iter().any(|(n, l, _)| n == name && *l == want)
    }

    /// The sum of every series `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }
}

/// `a="x",b="y\"z"` into a map (values unescaped).
fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some((name, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(name.trim_start_matches(',').to_string(), value);
        rest = &after[end..];
    }
    out
}

/// Runs Debian's `promtool check metrics` on `text`: its output (lint
/// problems) if it finds fault with it.
pub fn promtool_check(text: &str) -> Result<(), String> {
    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "/usr/bin/promtool".into());
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {promtool} ({e}): the metrics tests need it \
                 (Debian: apt-get install prometheus; tests/deps.sh does it as root)"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("promtool ({}): {said}", out.status))
    }
}
