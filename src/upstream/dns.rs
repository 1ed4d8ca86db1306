//! Name resolution off the runtime thread, with a per-worker cache.
//!
//! `getaddrinfo` blocks, so it runs on monoio's blocking pool; the answer is
//! cached for a minute so that the data path does not pay for it again.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

const TTL: Duration = Duration::from_secs(60);
const MAX_ENTRIES: usize = 1024;

/// Resolved addresses and when they were resolved, by (host, port).
type Cache = HashMap<(String, u16), (Vec<SocketAddr>, Instant)>;

#[derive(Default)]
pub struct Resolver {
    cache: RefCell<Cache>,
}

impl Resolver {
    pub async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let key = (host.to_string(), port);
        if let Some((addrs, at)) = self.cache.borrow().get(&key) {
            if at.elapsed() < TTL {
                return Ok(addrs.clone());
            }
        }
        let name = key.clone();
        let addrs =
            monoio::spawn_blocking(move || name.to_socket_addrs().map(|a| a.collect::<Vec<_>>()))
                .await
                .map_err(|_| io::Error::other("resolver thread failed"))??;
        if addrs.is_empty() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no addresses"));
        }
        let mut cache = self.cache.borrow_mut();
        if cache.len() >= MAX_ENTRIES {
            cache.retain(|_, (_, at)| at.elapsed() < TTL);
            if cache.len() >= MAX_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(key, (addrs.clone(), Instant::now()));
        Ok(addrs)
    }
}
