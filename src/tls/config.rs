//! TLS material: the server side (certificate chain and key for client
//! connections) and the client side (web PKI roots plus an operator CA file
//! per upstream). Files are read once at start-up; each worker builds its
//! own rustls configs from the parsed DER so that no session cache is shared
//! (and locked) across threads.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::{fmt, io};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// A certificate chain and its key, parsed.
pub struct ServerMaterial {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for ServerMaterial {
    fn clone(&self) -> Self {
        ServerMaterial {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why certificate or key files cannot be used.
#[derive(Debug)]
pub enum MaterialError {
    /// A file could not be read.
    Read(PathBuf, io::Error),
    /// A file is not PEM.
    Pem(PathBuf, io::Error),
    /// A certificate file holds no certificate.
    NoCertificate(PathBuf),
    /// A key file holds no private key.
    NoKey(PathBuf),
    /// rustls refused the pair: a key that is not the certificate's (its
    /// public key differs from the one in the certificate), or a key of a
    /// kind it cannot sign with.
    Unfit(rustls::Error),
}

impl MaterialError {
    /// The file at fault, when it is one file.
    pub fn file(&self) -> Option<&Path> {
        match self {
            MaterialError::Read(p, _)
            | MaterialError::Pem(p, _)
            | MaterialError::NoCertificate(p)
            | MaterialError::NoKey(p) => Some(p),
            MaterialError::Unfit(_) => None,
        }
    }
}

impl fmt::Display for MaterialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaterialError::Read(p, e) => write!(f, "cannot read {}: {e}", p.display()),
            MaterialError::Pem(p, e) => write!(f, "{}: bad PEM: {e}", p.display()),
            MaterialError::NoCertificate(p) => write!(f, "{}: no certificates found", p.display()),
            MaterialError::NoKey(p) => write!(f, "{}: no private key found", p.display()),
            MaterialError::Unfit(rustls::Error::InconsistentKeys(_)) => {
                f.write_str("the key is not the certificate's (their public keys differ)")
            }
            MaterialError::Unfit(e) => write!(f, "certificate and key do not fit: {e}"),
        }
    }
}

impl std::error::Error for MaterialError {}

/// Reads PEM certificates from `path`.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, MaterialError> {
    let data = std::fs::read(path).map_err(|e| MaterialError::Read(path.into(), e))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| MaterialError::Pem(path.into(), e))?;
    if certs.is_empty() {
        return Err(MaterialError::NoCertificate(path.into()));
    }
    Ok(certs)
}

/// Reads a certificate chain and private key, and checks that they fit.
pub fn load_server(cert: &Path, key_path: &Path) -> Result<ServerMaterial, MaterialError> {
    let chain = load_certs(cert)?;
    let data = std::fs::read(key_path).map_err(|e| MaterialError::Read(key_path.into(), e))?;
    let key = rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|e| MaterialError::Pem(key_path.into(), e))?
        .ok_or_else(|| MaterialError::NoKey(key_path.into()))?;
    // Build once here so that a mismatched pair fails at start-up (rustls
    // compares the key's public half with the certificate's).
    let m = ServerMaterial { chain, key };
    build_server_config(&ServerCerts::Static(m.clone())).map_err(MaterialError::Unfit)?;
    Ok(m)
}

/// Where a TLS listener's certificate comes from, loaded.
#[derive(Clone)]
pub enum ServerCerts {
    /// Files read at start-up.
    Static(ServerMaterial),
    /// ACME's store, swapped as certificates are issued.
    Acme(Arc<super::CertStore>),
}

/// A server config offering HTTP/1.1 over ALPN (and, for ACME listeners,
/// `acme-tls/1`, which only a CA validating a domain offers alone; rustls
/// prefers our order, so a client offering both gets HTTP/1.1).
pub fn server_config(certs: &ServerCerts) -> Result<Arc<ServerConfig>, String> {
    build_server_config(certs).map_err(|e| MaterialError::Unfit(e).to_string())
}

fn build_server_config(certs: &ServerCerts) -> Result<Arc<ServerConfig>, rustls::Error> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth();
    let mut cfg = match certs {
        ServerCerts::Static(m) => builder.with_single_cert(m.chain.clone(), m.key.clone_key())?,
        ServerCerts::Acme(store) => builder.with_cert_resolver(store.clone()),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    if matches!(certs, ServerCerts::Acme(_)) {
        cfg.alpn_protocols.push(super::ACME_TLS_ALPN.to_vec());
    }
    // Records are protected by our own record layer (tls_record.rs) once
    // rustls has finished the handshake.
    cfg.enable_secret_extraction = true;
    Ok(Arc::new(cfg))
}

/// A client config trusting the web PKI plus `extra` roots.
pub fn client_config(extra: &[CertificateDer<'static>]) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for c in extra {
        roots
            .add(c.clone())
            .map_err(|e| format!("bad CA certificate: {e}"))?;
    }
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.enable_secret_extraction = true;
    Ok(Arc::new(cfg))
}
