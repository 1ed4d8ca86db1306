//! Classifies a request into a [`Route`] on borrowed slices of the request
//! head: no allocation, no copying. Which upstream registry serves it is
//! decided later (see `registry.rs`); this only understands the URL shape.

use crate::ops::summary::RouteKind;
use crate::wire::method::Method;
use crate::wire::names::{Digest, NameError, Reference, RepoName};

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// `GET /`: the landing page for people.
    Landing,
    /// `GET /healthz`: liveness for load balancers.
    Health,
    /// `GET /.well-known/acme-challenge/<token>`: a CA validating a domain
    /// by HTTP-01 (RFC 8555 8.3). The token is base64url.
    AcmeChallenge {
        token: &'a str,
    },
    /// `GET /readyz`: readiness (listeners, cache, certificates, upstreams).
    Ready,
    /// `GET /metrics`: Prometheus metrics, on the listener that serves them.
    Metrics,
    /// `/v2/`: the API version check (and the first 401 challenge).
    Ping,
    /// ocirelay's own token endpoint: `/token` or `/token/<registry>`.
    Token {
        registry: Option<&'a str>,
    },
    Manifest {
        repo: RepoName<'a>,
        reference: Reference<'a>,
    },
    Blob {
        repo: RepoName<'a>,
        digest: Digest<'a>,
    },
    Tags {
        repo: RepoName<'a>,
    },
    Referrers {
        repo: RepoName<'a>,
        digest: Digest<'a>,
    },
    /// Uploads, deletes, any write: this is a read-only mirror.
    Push,
    /// `/v2/_catalog`: not offered by a mirror.
    Catalog,
    /// A registry path whose name, tag or digest breaks the grammar.
    Invalid(NameError),
    /// Anything else.
    NotFound,
}

impl Route<'_> {
    /// What kind of route it is, for logs and metrics.
    pub fn kind(&self) -> RouteKind {
        match self {
            Route::Landing => RouteKind::Landing,
            Route::Health => RouteKind::Health,
            Route::AcmeChallenge { .. } => RouteKind::AcmeChallenge,
            Route::Ready => RouteKind::Ready,
            Route::Metrics => RouteKind::Metrics,
            Route::Ping => RouteKind::Ping,
            Route::Token { .. } => RouteKind::Token,
            Route::Manifest { .. } => RouteKind::Manifest,
            Route::Blob { .. } => RouteKind::Blob,
            Route::Tags { .. } => RouteKind::Tags,
            Route::Referrers { .. } => RouteKind::Referrers,
            Route::Push => RouteKind::Push,
            Route::Catalog => RouteKind::Catalog,
            Route::Invalid(_) => RouteKind::Invalid,
            Route::NotFound => RouteKind::NotFound,
        }
    }

    /// Short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        self.kind().as_str()
    }
}

/// Splits a request target into path and query (without the `?`).
pub fn split_target(target: &str) -> (&str, Option<&str>) {
    match target.find('?') {
        Some(i) => (&target[..i], Some(&target[i + 1..])),
        None => (target, None),
    }
}

/// Classifies `method` + `path` (query already split off).
pub fn classify<'a>(method: Method, path: &'a str) -> Route<'a> {
    let read = method.is_read();
    match path {
        "/" => {
            return if read {
                Route::Landing
            } else {
                Route::NotFound
            }
        }
        "/healthz" => return if read { Route::Health } else { Route::NotFound },
        "/readyz" => return if read { Route::Ready } else { Route::NotFound },
        "/metrics" => {
            return if read {
                Route::Metrics
            } else {
                Route::NotFound
            }
        }
        "/v2" | "/v2/" => return if read { Route::Ping } else { Route::Push },
        "/token" => {
            return match method {
                Method::Get | Method::Post => Route::Token { registry: None },
                _ => Route::NotFound,
            }
        }
        _ => {}
    }
    if let Some(token) = path.strip_prefix("/.well-known/acme-challenge/") {
        let base64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
        return if read && !token.is_empty() && token.bytes().all(base64url) {
            Route::AcmeChallenge { token }
        } else {
            Route::NotFound
        };
    }
    if let Some(name) = path.strip_prefix("/token/") {
        return match method {
            Method::Get | Method::Post if !name.is_empty() && !name.contains('/') => Route::Token {
                registry: Some(name),
            },
            _ => Route::NotFound,
        };
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Route::NotFound;
    };
    if rest == "_catalog" {
        return Route::Catalog;
    }
    // Writes are refused before anything else is looked at.
    if !read || rest.contains("/blobs/uploads") {
        return Route::Push;
    }
    classify_v2(rest)
}

/// `<name>/manifests/<ref>`, `<name>/blobs/<digest>`, `<name>/tags/list`,
/// `<name>/referrers/<digest>`. The name may contain slashes, so the shape is
/// recognised from the end.
fn classify_v2(rest: &str) -> Route<'_> {
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return match RepoName::parse(name) {
            Ok(repo) => Route::Tags { repo },
            Err(e) => Route::Invalid(e),
        };
    }
    let Some(slash) = rest.rfind('/') else {
        return Route::NotFound;
    };
    let (head, last) = (&rest[..slash], &rest[slash + 1..]);
    let Some(kind_at) = head.rfind('/') else {
        return Route::NotFound;
    };
    let (name, kind) = (&head[..kind_at], &head[kind_at + 1..]);
    let repo = match kind {
        "manifests" | "blobs" | "referrers" => match RepoName::parse(name) {
            Ok(repo) => repo,
            Err(e) => return Route::Invalid(e),
        },
        _ => return Route::NotFound,
    };
    match kind {
        "manifests" => match Reference::parse(last) {
            Ok(reference) => Route::Manifest { repo, reference },
            Err(e) => Route::Invalid(e),
        },
        "blobs" => match Digest::parse(last) {
            Ok(digest) => Route::Blob { repo, digest },
            Err(e) => Route::Invalid(e),
        },
        _ => match Digest::parse(last) {
            Ok(digest) => Route::Referrers { repo, digest },
            Err(e) => Route::Invalid(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn manifest_paths_carry_repo_and_reference() {
        match classify(Method::parse("GET"), "/v2/library/alpine/manifests/3.20") {
            Route::Manifest { repo, reference } => {
                assert_eq!(repo.as_str(), "library/alpine");
                assert_eq!(reference.as_str(), "3.20");
            }
            r => panic!("{r:?}"),
        }
        let p = format!("/v2/a/b/c/manifests/{D}");
        assert!(matches!(
            classify(Method::parse("HEAD"), &p),
            Route::Manifest {
                reference: Reference::Digest(_),
                ..
            }
        ));
    }

    #[test]
    fn a_repository_may_be_named_like_a_path_keyword() {
        match classify(Method::parse("GET"), "/v2/manifests/manifests/latest") {
            Route::Manifest { repo, .. } => assert_eq!(repo.as_str(), "manifests"),
            r => panic!("{r:?}"),
        }
        match classify(Method::parse("GET"), "/v2/blobs/tags/list") {
            Route::Tags { repo } => assert_eq!(repo.as_str(), "blobs"),
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn blobs_tags_and_referrers_are_recognised() {
        assert!(matches!(
            classify(Method::parse("GET"), &format!("/v2/alpine/blobs/{D}")),
            Route::Blob { .. }
        ));
        assert!(matches!(
            classify(Method::parse("GET"), "/v2/ghcr.io/o/i/tags/list"),
            Route::Tags { .. }
        ));
        assert!(matches!(
            classify(Method::parse("GET"), &format!("/v2/o/i/referrers/{D}")),
            Route::Referrers { .. }
        ));
    }

    #[test]
    fn invalid_names_tags_and_digests_are_reported_as_such() {
        assert_eq!(
            classify(Method::parse("GET"), "/v2/Bad/manifests/latest"),
            Route::Invalid(NameError::Name)
        );
        assert_eq!(
            classify(Method::parse("GET"), "/v2/ok/manifests/-bad"),
            Route::Invalid(NameError::Tag)
        );
        assert_eq!(
            classify(Method::parse("GET"), "/v2/ok/blobs/sha256:xyz"),
            Route::Invalid(NameError::Digest)
        );
        assert_eq!(
            classify(Method::parse("GET"), "/v2/ok/blobs/latest"),
            Route::Invalid(NameError::Digest)
        );
        assert_eq!(
            classify(Method::parse("GET"), "/v2/a%2fb/tags/list"),
            Route::Invalid(NameError::Name)
        );
    }

    #[test]
    fn writes_are_push_and_refused() {
        assert_eq!(
            classify(Method::parse("POST"), "/v2/alpine/blobs/uploads/"),
            Route::Push
        );
        assert_eq!(
            classify(Method::parse("PUT"), "/v2/alpine/manifests/latest"),
            Route::Push
        );
        assert_eq!(
            classify(Method::parse("DELETE"), &format!("/v2/alpine/blobs/{D}")),
            Route::Push
        );
        assert_eq!(
            classify(Method::parse("GET"), "/v2/alpine/blobs/uploads/abc"),
            Route::Push
        );
    }

    #[test]
    fn fixed_paths() {
        assert_eq!(classify(Method::parse("GET"), "/"), Route::Landing);
        assert_eq!(classify(Method::parse("GET"), "/v2/"), Route::Ping);
        assert_eq!(classify(Method::parse("GET"), "/readyz"), Route::Ready);
        assert_eq!(classify(Method::parse("HEAD"), "/metrics"), Route::Metrics);
        assert_eq!(classify(Method::parse("POST"), "/metrics"), Route::NotFound);
        assert_eq!(classify(Method::parse("HEAD"), "/v2"), Route::Ping);
        assert_eq!(
            classify(Method::parse("GET"), "/token"),
            Route::Token { registry: None }
        );
        assert_eq!(
            classify(Method::parse("POST"), "/token/ghcr.io"),
            Route::Token {
                registry: Some("ghcr.io")
            }
        );
        assert_eq!(
            classify(Method::parse("GET"), "/v2/_catalog"),
            Route::Catalog
        );
        assert_eq!(
            classify(Method::parse("GET"), "/favicon.ico"),
            Route::NotFound
        );
        assert_eq!(
            classify(Method::parse("GET"), "/v2/alpine"),
            Route::NotFound
        );
        // Distribution has no trailing-slash forms of resource paths.
        assert_eq!(
            classify(Method::parse("GET"), "/v2/alpine/manifests/latest/"),
            Route::NotFound
        );
        assert_eq!(
            classify(Method::parse("GET"), &format!("/v2/alpine/blobs/{D}/")),
            Route::NotFound
        );
        assert_eq!(split_target("/token?a=b"), ("/token", Some("a=b")));
        assert_eq!(
            classify(
                Method::parse("GET"),
                "/.well-known/acme-challenge/LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"
            ),
            Route::AcmeChallenge {
                token: "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"
            }
        );
        for bad in [
            "/.well-known/acme-challenge/",
            "/.well-known/acme-challenge/a/b",
            "/.well-known/acme-challenge/a.b",
            "/.well-known/acme-challenge/%2e%2e",
        ] {
            assert_eq!(
                classify(Method::parse("GET"), bad),
                Route::NotFound,
                "{bad}"
            );
        }
        assert_eq!(
            classify(Method::parse("POST"), "/.well-known/acme-challenge/tok"),
            Route::NotFound
        );
    }
}
