//! Control messages after the handshake: alerts (close_notify, fatal
//! ones), session tickets (handed to rustls) and key updates, ours and the
//! peer's.

use std::io;
use std::ops::Range;

use super::error::{record_err, rustls_err, TlsError};
use super::handshake::Side;
use super::record::{RecordCipher, Version, HANDSHAKE};
use super::stream::TlsStream;

/// Handshake message types that may follow the handshake.
pub(super) const HELLO_REQUEST: u8 = 0;
pub(super) const NEW_SESSION_TICKET: u8 = 4;
pub(super) const KEY_UPDATE: u8 = 24;

/// Alert descriptions we act on.
pub(super) const CLOSE_NOTIFY: u8 = 0;
pub(super) const USER_CANCELED: u8 = 90;

/// Post-handshake handshake messages (session tickets, key updates) larger
/// than this are refused.
pub(super) const MAX_HS_MESSAGE: usize = 64 * 1024;

impl<S: Side> TlsStream<S> {
    pub(super) fn alert(&mut self, range: Range<usize>) -> io::Result<()> {
        let &[level, desc] = &self.rbuf[range] else {
            return Err(TlsError::Protocol("malformed TLS alert").into());
        };
        match desc {
            CLOSE_NOTIFY => {
                self.peer_closed = true;
                Ok(())
            }
            USER_CANCELED => Ok(()),
            // TLS 1.2 warnings (e.g. no_renegotiation) are not fatal.
            _ if level == 1 && self.version == Version::Tls12 => Ok(()),
            _ => Err(TlsError::Alert(desc).into()),
        }
    }

    /// Handles the complete handshake messages in `hs_partial`.
    pub(super) fn handshake_messages(&mut self) -> io::Result<()> {
        let mut at = 0;
        while let [typ, a, b, c, ..] = self.hs_partial[at..] {
            let len = u32::from_be_bytes([0, a, b, c]) as usize;
            if len > MAX_HS_MESSAGE {
                return Err(TlsError::MessageTooLarge.into());
            }
            let Some(body) = self.hs_partial.get(at + 4..at + 4 + len) else {
                break;
            };
            match (typ, self.version) {
                (NEW_SESSION_TICKET, Version::Tls13) => S::session_ticket(&mut self.kernel, body)?,
                (KEY_UPDATE, Version::Tls13) => {
                    // A key change must end its record (RFC 8446 §5.1).
                    if at + 4 + len != self.hs_partial.len() {
                        return Err(
                            TlsError::Protocol("TLS key update not at a record boundary").into(),
                        );
                    }
                    let requested = match body {
                        [0] => false,
                        [1] => true,
                        _ => return Err(TlsError::Protocol("malformed TLS key update").into()),
                    };
                    let next = self.kernel.update_rx_secret().map_err(rustls_err)?;
                    self.rx = RecordCipher::new(self.version, next).map_err(TlsError::Keys)?;
                    self.owe_key_update |= requested;
                }
                // A TLS 1.2 server asking to renegotiate: not supported, and
                // ignoring it is allowed (RFC 5246 §7.4.1.1).
                (HELLO_REQUEST, Version::Tls12) if len == 0 => {}
                (t, _) => return Err(TlsError::UnexpectedHandshake(t).into()),
            }
            at += 4 + len;
        }
        self.hs_partial.drain(..at);
        Ok(())
    }

    /// Seals our KeyUpdate with the current key into `out`, then switches
    /// to the next key.
    pub(super) fn key_update(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        if self.version != Version::Tls13 {
            // TLS 1.2 has no key update: end the connection instead of
            // exceeding the key's safe use (rustls does the same).
            return Err(TlsError::KeyLimit.into());
        }
        self.tx
            .seal(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], out)
            .map_err(record_err)?;
        let next = self.kernel.update_tx_secret().map_err(rustls_err)?;
        self.tx = RecordCipher::new(self.version, next).map_err(TlsError::Keys)?;
        self.owe_key_update = false;
        Ok(())
    }

    /// Answers a key update the peer asked for.
    pub(super) async fn answer_key_update(&mut self) -> io::Result<()> {
        let mut out = std::mem::take(&mut self.wbuf);
        self.key_update(&mut out)?;
        self.send(out).await
    }
}
