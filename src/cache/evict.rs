//! Keeping the store under `max_size`: a background thread (not a worker)
//! walks the store, and when it holds more than the cap, deletes the least
//! recently used objects until it is back under 90% of it.
//!
//! Recency is the file's modification time: written when the object was
//! stored, and refreshed by a hit when it is more than [`TOUCH_AFTER`] old
//! (so a hot object costs one `utimensat` an hour, not one per hit). That is
//! LRU at one-hour resolution, which is what a size cap needs (distribution
//! expires entries a fixed time after download however hot they are). An
//! object being read is never cut short: a reader holds it open, and an
//! unlinked file stays readable until closed.
//!
//! The same thread keeps the operator's numbers: the store's size and what
//! was evicted (for the metrics), whether the directory takes writes (for
//! `/readyz`), and the counters file of `ocirelay cache stats`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::Cache;
use crate::ops::health::CacheState;
use crate::ops::log::Level;
use crate::ops::metrics::{Metrics, Walk};

/// A hit refreshes an object's recency when it is older than this.
pub const TOUCH_AFTER: Duration = Duration::from_secs(3600);
/// How often the store is measured (a walk of the directory).
const EVERY: Duration = Duration::from_secs(30);
/// How often the process's counters are written for `ocirelay cache stats`
/// and the directory is probed for writes.
const STATS_EVERY: Duration = Duration::from_secs(2);

/// One object on disk.
struct Object {
    path: PathBuf,
    len: u64,
    used: SystemTime,
}

fn objects(root: &Path) -> Vec<Object> {
    let mut all = super::admin::files(&root.join("blobs"));
    all.extend(super::admin::files(&root.join("manifests")));
    all.into_iter()
        .map(|(path, m)| Object {
            path,
            len: m.len(),
            used: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        })
        .collect()
}

/// Deletes least recently used objects until the store holds at most 90% of
/// `max` (when it holds more than `max`).
pub fn evict_once(root: &Path, max: u64) -> Walk {
    evict_to(root, max, max / 10 * 9)
}

/// When the store holds more than `max`, deletes least recently used
/// objects until it holds at most `target`. What it found, and removed.
pub fn evict_to(root: &Path, max: u64, target: u64) -> Walk {
    let mut objs = objects(root);
    let total: u64 = objs.iter().map(|o| o.len).sum();
    let mut walk = Walk {
        objects: objs.len() as u64,
        bytes: total,
        ..Walk::default()
    };
    if total <= max {
        return walk;
    }
    objs.sort_by_key(|o| o.used);
    for o in objs {
        if walk.bytes <= target {
            break;
        }
        if std::fs::remove_file(&o.path).is_ok() {
            walk.bytes -= o.len;
            walk.objects -= 1;
            walk.evicted_bytes += o.len;
            walk.evicted_objects += 1;
        }
    }
    walk
}

/// Starts the eviction thread for `cache` (runs for the life of the process);
/// it also probes the directory for writes, measures the store and writes
/// the process's counters for `ocirelay cache stats`. The cap is read
/// before each walk (a reload may change it).
pub fn start(cache: Arc<Cache>, metrics: Arc<Metrics>) {
    let started = SystemTime::now();
    let spawned = std::thread::Builder::new()
        .name("ocirelay-evict".into())
        .spawn(move || {
            let mut last_walk: Option<std::time::Instant> = None;
            loop {
                probe(&cache, &metrics);
                let totals = metrics.cache_counts();
                super::admin::write_stats(cache.store.root(), &totals, started);
                if last_walk.is_none_or(|t| t.elapsed() >= EVERY) {
                    last_walk = Some(std::time::Instant::now());
                    let max = cache.max_size();
                    let stored_before = metrics.stored();
                    let walk = evict_once(cache.store.root(), max);
                    metrics.walked(walk, stored_before);
                    if walk.evicted_objects > 0 {
                        crate::event!(
                            Level::Info,
                            None,
                            "cache: evicted {} objects ({} bytes) to stay under {max} bytes",
                            walk.evicted_objects,
                            walk.evicted_bytes
                        );
                    }
                }
                std::thread::sleep(STATS_EVERY);
            }
        });
    if let Err(e) = spawned {
        crate::event!(Level::Warn, None, "cache: no eviction thread: {e}");
    }
}

/// Whether the store takes writes now, for `/readyz`; a change is logged.
fn probe(cache: &Cache, metrics: &Metrics) {
    let (now, why) = match cache.store.probe() {
        Ok(()) => (CacheState::Writable, None),
        Err(e) => (CacheState::Unwritable, Some(e)),
    };
    let before = metrics.health.set_cache(now);
    match why {
        Some(e) if before != now => crate::event!(
            Level::Error,
            None,
            "cache: {} does not take writes ({e}): not ready; relaying without storing",
            cache.store.root().display()
        ),
        None if before != now => crate::event!(
            Level::Info,
            None,
            "cache: {} takes writes again",
            cache.store.root().display()
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_go_first_down_to_ninety_percent() {
        let root = std::env::temp_dir().join(format!("ocirelay-evict-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("blobs/sha256/aa");
        std::fs::create_dir_all(&dir).unwrap();
        let now = SystemTime::now();
        for (i, age) in [(0u8, 400u64), (1, 300), (2, 200), (3, 100)] {
            let p = dir.join(format!("aa{i}"));
            std::fs::write(&p, vec![i; 1000]).unwrap();
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(now - Duration::from_secs(age)).unwrap();
        }
        // 4000 bytes held, cap 3500: down to at most 3150, oldest first.
        assert_eq!(
            evict_once(&root, 3500),
            Walk {
                objects: 3,
                bytes: 3000,
                evicted_objects: 1,
                evicted_bytes: 1000
            }
        );
        assert!(!dir.join("aa0").exists());
        assert!(dir.join("aa1").exists() && dir.join("aa3").exists());
        let again = evict_once(&root, 3500);
        assert_eq!((again.evicted_objects, again.objects), (0, 3));
        let _ = std::fs::remove_dir_all(&root);
    }
}
