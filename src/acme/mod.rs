//! Automatic certificates (ACME, RFC 8555) for `[[tls_listener]]`s without
//! `cert`/`key`. A thread of its own (blocking; never a worker) keeps one
//! certificate for every configured domain: it installs a stored one at
//! start when it still fits, orders one when there is none, renews at two
//! thirds of the lifetime, and retries failures with exponential backoff
//! and jitter, a log line per attempt. Workers see new certificates through
//! the shared [`crate::tls::CertStore`] at their next handshake, so nothing
//! restarts and no connection drops.
//!
//! - `protocol`: requests, nonces, problems, polling (over `blocking::http`);
//! - `jws`: the account key and signed requests;
//! - `order`: one certificate from order to chain;
//! - `challenge`: HTTP-01 and TLS-ALPN-01 answers ([`Shared`]);
//! - `store`: the account key and certificate on disk;
//! - `cert`: validity and names of a certificate.
//!
//! Why our own client: `instant-acme` needs tokio, and `rustls-acme` runs
//! its client on an async runtime of its own; the protocol is a handful of
//! JSON requests that the blocking client of `cache warm` already carries
//! (see `docs/design.md`, "ACME").

pub mod cert;
pub mod challenge;
mod jws;
mod order;
pub mod protocol;
mod store;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::ClientConfig;

pub use challenge::Shared;
use protocol::{AcmeError, Session};
use store::Store;

use crate::config::AcmeConfig;
use crate::ops::log::Level;

/// The first wait after a failed attempt; it doubles per failure.
const BACKOFF_FIRST: Duration = Duration::from_secs(5);
/// The longest wait between attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(3600);
/// The shortest time between an issued certificate and the next order.
const RENEW_GAP: Duration = Duration::from_secs(5);
/// The thread wakes at least this often to look at the clock again (a
/// suspended machine's sleep does not count wall time).
const WAKE_EVERY: Duration = Duration::from_secs(600);

/// The certificate manager: config, files, the state shared with workers.
pub struct Acme {
    cfg: AcmeConfig,
    shared: Arc<Shared>,
    store: Store,
    tls: Arc<ClientConfig>,
    /// The installed certificate's validity and names.
    current: Option<cert::CertInfo>,
    /// When to order next (the epoch: at once).
    due: SystemTime,
}

impl Acme {
    /// Prepares the manager; fails only on a config it cannot use (an
    /// unreadable `ca_file`).
    pub fn new(cfg: AcmeConfig, shared: Arc<Shared>) -> Result<Acme, String> {
        let extra = match &cfg.ca_file {
            Some(path) => crate::tls::load_certs(path).map_err(|e| e.to_string())?,
            None => Vec::new(),
        };
        let tls = crate::tls::client_config(&extra)?;
        Ok(Acme {
            store: Store::for_ca(&cfg.dir, &cfg.directory),
            cfg,
            shared,
            tls,
            current: None,
            due: SystemTime::UNIX_EPOCH,
        })
    }

    /// The name the certificate is stored under: the first domain.
    fn cert_name(&self) -> &str {
        &self.cfg.domains[0]
    }

    /// Installs the stored certificate if it still covers the domains and
    /// has not expired (renewal, if due, follows on the thread). Runs
    /// before the listeners open, so a restart serves TLS at once.
    pub fn load_stored(&mut self) {
        let stored = match self.store.load_cert(self.cert_name()) {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(e) => {
                crate::event!(Level::Warn, None, "acme: stored certificate unusable: {e}");
                return;
            }
        };
        let info = match cert::parse(&stored.chain[0]) {
            Ok(i) => i,
            Err(e) => {
                crate::event!(
                    Level::Warn,
                    None,
                    "acme: stored certificate unreadable: {e}"
                );
                return;
            }
        };
        if !info.covers(&self.cfg.domains) {
            crate::event!(
                Level::Info,
                None,
                "acme: stored certificate names {:?}, not all of {:?}: ordering a new one",
                info.dns_names,
                self.cfg.domains
            );
            return;
        }
        if info.not_after <= SystemTime::now() {
            crate::event!(Level::Info, None, "acme: stored certificate has expired");
            return;
        }
        match crate::tls::certified_key(stored.chain, stored.key) {
            Ok(ck) => {
                self.shared.certs.install(Arc::new(ck));
                crate::event!(
                    Level::Info,
                    None,
                    "acme: using the stored certificate for {} (valid until {}, renewal at {})",
                    self.cfg.domains.join(", "),
                    cert::rfc3339(info.not_after),
                    cert::rfc3339(info.renew_at())
                );
                self.due = info.renew_at();
                self.current = Some(info);
            }
            Err(e) => crate::event!(Level::Warn, None, "acme: stored certificate: {e}"),
        }
    }

    /// Runs the manager on a thread of its own for the life of the process.
    pub fn spawn(self) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("ocirelay-acme".into())
            .spawn(move || self.run())
    }

    fn run(mut self) {
        let mut failures: u32 = 0;
        let mut attempt: u64 = 0;
        loop {
            if let Ok(wait) = self.due.duration_since(SystemTime::now()) {
                std::thread::sleep(wait.min(WAKE_EVERY));
                continue;
            }
            attempt += 1;
            crate::event!(
                Level::Info,
                None,
                "acme: {} a certificate for {} from {} ({}, attempt {attempt})",
                if self.current.is_some() {
                    "renewing"
                } else {
                    "ordering"
                },
                self.cfg.domains.join(", "),
                self.cfg.directory,
                self.cfg.challenge.as_str()
            );
            match self.obtain() {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    let wait = backoff(failures, jitter()).max(e.retry_after().unwrap_or_default());
                    crate::event!(
                        Level::Warn,
                        None,
                        "acme: attempt {attempt} failed: {e}; next attempt in {}s",
                        wait.as_secs()
                    );
                    std::thread::sleep(wait);
                }
            }
        }
    }

    /// One attempt: account, order, store, install.
    fn obtain(&mut self) -> Result<(), AcmeError> {
        let key = self.store.account_key().map_err(AcmeError::Local)?;
        let mut session = Session::open(&self.cfg.directory, self.tls.clone(), key)?;
        if let Some(tos) = session
            .directory
            .meta
            .as_ref()
            .and_then(|m| m.terms_of_service.as_deref())
        {
            crate::event!(
                Level::Debug,
                None,
                "acme: agreeing to the CA's terms: {tos}"
            );
        }
        session.account(self.cfg.email.as_deref())?;
        let issued = order::issue(
            &mut session,
            &self.shared,
            &self.cfg.domains,
            self.cfg.challenge,
        )?;
        // Kept on disk before it is served: a restart reuses it.
        self.store
            .save_cert(self.cert_name(), &issued.chain_pem, &issued.key_pem)
            .map_err(AcmeError::Local)?;
        let ck = crate::tls::certified_key(issued.chain, issued.key).map_err(AcmeError::Local)?;
        self.shared.certs.install(Arc::new(ck));
        crate::event!(
            Level::Info,
            None,
            "acme: installed a new certificate for {} (valid until {}, renewal at {}), stored in {}",
            self.cfg.domains.join(", "),
            cert::rfc3339(issued.info.not_after),
            cert::rfc3339(issued.info.renew_at()),
            self.store.dir().display()
        );
        self.due = next_due(&issued.info, SystemTime::now());
        self.current = Some(issued.info);
        Ok(())
    }
}

/// When to renew a certificate just issued: at two thirds of its lifetime,
/// or, if the CA made that moment already past (a `notBefore` far back, a
/// lifetime of seconds), after a third of what is left, and never sooner
/// than [`RENEW_GAP`]: not a loop of orders whatever the CA sends.
fn next_due(info: &cert::CertInfo, now: SystemTime) -> SystemTime {
    let left = info.not_after.duration_since(now).unwrap_or_default();
    info.renew_at().max(now + left / 3).max(now + RENEW_GAP)
}

/// The wait after the `failures`th failure in a row: 5 s doubling to an
/// hour, times `jitter` (0.75..1.25) so that mirrors restarted together do
/// not retry together.
fn backoff(failures: u32, jitter: f64) -> Duration {
    let doubled = BACKOFF_FIRST.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    doubled.min(BACKOFF_MAX).mul_f64(jitter)
}

/// A random factor in 0.75..1.25.
fn jitter() -> f64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 2];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    0.75 + f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_certificate_is_renewed_at_two_thirds_never_at_once() {
        let t = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let info = |nb, na| cert::CertInfo {
            not_before: t(nb),
            not_after: t(na),
            dns_names: Vec::new(),
        };
        // 90 days from now: day 60.
        assert_eq!(
            next_due(&info(1000, 1000 + 90 * 86_400), t(1000)),
            t(1000 + 60 * 86_400)
        );
        // Backdated so far that two thirds are past: a third of what is left.
        assert_eq!(next_due(&info(0, 1300), t(1000)), t(1100));
        // Expired on arrival: not a loop of orders either way.
        assert_eq!(next_due(&info(0, 900), t(1000)), t(1005));
    }

    #[test]
    fn backoff_doubles_from_five_seconds_to_an_hour_with_jitter() {
        assert_eq!(backoff(1, 1.0), Duration::from_secs(5));
        assert_eq!(backoff(2, 1.0), Duration::from_secs(10));
        assert_eq!(backoff(5, 1.0), Duration::from_secs(80));
        assert_eq!(backoff(12, 1.0), BACKOFF_MAX);
        assert_eq!(backoff(1000, 1.0), BACKOFF_MAX);
        assert_eq!(backoff(1, 0.75), Duration::from_millis(3750));
        for _ in 0..100 {
            let j = jitter();
            assert!((0.75..=1.25).contains(&j), "{j}");
        }
    }
}
