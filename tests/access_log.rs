//! The access log as an operator's tools read it: JSON lines
//! (`access_log_format = "json"`) that parse and carry every field, and in
//! both formats whatever a client puts in its target or user agent (quotes,
//! backslashes, Unicode line separators, invalid UTF-8) escaped, so that one
//! request is one line and no client can write a line of its own.

mod common;

use std::time::Duration;

use common::*;

/// A request with everything hostile that HTTP lets through to the log:
/// quotes, a backslash and a Unicode line separator in the target; a
/// forged log line behind U+2028, a C1 control, a bidi override and
/// invalid UTF-8 in the user agent.
fn hostile_request() -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice("GET /v2/evil\u{2028}\"x\\/manifests/latest HTTP/1.1\r\n".as_bytes());
    r.extend_from_slice(b"Host: mirror.test\r\nUser-Agent: agent\"\\");
    r.extend_from_slice(
        "\u{2028}2026-01-01T00:00:00Z 6.6.6.6:1 GET /forged 200\u{85}\u{202e}".as_bytes(),
    );
    r.extend_from_slice(b"\xff\xfe end\r\n\r\n");
    r
}

const HOSTILE_TARGET: &str = "/v2/evil\u{2028}\"x\\/manifests/latest";

/// Sends the hostile request and waits for its answer.
fn send_hostile(relay: &Relay) {
    let mut raw = Raw::connect(relay.http);
    raw.send(&hostile_request());
    let r = raw.read_response(false).unwrap();
    assert_eq!(r.status, 400, "an invalid repository name");
}

/// The relay's stderr once it holds `needle` (lines are flushed at least
/// every second).
fn log_with(relay: &Relay, needle: &str) -> String {
    assert!(
        wait_until(Duration::from_secs(5), || relay.stderr().contains(needle)),
        "no {needle:?} in {}",
        relay.stderr()
    );
    relay.stderr()
}

#[test]
fn json_lines_parse_and_carry_every_field() {
    let hub = hub();
    let relay = Relay::start_with(&config_for(&hub, "access_log_format = \"json\""));
    let mut c = relay.client();
    let r = c
        .get_with(
            "/v2/library/alpine/manifests/latest",
            &[("User-Agent", "docker/27.0 go/go1.22")],
        )
        .unwrap();
    assert_eq!(r.status, 401);
    send_hostile(&relay);
    // Each worker flushes its own lines: wait for both.
    log_with(&relay, "\"status\":401");
    let log = log_with(&relay, "\"status\":400");

    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let manifest = lines
        .iter()
        .find(|v| v["target"] == "/v2/library/alpine/manifests/latest")
        .unwrap_or_else(|| panic!("no manifest line in {log}"));
    let time = manifest["time"].as_str().unwrap();
    // RFC 3339, UTC, milliseconds: 2026-11-22T08:40:00.123Z
    assert_eq!(time.len(), 24, "{time}");
    assert!(time.ends_with('Z') && time.as_bytes()[19] == b'.', "{time}");
    assert_eq!(manifest["client"], "127.0.0.1");
    assert!(manifest["client_port"].as_u64().unwrap() > 0);
    assert_eq!(manifest["method"], "GET");
    assert_eq!(manifest["registry"], "docker.io");
    assert_eq!(manifest["repository"], "library/alpine");
    assert_eq!(manifest["status"], 401);
    assert!(manifest["bytes"].as_u64().unwrap() > 0);
    assert!(manifest["duration_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(manifest["upstream_status"], 401);
    assert!(manifest["upstream_ms"].as_f64().is_some());
    assert!(manifest["cache"].is_null(), "no cache in this config");
    assert!(manifest["error"].is_null());
    assert_eq!(manifest["user_agent"], "docker/27.0 go/go1.22");

    let hostile = lines
        .iter()
        .find(|v| v["status"] == 400)
        .unwrap_or_else(|| panic!("no line for the hostile request in {log}"));
    assert_eq!(hostile["target"], HOSTILE_TARGET);
    assert_eq!(
        hostile["user_agent"],
        "agent\"\\\u{2028}2026-01-01T00:00:00Z 6.6.6.6:1 GET /forged 200\u{85}\u{202e}\u{fffd}\u{fffd} end"
    );
    assert!(hostile["registry"].is_null() && hostile["upstream_status"].is_null());
    for raw in ['\u{2028}', '\u{85}', '\u{202e}'] {
        assert!(!log.contains(raw), "{raw:?} written raw: {log}");
    }
    assert!(!log
        .lines()
        .any(|l| l.contains("/forged") && !l.starts_with('{')));
}

#[test]
fn text_lines_escape_what_clients_sent() {
    let hub = hub();
    let relay = Relay::start(&hub);
    send_hostile(&relay);
    let log = log_with(&relay, " 400 ");
    let line = log
        .lines()
        .find(|l| l.contains(" 400 "))
        .unwrap_or_else(|| panic!("no line for the hostile request in {log}"));
    assert!(
        line.contains(r#" GET /v2/evil\u2028"x\\/manifests/latest 400 - "#),
        "{line}"
    );
    assert!(!log.contains('\u{2028}'), "U+2028 written raw: {log}");
    assert!(
        log.lines().all(|l| !l.contains("/forged")),
        "the user agent is not in text lines, let alone a line of its own: {log}"
    );
}

#[test]
fn events_about_requests_escape_their_targets() {
    // A request that ends in an error (no upstream) goes to the event log
    // with its target, query string included.
    let relay = Relay::start_with(&config_with_upstream("http://127.0.0.1:9"));
    let mut raw = Raw::connect(relay.http);
    raw.send(
        "GET /v2/library/x/manifests/latest?a\u{2028}b HTTP/1.1\r\nHost: m\r\n\r\n".as_bytes(),
    );
    let r = raw.read_response(false).unwrap();
    assert_eq!(r.status, 502);
    let log = log_with(&relay, "latest?a\\u2028b -> ");
    assert!(!log.contains('\u{2028}'), "U+2028 written raw: {log}");
}
