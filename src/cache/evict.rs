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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::Cache;
use crate::ops::log::Level;

/// A hit refreshes an object's recency when it is older than this.
pub const TOUCH_AFTER: Duration = Duration::from_secs(3600);
/// How often the store is measured (a walk of the directory).
const EVERY: Duration = Duration::from_secs(30);
/// How often the process's counters are written for `ocirelay cache stats`.
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
/// `max` (when it holds more than `max`). Returns (objects, bytes) removed.
pub fn evict_once(root: &Path, max: u64) -> (usize, u64) {
    evict_to(root, max, max / 10 * 9)
}

/// When the store holds more than `max`, deletes least recently used
/// objects until it holds at most `target`.
pub fn evict_to(root: &Path, max: u64, target: u64) -> (usize, u64) {
    let mut objs = objects(root);
    let total: u64 = objs.iter().map(|o| o.len).sum();
    if total <= max {
        return (0, 0);
    }
    objs.sort_by_key(|o| o.used);
    let (mut n, mut freed, mut held) = (0, 0, total);
    for o in objs {
        if held <= target {
            break;
        }
        if std::fs::remove_file(&o.path).is_ok() {
            held -= o.len;
            freed += o.len;
            n += 1;
        }
    }
    (n, freed)
}

/// Starts the eviction thread for `cache` (runs for the life of the process);
/// it also writes the process's counters for `ocirelay cache stats`.
pub fn start(cache: Arc<Cache>, max: u64) {
    let started = SystemTime::now();
    let spawned = std::thread::Builder::new()
        .name("ocirelay-evict".into())
        .spawn(move || {
            let mut last_walk: Option<std::time::Instant> = None;
            loop {
                let totals = super::admin::Totals::sum(&cache.counters);
                super::admin::write_stats(cache.store.root(), &totals, started);
                if last_walk.is_none_or(|t| t.elapsed() >= EVERY) {
                    last_walk = Some(std::time::Instant::now());
                    let (n, bytes) = evict_once(cache.store.root(), max);
                    if n > 0 {
                        crate::event!(
                            Level::Info,
                            None,
                            "cache: evicted {n} objects ({bytes} bytes) to stay under {max} bytes"
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
        assert_eq!(evict_once(&root, 3500), (1, 1000));
        assert!(!dir.join("aa0").exists());
        assert!(dir.join("aa1").exists() && dir.join("aa3").exists());
        assert_eq!(evict_once(&root, 3500), (0, 0));
        let _ = std::fs::remove_dir_all(&root);
    }
}
