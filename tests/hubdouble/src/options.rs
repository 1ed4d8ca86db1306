//! Start-up options for [`crate::HubDouble`].

use crate::knobs::TokenFields;
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
}
