//! Manifests in the cache: by digest (immutable: kept for good, like
//! blobs), and tag -> digest records (with media type and size) trusted for
//! `tag_ttl`, then revalidated with one upstream HEAD.
//!
//! A stored manifest is one file, `manifests/<alg>/<hh>/<hex>`: its media
//! type, a newline, then the exact bytes (so its digest can be re-checked by
//! `ocirelay cache verify`). Manifests are small (clients refuse more than
//! 4 MiB): a hit reads the file whole. Tag records live in memory and, for a
//! restart (and serving while the upstream is down), in `tags/<key>`, one
//! small file each, written to a temporary name and renamed.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::wire::names::Digest;

/// Largest manifest stored (containerd's own limit).
pub const MAX_MANIFEST: usize = 4 << 20;

/// What a tag pointed at, when it was last confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRecord {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    /// When the upstream last confirmed it (wall clock: records outlive the
    /// process).
    pub checked: SystemTime,
}

impl TagRecord {
    /// How long ago it was confirmed. A time in the future (the clock
    /// stepped back) counts as expired, so that it is revalidated.
    pub fn age(&self) -> Duration {
        self.checked.elapsed().unwrap_or(Duration::MAX)
    }

    /// The record's file: digest, media type, size, unix seconds, name; one
    /// a line.
    pub fn encode(&self, name: &str) -> String {
        let secs = self
            .checked
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!(
            "{}\n{}\n{}\n{secs}\n{name}\n",
            self.digest, self.media_type, self.size
        )
    }

    /// A record file read back at start, and the name it is for; `None` for
    /// a torn or foreign file.
    pub fn decode(text: &str) -> Option<(TagRecord, String)> {
        let mut l = text.lines();
        let digest = l.next()?.to_string();
        Digest::parse(&digest).ok()?;
        let media_type = l.next()?.to_string();
        let size = l.next()?.parse().ok()?;
        let secs: u64 = l.next()?.parse().ok()?;
        let name = l.next()?.to_string();
        Some((
            TagRecord {
                digest,
                media_type,
                size,
                checked: UNIX_EPOCH.checked_add(Duration::from_secs(secs))?,
            },
            name,
        ))
    }
}

/// Tag records, shared by all workers (a small mutex, held for a map
/// operation only; the disk write happens outside it).
pub struct Tags {
    dir: PathBuf,
    keys: RandomState,
    map: Mutex<HashMap<u64, TagRecord>>,
    /// Tags being revalidated right now: a concurrent request serves the
    /// record it has instead of sending a second HEAD.
    revalidating: Mutex<HashMap<u64, ()>>,
    /// Manifests (by tag or by digest) some request is fetching upstream
    /// right now: a concurrent request for the same waits for it and is
    /// answered from what it stores, instead of sending a second GET (which
    /// Docker Hub would count as a second pull).
    fetching: Mutex<HashMap<u64, ()>>,
    /// Makes each record write's temporary name unique.
    next_tmp: std::sync::atomic::AtomicU64,
}

impl Tags {
    /// Opens `root/tags`, loading the records an earlier process wrote.
    pub fn open(root: &Path) -> io::Result<Tags> {
        let dir = root.join("tags");
        std::fs::create_dir_all(&dir)?;
        let t = Tags {
            dir,
            keys: RandomState::new(),
            map: Mutex::new(HashMap::new()),
            revalidating: Mutex::new(HashMap::new()),
            fetching: Mutex::new(HashMap::new()),
            next_tmp: std::sync::atomic::AtomicU64::new(0),
        };
        let mut map = HashMap::new();
        for e in std::fs::read_dir(&t.dir)?.flatten() {
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            match TagRecord::decode(&text) {
                Some((rec, name)) => {
                    map.insert(t.key(&name), rec);
                }
                // A torn or foreign file: not a record.
                None => {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        *t.map.lock().unwrap_or_else(|p| p.into_inner()) = map;
        Ok(t)
    }

    fn key(&self, name: &str) -> u64 {
        self.keys.hash_one(name)
    }

    /// `registry/repository:tag`, the record's name.
    pub fn name(registry: &str, repo: &str, tag: &str) -> String {
        format!("{registry}/{repo}:{tag}")
    }

    pub fn get(&self, name: &str) -> Option<TagRecord> {
        let k = self.key(name);
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&k)
            .cloned()
    }

    /// Records (or confirms) what `name` points at, in memory and on disk.
    pub fn put(&self, name: &str, rec: TagRecord) {
        let k = self.key(name);
        let text = rec.encode(name);
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(k, rec);
        // The file name is a digest of the record's name: any tag, any
        // characters, one flat directory.
        let file = self
            .dir
            .join(crate::wire::digest::sha256_hex(name.as_bytes()));
        let n = self
            .next_tmp
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = file.with_extension(format!("{}.{n}.tmp", std::process::id()));
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, &file);
        }
    }

    /// Claims the revalidation of `name`; false when another request holds
    /// it (that request's HEAD is the one).
    pub fn begin_revalidation(&self, name: &str) -> bool {
        let k = self.key(name);
        let mut r = self.revalidating.lock().unwrap_or_else(|p| p.into_inner());
        r.insert(k, ()).is_none()
    }

    pub fn end_revalidation(&self, name: &str) {
        let k = self.key(name);
        self.revalidating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&k);
    }

    /// Claims the upstream fetch of the manifest `name` (a tag's record
    /// name, or a digest): true when this request is the one to fetch it,
    /// until [`Tags::end_fetch`].
    pub fn begin_fetch(&self, name: &str) -> bool {
        let k = self.key(name);
        let mut f = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
        f.insert(k, ()).is_none()
    }

    /// Whether some request is fetching `name` upstream right now.
    pub fn fetching(&self, name: &str) -> bool {
        let k = self.key(name);
        let f = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
        f.contains_key(&k)
    }

    pub fn end_fetch(&self, name: &str) {
        let k = self.key(name);
        self.fetching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&k);
    }
}

/// Where a manifest named `digest` is stored under `root`.
pub fn manifest_path(root: &Path, digest: &Digest<'_>) -> Option<PathBuf> {
    super::store::object_path(root, "manifests", digest)
}

/// A stored manifest: its media type and bytes.
pub fn decode_manifest(file: &[u8]) -> Option<(&str, &[u8])> {
    let nl = file.iter().position(|&b| b == b'\n')?;
    let media_type = std::str::from_utf8(&file[..nl]).ok()?;
    Some((media_type, &file[nl + 1..]))
}

/// Whether a client's `Accept` allows `media_type` (no `Accept`: anything,
/// as registries answer then).
pub fn accepts<'a>(mut accept: impl Iterator<Item = &'a [u8]>, media_type: &str) -> bool {
    let mut any_header = false;
    let ok = accept.any(|v| {
        any_header = true;
        v.split(|&b| b == b',').any(|item| {
            let t = item
                .split(|&b| b == b';')
                .next()
                .unwrap_or(b"")
                .trim_ascii();
            t == b"*/*" || t.eq_ignore_ascii_case(media_type.as_bytes())
        })
    });
    ok || !any_header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_restart_and_torn_files_do_not_count() {
        let root = std::env::temp_dir().join(format!("ocirelay-tags-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let rec = TagRecord {
            digest: "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
                .into(),
            media_type: "application/vnd.oci.image.index.v1+json".into(),
            size: 42,
            checked: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        };
        let name = Tags::name("docker.io", "library/alpine", "latest");
        {
            let t = Tags::open(&root).unwrap();
            t.put(&name, rec.clone());
            std::fs::write(root.join("tags/torn"), "sha256:zz\n").unwrap();
        }
        let t = Tags::open(&root).unwrap();
        assert_eq!(t.get(&name), Some(rec));
        assert!(!root.join("tags/torn").exists());
        assert!(t.begin_revalidation(&name));
        assert!(!t.begin_revalidation(&name));
        t.end_revalidation(&name);
        assert!(t.begin_revalidation(&name));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn accept_lists_are_read_as_clients_send_them() {
        let oci = "application/vnd.oci.image.index.v1+json";
        let one = [&b"application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json; q=0.5"[..]];
        assert!(accepts(one.into_iter(), oci));
        let lines = [
            &b"application/vnd.docker.distribution.manifest.v2+json"[..],
            &b"application/vnd.docker.distribution.manifest.list.v2+json"[..],
        ];
        assert!(!accepts(lines.into_iter(), oci));
        assert!(accepts([&b"*/*"[..]].into_iter(), oci));
        assert!(accepts(std::iter::empty(), oci));
    }
}
