//! Starting the real `ocirelay` binary: [`Relay`] runs it with a config text
//! and stops it (by its own PID) when dropped; the config builders give the
//! tests' usual config, with short timeouts, for a [`HubDouble`] or for any
//! upstream URL. [`Relay::signal`], [`Relay::rewrite_config`] and
//! [`Relay::wait_exit`] drive its lifecycle (reload, drain).

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hubdouble::client::Client;
use hubdouble::HubDouble;

/// A running ocirelay process.
pub struct Relay {
    child: Child,
    pub http: SocketAddr,
    pub https: Option<SocketAddr>,
    /// Listeners that expect PROXY headers (`proxy_protocol_listen`, and a
    /// `[[tls_listener]]` with `proxy_protocol = true`).
    pub proxied_http: Option<SocketAddr>,
    pub proxied_https: Option<SocketAddr>,
    /// The metrics listener (`metrics_listen`), when it has one.
    pub metrics: Option<SocketAddr>,
    pub dir: tempdir::Dir,
    kept: Vec<tempdir::Dir>,
    stderr: Arc<Mutex<String>>,
}

pub mod tempdir {
    use std::path::{Path, PathBuf};

    /// A directory removed on drop.
    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!(
                "ocirelay-test-{tag}-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            ));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The `[timeouts]` of a test config, in seconds.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: u64,
    pub upstream_read: u64,
    pub client_header: u64,
    pub client_idle: u64,
    pub client_write: u64,
}

impl Default for Timeouts {
    /// Short, so that a fault shows within seconds.
    fn default() -> Timeouts {
        Timeouts {
            connect: 2,
            upstream_read: 2,
            client_header: 2,
            client_idle: 5,
            client_write: 5,
        }
    }
}

/// A `[[registry]]` block: `name` served from `upstream`, trusting `ca_file`.
fn registry_entry(name: &str, upstream: &str, ca_file: Option<&Path>) -> String {
    let mut s = format!("[[registry]]\nname = \"{name}\"\nupstream = \"{upstream}\"\n");
    if let Some(ca) = ca_file {
        s.push_str(&format!("ca_file = \"{}\"\n", ca.display()));
    }
    s
}

/// The `[[registry]]` block pointing at `hub`.
pub fn registry_block(hub: &HubDouble, name: &str) -> String {
    registry_entry(name, &hub.registry_url(), hub.ca_path())
}

/// A whole test config: one listener on 127.0.0.1, two workers, `debug`,
/// the top-level keys in `extra`, `timeouts`, then `registries`.
pub fn config_text(debug: bool, extra: &str, timeouts: Timeouts, registries: &str) -> String {
    let Timeouts {
        connect,
        upstream_read,
        client_header,
        client_idle,
        client_write,
    } = timeouts;
    format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = 2\ndebug = {debug}\n{extra}\n[timeouts]\nconnect_secs = {connect}\nupstream_read_secs = {upstream_read}\nclient_header_secs = {client_header}\nclient_idle_secs = {client_idle}\nclient_write_secs = {client_write}\n\n{registries}"
    )
}

/// Config text with short timeouts suitable for tests, plus `extra`.
pub fn config_for(hub: &HubDouble, extra: &str) -> String {
    config_with_timeouts(hub, extra, Timeouts::default())
}

/// [`config_for`] with other `timeouts`.
pub fn config_with_timeouts(hub: &HubDouble, extra: &str, timeouts: Timeouts) -> String {
    config_text(
        !hub.is_tls(),
        extra,
        timeouts,
        &registry_block(hub, "docker.io"),
    )
}

/// The test config for `hub` with the cache on, in `dir`.
pub fn config_with_cache(hub: &HubDouble, dir: &Path) -> String {
    config_for(
        hub,
        &format!("[cache]\nenabled = true\ndir = \"{}\"\n", dir.display()),
    )
}

/// A relay config whose only registry is `upstream` (plain HTTP, so `debug`).
pub fn config_with_upstream(upstream: &str) -> String {
    config_text(
        true,
        "",
        Timeouts::default(),
        &registry_entry("docker.io", upstream, None),
    )
}

/// Runs `ocirelay config check` on `text`: whether it passed, and what it
/// wrote to stderr.
pub fn config_check(text: &str) -> (bool, String) {
    config_check_env(text, &[])
}

/// [`config_check`] with `env` set in (a `None` value: removed from) the
/// command's environment, e.g. the `AWS_*` credentials of `[cache.s3]`.
pub fn config_check_env(text: &str, env: &[(&str, Option<&str>)]) -> (bool, String) {
    let dir = tempdir::Dir::new("cfg");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ocirelay"));
    cmd.args(["config", "check"]).arg(&path);
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Relay {
    /// Starts ocirelay against `hub` with the test config.
    pub fn start(hub: &HubDouble) -> Relay {
        Relay::start_with(&config_for(hub, ""))
    }

    /// Starts ocirelay with `config`. A config without a `[cache]` table
    /// runs without the cache (these tests are about the relay); one with
    /// `[cache]` and no `dir` gets a cache directory of its own. A config
    /// that does not mention `metrics_listen` gets a metrics listener on a
    /// port of its own (the default address is one for the whole machine).
    pub fn start_with(config: &str) -> Relay {
        Relay::start_with_env(config, &[])
    }

    /// [`Relay::start_with`], with environment variables `env` set.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Relay {
        let dir = tempdir::Dir::new("relay");
        let path = dir.path().join("ocirelay.toml");
        std::fs::write(&path, as_written(config)).unwrap();
        Relay::start_file(path, dir, env, None)
    }

    /// [`Relay::start_with`] under a file descriptor limit of `nofile`
    /// (soft and hard: the relay cannot raise it).
    pub fn start_with_fd_limit(config: &str, nofile: u64) -> Relay {
        let dir = tempdir::Dir::new("relay");
        let path = dir.path().join("ocirelay.toml");
        std::fs::write(&path, as_written(config)).unwrap();
        Relay::start_file(path, dir, &[], Some(nofile))
    }

    /// The config file the relay was started with (what a reload reads).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("ocirelay.toml")
    }

    /// Replaces the relay's config file (as [`Relay::start_with`] writes
    /// it); a [`Relay::signal`]`("HUP")` then reloads it.
    pub fn rewrite_config(&self, config: &str) {
        std::fs::write(self.config_path(), as_written(config)).unwrap();
    }

    /// Sends the relay the signal named `sig` (`"HUP"`, `"TERM"`, ...),
    /// by its own PID.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg("-s")
            .arg(sig)
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -s {sig} {} failed", self.child.id());
    }

    /// Waits up to `limit` for the process to end; its exit status, or
    /// `None` if it still runs.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Reloads the config (SIGHUP) and waits until the relay says that
    /// `generation` applies to new requests.
    pub fn reload(&self, generation: u64) {
        self.signal("HUP");
        let said = format!("config generation {generation} applied");
        assert!(
            self.wait_for_log(&said, Duration::from_secs(20)),
            "no \"{said}\": {}",
            self.stderr()
        );
    }

    /// Waits up to `limit` for `needle` to show in the relay's stderr.
    pub fn wait_for_log(&self, needle: &str, limit: Duration) -> bool {
        super::wait_until(limit, || self.stderr().contains(needle))
    }

    fn start_file(
        path: PathBuf,
        dir: tempdir::Dir,
        env: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Relay {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ocirelay"));
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            let lim = libc::rlimit {
                rlim_cur: n as libc::rlim_t,
                rlim_max: n as libc::rlim_t,
            };
            // SAFETY: runs in the child between fork and exec, where only
            // async-signal-safe calls are allowed; setrlimit is one, and
            // `lim` is a copy owned by the closure.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = command
            .arg("--config")
            .arg(&path)
            .envs(env.iter().copied())
            // Never the user's own cache or state (ACME) directory.
            .env("XDG_CACHE_HOME", dir.path().join("xdg-cache"))
            .env("XDG_STATE_HOME", dir.path().join("xdg-state"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ocirelay");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (mut http, mut https, mut metrics) = (None, None, None);
        let (mut proxied_http, mut proxied_https) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut line = String::new();
        loop {
            assert!(Instant::now() < deadline, "ocirelay did not become ready");
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                let _ = child.wait();
                panic!(
                    "ocirelay exited during start-up: {}",
                    stderr.lock().unwrap()
                );
            }
            let l = line.trim();
            if let Some(l) = l.strip_suffix(" (PROXY protocol)") {
                if let Some(a) = l.strip_prefix("ocirelay listening on http://") {
                    proxied_http = Some(a.parse().unwrap());
                } else if let Some(a) = l.strip_prefix("ocirelay listening on https://") {
                    proxied_https = Some(a.parse().unwrap());
                }
            } else if let Some(a) = l.strip_prefix("ocirelay listening on http://") {
                http = Some(a.parse().unwrap());
            } else if let Some(a) = l.strip_prefix("ocirelay listening on https://") {
                https = Some(a.parse().unwrap());
            } else if let Some(a) = l.strip_prefix("ocirelay metrics on http://") {
                metrics = Some(a.trim_end_matches("/metrics").parse().unwrap());
            } else if l == "ocirelay ready" {
                break;
            }
        }
        // Keep draining stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = out.read_to_end(&mut sink);
        });
        Relay {
            child,
            http: http.expect("an http listener"),
            https,
            proxied_http,
            proxied_https,
            metrics,
            dir,
            kept: Vec::new(),
            stderr,
        }
    }

    /// A plain-HTTP client to the relay.
    pub fn client(&self) -> Client {
        let mut c = Client::new(self.http, None).unwrap();
        c.set_timeout(Duration::from_secs(15));
        c
    }

    /// A client to the relay's metrics listener.
    pub fn metrics_client(&self) -> Client {
        let addr = self.metrics.expect("a metrics listener");
        let mut c = Client::new(addr, None).unwrap();
        c.set_timeout(Duration::from_secs(15));
        c
    }

    /// A TLS client to the relay's TLS listener (see [`start_with_tls`]).
    pub fn tls_client(&self, ca_pem: &str) -> Client {
        let https = self.https.expect("a TLS listener");
        let mut c = Client::new(https, Some(("localhost", ca_pem))).unwrap();
        c.set_timeout(Duration::from_secs(15));
        c
    }

    /// Keeps `dir` until the relay is dropped.
    fn keep(&mut self, dir: tempdir::Dir) {
        self.kept.push(dir);
    }

    /// The relay's process ID (for reading /proc/<pid>).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the relay wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `config` as the relay's file: with the cache off unless it has a
/// `[cache]` table (these tests are about the relay), and the metrics
/// listener on a port of its own unless it names one (tests run side by
/// side; the default port would be taken).
fn as_written(config: &str) -> String {
    let mut config = if config.contains("[cache]") {
        config.to_string()
    } else {
        format!("{config}\n[cache]\nenabled = false\n")
    };
    if !config.contains("metrics_listen") {
        // Top-level keys go before the first table.
        config.insert_str(0, "metrics_listen = \"127.0.0.1:0\"\n");
    }
    config
}

/// A fresh test CA and a certificate it signed for `localhost` and
/// 127.0.0.1, written to `dir` as `ca.pem`, `cert.pem` and `key.pem`;
/// returns the CA certificate (PEM).
pub fn write_test_ca(dir: &Path) -> String {
    let ca = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca_cert, &ca)
            .unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).unwrap();
    ca_cert.pem()
}

/// `config` (a test config) with a TLS listener on 127.0.0.1 (with
/// `listener_extra` keys in its table, e.g. `proxy_protocol = true`), whose
/// certificate and key are written to `dir` (see [`write_test_ca`]); the
/// config and the CA certificate (PEM) clients trust.
pub fn with_tls_listener(config: &str, dir: &Path, listener_extra: &str) -> (String, String) {
    let ca_pem = write_test_ca(dir);
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let listener = format!(
        "[[tls_listener]]\naddr = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n{listener_extra}\n",
        cert.display(),
        key.display()
    );
    // tls_listener is an array of tables: it must come after the top-level keys.
    let config = config.replace("[timeouts]", &format!("{listener}\n[timeouts]"));
    (config, ca_pem)
}

/// A relay that also listens on TLS, with a certificate from a fresh test CA
/// (for `localhost` and 127.0.0.1): the relay and the CA certificate (PEM)
/// clients trust. `extra` goes among the top-level keys, as in [`config_for`].
pub fn start_with_tls(hub: &HubDouble, extra: &str) -> (Relay, String) {
    start_with_tls_listener(hub, extra, "")
}

/// [`start_with_tls`] with `listener_extra` keys in the `[[tls_listener]]`
/// table (e.g. `proxy_protocol = true`).
pub fn start_with_tls_listener(
    hub: &HubDouble,
    extra: &str,
    listener_extra: &str,
) -> (Relay, String) {
    let dir = tempdir::Dir::new("tls");
    let (cfg, ca_pem) = with_tls_listener(&config_for(hub, extra), dir.path(), listener_extra);
    let mut relay = Relay::start_with(&cfg);
    relay.keep(dir); // the certificate files go when the relay does

    (relay, ca_pem)
}
