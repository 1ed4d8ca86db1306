//! TLS material: the server side (certificate chain and key for client
//! connections) and the client side (web PKI roots plus an operator CA file
//! per upstream). Files are read once at start-up; each worker builds its
//! own rustls configs from the parsed DER so that no session cache is shared
//! (and locked) across threads.

use std::path::Path;
use std::sync::Arc;

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

/// Reads PEM certificates from `path`.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: bad PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificates found", path.display()));
    }
    Ok(certs)
}

/// Reads a certificate chain and private key.
pub fn load_server(cert: &Path, key: &Path) -> Result<ServerMaterial, String> {
    let chain = load_certs(cert)?;
    let data = std::fs::read(key).map_err(|e| format!("cannot read {}: {e}", key.display()))?;
    let key = rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|e| format!("{}: bad PEM: {e}", key.display()))?
        .ok_or_else(|| format!("{}: no private key found", key.display()))?;
    // Build once here so that a mismatched pair fails at start-up.
    let m = ServerMaterial { chain, key };
    server_config(&m)?;
    Ok(m)
}

/// A server config offering HTTP/1.1 over ALPN.
pub fn server_config(m: &ServerMaterial) -> Result<Arc<ServerConfig>, String> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(m.chain.clone(), m.key.clone_key())
        .map_err(|e| format!("certificate and key do not fit: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
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
