//! The shared tier's state as an operator reads it (`/readyz`, `/metrics`,
//! the event log): whether the bucket answers, and counters of what it
//! served and took. Written by `cache::s3::tier` on every worker (atomics,
//! relaxed: figures, not synchronisation), read on scrape.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Whether the shared tier is configured and answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TierState {
    Off = 0,
    Up,
    /// Requests to it failed: nodes serve from their disk and the upstream,
    /// and ask it again after a pause (see `cache::s3::tier`).
    Down,
}

/// What is counted, one series each under `ocirelay_shared_tier_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum TierCount {
    /// Blobs served from the bucket (a tier-1 miss it answered).
    BlobHits,
    /// Blob lookups the bucket did not have.
    BlobMisses,
    /// Manifests read from the bucket.
    ManifestHits,
    /// Tag records read from the bucket and still fresh.
    TagHits,
    /// Objects uploaded to it.
    Uploads,
    /// Bytes uploaded to it.
    UploadedBytes,
    /// Bytes served from it.
    ServedBytes,
    /// Uploads that failed (retried later).
    UploadFailures,
    /// Objects found wrong (digest mismatch, short): deleted, never served.
    Corrupt,
    /// Requests to the store that failed.
    Errors,
    /// Downloads this node left to another node's lease.
    LeaseWaits,
    /// Hits answered with a 307 to a presigned URL.
    Redirects,
}

impl TierCount {
    pub const ALL: [TierCount; 12] = [
        TierCount::BlobHits,
        TierCount::BlobMisses,
        TierCount::ManifestHits,
        TierCount::TagHits,
        TierCount::Uploads,
        TierCount::UploadedBytes,
        TierCount::ServedBytes,
        TierCount::UploadFailures,
        TierCount::Corrupt,
        TierCount::Errors,
        TierCount::LeaseWaits,
        TierCount::Redirects,
    ];

    /// The series' name and help.
    pub fn series(self) -> (&'static str, &'static str) {
        match self {
            TierCount::BlobHits => ("ocirelay_shared_tier_blob_hits_total", "Blobs this node served from the shared tier (its own disk did not have them)."),
            TierCount::BlobMisses => ("ocirelay_shared_tier_blob_misses_total", "Blob lookups the shared tier did not have."),
            TierCount::ManifestHits => ("ocirelay_shared_tier_manifest_hits_total", "Manifests read from the shared tier."),
            TierCount::TagHits => ("ocirelay_shared_tier_tag_hits_total", "Tag records read from the shared tier while fresh (no upstream HEAD)."),
            TierCount::Uploads => ("ocirelay_shared_tier_uploads_total", "Objects this node uploaded to the shared tier."),
            TierCount::UploadedBytes => ("ocirelay_shared_tier_uploaded_bytes_total", "Bytes this node uploaded to the shared tier."),
            TierCount::ServedBytes => ("ocirelay_shared_tier_served_bytes_total", "Blob bytes this node read from the shared tier."),
            TierCount::UploadFailures => ("ocirelay_shared_tier_upload_failures_total", "Uploads that failed (retried later)."),
            TierCount::Corrupt => ("ocirelay_shared_tier_corrupt_total", "Objects found wrong in the shared tier (digest mismatch or short): deleted, never served."),
            TierCount::Errors => ("ocirelay_shared_tier_errors_total", "Requests to the shared tier's store that failed."),
            TierCount::LeaseWaits => ("ocirelay_shared_tier_lease_waits_total", "Blob downloads this node left to another node holding its lease."),
            TierCount::Redirects => ("ocirelay_shared_tier_redirects_total", "Hits answered with a 307 to a presigned URL (redirect mode)."),
        }
    }
}

/// The shared tier's state and counters.
#[derive(Default)]
pub struct TierHealth {
    state: AtomicU8,
    /// When it went down (unix ms), 0 when up.
    down_since_ms: AtomicU64,
    /// Uploads waiting for the tier to come back (a gauge).
    pending: AtomicU64,
    counts: [AtomicU64; TierCount::ALL.len()],
    /// The last failure, for `/readyz` and the log (never a secret:
    /// `S3Error`'s display names the operation and status only).
    last_error: Mutex<String>,
}

impl TierHealth {
    pub fn state(&self) -> TierState {
        match self.state.load(Ordering::Relaxed) {
            1 => TierState::Up,
            2 => TierState::Down,
            _ => TierState::Off,
        }
    }

    /// Marks the tier up; true if it was down (the caller logs the return).
    pub fn set_up(&self) -> bool {
        let was = self.state.swap(TierState::Up as u8, Ordering::Relaxed);
        self.down_since_ms.store(0, Ordering::Relaxed);
        was == TierState::Down as u8
    }

    /// Marks the tier down with why; true if it was up (log it once).
    pub fn set_down(&self, why: &str) -> bool {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = why.to_string();
        let was = self.state.swap(TierState::Down as u8, Ordering::Relaxed);
        if was != TierState::Down as u8 {
            self.down_since_ms.store(now_ms(), Ordering::Relaxed);
        }
        was != TierState::Down as u8
    }

    pub fn add(&self, what: TierCount, n: u64) {
        self.counts[what as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn count(&self, what: TierCount) -> u64 {
        self.counts[what as usize].load(Ordering::Relaxed)
    }

    /// Queued writes went up (or, negative, down) by `n`.
    pub fn add_pending(&self, n: i64) {
        if n >= 0 {
            self.pending.fetch_add(n as u64, Ordering::Relaxed);
        } else {
            let _ = self
                .pending
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                    Some(p.saturating_sub(n.unsigned_abs()))
                });
        }
    }

    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// `/readyz`'s line: the tier never makes a node unready (it keeps
    /// serving from its disk and the upstream), but the line says how it
    /// stands.
    pub fn detail(&self) -> String {
        match self.state() {
            TierState::Off => "off".into(),
            TierState::Up => format!("up; {} uploads pending", self.pending()),
            TierState::Down => {
                let since = self.down_since_ms.load(Ordering::Relaxed);
                let secs = now_ms().saturating_sub(since) / 1000;
                let why = self
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                format!(
                    "down for {secs}s ({why}); serving from disk and upstream; {} uploads pending",
                    self.pending()
                )
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
