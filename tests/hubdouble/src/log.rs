//! The request log: every request each host received, for tests to assert on.

use crate::Host;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// One request as a host received it (recorded before it is answered).
#[derive(Clone, Debug)]
pub struct LogEntry {
    /// Order of arrival across all hosts, from 0.
    pub seq: u64,
    /// Which host received it.
    pub host: Host,
    /// Connection id (unique across hosts); equal ids mean one kept-alive connection.
    pub conn: u64,
    /// Request method as sent (`GET`, `HEAD`, ...).
    pub method: String,
    /// Request target as sent: path plus `?query`.
    pub target: String,
    /// Header fields in arrival order, names lowercased, values as sent.
    pub headers: Vec<(String, String)>,
    /// The request body (token POSTs carry a form here).
    pub body: Vec<u8>,
}

impl LogEntry {
    /// The target without its query string.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The query string without `?` (empty when none).
    pub fn query(&self) -> &str {
        self.target.split_once('?').map(|(_, q)| q).unwrap_or("")
    }

    /// First value of a header (name matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All values of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Whether the header is present at all.
    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    /// Whether the request carried `Authorization: Basic ...`.
    pub fn has_basic_auth(&self) -> bool {
        self.header_all("authorization")
            .iter()
            .any(|v| v.len() > 6 && v[..6].eq_ignore_ascii_case("basic "))
    }

    /// Whether the request carried `Authorization: Bearer ...`.
    pub fn has_bearer_auth(&self) -> bool {
        self.header_all("authorization")
            .iter()
            .any(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer "))
    }
}

/// Shared, thread-safe request log. Obtain it with [`crate::HubDouble::log`].
#[derive(Debug)]
pub struct RequestLog {
    entries: Mutex<Vec<LogEntry>>,
    enabled: AtomicBool,
    seq: AtomicU64,
}

impl RequestLog {
    pub(crate) fn new(enabled: bool) -> RequestLog {
        RequestLog {
            entries: Mutex::new(Vec::new()),
            enabled: AtomicBool::new(enabled),
            seq: AtomicU64::new(0),
        }
    }

    pub(crate) fn record(&self, make: impl FnOnce(u64) -> LogEntry) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        entries.push(make(seq));
    }

    /// Turns recording on or off (benchmarks turn it off).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// A copy of every entry, in arrival order.
    pub fn entries(&self) -> Vec<LogEntry> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A copy of the entries of one host, in arrival order.
    pub fn for_host(&self, host: Host) -> Vec<LogEntry> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|e| e.host == host)
            .cloned()
            .collect()
    }

    /// Entries of `host` whose path (query excluded) equals `path`.
    pub fn matching(&self, host: Host, path: &str) -> Vec<LogEntry> {
        self.for_host(host)
            .into_iter()
            .filter(|e| e.path() == path)
            .collect()
    }

    /// Entries of `host` whose path (query excluded) starts with `prefix`, e.g.
    /// `/regional/` or `/registry-v2/`.
    pub fn with_prefix(&self, host: Host, prefix: &str) -> Vec<LogEntry> {
        self.for_host(host)
            .into_iter()
            .filter(|e| e.path().starts_with(prefix))
            .collect()
    }

    /// Number of entries recorded so far.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether nothing has been recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every entry.
    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}
