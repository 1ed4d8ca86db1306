//! `ocirelay cache warm IMAGE...`: pulls images through a running mirror,
//! as docker would, so that the mirror's cache holds them before anyone
//! asks (every platform of a multi-platform image).
//!
//! It goes through the mirror, never into the cache directory, because the
//! mirror is the one process that owns the directory and learns from each
//! pull: which repositories link which blobs, which are anonymously
//! pullable, what a tag points at. Writing files beside it would skip all
//! of that.
//!
//! A blocking `std::net` client: an operator's tool, not the data path.
//! Every body is checked against its digest here too (the mirror already
//! checks; this makes the report honest), streamed through a fixed buffer,
//! never held whole, except manifests (at most 4 MiB, the mirror's limit).
//!
//! Here: the command (options, errors, reports) and the walk of one image;
//! `reference` reads image names and the mirror's address, `client` is the
//! HTTP/1.1 client, `manifest` the manifest documents the walk follows.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rustls::ClientConfig;
use serde::Deserialize;

use super::manifests::MAX_MANIFEST;
use crate::blocking::http::{Client, Head, MAX_SMALL_BODY};
use crate::config::human_size;
use crate::wire::challenge::{basic_authorization, bearer_realm, parse_challenge, percent_encode};
use crate::wire::digest::{sha256_digest, Verifier};
use crate::wire::http::RespFraming;
use crate::wire::names::Digest;
use crate::wire::oci::FULL_ACCEPT;
use crate::wire::url::{Origin, Url};

mod manifest;
mod reference;

use manifest::{walk, Walk};
use reference::ImageRef;
pub use reference::{default_mirror, parse_mirror};

/// Blobs fetched at once per image: enough to overlap the mirror's upstream
/// round trips, few enough not to look like a flood to the upstream.
const PARALLEL: usize = 4;
/// An index inside an index is allowed once more; deeper is not an image.
const MAX_DEPTH: usize = 2;

/// What the command was given.
pub struct Options {
    /// The mirror, `http(s)://host:port`.
    pub mirror: Url,
    /// Extra CA certificates (PEM) to trust for `https://`, besides the web
    /// PKI roots (the same trust as the mirror's upstream connections).
    pub ca_file: Option<PathBuf>,
    /// `USER:PASSWORD` for the mirror's token endpoint (private images).
    pub user: Option<String>,
}

/// What went wrong, with what it happened to.
#[derive(Debug)]
pub enum WarmError {
    /// IMAGE is not a reference docker would accept.
    Reference { image: String, reason: String },
    /// No usable mirror address (from `--mirror` or the config).
    Mirror(String),
    /// Nothing answered at the mirror's address.
    Unreachable { mirror: String, source: io::Error },
    /// The CA file could not be used.
    Tls(String),
    /// `--user` (or `OCIRELAY_WARM_AUTH`) is not `USER:PASSWORD`.
    User(String),
    /// The connection failed while fetching `object`.
    Io { object: String, source: io::Error },
    /// The mirror answered `status` for `object`; `detail` is the OCI error
    /// code and message, when it sent one.
    Status {
        object: String,
        status: u16,
        detail: String,
    },
    /// The bytes of `object` do not match its digest or announced size.
    Mismatch { object: String, what: String },
    /// `object` is not a manifest this command can follow.
    Manifest { object: String, reason: String },
    /// The token endpoint the mirror's challenge named did not give a token.
    Token { realm: String, reason: String },
}

impl fmt::Display for WarmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WarmError::Reference { image, reason } => {
                write!(f, "{image:?} is not an image reference: {reason}")
            }
            WarmError::Mirror(why) => f.write_str(why),
            WarmError::Unreachable { mirror, source } => write!(
                f,
                "no mirror answers at {mirror} ({source}); is ocirelay running there? \
                 Name it with --mirror http://HOST:PORT"
            ),
            WarmError::Tls(why) => write!(f, "TLS: {why}"),
            WarmError::User(why) => write!(f, "--user (or OCIRELAY_WARM_AUTH): {why}"),
            WarmError::Io { object, source } => write!(f, "{object}: {source}"),
            WarmError::Status {
                object,
                status,
                detail,
            } => {
                write!(f, "{object}: the mirror answered {status}")?;
                if !detail.is_empty() {
                    write!(f, " {detail}")?;
                }
                if *status == 401 {
                    f.write_str(" (private? give credentials with --user or OCIRELAY_WARM_AUTH)")?;
                }
                Ok(())
            }
            WarmError::Mismatch { object, what } => write!(f, "{object}: {what}"),
            WarmError::Manifest { object, reason } => write!(f, "{object}: {reason}"),
            WarmError::Token { realm, reason } => write!(f, "token from {realm}: {reason}"),
        }
    }
}

impl std::error::Error for WarmError {}

/// The OCI error body's first code and message, if the body is one.
fn error_detail(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<OciError>,
    }
    #[derive(Deserialize)]
    struct OciError {
        code: String,
        #[serde(default)]
        message: String,
    }
    serde_json::from_slice::<Errors>(body)
        .ok()
        .and_then(|e| e.errors.into_iter().next())
        .map(|e| format!("{} ({})", e.code, e.message))
        .unwrap_or_default()
}

// ---- warming ----

/// What one image came to.
#[derive(Debug)]
pub struct ImageReport {
    pub image: String,
    pub manifests: usize,
    pub blobs: usize,
    /// Blob bytes fetched and verified.
    pub bytes: u64,
    /// Foreign (non-distributable) layers passed over.
    pub skipped: usize,
    pub failures: Vec<WarmError>,
}

impl ImageReport {
    /// `docker.io/library/alpine:3.19: 1 manifest, 3 blobs (3.4 MiB), 0 failed`
    pub fn line(&self) -> String {
        let mut s = format!(
            "{}: {}, {} ({}), {} failed",
            self.image,
            plural(self.manifests, "manifest"),
            plural(self.blobs, "blob"),
            human_size(self.bytes),
            self.failures.len()
        );
        if self.skipped > 0 {
            s.push_str(&format!(", {} skipped (foreign)", self.skipped));
        }
        s
    }
}

/// The whole command's outcome.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub images: usize,
    /// Images whose every object was fetched and verified.
    pub complete: usize,
    pub manifests: usize,
    pub blobs: usize,
    pub bytes: u64,
    pub failed: usize,
}

impl Summary {
    pub fn line(&self) -> String {
        format!(
            "warmed {} of {}: {}, {} ({}), {} failed",
            self.complete,
            plural(self.images, "image"),
            plural(self.manifests, "manifest"),
            plural(self.blobs, "blob"),
            human_size(self.bytes),
            self.failed
        )
    }
}

fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

/// Warms `images` through the mirror, calling `each` as each one is done.
/// `Err` only for what stops everything before the first request: a bad
/// reference (nothing is fetched until all are valid), credentials that are
/// not `USER:PASSWORD`, an unusable CA file, a mirror that does not answer.
pub fn run(
    opts: &Options,
    images: &[String],
    mut each: impl FnMut(&ImageReport),
) -> Result<Summary, WarmError> {
    let refs = images
        .iter()
        .map(|i| ImageRef::parse(i))
        .collect::<Result<Vec<_>, _>>()?;
    let basic = opts.user.as_deref().map(basic_credentials).transpose()?;
    let extra = match &opts.ca_file {
        Some(p) => crate::tls::config::load_certs(p).map_err(|e| WarmError::Tls(e.to_string()))?,
        None => Vec::new(),
    };
    let tls = crate::tls::config::client_config(&extra).map_err(WarmError::Tls)?;
    let warmer = Warmer {
        origin: opts.mirror.origin.clone(),
        tls,
        basic,
    };
    let mut client = warmer.client();
    client.connect().map_err(|source| WarmError::Unreachable {
        mirror: opts.mirror.origin.to_string(),
        source,
    })?;
    let mut sum = Summary::default();
    for r in &refs {
        let report = warmer.image(&mut client, r);
        sum.images += 1;
        sum.complete += usize::from(report.failures.is_empty());
        sum.manifests += report.manifests;
        sum.blobs += report.blobs;
        sum.bytes += report.bytes;
        sum.failed += report.failures.len();
        each(&report);
    }
    Ok(sum)
}

struct Warmer {
    origin: Origin,
    tls: Arc<ClientConfig>,
    /// `Basic <base64>` for the token endpoint.
    basic: Option<String>,
}

/// A blob still to fetch.
struct Blob {
    digest: String,
    size: Option<u64>,
}

impl Warmer {
    fn client(&self) -> Client {
        Client::new(self.origin.clone(), self.tls.clone())
    }

    /// One image: its manifests, breadth first, then its blobs.
    fn image(&self, client: &mut Client, img: &ImageRef) -> ImageReport {
        let mut report = ImageReport {
            image: img.to_string(),
            manifests: 0,
            blobs: 0,
            bytes: 0,
            skipped: 0,
            failures: Vec::new(),
        };
        // One token per image (its scope is the repository), shared by the
        // blob threads and replaced when the mirror challenges again.
        let token = Mutex::new(None);
        // Within one image only: the mirror learns per repository which
        // blobs it may serve, so a blob shared with another image's
        // repository is fetched through that one too.
        let mut seen = HashSet::new();
        let mut blobs = Vec::new();
        let mut queue = VecDeque::from([(img.reference.clone(), 0)]);
        while let Some((reference, depth)) = queue.pop_front() {
            let object = format!("manifest {reference}");
            let found = self.manifest(client, img, &reference, &token);
            let (content_type, bytes) = match found {
                Ok(m) => m,
                Err(e) => {
                    report.failures.push(e);
                    continue;
                }
            };
            report.manifests += 1;
            let children = match walk(content_type.as_deref(), &bytes) {
                Ok(w) => w,
                Err(reason) => {
                    report.failures.push(WarmError::Manifest { object, reason });
                    continue;
                }
            };
            let (descriptors, is_index) = match children {
                Walk::Index(_) if depth >= MAX_DEPTH => {
                    report.failures.push(WarmError::Manifest {
                        object,
                        reason: "indexes nested too deep".into(),
                    });
                    continue;
                }
                Walk::Index(ds) => (ds, true),
                Walk::Image(ds) => (ds, false),
            };
            for d in descriptors {
                if Digest::parse(&d.digest).is_err() {
                    report.failures.push(WarmError::Manifest {
                        object: object.clone(),
                        reason: format!("names an invalid digest {:?}", d.digest),
                    });
                } else if !seen.insert(d.digest.clone()) {
                    // Named twice (a layer repeated, a platform listed
                    // twice): fetched once.
                } else if is_index {
                    queue.push_back((d.digest, depth + 1));
                } else if d.foreign() {
                    report.skipped += 1;
                } else {
                    blobs.push(Blob {
                        digest: d.digest,
                        size: d.size,
                    });
                }
            }
        }
        for r in self.blobs(client, img, &blobs, &token) {
            match r {
                Ok(n) => {
                    report.blobs += 1;
                    report.bytes += n;
                }
                Err(e) => report.failures.push(e),
            }
        }
        report
    }

    /// GET with the image's token; on a 401, a token from the challenge's
    /// realm and once more. Any answer but 200 is an error, with the OCI
    /// error code and message of its body.
    fn get(
        &self,
        client: &mut Client,
        target: &str,
        accept: Option<&str>,
        token: &Mutex<Option<String>>,
        object: &str,
    ) -> Result<Head, WarmError> {
        let mut renewed = false;
        loop {
            let bearer = token
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .map(|t| format!("Bearer {t}"));
            let mut headers = Vec::with_capacity(2);
            if let Some(a) = accept {
                headers.push(("Accept", a));
            }
            if let Some(b) = &bearer {
                headers.push(("Authorization", b.as_str()));
            }
            let io = |source| WarmError::Io {
                object: object.to_string(),
                source,
            };
            let head = client.get(target, &headers).map_err(io)?;
            if head.status == 401 && !renewed {
                let challenge = head.header("www-authenticate").map(<[u8]>::to_vec);
                client.skip(&head);
                let fresh = self.token(challenge.as_deref())?;
                *token.lock().unwrap_or_else(PoisonError::into_inner) = Some(fresh);
                renewed = true;
                continue;
            }
            if head.status == 200 {
                return Ok(head);
            }
            let body = client.small_body(&head, MAX_SMALL_BODY).map_err(io)?;
            return Err(WarmError::Status {
                object: object.to_string(),
                status: head.status,
                detail: error_detail(&body),
            });
        }
    }

    /// A token from the realm of the mirror's challenge: anonymous, as
    /// docker asks (which is how the mirror learns what is public), or with
    /// `--user` when the realm is the mirror's own.
    fn token(&self, challenge: Option<&[u8]>) -> Result<String, WarmError> {
        let fail = |realm: &str, reason: String| WarmError::Token {
            realm: realm.to_string(),
            reason,
        };
        let ch = challenge
            .and_then(parse_challenge)
            .ok_or_else(|| fail("-", "the mirror answered 401 without a challenge".into()))?;
        let (realm, service) = bearer_realm(&ch).ok_or_else(|| {
            fail(
                "-",
                "the mirror's challenge is not Bearer with a realm URL".into(),
            )
        })?;
        let shown = realm.to_string();
        let mut target = realm.path_and_query.clone();
        let mut sep = if target.contains('?') { '&' } else { '?' };
        for (key, value) in [
            ("service", service.as_deref()),
            ("scope", ch.param("scope")),
        ] {
            if let Some(v) = value {
                target.push(sep);
                target.push_str(key);
                target.push('=');
                percent_encode(v, &mut target);
                sep = '&';
            }
        }
        // Credentials are for the mirror's own token endpoint: a realm
        // elsewhere is not sent them.
        let basic = self
            .basic
            .as_deref()
            .filter(|_| realm.origin == self.origin);
        let headers: Vec<(&str, &str)> = basic.map(|b| ("Authorization", b)).into_iter().collect();
        let mut client = Client::new(realm.origin.clone(), self.tls.clone());
        let head = client
            .get(&target, &headers)
            .map_err(|e| fail(&shown, e.to_string()))?;
        let body = client
            .small_body(&head, MAX_SMALL_BODY)
            .map_err(|e| fail(&shown, e.to_string()))?;
        if head.status != 200 {
            let detail = error_detail(&body);
            return Err(fail(&shown, format!("answered {} {detail}", head.status)));
        }
        #[derive(Deserialize)]
        struct Answer {
            token: Option<String>,
            access_token: Option<String>,
        }
        let a: Answer = serde_json::from_slice(&body)
            .map_err(|e| fail(&shown, format!("not a token answer: {e}")))?;
        a.token
            .or(a.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| fail(&shown, "no token in the answer".into()))
    }

    /// A manifest's content type and bytes, checked against its digest: the
    /// reference's, or for a tag the `Docker-Content-Digest` the mirror
    /// sent.
    fn manifest(
        &self,
        client: &mut Client,
        img: &ImageRef,
        reference: &str,
        token: &Mutex<Option<String>>,
    ) -> Result<(Option<String>, Vec<u8>), WarmError> {
        let object = format!("manifest {reference}");
        let head = self.get(
            client,
            &img.path("manifests", reference),
            Some(FULL_ACCEPT),
            token,
            &object,
        )?;
        if let RespFraming::Length(n) = head.framing {
            if n > MAX_MANIFEST as u64 {
                client.skip(&head);
                return Err(WarmError::Manifest {
                    object,
                    reason: format!("{n} bytes, more than the {MAX_MANIFEST} a manifest may have"),
                });
            }
        }
        let mut bytes = Vec::new();
        let whole = client
            .body(&head, &mut |d| {
                bytes.extend_from_slice(d);
                bytes.len() <= MAX_MANIFEST
            })
            .map_err(|source| WarmError::Io {
                object: object.clone(),
                source,
            })?;
        if !whole {
            return Err(WarmError::Manifest {
                object,
                reason: format!("more than the {MAX_MANIFEST} bytes a manifest may have"),
            });
        }
        let named = if reference.contains(':') {
            Some(reference.to_string())
        } else {
            head.header_str("docker-content-digest").map(str::to_string)
        };
        // A tag answered without a digest header is named by its own bytes:
        // there is nothing to check it against.
        let digest = named.unwrap_or_else(|| sha256_digest(&bytes));
        let mut v = verifier(&digest, &object)?;
        v.update(&bytes);
        if !v.matches() {
            return Err(WarmError::Mismatch {
                object,
                what: format!("the bytes do not match {digest}"),
            });
        }
        Ok((head.header_str("content-type").map(str::to_string), bytes))
    }

    /// The blobs, up to [`PARALLEL`] at a time (each thread its own
    /// connection), results in the order given.
    fn blobs(
        &self,
        client: &mut Client,
        img: &ImageRef,
        blobs: &[Blob],
        token: &Mutex<Option<String>>,
    ) -> Vec<Result<u64, WarmError>> {
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<Result<u64, WarmError>>>> =
            Mutex::new((0..blobs.len()).map(|_| None).collect());
        let work = |c: &mut Client| loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(b) = blobs.get(i) else { break };
            let r = self.blob(c, img, b, token);
            results.lock().unwrap_or_else(PoisonError::into_inner)[i] = Some(r);
        };
        std::thread::scope(|s| {
            for _ in 1..PARALLEL.min(blobs.len()) {
                s.spawn(|| work(&mut self.client()));
            }
            work(client);
        });
        results
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .into_iter()
            .flatten()
            .collect()
    }

    /// One blob, streamed into its digest check; the bytes it had.
    fn blob(
        &self,
        client: &mut Client,
        img: &ImageRef,
        blob: &Blob,
        token: &Mutex<Option<String>>,
    ) -> Result<u64, WarmError> {
        let object = format!("blob {}", blob.digest);
        let mut v = verifier(&blob.digest, &object)?;
        let head = self.get(
            client,
            &img.path("blobs", &blob.digest),
            None,
            token,
            &object,
        )?;
        let mut n = 0u64;
        client
            .body(&head, &mut |d| {
                v.update(d);
                n += d.len() as u64;
                true
            })
            .map_err(|source| WarmError::Io {
                object: object.clone(),
                source,
            })?;
        let mismatch = |what| WarmError::Mismatch {
            object: object.clone(),
            what,
        };
        if let Some(size) = blob.size.filter(|&s| s != n) {
            return Err(mismatch(format!("{n} bytes, the manifest says {size}")));
        }
        if !v.matches() {
            return Err(mismatch(format!("the bytes do not match {}", blob.digest)));
        }
        Ok(n)
    }
}

/// A digest check for `digest`; an error for algorithms that cannot be
/// checked (a warm that cannot vouch for what it fetched is not reported as
/// done).
fn verifier(digest: &str, object: &str) -> Result<Verifier, WarmError> {
    Digest::parse(digest)
        .ok()
        .and_then(|d| Verifier::new(&d))
        .ok_or_else(|| WarmError::Mismatch {
            object: object.to_string(),
            what: format!("cannot check {digest:?} (only sha256 and sha512 digests)"),
        })
}

/// The `Authorization` value for `USER:PASSWORD`, split at the first `:`
/// (a password may hold more). As docker reads the `auth` of its
/// config.json: no `:`, or no user before it, is an error, not a user with
/// an empty password. The value itself is never in the message.
fn basic_credentials(user_pass: &str) -> Result<String, WarmError> {
    match user_pass.split_once(':') {
        Some((user, password)) if !user.is_empty() => {
            let header = basic_authorization(user, password);
            // Base64 after `Basic `: ASCII, nothing is lost.
            Ok(String::from_utf8_lossy(&header).into_owned())
        }
        Some(_) => Err(WarmError::User(
            "no user before the ':' (give USER:PASSWORD)".into(),
        )),
        None => Err(WarmError::User(
            "no ':' between user and password (give USER:PASSWORD)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_written_as_servers_expect() {
        assert_eq!(
            basic_credentials("alice:wonderland").unwrap(),
            "Basic YWxpY2U6d29uZGVybGFuZA=="
        );
        // Split at the first ':': the password keeps the others.
        assert_eq!(basic_credentials("a:b:c").unwrap(), "Basic YTpiOmM=");
        assert_eq!(basic_credentials("a:").unwrap(), "Basic YTo=");
        for bad in ["s3cret", ":s3cret", ""] {
            let e = basic_credentials(bad).unwrap_err().to_string();
            assert!(e.contains("USER:PASSWORD"), "{bad:?}: {e}");
            assert!(bad.is_empty() || !e.contains(bad), "{e} shows the secret");
        }
    }
}
