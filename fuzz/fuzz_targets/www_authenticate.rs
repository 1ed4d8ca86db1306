//! The challenge parser and rewriter must never panic, and a rewritten
//! challenge must parse again with the new realm and the same service.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ocirelay::wire::challenge::{map_scopes, parse_challenge, rewrite_scope_params, write_rewritten};

fuzz_target!(|data: &[u8]| {
    if let Some(ch) = parse_challenge(data) {
        let mut out = Vec::new();
        write_rewritten(&mut out, &ch, "https://mirror.example/token", |s| {
            map_scopes(s, |n| Some(format!("library/{n}")))
        });
        let again = parse_challenge(&out).expect("a rewritten challenge parses");
        if ch.param("realm").is_some() {
            assert_eq!(again.param("realm"), Some("https://mirror.example/token"));
        }
        assert_eq!(again.param("service"), ch.param("service"));
    }
    if let Ok(q) = std::str::from_utf8(data) {
        let _ = rewrite_scope_params(q, |n| Some(n.to_string()));
    }
});
