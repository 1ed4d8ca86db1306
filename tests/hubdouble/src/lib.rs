//! A Docker Hub double for ocirelay's tests and benchmarks.
//!
//! [`HubDouble::start`] runs three HTTPS hosts on plain threads, each on its own loopback IP:
//! a registry like `registry-1.docker.io` (127.0.0.1), a token server like `auth.docker.io`
//! (127.0.0.2) and a signed-URL CDN like `production.cloudflare.docker.com` (127.0.0.3),
//! with a CA made at start (see [`HubDouble::ca_pem`] / [`HubDouble::ca_path`]).
//! Content lives in [`Content`], faults and behaviour switches in [`Knobs`], and every request
//! is recorded in the [`RequestLog`]. [`client::Client`] is a small blocking HTTP/1.1 client
//! for tests.
//!
//! ```no_run
//! let hub = hubdouble::HubDouble::start(hubdouble::Options::default()).unwrap();
//! let mut c = hub.client(hubdouble::Host::Registry).unwrap();
//! let r = c.get("/v2/").unwrap();
//! assert_eq!(r.status, 401);
//! ```
//!
//! # Other registries
//!
//! [`Options`] can make a double behave like the other registries a mirror must handle.
//! The `like_*` presets set several options at once; every option can also be set alone,
//! and most can be flipped at runtime through [`Knobs`] (the `set_*` of the same name).
//!
//! | option | imitates | on the wire |
//! |---|---|---|
//! | [`Options::service`], [`Options::token_path`] | ghcr.io, quay.io, gcr.io | challenge `Bearer realm="https://127.0.0.2:<port><token_path>",service="<service>"`; the token host answers on that path only |
//! | [`Options::token_fields`]`(TokenOnly)`, [`Options::expires_in`]`(false)` | ghcr.io | token JSON `{"token":..,"issued_at":..}`: no `access_token`, no `expires_in` |
//! | [`Options::like_ghcr`] | ghcr.io | all of the above with `service="ghcr.io"`, realm path `/token`; blobs `307` to the CDN |
//! | [`Options::k8s_redirects`] ([`Options::like_registry_k8s`]) | registry.k8s.io | `GET/HEAD /v2/` → `200 {}` with no auth; every other `/v2/...` request (any method, HEAD stays HEAD) → `307 Location: https://127.0.0.3:<port>/regional/<region>/v2/...?<query>`, region rotating per request over [`Options::regions`]; the CDN serves manifests (`Content-Type`, `Docker-Content-Digest`, `Content-Length`), blobs (`Range`) and tags there with no auth (and refuses `Authorization` with 400 like everywhere on the CDN); the token host is never involved |
//! | [`Options::redirect_all_to`]`(url)` ([`Options::like_k8s_gcr`]) | k8s.gcr.io | every `/v2...` request, `/v2/` included, → `302 Location: <url><path>?<query>` (status: [`Options::redirect_all_status`]) |
//! | [`Options::blob_redirect_status`]`(302)` | quay.io, gcr.io | blob GET/HEAD answer `302` instead of `307` |
//! | [`Options::url_signing`]`(`[`UrlSigning::CloudFront`]`)` | quay.io (CloudFront) | CDN URLs carry `?Expires=<unix>&Signature=<base64 with -_~>&Key-Pair-Id=`[`CLOUDFRONT_KEY_PAIR_ID`] instead of `?verify=`; the CDN checks the HMAC over path, expiry and key id (403 when bad or expired); lifetime [`Options::cdn_signature_ttl`] |
//! | [`Options::like_quay`] | quay.io | `service="quay.io"`, realm path `/v2/auth`, blob `302` to CloudFront-style URLs valid 600 s |
//! | [`Options::blob_location`]`(`[`BlobLocation::RegistryPath`]`)` | gcr.io | blob redirect `Location: /registry-v2/docker/registry/v2/blobs/sha256/<2>/<hex>/data?verify=..` (absolute path, same host); the registry host serves it (signature checked, `Authorization` ignored, `Range` OK) |
//! | [`Options::blob_location`]`(`[`BlobLocation::RegistryDotSegments`]`)` | gcr.io (worst case) | the same target as a dot-segment reference, e.g. `Location: ../../../../registry-v2/...` from `/v2/a/b/blobs/<digest>` |
//! | [`Options::manifest_head_content_length`]`(false)`, [`Options::manifest_head_digest`]`(false)` | gcr.io | manifest HEAD responses without `Content-Length` / without `Docker-Content-Digest` (independently); GETs unchanged |
//! | [`Options::like_gcr`] | gcr.io | `service="gcr.io"`, realm path `/v2/token`, blob `302` to [`BlobLocation::RegistryPath`], manifest HEADs without `Content-Length` |
//! | [`Options::manifest_redirect`] | registries that redirect manifests | manifest GET/HEAD (after auth and rate limiting) → `307 Location: https://127.0.0.3:<port>/manifests/sha256/<hex>?<signature>`; the CDN serves the manifest with `Content-Type`, `Docker-Content-Digest`, `Content-Length` |
//!
//! Redirect hops on other hosts are recorded in the [`RequestLog`] like everything else
//! (method, full target with query, headers), so tests can check that HEAD stayed HEAD, that
//! no `Authorization` reached the CDN, and that query strings arrived intact.
//!
//! # Several doubles in one process
//!
//! Every double binds 127.0.0.1, .2 and .3 on ephemeral ports, so any number can run side by
//! side. By default each makes its own CA; to trust several with one CA file, share the CA:
//!
//! ```no_run
//! use hubdouble::{HubDouble, Options};
//! let k8s = HubDouble::start(Options::default().like_registry_k8s()).unwrap();
//! let ca = k8s.ca().unwrap();
//! let old = HubDouble::start(Options::default().ca(ca).like_k8s_gcr(k8s.registry_url())).unwrap();
//! // Either file trusts both (same CA).
//! assert_eq!(k8s.ca_pem(), old.ca_pem());
//! let _ca_file = old.ca_path().unwrap();
//! ```
//!
//! Doubles with their own CAs can also be trusted together through one bundle:
//! [`ca_bundle_pem`].

#![warn(missing_docs)]

mod archive;
mod cdn;
pub mod client;
mod content;
mod http;
mod images;
mod knobs;
mod log;
mod options;
mod registry;
mod server;
mod signing;
mod state;
mod time;
mod tls;
mod token;
mod url;

pub use content::{
    is_sha256_digest, random_bytes, sha256_digest, Blob, Content, Manifest, DOCKER_CONFIG,
    DOCKER_LAYER_GZIP, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST_V2, OCI_CONFIG, OCI_INDEX,
    OCI_LAYER_GZIP, OCI_MANIFEST,
};
pub use images::{Descriptor, Flavor, Image, Index, Seeded};
pub use knobs::{BlobLocation, Knobs, TokenFields, UrlSigning};
pub use log::{LogEntry, RequestLog};
pub use options::Options;
pub use tls::TestCa;

/// The `Key-Pair-Id=` of CloudFront-style signed URLs ([`UrlSigning::CloudFront`]).
pub const CLOUDFRONT_KEY_PAIR_ID: &str = "APKAHUBDOUBLETEST0001";

/// A PEM bundle of the distinct CAs of `doubles` (plain-HTTP doubles contribute nothing), for
/// a client that must trust doubles made with different CAs.
pub fn ca_bundle_pem(doubles: &[&HubDouble]) -> String {
    let mut out = String::new();
    for pem in doubles.iter().filter_map(|d| d.ca_pem()) {
        if !out.contains(pem) {
            out.push_str(pem);
            if !out.ends_with('\n') {
                out.push('\n');
            }
        }
    }
    out
}

use server::HostServer;
use signing::{Claims, Signer};
use state::Shared;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One of the double's three hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// The registry (`registry-1.docker.io`), 127.0.0.1. With
    /// [`BlobLocation::RegistryPath`] it also serves the signed blob paths itself.
    Registry = 0,
    /// The token server (`auth.docker.io`), 127.0.0.2.
    Token = 1,
    /// The blob CDN (`production.cloudflare.docker.com`), 127.0.0.3. Also serves redirected
    /// manifests (`/manifests/...`) and, in k8s mode, the regional registries
    /// (`/regional/<region>/v2/...`).
    Cdn = 2,
}

impl Host {
    /// All three hosts.
    pub const ALL: [Host; 3] = [Host::Registry, Host::Token, Host::Cdn];

    /// `registry`, `token` or `cdn`.
    pub fn label(self) -> &'static str {
        match self {
            Host::Registry => "registry",
            Host::Token => "token",
            Host::Cdn => "cdn",
        }
    }
}

/// A running Docker Hub double. Dropping it (or [`HubDouble::shutdown`]) stops every
/// listener and connection thread and removes the CA file.
pub struct HubDouble {
    shared: Arc<Shared>,
    servers: Vec<HostServer>,
    ca: Option<TestCa>,
    ca_dir: Option<PathBuf>,
    ca_path: Option<PathBuf>,
    seeded: Option<Seeded>,
    stopped: bool,
}

/// An address on 127.0.0.1 that nothing listens on (bound once, then released), for
/// "connection refused" tests.
pub fn unused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr")
}

fn write_ca_file(pem: &str) -> io::Result<(PathBuf, PathBuf)> {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "hubdouble-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("ca.pem");
    std::fs::write(&path, pem)?;
    Ok((dir, path))
}

impl HubDouble {
    /// Starts the three hosts with `opts` and returns once they accept connections.
    pub fn start(opts: Options) -> io::Result<HubDouble> {
        let listeners = [
            TcpListener::bind(opts.registry_addr)?,
            TcpListener::bind(opts.token_addr)?,
            TcpListener::bind(opts.cdn_addr)?,
        ];
        let addrs: Vec<SocketAddr> = listeners
            .iter()
            .map(TcpListener::local_addr)
            .collect::<io::Result<_>>()?;
        let (pki, ca) = if opts.tls {
            let pki = tls::generate(opts.ca.as_ref())?;
            let ca = write_ca_file(pki.ca.pem())?;
            (Some(pki), Some(ca))
        } else {
            (None, None)
        };
        let scheme = if opts.tls { "https" } else { "http" };
        let content = Arc::new(Content::default());
        let seeded = opts.seed.then(|| images::seed(&content));
        let shared = Arc::new(Shared {
            realm: format!("{scheme}://{}{}", addrs[1], opts.token_path),
            token_path: opts.token_path.clone(),
            cdn_url: format!("{scheme}://{}", addrs[2]),
            service: opts.service.clone(),
            users: opts.users.clone(),
            content,
            signer: Signer::new(),
            knobs: Arc::new(Knobs::new(&opts)),
            log: Arc::new(RequestLog::new(opts.log_requests)),
            shutdown: AtomicBool::new(false),
            next_conn: AtomicU64::new(0),
            tls: pki.as_ref().map(|p| p.server_config.clone()),
            idle_timeout: opts.idle_timeout,
        });
        let mut hub = HubDouble {
            shared: shared.clone(),
            servers: Vec::new(),
            ca: pki.map(|p| p.ca),
            ca_dir: ca.as_ref().map(|c| c.0.clone()),
            ca_path: ca.map(|c| c.1),
            seeded,
            stopped: false,
        };
        for (host, listener) in Host::ALL.into_iter().zip(listeners) {
            hub.servers
                .push(HostServer::start(host, listener, shared.clone())?);
        }
        Ok(hub)
    }

    /// Address `host` listens on.
    pub fn addr(&self, host: Host) -> SocketAddr {
        self.servers[host as usize].addr
    }

    /// Registry address (127.0.0.1:port).
    pub fn registry_addr(&self) -> SocketAddr {
        self.addr(Host::Registry)
    }

    /// Token host address (127.0.0.2:port).
    pub fn token_addr(&self) -> SocketAddr {
        self.addr(Host::Token)
    }

    /// CDN address (127.0.0.3:port).
    pub fn cdn_addr(&self) -> SocketAddr {
        self.addr(Host::Cdn)
    }

    /// `https` or `http`.
    pub fn scheme(&self) -> &'static str {
        if self.is_tls() {
            "https"
        } else {
            "http"
        }
    }

    /// Base URL of `host`, no trailing slash, e.g. `https://127.0.0.1:41234`.
    pub fn url(&self, host: Host) -> String {
        format!("{}://{}", self.scheme(), self.addr(host))
    }

    /// Registry base URL, e.g. `https://127.0.0.1:41234` (what ocirelay uses as upstream).
    pub fn registry_url(&self) -> String {
        self.url(Host::Registry)
    }

    /// The token endpoint = the challenge's realm, e.g. `https://127.0.0.2:41235/token`
    /// (path: [`Options::token_path`]).
    pub fn token_url(&self) -> String {
        self.shared.realm.clone()
    }

    /// CDN base URL, e.g. `https://127.0.0.3:41236`.
    pub fn cdn_url(&self) -> String {
        self.url(Host::Cdn)
    }

    /// The challenge's `service` (`registry.docker.io` unless [`Options::service`]).
    pub fn service(&self) -> &str {
        &self.shared.service
    }

    /// Whether the hosts speak TLS.
    pub fn is_tls(&self) -> bool {
        self.shared.tls.is_some()
    }

    /// PEM of the CA that signed the hosts' certificate (`None` in plain-HTTP mode).
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca.as_ref().map(TestCa::pem)
    }

    /// The CA that signed the hosts' certificate (`None` in plain-HTTP mode), to hand to
    /// another double with [`Options::ca`] so that one CA file trusts both.
    pub fn ca(&self) -> Option<TestCa> {
        self.ca.clone()
    }

    /// Path of a file holding [`HubDouble::ca_pem`] (`None` in plain-HTTP mode); removed
    /// when the double stops.
    pub fn ca_path(&self) -> Option<&Path> {
        self.ca_path.as_deref()
    }

    /// A test client for `host` (TLS verified against the CA when TLS is on).
    pub fn client(&self, host: Host) -> io::Result<client::Client> {
        let addr = self.addr(host);
        let name = addr.ip().to_string();
        let tls = self.ca_pem().map(|pem| (name.as_str(), pem));
        client::Client::new(addr, tls)
    }

    /// The store the hosts serve from; add blobs, images and tags here at any time.
    pub fn content(&self) -> &Content {
        &self.shared.content
    }

    /// Shared handle to [`HubDouble::content`].
    pub fn content_handle(&self) -> Arc<Content> {
        self.shared.content.clone()
    }

    /// Runtime switches and faults.
    pub fn knobs(&self) -> &Knobs {
        &self.shared.knobs
    }

    /// Shared handle to [`HubDouble::knobs`], e.g. to flip a fault from another thread.
    pub fn knobs_handle(&self) -> Arc<Knobs> {
        self.shared.knobs.clone()
    }

    /// Every request received so far.
    pub fn log(&self) -> &RequestLog {
        &self.shared.log
    }

    /// Shared handle to [`HubDouble::log`].
    pub fn log_handle(&self) -> Arc<RequestLog> {
        self.shared.log.clone()
    }

    /// The seeded images. Panics if the double was started with `seed(false)`.
    pub fn seeded(&self) -> &Seeded {
        self.seeded
            .as_ref()
            .expect("hubdouble started without seeded images")
    }

    /// Adds `size` bytes of deterministic pseudo-random content to `repo`; returns its digest.
    pub fn add_random_blob(&self, repo: &str, size: usize, seed: u64) -> String {
        self.content().add_random_blob(repo, size, seed)
    }

    /// Adds a tagged image whose layers are random blobs of `layer_sizes` bytes.
    pub fn add_random_image(
        &self,
        repo: &str,
        tag: &str,
        flavor: Flavor,
        layer_sizes: &[usize],
        seed: u64,
    ) -> Image {
        images::add_random_image(self.content(), repo, tag, flavor, layer_sizes, seed)
    }

    /// Mints a bearer token as the token host would (for `user`, or anonymous) granting pull
    /// on `repos`, valid for the current token TTL. Handy to talk to the registry directly.
    pub fn mint_token(&self, user: Option<&str>, repos: &[&str]) -> String {
        self.shared.signer.mint_token(&Claims {
            exp: time::unix_now() + self.knobs().token_ttl(),
            sub: user.unwrap_or_default().to_string(),
            pull: repos.iter().map(|r| r.to_string()).collect(),
        })
    }

    /// Closes `host`'s listener and its connections (`true`: new connections are refused)
    /// or reopens it on the same address (`false`). Returns once done.
    pub fn set_down(&self, host: Host, down: bool) -> io::Result<()> {
        self.servers[host as usize].set_down(down)
    }

    /// Whether `host` was set down.
    pub fn is_down(&self, host: Host) -> bool {
        self.servers[host as usize].is_down()
    }

    /// Shortcut for [`Knobs::set_stall`].
    pub fn set_stall(&self, host: Host, on: bool) {
        self.knobs().set_stall(host, on);
    }

    /// Connections `host` currently has open.
    pub fn active_connections(&self, host: Host) -> usize {
        self.servers[host as usize].active()
    }

    /// Stops everything (idempotent; also done on drop). Waits at most ~3 s for
    /// connection threads.
    pub fn shutdown(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.shared.shutdown.store(true, Ordering::SeqCst);
        for s in &self.servers {
            s.begin_shutdown();
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for s in &mut self.servers {
            s.finish_shutdown(deadline);
        }
        if let Some(dir) = self.ca_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for HubDouble {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for HubDouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubDouble")
            .field("registry", &self.registry_url())
            .field("token", &self.token_url())
            .field("cdn", &self.cdn_url())
            .field("ca_path", &self.ca_path)
            .finish()
    }
}
