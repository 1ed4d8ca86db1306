//! The ACME protocol's requests (RFC 8555), blocking, over
//! [`crate::blocking::http`]: the directory, nonces (with `badNonce`
//! retries), signed POSTs and POST-as-GETs, the CA's problem documents, and
//! polling with `Retry-After`. What the requests mean for a certificate is
//! `order.rs`.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::ClientConfig;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::jws::{AccountKey, Signer};
use crate::blocking::http;
use crate::wire::url::Url;

/// ACME answers are small JSON and PEM chains; more is not read.
const MAX_BODY: usize = 1 << 20;
/// A `badNonce` answer is retried this many times with the nonce it
/// carries (RFC 8555 6.5: the error is meant to be retried).
const NONCE_RETRIES: usize = 5;

/// The CA's directory (RFC 8555 7.1.1).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Directory {
    pub new_nonce: String,
    pub new_account: String,
    pub new_order: String,
    #[serde(default)]
    pub meta: Option<Meta>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    pub terms_of_service: Option<String>,
}

/// A problem document (RFC 7807) as the CA sent it.
#[derive(Debug, Clone, Deserialize)]
pub struct Problem {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub detail: String,
}

impl Problem {
    /// The ACME error name (`badNonce`, `rateLimited`, ...).
    pub fn acme_error(&self) -> &str {
        self.kind
            .strip_prefix("urn:ietf:params:acme:error:")
            .unwrap_or(&self.kind)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.acme_error(), self.detail)
    }
}

/// What can go wrong talking to the CA.
#[derive(Debug)]
pub enum AcmeError {
    /// No answer: connection, TLS or read failure.
    Io { url: String, source: io::Error },
    /// The CA answered with an error document.
    Problem {
        url: String,
        status: u16,
        problem: Problem,
        retry_after: Option<Duration>,
    },
    /// An answer that is not what RFC 8555 says it is.
    Malformed { url: String, why: String },
    /// An authorization or order the CA declared invalid.
    Invalid {
        what: String,
        problem: Option<Problem>,
    },
    /// The CA offers no challenge of the configured type for a domain.
    NoChallenge { domain: String, kind: &'static str },
    /// The CA did not finish in the time allowed.
    TimedOut(String),
    /// A local failure: keys, CSR, the certificate store on disk.
    Local(String),
}

impl AcmeError {
    /// How long the CA asked us to wait before trying again, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AcmeError::Problem { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl fmt::Display for AcmeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcmeError::Io { url, source } => write!(f, "{url}: {source}"),
            AcmeError::Problem {
                url,
                status,
                problem,
                ..
            } => write!(f, "{url}: {status} {problem}"),
            AcmeError::Malformed { url, why } => write!(f, "{url}: unexpected answer: {why}"),
            AcmeError::Invalid { what, problem } => match problem {
                Some(p) => write!(f, "{what} is invalid: {p}"),
                None => write!(f, "{what} is invalid"),
            },
            AcmeError::NoChallenge { domain, kind } => {
                write!(f, "the CA offers no {kind} challenge for {domain}")
            }
            AcmeError::TimedOut(what) => write!(f, "{what}: the CA took too long"),
            AcmeError::Local(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for AcmeError {}

/// One answer of the CA.
pub struct Answer {
    pub status: u16,
    pub location: Option<String>,
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
    url: String,
}

impl Answer {
    /// The body as `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, AcmeError> {
        serde_json::from_slice(&self.body).map_err(|e| AcmeError::Malformed {
            url: self.url.clone(),
            why: format!("{e}"),
        })
    }

    /// The `Location` header, which this answer must have.
    pub fn location(&self) -> Result<String, AcmeError> {
        self.location.clone().ok_or_else(|| AcmeError::Malformed {
            url: self.url.clone(),
            why: "no Location header".into(),
        })
    }
}

/// A session with one CA under one account key.
pub struct Session {
    tls: Arc<ClientConfig>,
    /// One kept-alive connection per origin the CA's URLs name.
    conns: Vec<http::Client>,
    pub directory: Directory,
    pub key: AccountKey,
    /// The account URL, once `newAccount` answered.
    kid: Option<String>,
    nonce: Option<String>,
}

impl Session {
    /// Reads the directory at `url`.
    pub fn open(url: &Url, tls: Arc<ClientConfig>, key: AccountKey) -> Result<Session, AcmeError> {
        let mut s = Session {
            tls,
            conns: Vec::new(),
            directory: Directory {
                new_nonce: String::new(),
                new_account: String::new(),
                new_order: String::new(),
                meta: None,
            },
            key,
            kid: None,
            nonce: None,
        };
        let answer = s.send("GET", &url.to_string(), &[], b"")?;
        if answer.status != 200 {
            return Err(AcmeError::Malformed {
                url: url.to_string(),
                why: format!("status {} for the directory", answer.status),
            });
        }
        s.directory = answer.json()?;
        Ok(s)
    }

    /// Finds or creates the account of this key (RFC 8555 7.3), agreeing to
    /// the CA's terms of service, which configuring `[acme]` means.
    pub fn account(&mut self, email: Option<&str>) -> Result<String, AcmeError> {
        let mut payload = serde_json::json!({ "termsOfServiceAgreed": true });
        // No `contact` at all without an address: an empty list is not one.
        if let Some(e) = email {
            payload["contact"] = serde_json::json!([format!("mailto:{e}")]);
        }
        let payload = payload.to_string();
        let url = self.directory.new_account.clone();
        let answer = self.post(&url, &payload)?;
        let kid = answer.location()?;
        self.kid = Some(kid.clone());
        Ok(kid)
    }

    /// A signed POST of JSON `payload` to `url` (the account must exist).
    pub fn post(&mut self, url: &str, payload: &str) -> Result<Answer, AcmeError> {
        self.signed(url, payload, &[])
    }

    /// A POST-as-GET of `url` (RFC 8555 6.3).
    pub fn fetch(&mut self, url: &str) -> Result<Answer, AcmeError> {
        self.signed(url, "", &[])
    }

    /// A POST-as-GET of a certificate chain in PEM.
    pub fn fetch_pem(&mut self, url: &str) -> Result<Answer, AcmeError> {
        self.signed(url, "", &[("Accept", "application/pem-certificate-chain")])
    }

    /// Signs and sends; a `badNonce` answer is retried with a fresh nonce.
    fn signed(
        &mut self,
        url: &str,
        payload: &str,
        extra: &[(&str, &str)],
    ) -> Result<Answer, AcmeError> {
        let mut tries = 0;
        loop {
            let nonce = self.take_nonce()?;
            let signer = match &self.kid {
                Some(kid) => Signer::Kid(kid),
                None => Signer::Jwk,
            };
            let body = self
                .key
                .sign(signer, &nonce, url, payload)
                .map_err(AcmeError::Local)?;
            let mut headers = vec![("Content-Type", "application/jose+json")];
            headers.extend_from_slice(extra);
            let answer = self.send("POST", url, &headers, body.as_bytes())?;
            if answer.status < 400 {
                return Ok(answer);
            }
            let problem: Problem = answer.json().unwrap_or_else(|_| Problem {
                kind: String::new(),
                detail: String::from_utf8_lossy(&answer.body).into_owned(),
            });
            if problem.acme_error() == "badNonce" && tries < NONCE_RETRIES {
                tries += 1;
                continue;
            }
            return Err(AcmeError::Problem {
                url: url.to_string(),
                status: answer.status,
                problem,
                retry_after: answer.retry_after,
            });
        }
    }

    /// The nonce of the last answer, or a new one from `newNonce`.
    fn take_nonce(&mut self) -> Result<String, AcmeError> {
        if let Some(n) = self.nonce.take() {
            return Ok(n);
        }
        let url = self.directory.new_nonce.clone();
        self.send("HEAD", &url, &[], b"")?;
        self.nonce.take().ok_or_else(|| AcmeError::Malformed {
            url,
            why: "no Replay-Nonce header".into(),
        })
    }

    /// One exchange; keeps the answer's `Replay-Nonce` for the next POST.
    fn send(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer, AcmeError> {
        let io = |source: io::Error| AcmeError::Io {
            url: url.to_string(),
            source,
        };
        let parsed = Url::parse(url).map_err(|e| AcmeError::Malformed {
            url: url.to_string(),
            why: format!("{e}"),
        })?;
        let i = match self.conns.iter().position(|c| *c.origin() == parsed.origin) {
            Some(i) => i,
            None => {
                self.conns
                    .push(http::Client::new(parsed.origin.clone(), self.tls.clone()));
                self.conns.len() - 1
            }
        };
        let conn = &mut self.conns[i];
        let head = conn
            .request(method, &parsed.path_and_query, headers, body)
            .map_err(io)?;
        let body = conn.small_body(&head, MAX_BODY).map_err(io)?;
        if let Some(n) = head.header_str("replay-nonce") {
            self.nonce = Some(n.to_string());
        }
        let location = head.header_str("location").map(|l| {
            // Relative references are resolved against the request URL.
            parsed
                .join(l)
                .map_or_else(|_| l.to_string(), |u| u.to_string())
        });
        Ok(Answer {
            status: head.status,
            location,
            retry_after: head
                .header_str("retry-after")
                .and_then(|v| retry_after(v, SystemTime::now())),
            body,
            url: url.to_string(),
        })
    }
}

/// `Retry-After` (RFC 9110 10.2.3): delay-seconds or an IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`), as a wait from `now`.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let parts: Vec<&str> = v.split_whitespace().collect();
    let [_, day, month, year, hms, "GMT"] = parts.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| m == month)? as u32 + 1;
    let mut t = hms.split(':').map(|x| x.parse::<u32>().ok());
    let (h, m, s) = (t.next()??, t.next()??, t.next()??);
    let at = super::cert::unix_seconds(year.parse().ok()?, month, day.parse().ok()?, h, m, s)?;
    let at = UNIX_EPOCH + Duration::from_secs(at);
    Some(at.duration_since(now).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // 08:49:37
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("Sun, 06 Nov 1994 08:50:37 CET", now), None);
    }

    #[test]
    fn problems_name_their_acme_error() {
        let p: Problem = serde_json::from_str(
            r#"{"type":"urn:ietf:params:acme:error:badNonce","detail":"stale","status":400}"#,
        )
        .unwrap();
        assert_eq!(p.acme_error(), "badNonce");
        assert_eq!(p.to_string(), "badNonce: stale");
    }
}
