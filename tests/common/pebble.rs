//! Let's Encrypt's test CA, for real: Debian's `pebble` (an ACME server)
//! and `pebble-challtestsrv` (its DNS, answering 127.0.0.1 for every name),
//! started on free loopback ports and stopped by their own PIDs on drop.
//! Pebble validates HTTP-01 and TLS-ALPN-01 against the ports it is given,
//! which are the relay's. Missing binaries fail the test with a message
//! (tests/deps.sh installs the package).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::relay::{tempdir, write_test_ca};
use super::wait_until;
use hubdouble::client::Client;

const PEBBLE: &str = "/usr/bin/pebble";
const CHALLTESTSRV: &str = "/usr/bin/pebble-challtestsrv";

/// A free port on 127.0.0.1 (bound once, then released), never the same
/// twice in this process: tests run in parallel, and a port one released
/// could otherwise be handed to another before its owner binds it again
/// (the relay binds with SO_REUSEPORT, so it would share it silently).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no fresh port in 100 tries");
}

/// What pebble validates against and how long its certificates live.
pub struct PebbleOptions {
    /// The relay's plain-HTTP port (HTTP-01).
    pub http_port: u16,
    /// The relay's TLS port (TLS-ALPN-01).
    pub tls_port: u16,
    /// Certificate lifetime; None: pebble's default (5 years).
    pub validity_secs: Option<u64>,
}

/// A pebble and its DNS (running after [`Pebble::run`]).
pub struct Pebble {
    procs: Vec<Child>,
    dns_port: u16,
    dns_mgmt: u16,
    acme_port: u16,
    /// pebble's ACME directory URL.
    pub directory: String,
    management: SocketAddr,
    /// The CA file that makes pebble's own TLS trusted (`[acme] ca_file`).
    pub ca_file: PathBuf,
    ca_pem: String,
    log: Arc<Mutex<String>>,
    dir: tempdir::Dir,
}

fn must_exist(path: &str) {
    assert!(
        std::path::Path::new(path).exists(),
        "{path} is missing: the ACME tests need Debian's `pebble` package \
         (apt-get install pebble; tests/deps.sh installs it when run as root)"
    );
}

impl Pebble {
    /// A pebble started at once.
    pub fn start(opts: PebbleOptions) -> Pebble {
        let mut p = Pebble::prepare(opts);
        p.run();
        p
    }

    /// A pebble whose files, ports and directory URL exist, not yet
    /// started (a CA that is down).
    pub fn prepare(opts: PebbleOptions) -> Pebble {
        must_exist(PEBBLE);
        must_exist(CHALLTESTSRV);
        let dir = tempdir::Dir::new("pebble");
        // pebble's own TLS: a CA of ours and a leaf for 127.0.0.1.
        let ca_pem = write_test_ca(dir.path());
        let p = |f: &str| dir.path().join(f);

        let (dns_port, dns_mgmt, acme_port, mgmt_port) =
            (free_port(), free_port(), free_port(), free_port());
        let validity = opts
            .validity_secs
            .map(|s| format!(",\"certificateValidityPeriod\":{s}"))
            .unwrap_or_default();
        let config = format!(
            "{{\"pebble\":{{\"listenAddress\":\"127.0.0.1:{acme_port}\",\
             \"managementListenAddress\":\"127.0.0.1:{mgmt_port}\",\
             \"certificate\":\"{}\",\"privateKey\":\"{}\",\
             \"httpPort\":{},\"tlsPort\":{},\"ocspResponderURL\":\"\",\
             \"externalAccountBindingRequired\":false{validity}}}}}",
            p("cert.pem").display(),
            p("key.pem").display(),
            opts.http_port,
            opts.tls_port,
        );
        std::fs::write(p("pebble.json"), config).unwrap();
        Pebble {
            procs: Vec::new(),
            dns_port,
            dns_mgmt,
            acme_port,
            directory: format!("https://127.0.0.1:{acme_port}/dir"),
            management: ([127, 0, 0, 1], mgmt_port).into(),
            ca_file: p("ca.pem"),
            ca_pem,
            log: Arc::new(Mutex::new(String::new())),
            dir,
        }
    }

    /// Starts the DNS and pebble; returns once both accept connections.
    pub fn run(&mut self) {
        let (dns_port, dns_mgmt, acme_port) = (self.dns_port, self.dns_mgmt, self.acme_port);
        let dns = Command::new(CHALLTESTSRV)
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
            // Only its DNS: the relay answers the challenges itself.
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pebble-challtestsrv");
        self.procs.push(dns);
        let mut pebble = Command::new(PEBBLE)
            .arg("-config")
            .arg(self.dir.path().join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .args(["-strict", "false"])
            // Validate at once, for real (pebble's own defaults sleep up
            // to 15 s per validation; ALWAYS_VALID would skip them).
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_VA_ALWAYS_VALID", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pebble");
        let out = pebble.stdout.take().unwrap();
        self.procs.push(pebble);
        let sink = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let up = wait_until(Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", acme_port)).is_ok()
                && TcpStream::connect(("127.0.0.1", dns_mgmt)).is_ok()
        });
        assert!(up, "pebble did not start: {}", self.log());
    }

    /// The root of the certificates pebble issues (new at every start), in
    /// PEM: what a client of the relay trusts.
    pub fn issuing_root(&self) -> String {
        let mut c = Client::new(self.management, Some(("127.0.0.1", &self.ca_pem))).unwrap();
        let r = c.get("/roots/0").unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        r.text()
    }

    /// Orders pebble has accepted so far (from its log).
    pub fn orders(&self) -> usize {
        self.log.lock().unwrap().matches("Added order").count()
    }

    /// pebble's log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
