//! Slow and many clients (hardening item 7): heads and bodies that
//! trickle are cut by their deadlines and their descriptors come back; a
//! refusal sent before the request was read arrives before an orderly
//! close (FIN, not a reset); slow readers that keep reading outlive
//! `client_write_secs`, those under the minimum rate are cut; thousands of
//! keep-alive connections do not stop a pull.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// The relay's open sockets to clients of its listener on `port` (its
/// upstream connections, pooled, are not counted).
fn client_sockets(pid: u32, port: u16) -> usize {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let local = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(t).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_string).collect::<Vec<_>>())
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // local address, state (0A: listening), inode
            f.len() > 9 && f[1].ends_with(&local) && f[3] != "0A" && inodes.contains(f[9])
        })
        .count()
}

/// `config` with `key = value` lines added to its `[timeouts]` table.
fn with_timeouts(config: &str, lines: &str) -> String {
    config.replace("[timeouts]\n", &format!("[timeouts]\n{lines}\n"))
}

#[test]
fn refused_head_still_arriving_gets_its_431_then_a_fin_not_a_reset() {
    let hub = hub();
    let relay = Relay::start(&hub);
    for _ in 0..5 {
        let mut raw = Raw::connect(relay.http);
        // Past max_header_bytes (16 KiB), and more keeps coming after the
        // relay has answered: unread input at close would mean a reset.
        let mut writer = raw.s.try_clone().unwrap();
        let sending = std::thread::spawn(move || {
            let _ = writer.write_all(b"GET /v2/ HTTP/1.1\r\nHost: m\r\nX-Big: ");
            for _ in 0..64 {
                if writer.write_all(&[b'a'; 4096]).is_err() {
                    break;
                }
            }
            // Done sending: the client closes its side, as a browser would.
            let _ = writer.shutdown(std::net::Shutdown::Write);
        });
        // A reset would arrive before the client reads (and on a real
        // network could discard the answer).
        std::thread::sleep(Duration::from_millis(300));
        let (bytes, end) = raw.read_to_end(Duration::from_secs(10));
        sending.join().unwrap();
        let r = assert_error_then_close(&bytes, end, 431);
        assert_eq!(error_code(&r.body), "UNKNOWN");
        assert_eq!(end, End::Eof, "an orderly close after the 431, not a reset");
    }
}

#[test]
fn token_bodies_trickled_are_cut_with_408_at_the_body_deadline() {
    let hub = hub();
    // A byte a second passes the per-read limit (client_header_secs = 2)
    // but not the body's (client_body_secs = 3).
    let config = with_timeouts(&config_for(&hub, ""), "client_body_secs = 3");
    let relay = Relay::start_with(&config);
    let (pid, port) = (relay.pid(), relay.http.port());
    let head = "POST /token HTTP/1.1\r\nHost: m\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n";
    let mut conns: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = TcpStream::connect(relay.http).unwrap();
            s.write_all(head.as_bytes()).unwrap();
            s
        })
        .collect();
    // A byte a second to each (within the per-read limit) until each is
    // answered: the cut comes at 3 s; without a deadline for the whole
    // body none would come.
    for s in &conns {
        s.set_nonblocking(true).unwrap();
    }
    let mut answered = vec![false; conns.len()];
    let started = Instant::now();
    while answered.contains(&false) && started.elapsed() < Duration::from_secs(10) {
        for (s, done) in conns.iter_mut().zip(&mut answered) {
            let mut peek = [0u8; 1];
            *done |= s.peek(&mut peek).is_ok();
            if !*done {
                let _ = s.write_all(b"a");
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        !answered.contains(&false),
        "{} of 50 still open after 10 s of trickling",
        answered.iter().filter(|d| !**d).count()
    );
    for s in conns {
        s.set_nonblocking(false).unwrap();
        let mut raw = Raw { s, buf: Vec::new() };
        let (bytes, end) = raw.read_to_end(Duration::from_secs(10));
        let r = assert_error_then_close(&bytes, end, 408);
        assert!(error_message(&r.body).contains("body"), "{}", r.text());
    }
    // Their descriptors come back.
    assert!(
        wait_until(Duration::from_secs(10), || client_sockets(pid, port) == 0),
        "{} client sockets still open",
        client_sockets(pid, port)
    );
    assert!(
        hub.log().for_host(Host::Token).is_empty(),
        "nothing reached the token server"
    );
}

#[test]
fn slowloris_heads_are_cut_by_the_header_timeout_and_their_fds_come_back() {
    let hub = hub();
    let relay = Relay::start(&hub); // client_header_secs = 2
    let (pid, port) = (relay.pid(), relay.http.port());
    let mut conns: Vec<TcpStream> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while conns.len() < 2000 && Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect_timeout(&relay.http, Duration::from_secs(1)) {
            let _ = s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: m\r\n");
            conns.push(s);
        }
    }
    assert_eq!(conns.len(), 2000);
    let peak = client_sockets(pid, port);
    let rss = proc_status_bytes(pid, "VmRSS:");
    // One more header line each, a second later: a trickle.
    std::thread::sleep(Duration::from_secs(1));
    for s in &mut conns {
        let _ = s.write_all(b"X-Slow: 1\r\n");
    }
    // All cut by the header timeout: each read ends (408 then close).
    let mut cut = 0;
    for s in &mut conns {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut buf = Vec::new();
        if s.read_to_end(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 408") {
            cut += 1;
        }
    }
    assert_eq!(cut, 2000, "every slowloris connection got its 408");
    drop(conns);
    assert!(
        wait_until(Duration::from_secs(10), || client_sockets(pid, port) == 0),
        "{} client sockets open, {peak} at the peak",
        client_sockets(pid, port)
    );
    eprintln!(
        "slowloris: 2000 connections, {peak} client sockets at the peak, RSS {} MiB; all cut",
        rss >> 20
    );
}

/// A client connection whose receive buffer is small, so that the relay's
/// writes wait on the client's reading at once.
fn small_window_client(addr: std::net::SocketAddr) -> Raw {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect_timeout(&addr.into(), Duration::from_secs(5))
        .unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    Raw { s, buf: Vec::new() }
}

/// Starts a GET of a 4 MiB blob through `relay` on a small-window
/// connection and reads its head.
fn slow_download(hub: &HubDouble, relay: &Relay) -> Raw {
    let digest = hub.add_random_blob("library/alpine", 4 << 20, 7);
    let tok = anonymous_token(relay, &mut relay.client(), "library/alpine");
    let mut raw = small_window_client(relay.http);
    raw.send(&request(
        "GET",
        &format!("/v2/library/alpine/blobs/{digest}"),
        &[("Authorization", &bearer(&tok))],
    ));
    let head = raw.read_head().unwrap();
    assert_eq!(head.status, 200);
    raw
}

/// Reads `chunk` bytes every `every` for `long` (or until the relay
/// closes); the bytes read, and whether the connection ended.
fn read_slowly(raw: &mut Raw, chunk: usize, every: Duration, long: Duration) -> (usize, bool) {
    let mut got = raw.buf.len();
    let mut tmp = vec![0u8; chunk];
    let started = Instant::now();
    while started.elapsed() < long {
        match raw.s.read(&mut tmp) {
            Ok(0) | Err(_) => return (got, true),
            Ok(n) => got += n,
        }
        std::thread::sleep(every);
    }
    (got, false)
}

#[test]
fn a_steady_slow_reader_outlives_client_write_secs() {
    let hub = hub();
    // client_write_secs = 2; no minimum rate.
    let timeouts = Timeouts {
        client_write: 2,
        ..Timeouts::default()
    };
    let config = config_with_timeouts(&hub, "[limits]\nclient_min_bytes_per_sec = 0\n", timeouts);
    let relay = Relay::start_with(&config);
    let mut raw = slow_download(&hub, &relay);
    // 8 KiB a second for 7 s (a window's worth at a time: a receiver
    // announces a window only once it is worth a segment): every write of
    // the relay waits far longer than 2 s in all, but the client takes
    // bytes all along.
    let (got, ended) = read_slowly(
        &mut raw,
        4096,
        Duration::from_millis(500),
        Duration::from_secs(7),
    );
    assert!(
        !ended,
        "a client reading steadily was cut after {got} bytes"
    );
    assert!(got >= 8 * 1024, "read {got} bytes");
}

#[test]
fn a_reader_under_the_minimum_rate_is_cut_and_its_socket_closes() {
    let hub = hub();
    // No stall (client_write_secs = 30), but 64 KiB/s at least.
    let timeouts = Timeouts {
        client_write: 30,
        ..Timeouts::default()
    };
    let config = config_with_timeouts(
        &hub,
        "[limits]\nclient_min_bytes_per_sec = 65536\n",
        timeouts,
    );
    let relay = Relay::start_with(&config);
    let (pid, port) = (relay.pid(), relay.http.port());
    let mut raw = slow_download(&hub, &relay);
    // About 4 KiB/s: cut once the relay has measured 10 s of waiting.
    let (got, ended) = read_slowly(
        &mut raw,
        1024,
        Duration::from_millis(250),
        Duration::from_secs(30),
    );
    assert!(
        ended,
        "a client at ~4 KiB/s outlived a 64 KiB/s minimum ({got} bytes read)"
    );
    assert!(got < 4 << 20, "cut before the end of the blob");
    drop(raw);
    assert!(
        wait_until(Duration::from_secs(10), || client_sockets(pid, port) == 0),
        "{} client sockets still open",
        client_sockets(pid, port)
    );
    assert!(
        wait_until(Duration::from_secs(5), || relay
            .stderr()
            .contains("under the minimum")),
        "the cut is logged with its reason: {}",
        relay.stderr()
    );
}

/// Raises this process's soft descriptor limit to `want` (or the hard
/// limit); what it is now. The relay inherits it (and raises its own).
fn raise_own_fd_limit(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one rlimit owned here.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max.min(want.max(lim.rlim_cur));
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    lim.rlim_cur
}

#[test]
fn ten_thousand_keep_alive_connections_and_a_pull_still_succeeds() {
    const N: usize = 10_000;
    let limit = raise_own_fd_limit(2 * N as u64 + 1000);
    assert!(
        limit >= N as u64 + 500,
        "this test needs a descriptor limit above {N} (hard limit: {limit})"
    );
    let hub = hub();
    // Idle connections stay (client_idle_secs = 120); the cap is above N.
    let timeouts = Timeouts {
        client_idle: 120,
        ..Timeouts::default()
    };
    let config = config_with_timeouts(&hub, "[limits]\nmax_connections = 12000\n", timeouts);
    let relay = Relay::start_with(&config);
    let (pid, port) = (relay.pid(), relay.http.port());
    let rss_before = proc_status_bytes(pid, "VmRSS:");
    let started = Instant::now();
    let mut conns = Vec::with_capacity(N);
    while conns.len() < N && started.elapsed() < Duration::from_secs(120) {
        let mut raw = Raw::connect(relay.http);
        raw.send(&request("GET", "/healthz", &[]));
        assert_eq!(raw.read_response(false).unwrap().status, 200);
        conns.push(raw);
    }
    assert_eq!(conns.len(), N, "connections opened in 120 s");
    assert!(
        wait_until(Duration::from_secs(10), || client_sockets(pid, port) >= N),
        "the relay holds {} of {N}",
        client_sockets(pid, port)
    );
    let rss = proc_status_bytes(pid, "VmRSS:");
    // A pull while they are all open.
    let pulled = Instant::now();
    pull_alpine_layer(&hub, &relay, 1);
    let took = pulled.elapsed();
    // They are all still served (a sample: every 100th).
    for raw in conns.iter_mut().step_by(100) {
        raw.send(&request("GET", "/healthz", &[]));
        assert_eq!(raw.read_response(false).unwrap().status, 200);
    }
    eprintln!(
        "{N} keep-alive connections held in {:.1} s; relay RSS {} MiB before, {} MiB with them ({} KiB each); a pull took {} ms",
        started.elapsed().as_secs_f64(),
        rss_before >> 20,
        rss >> 20,
        rss.saturating_sub(rss_before) / N as u64 / 1024,
        took.as_millis()
    );
    // An idle keep-alive connection holds its task (~6 KiB) and a small
    // head buffer (4 KiB), not the whole head room: 26 KiB each before the
    // buffer shrank when idle and a TLS connection's state was boxed apart.
    let per_conn = rss.saturating_sub(rss_before) / N as u64;
    assert!(
        per_conn < 20 << 10,
        "{per_conn} bytes of RSS per idle connection"
    );
    drop(conns);
    assert!(
        wait_until(Duration::from_secs(20), || client_sockets(pid, port) == 0),
        "{} client sockets left",
        client_sockets(pid, port)
    );
}

#[test]
fn a_response_shaped_below_the_minimum_rate_is_not_cut() {
    let hub = hub();
    // Shaped at 64 KiB/s by [client_limits], under a 128 KiB/s minimum: the
    // slowness is the mirror's, and shaping slows, never cuts.
    let config = config_for(
        &hub,
        "[limits]\nclient_min_bytes_per_sec = 131072\n[client_limits]\nbytes_per_sec = \"64KiB\"\nbytes_burst = \"64KiB\"\n",
    );
    let relay = Relay::start_with(&config);
    let digest = hub.add_random_blob("library/alpine", 1 << 20, 9);
    let tok = anonymous_token(&relay, &mut relay.client(), "library/alpine");
    let mut c = relay.client();
    c.set_timeout(Duration::from_secs(60));
    // About 15 s: past the 10 s over which the rate is judged.
    let r = get_auth(&mut c, &format!("/v2/library/alpine/blobs/{digest}"), &tok);
    assert_eq!(r.status, 200);
    assert_eq!(sha256(&r.body), digest, "the whole blob, not cut");
}

#[test]
fn a_client_that_reads_no_small_reply_is_cut_by_client_write_secs() {
    let hub = hub();
    let timeouts = Timeouts {
        client_write: 2,
        ..Timeouts::default()
    };
    let relay = Relay::start_with(&config_with_timeouts(&hub, "", timeouts));
    let (pid, port) = (relay.pid(), relay.http.port());
    // Pipelined landing-page requests, none of the answers read, on a
    // small receive window: the relay's writes fill both socket buffers
    // and then make no progress.
    let mut raw = small_window_client(relay.http);
    let one = request("GET", "/", &[("Accept-Language", "en")]);
    let many: Vec<u8> = one.iter().copied().cycle().take(one.len() * 400).collect();
    let _ = raw.s.write_all(&many);
    assert!(
        wait_until(Duration::from_secs(30), || client_sockets(pid, port) == 0),
        "a client reading nothing still holds {} sockets after 30 s (client_write_secs = 2)",
        client_sockets(pid, port)
    );
    drop(raw);
}
