//! File descriptors: the relay under a low descriptor limit, with more
//! idle connections than it allows. Out of descriptors it backs off
//! instead of spinning, `/healthz` on the metrics listener still answers
//! (the reserve), the connection cap closes the idlest keep-alive
//! connection for a new one, and pulls work again once clients leave.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

/// Connections the test opens and holds idle (never sending a byte).
fn hold_idle(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut held = Vec::new();
    while held.len() < n && Instant::now() < deadline {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            held.push(s);
        }
    }
    held
}

/// The relay's CPU time so far (utime + stime of /proc/<pid>/stat), in
/// clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn ticks_per_second() -> u64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn out_of_descriptors_the_relay_backs_off_and_health_still_answers() {
    let hub = hub();
    // A cap above the descriptor limit: the accept loops run out of
    // descriptors rather than stop at the cap.
    // Long client timeouts: the held connections are not closed by the
    // relay (which would free descriptors) while the test runs.
    let timeouts = Timeouts {
        client_header: 60,
        client_idle: 60,
        ..Timeouts::default()
    };
    let config = config_with_timeouts(&hub, "[limits]\nmax_connections = 5000\n", timeouts);
    let mut relay = Relay::start_with_fd_limit(&config, 192);
    // The line is written as the relay starts; its stderr is read by a
    // thread of ours, so wait for it (bounded) rather than look once.
    assert!(
        relay.wait_for_log(
            "file descriptors: 192 (the hard limit)",
            Duration::from_secs(10)
        ),
        "the start-up line names the limit: {}",
        relay.stderr()
    );
    let held = hold_idle(relay.http, 400);
    assert!(held.len() >= 300, "only {} connections held", held.len());
    assert!(
        wait_until(Duration::from_secs(10), || relay
            .stderr()
            .contains("accept failed")),
        "the relay ran out of descriptors: {}",
        relay.stderr()
    );

    // Out of descriptors for a few seconds: the accept loops sleep.
    let pid = relay.pid();
    let (t0, c0) = (Instant::now(), cpu_ticks(pid));
    std::thread::sleep(Duration::from_secs(3));
    let used = (cpu_ticks(pid) - c0) as f64 / ticks_per_second() as f64;
    let share = used / t0.elapsed().as_secs_f64();
    assert!(
        share < 0.25,
        "out of descriptors the relay used {:.0}% of a core",
        share * 100.0
    );
    let lines = relay.stderr().matches("accept failed").count();
    assert!(
        lines <= 4,
        "the accept failure line is rate-limited; {lines} lines"
    );

    // The operator's listener answers from its reserved descriptor, more
    // than once (the reserve comes back when the check's connection closes).
    for _ in 0..10 {
        let mut c = relay.metrics_client();
        let r = c
            .get("/healthz")
            .expect("healthz answered while out of fds");
        assert_eq!(r.status, 200);
        drop(c);
        std::thread::sleep(Duration::from_millis(100));
    }

    // The idle connections leave: pulls work again.
    drop(held);
    assert!(wait_until(Duration::from_secs(10), || open_fds(pid) < 150));
    pull_alpine_layer(&hub, &relay, 1);
    assert!(relay.alive(), "the relay is still running");
}

#[test]
fn the_derived_cap_keeps_descriptors_for_health_without_running_out() {
    let hub = hub();
    let mut relay = Relay::start_with_fd_limit(&config_for(&hub, ""), 256);
    // (256 - 128 reserved) / 3 per connection.
    assert!(
        relay.wait_for_log(
            "client connections capped at 42 (derived from the limit)",
            Duration::from_secs(10)
        ),
        "{}",
        relay.stderr()
    );
    // Far more than the cap: the rest wait in the listen backlog.
    let held = hold_idle(relay.http, 300);
    assert!(held.len() >= 250, "only {} connections held", held.len());
    std::thread::sleep(Duration::from_secs(1));
    let r = relay.metrics_client().get("/healthz").unwrap();
    assert_eq!(r.status, 200);
    assert!(
        !relay.stderr().contains("accept failed"),
        "at the cap the relay stops accepting before it runs out: {}",
        relay.stderr()
    );
    assert!(open_fds(relay.pid()) < 256 - 64, "a reserve is left");
    drop(held);
    pull_alpine_layer(&hub, &relay, 1);
    assert!(relay.alive());
}

#[test]
fn at_the_cap_the_idlest_keep_alive_connection_makes_room() {
    let hub = hub();
    let config =
        config_for(&hub, "[limits]\nmax_connections = 2\n").replace("workers = 2", "workers = 1");
    let relay = Relay::start_with(&config);
    let ask = |raw: &mut Raw| {
        raw.send(&request("GET", "/healthz", &[]));
        raw.read_response(false).expect("answered").status
    };
    let mut first = Raw::connect(relay.http);
    assert_eq!(ask(&mut first), 200);
    let mut second = Raw::connect(relay.http);
    assert_eq!(ask(&mut second), 200);
    // Both idle, at the cap of 2: a third comes in, the first (idlest) goes.
    let mut third = Raw::connect(relay.http);
    assert_eq!(ask(&mut third), 200);
    // Well before client_idle_secs (5 s) would close it.
    let (rest, end) = first.read_to_end(Duration::from_secs(2));
    assert!(rest.is_empty(), "closed without an answer");
    assert_eq!(end, End::Eof, "the idlest connection is closed");
    // Room made, nothing else lost: the second is still served (and a
    // fourth then closes the third, now the idlest).
    assert_eq!(ask(&mut second), 200);
}
