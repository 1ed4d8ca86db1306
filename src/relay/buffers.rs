//! The per-worker pool of relay buffers.

use std::cell::RefCell;

/// Size of a body relay buffer. Large reads and writes keep syscalls (and
/// TLS record overhead) per byte low.
pub const RELAY_BUF: usize = 256 * 1024;
/// Relay buffers kept for reuse per worker. A few cover the steady state
/// (each one saves a 256 KiB allocation and its page faults); more only
/// pin the high-water mark of a burst: with 32, a burst of concurrent blob
/// relays left up to 8 MiB per worker resident for good. Buffers past this
/// go back to the allocator.
const MAX_POOLED_BUFS: usize = 4;

/// A worker's relay buffers (one thread: `RefCell`, no lock).
#[derive(Default)]
pub struct BufPool {
    bufs: RefCell<Vec<Vec<u8>>>,
}

impl BufPool {
    /// A relay buffer (empty, capacity [`RELAY_BUF`]).
    pub fn take(&self) -> Vec<u8> {
        self.bufs
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(RELAY_BUF))
    }

    /// Returns a relay buffer for reuse.
    pub fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() >= RELAY_BUF {
            buf.clear();
            let mut bufs = self.bufs.borrow_mut();
            if bufs.len() < MAX_POOLED_BUFS {
                bufs.push(buf);
            }
        }
    }
}
