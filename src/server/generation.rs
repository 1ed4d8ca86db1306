//! A config generation: a checked [`Config`] with the files it names read
//! and parsed (certificates, keys, extra CA roots), ready for every worker
//! to build its own per-core state from. Start-up builds the first; each
//! SIGHUP builds the next, and nothing is published unless all of it
//! loaded.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;

use crate::acme;
use crate::cache::access::Access;
use crate::config::{CertSource, Config, ConfigError};
use crate::tls::{self, ServerCerts};

/// One generation, shared read-only by the workers.
pub struct Generation {
    /// 1 for the config the process started with, then one more per
    /// successful reload.
    pub number: u64,
    pub cfg: Arc<Config>,
    /// Certificates per `tls_listeners` entry: files read, or ACME's store.
    pub server_tls: Vec<ServerCerts>,
    /// Extra CA roots per registry.
    pub extra_roots: Vec<Vec<CertificateDer<'static>>>,
    /// Extra CA roots of the shared tier's store (`[cache.s3] ca_file`),
    /// if it has one.
    pub s3_roots: Option<Vec<CertificateDer<'static>>>,
    /// What is known of who may read what (see `Worker::access`).
    pub access: Option<Arc<Access>>,
    /// ACME's certificate store and challenge answers (with `[acme]`; the
    /// same for the life of the process).
    pub acme: Option<Arc<acme::Shared>>,
}

/// Why a config could not become a generation.
#[derive(Debug)]
pub enum LoadError {
    /// The file itself (the message names the line).
    Config(ConfigError),
    /// A certificate, key or CA file it names.
    Tls(String),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Config(e) => write!(f, "{e}"),
            LoadError::Tls(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for LoadError {}

impl Generation {
    /// Reads the TLS material `cfg` names and checks that every config a
    /// worker will build from it builds. `access`: the process's access
    /// knowledge, if it has one already; `acme`: ACME's store, with `[acme]`.
    pub fn load(
        number: u64,
        cfg: Config,
        access: Option<Arc<Access>>,
        acme: Option<Arc<acme::Shared>>,
    ) -> Result<Generation, LoadError> {
        let server_tls = cfg
            .tls_listeners
            .iter()
            .map(|l| match (&l.certs, &acme) {
                (CertSource::Files { cert, key }, _) => tls::load_server(cert, key)
                    .map(ServerCerts::Static)
                    .map_err(|e| e.to_string()),
                (CertSource::Acme, Some(a)) => Ok(ServerCerts::Acme(a.certs.clone())),
                (CertSource::Acme, None) => {
                    Err("a tls_listener without cert/key needs [acme]".into())
                }
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(LoadError::Tls)?;
        let extra_roots = cfg
            .registries
            .iter()
            .map(|r| {
                r.ca_file
                    .as_deref()
                    .map(tls::load_certs)
                    .unwrap_or(Ok(Vec::new()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| LoadError::Tls(e.to_string()))?;
        for roots in &extra_roots {
            tls::client_config(roots).map_err(LoadError::Tls)?;
        }
        let s3_roots = cfg
            .cache
            .as_ref()
            .and_then(|c| c.s3.as_ref())
            .map(|s3| {
                s3.ca_file
                    .as_deref()
                    .map_or(Ok(Vec::new()), tls::load_certs)
            })
            .transpose()
            .map_err(|e| LoadError::Tls(e.to_string()))?;
        if let Some(roots) = &s3_roots {
            tls::client_config(roots).map_err(LoadError::Tls)?;
        }
        // Upstream credentials need access knowledge (whose token is
        // anonymous, which repository is public) even without a cache: a
        // memory-only one, made the first time a config has an account.
        let access = match access {
            Some(a) => Some(a),
            None if cfg.registries.iter().any(|r| r.credentials.is_some()) => {
                Some(Arc::new(Access::default()))
            }
            None => None,
        };
        Ok(Generation {
            number,
            cfg: Arc::new(cfg),
            server_tls,
            extra_roots,
            s3_roots,
            access,
            acme,
        })
    }
}
