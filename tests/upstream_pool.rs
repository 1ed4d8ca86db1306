//! The upstream pool's two ends of idleness: a token POST on a pooled
//! connection the upstream has closed is retried on a new one (not a 502),
//! and connections idle for `upstream_idle_secs` are closed by ocirelay
//! (the double's open-connection count falls to zero).
//!
//! Loopback only; every wait is bounded.

mod common;

use std::time::Duration;

use common::*;

const TOKEN_FORM: &str = "grant_type=password&service=registry.docker.io&scope=repository%3Aalpine%3Apull&client_id=pooltest&username=alice&password=wonderland";

fn post_token(c: &mut Client) -> Response {
    post_token_form(c, TOKEN_FORM)
}

#[test]
fn token_post_on_a_stale_pooled_connection_is_retried() {
    // The double drops idle connections after 700 ms; ocirelay keeps them
    // pooled for 30 s (the default), so the second POST finds a dead one.
    let hub = HubDouble::start(Options {
        idle_timeout: Duration::from_millis(700),
        ..Options::default()
    })
    .unwrap();
    let relay = Relay::start(&hub);
    let mut c = relay.client();
    for round in 0..3 {
        let r = post_token(&mut c);
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
        assert!(
            wait_until(Duration::from_secs(5), || hub
                .active_connections(Host::Token)
                == 0),
            "the double did not drop its idle token connection"
        );
    }
    let posts = hub.log().for_host(Host::Token);
    let conns: std::collections::HashSet<u64> = posts.iter().map(|e| e.conn).collect();
    assert!(
        conns.len() >= 3,
        "each round needed a fresh connection: {conns:?}"
    );
}

#[test]
fn idle_pooled_connections_are_closed_after_upstream_idle_secs() {
    // The double keeps idle connections for 120 s: only ocirelay can close
    // them within the wait below.
    let hub = hub();
    let config =
        config_for(&hub, "").replace("[timeouts]\n", "[timeouts]\nupstream_idle_secs = 1\n");
    let relay = Relay::start_with(&config);
    let mut c = relay.client();
    let r = c.get("/v2/").unwrap();
    assert_eq!(r.status, 401, "the ping goes upstream: {}", r.text());
    let r = post_token(&mut c);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        hub.active_connections(Host::Registry) + hub.active_connections(Host::Token) > 0,
        "the upstream connections were pooled"
    );
    assert!(
        wait_until(Duration::from_secs(10), || hub
            .active_connections(Host::Registry)
            == 0
            && hub.active_connections(Host::Token) == 0),
        "pooled connections idle past upstream_idle_secs are still open: registry {}, token {}",
        hub.active_connections(Host::Registry),
        hub.active_connections(Host::Token)
    );
    // And the pool still works after the sweep.
    let r = post_token(&mut c);
    assert_eq!(r.status, 200, "{}", r.text());
}
