//! Re-encrypting another stream's records in place: a relay from a TLS
//! upstream to a TLS client opens each record where it lies in the
//! upstream's read buffer and seals it for the client in the same bytes
//! (see `docs/design.md`, "TLS").

use std::io;
use std::ops::Range;

use monoio::buf::IoBuf;
use monoio::io::AsyncWriteRentExt;

use super::error::TlsError;
use super::handshake::Side;
#[cfg(test)]
use super::stream::RESEALED_IN_PLACE;
use super::stream::{Broken, Resealed, TlsStream};

impl<S: Side> TlsStream<S> {
    /// Re-encrypts for `to`, in place in this stream's read buffer, the
    /// application data records already read, each handed to `each` (the
    /// digest check) before it is sealed: with the same record layout on
    /// both connections (TLS 1.3 to TLS 1.3 without padding, the usual case)
    /// a relay copies no byte at all. Takes at most `limit` bytes.
    ///
    /// Stops at the first record that cannot be re-encrypted this way (it
    /// stays opened, in [`TlsStream::plain`]), at a record not adjacent to the
    /// run (after a ticket or key update), when `to` owes a key update, or
    /// when no complete record is left (then `exhausted`). A key update the
    /// upstream asked for waits for the next request written to it. The
    /// run goes out
    /// after what `to` has pending (sealed before it), with
    /// [`TlsStream::send_run`], or with [`TlsStream::send_ciphertext`] after
    /// [`TlsStream::swap_read_buffer`].
    pub fn reseal_buffered<T: Side>(
        &mut self,
        to: &mut TlsStream<T>,
        limit: u64,
        mut each: impl FnMut(&[u8]),
    ) -> io::Result<Resealed> {
        self.usable()?;
        to.usable()?;
        let mut out = Resealed {
            taken: 0,
            run: self.rpos..self.rpos,
            exhausted: false,
        };
        while out.taken < limit
            && self.plain().is_empty()
            && !self.inbound.mid_message()
            && !self.inbound.peer_closed()
            && !to.inbound.key_update_owed
            && to.tx.seq() < to.rekey_after
        {
            let at = self.rpos;
            if !self.open_next()? {
                out.exhausted = true;
                break;
            }
            let plain = self.plain.clone();
            if plain.is_empty() {
                continue; // an alert or handshake record: the run ends here
            }
            if at != out.run.end || plain.len() as u64 > limit - out.taken {
                break;
            }
            let slot = at..self.rpos;
            let inner = plain.start - at..plain.end - at;
            if !to.tx.fits_slot(slot.len(), &inner) {
                break;
            }
            each(&self.rbuf[plain.clone()]);
            // `fits_slot` said yes; were the cipher to disagree, the slot
            // would still hold plaintext: both streams end rather than let
            // the run out (in release builds too).
            match to.tx.seal_in_slot(&mut self.rbuf[slot.clone()], inner) {
                Ok(true) => {}
                Ok(false) => {
                    let e = TlsError::Misuse("record slot the cipher does not take");
                    self.broken = Some(Broken::Failed(None));
                    return Err(to.fail(e));
                }
                Err(e) => {
                    self.broken = Some(Broken::Failed(None));
                    return Err(to.fail(e.into()));
                }
            }
            #[cfg(test)]
            RESEALED_IN_PLACE.with(|n| n.set(n.get() + 1));
            self.plain = plain.end..plain.end;
            out.taken += plain.len() as u64;
            out.run.end = slot.end;
        }
        Ok(out)
    }

    /// Sends `run` of this stream's read buffer (ciphertext for `to`, see
    /// [`TlsStream::reseal_buffered`]) on `to`.
    pub async fn send_run<T: Side>(
        &mut self,
        to: &mut TlsStream<T>,
        run: Range<usize>,
    ) -> io::Result<()> {
        self.usable()?;
        // The buffer goes with the write: if the write's future is dropped
        // (a timeout) this stream's indices point into nothing, and it
        // stays marked so that nothing reads through them.
        let buf = std::mem::take(&mut self.rbuf);
        self.broken = Some(Broken::Cancelled);
        let (res, buf) = to.send_ciphertext(buf, run).await;
        self.broken = None;
        self.rbuf = buf;
        res
    }

    /// Hands the read buffer out (to send a resealed run from it while the
    /// next bytes are read) and continues with `spare`, which receives the
    /// unopened rest. Only when no opened data is waiting.
    pub fn swap_read_buffer(&mut self, mut spare: Vec<u8>) -> io::Result<Vec<u8>> {
        self.usable()?;
        if !self.plain().is_empty() {
            return Err(TlsError::Misuse("read buffer swapped with opened data in it").into());
        }
        spare.clear();
        // Exactly: `reserve` may double a smaller spare past the buffer it
        // replaces, and the two buffers, swapped back and forth, would
        // ratchet each other up without bound.
        spare.reserve_exact(self.rbuf.capacity());
        spare.extend_from_slice(&self.rbuf[self.rpos..]);
        self.rpos = 0;
        self.plain = 0..0;
        Ok(std::mem::replace(&mut self.rbuf, spare))
    }

    /// Sends what is pending, then ciphertext already sealed for this
    /// stream (`buf[run]`, sealed after it); gives the buffer back.
    pub async fn send_ciphertext(
        &mut self,
        buf: Vec<u8>,
        run: Range<usize>,
    ) -> (io::Result<()>, Vec<u8>) {
        if let Err(e) = self.send_pending().await {
            return (Err(e), buf);
        }
        if let Err(e) = self.usable() {
            return (Err(e), buf);
        }
        // Marked until the write completes, as in `send`.
        self.broken = Some(Broken::Cancelled);
        let (res, slice) = self.tcp.write_all(buf.slice(run)).await;
        self.broken = res.as_ref().err().map(|_| Broken::Failed(None));
        (res.map(|_| ()), slice.into_inner())
    }
}
