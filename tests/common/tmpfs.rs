//! A small tmpfs for faults of the cache's file system: too small for what
//! is written, or filled up. Mounting needs root, as the test command has
//! in CI.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::relay::tempdir;

/// A tmpfs of `size` (`mount -o size=`), unmounted on drop.
pub struct Tmpfs(tempdir::Dir);

impl Tmpfs {
    pub fn mount(size: &str) -> Tmpfs {
        let d = tempdir::Dir::new("tmpfs");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(d.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "mounting a tmpfs failed: this test needs root (the test command runs as root in CI)"
        );
        Tmpfs(d)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// Fills it up (a file of zeros, written until the file system says
    /// it is full), so that it takes no more writes; returns the file, whose
    /// removal frees the space. (Not a read-only remount: the kernel refuses
    /// one while a process has a file open for writing on it.)
    pub fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 << 10];
        let mut left: u64 = 1 << 30; // bounded: a tmpfs of a few MiB fills long before
        while left > 0 {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => left -= n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        assert!(left > 0, "{} never filled up", self.path().display());
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.path()).status();
    }
}
