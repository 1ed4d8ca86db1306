//! What the cache reads back from disk at start: tag records (`tags/<key>`),
//! the access journal (`access`) and stored manifests (media type, newline,
//! bytes). Whatever a crash, a full disk or another program left there must
//! load without a panic, and what loads must mean what was written:
//!
//! - a tag record re-encodes to itself;
//! - the journal rewritten at start (each understood line once) loads to
//!   the same knowledge as the journal it replaces, and rewrites to itself:
//!   a restart never widens what is served while the upstream is down.
//!
//! The first byte picks the file. In a journal, `NOW` stands for the current
//! unix time (what the stale-serving rules compare with).
#![no_main]

use std::time::{SystemTime, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use ocirelay::cache::access::{Access, Who};
use ocirelay::cache::manifests::{decode_manifest, TagRecord};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, file)) = data.split_first() else {
        return;
    };
    match sel % 3 {
        0 => tag_record(file),
        1 => journal(file),
        _ => manifest(file),
    }
});

fn tag_record(file: &[u8]) {
    let Ok(text) = std::str::from_utf8(file) else {
        return;
    };
    let Some((rec, name)) = TagRecord::decode(text) else {
        return;
    };
    // A line ending is where a field ends: a field with a bare CR in it is
    // not one the relay writes (names and media types are header values).
    if name.contains('\r') || rec.media_type.contains('\r') {
        return;
    }
    assert_eq!(TagRecord::decode(&rec.encode(&name)), Some((rec, name)));
}

fn journal(file: &[u8]) {
    let Ok(text) = std::str::from_utf8(file) else {
        return;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let text = text.replace("NOW", &now.to_string());
    let (before, body) = Access::load(&text);
    let (after, again) = Access::load(&body);
    assert_eq!(body, again, "the rewritten journal rewrites to itself");
    // Every object a link line names (the rewrite drops no link, so only
    // these can be served stale, before or after), as an anonymous client
    // and with credentials.
    let links = text
        .lines()
        .filter_map(|l| match l.split(' ').collect::<Vec<_>>().as_slice() {
            ["L", reg, repo, digest] => Some((*reg, *repo, *digest)),
            _ => None,
        })
        .take(16);
    for (reg, repo, digest) in links {
        for authorization in [None, Some(&b"Bearer t"[..])] {
            let who = Who::new(reg, repo, authorization);
            assert_eq!(
                before.allowed_stale(who, digest),
                after.allowed_stale(who, digest),
                "{reg} {repo} {digest} in {text:?} rewritten as {body:?}"
            );
        }
    }
}

fn manifest(file: &[u8]) {
    if let Some((media_type, bytes)) = decode_manifest(file) {
        assert!(!media_type.contains('\n'));
        assert_eq!(media_type.len() + 1 + bytes.len(), file.len());
        assert_eq!(&file[file.len() - bytes.len()..], bytes);
    }
}
