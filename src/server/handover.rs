//! The listener handover: a new ocirelay process takes the listening
//! sockets of the one running, so that an upgrade loses no connection.
//!
//! Why not only `SO_REUSEPORT`: each listening socket has its own accept
//! queue, and when the old process closes its sockets (its drain), the
//! connections the kernel had already queued on them, and the handshakes
//! under way to them, are reset. Measured with the upgrade test's load (two
//! processes of two workers on one port, 2000 requests on new connections,
//! the old one drained mid-way): without the handover a few of them fail
//! with "connection reset" in most runs. With it, the old process's sockets
//! are the new process's too: closing the old copies closes nothing, and
//! whatever was queued is accepted by the new process.
//!
//! Every process with a `handover_socket` listens there (a Unix socket,
//! owner only, and only a peer of the same user id is answered). A
//! starting process connects first: if an ocirelay answers, it receives
//! that process's listening sockets (`SCM_RIGHTS`) and accepts on them
//! beside the old process; the old one stops listening for successors
//! (the newest process owns the handover socket) and the new one binds it.
//! The old process keeps serving until it is told to drain (SIGTERM).
//!
//! The exchange: the successor sends `listeners\n`; the keeper answers
//! with messages of one byte each, `+` carrying up to
//! `sys::MAX_FDS_PER_MESSAGE` descriptors, then `.` once it has stopped
//! listening.

use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::lock;
use crate::config::HandoverSocket;
use crate::ops::log::Level;
use crate::sys;

const REQUEST: &[u8] = b"listeners\n";
const MORE: u8 = b'+';
const END: u8 = b'.';
/// How long either side waits for the other before giving up: a peer that
/// hangs must not hold a start-up (or the keeper) for long.
const PEER_WAIT: Duration = Duration::from_secs(5);

/// Serves this process's listening sockets to a successor, from a thread of
/// its own (blocking I/O, never on a worker).
pub struct Keeper {
    state: Arc<KeeperState>,
}

struct KeeperState {
    /// Copies of every listening socket (`None` once handed over or
    /// closed). Copies, because the workers close theirs when they drain.
    sockets: Mutex<Option<Vec<OwnedFd>>>,
    /// A second handle of the control socket: `close` wakes the thread's
    /// `accept` through it, and both handles go for the socket (and an
    /// abstract name) to be released.
    listener: Mutex<Option<UnixListener>>,
}

impl Keeper {
    /// Stops serving successors and lets go of the copies (a drain: the
    /// sockets must close with the workers' copies unless a successor
    /// holds them).
    pub fn close(&self) {
        lock(&self.state.sockets).take();
        // Wakes the thread blocked in accept (EINVAL): it then drops its
        // handle, and a successor can bind an abstract name.
        let listener = lock(&self.state.listener).take();
        if let Some(l) = listener {
            let _ = socket2::SockRef::from(&l).shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Listens on `at` and hands `sockets` (copies of every listening socket)
/// to the first successor that asks.
pub fn keep(at: &HandoverSocket, sockets: Vec<OwnedFd>) -> io::Result<Keeper> {
    let listener = bind(at)?;
    let state = Arc::new(KeeperState {
        sockets: Mutex::new(Some(sockets)),
        listener: Mutex::new(Some(listener.try_clone()?)),
    });
    let shared = state.clone();
    let at = at.clone();
    std::thread::Builder::new()
        .name("ocirelay-handover".into())
        .spawn(move || serve(&at, listener, &shared))?;
    Ok(Keeper { state })
}

fn serve(at: &HandoverSocket, listener: UnixListener, state: &KeeperState) {
    loop {
        let conn = match listener.accept() {
            Ok((c, _)) => c,
            // Closed by `Keeper::close` (or broken): nothing more to serve.
            Err(_) => return,
        };
        match answer(&conn, state) {
            Ok(Some(n)) => {
                // The newest process owns the handover socket: let go of it
                // before saying we are done, so that the successor can bind.
                drop(listener);
                drop(lock(&state.listener).take());
                let _ = sys::send_fds(conn.as_raw_fd(), END, &[]);
                crate::event!(
                    Level::Info,
                    None,
                    "handover: {n} listening sockets handed to a new process on {at}; drain this one (SIGTERM) when it is ready"
                );
                return;
            }
            Ok(None) => {}
            Err(e) => crate::event!(Level::Warn, None, "handover on {at}: {e}"),
        }
    }
}

/// Answers one connection: `Some(n)` when `n` sockets went to a successor.
fn answer(conn: &UnixStream, state: &KeeperState) -> io::Result<Option<usize>> {
    greet(conn)?;
    let mut request = [0u8; REQUEST.len()];
    (&*conn).read_exact(&mut request)?;
    if request != REQUEST {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a handover request",
        ));
    }
    let Some(sockets) = lock(&state.sockets).take() else {
        // Closed meanwhile (draining): nothing to hand over.
        sys::send_fds(conn.as_raw_fd(), END, &[])?;
        return Ok(None);
    };
    let raw: Vec<_> = sockets.iter().map(|s| s.as_raw_fd()).collect();
    for batch in raw.chunks(sys::MAX_FDS_PER_MESSAGE) {
        sys::send_fds(conn.as_raw_fd(), MORE, batch)?;
    }
    // The successor holds its own references now.
    Ok(Some(sockets.len()))
}

/// Asks the process listening on `at` for its listening sockets: none when
/// no process listens there (the first start, or after a crash).
pub fn take_over(at: &HandoverSocket) -> io::Result<Vec<TcpListener>> {
    let conn = match connect(at) {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(Vec::new())
        }
        Err(e) => return Err(e),
    };
    greet(&conn)?;
    (&conn).write_all(REQUEST)?;
    let mut sockets = Vec::new();
    loop {
        match sys::recv_fds(conn.as_raw_fd())? {
            Some((MORE, fds)) => sockets.extend(fds.into_iter().map(TcpListener::from)),
            Some((END, _)) => return Ok(sockets),
            Some(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "unexpected handover message",
                ))
            }
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the running process hung up during the handover",
                ))
            }
        }
    }
}

/// Checks that the process at the other end of `conn` runs as this
/// process's user (the listening sockets are worth as much as the ports),
/// and bounds how long either side waits for the other.
fn greet(conn: &UnixStream) -> io::Result<()> {
    let peer = sys::peer_uid(conn.as_raw_fd())?;
    if peer != sys::own_uid() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("the other process runs as user id {peer}, not as this one's user"),
        ));
    }
    conn.set_read_timeout(Some(PEER_WAIT))?;
    conn.set_write_timeout(Some(PEER_WAIT))
}

/// Binds the control socket, owner-only. A file left by a process that is
/// gone (or handed over) is replaced.
fn bind(at: &HandoverSocket) -> io::Result<UnixListener> {
    match at {
        HandoverSocket::Path(p) => {
            match std::fs::remove_file(p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let l = UnixListener::bind(p)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))?;
            Ok(l)
        }
        HandoverSocket::Abstract(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            UnixListener::bind_addr(&addr)
        }
    }
}

fn connect(at: &HandoverSocket) -> io::Result<UnixStream> {
    match at {
        HandoverSocket::Path(p) => UnixStream::connect(p),
        HandoverSocket::Abstract(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            UnixStream::connect_addr(&addr)
        }
    }
}
