//! The cache's tee: a body tap that writes the bytes of a body being relayed
//! to the object's temporary file, so that a miss downloads once and stores
//! while it streams. `data` stages the bytes (the TLS-to-TLS relay hands
//! them over in place, before they are re-encrypted); `flush` writes them
//! with io_uring while the relay waits on the network anyway. A write
//! failure (disk full, unwritable directory) turns the tee off: the client's
//! pull goes on as a plain relay, and nothing half-written stays.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use super::inflight::{Fill, InFlight};
use crate::ops::log::Level;
use crate::relay::tap::{BodyTap, TapRefusal};

/// A body on its way into the store.
pub struct Tee {
    fill: Arc<Fill>,
    file: monoio::fs::File,
    tmp: PathBuf,
    staged: Vec<u8>,
    /// Bytes written to the file.
    pos: u64,
    failed: bool,
}

impl Tee {
    /// A tee into `fill`'s temporary file at `tmp`.
    pub fn new(fill: Arc<Fill>, tmp: PathBuf) -> io::Result<Tee> {
        let file = monoio::fs::File::from_std(fill.file.try_clone()?)?;
        Ok(Tee {
            fill,
            file,
            tmp,
            staged: Vec::new(),
            pos: 0,
            failed: false,
        })
    }

    fn fail(&mut self, why: &str) {
        if !self.failed {
            self.failed = true;
            self.staged = Vec::new();
            // Followers cut their clients now rather than wait for the end.
            self.fill.finish(false);
            crate::event!(
                Level::Warn,
                None,
                "cache: not storing {}: {why}",
                self.tmp.display()
            );
        }
    }

    /// Bytes written to the file so far; `None` once the tee has failed.
    pub fn position(&self) -> Option<u64> {
        (!self.failed).then_some(self.pos)
    }

    /// Ends the download: with `complete` (the whole body arrived and every
    /// tap accepted it), the temporary file is synced and renamed to
    /// `dest`; otherwise it is removed. Followers are released either way.
    pub async fn finish(
        mut self,
        complete: bool,
        dest: &std::path::Path,
        inflight: &InFlight,
        key: &str,
    ) -> bool {
        if complete {
            self.flush().await;
        }
        let stored = complete && !self.failed && self.pos == self.fill.total();
        let stored =
            stored && self.file.sync_data().await.is_ok() && commit(&self.tmp, dest).is_ok();
        if !stored {
            let _ = std::fs::remove_file(&self.tmp);
        }
        self.fill.finish(stored);
        inflight.end(key);
        stored
    }
}

/// Renames a verified temporary file into place (creating its directory).
fn commit(tmp: &std::path::Path, dest: &std::path::Path) -> io::Result<()> {
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::rename(tmp, dest)
}

impl BodyTap for Tee {
    fn data(&mut self, bytes: &[u8]) {
        if !self.failed {
            self.staged.extend_from_slice(bytes);
        }
    }

    fn end(&mut self) -> Result<(), TapRefusal> {
        // The tee does not judge a body; the digest tap beside it does.
        Ok(())
    }

    async fn flush(&mut self) {
        if self.failed || self.staged.is_empty() {
            return;
        }
        let buf = std::mem::take(&mut self.staged);
        let n = buf.len() as u64;
        let (res, mut back) = self.file.write_all_at(buf, self.pos).await;
        match res {
            Ok(()) => {
                self.pos += n;
                self.fill.add_written(n);
                back.clear();
                self.staged = back;
            }
            Err(e) => self.fail(&e.to_string()),
        }
    }
}
