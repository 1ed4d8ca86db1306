//! The content cache: every blob downloaded once, then served from local
//! disk to every client the upstream would serve it to.
//!
//! - `store`: the content-addressed directory (temporary file, then rename
//!   after the digest matched);
//! - `inflight`: downloads in progress, shared by all workers, so that
//!   concurrent misses of one digest make one upstream request;
//! - `tee`: the body tap that writes a relayed body to its temporary file;
//! - `serve`: hits and followers, from disk to the client;
//! - `access`: who may be served what (links, anonymous pullability,
//!   credentials the upstream accepted).
//!
//! `lookup` answers, for one digest: [`Lookup::Hit`] (on disk, complete and
//! verified), [`Lookup::Follow`] (being downloaded by another request), or
//! [`Lookup::Lead`] (nobody has it: this request fetches and stores it).
//!
//! Stored today: blobs. Manifests and tags, eviction and the operator
//! commands come next (see the README's "Cache" section for what is done).

pub mod access;
pub mod admin;
pub mod evict;
pub mod inflight;
pub mod manifests;
pub mod s3;
pub mod serve;
pub mod store;
pub mod tee;
pub mod warm;

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::CacheConfig;
use crate::wire::names::Digest;
use access::Access;
use inflight::{Fill, InFlight, Joined};
use manifests::Tags;
use store::Store;
use tee::Tee;

/// A manifest from the store.
#[derive(Debug)]
pub struct StoredManifest {
    pub media_type: String,
    pub bytes: Vec<u8>,
}

/// Manifests kept in each worker's memory: measured, a manifest hit read
/// from disk per request (open, read, close through io_uring) ran at ~1.1x
/// direct over TLS against a target of 1.5x. Per thread, so no lock.
const HOT_MAX_ENTRIES: usize = 512;
const HOT_MAX_BYTES: usize = 16 << 20;

thread_local! {
    static HOT_MANIFESTS: RefCell<HashMap<String, Rc<StoredManifest>>> = RefCell::new(HashMap::new());
}

/// The cache, shared by all workers (built once in `server`).
pub struct Cache {
    pub store: Store,
    pub inflight: InFlight,
    /// Shared with `Worker::access` (which exists without a cache too).
    pub access: Arc<Access>,
    pub tags: Tags,
    /// The shared tier (`[cache.s3]`), if configured.
    pub tier: Option<s3::tier::Tier>,
    /// The settings a reload may change: atomics, read once per use (a
    /// relaxed load), so that no worker needs a new `Cache` for them.
    policy: Policy,
}

/// See [`Cache::set_policy`].
struct Policy {
    tag_ttl_ms: AtomicU64,
    max_size: AtomicU64,
    serve_stale: AtomicBool,
}

impl Policy {
    fn of(cfg: &CacheConfig) -> Policy {
        let p = Policy {
            tag_ttl_ms: AtomicU64::new(0),
            max_size: AtomicU64::new(0),
            serve_stale: AtomicBool::new(false),
        };
        p.set(cfg);
        p
    }

    fn set(&self, cfg: &CacheConfig) {
        let ttl = u64::try_from(cfg.tag_ttl.as_millis()).unwrap_or(u64::MAX);
        self.tag_ttl_ms.store(ttl, Ordering::Relaxed);
        self.max_size.store(cfg.max_size, Ordering::Relaxed);
        self.serve_stale.store(cfg.serve_stale, Ordering::Relaxed);
    }
}

/// What the cache has for a digest.
pub enum Lookup {
    /// Complete and verified on disk; `stale_use`: its recency is older than
    /// [`evict::TOUCH_AFTER`] (refresh it after serving).
    Hit {
        path: PathBuf,
        len: u64,
        stale_use: bool,
    },
    /// Being downloaded by another request.
    Follow(Arc<Fill>),
    /// Nobody has it.
    Lead,
}

/// A download this request leads: its fill (for followers) and the tee
/// that writes it, once the upstream's answer is known.
pub struct Leading {
    pub key: String,
    pub fill: Arc<Fill>,
    pub tmp: PathBuf,
    pub dest: PathBuf,
    /// This node holds the shared tier's lease on the download (given back
    /// after the upload, or at once if the download fails).
    pub lease: bool,
}

impl Cache {
    /// Opens the cache in `cfg.dir`.
    pub fn open(cfg: &CacheConfig) -> io::Result<Cache> {
        Ok(Cache {
            store: Store::open(&cfg.dir)?,
            inflight: InFlight::default(),
            access: Arc::new(Access::open(&cfg.dir)?),
            tags: Tags::open(&cfg.dir)?,
            tier: None,
            policy: Policy::of(cfg),
        })
    }

    /// How long a tag record is trusted before a HEAD revalidates it.
    pub fn tag_ttl(&self) -> Duration {
        Duration::from_millis(self.policy.tag_ttl_ms.load(Ordering::Relaxed))
    }

    /// Whether a tag's last known manifest is served when the upstream is
    /// down.
    pub fn serve_stale(&self) -> bool {
        self.policy.serve_stale.load(Ordering::Relaxed)
    }

    /// The store is kept under this many bytes (read by the eviction
    /// thread before each walk).
    pub fn max_size(&self) -> u64 {
        self.policy.max_size.load(Ordering::Relaxed)
    }

    /// Applies a reloaded config's `max_size`, `tag_ttl` and `serve_stale`
    /// (its `dir` needs a restart: see `server::lifecycle`).
    pub fn set_policy(&self, cfg: &CacheConfig) {
        self.policy.set(cfg);
    }

    /// Where `digest` stands. The store is looked at with one `statx`
    /// through io_uring (the file system is the index).
    pub async fn lookup(&self, digest: &Digest<'_>) -> Lookup {
        let Some(path) = self.store.path_of(digest) else {
            return Lookup::Lead;
        };
        if let Joined::Follow(f) = self.inflight.join(digest.as_str()) {
            return Lookup::Follow(f);
        }
        match monoio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Lookup::Hit {
                len: m.len(),
                stale_use: m
                    .modified()
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_none_or(|age| age > evict::TOUCH_AFTER),
                path,
            },
            _ => Lookup::Lead,
        }
    }

    /// Registers this request as the download of `digest`, with a fresh
    /// temporary file. `Err(Some(fill))`: another request registered first
    /// (follow it); `Err(None)`: the store cannot take it (unwritable):
    /// relay without storing.
    pub fn lead(&self, digest: &Digest<'_>) -> Result<Leading, Option<Arc<Fill>>> {
        let dest = self.store.path_of(digest).ok_or(None)?;
        let tmp = self.store.tmp_path();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| {
                crate::event!(
                    crate::ops::log::Level::Warn,
                    None,
                    "cache: cannot create {}: {e}",
                    tmp.display()
                );
                None
            })?;
        let fill = Arc::new(Fill::new(file));
        let key = digest.as_str().to_string();
        if let Err(other) = self.inflight.lead(&key, fill) {
            let _ = std::fs::remove_file(&tmp);
            return Err(Some(other));
        }
        let fill = match self.inflight.join(&key) {
            Joined::Follow(f) => f,
            Joined::Lead => unreachable!("registered above"),
        };
        Ok(Leading {
            key,
            fill,
            tmp,
            dest,
            lease: false,
        })
    }
}

impl Cache {
    /// A stored manifest: its media type and bytes. Hot ones come from
    /// this worker's memory (manifests named by digest never change), the
    /// rest from disk through io_uring.
    pub async fn load_manifest(&self, digest: &Digest<'_>) -> Option<Rc<StoredManifest>> {
        if let Some(m) = HOT_MANIFESTS.with(|h| h.borrow().get(digest.as_str()).cloned()) {
            return Some(m);
        }
        let path = manifests::manifest_path(self.store.root(), digest)?;
        let file = monoio::fs::read(&path).await.ok()?;
        let (media_type, bytes) = manifests::decode_manifest(&file)?;
        // Checked again as it enters memory (cheap for a manifest): a file
        // damaged on disk is dropped, never served.
        let mut v = crate::wire::digest::Verifier::new(digest)?;
        v.update(bytes);
        if !v.matches() {
            let _ = std::fs::remove_file(&path);
            return None;
        }
        let m = Rc::new(StoredManifest {
            media_type: media_type.to_string(),
            bytes: bytes.to_vec(),
        });
        HOT_MANIFESTS.with(|h| {
            let mut h = h.borrow_mut();
            let held: usize = h.values().map(|m| m.bytes.len()).sum();
            if h.len() >= HOT_MAX_ENTRIES || held + m.bytes.len() > HOT_MAX_BYTES {
                h.clear(); // simple and bounded: hot ones come back at once
            }
            h.insert(digest.as_str().to_string(), m.clone());
        });
        Some(m)
    }

    /// Stores a manifest whose bytes were checked against `digest` (checked
    /// again here: nothing unverified is ever stored). False if not stored.
    /// With `share`, it is queued for the shared tier too (not when it came
    /// from there).
    pub fn store_manifest(
        &self,
        digest: &Digest<'_>,
        media_type: &str,
        bytes: &[u8],
        share: bool,
    ) -> bool {
        let Some(mut v) = crate::wire::digest::Verifier::new(digest) else {
            return false;
        };
        v.update(bytes);
        if !v.matches() || bytes.len() > manifests::MAX_MANIFEST || media_type.contains('\n') {
            return false;
        }
        let Some(dest) = manifests::manifest_path(self.store.root(), digest) else {
            return false;
        };
        let tmp = self.store.tmp_path();
        let mut file = Vec::with_capacity(media_type.len() + 1 + bytes.len());
        file.extend_from_slice(media_type.as_bytes());
        file.push(b'\n');
        file.extend_from_slice(bytes);
        let ok = std::fs::write(&tmp, &file).is_ok()
            && dest
                .parent()
                .is_none_or(|d| std::fs::create_dir_all(d).is_ok())
            && std::fs::rename(&tmp, &dest).is_ok();
        if !ok {
            let _ = std::fs::remove_file(&tmp);
        } else if let Some(tier) = self.tier.as_ref().filter(|_| share) {
            tier.stored_manifest(digest, file);
        }
        ok
    }
}

impl Leading {
    /// The upstream will send `len` bytes: a tee to store them.
    pub fn start(&self, len: u64) -> io::Result<Tee> {
        let tee = Tee::new(self.fill.clone(), self.tmp.clone())?;
        // Followers start sending once the length is out: only now that a
        // tee will store the body.
        self.fill.set_total(len);
        Ok(tee)
    }

    /// No body to store after all (the upstream refused, or the answer was
    /// not a plain 200 with a length): followers make their own requests.
    pub fn abandon(self, cache: &Cache) {
        if let (true, Some(tier), Ok(d)) = (self.lease, &cache.tier, Digest::parse(&self.key)) {
            tier.unlease(&d);
        }
        self.fill.abandon();
        let _ = std::fs::remove_file(&self.tmp);
        cache.inflight.end(&self.key);
    }
}

/// A single byte range a client asked for (`bytes=N-`, `bytes=N-M`), as
/// `(offset, length)` within an object of `len` bytes. `None`: no range,
/// several, or one this object cannot satisfy (the caller relays those).
pub fn parse_range(value: &[u8], len: u64) -> Option<(u64, u64)> {
    let v = std::str::from_utf8(value).ok()?.trim();
    let spec = v.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let start: u64 = a.trim().parse().ok()?;
    let end = match b.trim() {
        "" => len.checked_sub(1)?,
        e => e.parse::<u64>().ok()?.min(len.checked_sub(1)?),
    };
    (start <= end && start < len).then(|| (start, end - start + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_ranges_are_understood_and_odd_ones_left_to_the_upstream() {
        assert_eq!(parse_range(b"bytes=0-", 10), Some((0, 10)));
        assert_eq!(parse_range(b"bytes=4-", 10), Some((4, 6)));
        assert_eq!(parse_range(b"bytes=2-5", 10), Some((2, 4)));
        assert_eq!(parse_range(b"bytes=2-50", 10), Some((2, 8)));
        assert_eq!(parse_range(b"bytes=10-", 10), None);
        assert_eq!(parse_range(b"bytes=5-2", 10), None);
        assert_eq!(parse_range(b"bytes=0-1,4-5", 10), None);
        assert_eq!(parse_range(b"bytes=-5", 10), None);
        assert_eq!(parse_range(b"items=0-1", 10), None);
        assert_eq!(parse_range(b"bytes=0-", 0), None);
    }
}
