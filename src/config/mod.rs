//! Configuration: one TOML file (or the embedded default), checked once at
//! start-up into plain values. Every error names the line it comes from.
//! `check`: the semantic checks of `ocirelay config check`.

pub mod access;
pub mod auth;
pub mod check;
pub mod limits;
pub mod s3;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::wire::addr::Cidr;
use crate::wire::url::{Origin, Scheme, Url};

/// The embedded default: a Docker Hub mirror on 127.0.0.1:5000.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// A configuration error with the line it was found on (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    /// Plain-HTTP listeners behind a load balancer: every connection from a
    /// trusted proxy starts with a PROXY header.
    pub proxy_protocol_listen: Vec<SocketAddr>,
    pub tls_listeners: Vec<TlsListener>,
    /// Peers whose PROXY headers and `X-Forwarded-For` are believed.
    pub trusted_proxies: Vec<Cidr>,
    /// 0 means one per core.
    pub workers: usize,
    pub driver: Driver,
    /// One line per request on stderr.
    pub access_log: bool,
    pub access_log_format: AccessLogFormat,
    /// The event log's threshold (`OCIRELAY_LOG`, when set, wins).
    pub log_level: LogLevel,
    /// Where this process hands its listening sockets to a successor and
    /// asks a predecessor for its own (zero-downtime upgrades); `None`: no
    /// handover, listeners are bound afresh.
    pub handover_socket: Option<HandoverSocket>,
    pub public_url: Option<Url>,
    pub debug: bool,
    pub timeouts: Timeouts,
    pub limits: Limits,
    /// Per-client limits (`[client_limits]`); `None`: no limits.
    pub client_limits: Option<limits::ClientLimits>,
    pub registries: Vec<Registry>,
    /// The mirror's own domain: `<prefix>.<domain>` selects a registry.
    pub domain: Option<String>,
    /// Every host name that selects a registry (from `hosts` and `domain`).
    pub host_routes: Vec<HostRoute>,
    /// The content cache (`[cache]`); `None` when `enabled = false`.
    pub cache: Option<CacheConfig>,
    /// Automatic certificates (`[acme]`); `None` without that table.
    pub acme: Option<AcmeConfig>,
    /// Where `/metrics` is served (`metrics_listen`).
    pub metrics: MetricsListen,
    /// The global `[access]` rules (patterns name `<registry>/<repo>`).
    pub access: access::AccessRules,
    /// Mirror authentication (`[auth]`); `None`: clients' credentials pass
    /// through to the upstream.
    pub auth: Option<auth::AuthConfig>,
}

/// Where certificates come from: `[acme]` (RFC 8555).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    /// The CA's directory URL (https).
    pub directory: Url,
    /// Contact address given to the CA (expiry notices), if any.
    pub email: Option<String>,
    /// The names the certificate covers, lowercase, without duplicates.
    pub domains: Vec<String>,
    /// Extra PEM roots trusted for the CA's own TLS (a private or test CA).
    pub ca_file: Option<PathBuf>,
    /// Where the account key and certificates are kept.
    pub dir: PathBuf,
    /// How the CA is asked to validate control of each domain.
    pub challenge: AcmeChallenge,
}

/// Let's Encrypt's production directory: the default `[acme] directory`.
pub const LETSENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (`directory = "letsencrypt-staging"`):
/// untrusted certificates, generous rate limits, for trying a setup.
pub const LETSENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// The ACME challenge type ocirelay asks the CA to validate (it answers
/// both kinds at all times; this picks which one it triggers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum AcmeChallenge {
    /// RFC 8737: the CA connects to port 443 offering ALPN `acme-tls/1`
    /// and checks a self-signed certificate: needs only the TLS listener.
    #[default]
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// RFC 8555 8.3: the CA fetches `/.well-known/acme-challenge/<token>`
    /// on port 80: needs a plain `listen` address.
    #[serde(rename = "http-01")]
    Http01,
}

impl AcmeChallenge {
    /// The challenge's `type` in the ACME protocol.
    pub fn as_str(self) -> &'static str {
        match self {
            AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
            AcmeChallenge::Http01 => "http-01",
        }
    }
}

/// Where `/metrics` is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsListen {
    /// A plain-HTTP listener of its own, answering `/metrics`, `/healthz`
    /// and `/readyz` only. `configured`: named in the config, so failing to
    /// bind it stops the start; the default address may be taken (a second
    /// mirror on the machine), which is then logged and passed over.
    Own { addr: SocketAddr, configured: bool },
    /// On the public listeners, beside everything else.
    Public,
    /// Nowhere.
    Off,
}

/// The default `metrics_listen`: loopback, so that a public mirror shows
/// its traffic, cache and upstream state to no one but its host (and what
/// a scraper there forwards); `localhost:5001` is what the distribution
/// registry's documentation gives its debug server, which serves metrics.
pub const DEFAULT_METRICS_LISTEN: MetricsListen = MetricsListen::Own {
    addr: SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5001),
    configured: false,
};

/// The content cache's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Where objects are stored (created if missing).
    pub dir: PathBuf,
    /// The store is kept under this many bytes (least recently used go).
    pub max_size: u64,
    /// How long a tag -> digest record is trusted before one upstream HEAD
    /// revalidates it.
    pub tag_ttl: Duration,
    /// Serve a tag's last known manifest when the upstream is down or rate
    /// limited (with a header and a log line saying so).
    pub serve_stale: bool,
    /// The shared tier (`[cache.s3]`), if any.
    pub s3: Option<s3::S3Config>,
}

/// The default `tag_ttl`: 5 minutes. A CI fleet pulling `:latest` all day
/// then costs one free HEAD per tag per 5 minutes instead of a counted
/// manifest GET per pull, and a pushed tag shows within 5 minutes (Docker
/// Hub's own tokens live 300 s).
pub const DEFAULT_TAG_TTL: Duration = Duration::from_secs(300);

/// The default `max_size`: room for a few hundred images on a laptop that
/// just ran `cargo run`; a public mirror sets its own.
pub const DEFAULT_CACHE_MAX: u64 = 10 << 30;

/// A size as written in the config: `"200GiB"`, `"500 MB"`, `"1048576"`.
/// Binary (KiB, MiB, GiB, TiB) and decimal (KB, MB, GB, TB) units.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => return None,
    };
    let v = num * mult;
    (v.is_finite() && v >= 1.0 && v < u64::MAX as f64).then_some(v as u64)
}

/// A size for people, in binary units: `512 B`, `12.3 MiB` (what
/// [`parse_size`] reads back, to a rounding).
pub fn human_size(n: u64) -> String {
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Where the cache goes when the config names no `dir`: the user's cache
/// directory (`$XDG_CACHE_HOME/ocirelay`, else `~/.cache/ocirelay`), or
/// `./ocirelay-cache` when neither is known.
pub fn default_cache_dir() -> PathBuf {
    user_dir("XDG_CACHE_HOME", ".cache").unwrap_or_else(|| PathBuf::from("ocirelay-cache"))
}

/// Where ACME keeps its account key and certificates when `[acme]` names no
/// `dir`: the user's state directory (`$XDG_STATE_HOME/ocirelay/acme`, else
/// `~/.local/state/ocirelay/acme`), so that `cargo run --release` works
/// for a user; else `./ocirelay-state/acme`.
pub fn default_acme_dir() -> PathBuf {
    user_dir("XDG_STATE_HOME", ".local/state")
        .unwrap_or_else(|| PathBuf::from("ocirelay-state"))
        .join("acme")
}

/// `$<xdg>/ocirelay`, else `$HOME/<under_home>/ocirelay` (XDG base
/// directories), when either variable is set.
fn user_dir(xdg: &str, under_home: &str) -> Option<PathBuf> {
    let from = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    from(xdg)
        .or_else(|| from("HOME").map(|h| h.join(under_home)))
        .map(|d| d.join("ocirelay"))
}

/// How much the event log says: events at this level and the ones above
/// it are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        }
    }

    /// A level as `OCIRELAY_LOG` spells it (any case; `warning` too).
    pub fn parse(s: &str) -> Option<LogLevel> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "error" => LogLevel::Error,
            "warn" | "warning" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            _ => return None,
        })
    }
}

/// The Unix socket a running ocirelay hands its listening sockets over on:
/// a file (`/run/ocirelay/handover.sock`) or, written `@name`, a name in
/// Linux's abstract namespace (no file whose directory could vanish with a
/// systemd unit; scoped to the network namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandoverSocket {
    Path(PathBuf),
    Abstract(String),
}

impl HandoverSocket {
    fn parse(s: &str) -> Option<HandoverSocket> {
        match s.strip_prefix('@') {
            Some(name) if !name.is_empty() && name.len() < 100 => {
                Some(HandoverSocket::Abstract(name.to_string()))
            }
            Some(_) => None,
            // sun_path holds 108 bytes with its NUL.
            None if s.starts_with('/') && s.len() < 108 => Some(HandoverSocket::Path(s.into())),
            None => None,
        }
    }
}

impl std::fmt::Display for ConfigSource {
    /// The file's path, or what stands for the embedded default.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.path {
            Some(p) => write!(f, "{}", p.display()),
            None => f.write_str("(embedded default config)"),
        }
    }
}

impl std::fmt::Display for HandoverSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandoverSocket::Path(p) => write!(f, "{}", p.display()),
            HandoverSocket::Abstract(n) => write!(f, "@{n}"),
        }
    }
}

/// Where the running config comes from, so that a reload (SIGHUP) reads it
/// the way start-up did: the file (or the embedded default) with the
/// command line's overrides on top.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    pub path: Option<PathBuf>,
    /// `--listen`, replacing the file's `listen` when not empty.
    pub listen: Vec<SocketAddr>,
    /// `--workers`.
    pub workers: Option<usize>,
}

impl ConfigSource {
    /// Reads the config (the file, else the embedded default) and applies
    /// the command line's overrides.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut cfg = match &self.path {
            Some(p) => Config::load(p)?,
            None => Config::default_config(),
        };
        if !self.listen.is_empty() {
            cfg.listen = self.listen.clone();
        }
        if let Some(n) = self.workers {
            cfg.workers = n;
        }
        Ok(cfg)
    }
}

/// Which monoio driver the workers run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Driver {
    /// io_uring when the kernel offers it, epoll otherwise.
    #[default]
    Auto,
    /// io_uring or fail at start-up.
    IoUring,
    /// epoll, always.
    Legacy,
}

/// How access log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// Space-separated fields, for people and `grep`.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

#[derive(Debug, Clone)]
pub struct TlsListener {
    pub addr: SocketAddr,
    pub certs: CertSource,
    /// Connections from trusted proxies start with a PROXY header (before
    /// the TLS handshake).
    pub proxy_protocol: bool,
}

/// Where a TLS listener's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// PEM files, read at start-up.
    Files { cert: PathBuf, key: PathBuf },
    /// Issued and renewed by ACME (`[acme]`): a listener with no `cert`
    /// and `key`.
    Acme,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub upstream_read: Duration,
    pub client_header: Duration,
    pub client_idle: Duration,
    pub client_write: Duration,
    /// Pooled upstream connections idle this long are closed (below the
    /// idle timeouts of the load balancers in front of registries, so that
    /// ocirelay closes first and never reuses a connection being closed).
    pub upstream_idle: Duration,
    /// The whole of a request body (`POST /token`) must arrive in this
    /// time: a per-read deadline alone lets a byte every few seconds
    /// hold the connection for ever.
    pub client_body: Duration,
    /// How long a drain (SIGTERM) waits for requests in flight before the
    /// process exits anyway.
    pub drain: Duration,
}

/// The default drain: 5 minutes. A public mirror serves multi-GB layers
/// (CUDA and ML images) to clients on slow links: a 1 GiB layer at 30
/// Mbit/s takes about 4.5 minutes, and a pull cut at the end of an upgrade
/// starts that layer over.
pub const DEFAULT_DRAIN_SECS: f64 = 300.0;

/// The default minimum rate a client reads a response at: 4 KiB/s (32
/// kbit/s), below any link an image is pulled over (GPRS carries 40-80
/// kbit/s, and a 100 MB layer at 4 KiB/s takes 7 hours), above the 1 KiB/s
/// of a client that holds a slot by reading a large blob a trickle at a time.
pub const DEFAULT_MIN_RATE: u64 = 4096;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_token_body_bytes: usize,
    pub verify_digests: bool,
    /// Client connections open at once, all workers together; None:
    /// derived from the file descriptor limit (see `server::fds`).
    pub max_connections: Option<usize>,
    /// A client reading a response slower than this (bytes per second,
    /// measured while writes to it wait) is cut off; 0: no minimum.
    pub client_min_rate: u64,
}

/// One upstream registry.
#[derive(Debug, Clone)]
pub struct Registry {
    /// The name clients and the landing page use (`docker.io`, `ghcr.io`).
    pub name: String,
    pub upstream: Origin,
    pub ca_file: Option<PathBuf>,
    /// Insert `library/` before one-component names (Docker Hub's rule).
    pub library_prefix: bool,
    pub default: bool,
    /// Host names that route to this registry (`ghcr.mirror.example.com`).
    pub hosts: Vec<String>,
    /// The label that, with `domain`, makes this registry's host
    /// (`ghcr` -> `ghcr.mirror.example.com`).
    pub prefix: Option<String>,
    /// The operator's account at this registry: anonymous clients' pulls of
    /// public repositories go upstream under it (see `pull::credentials`).
    pub credentials: Option<Credentials>,
    /// This registry's `allow`, `deny` and `max_blob_bytes`.
    pub access: access::AccessRules,
    /// Whether upstream redirects may lead to loopback, private or
    /// link-local addresses. `None` (the default): only when the upstream
    /// itself is at such an address (an on-premises registry, a test
    /// double); a public registry's redirect never reaches the mirror's own
    /// network (see `pull::fetch`).
    pub redirect_private: Option<bool>,
}

/// A user name and password for an upstream registry. `Debug` never shows
/// the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// Which configured registry: a position in [`Config::registries`], valid
/// for the config it came from (a reload builds new ids with a new config;
/// nothing that outlives a config, such as an upstream pool, is keyed by
/// one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RegistryId(u16);

impl RegistryId {
    pub fn index(self) -> usize {
        self.0 as usize
    }

    fn at(i: usize) -> RegistryId {
        RegistryId(u16::try_from(i).expect("fewer than 65536 registries (checked when parsed)"))
    }
}

/// A host name that selects a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoute {
    pub host: String,
    pub registry: RegistryId,
}

// ---- the file's shape ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    listen: Vec<Spanned<String>>,
    #[serde(default)]
    proxy_protocol_listen: Vec<Spanned<String>>,
    #[serde(default)]
    trusted_proxies: Vec<Spanned<String>>,
    #[serde(default)]
    workers: usize,
    #[serde(default)]
    driver: Driver,
    #[serde(default = "yes")]
    access_log: bool,
    #[serde(default)]
    access_log_format: AccessLogFormat,
    metrics_listen: Option<Spanned<String>>,
    #[serde(default)]
    log_level: LogLevel,
    handover_socket: Option<Spanned<String>>,
    public_url: Option<Spanned<String>>,
    #[serde(default)]
    debug: bool,
    #[serde(default)]
    timeouts: FileTimeouts,
    #[serde(default)]
    limits: FileLimits,
    client_limits: Option<Spanned<limits::FileClientLimits>>,
    #[serde(default)]
    tls_listener: Vec<FileTls>,
    domain: Option<Spanned<String>>,
    #[serde(default = "yes")]
    builtin_registries: bool,
    #[serde(default)]
    registry: Vec<Spanned<FileRegistry>>,
    #[serde(default)]
    cache: FileCache,
    acme: Option<Spanned<FileAcme>>,
    #[serde(default)]
    access: access::FileAccess,
    auth: Option<Spanned<auth::FileAuth>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAcme {
    directory: Option<Spanned<String>>,
    email: Option<Spanned<String>>,
    domains: Option<Vec<Spanned<String>>>,
    ca_file: Option<Spanned<String>>,
    dir: Option<Spanned<String>>,
    #[serde(default)]
    challenge: AcmeChallenge,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileCache {
    enabled: bool,
    dir: Option<Spanned<String>>,
    max_size: Option<Spanned<String>>,
    tag_ttl: Option<Spanned<String>>,
    serve_stale: bool,
    s3: Option<Spanned<s3::FileS3>>,
}

impl Default for FileCache {
    fn default() -> Self {
        FileCache {
            enabled: true,
            dir: None,
            max_size: None,
            tag_ttl: None,
            serve_stale: true,
            s3: None,
        }
    }
}

/// A duration as written in the config: `"300s"`, `"5m"`, `"2h"`, `"1d"`, or
/// plain seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileTimeouts {
    connect_secs: f64,
    upstream_read_secs: f64,
    client_header_secs: f64,
    client_idle_secs: f64,
    client_write_secs: f64,
    upstream_idle_secs: f64,
    client_body_secs: f64,
    drain_secs: f64,
}

impl Default for FileTimeouts {
    fn default() -> Self {
        FileTimeouts {
            connect_secs: 10.0,
            upstream_read_secs: 60.0,
            client_header_secs: 20.0,
            client_idle_secs: 75.0,
            client_write_secs: 120.0,
            upstream_idle_secs: 30.0,
            client_body_secs: 30.0,
            drain_secs: DEFAULT_DRAIN_SECS,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileLimits {
    max_header_bytes: usize,
    max_token_body_bytes: usize,
    verify_digests: bool,
    max_connections: usize,
    client_min_bytes_per_sec: u64,
}

impl Default for FileLimits {
    fn default() -> Self {
        FileLimits {
            max_header_bytes: 16384,
            max_token_body_bytes: 65536,
            verify_digests: true,
            max_connections: 0,
            client_min_bytes_per_sec: DEFAULT_MIN_RATE,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    addr: Spanned<String>,
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    proxy_protocol: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRegistry {
    name: Spanned<String>,
    upstream: Spanned<String>,
    ca_file: Option<Spanned<String>>,
    library_prefix: Option<bool>,
    #[serde(default)]
    default: bool,
    #[serde(default)]
    hosts: Vec<Spanned<String>>,
    prefix: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    /// One of these three: the password itself, a file holding it (one
    /// line; kept out of a config that may be shared), or the name of an
    /// environment variable holding it.
    password: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    password_env: Option<Spanned<String>>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    deny: Vec<Spanned<String>>,
    max_blob_bytes: Option<Spanned<access::FileSize>>,
    redirect_private: Option<bool>,
}

impl Config {
    /// The embedded default configuration.
    pub fn default_config() -> Config {
        Config::parse(DEFAULT_CONFIG).expect("the embedded default config is valid")
    }

    /// Reads and checks a config file.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        Config::parse(&read(path)?)
    }

    /// Parses and checks config text (credentials named nowhere else come
    /// from the process's environment).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, &|k| std::env::var(k).ok())
    }

    /// [`Config::parse`] with the environment read through `env`.
    pub fn parse_with_env(text: &str, env: s3::Env<'_>) -> Result<Config, ConfigError> {
        let file: File = toml::from_str(text).map_err(|e| ConfigError {
            line: e.span().map(|s| line_of(text, s.start)),
            message: e.message().to_string(),
        })?;
        let at = |span: std::ops::Range<usize>, message: String| ConfigError {
            line: Some(line_of(text, span.start)),
            message,
        };

        let listen_addrs = |key: &str, list: &[Spanned<String>]| {
            list.iter()
                .map(|l| {
                    l.get_ref().parse::<SocketAddr>().map_err(|_| {
                        at(
                            l.span(),
                            format!(
                                "{key} address {:?} is not host:port (IP literal)",
                                l.get_ref()
                            ),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let listen = listen_addrs("listen", &file.listen)?;
        let proxy_protocol_listen =
            listen_addrs("proxy_protocol_listen", &file.proxy_protocol_listen)?;
        let trusted_proxies = file
            .trusted_proxies
            .iter()
            .map(|t| {
                Cidr::parse(t.get_ref())
                    .map_err(|e| at(t.span(), format!("trusted_proxies {:?}: {e}", t.get_ref())))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // A PROXY listener believes no one without trusted proxies: every
        // header would be refused.
        let untrusting = |span| {
            at(
                span,
                "a PROXY protocol listener needs `trusted_proxies` (the load balancers' addresses)"
                    .into(),
            )
        };
        if trusted_proxies.is_empty() {
            if let Some(l) = file.proxy_protocol_listen.first() {
                return Err(untrusting(l.span()));
            }
            let mut proxied = file
                .tls_listener
                .iter()
                .filter_map(|t| t.proxy_protocol.as_ref());
            if let Some(p) = proxied.find(|p| *p.get_ref()) {
                return Err(untrusting(p.span()));
            }
        }
        let mut tls_listeners = Vec::new();
        for t in &file.tls_listener {
            let addr = t.addr.get_ref().parse::<SocketAddr>().map_err(|_| {
                at(
                    t.addr.span(),
                    format!(
                        "tls_listener addr {:?} is not host:port (IP literal)",
                        t.addr.get_ref()
                    ),
                )
            })?;
            let certs =
                match (&t.cert, &t.key) {
                    (Some(c), Some(k)) => CertSource::Files {
                        cert: PathBuf::from(c.get_ref()),
                        key: PathBuf::from(k.get_ref()),
                    },
                    (None, None) if file.acme.is_some() => CertSource::Acme,
                    (None, None) => return Err(at(
                        t.addr.span(),
                        "this tls_listener has no `cert` and `key`: set both, or add an [acme] \
                         table to have its certificate issued automatically"
                            .into(),
                    )),
                    (Some(one), None) | (None, Some(one)) => {
                        return Err(at(
                            one.span(),
                            "a tls_listener needs both `cert` and `key` (or neither, with [acme])"
                                .into(),
                        ))
                    }
                };
            tls_listeners.push(TlsListener {
                addr,
                certs,
                proxy_protocol: t.proxy_protocol.as_ref().is_some_and(|p| *p.get_ref()),
            });
        }
        if listen.is_empty() && proxy_protocol_listen.is_empty() && tls_listeners.is_empty() {
            return Err(ConfigError {
                line: None,
                message: "no listener: set `listen` or add a [[tls_listener]]".into(),
            });
        }

        let metrics = match &file.metrics_listen {
            None => DEFAULT_METRICS_LISTEN,
            Some(v) => match v.get_ref().trim() {
                "public" => MetricsListen::Public,
                "off" => MetricsListen::Off,
                a => MetricsListen::Own {
                    addr: a.parse().map_err(|_| {
                        at(
                            v.span(),
                            format!(
                                "metrics_listen {:?} is not host:port (IP literal), \"public\" or \"off\"",
                                v.get_ref()
                            ),
                        )
                    })?,
                    configured: true,
                },
            },
        };

        let handover_socket = match &file.handover_socket {
            Some(h) => Some(HandoverSocket::parse(h.get_ref()).ok_or_else(|| {
                at(
                    h.span(),
                    format!(
                        "handover_socket {:?} is neither an absolute path (< 108 bytes) nor @name",
                        h.get_ref()
                    ),
                )
            })?),
            None => None,
        };

        let public_url = match &file.public_url {
            Some(u) => {
                let parsed = Url::parse(u.get_ref())
                    .map_err(|e| at(u.span(), format!("public_url: {e}")))?;
                if parsed.path_and_query != "/" {
                    return Err(at(u.span(), "public_url must not have a path".into()));
                }
                Some(parsed)
            }
            None => None,
        };

        let t = &file.timeouts;
        let secs = |name: &str, v: f64| -> Result<Duration, ConfigError> {
            if v.is_finite() && v > 0.0 && v <= 86400.0 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(ConfigError {
                    line: find_line(text, name),
                    message: format!("timeouts.{name} must be between 0 and 86400 seconds"),
                })
            }
        };
        let timeouts = Timeouts {
            connect: secs("connect_secs", t.connect_secs)?,
            upstream_read: secs("upstream_read_secs", t.upstream_read_secs)?,
            client_header: secs("client_header_secs", t.client_header_secs)?,
            client_idle: secs("client_idle_secs", t.client_idle_secs)?,
            client_write: secs("client_write_secs", t.client_write_secs)?,
            upstream_idle: secs("upstream_idle_secs", t.upstream_idle_secs)?,
            client_body: secs("client_body_secs", t.client_body_secs)?,
            drain: secs("drain_secs", t.drain_secs)?,
        };
        let l = &file.limits;
        if !(1024..=1 << 20).contains(&l.max_header_bytes) {
            return Err(ConfigError {
                line: find_line(text, "max_header_bytes"),
                message: "limits.max_header_bytes must be between 1024 and 1048576".into(),
            });
        }
        let limits = Limits {
            max_header_bytes: l.max_header_bytes,
            max_token_body_bytes: l.max_token_body_bytes.clamp(1024, 1 << 20),
            verify_digests: l.verify_digests,
            max_connections: (l.max_connections > 0).then_some(l.max_connections),
            client_min_rate: l.client_min_bytes_per_sec,
        };
        let client_limits = match &file.client_limits {
            Some(f) => Some(limits::parse(text, f, timeouts.client_write)?),
            None => None,
        };

        let mut registries = if file.builtin_registries {
            builtin_registries()
        } else {
            Vec::new()
        };
        let own = parse_registries(text, &file.registry, file.debug)?;
        if own.iter().any(|r| r.default) {
            registries.iter_mut().for_each(|r| r.default = false);
        }
        // A registry of the file replaces the built-in one of the same name,
        // keeping the built-in's host label and hosts unless it sets its own.
        for mut r in own {
            match registries.iter().position(|b| b.name == r.name) {
                Some(i) => {
                    let builtin = &registries[i];
                    if r.prefix.is_none() {
                        r.prefix = builtin.prefix.clone();
                    }
                    if r.hosts.is_empty() {
                        r.hosts = builtin.hosts.clone();
                    }
                    registries[i] = r;
                }
                None => registries.push(r),
            }
        }
        if registries.is_empty() {
            return Err(ConfigError {
                line: None,
                message: "no [[registry]] configured".into(),
            });
        }
        if !registries.iter().any(|r| r.default) {
            let i = registries
                .iter()
                .position(|r| r.name == "docker.io")
                .unwrap_or(0);
            registries[i].default = true;
        }
        let domain = match &file.domain {
            Some(d) => {
                let host = d
                    .get_ref()
                    .trim()
                    .trim_end_matches('.')
                    .to_ascii_lowercase();
                if !valid_host(&host) {
                    return Err(at(
                        d.span(),
                        format!("domain {:?} is not a host name", d.get_ref()),
                    ));
                }
                Some(host)
            }
            None => None,
        };
        let host_routes = host_routes(&registries, domain.as_deref()).map_err(|host| {
            let (a, b) = (host.first.index(), host.second.index());
            ConfigError {
                line: claim_line(text, &file, domain.as_deref(), &host.host),
                message: format!(
                    "host {} routes to both {} and {}",
                    host.host, registries[a].name, registries[b].name
                ),
            }
        })?;
        let max_size = match &file.cache.max_size {
            None => DEFAULT_CACHE_MAX,
            Some(v) => parse_size(v.get_ref()).ok_or_else(|| ConfigError {
                line: Some(line_of(text, v.span().start)),
                message: format!(
                    "cache max_size {:?} is not a size (e.g. \"200GiB\", \"500MB\")",
                    v.get_ref()
                ),
            })?,
        };
        let tag_ttl = match &file.cache.tag_ttl {
            None => DEFAULT_TAG_TTL,
            Some(v) => parse_duration(v.get_ref()).ok_or_else(|| ConfigError {
                line: Some(line_of(text, v.span().start)),
                message: format!(
                    "cache tag_ttl {:?} is not a duration (e.g. \"300s\", \"5m\", \"1h\")",
                    v.get_ref()
                ),
            })?,
        };
        let s3 = match (&file.cache.s3, file.cache.enabled) {
            (Some(t), true) => Some(s3::parse(text, t, env)?),
            _ => None,
        };
        let cache = file.cache.enabled.then(|| CacheConfig {
            s3,
            tag_ttl,
            serve_stale: file.cache.serve_stale,
            dir: file
                .cache
                .dir
                .as_ref()
                .map(|d| PathBuf::from(d.get_ref()))
                .unwrap_or_else(default_cache_dir),
            max_size,
        });
        let acme = match &file.acme {
            Some(a) => Some(parse_acme(
                text,
                a,
                &AcmeContext {
                    domain: domain.as_deref(),
                    host_routes: &host_routes,
                    has_plain_listener: !listen.is_empty(),
                    acme_listeners: tls_listeners
                        .iter()
                        .filter(|t| t.certs == CertSource::Acme)
                        .count(),
                },
            )?),
            None => None,
        };
        let a = &file.access;
        let access = access::parse_rules(text, &a.allow, &a.deny, a.max_blob_bytes.as_ref())
            .map_err(|(s, m)| at(s, m))?;
        let auth = match &file.auth {
            Some(a) => {
                Some(auth::parse_auth(text, a.get_ref(), a.span()).map_err(|(s, m)| at(s, m))?)
            }
            None => None,
        };
        Ok(Config {
            access,
            auth,
            acme,
            cache,
            metrics,
            listen,
            proxy_protocol_listen,
            tls_listeners,
            trusted_proxies,
            workers: file.workers,
            driver: file.driver,
            access_log: file.access_log,
            access_log_format: file.access_log_format,
            log_level: file.log_level,
            handover_socket,
            public_url,
            debug: file.debug,
            timeouts,
            limits,
            client_limits,
            registries,
            domain,
            host_routes,
        })
    }

    /// Whether PROXY headers and `X-Forwarded-For` from `peer` are believed.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|c| c.contains(peer))
    }

    pub fn default_registry(&self) -> RegistryId {
        RegistryId::at(self.registries.iter().position(|r| r.default).unwrap_or(0))
    }

    pub fn registry(&self, id: RegistryId) -> &Registry {
        &self.registries[id.index()]
    }

    /// Every registry with its id, in config order.
    pub fn registry_ids(&self) -> impl Iterator<Item = (RegistryId, &Registry)> {
        self.registries
            .iter()
            .enumerate()
            .map(|(i, r)| (RegistryId::at(i), r))
    }

    /// A configured registry by name (case-insensitive).
    pub fn registry_named(&self, name: &str) -> Option<RegistryId> {
        self.registries
            .iter()
            .position(|r| r.name.eq_ignore_ascii_case(name))
            .map(RegistryId::at)
    }
}

/// What `[acme]` is checked against: the names this config serves and
/// its listeners.
struct AcmeContext<'c> {
    domain: Option<&'c str>,
    host_routes: &'c [HostRoute],
    has_plain_listener: bool,
    acme_listeners: usize,
}

impl AcmeContext<'_> {
    /// Every host name the config serves: `domain`, then each registry's
    /// `<prefix>.<domain>` and `hosts`.
    fn served(&self) -> Vec<String> {
        let mut names: Vec<String> = self.domain.map(str::to_string).into_iter().collect();
        for h in self.host_routes {
            if !names.contains(&h.host) {
                names.push(h.host.clone());
            }
        }
        names
    }
}

/// Checks `[acme]`: a directory URL (or a Let's Encrypt shortcut), the
/// domains (by default every name served; each one given must be served),
/// and that the listeners can answer the chosen challenge.
fn parse_acme(
    text: &str,
    a: &Spanned<FileAcme>,
    cx: &AcmeContext<'_>,
) -> Result<AcmeConfig, ConfigError> {
    let at = |span: std::ops::Range<usize>, message: String| ConfigError {
        line: Some(line_of(text, span.start)),
        message,
    };
    let table = a.span();
    let a = a.get_ref();
    let directory = match &a.directory {
        None => Url::parse(LETSENCRYPT).expect("a valid URL"),
        Some(d) => {
            let given = d.get_ref().trim();
            let url = match given {
                "letsencrypt" => LETSENCRYPT,
                "letsencrypt-staging" => LETSENCRYPT_STAGING,
                url => url,
            };
            let parsed =
                Url::parse(url).map_err(|e| at(d.span(), format!("acme directory: {e}")))?;
            if parsed.origin.scheme != Scheme::Https {
                return Err(at(
                    d.span(),
                    "acme directory must be an https:// URL (RFC 8555 requires TLS)".into(),
                ));
            }
            parsed
        }
    };
    let email = match &a.email {
        Some(e) => {
            let v = e.get_ref().trim();
            let ok = v.split_once('@').is_some_and(|(user, host)| {
                !user.is_empty() && valid_host(host) && !v.contains(char::is_whitespace)
            });
            if !ok {
                return Err(at(
                    e.span(),
                    format!("acme email {:?} is not an address", e.get_ref()),
                ));
            }
            Some(v.to_string())
        }
        None => None,
    };
    let served = cx.served();
    let domains = match &a.domains {
        None => served,
        Some(given) => {
            let mut domains: Vec<String> = Vec::new();
            for d in given {
                let name = d
                    .get_ref()
                    .trim()
                    .trim_end_matches('.')
                    .to_ascii_lowercase();
                if name.starts_with("*.") {
                    return Err(at(
                        d.span(),
                        format!(
                            "acme domain {name}: wildcards need the DNS-01 challenge, which \
                             ocirelay does not answer"
                        ),
                    ));
                }
                if !valid_host(&name) {
                    return Err(at(
                        d.span(),
                        format!("acme domain {:?} is not a host name", d.get_ref()),
                    ));
                }
                if !served.contains(&name) {
                    return Err(at(
                        d.span(),
                        format!(
                            "acme domain {name} is not served by this config (it serves: {})",
                            if served.is_empty() {
                                "no host names; set `domain` or a registry's `hosts`".into()
                            } else {
                                served.join(", ")
                            }
                        ),
                    ));
                }
                if !domains.contains(&name) {
                    domains.push(name);
                }
            }
            domains
        }
    };
    if domains.is_empty() {
        return Err(at(
            table,
            "[acme] has no domains: set `domain`, a registry's `hosts`, or `domains`".into(),
        ));
    }
    if cx.acme_listeners == 0 {
        return Err(at(
            table,
            "[acme] is set but every [[tls_listener]] has its own `cert` and `key`: add a \
             [[tls_listener]] without them"
                .into(),
        ));
    }
    if a.challenge == AcmeChallenge::Http01 && !cx.has_plain_listener {
        return Err(at(
            table,
            "acme challenge \"http-01\" needs a plain `listen` address (port 80 for a public CA)"
                .into(),
        ));
    }
    let ca_file = existing_file(a.ca_file.as_ref(), "acme ca_file").map_err(|(s, m)| at(s, m))?;
    Ok(AcmeConfig {
        directory,
        email,
        domains,
        ca_file,
        dir: a
            .dir
            .as_ref()
            .map(|d| PathBuf::from(d.get_ref()))
            .unwrap_or_else(default_acme_dir),
        challenge: a.challenge,
    })
}

/// An optional path to a file that must exist (`what` names the key in
/// the error).
fn existing_file(
    path: Option<&Spanned<String>>,
    what: &str,
) -> Result<Option<PathBuf>, (std::ops::Range<usize>, String)> {
    let Some(p) = path else {
        return Ok(None);
    };
    let file = PathBuf::from(p.get_ref());
    if !file.is_file() {
        return Err((
            p.span(),
            format!("{what} {} does not exist", file.display()),
        ));
    }
    Ok(Some(file))
}

/// Checks the `[[registry]]` entries of one file.
fn parse_registries(
    text: &str,
    entries: &[Spanned<FileRegistry>],
    debug: bool,
) -> Result<Vec<Registry>, ConfigError> {
    let at = |span: std::ops::Range<usize>, message: String| ConfigError {
        line: Some(line_of(text, span.start)),
        message,
    };
    let mut registries: Vec<Registry> = Vec::new();
    for r in entries {
        let span = r.span();
        let r = r.get_ref();
        let name = r.name.get_ref().trim().to_ascii_lowercase();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b))
        {
            return Err(at(
                r.name.span(),
                format!(
                    "registry name {:?} must be a host-like name",
                    r.name.get_ref()
                ),
            ));
        }
        if registries.iter().any(|x| x.name == name) {
            return Err(at(
                r.name.span(),
                format!("registry {name:?} is defined twice"),
            ));
        }
        let url = Url::parse(r.upstream.get_ref())
            .map_err(|e| at(r.upstream.span(), format!("upstream: {e}")))?;
        if url.path_and_query != "/" {
            return Err(at(
                r.upstream.span(),
                "upstream must be scheme://host[:port] with no path".into(),
            ));
        }
        if url.origin.scheme == Scheme::Http && !debug {
            return Err(at(
                r.upstream.span(),
                format!(
                    "upstream {} is plain http; set `debug = true` to allow that",
                    url.origin
                ),
            ));
        }
        let ca_file = existing_file(r.ca_file.as_ref(), "ca_file").map_err(|(s, m)| at(s, m))?;
        if r.default && registries.iter().any(|x| x.default) {
            return Err(at(span, "only one registry may be `default = true`".into()));
        }
        let mut hosts = Vec::new();
        for h in &r.hosts {
            let host = h.get_ref().trim().to_ascii_lowercase();
            if !valid_host(&host) {
                return Err(at(
                    h.span(),
                    format!("host {:?} is not a host name", h.get_ref()),
                ));
            }
            hosts.push(host);
        }
        let prefix = match &r.prefix {
            Some(p) => {
                let label = p.get_ref().trim().to_ascii_lowercase();
                if label.contains('.') || !valid_host(&label) {
                    return Err(at(
                        p.span(),
                        format!("prefix {:?} must be one DNS label", p.get_ref()),
                    ));
                }
                Some(label)
            }
            None => None,
        };
        let credentials = registry_credentials(r, span.clone()).map_err(|(s, m)| at(s, m))?;
        let access = access::parse_rules(text, &r.allow, &r.deny, r.max_blob_bytes.as_ref())
            .map_err(|(s, m)| at(s, m))?;
        registries.push(Registry {
            library_prefix: r.library_prefix.unwrap_or(name == "docker.io"),
            name,
            upstream: url.origin,
            ca_file,
            default: r.default,
            hosts,
            prefix,
            credentials,
            access,
            redirect_private: r.redirect_private,
        });
    }
    Ok(registries)
}

/// A registry's `username` with its `password`, `password_file` or
/// `password_env` (exactly one), or none of them.
fn registry_credentials(
    r: &FileRegistry,
    span: std::ops::Range<usize>,
) -> Result<Option<Credentials>, (std::ops::Range<usize>, String)> {
    let sources = [&r.password, &r.password_file, &r.password_env];
    let given = sources.iter().filter(|s| s.is_some()).count();
    let Some(user) = &r.username else {
        return match given {
            0 => Ok(None),
            _ => Err((span, "a password needs `username` as well".into())),
        };
    };
    let username = user.get_ref().trim().to_string();
    // RFC 7617: the user-id of Basic credentials cannot hold a colon.
    if username.is_empty() || username.contains(':') || username.chars().any(char::is_control) {
        return Err((
            user.span(),
            "username must be non-empty, without ':' or control characters".into(),
        ));
    }
    if given != 1 {
        return Err((
            user.span(),
            "`username` needs exactly one of `password`, `password_file`, `password_env`".into(),
        ));
    }
    let password = if let Some(p) = &r.password {
        p.get_ref().clone()
    } else if let Some(f) = &r.password_file {
        let text = std::fs::read_to_string(f.get_ref())
            .map_err(|e| (f.span(), format!("password_file {}: {e}", f.get_ref())))?;
        // One line; the newline an editor or `echo` adds is not part of it.
        text.trim_end_matches(['\r', '\n']).to_string()
    } else if let Some(v) = &r.password_env {
        std::env::var(v.get_ref()).map_err(|_| {
            (
                v.span(),
                format!(
                    "password_env: environment variable {} is not set",
                    v.get_ref()
                ),
            )
        })?
    } else {
        unreachable!("one source given")
    };
    if password.is_empty() || password.chars().any(char::is_control) {
        return Err((
            user.span(),
            "the password must be non-empty, without control characters".into(),
        ));
    }
    Ok(Some(Credentials { username, password }))
}

/// The registries of the embedded default config: every file starts from
/// these unless it says `builtin_registries = false`.
fn builtin_registries() -> Vec<Registry> {
    let file: File = toml::from_str(DEFAULT_CONFIG).expect("the embedded default config parses");
    parse_registries(DEFAULT_CONFIG, &file.registry, false)
        .expect("the embedded registries are valid")
}

fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-".contains(&b))
        && !h.starts_with(['.', '-'])
        && !h.ends_with(['.', '-'])
}

/// A config file's text.
fn read(path: &std::path::Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        line: None,
        message: format!("cannot read {}: {e}", path.display()),
    })
}

/// A host two registries claim.
struct HostCollision {
    host: String,
    first: RegistryId,
    second: RegistryId,
}

/// Host routes from `hosts` and `<prefix>.<domain>`; a host claimed twice is
/// an error.
fn host_routes(
    registries: &[Registry],
    domain: Option<&str>,
) -> Result<Vec<HostRoute>, HostCollision> {
    let mut routes: Vec<HostRoute> = Vec::new();
    for (i, r) in registries.iter().enumerate() {
        let derived = match (domain, &r.prefix) {
            (Some(d), Some(p)) => Some(format!("{p}.{d}")),
            _ => None,
        };
        for host in r.hosts.iter().cloned().chain(derived) {
            if let Some(other) = routes.iter().find(|x| x.host == host) {
                if other.registry.index() != i {
                    return Err(HostCollision {
                        host,
                        first: other.registry,
                        second: RegistryId::at(i),
                    });
                }
                continue;
            }
            routes.push(HostRoute {
                host,
                registry: RegistryId::at(i),
            });
        }
    }
    Ok(routes)
}

/// The line of the file's last claim on `host`: a `hosts` entry, or a
/// `prefix` that makes it with `domain`; else the `domain` line (a claim of
/// a built-in registry, made by the domain).
fn claim_line(text: &str, file: &File, domain: Option<&str>, host: &str) -> Option<usize> {
    let mut line = None;
    for r in &file.registry {
        let r = r.get_ref();
        for h in &r.hosts {
            if h.get_ref().trim().eq_ignore_ascii_case(host) {
                line = Some(line_of(text, h.span().start));
            }
        }
        if let (Some(p), Some(d)) = (&r.prefix, domain) {
            if format!("{}.{d}", p.get_ref().trim()).eq_ignore_ascii_case(host) {
                line = Some(line_of(text, p.span().start));
            }
        }
    }
    line.or_else(|| file.domain.as_ref().map(|d| line_of(text, d.span().start)))
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn find_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| l.trim_start().starts_with(key))
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_a_docker_hub_mirror_on_5000() {
        let c = Config::default_config();
        assert_eq!(c.listen, vec!["127.0.0.1:5000".parse().unwrap()]);
        let r = &c.registry(c.default_registry());
        assert_eq!(r.name, "docker.io");
        assert_eq!(r.upstream.host, "registry-1.docker.io");
        assert!(r.library_prefix);
    }

    #[test]
    fn the_issue_shape_parses() {
        let c = Config::parse(
            r#"
listen = ["127.0.0.1:5000"]
[[tls_listener]]
addr = "0.0.0.0:443"
cert = "/etc/ocirelay/fullchain.pem"
key = "/etc/ocirelay/key.pem"
[[registry]]
name = "docker.io"
upstream = "https://registry-1.docker.io"
"#,
        )
        .unwrap();
        assert_eq!(c.tls_listeners.len(), 1);
        assert!(c.registries[0].default);
    }

    #[test]
    fn builtin_registries_are_the_base_and_can_be_overridden() {
        let c = Config::default_config();
        let names: Vec<&str> = c.registries.iter().map(|r| r.name.as_str()).collect();
        for n in [
            "docker.io",
            "quay.io",
            "gcr.io",
            "k8s.gcr.io",
            "registry.k8s.io",
            "ghcr.io",
            "docker.cloudsmith.io",
            "public.ecr.aws",
            "mcr.microsoft.com",
            "nvcr.io",
            "docker.elastic.co",
        ] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
        let c = Config::parse(
            "listen = [\"127.0.0.1:1\"]\n[[registry]]\nname = \"ghcr.io\"\nupstream = \"https://ghcr.internal:8443\"\nprefix = \"gh\"\n",
        )
        .unwrap();
        let g = c.registries.iter().find(|r| r.name == "ghcr.io").unwrap();
        assert_eq!(g.upstream.host, "ghcr.internal");
        assert_eq!(g.prefix.as_deref(), Some("gh"));
        let q = Config::parse(
            "listen = [\"127.0.0.1:1\"]\n[[registry]]\nname = \"quay.io\"\nupstream = \"https://quay.internal\"\n",
        )
        .unwrap();
        let quay = q.registries.iter().find(|r| r.name == "quay.io").unwrap();
        assert_eq!(
            quay.prefix.as_deref(),
            Some("quay"),
            "the built-in label is kept"
        );
        assert_eq!(c.registries.len(), 11, "replaced, not added");
        assert_eq!(c.registry(c.default_registry()).name, "docker.io");
        let only = Config::parse(
            "listen = [\"127.0.0.1:1\"]\nbuiltin_registries = false\n[[registry]]\nname = \"r.example\"\nupstream = \"https://r.example\"\n",
        )
        .unwrap();
        assert_eq!(only.registries.len(), 1);
        assert!(only.registries[0].default);
    }

    #[test]
    fn domain_gives_each_registry_its_customary_host() {
        let c = Config::parse(
            "listen = [\"127.0.0.1:1\"]\ndomain = \"Mirror.Example.com\"\n[[registry]]\nname = \"corp\"\nupstream = \"https://corp.example\"\nhosts = [\"registry.corp.test\"]\n",
        )
        .unwrap();
        let host_of = |name: &str| -> Vec<String> {
            let i = c.registry_named(name).unwrap();
            c.host_routes
                .iter()
                .filter(|h| h.registry == i)
                .map(|h| h.host.clone())
                .collect()
        };
        assert_eq!(host_of("docker.io"), ["docker.mirror.example.com"]);
        assert_eq!(host_of("ghcr.io"), ["ghcr.mirror.example.com"]);
        assert_eq!(host_of("k8s.gcr.io"), ["k8s-gcr.mirror.example.com"]);
        assert_eq!(host_of("registry.k8s.io"), ["k8s.mirror.example.com"]);
        assert_eq!(host_of("corp"), ["registry.corp.test"]);
        let e = Config::parse(
            "listen = [\"127.0.0.1:1\"]\n[[registry]]\nname = \"a.example\"\nupstream = \"https://a.example\"\nhosts = [\"x.test\"]\n[[registry]]\nname = \"b.example\"\nupstream = \"https://b.example\"\nhosts = [\"x.test\"]\n",
        )
        .unwrap_err();
        assert!(e.message.contains("x.test"), "{e}");
    }

    #[test]
    fn errors_name_the_line() {
        let e = Config::parse("listen = [\"127.0.0.1:5000\"]\n[[registry]]\nname = \"x\"\nupstream = \"ftp://nope\"\n").unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
        let e = Config::parse("listen = [\"127.0.0.1:5000\"]\n\nbogus = 1\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        let e = Config::parse("listen = [\"nope\"]\n").unwrap_err();
        assert_eq!(e.line, Some(1));
        let e = Config::parse(
            "listen = [\"127.0.0.1:1\"]\n[[registry]]\nname = \"x\"\nupstream = \"http://h\"\n",
        )
        .unwrap_err();
        assert!(e.message.contains("debug"), "{e}");
    }

    #[test]
    fn metrics_listen_is_loopback_by_default_and_can_be_public_off_or_moved() {
        let l = "listen = [\"127.0.0.1:1\"]\n";
        assert_eq!(Config::parse(l).unwrap().metrics, DEFAULT_METRICS_LISTEN);
        let c = Config::parse(&format!("metrics_listen = \"10.0.0.1:9100\"\n{l}")).unwrap();
        assert_eq!(
            c.metrics,
            MetricsListen::Own {
                addr: "10.0.0.1:9100".parse().unwrap(),
                configured: true
            }
        );
        let c = Config::parse(&format!("metrics_listen = \"public\"\n{l}")).unwrap();
        assert_eq!(c.metrics, MetricsListen::Public);
        let c = Config::parse(&format!("metrics_listen = \"off\"\n{l}")).unwrap();
        assert_eq!(c.metrics, MetricsListen::Off);
        let e = Config::parse(&format!("{l}\nmetrics_listen = \"loud\"\n")).unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("public"), "{e}");
    }

    #[test]
    fn cache_sizes_read_binary_and_decimal_units_and_refuse_the_rest() {
        assert_eq!(parse_size("200GiB"), Some(200 << 30));
        assert_eq!(parse_size("500 MB"), Some(500_000_000));
        assert_eq!(parse_size("1.5g"), Some(3 << 29));
        assert_eq!(parse_size("1048576"), Some(1 << 20));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("10 parsecs"), None);
        assert_eq!(parse_size("0"), None);
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(12_900_000), "12.3 MiB");
        assert_eq!(parse_size(&human_size(10 << 30)), Some(10 << 30));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1d"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("soon"), None);
        let l = "listen = [\"127.0.0.1:1\"]\n";
        let c = Config::parse(&format!("{l}[cache]\nmax_size = \"1TiB\"\ndir = \"/x\"\n")).unwrap();
        let cache = c.cache.unwrap();
        assert_eq!((cache.max_size, cache.dir), (1 << 40, PathBuf::from("/x")));
        let e = Config::parse(&format!("{l}\n[cache]\nmax_size = \"big\"\n")).unwrap_err();
        assert_eq!(e.line, Some(4));
        let off = Config::parse(&format!("{l}[cache]\nenabled = false\n")).unwrap();
        assert!(off.cache.is_none());
    }

    #[test]
    fn lifecycle_settings_parse_and_bad_ones_name_their_line() {
        let l = "listen = [\"127.0.0.1:1\"]\n";
        let c = Config::parse(l).unwrap();
        assert_eq!(c.timeouts.drain, Duration::from_secs(300));
        assert_eq!(c.log_level, LogLevel::Info);
        assert_eq!(c.handover_socket, None);
        let c = Config::parse(&format!(
            "{l}log_level = \"debug\"\nhandover_socket = \"@ocirelay\"\n[timeouts]\ndrain_secs = 30\n"
        ))
        .unwrap();
        assert_eq!(c.timeouts.drain, Duration::from_secs(30));
        assert_eq!(c.log_level, LogLevel::Debug);
        assert_eq!(
            c.handover_socket,
            Some(HandoverSocket::Abstract("ocirelay".into()))
        );
        let c = Config::parse(&format!("{l}handover_socket = \"/run/ocirelay/h.sock\"\n")).unwrap();
        assert_eq!(
            c.handover_socket,
            Some(HandoverSocket::Path("/run/ocirelay/h.sock".into()))
        );
        for (bad, says) in [
            ("handover_socket = \"h.sock\"", "handover_socket"),
            ("handover_socket = \"@\"", "handover_socket"),
            ("log_level = \"loud\"", "unknown variant"),
            ("[timeouts]\ndrain_secs = 0", "drain_secs"),
        ] {
            let e = Config::parse(&format!("{l}{bad}\n")).unwrap_err();
            assert!(e.message.contains(says), "{bad}: {e}");
            assert!(e.line.is_some_and(|n| n >= 2), "{bad}: {e}");
        }
    }

    #[test]
    fn a_config_source_applies_the_command_line_over_the_file() {
        let path = std::env::temp_dir().join(format!("ocirelay-src-{}.toml", std::process::id()));
        std::fs::write(&path, "listen = [\"127.0.0.1:1\"]\nworkers = 3\n").unwrap();
        let mut source = ConfigSource {
            path: Some(path.clone()),
            ..ConfigSource::default()
        };
        let c = source.load().unwrap();
        assert_eq!((c.listen[0].port(), c.workers), (1, 3));
        source.listen = vec!["127.0.0.1:2".parse().unwrap()];
        source.workers = Some(1);
        let c = source.load().unwrap();
        assert_eq!((c.listen[0].port(), c.workers), (2, 1));
        std::fs::remove_file(&path).unwrap();
        assert!(source.load().unwrap_err().message.contains("cannot read"));
        let default = ConfigSource::default().load().unwrap();
        assert_eq!(default.listen, Config::default_config().listen);
    }

    #[test]
    fn upstream_credentials_come_from_the_config_a_file_or_the_environment() {
        let reg = |extra: &str| {
            Config::parse(&format!(
                "listen = [\"127.0.0.1:1\"]\nbuiltin_registries = false\n[[registry]]\nname = \"docker.io\"\nupstream = \"https://registry-1.docker.io\"\n{extra}"
            ))
        };
        let creds = |c: Config| c.registries[0].credentials.clone();
        let c = reg("username = \"ops\"\npassword = \"pw\"\n").unwrap();
        let got = creds(c).unwrap();
        assert_eq!(
            (got.username.as_str(), got.password.as_str()),
            ("ops", "pw")
        );
        assert!(
            !format!("{got:?}").contains("pw"),
            "Debug shows the password"
        );

        let file = std::env::temp_dir().join(format!("ocirelay-pw-{}", std::process::id()));
        std::fs::write(&file, "from-file\n").unwrap();
        let c = reg(&format!(
            "username = \"ops\"\npassword_file = \"{}\"\n",
            file.display()
        ))
        .unwrap();
        assert_eq!(creds(c).unwrap().password, "from-file");
        std::fs::remove_file(&file).unwrap();

        std::env::set_var("OCIRELAY_TEST_UPSTREAM_PW", "from-env");
        let c = reg("username = \"ops\"\npassword_env = \"OCIRELAY_TEST_UPSTREAM_PW\"\n").unwrap();
        assert_eq!(creds(c).unwrap().password, "from-env");

        assert!(creds(reg("").unwrap()).is_none());
        for (bad, says) in [
            ("password = \"pw\"\n", "needs `username`"),
            ("username = \"ops\"\n", "exactly one"),
            (
                "username = \"ops\"\npassword = \"a\"\npassword_env = \"OCIRELAY_TEST_UPSTREAM_PW\"\n",
                "exactly one",
            ),
            ("username = \"o:ps\"\npassword = \"pw\"\n", "without ':'"),
            ("username = \"ops\"\npassword_env = \"OCIRELAY_TEST_UNSET_VAR\"\n", "not set"),
            ("username = \"ops\"\npassword_file = \"/nonexistent/pw\"\n", "password_file"),
        ] {
            let e = reg(bad).err().unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(e.to_string().contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn proxies_listeners_and_log_format_parse_and_errors_name_their_line() {
        let c = Config::parse(
            "listen = [\"127.0.0.1:1\"]\nproxy_protocol_listen = [\"127.0.0.1:2\"]\n\
             trusted_proxies = [\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.7\"]\n\
             access_log_format = \"json\"\n\
             [[tls_listener]]\naddr = \"127.0.0.1:3\"\ncert = \"c\"\nkey = \"k\"\nproxy_protocol = true\n",
        )
        .unwrap();
        assert_eq!(c.proxy_protocol_listen, ["127.0.0.1:2".parse().unwrap()]);
        assert!(c.tls_listeners[0].proxy_protocol);
        assert_eq!(c.access_log_format, AccessLogFormat::Json);
        assert!(c.trusts("10.1.2.3".parse().unwrap()));
        assert!(c.trusts("::ffff:192.0.2.7".parse().unwrap()));
        assert!(!c.trusts("192.0.2.8".parse().unwrap()));
        let d = Config::default_config();
        assert_eq!(d.access_log_format, AccessLogFormat::Text);
        assert!(d.trusted_proxies.is_empty() && d.proxy_protocol_listen.is_empty());

        let l = "listen = [\"127.0.0.1:1\"]\n";
        for (text, line, says) in [
            (format!("{l}\ntrusted_proxies = [\"10.0.0.1/8\"]\n"), 3, "after the prefix"),
            (format!("{l}trusted_proxies = [\n\"ten\"]\n"), 3, "not an IP"),
            (format!("{l}proxy_protocol_listen = [\"127.0.0.1:2\"]\n"), 2, "trusted_proxies"),
            (
                format!("{l}[[tls_listener]]\naddr = \"127.0.0.1:3\"\ncert = \"c\"\nkey = \"k\"\nproxy_protocol = true\n"),
                6,
                "trusted_proxies",
            ),
            (format!("{l}access_log_format = \"xml\"\n"), 2, "unknown variant"),
            (format!("{l}proxy_protocol_listen = [\"nope\"]\n"), 2, "proxy_protocol_listen"),
        ] {
            let e = Config::parse(&text).err().unwrap_or_else(|| panic!("{text:?} accepted"));
            assert_eq!(e.line, Some(line), "{text:?}: {e}");
            assert!(e.message.contains(says), "{text:?}: {e}");
        }
    }

    /// A config with one registry labelled `docker`, `domain`, a plain
    /// listener, an ACME TLS listener, then `acme` (the `[acme]` body).
    fn with_acme(acme: &str) -> Result<Config, ConfigError> {
        Config::parse(&format!(
            "listen = [\"127.0.0.1:80\"]\ndomain = \"Mirror.Test\"\nbuiltin_registries = false\n\
             [[tls_listener]]\naddr = \"127.0.0.1:443\"\n\
             [[registry]]\nname = \"docker.io\"\nupstream = \"https://registry-1.docker.io\"\n\
             prefix = \"docker\"\nhosts = [\"hub.corp.test\"]\n\
             [acme]\n{acme}"
        ))
    }

    #[test]
    fn acme_defaults_to_lets_encrypt_and_every_name_served() {
        let c = with_acme("email = \"ops@mirror.test\"\n").unwrap();
        let a = c.acme.unwrap();
        assert_eq!(a.directory.to_string(), LETSENCRYPT);
        assert_eq!(a.email.as_deref(), Some("ops@mirror.test"));
        assert_eq!(
            a.domains,
            ["mirror.test", "hub.corp.test", "docker.mirror.test"]
        );
        assert_eq!(a.challenge, AcmeChallenge::TlsAlpn01);
        assert!(a.dir.ends_with("ocirelay/acme"), "{}", a.dir.display());
        assert_eq!(c.tls_listeners[0].certs, CertSource::Acme);

        let c = with_acme(
            "directory = \"letsencrypt-staging\"\ndomains = [\"Docker.Mirror.Test\"]\n\
             challenge = \"http-01\"\ndir = \"/var/lib/x\"\n",
        )
        .unwrap();
        let a = c.acme.unwrap();
        assert_eq!(a.directory.to_string(), LETSENCRYPT_STAGING);
        assert_eq!(a.domains, ["docker.mirror.test"]);
        assert_eq!(a.challenge, AcmeChallenge::Http01);
        assert_eq!(a.dir, PathBuf::from("/var/lib/x"));
    }

    #[test]
    fn acme_problems_name_their_line() {
        // Line 12 is the first line of the [acme] body.
        for (body, line, says) in [
            (
                "domains = [\"mirror.test\", \"other.test\"]\n",
                12,
                "other.test is not served",
            ),
            ("domains = [\"*.mirror.test\"]\n", 12, "DNS-01"),
            ("directory = \"http://ca.test/dir\"\n", 12, "https"),
            ("email = \"not an address\"\n", 12, "not an address"),
            ("ca_file = \"/nonexistent/ca.pem\"\n", 12, "does not exist"),
            ("challenge = \"dns-01\"\n", 12, "unknown variant"),
        ] {
            let e = with_acme(body)
                .err()
                .unwrap_or_else(|| panic!("{body:?} accepted"));
            assert_eq!(e.line, Some(line), "{body:?}: {e}");
            assert!(e.message.contains(says), "{body:?}: {e}");
        }
        let e = Config::parse(
            "listen = [\"127.0.0.1:80\"]\n[[tls_listener]]\naddr = \"127.0.0.1:443\"\n",
        )
        .unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("[acme]"), "{e}");
        let e = Config::parse(
            "listen = [\"127.0.0.1:80\"]\n[[tls_listener]]\naddr = \"127.0.0.1:443\"\ncert = \"c.pem\"\n",
        )
        .unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
        let e = Config::parse(
            "listen = [\"127.0.0.1:80\"]\ndomain = \"m.test\"\n[acme]\nemail = \"a@m.test\"\n",
        )
        .unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("without them"), "{e}");
        let e = Config::parse(
            "domain = \"m.test\"\n[[tls_listener]]\naddr = \"127.0.0.1:443\"\n[acme]\nchallenge = \"http-01\"\n",
        )
        .unwrap_err();
        assert!(e.message.contains("plain `listen`"), "{e}");
        let e = Config::parse(
            "listen = [\"127.0.0.1:80\"]\nbuiltin_registries = false\n[[tls_listener]]\naddr = \"127.0.0.1:443\"\n\
             [[registry]]\nname = \"r.test\"\nupstream = \"https://r.test\"\n[acme]\n",
        )
        .unwrap_err();
        assert!(e.message.contains("no domains"), "{e}");
    }
}
