//! Body taps: what sees a body's bytes as they pass through the relay, on
//! every path (relay buffer, chunked decoder, and the TLS-to-TLS reseal,
//! where a tap sees each record's plaintext in place). The relay holds the
//! last bytes back until [`BodyTap::end`] accepts the body, so a tap can
//! refuse it before it is complete for the client.
//!
//! Today's tap is the digest check ([`Verifier`]); the cache's tee will be
//! a second one, combined as a pair `(digest, tee)`.

use crate::wire::digest::Verifier;

/// A watcher of a body in transit. Generic (monomorphised) on the relay's
/// paths: no dynamic call per piece.
#[allow(async_fn_in_trait)] // used as a generic bound only, never `dyn`
pub trait BodyTap {
    /// Whether this tap watches at all (a body with no active tap may take
    /// shortcuts, such as leaving with its head before it is complete).
    fn active(&self) -> bool {
        true
    }
    /// The next bytes of the body, in order.
    fn data(&mut self, bytes: &[u8]);
    /// The body is complete: may it go out whole? Called before the held-back
    /// end is sent; answers the same on later calls.
    fn end(&mut self) -> Result<(), TapRefusal>;
    /// Work deferred from `data` (the cache's disk write), run by the relay
    /// while it waits on the network anyway.
    async fn flush(&mut self) {}
}

/// Why a tap refused a complete body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapRefusal {
    DigestMismatch,
}

/// No tap.
pub struct NoTap;

impl BodyTap for NoTap {
    fn active(&self) -> bool {
        false
    }
    #[inline]
    fn data(&mut self, _: &[u8]) {}
    #[inline]
    fn end(&mut self) -> Result<(), TapRefusal> {
        Ok(())
    }
}

/// Keeps a copy of a small body as it passes (a token answer, a manifest
/// to store), up to a limit; it does not judge the body, so the small-body
/// path (head and body in one write) stays.
pub struct Capture {
    bytes: Vec<u8>,
    max: usize,
    over: bool,
}

impl Capture {
    pub fn new(max: usize) -> Capture {
        Capture {
            bytes: Vec::new(),
            max,
            over: false,
        }
    }

    /// The body, if it fit.
    pub fn whole(&self) -> Option<&[u8]> {
        (!self.over).then_some(&self.bytes)
    }
}

impl BodyTap for Capture {
    fn active(&self) -> bool {
        false
    }
    fn data(&mut self, bytes: &[u8]) {
        if self.bytes.len() + bytes.len() > self.max {
            self.over = true;
            self.bytes = Vec::new();
        } else if !self.over {
            self.bytes.extend_from_slice(bytes);
        }
    }
    fn end(&mut self) -> Result<(), TapRefusal> {
        Ok(())
    }
}

/// The digest check, when the body is named by a digest ocirelay can check.
impl BodyTap for Option<Verifier> {
    fn active(&self) -> bool {
        self.is_some()
    }
    #[inline]
    fn data(&mut self, bytes: &[u8]) {
        if let Some(v) = self.as_mut() {
            v.update(bytes);
        }
    }

    fn end(&mut self) -> Result<(), TapRefusal> {
        // Checked once; later calls pass (the verifier is spent).
        match self.take().map(Verifier::matches) {
            Some(false) => Err(TapRefusal::DigestMismatch),
            _ => Ok(()),
        }
    }
}

/// Two taps on one body: both see every byte; both must accept it.
impl<A: BodyTap, B: BodyTap> BodyTap for (A, B) {
    fn active(&self) -> bool {
        self.0.active() || self.1.active()
    }
    #[inline]
    fn data(&mut self, bytes: &[u8]) {
        self.0.data(bytes);
        self.1.data(bytes);
    }

    fn end(&mut self) -> Result<(), TapRefusal> {
        let a = self.0.end();
        let b = self.1.end();
        a.and(b)
    }

    async fn flush(&mut self) {
        self.0.flush().await;
        self.1.flush().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::names::Digest;

    /// A tap that records what it saw, for the pair test.
    struct Seen(Vec<u8>);
    impl BodyTap for Seen {
        fn data(&mut self, bytes: &[u8]) {
            self.0.extend_from_slice(bytes);
        }
        fn end(&mut self) -> Result<(), TapRefusal> {
            Ok(())
        }
    }

    #[test]
    fn the_digest_tap_refuses_once_and_a_pair_sees_every_byte() {
        // sha256("hello")
        let d = Digest::parse(
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        )
        .unwrap();
        let mut good = (Verifier::new(&d), Seen(Vec::new()));
        good.data(b"hel");
        good.data(b"lo");
        assert_eq!(good.end(), Ok(()));
        assert_eq!(good.1 .0, b"hello");
        let mut bad = Verifier::new(&d);
        bad.data(b"hellO");
        assert_eq!(bad.end(), Err(TapRefusal::DigestMismatch));
        assert_eq!(NoTap.end(), Ok(()));
    }
}
