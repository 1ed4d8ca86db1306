//! The TLS record layer for application traffic, after rustls has done the
//! handshake (the same split as kernel TLS: rustls negotiates and hands over
//! the traffic secrets through its `kernel` API, the record layer runs here).
//!
//! Why: rustls' own record layer encrypts every 16 KiB record into a freshly
//! allocated `Vec` and copies it again into the socket buffer, and on the way
//! in copies ciphertext into its deframer and plaintext out of it. Relaying a
//! blob upstream TLS -> client TLS made five user-space copies of every byte.
//! Here records are decrypted in place in the connection's read buffer and
//! encrypted in place in its write buffer: the relay's own copy in and out of
//! its buffer is all that is left.
//!
//! Only AEAD suites exist in rustls (AES-GCM, ChaCha20-Poly1305), so a record
//! is `header | [explicit nonce] | ciphertext | tag` with the nonce derived
//! from the static IV and the record sequence number (RFC 8446 §5.3, RFC 5288,
//! RFC 7905).

use std::fmt;
use std::ops::Range;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use rustls::ConnectionTrafficSecrets;

/// Largest plaintext in one record (RFC 8446 §5.1).
pub const MAX_PLAIN: usize = 16 * 1024;
/// Record header: type, version, length.
pub const HEADER: usize = 5;
/// Largest record of any version on the wire: TLS 1.2 allows 2048 bytes
/// of expansion (RFC 5246 §6.2.3).
pub const MAX_RECORD: usize = HEADER + MAX_PLAIN + 2048;
/// Largest TLS 1.3 record: 256 bytes of expansion (RFC 8446 §5.2).
pub const MAX_RECORD_13: usize = HEADER + MAX_PLAIN + 256;

const TAG: usize = 16;
/// Explicit nonce carried by TLS 1.2 AES-GCM records.
const EXPLICIT_NONCE: usize = 8;

pub const CHANGE_CIPHER_SPEC: u8 = 20;
pub const ALERT: u8 = 21;
pub const HANDSHAKE: u8 = 22;
pub const APPLICATION_DATA: u8 = 23;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Tls12,
    Tls13,
}

impl Version {
    /// The longest record (header included) this version allows.
    pub fn max_record(self) -> usize {
        match self {
            Version::Tls12 => MAX_RECORD,
            Version::Tls13 => MAX_RECORD_13,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// Authentication failed: corrupted, forged or out of sequence.
    BadRecordMac,
    /// A record longer than the protocol allows.
    RecordOverflow(usize),
    /// A record too short to hold its nonce and tag, or TLS 1.3 padding only.
    Malformed(&'static str),
    /// The sequence number would wrap (never reached in practice).
    SequenceExhausted,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::BadRecordMac => f.write_str("TLS record failed authentication"),
            RecordError::RecordOverflow(n) => write!(f, "TLS record of {n} bytes is too long"),
            RecordError::Malformed(what) => write!(f, "malformed TLS record: {what}"),
            RecordError::SequenceExhausted => f.write_str("TLS record sequence number exhausted"),
        }
    }
}

impl std::error::Error for RecordError {}

/// The length of the complete record at the front of `buf`, if it is all
/// there (`Ok(None)`: read more), for a record of any version.
pub fn complete_record(buf: &[u8]) -> Result<Option<usize>, RecordError> {
    complete_record_upto(buf, MAX_RECORD)
}

/// [`complete_record`] with the limit of one version (the header says how
/// long a record is, so a record over it is refused before it is read).
fn complete_record_upto(buf: &[u8], max: usize) -> Result<Option<usize>, RecordError> {
    if buf.len() < HEADER {
        return Ok(None);
    }
    let len = HEADER + u16::from_be_bytes([buf[3], buf[4]]) as usize;
    if len > max {
        return Err(RecordError::RecordOverflow(len));
    }
    Ok((buf.len() >= len).then_some(len))
}

/// One direction's AEAD key, IV and sequence number.
pub struct RecordCipher {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    seq: u64,
    version: Version,
    /// TLS 1.2 AES-GCM: the record carries the nonce's last 8 bytes.
    explicit_nonce: bool,
}

impl RecordCipher {
    /// The cipher for one direction, from the secrets rustls extracted.
    pub fn new(
        version: Version,
        (seq, secrets): (u64, ConnectionTrafficSecrets),
    ) -> Result<RecordCipher, String> {
        let (alg, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => return Err("unsupported TLS cipher suite".into()),
        };
        let key = UnboundKey::new(alg, key.as_ref()).map_err(|_| "bad TLS traffic key")?;
        let iv: [u8; NONCE_LEN] = iv.as_ref().try_into().map_err(|_| "bad TLS IV length")?;
        Ok(RecordCipher {
            key: LessSafeKey::new(key),
            iv,
            seq,
            version,
            explicit_nonce: version == Version::Tls12 && alg != &aead::CHACHA20_POLY1305,
        })
    }

    /// The length of the complete record at the front of `buf` if it is
    /// all there, within this cipher's version's limit.
    pub fn complete(&self, buf: &[u8]) -> Result<Option<usize>, RecordError> {
        complete_record_upto(buf, self.version.max_record())
    }

    /// Records protected so far with this key.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Seals a record of any length (tests: a peer breaking the limits).
    #[cfg(test)]
    pub(crate) fn seal_any_length(&mut self, typ: u8, plain: &[u8], out: &mut Vec<u8>) {
        self.seal_unchecked(typ, plain, out).unwrap();
    }

    /// Moves the sequence number (tests: near its end).
    #[cfg(test)]
    pub(crate) fn set_seq(&mut self, seq: u64) {
        self.seq = seq;
    }

    /// Bytes a record adds to its plaintext.
    pub fn overhead(&self) -> usize {
        HEADER
            + TAG
            + match self.version {
                Version::Tls13 => 1, // the inner content type
                Version::Tls12 if self.explicit_nonce => EXPLICIT_NONCE,
                Version::Tls12 => 0,
            }
    }

    /// Where a record's plaintext starts within it: after the header and,
    /// for TLS 1.2 AES-GCM, the explicit nonce. The rest of
    /// [`RecordCipher::overhead`] follows the plaintext.
    pub fn plain_offset(&self) -> usize {
        HEADER
            + match self.explicit_nonce {
                true => EXPLICIT_NONCE,
                false => 0,
            }
    }

    /// IV xor sequence number (RFC 8446 §5.3; also TLS 1.2 ChaCha20 and the
    /// nonce rustls uses for TLS 1.2 AES-GCM, whose last 8 bytes it sends).
    fn nonce(&self) -> [u8; NONCE_LEN] {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        nonce
    }

    fn next_seq(&mut self) -> Result<(), RecordError> {
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or(RecordError::SequenceExhausted)?;
        Ok(())
    }

    /// TLS 1.2 additional data: seq, type, version, plaintext length.
    fn aad12(&self, typ: u8, version: [u8; 2], len: usize) -> [u8; 13] {
        let mut aad = [0u8; 13];
        aad[..8].copy_from_slice(&self.seq.to_be_bytes());
        aad[8] = typ;
        aad[9..11].copy_from_slice(&version);
        aad[11..].copy_from_slice(&(len as u16).to_be_bytes());
        aad
    }

    /// Whether a record of `slot_len` bytes with its plaintext at `plain`
    /// has exactly the layout this cipher's records have (see
    /// [`RecordCipher::seal_in_slot`]).
    pub fn fits_slot(&self, slot_len: usize, plain: &Range<usize>) -> bool {
        let explicit = if self.explicit_nonce {
            EXPLICIT_NONCE
        } else {
            0
        };
        let inner_type = usize::from(self.version == Version::Tls13);
        plain.start == HEADER + explicit
            && plain.start <= plain.end
            && slot_len == plain.end + inner_type + TAG
            && plain.len() <= MAX_PLAIN
    }

    /// Seals application data where another record of the same layout was
    /// opened: `slot` is that whole record, its plaintext at `plain`, with
    /// exactly this cipher's room around it (header and explicit nonce
    /// before, inner content type and tag after). A relay between two TLS
    /// connections re-encrypts this way without copying a byte. Returns
    /// false, touching nothing, when the room does not fit exactly.
    pub fn seal_in_slot(
        &mut self,
        slot: &mut [u8],
        plain: Range<usize>,
    ) -> Result<bool, RecordError> {
        if !self.fits_slot(slot.len(), &plain) {
            return Ok(false);
        }
        let explicit = plain.start - HEADER;
        if self.seq == u64::MAX {
            return Err(RecordError::SequenceExhausted);
        }
        let nonce = self.nonce();
        let body = slot.len() - HEADER;
        let header = [APPLICATION_DATA, 3, 3, (body >> 8) as u8, body as u8];
        slot[..HEADER].copy_from_slice(&header);
        let tag = match self.version {
            Version::Tls13 => {
                slot[plain.end] = APPLICATION_DATA;
                self.key.seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(header),
                    &mut slot[HEADER..plain.end + 1],
                )
            }
            Version::Tls12 => {
                slot[HEADER..plain.start].copy_from_slice(&nonce[NONCE_LEN - explicit..]);
                let aad = self.aad12(APPLICATION_DATA, [3, 3], plain.len());
                self.key.seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad),
                    &mut slot[plain.clone()],
                )
            }
        }
        .map_err(|_| RecordError::BadRecordMac)?;
        let at = slot.len() - TAG;
        slot[at..].copy_from_slice(tag.as_ref());
        self.next_seq()?;
        Ok(true)
    }

    /// Appends one record of `typ` holding `plain` (at most [`MAX_PLAIN`]
    /// bytes) to `out`: the plaintext is copied once, then encrypted where it
    /// lies.
    /// On an error `out` is as it was: no header or plaintext of a record
    /// that was not sealed is left behind to be sent.
    pub fn seal(&mut self, typ: u8, plain: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        if plain.len() > MAX_PLAIN {
            return Err(RecordError::RecordOverflow(plain.len()));
        }
        if self.seq == u64::MAX {
            return Err(RecordError::SequenceExhausted);
        }
        let before = out.len();
        let sealed = self.seal_unchecked(typ, plain, out);
        if sealed.is_err() {
            out.truncate(before);
        }
        sealed
    }

    /// [`RecordCipher::seal`] once the record is known to fit its length
    /// and sequence number; may leave a partial record in `out` on error.
    fn seal_unchecked(
        &mut self,
        typ: u8,
        plain: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        let nonce = self.nonce();
        let body = self.overhead() - HEADER + plain.len();
        out.reserve(HEADER + body);
        let outer = if self.version == Version::Tls13 {
            APPLICATION_DATA
        } else {
            typ
        };
        let header = [outer, 3, 3, (body >> 8) as u8, body as u8];
        out.extend_from_slice(&header);
        let tag = match self.version {
            Version::Tls13 => {
                let start = out.len();
                out.extend_from_slice(plain);
                out.push(typ);
                self.key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(header),
                        &mut out[start..],
                    )
                    .map_err(|_| RecordError::BadRecordMac)?
            }
            Version::Tls12 => {
                if self.explicit_nonce {
                    out.extend_from_slice(&nonce[4..]);
                }
                let start = out.len();
                out.extend_from_slice(plain);
                let aad = self.aad12(typ, [3, 3], plain.len());
                self.key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(aad),
                        &mut out[start..],
                    )
                    .map_err(|_| RecordError::BadRecordMac)?
            }
        };
        out.extend_from_slice(tag.as_ref());
        self.next_seq()
    }

    /// Decrypts the complete record `record` (header included) in place and
    /// returns its content type and where its plaintext now lies in `record`.
    pub fn open(&mut self, record: &mut [u8]) -> Result<(u8, Range<usize>), RecordError> {
        if record.len() > self.version.max_record() {
            return Err(RecordError::RecordOverflow(record.len()));
        }
        let header: [u8; HEADER] = record[..HEADER].try_into().expect("record has a header");
        let body = record.len() - HEADER;
        let (typ, range) = match self.version {
            Version::Tls13 => {
                if header[0] != APPLICATION_DATA {
                    return Err(RecordError::Malformed("unprotected record after handshake"));
                }
                if body < TAG + 1 {
                    return Err(RecordError::Malformed("record shorter than its tag"));
                }
                let plain = self
                    .key
                    .open_in_place(
                        Nonce::assume_unique_for_key(self.nonce()),
                        Aad::from(header),
                        &mut record[HEADER..],
                    )
                    .map_err(|_| RecordError::BadRecordMac)?;
                // Inner plaintext: content, type, zero padding; at most
                // 2^14 + 1 bytes in all (RFC 8446 §5.2, §5.4).
                if plain.len() > MAX_PLAIN + 1 {
                    return Err(RecordError::RecordOverflow(plain.len()));
                }
                let Some(end) = plain.iter().rposition(|&b| b != 0) else {
                    return Err(RecordError::Malformed("record without a content type"));
                };
                if end > MAX_PLAIN {
                    return Err(RecordError::RecordOverflow(end));
                }
                (plain[end], HEADER..HEADER + end)
            }
            Version::Tls12 => {
                let skip = if self.explicit_nonce {
                    EXPLICIT_NONCE
                } else {
                    0
                };
                if body < skip + TAG {
                    return Err(RecordError::Malformed(
                        "record shorter than its nonce and tag",
                    ));
                }
                let len = body - skip - TAG;
                if len > MAX_PLAIN {
                    return Err(RecordError::RecordOverflow(len));
                }
                let nonce = if self.explicit_nonce {
                    let mut n = self.iv;
                    n[4..].copy_from_slice(&record[HEADER..HEADER + EXPLICIT_NONCE]);
                    n
                } else {
                    self.nonce()
                };
                let aad = self.aad12(header[0], [header[1], header[2]], len);
                self.key
                    .open_in_place(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(aad),
                        &mut record[HEADER + skip..],
                    )
                    .map_err(|_| RecordError::BadRecordMac)?;
                (header[0], HEADER + skip..HEADER + skip + len)
            }
        };
        self.next_seq()?;
        Ok((typ, range))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::cipher::{AeadKey, Iv};

    fn pair(version: Version, which: u8) -> (RecordCipher, RecordCipher) {
        let secrets = || {
            let key = AeadKey::from([7u8; 32]);
            let iv = Iv::new([9u8; 12]);
            match which {
                0 => ConnectionTrafficSecrets::Aes256Gcm { key, iv },
                _ => ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv },
            }
        };
        (
            RecordCipher::new(version, (5, secrets())).unwrap(),
            RecordCipher::new(version, (5, secrets())).unwrap(),
        )
    }

    #[test]
    fn seal_then_open_every_version_and_type() {
        for version in [Version::Tls12, Version::Tls13] {
            for which in [0, 1] {
                let (mut tx, mut rx) = pair(version, which);
                let mut wire = Vec::new();
                tx.seal(APPLICATION_DATA, b"hello", &mut wire).unwrap();
                tx.seal(ALERT, &[1, 0], &mut wire).unwrap();
                tx.seal(APPLICATION_DATA, &[0u8; MAX_PLAIN], &mut wire)
                    .unwrap();
                assert_eq!(tx.seq(), 8);

                let mut at = 0;
                let mut got = Vec::new();
                while let Some(len) = complete_record(&wire[at..]).unwrap() {
                    let rec = &mut wire[at..at + len];
                    let (typ, range) = rx.open(rec).unwrap();
                    got.push((typ, rec[range].to_vec()));
                    at += len;
                }
                assert_eq!(at, wire.len());
                assert_eq!(got.len(), 3);
                assert_eq!(got[0], (APPLICATION_DATA, b"hello".to_vec()));
                assert_eq!(got[1], (ALERT, vec![1, 0]));
                assert_eq!(got[2], (APPLICATION_DATA, vec![0u8; MAX_PLAIN]));
            }
        }
    }

    #[test]
    fn tampering_reordering_and_truncation_are_refused() {
        for version in [Version::Tls12, Version::Tls13] {
            let (mut tx, mut rx) = pair(version, 0);
            let mut a = Vec::new();
            let mut b = Vec::new();
            tx.seal(APPLICATION_DATA, b"first", &mut a).unwrap();
            tx.seal(APPLICATION_DATA, b"second", &mut b).unwrap();
            // Out of order: b was sealed with the next sequence number.
            assert_eq!(rx.open(&mut b.clone()), Err(RecordError::BadRecordMac));
            // A flipped bit.
            let mut bad = a.clone();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert_eq!(rx.open(&mut bad), Err(RecordError::BadRecordMac));
            // Too short to hold a tag.
            let mut short = vec![APPLICATION_DATA, 3, 3, 0, 3, 1, 2, 3];
            assert!(matches!(
                rx.open(&mut short),
                Err(RecordError::Malformed(_))
            ));
        }
        // Only the header counts for completeness; oversized lengths fail early.
        assert_eq!(complete_record(&[23, 3, 3, 0]), Ok(None));
        assert_eq!(complete_record(&[23, 3, 3, 0, 2, 0]), Ok(None));
        assert_eq!(complete_record(&[23, 3, 3, 0, 1, 0]), Ok(Some(6)));
        assert_eq!(
            complete_record(&[23, 3, 3, 0xff, 0xff]),
            Err(RecordError::RecordOverflow(HEADER + 0xffff))
        );
    }

    #[test]
    fn sealing_in_a_slot_gives_the_same_record_as_sealing_a_copy() {
        for version in [Version::Tls12, Version::Tls13] {
            for which in [0, 1] {
                // `up` stands for the connection a record came from, `a`
                // and `b` for the same outgoing connection sealing it two ways.
                let (mut up_tx, mut up_rx) = pair(version, which);
                let (mut a, mut b) = pair(version, which);
                for len in [0, 1, 1000, MAX_PLAIN] {
                    let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
                    let mut wire = Vec::new();
                    up_tx.seal(APPLICATION_DATA, &data, &mut wire).unwrap();
                    let (_, plain) = up_rx.open(&mut wire).unwrap();
                    assert!(b.seal_in_slot(&mut wire, plain).unwrap());
                    let mut copy = Vec::new();
                    a.seal(APPLICATION_DATA, &data, &mut copy).unwrap();
                    assert_eq!(wire, copy, "{version:?} {which} {len}");
                    assert_eq!(a.seq(), b.seq());
                }
            }
        }
    }

    #[test]
    fn a_slot_of_another_layout_is_left_alone() {
        // TLS 1.2 AES-GCM records have an explicit nonce and no inner type.
        let (mut up_tx, mut up_rx) = pair(Version::Tls12, 0);
        let (mut out, _) = pair(Version::Tls13, 0);
        let mut wire = Vec::new();
        up_tx.seal(APPLICATION_DATA, b"data", &mut wire).unwrap();
        let (_, plain) = up_rx.open(&mut wire).unwrap();
        let before = wire.clone();
        assert!(!out.seal_in_slot(&mut wire, plain).unwrap());
        assert_eq!(wire, before);
        assert_eq!(out.seq(), 5);
        // TLS 1.3 padding makes the slot larger than the record needs.
        let (mut up_tx, mut up_rx) = pair(Version::Tls13, 1);
        let (mut out, _) = pair(Version::Tls13, 1);
        let mut wire = Vec::new();
        up_tx
            .seal(APPLICATION_DATA, b"data\x17\0\0", &mut wire)
            .unwrap();
        let (_, mut plain) = up_rx.open(&mut wire).unwrap();
        plain.end -= 3; // what a padded record's content is
        assert!(!out.seal_in_slot(&mut wire, plain).unwrap());
    }

    #[test]
    fn tls13_padding_only_record_is_refused() {
        let (mut tx, mut rx) = pair(Version::Tls13, 1);
        let mut wire = Vec::new();
        // Type 0 looks like padding: the inner plaintext is all zeros.
        tx.seal(0, &[0, 0, 0], &mut wire).unwrap();
        assert!(matches!(rx.open(&mut wire), Err(RecordError::Malformed(_))));
    }
}
