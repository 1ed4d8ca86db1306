//! The few raw system calls and buffer views ocirelay needs beyond monoio
//! and std: the only `unsafe` outside the TLS record layer's buffer handling.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

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

/// Whether the peer of the idle socket `fd` has sent anything, bytes or its
/// end (or reset it), without taking it: a non-blocking `MSG_PEEK` of one
/// byte. Nothing to read (`EAGAIN`) is the only "no".
pub fn peer_spoke(fd: std::os::fd::RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: `fd` is an open socket owned by the caller's connection; recv
    // writes at most one byte into `byte`, which lives across the call.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock
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

// ---- the lifecycle: signals and the listener handover ----

/// The signals ocirelay acts on (see `server::lifecycle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGHUP: reload the config.
    Hangup,
    /// SIGTERM: drain and exit.
    Terminate,
    /// SIGINT (Ctrl-C): as SIGTERM.
    Interrupt,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Hangup => "SIGHUP",
            Signal::Terminate => "SIGTERM",
            Signal::Interrupt => "SIGINT",
        }
    }

    pub fn number(self) -> i32 {
        match self {
            Signal::Hangup => libc::SIGHUP,
            Signal::Terminate => libc::SIGTERM,
            Signal::Interrupt => libc::SIGINT,
        }
    }
}

fn lifecycle_signals() -> libc::sigset_t {
    // SAFETY: `set` is initialised by sigemptyset before any other use, and
    // the signal numbers are valid.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

/// Blocks SIGHUP, SIGTERM and SIGINT in the calling thread and in every
/// thread it starts afterwards: they stay pending until [`wait_signal`]
/// takes them on the lifecycle thread, instead of interrupting a worker's
/// system call (or ending the process: SIGHUP's default action).
pub fn block_lifecycle_signals() -> std::io::Result<()> {
    let set = lifecycle_signals();
    // SAFETY: `set` is a valid signal set; the old mask is not asked for.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(r))
    }
}

/// Waits up to `limit` for one of the signals [`block_lifecycle_signals`]
/// blocked; `None` when none came.
pub fn wait_signal(limit: Duration) -> Option<Signal> {
    let set = lifecycle_signals();
    let ts = libc::timespec {
        tv_sec: limit.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: limit.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `set` and `ts` are valid for the call; no siginfo is asked for.
    let r = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    match r {
        libc::SIGHUP => Some(Signal::Hangup),
        libc::SIGTERM => Some(Signal::Terminate),
        libc::SIGINT => Some(Signal::Interrupt),
        _ => None, // EAGAIN (the time ran out) or EINTR
    }
}

/// Most descriptors one handover message carries (the kernel's limit per
/// message is 253).
pub const MAX_FDS_PER_MESSAGE: usize = 64;

/// Room for the control message of [`MAX_FDS_PER_MESSAGE`] descriptors.
const FDS_CMSG_SPACE: usize = 512;

/// Sends one byte, `tag`, with the descriptors `fds` (at most
/// [`MAX_FDS_PER_MESSAGE`]) over the connected Unix stream socket `sock`.
/// The receiver gets its own descriptors for the same open files.
pub fn send_fds(sock: RawFd, tag: u8, fds: &[RawFd]) -> std::io::Result<()> {
    assert!(fds.len() <= MAX_FDS_PER_MESSAGE, "too many descriptors");
    let mut data = [tag];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // u64 elements: the control buffer must be aligned for `cmsghdr`.
    let mut control = [0u64; FDS_CMSG_SPACE / 8];
    let fd_bytes = std::mem::size_of_val(fds) as libc::c_uint;
    // SAFETY: an all-zero msghdr is valid; every pointer set below points
    // at a live local for the duration of the call, and the control
    // message (written through CMSG_FIRSTHDR/CMSG_DATA of a buffer of
    // CMSG_SPACE(fd_bytes) <= FDS_CMSG_SPACE bytes) stays inside it.
    unsafe {
        let mut msg = std::mem::zeroed::<libc::msghdr>();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            let space = libc::CMSG_SPACE(fd_bytes) as usize;
            debug_assert!(space <= FDS_CMSG_SPACE);
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                fd_bytes as usize,
            );
        }
        loop {
            let n = libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL);
            if n == 1 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if n < 0 && e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(if n < 0 {
                e
            } else {
                std::io::ErrorKind::WriteZero.into()
            });
        }
    }
}

/// Receives one message sent by [`send_fds`]: its byte and the descriptors
/// that came with it (owned, close-on-exec). `None` at the end of the
/// stream.
pub fn recv_fds(sock: RawFd) -> std::io::Result<Option<(u8, Vec<OwnedFd>)>> {
    let mut data = [0u8];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = [0u64; FDS_CMSG_SPACE / 8];
    // SAFETY: as in `send_fds`: the msghdr points at live locals; the
    // control messages are walked with CMSG_FIRSTHDR/CMSG_NXTHDR within the
    // length the kernel reported, and each descriptor the kernel installed
    // is taken into an OwnedFd exactly once.
    unsafe {
        let mut msg = std::mem::zeroed::<libc::msghdr>();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = FDS_CMSG_SPACE as _;
        let n = loop {
            let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break n;
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut fds = Vec::new();
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let first = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(first.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "descriptors cut short (more than one message's worth)",
            ));
        }
        if n == 0 {
            return Ok(None);
        }
        Ok(Some((data[0], fds)))
    }
}

/// The user id of the process at the other end of the Unix socket `sock`
/// (as it was when it connected).
pub fn peer_uid(sock: RawFd) -> std::io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let r = unsafe {
        libc::getsockopt(
            sock,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r == 0 {
        Ok(cred.uid)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// This process's user id.
pub fn own_uid() -> u32 {
    // SAFETY: getuid has no arguments and cannot fail.
    unsafe { libc::getuid() }
}

/// The process's file descriptor limit (`RLIMIT_NOFILE`) before and after
/// [`raise_fd_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    pub before: u64,
    pub now: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit: the soft default
/// (1024 under systemd and most shells) is what `select(2)` once needed,
/// and a mirror holding keep-alive connections outgrows it.
pub fn raise_fd_limit() -> std::io::Result<FdLimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `lim`, which lives across the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads `raised`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim = raised;
    }
    Ok(FdLimit {
        before,
        now: lim.rlim_cur,
    })
}

/// The bytes of `sock`'s output the peer has acknowledged so far
/// (`tcpi_bytes_acked` of `TCP_INFO`, Linux 4.1+): how a stalled write
/// tells a client that reads slowly from one that reads nothing. None when
/// the kernel does not say (or `sock` is not TCP).
pub fn tcp_bytes_acked(sock: RawFd) -> Option<u64> {
    // `struct tcp_info` up to and including tcpi_bytes_acked: 8 bytes of
    // u8 fields, 24 u32s, then tcpi_pacing_rate, tcpi_max_pacing_rate and
    // tcpi_bytes_acked (u64 each).
    const BYTES_ACKED: usize = 8 + 24 * 4 + 2 * 8;
    let mut info = [0u64; (BYTES_ACKED + 8) / 8];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info` (an
    // aligned local array of that size) and stores how many in `len`.
    let r = unsafe {
        libc::getsockopt(
            sock,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (r == 0 && len as usize >= BYTES_ACKED + 8).then(|| info[BYTES_ACKED / 8])
}
