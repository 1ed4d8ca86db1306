//! The in-flight table: which objects are being downloaded right now, so
//! that concurrent misses of one digest, on any worker, cause one upstream
//! download. The first request leads (fetches, streams to its client,
//! writes the temporary file); the others follow the growing file.
//!
//! This table is the one structure shared across workers on the data path
//! (a `Mutex` around a small map, held for an insert, a lookup or a
//! removal, never across I/O): coalescing across cores needs one place that
//! every core sees. Progress is published through atomics in [`Fill`], so
//! followers read it without the lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// One download in progress.
#[derive(Debug)]
pub struct Fill {
    /// The temporary file being written (followers open it once; the
    /// leader renames it into place when it is complete and verified).
    pub file: std::fs::File,
    /// The object's length, once the upstream said it ([`UNKNOWN`] before).
    total: AtomicU64,
    written: AtomicU64,
    state: AtomicU8,
}

/// `Fill::total` before the upstream's answer is in.
pub const UNKNOWN: u64 = u64::MAX;

/// Where a download stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillState {
    Running,
    /// Complete and verified: every byte up to `total` is good.
    Done,
    /// Failed mid-body: followers cut their clients; nothing was stored.
    Failed,
    /// The leader's request got no body to store (refused, not found,
    /// unreachable): followers make their own request, whose answer may
    /// differ (their credentials are their own).
    Abandoned,
}

impl Fill {
    pub fn new(file: std::fs::File) -> Fill {
        Fill {
            file,
            total: AtomicU64::new(UNKNOWN),
            written: AtomicU64::new(0),
            state: AtomicU8::new(0),
        }
    }

    /// The object's length ([`UNKNOWN`] until the upstream's head is in).
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Acquire)
    }

    pub fn set_total(&self, n: u64) {
        self.total.store(n, Ordering::Release);
    }

    /// The leader got nothing to store: see [`FillState::Abandoned`].
    pub fn abandon(&self) {
        self.state.store(3, Ordering::Release);
    }

    /// Bytes written to the file so far (not yet verified unless `Done`).
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    pub fn add_written(&self, n: u64) {
        self.written.fetch_add(n, Ordering::Release);
    }

    pub fn state(&self) -> FillState {
        match self.state.load(Ordering::Acquire) {
            0 => FillState::Running,
            1 => FillState::Done,
            3 => FillState::Abandoned,
            _ => FillState::Failed,
        }
    }

    pub fn finish(&self, ok: bool) {
        self.state.store(if ok { 1 } else { 2 }, Ordering::Release);
    }
}

/// Downloads in progress, by digest.
#[derive(Debug, Default)]
pub struct InFlight {
    fills: Mutex<HashMap<String, Arc<Fill>>>,
}

/// What a lookup in the table found.
pub enum Joined {
    /// Nobody is fetching it: this request leads (call [`InFlight::lead`]).
    Lead,
    /// Someone is: follow this fill.
    Follow(Arc<Fill>),
}

impl InFlight {
    /// The fill of `digest` in progress, if any.
    pub fn join(&self, digest: &str) -> Joined {
        match self.lock().get(digest) {
            Some(f) => Joined::Follow(f.clone()),
            None => Joined::Lead,
        }
    }

    /// Registers `fill` as the download of `digest`, unless another request
    /// registered one first (then that one is returned to follow).
    pub fn lead(&self, digest: &str, fill: Arc<Fill>) -> Result<(), Arc<Fill>> {
        let mut map = self.lock();
        if let Some(f) = map.get(digest) {
            return Err(f.clone());
        }
        map.insert(digest.to_string(), fill);
        Ok(())
    }

    /// Ends the download of `digest` (after `Fill::finish`).
    pub fn end(&self, digest: &str) {
        self.lock().remove(digest);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Fill>>> {
        // A panic while holding the lock cannot leave the map inconsistent
        // (single inserts and removals): carry on with it.
        self.fills.lock().unwrap_or_else(|p| p.into_inner())
    }
}
