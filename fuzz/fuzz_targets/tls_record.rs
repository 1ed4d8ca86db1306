//! The TLS record layer must never panic on what a peer sends: records of
//! any length and content are either opened (plaintext inside the record)
//! or refused. What we seal, we open again unchanged, also after it is
//! re-encrypted in place for another connection.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ocirelay::tls::record::{complete_record, RecordCipher, Version, APPLICATION_DATA, MAX_PLAIN};
use rustls::crypto::cipher::{AeadKey, Iv};
use rustls::ConnectionTrafficSecrets;

fn cipher(sel: u8) -> RecordCipher {
    let version = if sel & 1 == 0 { Version::Tls12 } else { Version::Tls13 };
    let key = AeadKey::from([sel; 32]);
    let iv = Iv::new([sel ^ 0x5a; 12]);
    let secrets = if sel & 2 == 0 {
        ConnectionTrafficSecrets::Aes256Gcm { key, iv }
    } else {
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv }
    };
    RecordCipher::new(version, (u64::from(sel), secrets)).unwrap()
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    // Whatever arrives: parse and open records until one is refused.
    let mut rx = cipher(sel);
    let mut wire = rest.to_vec();
    let mut at = 0;
    while let Ok(Some(len)) = complete_record(&wire[at..]) {
        let rec = &mut wire[at..at + len];
        match rx.open(rec) {
            Ok((_, range)) => assert!(range.end <= len && range.len() <= MAX_PLAIN),
            Err(_) => break,
        }
        at += len;
    }
    // What we seal opens to the same bytes.
    let (mut tx, mut rx) = (cipher(sel), cipher(sel));
    let plain = &rest[..rest.len().min(MAX_PLAIN)];
    let mut out = Vec::new();
    tx.seal(APPLICATION_DATA, plain, &mut out).unwrap();
    assert_eq!(complete_record(&out), Ok(Some(out.len())));
    let (typ, range) = rx.open(&mut out).unwrap();
    assert_eq!(typ, APPLICATION_DATA);
    assert_eq!(&out[range.clone()], plain);
    // Re-encrypted in place for another connection (same layout or not), it
    // opens there to the same bytes, or is left alone.
    let other = sel.rotate_right(2);
    let (mut tx2, mut rx2) = (cipher(other), cipher(other));
    let before = out.clone();
    if tx2.seal_in_slot(&mut out, range).unwrap() {
        let (typ, range) = rx2.open(&mut out).unwrap();
        assert_eq!(typ, APPLICATION_DATA);
        assert_eq!(&out[range], plain);
    } else {
        assert_eq!(out, before);
    }
    // Any slot and range: sealed or refused, never a panic.
    if let [a, b, c, slot @ ..] = rest {
        let mut slot = slot.to_vec();
        let start = usize::from(*a % 16);
        let end = usize::from(u16::from_le_bytes([*b, *c])) % (slot.len() + 2);
        let _ = cipher(sel).seal_in_slot(&mut slot, start..end);
    }
});
