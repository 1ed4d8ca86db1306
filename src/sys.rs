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
