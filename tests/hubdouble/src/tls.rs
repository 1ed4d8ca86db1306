//! A throwaway CA (made at start, or shared between doubles through [`TestCa`]) and one leaf
//! certificate per double (127.0.0.1-3, ::1, localhost).

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// The generated PKI.
pub(crate) struct Pki {
    pub ca: TestCa,
    pub server_config: Arc<rustls::ServerConfig>,
}

struct CaInner {
    cert: rcgen::Certificate,
    key: KeyPair,
    pem: String,
}

/// A test certificate authority that can sign the leaf certificates of several doubles.
///
/// Every double makes its own CA unless [`crate::Options::ca`] hands it one: give the same
/// `TestCa` to two doubles (or take the first one's [`crate::HubDouble::ca`]) and a single
/// CA file (either double's [`crate::HubDouble::ca_path`], or [`TestCa::pem`]) trusts both.
/// Cheap to clone (shared handle).
#[derive(Clone)]
pub struct TestCa {
    inner: Arc<CaInner>,
}

impl TestCa {
    /// Generates a new CA (`CN=hubdouble test CA`, ECDSA P-256).
    pub fn generate() -> io::Result<TestCa> {
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(other)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "hubdouble test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().map_err(other)?;
        let cert = ca.self_signed(&key).map_err(other)?;
        let pem = cert.pem();
        Ok(TestCa {
            inner: Arc::new(CaInner { cert, key, pem }),
        })
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.inner.pem
    }

    /// Whether `self` and `other` are handles to the same CA.
    pub fn same_as(&self, other: &TestCa) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// The crypto provider everything here uses (ring only).
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Generates (or reuses) a CA and a leaf for the loopback hosts, and a server config serving
/// the leaf.
pub(crate) fn generate(ca: Option<&TestCa>) -> io::Result<Pki> {
    let ca = match ca {
        Some(ca) => ca.clone(),
        None => TestCa::generate()?,
    };
    let (ca_cert, ca_key) = (&ca.inner.cert, &ca.inner.key);

    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).map_err(other)?;
    leaf.distinguished_name
        .push(DnType::CommonName, "hubdouble");
    for ip in [
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ] {
        leaf.subject_alt_names.push(SanType::IpAddress(ip));
    }
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    let leaf_key = KeyPair::generate().map_err(other)?;
    let leaf_cert = leaf.signed_by(&leaf_key, ca_cert, ca_key).map_err(other)?;

    let chain: Vec<CertificateDer<'static>> = vec![leaf_cert.der().clone(), ca_cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(other)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(other)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Pki {
        ca,
        server_config: Arc::new(config),
    })
}

/// A client config trusting only the CA in `ca_pem`.
pub(crate) fn client_config(ca_pem: &str) -> io::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.map_err(other)?).map_err(other)?;
    }
    if roots.is_empty() {
        return Err(other("no certificate in CA PEM"));
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
