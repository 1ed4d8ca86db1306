//! The receiving half of the record layer as a state machine without I/O:
//! one complete record in, its application data (opened in place) or the
//! control message it carried handled (alerts, session tickets, the peer's
//! key updates). [`super::stream::TlsStream`] feeds it from its socket; the
//! `tls_stream` fuzz target feeds it records sealed with a known key.
//!
//! What it refuses, it refuses with the alert RFC 8446 §6.2 names (see
//! [`TlsError::alert`]): records over 2^14 + 256 bytes or with more than
//! 2^14 + 1 bytes of inner plaintext (`record_overflow`), more than
//! [`MAX_KEY_UPDATES`] key updates without application data in between, a
//! key update not at the end of its record, a renegotiation.

use std::ops::Range;

use rustls::ConnectionTrafficSecrets;

use super::control::{CLOSE_NOTIFY, HELLO_REQUEST, KEY_UPDATE, NEW_SESSION_TICKET, USER_CANCELED};
use super::error::TlsError;
use super::record::{RecordCipher, Version, ALERT, APPLICATION_DATA, HANDSHAKE};

/// Post-handshake handshake messages (session tickets, key updates) larger
/// than this are refused.
pub const MAX_HS_MESSAGE: usize = 64 * 1024;

/// Key updates accepted from the peer without application data in between.
/// One is all a peer needs; rustls allows 32. Each costs a key derivation
/// and (when it asks for ours) a reply, so a flood of them is work the peer
/// makes us do for nothing.
pub const MAX_KEY_UPDATES: u32 = 8;

/// Where the next receiving keys come from and where session tickets go:
/// rustls' kernel connection in a stream, a fixed schedule in the fuzzer.
pub trait RxKeys {
    /// The keys for the peer's next records, after its KeyUpdate.
    fn next_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), TlsError>;
    /// A NewSessionTicket from the peer.
    fn session_ticket(&mut self, body: &[u8]) -> Result<(), TlsError>;
}

/// What one record was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// Application data, now plaintext at this range of the record (maybe
    /// empty).
    Data(Range<usize>),
    /// An alert or post-handshake message, handled.
    Control,
}

/// The receiving state of a connection after the handshake.
pub struct Inbound {
    version: Version,
    rx: RecordCipher,
    /// A post-handshake handshake message split across records.
    hs_partial: Vec<u8>,
    /// The peer asked for our key update: ours goes out before our next
    /// application data record (RFC 8446 §4.6.3), one for any number asked.
    pub(super) key_update_owed: bool,
    /// The peer sent close_notify: nothing after it is read.
    pub(super) peer_closed: bool,
    /// The peer's key updates since its last non-empty application data.
    key_updates: u32,
}

impl Inbound {
    pub fn new(version: Version, rx: RecordCipher) -> Inbound {
        Inbound {
            version,
            rx,
            hs_partial: Vec::new(),
            key_update_owed: false,
            peer_closed: false,
            key_updates: 0,
        }
    }

    /// The length of the complete record at the front of `buf`, if it is
    /// all there; a header announcing more than the version allows is an
    /// error at once.
    pub fn complete(&self, buf: &[u8]) -> Result<Option<usize>, TlsError> {
        Ok(self.rx.complete(buf)?)
    }

    /// Whether the peer asked for our key update.
    pub fn key_update_owed(&self) -> bool {
        self.key_update_owed
    }

    /// Whether the peer sent close_notify.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Whether a handshake message is half received (then application data
    /// may not follow, and the connection may not be reused).
    pub fn mid_message(&self) -> bool {
        !self.hs_partial.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn set_rx_seq(&mut self, seq: u64) {
        self.rx.set_seq(seq);
    }

    /// Opens one complete record (`complete` said how long it is) in place.
    pub fn open(&mut self, record: &mut [u8], keys: &mut impl RxKeys) -> Result<Opened, TlsError> {
        if self.peer_closed {
            return Err(TlsError::Protocol("TLS record after close_notify"));
        }
        let (typ, range) = self.rx.open(record)?;
        match typ {
            APPLICATION_DATA => {
                if !self.hs_partial.is_empty() {
                    return Err(TlsError::Protocol(
                        "TLS data interleaved with a handshake message",
                    ));
                }
                if !range.is_empty() {
                    self.key_updates = 0;
                }
                Ok(Opened::Data(range))
            }
            ALERT => {
                self.alert(&record[range])?;
                Ok(Opened::Control)
            }
            // Zero-length handshake fragments are not allowed (RFC 8446
            // §5.1): they would let a peer make us loop for nothing.
            HANDSHAKE if range.is_empty() => Err(TlsError::Protocol("empty TLS handshake record")),
            HANDSHAKE => {
                if self.hs_partial.len() + range.len() > MAX_HS_MESSAGE + 4 {
                    return Err(TlsError::MessageTooLarge);
                }
                self.hs_partial.extend_from_slice(&record[range]);
                self.handshake_messages(keys)?;
                Ok(Opened::Control)
            }
            t => Err(TlsError::UnexpectedRecord(t)),
        }
    }

    fn alert(&mut self, alert: &[u8]) -> Result<(), TlsError> {
        let &[level, desc] = alert else {
            return Err(TlsError::Protocol("malformed TLS alert"));
        };
        if !self.hs_partial.is_empty() {
            return Err(TlsError::Protocol("TLS alert inside a handshake message"));
        }
        match desc {
            CLOSE_NOTIFY => {
                self.peer_closed = true;
                Ok(())
            }
            USER_CANCELED => Ok(()),
            // TLS 1.2 warnings (e.g. no_renegotiation) are not fatal; in
            // TLS 1.3 every other alert is (RFC 8446 §6).
            _ if level == 1 && self.version == Version::Tls12 => Ok(()),
            _ => Err(TlsError::Alert(desc)),
        }
    }

    /// Handles the complete handshake messages in `hs_partial`.
    fn handshake_messages(&mut self, keys: &mut impl RxKeys) -> Result<(), TlsError> {
        let mut at = 0;
        while let [typ, a, b, c, ..] = self.hs_partial[at..] {
            let len = u32::from_be_bytes([0, a, b, c]) as usize;
            if len > MAX_HS_MESSAGE {
                return Err(TlsError::MessageTooLarge);
            }
            let Some(body) = self.hs_partial.get(at + 4..at + 4 + len) else {
                break;
            };
            match (typ, self.version) {
                (NEW_SESSION_TICKET, Version::Tls13) => keys.session_ticket(body)?,
                (KEY_UPDATE, Version::Tls13) => {
                    // A key change must end its record (RFC 8446 §5.1).
                    if at + 4 + len != self.hs_partial.len() {
                        return Err(TlsError::Protocol(
                            "TLS key update not at a record boundary",
                        ));
                    }
                    let requested = match body {
                        [0] => false,
                        [1] => true,
                        _ => return Err(TlsError::Protocol("malformed TLS key update")),
                    };
                    self.key_updates += 1;
                    if self.key_updates > MAX_KEY_UPDATES {
                        return Err(TlsError::KeyUpdateFlood);
                    }
                    self.rx =
                        RecordCipher::new(self.version, keys.next_rx()?).map_err(TlsError::Keys)?;
                    self.key_update_owed |= requested;
                }
                // A TLS 1.2 server asking to renegotiate: not supported, and
                // ignoring it is allowed (RFC 5246 §7.4.1.1).
                (HELLO_REQUEST, Version::Tls12) if len == 0 => {}
                (t, _) => return Err(TlsError::UnexpectedHandshake(t)),
            }
            at += 4 + len;
        }
        self.hs_partial.drain(..at);
        Ok(())
    }
}
