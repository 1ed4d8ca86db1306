//! One certificate, start to end (RFC 8555 7.4): a new order for the
//! domains, each pending authorization answered with the configured
//! challenge and polled until the CA decides, the order finalized with a
//! CSR for a fresh key, polled until valid, and the chain downloaded and
//! checked against the key and the domains.

use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use super::cert::{self, CertInfo};
use super::challenge::{Presented, Shared};
use super::protocol::{AcmeError, Answer, Problem, Session};
use crate::config::AcmeChallenge;
use crate::wire::base64;

/// How long the CA may take to validate one authorization, or to issue
/// once finalized, before the attempt is given up (and retried later).
const POLL_LIMIT: Duration = Duration::from_secs(180);
/// The first wait between polls when the CA gives no `Retry-After`; it
/// doubles up to [`POLL_MAX`].
const POLL_FIRST: Duration = Duration::from_millis(250);
const POLL_MAX: Duration = Duration::from_secs(5);

/// The status of an order, authorization or challenge (RFC 8555 7.1.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Ready,
    Processing,
    Valid,
    Invalid,
    Deactivated,
    Expired,
    Revoked,
}

#[derive(Debug, Deserialize)]
struct Order {
    status: Status,
    #[serde(default)]
    authorizations: Vec<String>,
    finalize: String,
    certificate: Option<String>,
    error: Option<Problem>,
}

#[derive(Debug, Deserialize)]
struct Authorization {
    status: Status,
    identifier: Identifier,
    #[serde(default)]
    challenges: Vec<Challenge>,
}

#[derive(Debug, Deserialize)]
struct Identifier {
    value: String,
}

#[derive(Debug, Deserialize)]
struct Challenge {
    #[serde(rename = "type")]
    kind: String,
    url: String,
    #[serde(default)]
    token: String,
    error: Option<Problem>,
}

/// A certificate the CA issued, with its new key.
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub info: CertInfo,
}

/// Orders a certificate for `domains`, answering `kind` challenges through
/// `shared`.
pub fn issue(
    session: &mut Session,
    shared: &Shared,
    domains: &[String],
    kind: AcmeChallenge,
) -> Result<Issued, AcmeError> {
    let identifiers: Vec<_> = domains
        .iter()
        .map(|d| serde_json::json!({"type": "dns", "value": d}))
        .collect();
    let new_order = session.directory.new_order.clone();
    let answer = session.post(
        &new_order,
        &serde_json::json!({ "identifiers": identifiers }).to_string(),
    )?;
    let order_url = answer.location()?;
    let order: Order = answer.json()?;
    for authz in &order.authorizations {
        authorize(session, shared, authz, kind)?;
    }

    // Finalize with a CSR for a new key (never the account's).
    let key = rcgen::KeyPair::generate().map_err(|e| local("certificate key", e))?;
    let mut params =
        rcgen::CertificateParams::new(domains.to_vec()).map_err(|e| local("CSR", e))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, domains[0].as_str());
    let csr = params
        .serialize_request(&key)
        .map_err(|e| local("CSR", e))?;
    let order = poll(session, &order_url, "order", |o: &Order| {
        o.status != Status::Pending
    })?;
    if order.status != Status::Ready {
        return Err(invalid_order(&order_url, order));
    }
    session.post(
        &order.finalize,
        &serde_json::json!({ "csr": base64::url(csr.der()) }).to_string(),
    )?;
    let order = poll(session, &order_url, "order", |o: &Order| {
        !matches!(o.status, Status::Ready | Status::Processing)
    })?;
    let Some(cert_url) = order
        .certificate
        .clone()
        .filter(|_| order.status == Status::Valid)
    else {
        return Err(invalid_order(&order_url, order));
    };

    let answer = session.fetch_pem(&cert_url)?;
    let chain_pem = String::from_utf8(answer.body.clone()).map_err(|_| AcmeError::Malformed {
        url: cert_url.clone(),
        why: "the certificate chain is not PEM text".into(),
    })?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| AcmeError::Malformed {
            url: cert_url.clone(),
            why: format!("bad PEM: {e}"),
        })?;
    let leaf = chain.first().ok_or_else(|| AcmeError::Malformed {
        url: cert_url.clone(),
        why: "no certificate in the chain".into(),
    })?;
    let info = cert::parse(leaf).map_err(|why| AcmeError::Malformed {
        url: cert_url.clone(),
        why,
    })?;
    if !info.covers(domains) {
        return Err(AcmeError::Malformed {
            url: cert_url,
            why: format!(
                "the certificate names {:?}, not all of {domains:?}",
                info.dns_names
            ),
        });
    }
    let key_der = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| local("key", e))?;
    crate::tls::certified_key(chain.clone(), key_der.clone_key()).map_err(AcmeError::Local)?;
    Ok(Issued {
        chain_pem,
        key_pem: key.serialize_pem(),
        chain,
        key: key_der,
        info,
    })
}

/// Gets one authorization to `valid`: answers its `kind` challenge, tells
/// the CA to validate, and waits for the verdict.
fn authorize(
    session: &mut Session,
    shared: &Shared,
    url: &str,
    kind: AcmeChallenge,
) -> Result<(), AcmeError> {
    let authz: Authorization = session.fetch(url)?.json()?;
    match authz.status {
        // Reused from an earlier order (RFC 8555 7.1.4).
        Status::Valid => return Ok(()),
        Status::Pending => {}
        _ => {
            return Err(AcmeError::Invalid {
                what: format!("authorization for {}", authz.identifier.value),
                problem: None,
            })
        }
    }
    let domain = authz.identifier.value.clone();
    let challenge = authz
        .challenges
        .iter()
        .find(|c| c.kind == kind.as_str())
        .ok_or_else(|| AcmeError::NoChallenge {
            domain: domain.clone(),
            kind: kind.as_str(),
        })?;
    let key_authorization = session.key.key_authorization(&challenge.token);
    // Withdrawn when this function returns, whatever the outcome.
    let _presented: Presented<'_> = match kind {
        AcmeChallenge::Http01 => shared.present_http01(&challenge.token, key_authorization),
        AcmeChallenge::TlsAlpn01 => shared
            .present_tls_alpn01(&domain, &key_authorization)
            .map_err(AcmeError::Local)?,
    };
    let challenge_url = challenge.url.clone();
    session.post(&challenge_url, "{}")?;
    let done = poll(session, url, "authorization", |a: &Authorization| {
        a.status != Status::Pending
    })?;
    if done.status == Status::Valid {
        return Ok(());
    }
    Err(AcmeError::Invalid {
        what: format!("{} validation of {domain}", kind.as_str()),
        problem: done
            .challenges
            .into_iter()
            .find(|c| c.kind == kind.as_str())
            .and_then(|c| c.error),
    })
}

/// POST-as-GETs `url` until `done` says so, waiting as the CA's
/// `Retry-After` asks (else 250 ms doubling to 5 s), at most
/// [`POLL_LIMIT`].
fn poll<T: serde::de::DeserializeOwned>(
    session: &mut Session,
    url: &str,
    what: &str,
    done: impl Fn(&T) -> bool,
) -> Result<T, AcmeError> {
    let deadline = Instant::now() + POLL_LIMIT;
    let mut wait = POLL_FIRST;
    loop {
        let answer: Answer = session.fetch(url)?;
        let value: T = answer.json()?;
        if done(&value) {
            return Ok(value);
        }
        let pause = answer.retry_after.unwrap_or(wait).min(POLL_LIMIT);
        if Instant::now() + pause > deadline {
            return Err(AcmeError::TimedOut(format!("{what} {url}")));
        }
        std::thread::sleep(pause);
        wait = (wait * 2).min(POLL_MAX);
    }
}

fn invalid_order(url: &str, order: Order) -> AcmeError {
    AcmeError::Invalid {
        what: format!("order {url} ({:?})", order.status),
        problem: order.error,
    }
}

fn local(what: &str, e: impl std::fmt::Display) -> AcmeError {
    AcmeError::Local(format!("{what}: {e}"))
}
