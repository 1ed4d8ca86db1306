//! Digests: checking a body incrementally against the digest that named it
//! ([`Verifier`]) and naming bytes by their sha256 ([`sha256_digest`]).

use crate::wire::names::{Algorithm, Digest};

/// Incremental digest check of a body against the digest that named it.
pub struct Verifier {
    ctx: ring::digest::Context,
    expected: Vec<u8>,
}

impl Verifier {
    /// A verifier for `digest`, or `None` for algorithms ocirelay cannot check.
    pub fn new(digest: &Digest<'_>) -> Option<Verifier> {
        let alg = match digest.algorithm() {
            Algorithm::Sha256 => &ring::digest::SHA256,
            Algorithm::Sha512 => &ring::digest::SHA512,
            Algorithm::Other => return None,
        };
        Some(Verifier {
            ctx: ring::digest::Context::new(alg),
            expected: hex_decode(digest.encoded())?,
        })
    }

    pub fn update(&mut self, data: &[u8]) {
        self.ctx.update(data);
    }

    pub fn matches(self) -> bool {
        self.ctx.finish().as_ref() == self.expected.as_slice()
    }
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    s.push_str(&sha256_hex(data));
    s
}

/// The lowercase hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut s = String::with_capacity(64);
    for b in d.as_ref() {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_accepts_the_right_bytes_only() {
        // sha256("hello")
        let d = Digest::parse(
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        )
        .unwrap();
        let mut v = Verifier::new(&d).unwrap();
        v.update(b"hel");
        v.update(b"lo");
        assert!(v.matches());
        let mut v = Verifier::new(&d).unwrap();
        v.update(b"hellO");
        assert!(!v.matches());
        let other = Digest::parse("blake3:abc").unwrap();
        assert!(Verifier::new(&other).is_none());
    }
}
