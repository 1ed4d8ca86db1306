//! ACME's files: the account key and the certificate (chain + key), under
//! `[acme] dir`, one folder per CA (`<dir>/<ca host>[_<port>]/`): an account
//! and a certificate belong to the CA that made them, so switching from
//! staging to production never serves a staging certificate.
//!
//! Private files are 0600 in 0700 folders, written to a temporary file and
//! renamed into place: a crash leaves the old file or the new one, never
//! half of one.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::jws::AccountKey;
use crate::wire::url::Url;

/// The files of one CA.
pub struct Store {
    dir: PathBuf,
}

/// A stored certificate chain and its key.
pub struct StoredCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Store {
    /// The folder for the CA whose directory is `directory`.
    pub fn for_ca(base: &Path, directory: &Url) -> Store {
        let o = &directory.origin;
        let name = if o.port == o.scheme.default_port() {
            o.host.clone()
        } else {
            format!("{}_{}", o.host, o.port)
        };
        Store {
            dir: base.join(name.replace(['/', ':'], "_")),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The account key, made and saved on first use.
    pub fn account_key(&self) -> Result<AccountKey, String> {
        let path = self.dir.join("account.key");
        match fs::read(&path) {
            Ok(pem) => {
                let der = match rustls_pemfile::private_key(&mut pem.as_slice()) {
                    Ok(Some(PrivateKeyDer::Pkcs8(k))) => k.secret_pkcs8_der().to_vec(),
                    _ => return Err(format!("{}: not a PKCS#8 PEM key", path.display())),
                };
                AccountKey::from_pkcs8(&der).map_err(|e| format!("{}: {e}", path.display()))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = AccountKey::generate()?;
                write_private(&path, pem("PRIVATE KEY", key.pkcs8()).as_bytes())
                    .map_err(|e| format!("cannot save {}: {e}", path.display()))?;
                Ok(key)
            }
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    fn cert_paths(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        )
    }

    /// The certificate stored under `name`, if there is one that reads.
    pub fn load_cert(&self, name: &str) -> Result<Option<StoredCert>, String> {
        let (crt, key) = self.cert_paths(name);
        if !crt.exists() {
            return Ok(None);
        }
        let chain = crate::tls::load_certs(&crt).map_err(|e| e.to_string())?;
        let data = fs::read(&key).map_err(|e| format!("cannot read {}: {e}", key.display()))?;
        let key = rustls_pemfile::private_key(&mut data.as_slice())
            .ok()
            .flatten()
            .ok_or_else(|| format!("{}: no private key", key.display()))?;
        Ok(Some(StoredCert { chain, key }))
    }

    /// Stores a certificate under `name`: the key first, so that a chain on
    /// disk always has its key beside it.
    pub fn save_cert(&self, name: &str, chain_pem: &str, key_pem: &str) -> Result<(), String> {
        let (crt, key) = self.cert_paths(name);
        write_private(&key, key_pem.as_bytes())
            .map_err(|e| format!("cannot save {}: {e}", key.display()))?;
        write_private(&crt, chain_pem.as_bytes())
            .map_err(|e| format!("cannot save {}: {e}", crt.display()))
    }
}

/// DER as PEM with `label`, in 64-character lines (RFC 7468).
pub fn pem(label: &str, der: &[u8]) -> String {
    let mut b64 = Vec::new();
    crate::wire::base64::encode_standard(der, &mut b64);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Writes `data` to `path` readable by the owner only: a temporary file
/// (0600) beside it, synced, then renamed over it.
fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ocirelay-acme-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn the_account_key_is_made_once_kept_private_and_read_back() {
        let base = temp("key");
        let url = Url::parse("https://ca.test:14000/dir").unwrap();
        let store = Store::for_ca(&base, &url);
        assert_eq!(store.dir(), base.join("ca.test_14000"));
        let key = store.account_key().unwrap();
        let again = store.account_key().unwrap();
        assert_eq!(key.thumbprint(), again.thumbprint(), "reused, not remade");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&store.dir().join("account.key")), 0o600);
        assert_eq!(mode(store.dir()), 0o700);
        let other = Store::for_ca(&base, &Url::parse("https://ca.test/dir").unwrap());
        assert_eq!(other.dir(), base.join("ca.test"));
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_certificate_is_saved_private_and_loaded_back() {
        let base = temp("cert");
        let store = Store::for_ca(&base, &Url::parse("https://ca.test/dir").unwrap());
        assert!(store.load_cert("m.test").unwrap().is_none());
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["m.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        store
            .save_cert("m.test", &cert.pem(), &key.serialize_pem())
            .unwrap();
        let got = store.load_cert("m.test").unwrap().unwrap();
        assert_eq!(got.chain[0].as_ref(), cert.der().as_ref());
        for f in ["m.test.crt", "m.test.key"] {
            let mode = fs::metadata(store.dir().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let leftovers: Vec<_> = fs::read_dir(store.dir())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".tmp")
            })
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn pem_wraps_at_64_columns() {
        let p = pem("X", &[0u8; 100]);
        let lines: Vec<&str> = p.lines().collect();
        assert_eq!(lines[0], "-----BEGIN X-----");
        assert_eq!(lines[1].len(), 64);
        // 100 bytes: 136 characters, 64 + 64 + 8.
        assert_eq!((lines[2].len(), lines[3].len()), (64, 8));
        assert_eq!(lines.last().unwrap(), &"-----END X-----");
    }
}
