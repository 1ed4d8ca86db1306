//! What an upstream connection's TLS was verified with, named by content.
//!
//! A pooled connection may serve a request only if it was verified under the
//! same trust as the request asks for. Keying pools by a registry's position
//! in the config would hand a connection verified with one registry's extra
//! CA to another registry the day a reload reorders them; keying by the
//! roots themselves cannot.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::ClientConfig;

/// The set of extra roots (on top of the public web roots, which every
/// config trusts alike), as a sha256 over the sorted, de-duplicated DER
/// certificates, each prefixed by its length. The empty set has its own key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrustKey([u8; 32]);

impl TrustKey {
    pub fn of(extra_roots: &[CertificateDer<'_>]) -> TrustKey {
        let mut ders: Vec<&[u8]> = extra_roots.iter().map(|c| c.as_ref()).collect();
        ders.sort_unstable();
        ders.dedup();
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for d in ders {
            ctx.update(&(d.len() as u64).to_be_bytes());
            ctx.update(d);
        }
        let mut key = [0; 32];
        key.copy_from_slice(ctx.finish().as_ref());
        TrustKey(key)
    }
}

impl std::fmt::Debug for TrustKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrustKey(")?;
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "..)")
    }
}

/// One trust configuration: its key and the rustls client config that
/// verifies with it (per worker, so session caches are not shared).
#[derive(Clone)]
pub struct Trust {
    pub key: TrustKey,
    pub config: Arc<ClientConfig>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_the_set_of_roots_not_their_order() {
        let a = CertificateDer::from(vec![1u8, 2, 3]);
        let b = CertificateDer::from(vec![4u8, 5]);
        let ab = TrustKey::of(&[a.clone(), b.clone()]);
        assert_eq!(ab, TrustKey::of(&[b.clone(), a.clone(), a.clone()]));
        assert_ne!(ab, TrustKey::of(std::slice::from_ref(&a)));
        assert_ne!(TrustKey::of(&[]), TrustKey::of(&[a]));
        // Length prefixes: [1,2,3]+[4,5] is not [1,2]+[3,4,5].
        let c = CertificateDer::from(vec![1u8, 2]);
        let d = CertificateDer::from(vec![3u8, 4, 5]);
        assert_ne!(ab, TrustKey::of(&[c, d]));
    }
}
