//! Garage (garagehq.deuxfleurs.fr), a real S3-compatible store, as a
//! three-node cluster on 127.0.0.1: one process and one config file per
//! node, `replication_factor = 3`, nodes connected and a layout applied
//! through the `garage` CLI, then a key and a bucket the key may read and
//! write. Garage ignores `If-None-Match` on writes: it is the store
//! "without conditional writes" of the shared tier's tests.
//!
//! The binary is found via `OCIRELAY_GARAGE`, `/opt/ocirelay-garage/bin/garage`
//! (where tests/deps.sh installs it), `~/.cargo/bin/garage` or `PATH`. When
//! it is absent, [`Garage::start_or_skip`] says so and the test skips,
//! unless `OCIRELAY_REQUIRE_S3` is set (CI), where it fails.
//! Every node is stopped by its own PID when the cluster is dropped.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::pebble::free_port;
use super::relay::tempdir;
use super::wait_until;
use hubdouble::client::{Client, Response};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

/// The S3 region Garage answers for (`[s3_api] s3_region`; "garage" is what
/// its own documentation uses).
pub const GARAGE_REGION: &str = "garage";
/// The bucket the harness creates.
pub const GARAGE_BUCKET: &str = "ocirelay-shared";
/// The environment variable that turns a missing Garage into a failure.
pub const REQUIRE_S3: &str = "OCIRELAY_REQUIRE_S3";

/// Bound of every wait on the cluster (start, a CLI step, readiness):
/// generous for a loaded 2-core CI machine, never reached when all is well.
const WAIT: Duration = Duration::from_secs(60);

struct Node {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    s3: SocketAddr,
    rpc: SocketAddr,
    /// `<node id>@<rpc address>`, known once the node has started.
    id: String,
}

/// A running three-node Garage cluster with one bucket and one key.
pub struct Garage {
    bin: PathBuf,
    nodes: Vec<Node>,
    /// The S3 region to sign with.
    pub region: String,
    /// The bucket, readable and writable with the key below.
    pub bucket: String,
    /// The access key id (`GK...`).
    pub key_id: String,
    /// Its secret.
    pub secret: String,
    dir: tempdir::Dir,
}

impl Garage {
    /// Where the `garage` binary is, if anywhere.
    pub fn binary() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("OCIRELAY_GARAGE") {
            return Some(PathBuf::from(p));
        }
        let home = std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin/garage"));
        let path = std::env::var_os("PATH")
            .map(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("garage"))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        [PathBuf::from("/opt/ocirelay-garage/bin/garage")]
            .into_iter()
            .chain(home)
            .chain(path)
            .find(|p| p.is_file())
    }

    /// A started cluster, or `None` (and a line saying why) when no
    /// `garage` binary exists and `OCIRELAY_REQUIRE_S3` is unset.
    pub fn start_or_skip(test: &str) -> Option<Garage> {
        match Garage::binary() {
            Some(bin) => Some(Garage::start(&bin)),
            None if std::env::var_os(REQUIRE_S3).is_some() => panic!(
                "{test}: no garage binary and {REQUIRE_S3} is set: install it with \
                 tests/deps.sh (cargo install garage --locked --root /opt/ocirelay-garage) \
                 or point OCIRELAY_GARAGE at one"
            ),
            None => {
                eprintln!(
                    "SKIPPED {test}: no garage binary (OCIRELAY_GARAGE, /opt/ocirelay-garage/bin, \
                     ~/.cargo/bin, PATH); tests/deps.sh installs it; set {REQUIRE_S3} to fail instead"
                );
                None
            }
        }
    }

    /// Starts three nodes, connects them, applies a layout holding all
    /// three, creates the key and the bucket, and returns once every
    /// node's S3 API answers for the bucket.
    pub fn start(bin: &Path) -> Garage {
        let dir = tempdir::Dir::new("garage");
        // The cluster's shared secret: 32 bytes, hex; fresh for each cluster
        // so that two clusters of parallel tests never join each other.
        let seed = format!("{}-{:?}", std::process::id(), std::time::Instant::now());
        let rpc_secret = super::sha256(seed.as_bytes())
            .trim_start_matches("sha256:")
            .to_string();
        let mut g = Garage {
            bin: bin.to_path_buf(),
            nodes: Vec::new(),
            region: GARAGE_REGION.into(),
            bucket: GARAGE_BUCKET.into(),
            key_id: String::new(),
            secret: String::new(),
            dir,
        };
        for i in 0..3 {
            let node = g.write_node_config(i, &rpc_secret);
            g.nodes.push(node);
        }
        for i in 0..3 {
            g.spawn(i);
        }
        for i in 0..3 {
            g.wait_listening(i);
        }

        // Node ids exist once a node has started (its key is made then).
        for i in 0..3 {
            g.nodes[i].id = g.cli(i, &["node", "id", "-q"]).trim().to_string();
        }
        let ids: Vec<String> = g.nodes.iter().map(|n| n.id.clone()).collect();
        for id in &ids[1..] {
            g.cli(0, &["node", "connect", id]);
        }
        let short: Vec<&str> = ids.iter().map(|id| id.split('@').next().unwrap()).collect();
        let mut assign = vec!["layout", "assign", "-z", "dc1", "-c", "1G"];
        assign.extend(&short);
        g.cli(0, &assign);
        g.cli(0, &["layout", "apply", "--version", "1"]);

        let key = g.cli(0, &["key", "create", "ocirelay-test"]);
        g.key_id = field(&key, "Key ID:");
        g.secret = field(&key, "Secret key:");
        g.cli(0, &["bucket", "create", GARAGE_BUCKET]);
        g.cli(
            0,
            &[
                "bucket",
                "allow",
                "--read",
                "--write",
                "--owner",
                GARAGE_BUCKET,
                "--key",
                "ocirelay-test",
            ],
        );

        // Ready: every node is connected to both others and sees every
        // partition with all its replicas (peers learn of each other
        // asynchronously after `node connect`; until then a request through
        // a node may miss its quorum), and its S3 API knows the key and the
        // bucket (the tables reach the other nodes asynchronously too).
        for i in 0..3 {
            let healthy = wait_until(WAIT, || g.healthy(i));
            assert!(
                healthy,
                "garage node {i} never saw a healthy cluster: {}",
                g.log(i)
            );
        }
        for i in 0..3 {
            let ready = wait_until(WAIT, || {
                let url = g
                    .s3_bucket(i)
                    .head_bucket(Some(&g.credentials()))
                    .sign(Duration::from_secs(60));
                send_presigned("HEAD", &url, &[], None).is_ok_and(|r| r.status == 200)
            });
            assert!(
                ready,
                "garage node {i} never served the bucket: {}",
                g.log(i)
            );
        }
        g
    }

    fn write_node_config(&self, i: usize, rpc_secret: &str) -> Node {
        let root = self.dir.path().join(format!("node{i}"));
        std::fs::create_dir_all(&root).unwrap();
        let s3: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let rpc: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let config = root.join("garage.toml");
        // lmdb: Garage's default engine, built by `cargo install garage`.
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{meta}\"\n\
                 data_dir = \"{data}\"\n\
                 db_engine = \"lmdb\"\n\
                 replication_factor = 3\n\
                 rpc_bind_addr = \"{rpc}\"\n\
                 rpc_public_addr = \"{rpc}\"\n\
                 rpc_secret = \"{rpc_secret}\"\n\
                 \n\
                 [s3_api]\n\
                 s3_region = \"{GARAGE_REGION}\"\n\
                 api_bind_addr = \"{s3}\"\n",
                meta = root.join("meta").display(),
                data = root.join("data").display(),
            ),
        )
        .unwrap();
        Node {
            child: None,
            config,
            log: root.join("garage.log"),
            s3,
            rpc,
            id: String::new(),
        }
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = std::fs::File::create(&node.log).unwrap();
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&node.config)
            .arg("server")
            .env("RUST_LOG", "garage=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.bin.display()));
        node.child = Some(child);
    }

    fn wait_listening(&mut self, i: usize) {
        let (s3, rpc) = (self.nodes[i].s3, self.nodes[i].rpc);
        let up = wait_until(WAIT, || {
            let exited = self.nodes[i]
                .child
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some());
            exited || (TcpStream::connect(s3).is_ok() && TcpStream::connect(rpc).is_ok())
        });
        let alive = self.nodes[i]
            .child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none());
        assert!(
            up && alive,
            "garage node {i} did not start: {}",
            self.log(i)
        );
    }

    /// Runs the CLI against node `i` and returns its stdout; a step that
    /// fails (a node still starting) is tried again, for at most [`WAIT`].
    fn cli(&self, i: usize, args: &[&str]) -> String {
        let deadline = std::time::Instant::now() + WAIT;
        let mut tries = 0;
        loop {
            tries += 1;
            let mut child = Command::new(&self.bin)
                .arg("-c")
                .arg(&self.nodes[i].config)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            // Bounded: a CLI waiting on an unreachable node is killed.
            let done = wait_until(Duration::from_secs(20), || {
                child.try_wait().ok().flatten().is_some()
            });
            if !done {
                let _ = child.kill();
            }
            let out = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() {
                return stdout;
            }
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                std::time::Instant::now() < deadline && tries < 60,
                "garage {} failed {tries} times: {stdout}{stderr}\nnode log: {}",
                args.join(" "),
                self.log(i)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Whether node `i` is connected to the two others and every partition
    /// has all its replicas (the admin API's `GetClusterHealth`).
    fn healthy(&self, i: usize) -> bool {
        let out = self.cli(i, &["json-api", "GetClusterHealth"]);
        let Ok(h) = serde_json::from_str::<serde_json::Value>(&out) else {
            return false;
        };
        h["status"] == "healthy"
            && h["connectedNodes"] == 3
            && h["partitions"].as_u64().is_some_and(|p| p > 0)
            && h["partitionsAllOk"] == h["partitions"]
    }

    /// The S3 endpoint of node `i` (`http://127.0.0.1:PORT`).
    pub fn endpoint_of(&self, i: usize) -> String {
        format!("http://{}", self.nodes[i].s3)
    }

    /// The S3 endpoint of the first node.
    pub fn endpoint(&self) -> String {
        self.endpoint_of(0)
    }

    /// A `[cache.s3]` table for ocirelay on this cluster, through node `i`
    /// (plain http, path style, the key in the table; Garage's conditional
    /// writes left to `auto`, the probe finds they are ignored).
    pub fn cache_s3_table(&self, i: usize) -> String {
        format!(
            "[cache.s3]\nendpoint = \"{}\"\nbucket = \"{}\"\nregion = \"{}\"\n\
             path_style = true\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
            self.endpoint_of(i),
            self.bucket,
            self.region,
            self.key_id,
            self.secret
        )
    }

    /// The credentials of the key.
    pub fn credentials(&self) -> Credentials {
        Credentials::new(self.key_id.clone(), self.secret.clone())
    }

    /// The bucket as seen through node `i` (path style, as self-hosted
    /// stores are addressed).
    pub fn s3_bucket(&self, i: usize) -> Bucket {
        Bucket::new(
            self.endpoint_of(i).parse().unwrap(),
            UrlStyle::Path,
            self.bucket.clone(),
            self.region.clone(),
        )
        .unwrap()
    }

    /// Stops node `i` (SIGKILL to its PID): the cluster keeps two of three
    /// replicas, a read and write quorum.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts node `i` again after [`Garage::kill_node`] (same config,
    /// data and identity) and waits (bounded) until every node sees a
    /// healthy cluster again: a store that comes back.
    pub fn restart_node(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "garage node {i} is running");
        self.spawn(i);
        self.wait_listening(i);
        // The others would find it again on their own, but only after
        // their reconnection back-off (tens of seconds): tell them.
        for n in (0..self.nodes.len()).filter(|&n| n != i) {
            if self.nodes[n].child.is_some() {
                self.cli(n, &["node", "connect", &self.nodes[i].id]);
            }
        }
        for n in 0..self.nodes.len() {
            let healthy = wait_until(WAIT, || self.healthy(n));
            assert!(
                healthy,
                "garage node {n} never saw node {i} back: {}",
                self.log(i)
            );
        }
    }

    /// Node `i`'s log so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
    }
}

/// The value after `name` on its line of the CLI's output
/// (`Key ID:              GK...`).
fn field(out: &str, name: &str) -> String {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(name))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| panic!("no {name:?} in the garage CLI's output: {out}"))
}

/// Sends `method` to the presigned `url` (host, path and signature in it)
/// with `headers` (those the URL signed must be among them) and `body`, over
/// a blocking TCP connection.
pub fn send_presigned(
    method: &str,
    url: &impl std::fmt::Display,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<Response> {
    let url = url.to_string();
    let mut c = Client::from_url(&url, None)?;
    c.set_timeout(Duration::from_secs(10));
    let after_scheme = &url[url.find("://").map_or(0, |i| i + 3)..];
    let target = &after_scheme[after_scheme.find('/').unwrap_or(after_scheme.len())..];
    c.request(method, target, headers, body)
}
