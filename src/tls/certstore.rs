//! A hot-swappable server certificate for listeners whose certificates come
//! from ACME: a rustls [`ResolvesServerCert`] whose current certificate is
//! replaced whole (`Arc`) when a new one is issued. Every worker's server
//! config holds the same store; rustls asks it once per handshake, so its
//! lock is taken during handshakes only, never on the data path, and a
//! connection keeps the certificate it was opened with.
//!
//! It also answers the TLS-ALPN-01 challenge (RFC 8737): a ClientHello that
//! offers only ALPN `acme-tls/1` gets the challenge certificate for its
//! server name while a validation is pending.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// RFC 8737's ALPN protocol name: a handshake that negotiates it is a CA
/// validating a domain, never a client.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The current certificate and pending TLS-ALPN-01 answers.
#[derive(Debug, Default)]
pub struct CertStore {
    current: RwLock<Option<Arc<CertifiedKey>>>,
    /// Challenge certificates by domain (lowercase), while validations run.
    challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl CertStore {
    /// Makes `cert` the certificate of every handshake from now on.
    pub fn install(&self, cert: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(cert);
    }

    /// The certificate handshakes get now, if any.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether a certificate is installed (readiness: a TLS listener can
    /// complete handshakes).
    pub fn loaded(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Answers TLS-ALPN-01 validations of `domain` with `cert` until
    /// [`CertStore::clear_challenge`].
    pub fn set_challenge(&self, domain: &str, cert: Arc<CertifiedKey>) {
        self.challenges
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(domain.to_ascii_lowercase(), cert);
    }

    pub fn clear_challenge(&self, domain: &str) {
        self.challenges
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&domain.to_ascii_lowercase());
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if offers_only_acme_tls(hello.alpn()) {
            // RFC 8737 3: the CA names the domain in SNI. No pending
            // validation: no certificate, the handshake fails.
            let name = hello.server_name()?;
            return self
                .challenges
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&name.to_ascii_lowercase())
                .cloned();
        }
        // None before the first certificate: rustls refuses the handshake
        // (plain-HTTP listeners serve meanwhile).
        self.current()
    }
}

/// RFC 8737 3: a validation offers `acme-tls/1` and nothing else.
fn offers_only_acme_tls<'a>(alpn: Option<impl Iterator<Item = &'a [u8]>>) -> bool {
    let Some(mut protocols) = alpn else {
        return false;
    };
    let mut any = false;
    let only = protocols.all(|p| {
        any = true;
        p == ACME_TLS_ALPN
    });
    any && only
}

/// A certificate chain and its key (DER) as rustls serves them, checked to
/// belong together.
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, String> {
    let ck = unchecked(chain, key)?;
    ck.keys_match()
        .map_err(|e| format!("certificate and key do not fit: {e}"))?;
    Ok(ck)
}

/// A TLS-ALPN-01 challenge certificate and the key it was just made with.
/// Not checked as [`certified_key`] does: webpki refuses to parse the
/// critical `id-pe-acmeIdentifier` extension RFC 8737 requires.
pub fn challenge_key(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, String> {
    unchecked(vec![cert], key)
}

fn unchecked(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, String> {
    if chain.is_empty() {
        return Err("no certificate in the chain".into());
    }
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("private key: {e}"))?;
    Ok(CertifiedKey::new(chain, signing))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alpn<'a>(list: &'a [&'static [u8]]) -> Option<impl Iterator<Item = &'static [u8]> + 'a> {
        Some(list.iter().copied())
    }

    #[test]
    fn only_a_hello_offering_nothing_but_acme_tls_is_a_validation() {
        assert!(offers_only_acme_tls(alpn(&[b"acme-tls/1"])));
        assert!(!offers_only_acme_tls(alpn(&[b"acme-tls/1", b"http/1.1"])));
        assert!(!offers_only_acme_tls(alpn(&[b"http/1.1"])));
        assert!(!offers_only_acme_tls(alpn(&[])));
        assert!(!offers_only_acme_tls(None::<std::iter::Empty<&[u8]>>));
    }

    fn self_signed(name: &str) -> CertifiedKey {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        certified_key(
            vec![cert.der().clone()],
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let a = self_signed("a.test");
        let other = rcgen::KeyPair::generate().unwrap();
        let e = certified_key(
            a.cert.clone(),
            PrivateKeyDer::try_from(other.serialize_der()).unwrap(),
        )
        .unwrap_err();
        assert!(e.contains("do not fit"), "{e}");
    }

    #[test]
    fn install_replaces_the_certificate_and_challenges_come_and_go() {
        let store = CertStore::default();
        assert!(!store.loaded());
        let first = Arc::new(self_signed("a.test"));
        store.install(first.clone());
        assert!(Arc::ptr_eq(&store.current().unwrap(), &first));
        let second = Arc::new(self_signed("a.test"));
        store.install(second.clone());
        assert!(Arc::ptr_eq(&store.current().unwrap(), &second));
        store.set_challenge("A.test", Arc::new(self_signed("a.test")));
        assert!(store.challenges.read().unwrap().contains_key("a.test"));
        store.clear_challenge("a.TEST");
        assert!(store.challenges.read().unwrap().is_empty());
    }
}
