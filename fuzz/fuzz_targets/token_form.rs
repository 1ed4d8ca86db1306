//! What `POST /token` does with a client's form body (and `GET /token` with
//! its query): `rewrite_token_params` maps every `repository:` scope to the
//! upstream's name, replaces `service`, drops ocirelay's own `ns` and keeps
//! every other parameter byte for byte. Then `issued_token` reads the token
//! server's answer. Neither may panic, and the rewritten form must say what
//! the client's did, in the upstream's names, and nothing else.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ocirelay::config::Config;
use ocirelay::route::registry::scope_name;
use ocirelay::wire::challenge::{issued_token, percent_decode, rewrite_token_params};

const SERVICE: &str = "registry.docker.io";

/// Docker Hub's registry as configured by default (`library/` prefixed).
fn hub() -> &'static Config {
    static CFG: OnceLock<Config> = OnceLock::new();
    CFG.get_or_init(Config::default_config)
}

/// The pairs of a form other than those the rewrite owns.
fn kept(form: &str, service_replaced: bool) -> Vec<&str> {
    form.split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let key = p.split('=').next().unwrap_or("");
            !(key == "ns"
                || (key == "scope" && p.contains('='))
                || (key == "service" && service_replaced))
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    // As the token endpoint reads a body: not UTF-8 is an empty form.
    let text = String::from_utf8(body.to_vec()).unwrap_or_default();
    let text = text.trim();
    let cfg = hub();
    let reg = cfg.registry(cfg.default_registry());
    let service = (sel & 1 == 1).then_some(SERVICE);
    let map_name = |name: &str| Some(scope_name(reg, name));

    if let Some(out) = rewrite_token_params(text, map_name, service) {
        for pair in out.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            assert_ne!(key, "ns", "{out:?}");
            if key == "service" && service.is_some() {
                assert_eq!(value, SERVICE);
            }
            if key == "scope" && pair.contains('=') {
                // Re-encoded canonically, so the upstream reads what we mean.
                assert!(
                    value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)),
                    "{value:?}"
                );
                let scopes = percent_decode(value).expect("our own encoding decodes");
                for scope in scopes.split(' ') {
                    if let Some(rest) = scope.strip_prefix("repository:") {
                        if let Some(last) = rest.rfind(':') {
                            // Docker Hub's names always have a namespace.
                            assert!(rest[..last].contains('/'), "{scope:?}");
                        }
                    }
                }
            }
        }
        assert_eq!(kept(text, service.is_some()), kept(&out, service.is_some()));
    }

    // The token server's answer: a token is a plain string of the body.
    if let Some((token, _)) = issued_token(body) {
        assert!(!token.is_empty() && !token.contains(['"', '\\']));
        let text = std::str::from_utf8(body).unwrap();
        assert!(text.contains(token));
    }
});
