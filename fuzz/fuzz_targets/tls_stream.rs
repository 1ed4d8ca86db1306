//! The receiving state machine of a TLS stream (`tls::inbound`) fed
//! fuzzer-chosen record sequences sealed with a known key, so that records
//! get past authentication: application data (empty, padded, full), alerts,
//! handshake fragments, key updates (the key schedule is the target's own),
//! raw bytes and flipped bits.
//!
//! Checked: never a panic; what comes out as data is always a prefix of the
//! application data sealed, in order (nothing forged, nothing reordered);
//! when every record sent was valid, all of it comes out, and the stream
//! ends where close_notify was sent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ocirelay::tls::error::TlsError;
use ocirelay::tls::inbound::{Inbound, Opened, RxKeys, MAX_KEY_UPDATES};
use ocirelay::tls::record::{RecordCipher, Version, ALERT, APPLICATION_DATA, HANDSHAKE, MAX_PLAIN};
use rustls::crypto::cipher::{AeadKey, Iv};
use rustls::ConnectionTrafficSecrets;

/// Keys of generation `gen` (both ends derive the same).
fn keys(sel: u8, gen: u8) -> (u64, ConnectionTrafficSecrets) {
    let key = AeadKey::from([gen ^ 0xa5; 32]);
    let iv = Iv::new([gen ^ sel; 12]);
    let secrets = if sel & 2 == 0 {
        ConnectionTrafficSecrets::Aes256Gcm { key, iv }
    } else {
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv }
    };
    (0, secrets)
}

struct Schedule {
    sel: u8,
    gen: u8,
}

impl RxKeys for Schedule {
    fn next_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), TlsError> {
        self.gen = self.gen.wrapping_add(1);
        Ok(keys(self.sel, self.gen))
    }

    fn session_ticket(&mut self, body: &[u8]) -> Result<(), TlsError> {
        // Taken or refused, as rustls would.
        match body.first() {
            Some(0) => Err(TlsError::Protocol("bad ticket")),
            _ => Ok(()),
        }
    }
}

/// The peer: seals what the input says.
struct Peer {
    version: Version,
    sel: u8,
    gen: u8,
    tx: RecordCipher,
    wire: Vec<u8>,
    /// Application data sealed, in order.
    sent: Vec<u8>,
    /// Every record so far is one the receiver must take.
    valid: bool,
    /// close_notify sent (validly): nothing after it is read.
    closed: bool,
    key_updates: u32,
}

impl Peer {
    fn seal(&mut self, typ: u8, plain: &[u8]) {
        if self.tx.seal(typ, plain, &mut self.wire).is_err() {
            self.valid = false;
        }
    }
}

/// Takes `n` bytes of input (fewer at its end).
fn take<'a>(input: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(input.len());
    let (a, b) = input.split_at(n);
    *input = b;
    a
}

fn byte(input: &mut &[u8]) -> u8 {
    take(input, 1).first().copied().unwrap_or(0)
}

fuzz_target!(|data: &[u8]| {
    let mut input = data;
    let sel = byte(&mut input);
    let version = if sel & 1 == 0 { Version::Tls12 } else { Version::Tls13 };
    let mut peer = Peer {
        version,
        sel,
        gen: 0,
        tx: RecordCipher::new(version, keys(sel, 0)).unwrap(),
        wire: Vec::new(),
        sent: Vec::new(),
        valid: true,
        closed: false,
        key_updates: 0,
    };
    let big = vec![0x42u8; MAX_PLAIN];
    let mut ops = 0;
    while !input.is_empty() && ops < 64 {
        ops += 1;
        let op = byte(&mut input);
        let closed_before = peer.closed;
        match op % 9 {
            0 | 1 => {
                // Application data, TLS 1.3 padding as the input says.
                let n = usize::from(byte(&mut input));
                let payload = take(&mut input, n).to_vec();
                let pad = usize::from(op >> 4);
                if version == Version::Tls13 && pad > 0 {
                    let mut inner = payload.clone();
                    inner.push(APPLICATION_DATA);
                    inner.resize(inner.len() + pad - 1, 0);
                    peer.seal(0, &inner);
                } else {
                    peer.seal(APPLICATION_DATA, &payload);
                }
                if !peer.closed {
                    peer.sent.extend_from_slice(&payload);
                    if !payload.is_empty() {
                        peer.key_updates = 0;
                    }
                }
            }
            2 => {
                let alert = [byte(&mut input), byte(&mut input)];
                peer.seal(ALERT, &alert);
                match alert {
                    [1, 0] => peer.closed = true,
                    [1, 90] => {}
                    _ => peer.valid = false,
                }
            }
            3 => {
                // A handshake fragment of any content.
                let n = usize::from(byte(&mut input));
                let frag = take(&mut input, n).to_vec();
                peer.seal(HANDSHAKE, &frag);
                peer.valid = false;
            }
            4 => {
                // A key update; the next key only where one exists.
                let requested = byte(&mut input) & 1;
                peer.seal(HANDSHAKE, &[24, 0, 0, 1, requested]);
                if version == Version::Tls13 {
                    peer.gen = peer.gen.wrapping_add(1);
                    peer.tx = RecordCipher::new(version, keys(peer.sel, peer.gen)).unwrap();
                    peer.key_updates += 1;
                    if peer.key_updates > MAX_KEY_UPDATES {
                        peer.valid = false;
                    }
                } else {
                    peer.valid = false;
                }
            }
            5 => {
                // Raw bytes (a header of any length, garbage).
                let n = usize::from(byte(&mut input));
                let raw = take(&mut input, n).to_vec();
                peer.wire.extend_from_slice(&raw);
                peer.valid = false;
            }
            6 => {
                // A flipped bit somewhere in what was sent.
                let at = usize::from(u16::from_le_bytes([byte(&mut input), byte(&mut input)]));
                if !peer.wire.is_empty() {
                    let at = at % peer.wire.len();
                    peer.wire[at] ^= 1 << (op >> 5);
                    peer.valid = false;
                }
            }
            7 => {
                // The largest record.
                peer.seal(APPLICATION_DATA, &big);
                if !peer.closed {
                    peer.sent.extend_from_slice(&big);
                    peer.key_updates = 0;
                }
            }
            _ => {
                // A session ticket (TLS 1.3; refused when it starts with 0).
                let n = usize::from(byte(&mut input) % 64);
                let body = take(&mut input, n).to_vec();
                let mut msg = vec![4, 0, 0, body.len() as u8];
                msg.extend_from_slice(&body);
                peer.seal(HANDSHAKE, &msg);
                if version == Version::Tls12 || body.first() == Some(&0) {
                    peer.valid = false;
                }
            }
        }
        if closed_before {
            // Records after close_notify are not read at all.
            peer.valid = false;
        }
    }

    // The receiver, as the stream drives it: complete, open, until an
    // error, close_notify or the end of what was sent.
    let mut inbound = Inbound::new(version, RecordCipher::new(version, keys(sel, 0)).unwrap());
    let mut schedule = Schedule { sel, gen: 0 };
    let mut wire = peer.wire;
    let mut at = 0;
    let mut got = Vec::new();
    let mut failed = false;
    while !inbound.peer_closed() {
        match inbound.complete(&wire[at..]) {
            Ok(Some(len)) => {
                let record = &mut wire[at..at + len];
                match inbound.open(record, &mut schedule) {
                    Ok(Opened::Data(range)) => {
                        assert!(range.end <= len && range.len() <= MAX_PLAIN);
                        got.extend_from_slice(&record[range]);
                    }
                    Ok(Opened::Control) => {}
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
                at += len;
            }
            Ok(None) => break,
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(peer.sent.starts_with(&got), "data came out that was not sent");
    if peer.valid {
        assert!(!failed, "a valid sequence was refused");
        assert_eq!(got, peer.sent, "valid data was lost");
        assert_eq!(inbound.peer_closed(), peer.closed);
    }
});
