//! Start-up options for [`crate::HubDouble`].

use crate::knobs::{BlobLocation, TokenFields, UrlSigning};
use crate::tls::TestCa;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// How to start a double. `Options::default()` is Docker Hub over TLS on
/// 127.0.0.1 / 127.0.0.2 / 127.0.0.3 with ephemeral ports; the fluent methods change one
/// thing each. Fields marked "runtime" can also be changed later through
/// [`crate::HubDouble::knobs`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Serve HTTPS (default) or plain HTTP.
    pub tls: bool,
    /// Registry listen address (default `127.0.0.1:0`).
    pub registry_addr: SocketAddr,
    /// Token host listen address (default `127.0.0.2:0`).
    pub token_addr: SocketAddr,
    /// CDN listen address (default `127.0.0.3:0`).
    pub cdn_addr: SocketAddr,
    /// `service=` of the challenge (default `registry.docker.io`).
    pub service: String,
    /// Path of the token endpoint on the token host, i.e. the challenge realm's path
    /// (default `/token`; quay.io uses `/v2/auth`, gcr.io `/v2/token`).
    pub token_path: String,
    /// CA to sign this double's certificate with (default `None`: a fresh CA per double).
    /// Share one between doubles so that one CA file trusts them all.
    pub ca: Option<TestCa>,
    /// Users the token host accepts, (name, password); default `alice:wonderland`.
    pub users: Vec<(String, String)>,
    /// Runtime. Bearer token lifetime and `expires_in`, seconds (default 300).
    pub token_ttl_secs: i64,
    /// Runtime. Token fields returned (default both `token` and `access_token`).
    pub token_fields: TokenFields,
    /// Runtime. Whether token responses carry `expires_in` (default true).
    pub expires_in: bool,
    /// Runtime. Lifetime of CDN signed URLs, seconds (default 1200).
    pub cdn_signature_ttl_secs: i64,
    /// Runtime. Extra relative 302 hops on the CDN before the data (default 0).
    pub extra_hops: u32,
    /// Runtime. Registry redirects blobs to the CDN (default true) or serves them itself.
    pub blob_redirect: bool,
    /// Runtime. Registry requires bearer tokens (default true).
    pub require_auth: bool,
    /// Runtime. Announced pull limit (default 100).
    pub rate_limit: u64,
    /// Runtime. Answer manifest GETs past the limit with 429 (default false).
    pub enforce_rate_limit: bool,
    /// Seed `library/alpine`, `library/multi`, `private/secret` (default true).
    pub seed: bool,
    /// Record requests in the log (default true; benchmarks may turn it off).
    pub log_requests: bool,
    /// Idle read/write timeout of server connections (default 120 s).
    pub idle_timeout: Duration,
    /// Runtime. Status of blob redirects (default 307; quay.io and gcr.io send 302).
    pub blob_redirect_status: u16,
    /// Runtime. How CDN URLs are signed (default [`UrlSigning::Verify`]).
    pub url_signing: UrlSigning,
    /// Runtime. Where blob redirects point (default [`BlobLocation::Cdn`]).
    pub blob_location: BlobLocation,
    /// Runtime. Manifest GET/HEAD answer 307 to a signed CDN URL (default false).
    pub manifest_redirect: bool,
    /// Runtime. Manifest HEADs carry `Content-Length` (default true).
    pub manifest_head_content_length: bool,
    /// Runtime. Manifest HEADs carry `Docker-Content-Digest` (default true).
    pub manifest_head_digest: bool,
    /// Runtime. registry.k8s.io mode (default false): `/v2/` is 200 without auth, every other
    /// `/v2/...` is a 307 to `<cdn>/regional/<region>/v2/...`.
    pub k8s_redirects: bool,
    /// Runtime. Regions the k8s mode rotates through, per request (default
    /// `us-west1`, `europe-west4`, `asia-northeast1`).
    pub regions: Vec<String>,
    /// Runtime. k8s.gcr.io mode (default `None`): every `/v2...` request is redirected to the
    /// same path and query under this base URL.
    pub redirect_all_to: Option<String>,
    /// Runtime. Status of those redirects (default 302).
    pub redirect_all_status: u16,
}

impl Default for Options {
    fn default() -> Options {
        let lo = |last: u8| SocketAddr::from((Ipv4Addr::new(127, 0, 0, last), 0));
        Options {
            tls: true,
            registry_addr: lo(1),
            token_addr: lo(2),
            cdn_addr: lo(3),
            service: "registry.docker.io".into(),
            token_path: "/token".into(),
            ca: None,
            users: vec![("alice".into(), "wonderland".into())],
            token_ttl_secs: 300,
            token_fields: TokenFields::Both,
            expires_in: true,
            cdn_signature_ttl_secs: 1200,
            extra_hops: 0,
            blob_redirect: true,
            require_auth: true,
            rate_limit: 100,
            enforce_rate_limit: false,
            seed: true,
            log_requests: true,
            idle_timeout: Duration::from_secs(120),
            blob_redirect_status: 307,
            url_signing: UrlSigning::Verify,
            blob_location: BlobLocation::Cdn,
            manifest_redirect: false,
            manifest_head_content_length: true,
            manifest_head_digest: true,
            k8s_redirects: false,
            regions: vec![
                "us-west1".into(),
                "europe-west4".into(),
                "asia-northeast1".into(),
            ],
            redirect_all_to: None,
            redirect_all_status: 302,
        }
    }
}

impl Options {
    /// Same as `Options::default()`.
    pub fn new() -> Options {
        Options::default()
    }

    /// Plain HTTP instead of HTTPS on all three hosts.
    pub fn plain_http(mut self) -> Options {
        self.tls = false;
        self
    }

    /// Listen addresses of registry, token host and CDN.
    pub fn addrs(mut self, registry: SocketAddr, token: SocketAddr, cdn: SocketAddr) -> Options {
        self.registry_addr = registry;
        self.token_addr = token;
        self.cdn_addr = cdn;
        self
    }

    /// Adds a user the token host accepts.
    pub fn user(mut self, name: &str, password: &str) -> Options {
        self.users.push((name.into(), password.into()));
        self
    }

    /// Token lifetime in seconds.
    pub fn token_ttl(mut self, secs: i64) -> Options {
        self.token_ttl_secs = secs;
        self
    }

    /// Token fields to return.
    pub fn token_fields(mut self, fields: TokenFields) -> Options {
        self.token_fields = fields;
        self
    }

    /// Whether to include `expires_in`.
    pub fn expires_in(mut self, on: bool) -> Options {
        self.expires_in = on;
        self
    }

    /// CDN signature lifetime in seconds.
    pub fn cdn_signature_ttl(mut self, secs: i64) -> Options {
        self.cdn_signature_ttl_secs = secs;
        self
    }

    /// Extra relative redirect hops on the CDN.
    pub fn extra_hops(mut self, hops: u32) -> Options {
        self.extra_hops = hops;
        self
    }

    /// Registry redirects blobs (true) or serves them (false).
    pub fn blob_redirect(mut self, on: bool) -> Options {
        self.blob_redirect = on;
        self
    }

    /// Registry requires tokens.
    pub fn require_auth(mut self, on: bool) -> Options {
        self.require_auth = on;
        self
    }

    /// Announced pull limit and whether it is enforced.
    pub fn rate_limit(mut self, limit: u64, enforce: bool) -> Options {
        self.rate_limit = limit;
        self.enforce_rate_limit = enforce;
        self
    }

    /// Seed the default images or start empty.
    pub fn seed(mut self, on: bool) -> Options {
        self.seed = on;
        self
    }

    /// Record requests or not.
    pub fn log_requests(mut self, on: bool) -> Options {
        self.log_requests = on;
        self
    }

    /// Idle read/write timeout of server connections.
    pub fn idle_timeout(mut self, timeout: Duration) -> Options {
        self.idle_timeout = timeout;
        self
    }

    /// `service=` announced in the challenge (e.g. `ghcr.io`, `quay.io`, `gcr.io`).
    pub fn service(mut self, service: &str) -> Options {
        self.service = service.into();
        self
    }

    /// Path of the token endpoint (the realm's path), e.g. `/token`, `/v2/auth`, `/v2/token`.
    /// A missing leading `/` is added.
    pub fn token_path(mut self, path: &str) -> Options {
        self.token_path = if path.starts_with('/') {
            path.into()
        } else {
            format!("/{path}")
        };
        self
    }

    /// Signs this double's certificate with `ca` instead of a fresh CA, so that one CA file
    /// trusts several doubles (take it from [`crate::TestCa::generate`] or from a running
    /// double's [`crate::HubDouble::ca`]).
    pub fn ca(mut self, ca: TestCa) -> Options {
        self.ca = Some(ca);
        self
    }

    /// Status of blob redirects (307 by default; 302 like quay.io / gcr.io).
    pub fn blob_redirect_status(mut self, status: u16) -> Options {
        self.blob_redirect_status = status;
        self
    }

    /// How CDN URLs are signed: `verify=` (Docker Hub) or CloudFront's
    /// `Expires=&Signature=&Key-Pair-Id=` (quay.io).
    pub fn url_signing(mut self, signing: UrlSigning) -> Options {
        self.url_signing = signing;
        self
    }

    /// Where blob redirects point: the CDN (absolute URL) or a relative reference on the
    /// registry host (gcr.io-like).
    pub fn blob_location(mut self, location: BlobLocation) -> Options {
        self.blob_location = location;
        self
    }

    /// Manifest GET/HEAD answer `307` to the CDN (`/manifests/sha256/<hex>?<signature>`),
    /// which serves the manifest with its `Content-Type`, `Docker-Content-Digest` and
    /// `Content-Length`.
    pub fn manifest_redirect(mut self, on: bool) -> Options {
        self.manifest_redirect = on;
        self
    }

    /// Whether manifest HEAD responses carry `Content-Length` (false: gcr.io-like).
    pub fn manifest_head_content_length(mut self, on: bool) -> Options {
        self.manifest_head_content_length = on;
        self
    }

    /// Whether manifest HEAD responses carry `Docker-Content-Digest`.
    pub fn manifest_head_digest(mut self, on: bool) -> Options {
        self.manifest_head_digest = on;
        self
    }

    /// registry.k8s.io mode: `GET/HEAD /v2/` answers 200 with no auth; every other `/v2/...`
    /// request (any method, HEAD included) answers `307` to
    /// `<cdn>/regional/<region>/v2/...?<query>`, the region rotating per request; the CDN
    /// serves manifests, blobs and tags there without any auth. The token host is unused.
    pub fn k8s_redirects(mut self, on: bool) -> Options {
        self.k8s_redirects = on;
        self
    }

    /// Regions the k8s mode rotates through (an empty list is ignored).
    pub fn regions(mut self, regions: &[&str]) -> Options {
        if !regions.is_empty() {
            self.regions = regions.iter().map(|r| r.to_string()).collect();
        }
        self
    }

    /// k8s.gcr.io mode: every `/v2...` request (`/v2/` included) answers `302` to
    /// `<url><path>?<query>` (e.g. another double's [`crate::HubDouble::registry_url`]).
    pub fn redirect_all_to(mut self, url: impl Into<String>) -> Options {
        self.redirect_all_to = Some(url.into().trim_end_matches('/').to_string());
        self
    }

    /// Status of the [`Options::redirect_all_to`] redirects (default 302).
    pub fn redirect_all_status(mut self, status: u16) -> Options {
        self.redirect_all_status = status;
        self
    }

    /// ghcr.io: `service="ghcr.io"`, realm path `/token`, token responses with only `token`
    /// and no `expires_in`; blobs 307 to the CDN as on Docker Hub.
    pub fn like_ghcr(self) -> Options {
        self.service("ghcr.io")
            .token_path("/token")
            .token_fields(TokenFields::TokenOnly)
            .expires_in(false)
    }

    /// quay.io: `service="quay.io"`, realm path `/v2/auth`, blob GETs answer `302` to the CDN
    /// with CloudFront-style `?Expires=&Signature=&Key-Pair-Id=` valid 600 s.
    pub fn like_quay(self) -> Options {
        self.service("quay.io")
            .token_path("/v2/auth")
            .blob_redirect_status(302)
            .url_signing(UrlSigning::CloudFront)
            .cdn_signature_ttl(600)
    }

    /// gcr.io: `service="gcr.io"`, realm path `/v2/token`, blob GETs answer `302` with a
    /// relative `Location` (`/registry-v2/...?verify=..`, served by the registry host), manifest
    /// HEADs without `Content-Length`.
    pub fn like_gcr(self) -> Options {
        self.service("gcr.io")
            .token_path("/v2/token")
            .blob_redirect_status(302)
            .blob_location(BlobLocation::RegistryPath)
            .manifest_head_content_length(false)
    }

    /// registry.k8s.io: [`Options::k8s_redirects`] on, `service="registry.k8s.io"`.
    pub fn like_registry_k8s(self) -> Options {
        self.service("registry.k8s.io").k8s_redirects(true)
    }

    /// k8s.gcr.io: [`Options::redirect_all_to`] `url` (302), e.g. a
    /// [`Options::like_registry_k8s`] double's registry URL.
    pub fn like_k8s_gcr(self, url: impl Into<String>) -> Options {
        self.service("k8s.gcr.io").redirect_all_to(url)
    }
}
