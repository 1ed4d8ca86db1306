//! The protocol's vocabulary, sans-IO: names (`RepoName`, `Tag`, `Digest`,
//! `Reference`), URLs, base64, `WWW-Authenticate` challenges and token
//! scopes, the OCI error body, the request method, HTTP/1.1 heads, framing
//! and the chunked coding, the PROXY protocol header, and client addresses
//! (trusted ranges, `X-Forwarded-For`). Nothing here does I/O or imports
//! from the rest of the crate, so it can become a crate of its own by
//! moving this folder.

pub mod addr;
pub mod base64;
pub mod challenge;
pub mod digest;
pub mod http;
pub mod method;
pub mod names;
pub mod oci;
pub mod proxy_protocol;
pub mod url;
