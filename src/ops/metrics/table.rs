//! The series a worker counts, and its table of counters: keys packed into
//! a `u64` (a family and label indices), and a fixed-size open-addressing
//! map from keys to atomics with exactly one writer.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::ops::summary::RouteKind;

/// A registry's index in the process's label table. Registry ids are valid
/// for one config only (a reload renumbers them); metrics outlive configs,
/// so they are keyed by name through this table, which only grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RegLabel(pub(super) u16);

/// No registry (the landing page, `/healthz`, a refused request).
pub(super) const NO_REGISTRY: u16 = u16::MAX;

/// The series families a key can belong to. Each uses some of the key's
/// label fields; the comments say which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(super) enum Family {
    /// route, method, code (status sent), reg
    Requests = 1,
    /// route, reg: bytes written to the client
    ResponseBytes,
    /// route, method, code (bucket index)
    Duration,
    /// route, method: nanoseconds
    DurationSum,
    /// route, method (the cache outcome's index), reg
    CacheResult,
    /// route, reg: bytes sent to clients for answers from the cache
    CacheServed,
    /// route, reg: body bytes answered from the cache
    CacheSaved,
    /// route, reg: body bytes received from upstreams
    Pulled,
    /// route, reg: objects stored in the cache
    StoredObjects,
    /// route, reg: bytes of the objects stored
    StoredBytes,
    /// code (status received), reg
    UpstreamRequests,
    /// route (the failure's index), reg
    UpstreamErrors,
    /// reg
    UpstreamRedirects,
    /// code (bucket index), reg
    UpstreamDuration,
    /// reg: nanoseconds
    UpstreamDurationSum,
    /// reg: when the upstream last answered (unix ms; a value, not a sum)
    UpstreamOk,
    /// reg: when it last failed (unix ms; a value)
    UpstreamFail,
    /// reg: what failed then ([`UpstreamFailure::code`]; a value)
    UpstreamFailWhat,
    /// reg: the last `ratelimit-remaining` (a value)
    RateRemaining,
    /// reg: when it was seen (unix ms; a value)
    RateSeen,
    /// route (the [`super::Limited`] index): requests refused or shaped by
    /// the per-client limits
    Limited,
}

/// A series: its family and label indices, packed into one nonzero `u64`
/// (the family is never 0): `family:8 route:8 method:8 code:16 reg:16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Key {
    pub(super) family: Family,
    pub(super) route: u8,
    pub(super) method: u8,
    pub(super) code: u16,
    pub(super) reg: u16,
}

impl Key {
    pub(super) fn new(family: Family, reg: Option<RegLabel>) -> Key {
        Key {
            family,
            route: 0,
            method: 0,
            code: 0,
            reg: reg.map_or(NO_REGISTRY, |r| r.0),
        }
    }

    pub(super) fn route(self, r: RouteKind) -> Key {
        Key {
            route: r.index(),
            ..self
        }
    }

    pub(super) fn method(self, m: u8) -> Key {
        Key { method: m, ..self }
    }

    pub(super) fn code(self, c: u16) -> Key {
        Key { code: c, ..self }
    }

    fn pack(self) -> u64 {
        (self.family as u64) << 56
            | u64::from(self.route) << 48
            | u64::from(self.method) << 40
            | u64::from(self.code) << 16
            | u64::from(self.reg)
    }

    fn unpack(k: u64) -> Option<Key> {
        let family = FAMILIES
            .get(((k >> 56) as usize).checked_sub(1)?)
            .copied()?;
        Some(Key {
            family,
            route: (k >> 48) as u8,
            method: (k >> 40) as u8,
            code: (k >> 16) as u16,
            reg: k as u16,
        })
    }

    pub(super) fn registry(self) -> Option<RegLabel> {
        (self.reg != NO_REGISTRY).then_some(RegLabel(self.reg))
    }
}

/// Every family, in discriminant order (for [`Key::unpack`]).
const FAMILIES: [Family; 21] = [
    Family::Requests,
    Family::ResponseBytes,
    Family::Duration,
    Family::DurationSum,
    Family::CacheResult,
    Family::CacheServed,
    Family::CacheSaved,
    Family::Pulled,
    Family::StoredObjects,
    Family::StoredBytes,
    Family::UpstreamRequests,
    Family::UpstreamErrors,
    Family::UpstreamRedirects,
    Family::UpstreamDuration,
    Family::UpstreamDurationSum,
    Family::UpstreamOk,
    Family::UpstreamFail,
    Family::UpstreamFailWhat,
    Family::RateRemaining,
    Family::RateSeen,
    Family::Limited,
];

/// One entry of a [`Table`]: a key (0 = free) and its counter.
#[derive(Default)]
struct Entry {
    key: AtomicU64,
    value: AtomicU64,
}

/// Linear probing gives up after this many entries; the series is then
/// counted as dropped (see [`Table::dropped`]).
const MAX_PROBE: usize = 64;

/// A fixed-size map from keys to counters with exactly one writer (the
/// worker that owns it) and any number of readers.
pub(super) struct Table {
    entries: Box<[Entry]>,
    /// Updates whose series found no room (the table is sized so that this
    /// stays 0; exported so that it would show).
    pub(super) dropped: AtomicU64,
}

impl Table {
    pub(super) fn with_capacity(n: usize) -> Table {
        let n = n.next_power_of_two();
        Table {
            entries: (0..n).map(|_| Entry::default()).collect(),
            dropped: AtomicU64::new(0),
        }
    }

    /// The counter of `key`, claiming a free entry for it the first time.
    /// Only the owning worker calls this (see [`Recorder`]): with one
    /// writer, no other thread can claim the same entry in between.
    fn counter(&self, key: Key) -> Option<&AtomicU64> {
        let k = key.pack();
        let mask = self.entries.len() - 1;
        // Fibonacci hashing: the high bits of the product are well mixed.
        let mut i = (k.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as usize & mask;
        for _ in 0..MAX_PROBE.min(self.entries.len()) {
            let e = &self.entries[i];
            match e.key.load(Ordering::Relaxed) {
                found if found == k => return Some(&e.value),
                0 => {
                    // The value is 0 already: publishing the key makes the
                    // entry visible to readers, who then read the value.
                    e.key.store(k, Ordering::Release);
                    return Some(&e.value);
                }
                _ => i = (i + 1) & mask,
            }
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
        None
    }

    pub(super) fn add(&self, key: Key, n: u64) {
        if let Some(c) = self.counter(key) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// [`Table::add`], ordered after every update before it: a reader that
    /// sees this count also sees them (see [`Recorder::request`]).
    pub(super) fn add_last(&self, key: Key, n: u64) {
        if let Some(c) = self.counter(key) {
            c.fetch_add(n, Ordering::Release);
        }
    }

    pub(super) fn set(&self, key: Key, v: u64) {
        if let Some(c) = self.counter(key) {
            c.store(v, Ordering::Relaxed);
        }
    }

    /// Every published entry.
    pub(super) fn entries(&self) -> impl Iterator<Item = (Key, u64)> + '_ {
        self.entries.iter().filter_map(|e| {
            let k = e.key.load(Ordering::Acquire);
            let key = Key::unpack(k)?;
            Some((key, e.value.load(Ordering::Acquire)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_are_never_zero() {
        let k = Key::new(Family::Requests, Some(RegLabel(3)))
            .route(RouteKind::Blob)
            .method(1)
            .code(206);
        assert_ne!(k.pack(), 0);
        assert_eq!(Key::unpack(k.pack()), Some(k));
        let none = Key::new(Family::RateSeen, None);
        assert_eq!(Key::unpack(none.pack()), Some(none));
        assert_eq!(Key::unpack(0), None);
    }

    #[test]
    fn a_full_table_drops_and_says_so() {
        let t = Table::with_capacity(4);
        for code in 0..5 {
            t.add(Key::new(Family::Requests, None).code(code), 1);
        }
        assert_eq!(t.entries().count(), 4);
        assert_eq!(t.dropped.load(Ordering::Relaxed), 1);
    }
}
