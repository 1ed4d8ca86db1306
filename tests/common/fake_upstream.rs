//! A scriptable plain-HTTP upstream ([`FakeUpstream`]) on 127.0.0.1, for
//! what the Docker Hub double will not do: answer each request path with
//! fixed bytes (a body that does not match its digest, a malformed head, a
//! stall or a cut at a chosen byte), and the canned responses to script it.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::head_len;

/// What [`FakeUpstream`] does with a connection after a canned answer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Wait for the next request.
    KeepAlive,
    /// Close it (close-delimited bodies, cuts).
    Close,
    /// Keep it open and send nothing more (a stall mid-body).
    Hold,
    /// Send the first this many bytes, pause, then the rest (a head and
    /// its body in separate writes), then wait for the next request.
    SplitAt(usize),
    /// Reset it (RST, not FIN): an upstream that crashed or a middlebox
    /// that dropped the connection.
    Reset,
}

/// A canned answer of [`FakeUpstream`]: raw response bytes for a path.
#[derive(Clone)]
pub struct Canned {
    pub path: String,
    pub bytes: Vec<u8>,
    pub after: After,
}

/// A minimal plain-HTTP registry on 127.0.0.1 that answers each request path
/// with fixed bytes, e.g. a body that does not match the digest it is served
/// under (the double stores content by its real digest, so it cannot).
/// Unknown paths get a 404 `NAME_UNKNOWN`.
pub struct FakeUpstream {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Requests answered so far.
    pub requests: Arc<AtomicUsize>,
    /// Held connections the relay closed.
    pub released: Arc<AtomicUsize>,
}

impl FakeUpstream {
    pub fn start(routes: Vec<Canned>) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let released = Arc::new(AtomicUsize::new(0));
        let (st, rq, rl) = (stop.clone(), requests.clone(), released.clone());
        let routes = Arc::new(routes);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (routes, rq, rl) = (routes.clone(), rq.clone(), rl.clone());
                std::thread::spawn(move || FakeUpstream::serve(conn, &routes, &rq, &rl));
            }
        });
        FakeUpstream {
            addr,
            stop,
            requests,
            released,
        }
    }

    fn serve(
        mut conn: TcpStream,
        routes: &[Canned],
        requests: &AtomicUsize,
        released: &AtomicUsize,
    ) {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        let mut buf = Vec::new();
        let mut tmp = [0u8; 8192];
        loop {
            let end = loop {
                if let Some(i) = head_len(&buf) {
                    break i;
                }
                match conn.read(&mut tmp) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&tmp[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end);
            requests.fetch_add(1, Ordering::SeqCst);
            let mut parts = head.split_whitespace();
            let method = parts.next().unwrap_or("").to_string();
            let path = parts.next().unwrap_or("").to_string();
            let found = routes.iter().find(|r| r.path == path);
            let (bytes, after) = match found {
                Some(r) if method == "HEAD" => {
                    // Head only: everything up to the blank line.
                    let i = head_len(&r.bytes).unwrap();
                    (r.bytes[..i].to_vec(), r.after)
                }
                Some(r) => (r.bytes.clone(), r.after),
                None => (
                    b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 75\r\n\r\n{\"errors\":[{\"code\":\"NAME_UNKNOWN\",\"message\":\"unknown\",\"detail\":null}]}     "
                        .to_vec(),
                    After::KeepAlive,
                ),
            };
            let at = match after {
                After::SplitAt(at) => at.min(bytes.len()),
                _ => bytes.len(),
            };
            if conn.write_all(&bytes[..at]).is_err() {
                return;
            }
            if at < bytes.len() {
                std::thread::sleep(Duration::from_millis(100));
                if conn.write_all(&bytes[at..]).is_err() {
                    return;
                }
            }
            match after {
                After::KeepAlive | After::SplitAt(_) => {}
                After::Close => {
                    let _ = conn.shutdown(Shutdown::Both);
                    return;
                }
                After::Reset => {
                    // A zero linger time makes close send RST.
                    let _ = socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO));
                    return;
                }
                After::Hold => {
                    // Until the relay gives up on it (or 15 s).
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(15)));
                    match conn.read(&mut tmp) {
                        Ok(0) => {
                            released.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                            released.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => {}
                    }
                    return;
                }
            }
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// A 200 with `Content-Length`, `Content-Type` and `Docker-Content-Digest`.
pub fn length_response(content_type: &str, digest: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nDocker-Content-Digest: {digest}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// A 200 blob with `Docker-Content-Digest`, its body in chunks of `chunk`.
pub fn chunked_response(digest: &str, body: &[u8], chunk: usize) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nDocker-Content-Digest: {digest}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for piece in body.chunks(chunk) {
        r.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        r.extend_from_slice(piece);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"0\r\n\r\n");
    r
}

/// A 200 blob with `Docker-Content-Digest` whose body ends with the
/// connection (serve it with [`After::Close`]).
pub fn close_delimited_response(digest: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nDocker-Content-Digest: {digest}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}
