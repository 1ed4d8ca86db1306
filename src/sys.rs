//! The few raw system calls and buffer views ocirelay needs beyond monoio
//! and std: the only `unsafe` outside the TLS record layer's buffer handling.

use monoio::buf::IoBuf;

/// Writes all of `bytes` to stderr with plain `write(2)` calls: no lock
/// (std's stderr takes one) and no buffering. Gives up, dropping the rest,
/// when stderr is gone: logging never blocks serving.
pub fn write_stderr(bytes: &[u8]) {
    let mut rest = bytes;
    while !rest.is_empty() {
        // SAFETY: writes `rest.len()` initialised bytes from a live slice to
        // fd 2; no memory is handed to the kernel beyond this call.
        let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
        if n <= 0 {
            break;
        }
        rest = &rest[n as usize..];
    }
}

/// Makes the next close of `fd` a reset (SO_LINGER with a zero timeout).
pub fn reset_on_close(fd: std::os::fd::RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `fd` is the client socket, still open and owned by the
    // connection being ended; setsockopt only reads `linger`.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// The initialised bytes of an I/O buffer, at most `max` of them.
pub fn io_buf_bytes<T: IoBuf>(buf: &T, max: usize) -> &[u8] {
    // SAFETY: `read_ptr` is valid for `bytes_init` bytes (IoBuf contract),
    // and the slice borrows `buf`, so the memory outlives it.
    unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init().min(max)) }
}

/// Lets mimalloc free this thread's empty pages and purge what has been free
/// longer than its purge delay (see `worker::trim_memory`).
pub fn trim_thread_heap() {
    // SAFETY: no arguments to uphold; safe to call from any thread.
    unsafe { libmimalloc_sys::mi_collect(false) };
}

/// Sets a file's modification time to now (a cache hit refreshing its
/// object's recency; at most once an hour per object, see `cache::evict`).
pub fn touch(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let mut c = path.as_os_str().as_bytes().to_vec();
    c.push(0);
    let now = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
    ];
    // SAFETY: `c` is a NUL-terminated path that lives across the call; `now`
    // is an array of two timespecs, as utimensat reads.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr().cast(), now.as_ptr(), 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Reads from `fd` at `offset` into the parts `parts` of `buf`, in order,
/// only what the page cache holds (`preadv2` with `RWF_NOWAIT`: it never
/// waits for the disk, so it may run on a worker). Returns the bytes read:
/// fewer than asked (or 0) when the rest is not cached or the file ends;
/// the caller reads that through io_uring.
pub fn read_cached(
    fd: std::os::fd::RawFd,
    buf: &mut [u8],
    parts: &[std::ops::Range<usize>],
    offset: u64,
) -> std::io::Result<usize> {
    const MAX_PARTS: usize = 64;
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX_PARTS];
    let n = parts.len().min(MAX_PARTS);
    let base = buf.as_mut_ptr();
    for (v, p) in iov.iter_mut().zip(&parts[..n]) {
        assert!(
            p.start <= p.end && p.end <= buf.len(),
            "part outside the buffer"
        );
        // SAFETY: `p` lies within `buf` (checked above); the parts are
        // disjoint ranges of one exclusively borrowed buffer.
        v.iov_base = unsafe { base.add(p.start) }.cast();
        v.iov_len = p.len();
    }
    let Ok(offset) = libc::off_t::try_from(offset) else {
        return Ok(0);
    };
    // SAFETY: every iovec points into `buf`, which outlives the call.
    let r = unsafe { libc::preadv2(fd, iov.as_ptr(), n as libc::c_int, offset, libc::RWF_NOWAIT) };
    if r >= 0 {
        return Ok(r as usize);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        // Not cached, or a kernel or file system without RWF_NOWAIT.
        Some(libc::EAGAIN | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) => Ok(0),
        _ => Err(e),
    }
}

/// A read-only shared mapping of part of a file: a stored cache object
/// (immutable once renamed into place) sent to a plain-HTTP client straight
/// from the page cache, with no copy into a buffer of ours.
pub struct Mapped {
    ptr: *mut u8,
    len: usize,
    /// File offset of `ptr` (page aligned).
    base: u64,
}

impl Mapped {
    /// Maps `offset..offset + len` of `fd` (rounded out to whole pages).
    pub fn map(fd: std::os::fd::RawFd, offset: u64, len: usize) -> std::io::Result<Mapped> {
        let page = page_size() as u64;
        let base = offset - offset % page;
        let span = (offset - base) as usize + len;
        if len == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
        }
        let off = libc::off_t::try_from(base).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        // SAFETY: a fresh read-only mapping chosen by the kernel; nothing
        // else is touched. It is unmapped in `drop`.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                span,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                off,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapped {
            ptr: ptr.cast(),
            len: span,
            base,
        })
    }

    /// Whether every page holding file bytes `range` is in the page cache
    /// now (`mincore`): sending them then waits for no disk read.
    pub fn resident(&self, range: std::ops::Range<u64>) -> bool {
        let page = page_size();
        let Some(start) = range.start.checked_sub(self.base) else {
            return false;
        };
        let (start, end) = (start as usize, (range.end - self.base) as usize);
        if end > self.len || start >= end {
            return false;
        }
        let first = start / page * page;
        let pages = (end - first).div_ceil(page);
        let mut vec = [0u8; 512];
        if pages > vec.len() {
            return false;
        }
        // SAFETY: `first..first + pages * page` lies within the mapping
        // (page-rounded, as mincore takes it); `vec` has `pages` entries.
        let r = unsafe {
            libc::mincore(
                self.ptr.add(first).cast(),
                end - first,
                vec.as_mut_ptr().cast(),
            )
        };
        r == 0 && vec[..pages].iter().all(|v| v & 1 == 1)
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once; no part of it
        // is borrowed past its owner (`MappedPart` holds an `Rc`).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// File bytes `range` of a mapping, as a buffer io_uring can send from; it
/// keeps the mapping alive until the send has completed, even if the
/// request is dropped first.
pub struct MappedPart {
    map: std::rc::Rc<Mapped>,
    range: std::ops::Range<u64>,
}

impl MappedPart {
    pub fn new(map: std::rc::Rc<Mapped>, range: std::ops::Range<u64>) -> MappedPart {
        assert!(
            range.start >= map.base
                && range.start <= range.end
                && range.end - map.base <= map.len as u64,
            "part outside its mapping"
        );
        MappedPart { map, range }
    }
}

// SAFETY: `read_ptr` points at `bytes_init` mapped, readable bytes (checked
// in `MappedPart::new`), valid as long as the part (which owns an `Rc` of
// the mapping) lives; the bytes are never written through it.
unsafe impl IoBuf for MappedPart {
    fn read_ptr(&self) -> *const u8 {
        // SAFETY: within the mapping (see `MappedPart::new`).
        unsafe {
            self.map
                .ptr
                .add((self.range.start - self.map.base) as usize)
        }
    }

    fn bytes_init(&self) -> usize {
        (self.range.end - self.range.start) as usize
    }
}

fn page_size() -> usize {
    // SAFETY: no arguments; sysconf only reads.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).unwrap_or(4096).max(1)
}
