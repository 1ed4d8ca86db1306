//! Sealing bytes read straight into record slots: a cache hit reads a
//! stored file into the write buffer already laid out as whole records
//! (header room before each record's plaintext, tag room after) and seals
//! each where it lies, so a byte from disk is copied once by the kernel,
//! encrypted once, and sent; no copy into a separate record buffer as
//! `write` makes (see `docs/design.md`, "The content cache").

use std::io;
use std::ops::Range;

use super::error::TlsError;
use super::handshake::Side;
use super::record::MAX_PLAIN;
use super::stream::{TlsStream, MAX_WRITE};

impl<S: Side> TlsStream<S> {
    /// Lays out `n` bytes of plaintext (at most the stream's largest write)
    /// as whole records in `buf`: `plain` receives where each record's
    /// plaintext goes, in order; returns where the records lie (the
    /// ciphertext to send). `buf` grows as needed; what it held is
    /// overwritten.
    ///
    /// The run starts at `buf[0]`, so the socket's copy reads aligned
    /// memory; the plaintext slots are then 5 bytes (the record header) off
    /// a cache line. Aligning the slots instead (records of a 16 KiB
    /// stride, the run starting at byte 59) moved the same cost from the
    /// page-cache copy to the socket copy: measured, no gain.
    ///
    /// `None` when the records cannot be sealed in place now: a key update
    /// is owed or falls due within them (then the caller writes the bytes
    /// the ordinary way, which handles it).
    pub fn lay_out_records(
        &self,
        n: usize,
        buf: &mut Vec<u8>,
        plain: &mut Vec<Range<usize>>,
    ) -> Option<Range<usize>> {
        let n = n.min(MAX_WRITE);
        let before = self.tx.plain_offset();
        let after = self.tx.overhead() - before;
        let records = n.div_ceil(MAX_PLAIN) as u64;
        if self.broken.is_some()
            || self.inbound.key_update_owed
            || self.tx.seq().saturating_add(records) > self.rekey_after
        {
            return None;
        }
        plain.clear();
        let mut at = 0;
        let mut left = n;
        while left > 0 {
            let p = left.min(MAX_PLAIN);
            plain.push(at + before..at + before + p);
            at += before + p + after;
            left -= p;
        }
        // Grows once per buffer; a reused buffer keeps its length, so
        // nothing is zeroed per call.
        if buf.len() < at {
            buf.resize(at, 0);
        }
        Some(0..at)
    }

    /// Seals, in place, the records laid out by
    /// [`TlsStream::lay_out_records`] once their plaintext is in `buf`.
    pub fn seal_laid_out(&mut self, buf: &mut [u8], plain: &[Range<usize>]) -> io::Result<()> {
        self.usable()?;
        let before = self.tx.plain_offset();
        let after = self.tx.overhead() - before;
        for p in plain {
            let slot = p.start - before..p.end + after;
            let inner = before..before + p.len();
            // Never sent unsealed: a layout this cipher does not take is
            // a bug, and an error rather than plaintext on the wire.
            match self.tx.seal_in_slot(&mut buf[slot], inner) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(
                        self.fail(TlsError::Misuse("record slot laid out for another cipher"))
                    )
                }
                Err(e) => return Err(self.fail(e.into())),
            }
        }
        Ok(())
    }
}
