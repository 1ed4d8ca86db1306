//! The content-addressed store on local disk: one file per object, named by
//! its digest (`blobs/<algorithm>/<first two hex>/<hex>`). An object is
//! written to `tmp/` and renamed into place only after its digest matched
//! and its length is right, so a name in `blobs/` always holds exactly the
//! bytes it names. After a crash, whatever is left in `tmp/` is removed at
//! the next start.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::wire::names::Digest;

/// The store's directory layout.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    /// Makes temporary names unique within the process (with the pid for
    /// other processes on the same directory).
    next_tmp: AtomicU64,
}

impl Store {
    /// Opens (creating) the store at `root` and removes temporary files left
    /// by an earlier process (a crash or `kill -9` mid-download).
    pub fn open(root: &Path) -> io::Result<Store> {
        std::fs::create_dir_all(root.join("blobs"))?;
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&tmp)?;
        for e in std::fs::read_dir(&tmp)? {
            let e = e?;
            // Best effort: another ocirelay on the same directory may be
            // writing (its files carry its pid); only ours and orphans go.
            if let Some(pid) = tmp_owner(&e.file_name().to_string_lossy()) {
                if pid != std::process::id() && process_alive(pid) {
                    continue;
                }
            }
            let _ = std::fs::remove_file(e.path());
        }
        let store = Store {
            root: root.to_path_buf(),
            next_tmp: AtomicU64::new(0),
        };
        // Writable now, rather than found out at the first miss.
        store.probe()?;
        Ok(store)
    }

    /// Writes and removes a small file where downloads are written (`tmp/`):
    /// whether the store can take objects now. A page of bytes, not an
    /// empty file, so that a full file system fails it too.
    pub fn probe(&self) -> io::Result<()> {
        let probe = self
            .root
            .join("tmp")
            .join(format!("probe.{}", std::process::id()));
        std::fs::write(&probe, [0u8; 4096])?;
        std::fs::remove_file(&probe)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the object named `digest` lives once stored.
    pub fn path_of(&self, digest: &Digest<'_>) -> Option<PathBuf> {
        object_path(&self.root, "blobs", digest)
    }

    /// A fresh temporary file name.
    pub fn tmp_path(&self) -> PathBuf {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{}.{n}.part", std::process::id()))
    }
}

/// `<root>/<kind>/<alg>/<first two hex>/<hex>`: the file of the object
/// named `digest` (`kind`: `blobs` or `manifests`).
pub fn object_path(root: &Path, kind: &str, digest: &Digest<'_>) -> Option<PathBuf> {
    let hex = digest.encoded();
    let alg = digest.as_str().split(':').next()?;
    // Digests were validated (hex of the algorithm's length), so these are
    // plain file names; checked again because this builds a path.
    if hex.len() < 3 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    if !alg.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    Some(root.join(kind).join(alg).join(&hex[..2]).join(hex))
}

/// The pid a temporary file name starts with.
fn tmp_owner(name: &str) -> Option<u32> {
    name.split('.').next()?.parse().ok()
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_named_by_digest_and_leftovers_go_at_open() {
        let dir = std::env::temp_dir().join(format!("ocirelay-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        // A leftover of a dead process (pid 0 is never a user process).
        std::fs::write(dir.join("tmp/0.1.part"), b"half").unwrap();
        let s = Store::open(&dir).unwrap();
        assert!(!dir.join("tmp/0.1.part").exists());
        let d = Digest::parse(
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        )
        .unwrap();
        let p = s.path_of(&d).unwrap();
        assert!(p.ends_with(
            "blobs/sha256/2c/2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        ));
        assert_ne!(s.tmp_path(), s.tmp_path());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
