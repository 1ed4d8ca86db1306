//! Listeners and connections: one accept thread per host, one thread per connection,
//! keep-alive, TLS or plain, and the `down` / shutdown controls.

use crate::http::{write_response, Body, Reader, Response, Written};
use crate::state::Shared;
use crate::time::{http_date, unix_now};
use crate::{cdn, registry, token, Host, LogEntry};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// A server-side connection, plain or TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => &s.sock,
        }
    }

    /// Ends the connection politely (TLS close_notify, then FIN).
    fn close(mut self) {
        if let Conn::Tls(s) = &mut self {
            s.conn.send_close_notify();
            let _ = s.flush();
        }
        let _ = self.tcp().shutdown(Shutdown::Both);
    }
}

#[derive(Default)]
struct CtlState {
    want_down: bool,
    listening: bool,
}

/// What the host's threads share with its controller.
#[derive(Default)]
struct Control {
    state: Mutex<CtlState>,
    cv: Condvar,
    conns: Mutex<HashMap<u64, TcpStream>>,
    active: AtomicUsize,
}

impl Control {
    fn state(&self) -> std::sync::MutexGuard<'_, CtlState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn close_conns(&self) {
        for s in self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn set_listening(&self, on: bool) {
        self.state().listening = on;
        self.cv.notify_all();
    }
}

/// One host: its address, accept thread and live connections.
pub(crate) struct HostServer {
    pub addr: SocketAddr,
    ctl: Arc<Control>,
    thread: Option<JoinHandle<()>>,
}

impl HostServer {
    pub fn start(host: Host, listener: TcpListener, shared: Arc<Shared>) -> io::Result<HostServer> {
        let addr = listener.local_addr()?;
        let ctl = Arc::new(Control::default());
        ctl.state().listening = true;
        let c = ctl.clone();
        let thread = thread::Builder::new()
            .name(format!("hubdouble-{}-accept", host.label()))
            .spawn(move || accept_loop(host, addr, listener, c, shared))?;
        Ok(HostServer {
            addr,
            ctl,
            thread: Some(thread),
        })
    }

    fn wake(&self) {
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }

    /// Closes (down) or reopens (up) the listener and waits until that happened.
    pub fn set_down(&self, down: bool) -> io::Result<()> {
        self.ctl.state().want_down = down;
        self.ctl.cv.notify_all();
        if down {
            self.wake();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut st = self.ctl.state();
        while st.listening == down {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "listener {} did not go {}",
                        self.addr,
                        if down { "down" } else { "up" }
                    ),
                ));
            }
            st = self
                .ctl
                .cv
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }

    /// Whether the listener is closed on purpose.
    pub fn is_down(&self) -> bool {
        self.ctl.state().want_down
    }

    /// Live connections.
    pub fn active(&self) -> usize {
        self.ctl.active.load(Ordering::SeqCst)
    }

    /// Call after setting `shared.shutdown`: unblocks the accept thread.
    pub fn begin_shutdown(&self) {
        self.ctl.cv.notify_all();
        self.wake();
    }

    /// Joins the accept thread, closes connections, waits for them until `deadline`.
    pub fn finish_shutdown(&mut self, deadline: Instant) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.ctl.close_conns();
        while self.ctl.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(2));
        }
    }
}

fn accept_loop(
    host: Host,
    addr: SocketAddr,
    listener: TcpListener,
    ctl: Arc<Control>,
    shared: Arc<Shared>,
) {
    let mut listener = Some(listener);
    loop {
        if shared.shutdown.load(Ordering::SeqCst) {
            break;
        }
        if ctl.state().want_down {
            if listener.take().is_some() {
                ctl.close_conns();
                ctl.set_listening(false);
            }
            let mut st = ctl.state();
            while st.want_down && !shared.shutdown.load(Ordering::SeqCst) {
                st = ctl
                    .cv
                    .wait_timeout(st, Duration::from_millis(100))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            continue;
        }
        let Some(l) = &listener else {
            // Coming back up on the same address (std sets SO_REUSEADDR).
            for _ in 0..500 {
                match TcpListener::bind(addr) {
                    Ok(l) => {
                        listener = Some(l);
                        break;
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
            if listener.is_some() {
                ctl.set_listening(true);
            } else {
                eprintln!("hubdouble: could not rebind {addr}");
                ctl.state().want_down = true;
            }
            continue;
        };
        match l.accept() {
            Ok((stream, peer)) => {
                if shared.shutdown.load(Ordering::SeqCst) || ctl.state().want_down {
                    continue;
                }
                spawn_conn(host, stream, peer, &ctl, &shared);
            }
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
    drop(listener);
    ctl.set_listening(false);
}

/// Unregisters a connection when its thread ends, however it ends.
struct ConnGuard {
    id: u64,
    ctl: Arc<Control>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.ctl
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        self.ctl.active.fetch_sub(1, Ordering::SeqCst);
    }
}

fn spawn_conn(
    host: Host,
    stream: TcpStream,
    peer: SocketAddr,
    ctl: &Arc<Control>,
    shared: &Arc<Shared>,
) {
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(shared.idle_timeout));
    let _ = stream.set_write_timeout(Some(shared.idle_timeout));
    if let Ok(clone) = stream.try_clone() {
        ctl.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, clone);
    }
    ctl.active.fetch_add(1, Ordering::SeqCst);
    let guard = ConnGuard {
        id,
        ctl: ctl.clone(),
    };
    let shared = shared.clone();
    let spawned = thread::Builder::new()
        .name(format!("hubdouble-{}-{id}", host.label()))
        .stack_size(256 * 1024)
        .spawn(move || {
            let _guard = guard;
            serve(host, id, stream, peer, &shared);
        });
    // On spawn failure the closure (and guard) is dropped, which unregisters the connection.
    drop(spawned);
}

fn serve(host: Host, id: u64, tcp: TcpStream, peer: SocketAddr, shared: &Shared) {
    let mut conn = match &shared.tls {
        Some(cfg) => match rustls::ServerConnection::new(cfg.clone()) {
            Ok(c) => Conn::Tls(Box::new(rustls::StreamOwned::new(c, tcp))),
            Err(_) => return,
        },
        None => Conn::Plain(tcp),
    };
    let mut reader = Reader::new();
    let mut head = Vec::with_capacity(1024);
    loop {
        let req = match reader.read_request(&mut conn, peer.ip()) {
            Ok(Some(r)) => r,
            Ok(None) => return conn.close(),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let mut resp = Response::new(400)
                    .header("Content-Type", "text/plain; charset=utf-8")
                    .body(crate::http::Body::Bytes(b"400 Bad Request".to_vec()));
                resp.close = true;
                let _ = write_response(&mut conn, &resp, &mut head, &http_date(unix_now()), None);
                return conn.close();
            }
            Err(_) => return,
        };
        shared.log.record(|seq| LogEntry {
            seq,
            host,
            conn: id,
            method: req.method.clone(),
            target: req.target.clone(),
            headers: req.headers.clone(),
            body: req.body.clone(),
        });
        while shared.knobs.stalled(host) {
            if shared.shutdown.load(Ordering::SeqCst) {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let mut resp = match shared.knobs.take_injected(host) {
            Some(status) => registry::injected(status),
            None => match host {
                Host::Registry => registry::handle(shared, &req),
                Host::Token => token::handle(shared, &req),
                Host::Cdn => cdn::handle(shared, &req),
            },
        };
        resp.head_only |= req.is_head();
        resp.close |= req.wants_close();
        if resp.cuttable && !resp.head_only && shared.knobs.take_corrupt() {
            if let Body::Blob { data, start, end } = &mut resp.body {
                if end > start {
                    let mut bad = data.to_vec();
                    bad[*end - 1] ^= 0xff;
                    *data = bad.into();
                }
            }
        }
        let cut = if resp.cuttable && !resp.head_only {
            shared.knobs.take_cut()
        } else {
            None
        };
        match write_response(&mut conn, &resp, &mut head, &http_date(unix_now()), cut) {
            Ok(Written::Done) if !resp.close => {}
            Ok(Written::Done) => return conn.close(),
            Ok(Written::Cut) | Err(_) => {
                let _ = conn.tcp().shutdown(Shutdown::Both);
                return;
            }
        }
    }
}
