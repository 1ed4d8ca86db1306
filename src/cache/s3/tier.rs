//! What the pull path asks of the shared tier, and the writes it queues.
//!
//! Reads happen on the request (a tier-1 miss asks the bucket before the
//! upstream); writes never do: verified objects, tag records and access
//! notes are queued on the worker that learnt them and sent by that
//! worker's background loop ([`Tier::drain`]), so that no client waits for
//! the store, and a store that is down holds nothing up.
//!
//! Health: a request that fails marks the tier down (logged once, counted,
//! shown by `/readyz`); while down, requests skip it (no latency added),
//! one probe per [`RETRY_AFTER`] asks again, and queued uploads wait for it
//! to come back (up to [`MAX_PENDING`] per worker; past that the oldest go,
//! and a later local hit queues them again).
//!
//! Leases (one upstream download across nodes): a node that misses in both
//! tiers takes `leases/<digest>` before fetching upstream; the others wait
//! (up to `lease_wait`) for the object to appear, then serve it from the
//! bucket. On a store that honours `If-None-Match: *` the lease is one
//! conditional PUT. On one that ignores it (Garage) the lease is written
//! unconditionally, then read back after [`LEASE_SETTLE`]: the node whose
//! write is read back leads. That is weaker (two nodes whose writes land
//! further apart than the settle time, each reading its own back, both
//! download), and never worse than no lease: each node still downloads at
//! most once, and the bucket keeps one copy (same key, same bytes).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::client::{S3Client, S3Error, Written};
use super::keys;
use crate::cache::manifests::{decode_manifest, TagRecord, MAX_MANIFEST};
use crate::config::s3::S3Config;
use crate::ops::log::Level;
use crate::ops::tier::{TierCount, TierHealth};
use crate::upstream::{Conn, ResponseHead, Upstreams};
use crate::wire::digest::Verifier;
use crate::wire::names::Digest;

/// A tier marked down is asked again after this long (one request: the
/// first that comes along).
pub const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Queued writes per worker, at most.
pub const MAX_PENDING: usize = 10_000;
/// How long a write-then-read lease waits before reading back.
pub const LEASE_SETTLE: Duration = Duration::from_millis(150);
/// A lease older than this many `lease_wait`s is a dead node's: taken over.
const LEASE_STALE_FACTOR: u32 = 2;
/// How often a node waiting on another's lease looks for the object.
const LEASE_POLL: Duration = Duration::from_millis(200);
/// With no request to the store for this long, one worker asks it (a HEAD
/// of a key nobody writes), so that `/readyz` and the metrics of a node that
/// needs nothing from the bucket still say how it stands.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// A node notes a blob's use in the bucket (`used/`) at most this often.
pub const USED_EVERY: Duration = Duration::from_secs(86_400);
/// Per-worker memory of what the bucket holds (and when its use was last
/// noted); cleared when full, at the cost of a HEAD each.
const MAX_KNOWN: usize = 100_000;

/// A write for the bucket, queued on the worker that learnt it.
#[derive(Debug)]
pub enum Job {
    /// A verified blob on this node's disk; `lease`: release it after.
    Blob {
        digest: String,
        path: PathBuf,
        len: u64,
        lease: bool,
    },
    /// A verified manifest (the local file's encoding).
    Manifest { digest: String, file: Vec<u8> },
    /// A tag record (the local record's encoding).
    Tag { name: String, text: String },
    /// An access note (see `Access::shared_note`).
    Link { key: String, body: String },
    /// A blob's use (for `prune`).
    Used { digest: String },
    /// A lease to give back (the download it covered failed).
    Unlease { digest: String },
    /// An object found wrong: removed so that it is uploaded again.
    Delete { key: String },
}

impl Job {
    /// Small writes go before blob uploads (a tag record should not wait
    /// behind a 1 GiB layer).
    fn small(&self) -> bool {
        !matches!(self, Job::Blob { .. })
    }
}

thread_local! {
    /// This worker's queued writes: small ones, then blobs.
    static QUEUE: RefCell<(VecDeque<Job>, VecDeque<Job>)> = const {
        RefCell::new((VecDeque::new(), VecDeque::new()))
    };
    /// Digests this worker knows the bucket holds, with when their use was
    /// last noted there.
    static KNOWN: RefCell<HashMap<String, Instant>> = RefCell::new(HashMap::new());
}

/// Whether the store honours `If-None-Match: *`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Conditional {
    Unknown = 0,
    Honoured,
    Ignored,
}

/// How a lease went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// This node fetches it upstream (and uploads it).
    Mine,
    /// Another node is fetching it.
    Theirs,
    /// The store did not answer: fetch it, without a lease.
    Unavailable,
}

/// Who holds a lease another node wrote.
enum Holder {
    Alive,
    /// Older than `LEASE_STALE_FACTOR` x `lease_wait`: its node died.
    Dead,
    /// Given back already.
    Gone,
}

/// What the bucket has for a blob. Returned once per lookup and moved
/// straight into the body phase: not worth a box.
#[allow(clippy::large_enum_variant)]
pub enum Found {
    /// The object's GET, its head read: stream it (and check it).
    Body(Conn, ResponseHead, u64),
    /// Present, `len` bytes (a HEAD, for redirect mode).
    Present(u64),
    Absent,
    /// The store did not answer (or is marked down).
    Unavailable,
}

/// The shared tier: the client, its settings, its health.
pub struct Tier {
    pub client: S3Client,
    cfg: S3Config,
    health: Arc<TierHealth>,
    conditional: AtomicU8,
    /// While down: when to ask again (unix ms).
    retry_at_ms: AtomicU64,
    /// The last time the store answered or was asked (unix ms).
    asked_ms: AtomicU64,
    /// The last refusal logged (unix ms).
    warned_ms: AtomicU64,
    /// This process, in lease bodies (which node holds a lease).
    node: String,
}

impl Tier {
    pub fn new(cfg: &S3Config, health: Arc<TierHealth>) -> Tier {
        health.set_up();
        let conditional = match cfg.conditional_writes {
            None => Conditional::Unknown,
            Some(true) => Conditional::Honoured,
            Some(false) => Conditional::Ignored,
        };
        let mut id = [0u8; 8];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id);
        Tier {
            client: S3Client::new(cfg),
            cfg: cfg.clone(),
            health,
            conditional: AtomicU8::new(conditional as u8),
            retry_at_ms: AtomicU64::new(0),
            asked_ms: AtomicU64::new(now_ms()),
            warned_ms: AtomicU64::new(0),
            node: id.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    pub fn config(&self) -> &S3Config {
        &self.cfg
    }

    pub fn health(&self) -> &TierHealth {
        &self.health
    }

    /// Whether to ask the bucket now: up, or down and due for a probe.
    pub fn usable(&self) -> bool {
        match self.health.state() {
            crate::ops::tier::TierState::Down => {
                let now = now_ms();
                let at = self.retry_at_ms.load(Ordering::Relaxed);
                // One request takes the probe; the rest skip until it ends.
                now >= at
                    && self
                        .retry_at_ms
                        .compare_exchange(
                            at,
                            now + RETRY_AFTER.as_millis() as u64,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        )
                        .is_ok()
            }
            _ => true,
        }
    }

    /// A request to the store answered (whatever its status).
    fn answered(&self) {
        if self.health.set_up() {
            crate::event!(
                Level::Info,
                None,
                "shared tier: {} answers again; catching up {} uploads",
                self.cfg.endpoint.origin,
                self.health.pending()
            );
        }
    }

    /// A request to the store failed.
    fn failed(&self, e: &S3Error) {
        self.health.add(TierCount::Errors, 1);
        self.retry_at_ms
            .store(now_ms() + RETRY_AFTER.as_millis() as u64, Ordering::Relaxed);
        if self.health.set_down(&e.to_string()) {
            crate::event!(
                Level::Warn,
                None,
                "shared tier: {} failing ({e}); serving from disk and upstream, asking again every {}s",
                self.cfg.endpoint.origin,
                RETRY_AFTER.as_secs()
            );
        }
    }

    /// Records how a request went; `Ok` passes through.
    fn seen<T>(&self, r: Result<T, S3Error>) -> Result<T, S3Error> {
        self.asked_ms.store(now_ms(), Ordering::Relaxed);
        match &r {
            Ok(_) => self.answered(),
            // The store answered, with a refusal of this request: it is up
            // (counted, logged at most once a minute). A 401 or 403 is the
            // credentials or the bucket's policy, the same for every
            // request: the tier is down until that changes (`/readyz`
            // says why).
            Err(e @ S3Error::Status { status, .. }) if !matches!(status, 401 | 403 | 500..) => {
                self.health.add(TierCount::Errors, 1);
                self.answered();
                let now = now_ms();
                let last = self.warned_ms.load(Ordering::Relaxed);
                if now.saturating_sub(last) >= 60_000
                    && self
                        .warned_ms
                        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    crate::event!(Level::Warn, None, "shared tier: {e}");
                }
            }
            Err(e) => self.failed(e),
        }
        r
    }

    // ---- reads (on the request) ----

    /// The blob `digest`: its body to stream (or, with `head_only`, its
    /// presence).
    pub async fn blob(&self, up: &Upstreams, digest: &Digest<'_>, head_only: bool) -> Found {
        let Some(key) = keys::blob(digest) else {
            return Found::Absent;
        };
        let found = if head_only {
            match self.seen(self.client.head(up, &key).await) {
                Ok(Some(info)) => Found::Present(info.len),
                Ok(None) => Found::Absent,
                Err(_) => Found::Unavailable,
            }
        } else {
            match self.seen(self.client.get(up, &key, None).await) {
                Ok(Some((conn, head))) => match head.framing {
                    crate::upstream::RespFraming::Length(n) if head.status == 200 => {
                        Found::Body(conn, head, n)
                    }
                    _ => Found::Unavailable,
                },
                Ok(None) => Found::Absent,
                Err(_) => Found::Unavailable,
            }
        };
        match &found {
            Found::Body(..) | Found::Present(_) => {
                self.known(digest.as_str());
                self.health.add(TierCount::BlobHits, 1);
            }
            Found::Absent => self.health.add(TierCount::BlobMisses, 1),
            Found::Unavailable => {}
        }
        found
    }

    /// Bytes `range` = (offset, length) of the blob `digest`: the 206's
    /// connection, its head read. A part cannot be checked against the
    /// digest (as a range from the upstream cannot): the caller serves it
    /// only to a request for that range.
    pub async fn blob_part(
        &self,
        up: &Upstreams,
        digest: &Digest<'_>,
        range: (u64, u64),
    ) -> Option<(Conn, ResponseHead)> {
        let key = keys::blob(digest)?;
        match self.seen(self.client.get(up, &key, Some(range)).await) {
            Ok(Some((conn, head)))
                if head.status == 206
                    && head.framing == crate::upstream::RespFraming::Length(range.1) =>
            {
                self.health.add(TierCount::ServedBytes, range.1);
                Some((conn, head))
            }
            _ => None,
        }
    }

    /// A manifest from the bucket, checked against `digest`: its media type
    /// and bytes. A wrong one is deleted (and never returned).
    pub async fn manifest(&self, up: &Upstreams, digest: &Digest<'_>) -> Option<(String, Vec<u8>)> {
        let key = keys::manifest(digest)?;
        let (file, _) = self
            .seen(self.client.get_small(up, &key, MAX_MANIFEST + 1024).await)
            .ok()??;
        let checked = decode_manifest(&file).and_then(|(media_type, bytes)| {
            let mut v = Verifier::new(digest)?;
            v.update(bytes);
            v.matches()
                .then(|| (media_type.to_string(), bytes.to_vec()))
        });
        match checked {
            Some(m) => {
                self.health.add(TierCount::ManifestHits, 1);
                Some(m)
            }
            None => {
                self.corrupt(&key);
                None
            }
        }
    }

    /// The bucket's record of tag `name` (see `Tags::name`).
    pub async fn tag(&self, up: &Upstreams, name: &str) -> Option<TagRecord> {
        let (text, _) = self
            .seen(self.client.get_small(up, &keys::tag(name), 4096).await)
            .ok()??;
        let (rec, for_name) = TagRecord::decode(std::str::from_utf8(&text).ok()?)?;
        (for_name == name).then_some(rec)
    }

    /// The bucket's access note for `registry`/`repo` and `digest`:
    /// `(open, confirmed unix secs)`.
    pub async fn link(
        &self,
        up: &Upstreams,
        registry: &str,
        repo: &str,
        digest: &Digest<'_>,
    ) -> Option<(bool, u64)> {
        let key = keys::link(registry, repo, digest)?;
        let (body, _) = self
            .seen(self.client.get_small(up, &key, 64).await)
            .ok()??;
        let text = std::str::from_utf8(&body).ok()?;
        let (open, secs) = text.trim().split_once(' ')?;
        let open = match open {
            "1" => true,
            "0" => false,
            _ => return None,
        };
        Some((open, secs.parse().ok()?))
    }

    /// A presigned URL of the blob, for redirect mode.
    pub fn presigned(&self, digest: &Digest<'_>) -> Option<String> {
        let key = keys::blob(digest)?;
        self.health.add(TierCount::Redirects, 1);
        Some(self.client.presign_get(&key, self.cfg.redirect_ttl))
    }

    /// Whether this worker knows the bucket holds `digest`.
    pub fn holds(&self, digest: &str) -> bool {
        KNOWN.with(|k| k.borrow().contains_key(digest))
    }

    fn known(&self, digest: &str) {
        KNOWN.with(|k| {
            let mut k = k.borrow_mut();
            if k.len() >= MAX_KNOWN {
                k.clear();
            }
            k.entry(digest.to_string()).or_insert_with(Instant::now);
        });
    }

    /// A found object that did not match its digest, or was short.
    pub fn corrupt(&self, key: &str) {
        self.health.add(TierCount::Corrupt, 1);
        crate::event!(
            Level::Warn,
            None,
            "shared tier: {key} does not match its digest; deleted, not served"
        );
        self.enqueue(Job::Delete {
            key: key.to_string(),
        });
    }

    /// The blob `digest` was found wrong in the bucket.
    pub fn corrupt_blob(&self, digest: &Digest<'_>) {
        KNOWN.with(|k| k.borrow_mut().remove(digest.as_str()));
        if let Some(key) = keys::blob(digest) {
            self.corrupt(&key);
        }
    }

    // ---- leases ----

    /// Takes the lease on downloading `digest` upstream. A lease taken
    /// just after another node uploaded the blob and gave its lease back
    /// (between this node's lookup and its lease) is given back at once and
    /// reported as `Theirs`: the blob is there to read.
    pub async fn lease(&self, up: &Upstreams, digest: &Digest<'_>) -> Lease {
        let Some(key) = keys::lease(digest) else {
            return Lease::Unavailable;
        };
        let got = self.take_lease(up, &key).await;
        if got != Lease::Mine {
            return got;
        }
        let blob = keys::blob(digest).unwrap_or_default();
        match self.seen(self.client.head(up, &blob).await) {
            Ok(Some(_)) => {
                let _ = self.seen(self.client.delete(up, &key).await);
                Lease::Theirs
            }
            _ => Lease::Mine,
        }
    }

    async fn take_lease(&self, up: &Upstreams, key: &str) -> Lease {
        if self.conditional(up).await == Conditional::Ignored {
            return self.lease_by_readback(up, key).await;
        }
        for _ in 0..2 {
            match self.seen(
                self.client
                    .put_small(up, key, self.lease_body().as_bytes(), true)
                    .await,
            ) {
                Ok(Written::Created) => return Lease::Mine,
                Ok(Written::Exists) => match self.lease_state(up, key).await {
                    Holder::Alive => return Lease::Theirs,
                    // Given back between the PUT and the HEAD: ask again.
                    Holder::Gone => {}
                    Holder::Dead => {
                        crate::event!(
                            Level::Warn,
                            None,
                            "shared tier: {key} held for over {}s: a dead node's, taken over",
                            (self.cfg.lease_wait * LEASE_STALE_FACTOR).as_secs()
                        );
                        let _ = self.seen(self.client.delete(up, key).await);
                    }
                },
                Err(_) => return Lease::Unavailable,
            }
        }
        Lease::Theirs
    }

    /// A lease on a store that ignores conditional writes.
    async fn lease_by_readback(&self, up: &Upstreams, key: &str) -> Lease {
        let mine = self.lease_body();
        match self.seen(self.client.get_small(up, key, 256).await) {
            Ok(Some((body, info))) if body != mine.as_bytes() && !self.is_stale(&info) => {
                return Lease::Theirs
            }
            Ok(_) => {}
            Err(_) => return Lease::Unavailable,
        }
        if self
            .seen(self.client.put_small(up, key, mine.as_bytes(), false).await)
            .is_err()
        {
            return Lease::Unavailable;
        }
        monoio::time::sleep(LEASE_SETTLE).await;
        match self.seen(self.client.get_small(up, key, 256).await) {
            Ok(Some((body, _))) if body == mine.as_bytes() => Lease::Mine,
            Ok(Some(_)) => Lease::Theirs,
            Ok(None) => Lease::Mine,
            Err(_) => Lease::Unavailable,
        }
    }

    fn lease_body(&self) -> String {
        format!("{} {}", self.node, now_ms() / 1000)
    }

    async fn lease_state(&self, up: &Upstreams, key: &str) -> Holder {
        match self.seen(self.client.head(up, key).await) {
            Ok(Some(info)) if self.is_stale(&info) => Holder::Dead,
            Ok(None) => Holder::Gone,
            _ => Holder::Alive,
        }
    }

    fn is_stale(&self, info: &super::ObjectInfo) -> bool {
        let limit = (self.cfg.lease_wait * LEASE_STALE_FACTOR).as_secs();
        info.modified_unix
            .is_some_and(|t| (now_ms() / 1000).saturating_sub(t) > limit)
    }

    /// Waits (up to `lease_wait`) for another node's download of `digest`
    /// to appear in the bucket. False: it did not (the lease was given back
    /// or the wait ran out): fetch it here.
    pub async fn await_other(&self, up: &Upstreams, digest: &Digest<'_>) -> bool {
        self.health.add(TierCount::LeaseWaits, 1);
        let (Some(blob), Some(lease)) = (keys::blob(digest), keys::lease(digest)) else {
            return false;
        };
        let deadline = Instant::now() + self.cfg.lease_wait;
        let mut polls = 0u32;
        while Instant::now() < deadline {
            monoio::time::sleep(LEASE_POLL).await;
            polls += 1;
            match self.seen(self.client.head(up, &blob).await) {
                Ok(Some(_)) => return true,
                Ok(None) => {}
                Err(_) => return false,
            }
            // Every few polls: is the lease still held?
            if polls.is_multiple_of(5) {
                match self.seen(self.client.head(up, &lease).await) {
                    Ok(Some(_)) => {}
                    _ => return false,
                }
            }
        }
        false
    }

    /// Whether the store honours `If-None-Match: *`, probed once per
    /// process when the config says `auto` (two conditional PUTs of a key
    /// of this node's own, then a DELETE).
    pub async fn conditional(&self, up: &Upstreams) -> Conditional {
        match self.conditional.load(Ordering::Relaxed) {
            1 => return Conditional::Honoured,
            2 => return Conditional::Ignored,
            _ => {}
        }
        let key = format!("leases/probe-{}", self.node);
        let first = self.seen(self.client.put_small(up, &key, b"probe", true).await);
        let second = self.seen(self.client.put_small(up, &key, b"probe", true).await);
        let _ = self.seen(self.client.delete(up, &key).await);
        let found = match (first, second) {
            (Ok(Written::Created), Ok(Written::Exists)) => Conditional::Honoured,
            (Ok(_), Ok(Written::Created)) => Conditional::Ignored,
            _ => return Conditional::Unknown, // asked again next time
        };
        self.conditional.store(found as u8, Ordering::Relaxed);
        crate::event!(
            Level::Info,
            None,
            "shared tier: {} {} conditional writes ({})",
            self.cfg.endpoint.origin,
            if found == Conditional::Honoured {
                "honours"
            } else {
                "ignores"
            },
            if found == Conditional::Honoured {
                "leases are one conditional PUT"
            } else {
                "leases are written, then read back"
            }
        );
        found
    }

    // ---- writes (queued, sent by `drain`) ----

    /// Queues `job` on this worker.
    pub fn enqueue(&self, job: Job) {
        QUEUE.with(|q| {
            let mut q = q.borrow_mut();
            let (small, blobs) = &mut *q;
            let list = if job.small() { small } else { blobs };
            if list.len() >= MAX_PENDING {
                list.pop_front();
                self.health.add_pending(-1);
            }
            list.push_back(job);
            self.health.add_pending(1);
        });
    }

    /// A blob verified into this node's disk: upload it (and give back the
    /// lease taken for it).
    pub fn stored_blob(&self, digest: &Digest<'_>, path: PathBuf, len: u64, lease: bool) {
        self.enqueue(Job::Blob {
            digest: digest.as_str().to_string(),
            path,
            len,
            lease,
        });
    }

    /// A local hit: the bucket is told of the use once a day, and gets the
    /// object if it lacks it (stored before the tier was there, or while it
    /// was down and the queue overflowed).
    pub fn local_hit(&self, digest: &Digest<'_>, path: PathBuf, len: u64) {
        let due = KNOWN.with(|k| match k.borrow().get(digest.as_str()) {
            None => Some(true),
            Some(t) if t.elapsed() > USED_EVERY => Some(false),
            Some(_) => None,
        });
        match due {
            Some(true) => {
                self.known(digest.as_str());
                self.stored_blob(digest, path, len, false);
            }
            Some(false) => {
                KNOWN.with(|k| {
                    k.borrow_mut()
                        .insert(digest.as_str().to_string(), Instant::now())
                });
                self.enqueue(Job::Used {
                    digest: digest.as_str().to_string(),
                });
            }
            None => {}
        }
    }

    /// Asks the store how it stands if nobody did for [`HEARTBEAT`] (one
    /// worker of the process: the first to find it due).
    pub async fn heartbeat(&self, up: &Upstreams) {
        let now = now_ms();
        let last = self.asked_ms.load(Ordering::Relaxed);
        let due = now.saturating_sub(last) >= HEARTBEAT.as_millis() as u64
            && self
                .asked_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if due && self.usable() {
            let key = format!("leases/heartbeat-{}", self.node);
            let _ = self.seen(self.client.head(up, &key).await);
        }
    }

    /// Sends this worker's queued writes while the tier answers: small ones
    /// first, then at most one blob upload, then returns (the caller's loop
    /// comes back). False when nothing was sent (idle or down).
    pub async fn drain(&self, up: &Upstreams) -> bool {
        let mut sent = false;
        loop {
            // An empty queue must not take the probe of a tier that is
            // down: another worker's queue (or a request) may need it.
            let empty = QUEUE.with(|q| {
                let q = q.borrow();
                q.0.is_empty() && q.1.is_empty()
            });
            if empty || (self.health.state() == crate::ops::tier::TierState::Down && !self.usable())
            {
                return sent;
            }
            let job = QUEUE.with(|q| {
                let mut q = q.borrow_mut();
                q.0.pop_front().or_else(|| q.1.pop_front())
            });
            let Some(job) = job else {
                return sent;
            };
            self.health.add_pending(-1);
            let blob = !job.small();
            match self.send(up, &job).await {
                Ok(()) => sent = true,
                Err(e) if e.is_unavailable() => {
                    // Kept for when the tier is back, at the front.
                    QUEUE.with(|q| {
                        let mut q = q.borrow_mut();
                        if blob {
                            q.1.push_front(job);
                        } else {
                            q.0.push_front(job);
                        }
                    });
                    self.health.add_pending(1);
                    return sent;
                }
                Err(_) => {} // refused (logged by `seen`): dropped
            }
            if blob {
                return sent;
            }
        }
    }

    async fn send(&self, up: &Upstreams, job: &Job) -> Result<(), S3Error> {
        match job {
            Job::Blob {
                digest,
                path,
                len,
                lease,
            } => {
                let d = Digest::parse(digest).map_err(|_| S3Error::bad("upload", "digest"))?;
                let key = keys::blob(&d).ok_or_else(|| S3Error::bad("upload", "digest"))?;
                let r = self.upload_blob(up, &key, path, *len).await;
                if r.is_ok() {
                    self.known(digest);
                }
                if *lease {
                    if let Some(l) = keys::lease(&d) {
                        let _ = self.seen(self.client.delete(up, &l).await);
                    }
                }
                r
            }
            Job::Manifest { digest, file } => {
                let d = Digest::parse(digest).map_err(|_| S3Error::bad("upload", "digest"))?;
                let key = keys::manifest(&d).ok_or_else(|| S3Error::bad("upload", "digest"))?;
                self.seen(self.client.put_small(up, &key, file, false).await)
                    .map(|_| ())
            }
            Job::Tag { name, text } => self
                .seen(
                    self.client
                        .put_small(up, &keys::tag(name), text.as_bytes(), false)
                        .await,
                )
                .map(|_| ()),
            Job::Link { key, body } => self
                .seen(self.client.put_small(up, key, body.as_bytes(), false).await)
                .map(|_| ()),
            Job::Used { digest } => {
                let d = Digest::parse(digest).map_err(|_| S3Error::bad("used", "digest"))?;
                let key = keys::used(&d).ok_or_else(|| S3Error::bad("used", "digest"))?;
                self.seen(self.client.put_small(up, &key, b"", false).await)
                    .map(|_| ())
            }
            Job::Unlease { digest } => {
                let d = Digest::parse(digest).map_err(|_| S3Error::bad("unlease", "digest"))?;
                let key = keys::lease(&d).ok_or_else(|| S3Error::bad("unlease", "digest"))?;
                self.seen(self.client.delete(up, &key).await)
            }
            Job::Delete { key } => self.seen(self.client.delete(up, key).await),
        }
    }

    /// Uploads a verified local file, unless the bucket has it already
    /// (another node's upload, or an earlier one of this node's).
    async fn upload_blob(
        &self,
        up: &Upstreams,
        key: &str,
        path: &std::path::Path,
        len: u64,
    ) -> Result<(), S3Error> {
        if let Ok(Some(info)) = self.seen(self.client.head(up, key).await) {
            if info.len == len {
                return Ok(());
            }
        }
        match self.seen(self.client.put_file(up, key, path, len).await) {
            Ok(()) => {
                self.health.add(TierCount::Uploads, 1);
                self.health.add(TierCount::UploadedBytes, len);
                Ok(())
            }
            // Evicted from the disk before its turn: a later hit brings it.
            Err(S3Error::Local(_)) => Ok(()),
            Err(e) => {
                self.health.add(TierCount::UploadFailures, 1);
                Err(e)
            }
        }
    }

    /// A tag record confirmed by the upstream (revalidated or fetched):
    /// other nodes take it rather than revalidate it themselves.
    pub fn tag_confirmed(&self, name: &str, rec: &TagRecord) {
        self.enqueue(Job::Tag {
            name: name.to_string(),
            text: rec.encode(name),
        });
    }

    /// A manifest verified into this node's store.
    pub fn stored_manifest(&self, digest: &Digest<'_>, file: Vec<u8>) {
        self.enqueue(Job::Manifest {
            digest: digest.as_str().to_string(),
            file,
        });
    }

    /// An access note for `registry`/`repo` and `digest` (see
    /// `Access::shared_note`).
    pub fn note_link(
        &self,
        registry: &str,
        repo: &str,
        digest: &Digest<'_>,
        open: bool,
        secs: u64,
    ) {
        if let Some(key) = keys::link(registry, repo, digest) {
            self.enqueue(Job::Link {
                key,
                body: format!("{} {secs}", u8::from(open)),
            });
        }
    }

    /// The download a lease covered failed: give the lease back, so that
    /// waiting nodes fetch it themselves now rather than at `lease_wait`.
    pub fn unlease(&self, digest: &Digest<'_>) {
        self.enqueue(Job::Unlease {
            digest: digest.as_str().to_string(),
        });
    }
}

impl S3Error {
    fn bad(op: &'static str, why: &str) -> S3Error {
        S3Error::BadAnswer {
            op,
            why: why.to_string(),
        }
    }

    /// The store did not answer, or refuses every request (credentials):
    /// a queued write waits for it rather than being dropped.
    pub fn is_unavailable(&self) -> bool {
        match self {
            S3Error::Unreachable { .. } => true,
            S3Error::Status { status, .. } => matches!(status, 401 | 403 | 500..),
            S3Error::BadAnswer { .. } | S3Error::Local(_) => false,
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
