//! S3 requests over ocirelay's own upstream client (SKELETON: the API the
//! shared tier is written against; bodies are filled in by the client's
//! own commit).

use std::io;
use std::path::Path;
use std::time::Duration;

use crate::config::s3::S3Config;
use crate::upstream::{Conn, ResponseHead, TrustKey, Upstreams};

/// A failed request to the store.
#[derive(Debug)]
pub enum S3Error {
    /// The store could not be reached, or did not answer within the
    /// configured `timeout`.
    Unreachable { op: &'static str, why: String },
    /// The store answered with an error status (S3's `<Code>` if it sent
    /// one).
    Status {
        op: &'static str,
        status: u16,
        code: String,
    },
    /// The answer made no sense (bad XML, a missing header, a short body).
    BadAnswer { op: &'static str, why: String },
    /// A local file to upload could not be read.
    Local(io::Error),
}

impl std::fmt::Display for S3Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            S3Error::Unreachable { op, why } => write!(f, "{op}: unreachable ({why})"),
            S3Error::Status { op, status, code } => write!(f, "{op}: answered {status} {code}"),
            S3Error::BadAnswer { op, why } => write!(f, "{op}: bad answer ({why})"),
            S3Error::Local(e) => write!(f, "local file: {e}"),
        }
    }
}

/// What a HEAD (or a small GET) tells of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub len: u64,
    /// `Last-Modified`, as Unix seconds.
    pub modified_unix: Option<u64>,
}

/// How a conditional PUT went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Created,
    /// `If-None-Match: *` and the key existed (412).
    Exists,
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The key without the configured prefix.
    pub key: String,
    pub size: u64,
    pub modified_unix: u64,
}

/// One page of a listing; `next`: the continuation token.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub objects: Vec<Listed>,
    pub next: Option<String>,
}

/// The store's client: the bucket, the credentials, the trust its endpoint
/// is verified with. Cheap to share; holds no connections (those are the
/// worker's `Upstreams`).
pub struct S3Client {
    _cfg: S3Config,
}

#[allow(clippy::unused_async)]
impl S3Client {
    pub fn new(cfg: &S3Config) -> S3Client {
        S3Client { _cfg: cfg.clone() }
    }

    /// The trust the endpoint is verified with (its `ca_file`, else the
    /// web roots); `server` registers it with each worker's `Upstreams`.
    pub fn trust(&self) -> TrustKey {
        unimplemented!()
    }

    /// HEAD of `key` (relative to the prefix): `None` if absent (404).
    pub async fn head(&self, _up: &Upstreams, _key: &str) -> Result<Option<ObjectInfo>, S3Error> {
        unimplemented!()
    }

    /// GET of `key`, whole or `range` = (offset, length): the connection
    /// with the response head read (status 200 or 206, `framing` a
    /// length), the body still on it, for the caller to stream and then
    /// release; `None` if absent.
    pub async fn get(
        &self,
        _up: &Upstreams,
        _key: &str,
        _range: Option<(u64, u64)>,
    ) -> Result<Option<(Conn, ResponseHead)>, S3Error> {
        unimplemented!()
    }

    /// A small object read whole (at most `max` bytes, else `BadAnswer`).
    pub async fn get_small(
        &self,
        _up: &Upstreams,
        _key: &str,
        _max: usize,
    ) -> Result<Option<(Vec<u8>, ObjectInfo)>, S3Error> {
        unimplemented!()
    }

    /// PUT of a small body; with `if_none_match`, only if the key is absent
    /// (`Written::Exists` when the store answers 412).
    pub async fn put_small(
        &self,
        _up: &Upstreams,
        _key: &str,
        _body: &[u8],
        _if_none_match: bool,
    ) -> Result<Written, S3Error> {
        unimplemented!()
    }

    /// Uploads the local file at `path` (`len` bytes) to `key`, streamed
    /// from the file: one PUT up to `part_size`, else a multipart upload
    /// (aborted on failure, so that no partial object is ever visible).
    pub async fn put_file(
        &self,
        _up: &Upstreams,
        _key: &str,
        _path: &Path,
        _len: u64,
    ) -> Result<(), S3Error> {
        unimplemented!()
    }

    /// DELETE of `key` (absent is fine).
    pub async fn delete(&self, _up: &Upstreams, _key: &str) -> Result<(), S3Error> {
        unimplemented!()
    }

    /// One page (up to 1,000 keys) of ListObjectsV2 under `prefix`
    /// (relative to the configured prefix).
    pub async fn list(
        &self,
        _up: &Upstreams,
        _prefix: &str,
        _continuation: Option<&str>,
    ) -> Result<ListPage, S3Error> {
        unimplemented!()
    }

    /// A presigned GET URL of `key`, valid for `ttl`.
    pub fn presign_get(&self, _key: &str, _ttl: Duration) -> String {
        unimplemented!()
    }
}
