//! Control messages after the handshake: their codes, and our key updates
//! (the peer's alerts, tickets and key updates are [`super::inbound`]'s).

use super::error::TlsError;
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

impl<S: Side> TlsStream<S> {
    /// Seals our KeyUpdate with the current key into `out`, then switches
    /// to the next key.
    pub(super) fn key_update(&mut self, out: &mut Vec<u8>) -> Result<(), TlsError> {
        if self.version != Version::Tls13 {
            // TLS 1.2 has no key update: end the connection instead of
            // exceeding the key's safe use (rustls does the same).
            return Err(TlsError::KeyLimit);
        }
        self.tx.seal(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], out)?;
        let next = self.kernel.update_tx_secret().map_err(TlsError::Rustls)?;
        self.tx = RecordCipher::new(self.version, next).map_err(TlsError::Keys)?;
        self.inbound.key_update_owed = false;
        Ok(())
    }
}
