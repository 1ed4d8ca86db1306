//! Opening a new upstream connection: resolve, TCP connect (each address in
//! turn), TLS handshake, all within the connect timeout.

use std::time::Duration;

use monoio::net::TcpStream;
use rustls::pki_types::ServerName;

use super::io::UpstreamIo;
use super::pool::{Conn, PoolKey, Upstreams};
use crate::error::UpstreamError;
use crate::tls::stream as tls_stream;
use crate::wire::url::Scheme;

impl Upstreams {
    /// Connects to `key.origin`, verifying TLS with `key.trust`.
    pub(crate) async fn connect(&self, key: &PoolKey) -> Result<Conn, UpstreamError> {
        let limit = self.timeouts.connect;
        match monoio::time::timeout(limit, self.connect_inner(key)).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout {
                host: key.origin.host.clone(),
                phase: "connect",
            }),
        }
    }

    async fn connect_inner(&self, key: &PoolKey) -> Result<Conn, UpstreamError> {
        let host = &key.origin.host;
        let addrs = self
            .resolver
            .resolve(host, key.origin.port)
            .await
            .map_err(|source| UpstreamError::Resolve {
                host: host.clone(),
                source,
            })?;
        let mut last_err = None;
        let mut tcp = None;
        // Split the budget so one black-holed address does not eat it all.
        let per_addr = self.timeouts.connect / addrs.len().clamp(1, 4) as u32;
        for addr in &addrs {
            match monoio::time::timeout(
                per_addr.max(Duration::from_millis(500)),
                TcpStream::connect_addr(*addr),
            )
            .await
            {
                Ok(Ok(s)) => {
                    tcp = Some(s);
                    break;
                }
                Ok(Err(e)) => last_err = Some(e),
                Err(_) => {
                    last_err = Some(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connect timed out",
                    ))
                }
            }
        }
        let tcp = tcp.ok_or_else(|| UpstreamError::Connect {
            host: host.clone(),
            source: last_err.unwrap_or_else(|| std::io::Error::other("no address")),
        })?;
        let _ = tcp.set_nodelay(true);
        let io = match key.origin.scheme {
            Scheme::Http => UpstreamIo::Plain(tcp),
            Scheme::Https => {
                let name = ServerName::try_from(host.clone()).map_err(|e| UpstreamError::Tls {
                    host: host.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
                })?;
                let config = match self.trust(key.trust) {
                    Some(t) => t.config.clone(),
                    None => {
                        return Err(UpstreamError::Tls {
                            host: host.clone(),
                            source: std::io::Error::other("no TLS config for this trust key"),
                        })
                    }
                };
                let tls = tls_stream::connect(config, name, tcp)
                    .await
                    .map_err(|source| UpstreamError::Tls {
                        host: host.clone(),
                        source,
                    })?;
                UpstreamIo::Tls(Box::new(tls))
            }
        };
        Ok(Conn::new(io, key.clone(), self.timeouts.upstream_read))
    }
}
