//! S3 requests over ocirelay's own upstream client: the worker's pools,
//! io_uring, TLS by ocirelay's stack. `rusty-s3` (sans-IO) signs; this file
//! sends, reads and judges the answers.
//!
//! Every request is a presigned URL (SigV4 in the query string) with the
//! payload left unsigned (`UNSIGNED-PAYLOAD`), not a signed body or
//! streaming chunk signatures: the content is content addressed and every
//! byte read back is digest-checked before it is served, so a payload
//! signature would guard nothing the digest does not; chunk signatures
//! cost a SHA-256 and an HMAC per chunk on the worker, and self-hosted
//! stores implement them unevenly. The TLS of an https endpoint guards
//! the bytes in flight as it does for any registry.

use std::fmt;
use std::io;
use std::path::Path;
use std::time::Duration;

use rusty_s3::actions::{
    AbortMultipartUpload, CompleteMultipartUpload, CompleteMultipartUploadResponse,
    CreateMultipartUpload, ListObjectsV2, UploadPart,
};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use crate::config::s3::S3Config;
use crate::event;
use crate::ops::log::Level;
use crate::upstream::{
    Conn, Exchange, RespFraming, ResponseHead, SendFileError, TrustKey, Upstreams,
};
use crate::wire::http::ChunkedDecoder;
use crate::wire::method::Method;
use crate::wire::url::Url;

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

/// Names the operation and what went wrong; never a URL (a presigned one
/// carries a signature) nor a credential.
impl fmt::Display for S3Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            S3Error::Unreachable { op, why } => write!(f, "s3 {op}: store unreachable: {why}"),
            S3Error::Status { op, status, code } if code.is_empty() => {
                write!(f, "s3 {op}: status {status}")
            }
            S3Error::Status { op, status, code } => write!(f, "s3 {op}: status {status} ({code})"),
            S3Error::BadAnswer { op, why } => write!(f, "s3 {op}: bad answer: {why}"),
            S3Error::Local(e) => write!(f, "s3 upload: local file: {e}"),
        }
    }
}

impl std::error::Error for S3Error {}

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

/// How long the URL of one request stays valid. It is sent at once; the
/// store checks the expiry when the request arrives (a long part upload
/// that started in time finishes), so a few minutes cover clock skew.
const SIGNED_FOR: Duration = Duration::from_secs(300);

/// An error answer's body read for its `<Code>`: S3's are a few hundred
/// bytes; a larger one is not read (its connection is dropped).
const MAX_ERROR_BODY: usize = 8 * 1024;

/// The answers of CreateMultipartUpload and CompleteMultipartUpload.
const MAX_XML_ANSWER: usize = 64 * 1024;

/// A ListObjectsV2 page: 1,000 keys of a few hundred bytes each.
const MAX_LIST_ANSWER: usize = 4 << 20;

/// Keys of one ListObjectsV2 page (S3's own maximum).
const LIST_PAGE: usize = 1000;

/// The store's client: the bucket, the credentials, the trust its endpoint
/// is verified with. Cheap to share; holds no connections (those are the
/// worker's `Upstreams`).
pub struct S3Client {
    cfg: S3Config,
    bucket: Bucket,
    credentials: Credentials,
    trust: TrustKey,
}

impl S3Client {
    pub fn new(cfg: &S3Config) -> S3Client {
        let style = if cfg.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let endpoint = cfg.endpoint.to_string();
        let bucket = |style| {
            Bucket::new(
                endpoint.parse().expect("a checked endpoint is a URL"),
                style,
                cfg.bucket.clone(),
                cfg.region.clone(),
            )
        };
        // The config checked the endpoint and the bucket's name; what is
        // left is virtual-host style on an IP address (no sub-domain to
        // put the bucket in): path style is then the only way.
        let bucket = bucket(style).unwrap_or_else(|e| {
            event!(
                Level::Warn,
                None,
                "cache.s3: {e} for virtual-host style on {endpoint}; using path style"
            );
            bucket(UrlStyle::Path).expect("path style fits any checked endpoint")
        });
        let c = &cfg.credentials;
        let credentials = match &c.session_token {
            Some(t) => Credentials::new_with_token(
                c.access_key_id.clone(),
                c.secret_access_key.clone(),
                t.clone(),
            ),
            None => Credentials::new(c.access_key_id.clone(), c.secret_access_key.clone()),
        };
        S3Client {
            cfg: cfg.clone(),
            bucket,
            credentials,
            trust: trust_of(cfg),
        }
    }

    /// The trust the endpoint is verified with (its `ca_file`, else the
    /// web roots); `server` registers it with each worker's `Upstreams`.
    pub fn trust(&self) -> TrustKey {
        self.trust
    }

    /// The full key of `rel` (the configured prefix added).
    pub fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.cfg.prefix)
    }

    /// HEAD of `key` (relative to the prefix): `None` if absent (404).
    pub async fn head(&self, up: &Upstreams, key: &str) -> Result<Option<ObjectInfo>, S3Error> {
        const OP: &str = "head";
        self.bounded(OP, async {
            let key = self.key(key);
            let url = self.url(OP, &self.bucket.head_object(Some(&self.credentials), &key))?;
            let (mut conn, head) = self.send(up, OP, Method::Head, &url, &[], None).await?;
            match head.status {
                200 => {
                    let info = object_info(OP, &conn, &head)?;
                    conn.consume(head.head_len);
                    up.release(conn);
                    Ok(Some(info))
                }
                404 => {
                    conn.consume(head.head_len);
                    up.release(conn);
                    Ok(None)
                }
                _ => Err(self.failed(up, OP, conn, head).await),
            }
        })
        .await
    }

    /// GET of `key`, whole or `range` = (offset, length): the connection
    /// with the response head read (status 200 or 206, `framing` a
    /// length), the body still on it, for the caller to stream and then
    /// release; `None` if absent. The head is not consumed yet (as
    /// [`Upstreams::send`] leaves it): the caller reads its headers, then
    /// consumes `head_len` bytes.
    pub async fn get(
        &self,
        up: &Upstreams,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Option<(Conn, ResponseHead)>, S3Error> {
        const OP: &str = "get";
        self.bounded(OP, async {
            let key = self.key(key);
            let url = self.url(OP, &self.bucket.get_object(Some(&self.credentials), &key))?;
            let range_value = range.map(|(off, len)| {
                format!("bytes={off}-{}", off + len.saturating_sub(1)).into_bytes()
            });
            let headers: Vec<(&str, &[u8])> = range_value
                .as_deref()
                .map(|v| ("Range", v))
                .into_iter()
                .collect();
            let (conn, head) = self.send(up, OP, Method::Get, &url, &headers, None).await?;
            let expected = if range.is_some() { 206 } else { 200 };
            match (head.status, head.framing) {
                (s, RespFraming::Length(_)) if s == expected => Ok(Some((conn, head))),
                (s, framing) if s == expected => Err(S3Error::BadAnswer {
                    op: OP,
                    why: format!("a body framed as {framing:?}, not by Content-Length"),
                }),
                (404, _) => {
                    self.discard(up, conn, head).await;
                    Ok(None)
                }
                (200 | 206, _) => Err(S3Error::BadAnswer {
                    op: OP,
                    why: format!("status {} to a request for {expected}", head.status),
                }),
                _ => Err(self.failed(up, OP, conn, head).await),
            }
        })
        .await
    }

    /// A small object read whole (at most `max` bytes, else `BadAnswer`).
    pub async fn get_small(
        &self,
        up: &Upstreams,
        key: &str,
        max: usize,
    ) -> Result<Option<(Vec<u8>, ObjectInfo)>, S3Error> {
        const OP: &str = "get";
        self.bounded(OP, async {
            let key = self.key(key);
            let url = self.url(OP, &self.bucket.get_object(Some(&self.credentials), &key))?;
            let (mut conn, head) = self.send(up, OP, Method::Get, &url, &[], None).await?;
            match head.status {
                200 => {
                    let mut info = object_info(OP, &conn, &head)?;
                    conn.consume(head.head_len);
                    let body = read_body(&mut conn, head.framing, max)
                        .await
                        .map_err(|why| S3Error::BadAnswer { op: OP, why })?;
                    info.len = body.len() as u64;
                    if head.keep_alive {
                        up.release(conn);
                    }
                    Ok(Some((body, info)))
                }
                404 => {
                    self.discard(up, conn, head).await;
                    Ok(None)
                }
                _ => Err(self.failed(up, OP, conn, head).await),
            }
        })
        .await
    }

    /// PUT of a small body; with `if_none_match`, only if the key is absent
    /// (`Written::Exists` when the store answers 412).
    pub async fn put_small(
        &self,
        up: &Upstreams,
        key: &str,
        body: &[u8],
        if_none_match: bool,
    ) -> Result<Written, S3Error> {
        const OP: &str = "put";
        self.bounded(OP, async {
            let key = self.key(key);
            let url = self.url(OP, &self.bucket.put_object(Some(&self.credentials), &key))?;
            let headers: &[(&str, &[u8])] = if if_none_match {
                &[("If-None-Match", b"*")]
            } else {
                &[]
            };
            let (conn, head) = self
                .send(up, OP, Method::Put, &url, headers, Some(body))
                .await?;
            match head.status {
                200 => {
                    self.discard(up, conn, head).await;
                    Ok(Written::Created)
                }
                412 if if_none_match => {
                    self.discard(up, conn, head).await;
                    Ok(Written::Exists)
                }
                _ => Err(self.failed(up, OP, conn, head).await),
            }
        })
        .await
    }

    /// Uploads the local file at `path` (`len` bytes) to `key`, streamed
    /// from the file: one PUT up to `part_size`, else a multipart upload
    /// (aborted on failure, so that no partial object is ever visible).
    pub async fn put_file(
        &self,
        up: &Upstreams,
        key: &str,
        path: &Path,
        len: u64,
    ) -> Result<(), S3Error> {
        let key = self.key(key);
        let file = monoio::fs::File::open(path).await.map_err(S3Error::Local)?;
        if len <= self.cfg.part_size {
            let url = self.url(
                "put",
                &self.bucket.put_object(Some(&self.credentials), &key),
            )?;
            return self
                .put_part(up, "put", &url, &file, 0, len)
                .await
                .map(drop);
        }
        let upload_id = self.create_multipart(up, &key).await?;
        match self.upload_parts(up, &key, &upload_id, &file, len).await {
            Ok(()) => Ok(()),
            Err(e) => {
                // Parts of an upload never completed are invisible, but
                // the store keeps (and bills) them until it is aborted.
                if let Err(abort) = self.abort_multipart(up, &key, &upload_id).await {
                    event!(
                        Level::Warn,
                        None,
                        "cache.s3: {abort} (after {e}); the store's lifecycle rules remove the parts"
                    );
                }
                Err(e)
            }
        }
    }

    /// DELETE of `key` (absent is fine).
    pub async fn delete(&self, up: &Upstreams, key: &str) -> Result<(), S3Error> {
        const OP: &str = "delete";
        self.bounded(OP, async {
            let key = self.key(key);
            let url = self.url(
                OP,
                &self.bucket.delete_object(Some(&self.credentials), &key),
            )?;
            self.send_delete(up, OP, &url).await
        })
        .await
    }

    /// One page (up to 1,000 keys) of ListObjectsV2 under `prefix`
    /// (relative to the configured prefix).
    pub async fn list(
        &self,
        up: &Upstreams,
        prefix: &str,
        continuation: Option<&str>,
    ) -> Result<ListPage, S3Error> {
        self.list_page(up, prefix, continuation, LIST_PAGE).await
    }

    /// [`S3Client::list`] with pages of at most `max_keys` keys.
    pub async fn list_page(
        &self,
        up: &Upstreams,
        prefix: &str,
        continuation: Option<&str>,
        max_keys: usize,
    ) -> Result<ListPage, S3Error> {
        const OP: &str = "list";
        self.bounded(OP, async {
            let full = self.key(prefix);
            let mut action = ListObjectsV2::new(&self.bucket, Some(&self.credentials));
            action.with_prefix(full.as_str());
            action.with_max_keys(max_keys);
            if let Some(token) = continuation {
                action.with_continuation_token(token);
            }
            let url = self.url(OP, &action)?;
            let body = self
                .exchange_text(up, OP, Method::Get, &url, None, MAX_LIST_ANSWER)
                .await?;
            let parsed = ListObjectsV2::parse_response(&body).map_err(|e| S3Error::BadAnswer {
                op: OP,
                why: format!("listing XML: {e}"),
            })?;
            let mut objects = Vec::with_capacity(parsed.contents.len());
            for c in parsed.contents {
                let Some(key) = c.key.strip_prefix(&self.cfg.prefix) else {
                    return Err(S3Error::BadAnswer {
                        op: OP,
                        why: "a key outside the prefix asked for".into(),
                    });
                };
                objects.push(Listed {
                    key: key.to_string(),
                    size: c.size.unwrap_or(0),
                    modified_unix: c
                        .last_modified
                        .as_deref()
                        .and_then(rfc3339_unix)
                        .unwrap_or(0),
                });
            }
            Ok(ListPage {
                objects,
                next: parsed.next_continuation_token,
            })
        })
        .await
    }

    /// A presigned GET URL of `key`, valid for `ttl`.
    pub fn presign_get(&self, key: &str, ttl: Duration) -> String {
        let key = self.key(key);
        self.bucket
            .get_object(Some(&self.credentials), &key)
            .sign(ttl)
            .to_string()
    }
}

// ---- multipart ----

impl S3Client {
    /// CreateMultipartUpload: the upload's id.
    async fn create_multipart(&self, up: &Upstreams, key: &str) -> Result<String, S3Error> {
        const OP: &str = "create multipart upload";
        self.bounded(OP, async {
            let action = CreateMultipartUpload::new(&self.bucket, Some(&self.credentials), key);
            let url = self.url(OP, &action)?;
            let body = self
                .exchange_text(up, OP, Method::Post, &url, Some(b""), MAX_XML_ANSWER)
                .await?;
            let parsed =
                CreateMultipartUpload::parse_response(&body).map_err(|e| S3Error::BadAnswer {
                    op: OP,
                    why: format!("XML: {e}"),
                })?;
            Ok(parsed.upload_id().to_string())
        })
        .await
    }

    /// UploadPart for each `part_size` slice of the file, in order, then
    /// CompleteMultipartUpload.
    async fn upload_parts(
        &self,
        up: &Upstreams,
        key: &str,
        upload_id: &str,
        file: &monoio::fs::File,
        len: u64,
    ) -> Result<(), S3Error> {
        const OP: &str = "upload part";
        let part_size = self.cfg.part_size;
        let mut etags = Vec::with_capacity(len.div_ceil(part_size) as usize);
        let mut offset = 0;
        while offset < len {
            let number = u16::try_from(etags.len() + 1).map_err(|_| S3Error::BadAnswer {
                op: OP,
                why: "more than 65,535 parts: raise part_size".into(),
            })?;
            let size = part_size.min(len - offset);
            let action = UploadPart::new(
                &self.bucket,
                Some(&self.credentials),
                key,
                number,
                upload_id,
            );
            let url = self.url(OP, &action)?;
            let etag = self.put_part(up, OP, &url, file, offset, size).await?;
            etags.push(etag);
            offset += size;
        }
        self.complete_multipart(up, key, upload_id, &etags).await
    }

    /// One PUT whose body is the file's bytes `offset..offset + len`,
    /// bounded by progress (no progress for `timeout` fails it); the
    /// object's (or part's) `ETag`.
    async fn put_part(
        &self,
        up: &Upstreams,
        op: &'static str,
        url: &Url,
        file: &monoio::fs::File,
        offset: u64,
        len: u64,
    ) -> Result<String, S3Error> {
        let ex = Exchange {
            method: Method::Put,
            url,
            trust: self.trust,
            headers: &[],
            body: None,
            read_timeout: Some(self.cfg.timeout),
        };
        let (mut conn, head) = up
            .send_file(&ex, file, offset, len, self.cfg.timeout)
            .await
            .map_err(|e| match e {
                SendFileError::File(e) => S3Error::Local(e),
                SendFileError::Upstream(e) => S3Error::Unreachable {
                    op,
                    why: e.to_string(),
                },
            })?;
        if head.status != 200 {
            return Err(self.failed(up, op, conn, head).await);
        }
        let etag = head
            .header(&conn, "etag")
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .ok_or_else(|| S3Error::BadAnswer {
                op,
                why: "no ETag".into(),
            })?;
        conn.consume(head.head_len);
        // The rest of the answer (usually empty) is read within the
        // timeout, as any small body.
        let drained = monoio::time::timeout(
            self.cfg.timeout,
            conn.drain(head.framing, MAX_ERROR_BODY as u64),
        )
        .await;
        if matches!(drained, Ok(true)) && head.keep_alive {
            up.release(conn);
        }
        Ok(etag)
    }

    /// CompleteMultipartUpload. S3 may answer 200 and still fail (an
    /// `<Error>` body, sent late to keep the connection alive while it
    /// assembles the parts): only a `CompleteMultipartUploadResult` is
    /// success.
    async fn complete_multipart(
        &self,
        up: &Upstreams,
        key: &str,
        upload_id: &str,
        etags: &[String],
    ) -> Result<(), S3Error> {
        const OP: &str = "complete multipart upload";
        self.bounded(OP, async {
            let action = CompleteMultipartUpload::new(
                &self.bucket,
                Some(&self.credentials),
                key,
                upload_id,
                etags.iter().map(String::as_str),
            );
            let url = self.url(OP, &action)?;
            let xml = action.body();
            let body = self
                .exchange_text(
                    up,
                    OP,
                    Method::Post,
                    &url,
                    Some(xml.as_bytes()),
                    MAX_XML_ANSWER,
                )
                .await?;
            completed(&body)
        })
        .await
    }

    /// AbortMultipartUpload: the parts are dropped.
    async fn abort_multipart(
        &self,
        up: &Upstreams,
        key: &str,
        upload_id: &str,
    ) -> Result<(), S3Error> {
        const OP: &str = "abort multipart upload";
        self.bounded(OP, async {
            let action =
                AbortMultipartUpload::new(&self.bucket, Some(&self.credentials), key, upload_id);
            let url = self.url(OP, &action)?;
            self.send_delete(up, OP, &url).await
        })
        .await
    }
}

// ---- one request ----

impl S3Client {
    /// `fut` within the configured timeout.
    async fn bounded<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = Result<T, S3Error>>,
    ) -> Result<T, S3Error> {
        match monoio::time::timeout(self.cfg.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(S3Error::Unreachable {
                op,
                why: format!("no answer within {:?}", self.cfg.timeout),
            }),
        }
    }

    /// The presigned URL of `action`, in the upstream client's terms.
    fn url<'a>(&self, op: &'static str, action: &impl S3Action<'a>) -> Result<Url, S3Error> {
        Url::parse(action.sign(SIGNED_FOR).as_str()).map_err(|e| S3Error::BadAnswer {
            op,
            why: format!("the signed URL does not parse: {e}"),
        })
    }

    /// Sends one request with a small body; the head read, not consumed.
    async fn send(
        &self,
        up: &Upstreams,
        op: &'static str,
        method: Method,
        url: &Url,
        headers: &[(&str, &[u8])],
        body: Option<&[u8]>,
    ) -> Result<(Conn, ResponseHead), S3Error> {
        let ex = Exchange {
            method,
            url,
            trust: self.trust,
            headers,
            body,
            read_timeout: Some(self.cfg.timeout),
        };
        up.send(&ex).await.map_err(|e| S3Error::Unreachable {
            op,
            why: e.to_string(),
        })
    }

    /// A DELETE (of an object, of a multipart upload): gone or absent is
    /// fine.
    async fn send_delete(
        &self,
        up: &Upstreams,
        op: &'static str,
        url: &Url,
    ) -> Result<(), S3Error> {
        let (conn, head) = self.send(up, op, Method::Delete, url, &[], None).await?;
        match head.status {
            200 | 204 | 404 => {
                self.discard(up, conn, head).await;
                Ok(())
            }
            _ => Err(self.failed(up, op, conn, head).await),
        }
    }

    /// A request whose 200 answer is a small text body (XML), read whole.
    async fn exchange_text(
        &self,
        up: &Upstreams,
        op: &'static str,
        method: Method,
        url: &Url,
        body: Option<&[u8]>,
        max: usize,
    ) -> Result<String, S3Error> {
        let (mut conn, head) = self.send(up, op, method, url, &[], body).await?;
        if head.status != 200 {
            return Err(self.failed(up, op, conn, head).await);
        }
        conn.consume(head.head_len);
        let bytes = read_body(&mut conn, head.framing, max)
            .await
            .map_err(|why| S3Error::BadAnswer { op, why })?;
        if head.keep_alive {
            up.release(conn);
        }
        String::from_utf8(bytes).map_err(|_| S3Error::BadAnswer {
            op,
            why: "the answer is not UTF-8".into(),
        })
    }

    /// Reads and drops a small answer body, pooling the connection when it
    /// ended cleanly.
    async fn discard(&self, up: &Upstreams, mut conn: Conn, head: ResponseHead) {
        conn.consume(head.head_len);
        if conn.drain(head.framing, MAX_ERROR_BODY as u64).await && head.keep_alive {
            up.release(conn);
        }
    }

    /// The error of a non-success answer: its status and S3's `<Code>`
    /// from the body (read only if small).
    async fn failed(
        &self,
        up: &Upstreams,
        op: &'static str,
        mut conn: Conn,
        head: ResponseHead,
    ) -> S3Error {
        conn.consume(head.head_len);
        let code = match read_body(&mut conn, head.framing, MAX_ERROR_BODY).await {
            Ok(body) => {
                if head.keep_alive {
                    up.release(conn);
                }
                error_code(&body).unwrap_or_default()
            }
            Err(_) => String::new(),
        };
        S3Error::Status {
            op,
            status: head.status,
            code,
        }
    }
}

/// The trust of the endpoint: its `ca_file`'s roots on top of the web
/// roots (the same key `server` computes for the same file). A file that
/// no longer reads leaves the web roots only: stricter, never looser.
fn trust_of(cfg: &S3Config) -> TrustKey {
    let roots = match &cfg.ca_file {
        None => Vec::new(),
        Some(path) => crate::tls::load_certs(path).unwrap_or_else(|e| {
            event!(Level::Warn, None, "cache.s3 ca_file: {e}");
            Vec::new()
        }),
    };
    TrustKey::of(&roots)
}

/// Length and `Last-Modified` of a 200 answer.
fn object_info(op: &'static str, conn: &Conn, head: &ResponseHead) -> Result<ObjectInfo, S3Error> {
    let len = head
        .header(conn, "content-length")
        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok())
        .ok_or_else(|| S3Error::BadAnswer {
            op,
            why: "no Content-Length".into(),
        })?;
    let modified_unix = head
        .header(conn, "last-modified")
        .and_then(|v| http_date_unix(std::str::from_utf8(v).ok()?));
    Ok(ObjectInfo { len, modified_unix })
}

/// Reads a whole response body (the head consumed) of at most `max` bytes.
async fn read_body(conn: &mut Conn, framing: RespFraming, max: usize) -> Result<Vec<u8>, String> {
    let too_large = || format!("an answer larger than {max} bytes");
    let mut out = Vec::new();
    match framing {
        RespFraming::None => {}
        RespFraming::Length(n) => {
            if n > max as u64 {
                return Err(too_large());
            }
            out.reserve(n as usize);
            while (out.len() as u64) < n {
                if conn.buffered().is_empty() {
                    fill(conn).await?;
                }
                let take = conn.buffered().len().min(n as usize - out.len());
                out.extend_from_slice(&conn.buffered()[..take]);
                conn.consume(take);
            }
        }
        RespFraming::Chunked => {
            let mut dec = ChunkedDecoder::new();
            loop {
                let used = dec
                    .feed(conn.buffered(), |d| out.extend_from_slice(d))
                    .map_err(|_| "bad chunked framing".to_string())?;
                conn.consume(used);
                if out.len() > max {
                    return Err(too_large());
                }
                if dec.is_done() {
                    break;
                }
                fill(conn).await?;
            }
        }
        RespFraming::Close => loop {
            let take = conn.buffered().len();
            out.extend_from_slice(conn.buffered());
            conn.consume(take);
            if out.len() > max {
                return Err(too_large());
            }
            match conn.fill().await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(format!("reading the answer: {e}")),
            }
        },
    }
    Ok(out)
}

/// More bytes of a body that is not complete yet.
async fn fill(conn: &mut Conn) -> Result<(), String> {
    match conn.fill().await {
        Ok(0) => Err("the answer ended early".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("reading the answer: {e}")),
    }
}

/// The outcome of a CompleteMultipartUpload answered 200: only a
/// `CompleteMultipartUploadResult` is success; an `<Error>` is the store's
/// failure (its `<Code>`), anything else a bad answer.
fn completed(body: &str) -> Result<(), S3Error> {
    const OP: &str = "complete multipart upload";
    match CompleteMultipartUploadResponse::parse(body) {
        Ok(_) => Ok(()),
        Err(e) => match error_code(body.as_bytes()) {
            Some(code) => Err(S3Error::Status {
                op: OP,
                status: 200,
                code,
            }),
            None => Err(S3Error::BadAnswer {
                op: OP,
                why: format!("XML: {e}"),
            }),
        },
    }
}

/// S3's `<Code>` of an `<Error>` body.
fn error_code(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let (_, rest) = text.split_once("<Error>")?;
    let (_, rest) = rest.split_once("<Code>")?;
    let (code, _) = rest.split_once("</Code>")?;
    Some(code.trim().to_string())
}

/// `Last-Modified` (an HTTP date, RFC 9110 5.6.7) as Unix seconds.
fn http_date_unix(v: &str) -> Option<u64> {
    let ts = jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(v.trim())
        .ok()?;
    u64::try_from(ts.as_second()).ok()
}

/// A listing's `LastModified` (RFC 3339) as Unix seconds.
fn rfc3339_unix(v: &str) -> Option<u64> {
    let ts: jiff::Timestamp = v.trim().parse().ok()?;
    u64::try_from(ts.as_second()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::s3::S3Credentials;

    fn config(endpoint: &str, path_style: bool, token: Option<&str>) -> S3Config {
        S3Config {
            endpoint: Url::parse(endpoint).unwrap(),
            bucket: "mirror".into(),
            region: "eu-west-1".into(),
            path_style,
            prefix: "ocirelay/".into(),
            credentials: S3Credentials {
                access_key_id: "AKID".into(),
                secret_access_key: "SECRETKEY".into(),
                session_token: token.map(str::to_string),
            },
            ca_file: None,
            redirect: false,
            redirect_ttl: Duration::from_secs(300),
            part_size: 5 << 20,
            timeout: Duration::from_secs(5),
            lease_wait: Duration::from_secs(5),
            conditional_writes: None,
            max_size: None,
        }
    }

    #[test]
    fn path_style_puts_the_bucket_in_the_path_and_virtual_host_in_the_host() {
        let path = S3Client::new(&config("http://127.0.0.1:8333", true, None));
        let u =
            Url::parse(&path.presign_get("blobs/sha256/ab/abc", Duration::from_secs(60))).unwrap();
        assert_eq!(u.origin.to_string(), "http://127.0.0.1:8333");
        assert!(
            u.path_and_query
                .starts_with("/mirror/ocirelay/blobs/sha256/ab/abc?"),
            "{}",
            u.path_and_query
        );

        let vhost = S3Client::new(&config("https://s3.eu-west-1.amazonaws.com", false, None));
        let u = Url::parse(&vhost.presign_get("tags/x", Duration::from_secs(60))).unwrap();
        assert_eq!(u.origin.host, "mirror.s3.eu-west-1.amazonaws.com");
        assert!(
            u.path_and_query.starts_with("/ocirelay/tags/x?"),
            "{}",
            u.path_and_query
        );
        for q in [
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "X-Amz-Expires=60",
            "X-Amz-Signature=",
            "AKID%2F",
        ] {
            assert!(u.path_and_query.contains(q), "{q} in {}", u.path_and_query);
        }
        assert!(!u.path_and_query.contains("SECRETKEY"));
    }

    #[test]
    fn a_session_token_rides_in_the_query() {
        let c = S3Client::new(&config("https://s3.example", true, Some("TOKEN1")));
        let u = c.presign_get("k", Duration::from_secs(60));
        assert!(u.contains("X-Amz-Security-Token=TOKEN1"), "{u}");
        let c = S3Client::new(&config("https://s3.example", true, None));
        assert!(!c
            .presign_get("k", Duration::from_secs(60))
            .contains("Security-Token"));
    }

    #[test]
    fn virtual_host_style_on_an_ip_endpoint_falls_back_to_the_path() {
        let c = S3Client::new(&config("http://127.0.0.1:8333", false, None));
        let u = Url::parse(&c.presign_get("k", Duration::from_secs(60))).unwrap();
        assert_eq!(u.origin.host, "127.0.0.1");
        assert!(u.path_and_query.starts_with("/mirror/ocirelay/k?"));
    }

    #[test]
    fn error_codes_and_dates_are_read() {
        let body = b"<?xml version=\"1.0\"?>\n<Error><Code>SignatureDoesNotMatch</Code><Message>x</Message></Error>";
        assert_eq!(error_code(body).as_deref(), Some("SignatureDoesNotMatch"));
        assert_eq!(error_code(b"<CompleteMultipartUploadResult/>"), None);
        assert_eq!(
            http_date_unix("Sun, 06 Dec 2026 13:57:52 GMT"),
            Some(1_796_565_472)
        );
        assert_eq!(
            rfc3339_unix("2026-12-06T13:57:52.000Z"),
            Some(1_796_565_472)
        );
        assert_eq!(http_date_unix("yesterday"), None);
    }

    #[test]
    fn a_complete_answered_200_with_an_error_body_is_a_failure() {
        let ok = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CompleteMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Location>http://x/b/k</Location><Bucket>b</Bucket><Key>k</Key><ETag>\"abc-3\"</ETag></CompleteMultipartUploadResult>";
        assert!(completed(ok).is_ok());
        let late_error = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\n<Error><Code>InternalError</Code><Message>We encountered an internal error.</Message></Error>";
        match completed(late_error) {
            Err(S3Error::Status {
                status: 200, code, ..
            }) => assert_eq!(code, "InternalError"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            completed("<html>proxy error</html>"),
            Err(S3Error::BadAnswer { .. })
        ));
    }

    #[test]
    fn errors_name_the_operation_and_no_secret() {
        let e = S3Error::Status {
            op: "put",
            status: 403,
            code: "SignatureDoesNotMatch".into(),
        };
        assert_eq!(e.to_string(), "s3 put: status 403 (SignatureDoesNotMatch)");
        let e = S3Error::Unreachable {
            op: "get",
            why: "127.0.0.1: connect failed".into(),
        };
        assert_eq!(
            e.to_string(),
            "s3 get: store unreachable: 127.0.0.1: connect failed"
        );
    }
}
