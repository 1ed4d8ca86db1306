//! Answering the CA's validations: HTTP-01 (RFC 8555 8.3) from a table the
//! plain listeners read, TLS-ALPN-01 (RFC 8737) from a challenge
//! certificate in the TLS listeners' [`CertStore`]. Both are filled by the
//! ACME thread for the time a validation runs and emptied after it.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::tls::{challenge_key, CertStore};

/// Pending HTTP-01 answers: token -> key authorization.
#[derive(Debug, Default)]
pub struct Http01Answers {
    answers: RwLock<HashMap<String, String>>,
}

impl Http01Answers {
    /// The key authorization to answer `GET /.well-known/acme-challenge/<token>`
    /// with, while that validation is pending.
    pub fn answer(&self, token: &str) -> Option<String> {
        self.answers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            .cloned()
    }

    fn set(&self, token: &str, key_authorization: String) {
        self.answers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token.to_string(), key_authorization);
    }

    fn clear(&self, token: &str) {
        self.answers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(token);
    }
}

/// What the workers share with the ACME thread (built in `server/`).
#[derive(Debug, Default)]
pub struct Shared {
    /// The ACME listeners' certificate (and TLS-ALPN-01 answers).
    pub certs: Arc<CertStore>,
    pub http01: Http01Answers,
}

/// One validation being answered; the answer is withdrawn when this is
/// dropped (validated, failed, or abandoned on an error).
pub struct Presented<'s> {
    shared: &'s Shared,
    what: Withdraw,
}

enum Withdraw {
    Http01 { token: String },
    TlsAlpn01 { domain: String },
}

impl Drop for Presented<'_> {
    fn drop(&mut self) {
        match &self.what {
            Withdraw::Http01 { token } => self.shared.http01.clear(token),
            Withdraw::TlsAlpn01 { domain } => self.shared.certs.clear_challenge(domain),
        }
    }
}

impl Shared {
    /// Serves `key_authorization` at `/.well-known/acme-challenge/<token>`.
    pub fn present_http01(&self, token: &str, key_authorization: String) -> Presented<'_> {
        self.http01.set(token, key_authorization);
        Presented {
            shared: self,
            what: Withdraw::Http01 {
                token: token.to_string(),
            },
        }
    }

    /// Serves the RFC 8737 challenge certificate for `domain` to handshakes
    /// offering only `acme-tls/1`.
    pub fn present_tls_alpn01(
        &self,
        domain: &str,
        key_authorization: &str,
    ) -> Result<Presented<'_>, String> {
        let cert = tls_alpn01_certificate(domain, key_authorization)?;
        self.certs.set_challenge(domain, Arc::new(cert));
        Ok(Presented {
            shared: self,
            what: Withdraw::TlsAlpn01 {
                domain: domain.to_string(),
            },
        })
    }
}

/// RFC 8737 3: a self-signed certificate for `domain` (its only SAN) with
/// the critical `id-pe-acmeIdentifier` extension holding SHA-256 of the key
/// authorization. A fresh key each time: it is thrown away afterwards.
fn tls_alpn01_certificate(
    domain: &str,
    key_authorization: &str,
) -> Result<rustls::sign::CertifiedKey, String> {
    let digest = ring::digest::digest(&ring::digest::SHA256, key_authorization.as_bytes());
    let key = rcgen::KeyPair::generate().map_err(|e| format!("challenge key: {e}"))?;
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()])
        .map_err(|e| format!("challenge certificate for {domain}: {e}"))?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest.as_ref())];
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("challenge certificate for {domain}: {e}"))?;
    let key =
        PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| format!("challenge key: {e}"))?;
    challenge_key(CertificateDer::from(cert.der().to_vec()), key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_exist_exactly_while_presented() {
        let shared = Shared::default();
        {
            let _p = shared.present_http01("tok", "tok.thumb".into());
            assert_eq!(shared.http01.answer("tok").as_deref(), Some("tok.thumb"));
            assert_eq!(shared.http01.answer("other"), None);
        }
        assert_eq!(shared.http01.answer("tok"), None, "withdrawn on drop");
    }

    #[test]
    fn the_tls_alpn_certificate_carries_the_digest_in_a_critical_extension() {
        let ck = tls_alpn01_certificate("mirror.test", "tok.thumb").unwrap();
        let der = ck.cert[0].as_ref();
        let digest = ring::digest::digest(&ring::digest::SHA256, b"tok.thumb");
        // id-pe-acmeIdentifier (1.3.6.1.5.5.7.1.31), critical, and the
        // digest as an OCTET STRING inside the extension's value.
        let oid = [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x1f];
        let at = der
            .windows(oid.len())
            .position(|w| w == oid)
            .expect("acmeIdentifier extension");
        let rest = &der[at + oid.len()..];
        assert_eq!(&rest[..3], &[0x01, 0x01, 0xff], "critical");
        let inner = [&[0x04, 0x20][..], digest.as_ref()].concat();
        assert!(rest.windows(inner.len()).any(|w| w == inner));
        let info = crate::acme::cert::parse(der).unwrap();
        assert_eq!(info.dns_names, ["mirror.test"]);
    }
}
