//! The image store: repositories, tags, manifests and blobs, all in memory.

use crate::signing::hex;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (multi-arch).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index (multi-arch).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzip layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Blob bytes, shared without copying.
pub type Blob = Arc<[u8]>;

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
    )
}

/// Whether `s` looks like `sha256:<64 lowercase hex>`.
pub fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// `size` bytes of deterministic pseudo-random content (splitmix64 stream from `seed`),
/// built in place in one allocation.
pub fn random_bytes(size: usize, seed: u64) -> Blob {
    let mut out: Arc<[std::mem::MaybeUninit<u8>]> = Arc::new_uninit_slice(size);
    let slots = Arc::get_mut(&mut out).expect("fresh Arc is unique");
    let mut state = seed ^ (size as u64).rotate_left(32) ^ 0x6a09_e667_f3bc_c908;
    let words = size / 8;
    let base = slots.as_mut_ptr().cast::<u8>();
    for i in 0..words {
        let word = splitmix64(&mut state);
        // SAFETY: `i * 8 + 8 <= size`, and unaligned writes of plain bytes are fine.
        unsafe { base.add(i * 8).cast::<u64>().write_unaligned(word.to_le()) };
    }
    let tail = splitmix64(&mut state).to_le_bytes();
    for (slot, byte) in slots[words * 8..].iter_mut().zip(tail) {
        slot.write(byte);
    }
    // SAFETY: every byte was written above (whole words, then the tail).
    unsafe { out.assume_init() }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A manifest as served: media type and exact bytes.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// The `Content-Type` it is served with.
    pub media_type: String,
    /// The exact bytes; their sha256 is the manifest digest.
    pub bytes: Arc<[u8]>,
}

/// One repository.
#[derive(Clone, Debug, Default)]
struct Repo {
    private: bool,
    tags: BTreeMap<String, String>,
    manifests: HashSet<String>,
    blobs: HashSet<String>,
}

#[derive(Default)]
struct Store {
    repos: HashMap<String, Repo>,
    manifests: HashMap<String, Manifest>,
    blobs: HashMap<String, Blob>,
}

/// The content every host serves from. Obtain it with [`crate::HubDouble::content`];
/// every method may be called while the double runs.
#[derive(Default)]
pub struct Content {
    store: RwLock<Store>,
    random: Mutex<HashMap<(usize, u64), String>>,
}

impl Content {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Store> {
        self.store.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Store> {
        self.store.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates `repo` if needed and sets whether it is private (pullable only by a
    /// configured user authenticating to the token host).
    pub fn set_private(&self, repo: &str, private: bool) {
        self.write()
            .repos
            .entry(repo.to_string())
            .or_default()
            .private = private;
    }

    /// Creates an empty public repository (so it answers 404 MANIFEST_UNKNOWN, not NAME_UNKNOWN).
    pub fn create_repo(&self, repo: &str) {
        self.write().repos.entry(repo.to_string()).or_default();
    }

    /// Whether `repo` exists.
    pub fn has_repo(&self, repo: &str) -> bool {
        self.read().repos.contains_key(repo)
    }

    /// Whether `repo` exists and is private.
    pub fn is_private(&self, repo: &str) -> bool {
        self.read().repos.get(repo).is_some_and(|r| r.private)
    }

    /// Stores `data` as a blob of `repo` (creating the repo) and returns its digest.
    pub fn add_blob(&self, repo: &str, data: impl Into<Blob>) -> String {
        let data = data.into();
        let digest = sha256_digest(&data);
        let mut store = self.write();
        store.blobs.entry(digest.clone()).or_insert(data);
        store
            .repos
            .entry(repo.to_string())
            .or_default()
            .blobs
            .insert(digest.clone());
        digest
    }

    /// Stores `size` bytes of [`random_bytes`]`(size, seed)` as a blob of `repo` and returns
    /// its digest. The same `(size, seed)` is generated only once per double (and only one
    /// copy is held), so asking again for another repo is cheap.
    pub fn add_random_blob(&self, repo: &str, size: usize, seed: u64) -> String {
        let mut cache = self.random.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(digest) = cache.get(&(size, seed)).cloned() {
            drop(cache);
            self.link_blob(repo, &digest);
            return digest;
        }
        let digest = self.add_blob(repo, random_bytes(size, seed));
        cache.insert((size, seed), digest.clone());
        digest
    }

    /// Makes an already stored blob reachable through `repo` too (a cross-repo mount).
    pub fn link_blob(&self, repo: &str, digest: &str) -> bool {
        let mut store = self.write();
        if !store.blobs.contains_key(digest) {
            return false;
        }
        store
            .repos
            .entry(repo.to_string())
            .or_default()
            .blobs
            .insert(digest.to_string());
        true
    }

    /// Makes a blob unreachable through `repo` (the bytes stay for other repos).
    pub fn unlink_blob(&self, repo: &str, digest: &str) {
        if let Some(r) = self.write().repos.get_mut(repo) {
            r.blobs.remove(digest);
        }
    }

    /// Drops a blob from every repository and from the store (and from the
    /// generated ones), so that a long run adding new blobs (the soak's
    /// cache misses) holds only those still in use.
    pub fn forget_blob(&self, digest: &str) {
        self.random
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, d| d != digest);
        let mut store = self.write();
        store.blobs.remove(digest);
        for r in store.repos.values_mut() {
            r.blobs.remove(digest);
        }
    }

    /// Stores a manifest in `repo` (creating the repo), optionally tagging it, and
    /// returns its digest. Blobs it references must be added separately.
    pub fn add_manifest(
        &self,
        repo: &str,
        tag: Option<&str>,
        media_type: &str,
        bytes: Vec<u8>,
    ) -> String {
        let digest = sha256_digest(&bytes);
        let mut store = self.write();
        store.manifests.entry(digest.clone()).or_insert(Manifest {
            media_type: media_type.to_string(),
            bytes: bytes.into(),
        });
        let r = store.repos.entry(repo.to_string()).or_default();
        r.manifests.insert(digest.clone());
        if let Some(tag) = tag {
            r.tags.insert(tag.to_string(), digest.clone());
        }
        digest
    }

    /// Points `tag` of `repo` at a manifest already in that repo; false if it is not there.
    pub fn tag(&self, repo: &str, tag: &str, digest: &str) -> bool {
        let mut store = self.write();
        match store.repos.get_mut(repo) {
            Some(r) if r.manifests.contains(digest) => {
                r.tags.insert(tag.to_string(), digest.to_string());
                true
            }
            _ => false,
        }
    }

    /// Removes a tag (the manifest stays reachable by digest).
    pub fn untag(&self, repo: &str, tag: &str) {
        if let Some(r) = self.write().repos.get_mut(repo) {
            r.tags.remove(tag);
        }
    }

    /// The digest `reference` (a tag or a digest) names in `repo`, if any.
    pub fn resolve(&self, repo: &str, reference: &str) -> Option<String> {
        let store = self.read();
        let r = store.repos.get(repo)?;
        if is_sha256_digest(reference) {
            r.manifests
                .contains(reference)
                .then(|| reference.to_string())
        } else {
            r.tags.get(reference).cloned()
        }
    }

    /// A manifest by digest.
    pub fn manifest(&self, digest: &str) -> Option<Manifest> {
        self.read().manifests.get(digest).cloned()
    }

    /// A blob by digest (whatever repo holds it).
    pub fn blob(&self, digest: &str) -> Option<Blob> {
        self.read().blobs.get(digest).cloned()
    }

    /// A blob by digest, only if `repo` holds it.
    pub fn repo_blob(&self, repo: &str, digest: &str) -> Option<Blob> {
        let store = self.read();
        if !store.repos.get(repo)?.blobs.contains(digest) {
            return None;
        }
        store.blobs.get(digest).cloned()
    }

    /// Sorted tags of `repo`, `None` if the repo does not exist.
    pub fn tags(&self, repo: &str) -> Option<Vec<String>> {
        self.read()
            .repos
            .get(repo)
            .map(|r| r.tags.keys().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_is_deterministic_and_cached() {
        let t = std::time::Instant::now();
        let big = random_bytes(64 << 20, 1);
        let gen = t.elapsed();
        let d = sha256_digest(&big);
        eprintln!(
            "64 MiB: generate {gen:?}, sha256 {:?} ({d})",
            t.elapsed() - gen
        );
        let a = random_bytes(1001, 7);
        assert_eq!(a.len(), 1001);
        assert_eq!(a, random_bytes(1001, 7));
        assert_ne!(a, random_bytes(1001, 8));
        let c = Content::default();
        let d1 = c.add_random_blob("x/a", 4096, 1);
        let d2 = c.add_random_blob("x/b", 4096, 1);
        assert_eq!(d1, d2);
        assert!(c.repo_blob("x/b", &d1).is_some());
        assert!(c.repo_blob("x/c", &d1).is_none());
        assert!(is_sha256_digest(&d1));
        assert_eq!(sha256_digest(&c.blob(&d1).unwrap()), d1);
    }
}
