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

/// Whether every page of `fd`'s bytes `offset..offset + len` is in the page
/// cache now, so that sending them waits for no disk read. `cachestat(2)`
/// (Linux 6.5+) counts them in one call; on older kernels the range is
/// mapped for `mincore(2)`. False when it cannot tell.
pub fn resident(fd: std::os::fd::RawFd, offset: u64, len: u64) -> bool {
    if len == 0 {
        return true;
    }
    let page = page_size() as u64;
    let first = offset / page;
    let pages = (offset + len).div_ceil(page) - first;
    match cachestat_pages(fd, first * page, pages * page) {
        Some(cached) => cached >= pages,
        None => mincore_resident(fd, first * page, (pages * page) as usize),
    }
}

/// Pages of `fd` cached in `off..off + len` (page aligned), or `None` when
/// the kernel has no `cachestat`.
fn cachestat_pages(fd: std::os::fd::RawFd, off: u64, len: u64) -> Option<u64> {
    // The kernel's `struct cachestat_range` and `struct cachestat`
    // (include/uapi/linux/mman.h); the libc crate does not have them for
    // every target yet.
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    /// The same number on every architecture (the generic syscall table).
    const SYS_CACHESTAT: libc::c_long = 451;
    let range = Range { off, len };
    let mut stat = Stat::default();
    // SAFETY: both pointers are to live, correctly laid out structs the
    // kernel reads (range) or fills (stat); no other memory is touched.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            fd,
            &range as *const Range,
            &mut stat as *mut Stat,
            0u32,
        )
    };
    (r == 0).then_some(stat.nr_cache)
}

/// `mincore(2)` over a temporary read-only mapping of `off..off + len`
/// (page aligned).
fn mincore_resident(fd: std::os::fd::RawFd, off: u64, len: usize) -> bool {
    const MAX_PAGES: usize = 1024;
    let pages = len.div_ceil(page_size());
    let Ok(offset) = libc::off_t::try_from(off) else {
        return false;
    };
    if pages > MAX_PAGES {
        return false;
    }
    // SAFETY: a fresh read-only mapping chosen by the kernel, never read
    // through; unmapped below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            offset,
        )
    };
    if ptr == libc::MAP_FAILED {
        return false;
    }
    let mut vec = [0u8; MAX_PAGES];
    // SAFETY: the mapping just made, `len` bytes; `vec` has room for every
    // page of it.
    let r = unsafe { libc::mincore(ptr, len, vec.as_mut_ptr().cast()) };
    // SAFETY: the mapping made above, unmapped once.
    unsafe { libc::munmap(ptr, len) };
    r == 0 && vec[..pages].iter().all(|v| v & 1 == 1)
}

/// One `sendfile(2)` of up to `count` bytes of `file` from `*offset` to the
/// socket `sock`, without blocking: the socket is made non-blocking for the
/// call only (monoio's io_uring operations on it expect a blocking socket,
/// and none is in flight while a response is being written). Advances
/// `*offset`; `WouldBlock` when the socket's buffer is full.
pub fn sendfile_nonblocking(
    sock: std::os::fd::RawFd,
    file: std::os::fd::RawFd,
    offset: &mut u64,
    count: usize,
) -> std::io::Result<usize> {
    // SAFETY: fcntl on a descriptor the caller owns; only its status flags.
    let flags = unsafe { libc::fcntl(sock, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(sock, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut off = libc::off_t::try_from(*offset).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    // SAFETY: `off` is a live off_t the kernel advances; both descriptors
    // belong to the caller.
    let r = unsafe { libc::sendfile(sock, file, &mut off, count) };
    let result = match r {
        n if n >= 0 => {
            *offset = off as u64;
            Ok(n as usize)
        }
        _ => Err(std::io::Error::last_os_error()),
    };
    // SAFETY: restores the flags read above.
    unsafe { libc::fcntl(sock, libc::F_SETFL, flags) };
    result
}

fn page_size() -> usize {
    // SAFETY: no arguments; sysconf only reads.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).unwrap_or(4096).max(1)
}
