//! The CDN host (like production.cloudflare.docker.com): serves blob bytes (and, with manifest
//! redirects, manifests) for signed, unexpired `verify=` or CloudFront-style URLs only, with
//! ranges; in k8s mode also the anonymous `/regional/<region>/v2/...` registries. Refuses any
//! `Authorization` like R2 does.

use crate::http::{Body, Request, Response};
use crate::registry::{self, cdn_data_path};
use crate::signing::UrlError;
use crate::state::Shared;
use crate::time::unix_now;
use std::sync::Arc;

fn text(status: u16, content_type: &'static str, body: &str) -> Response {
    Response::new(status)
        .header("Content-Type", content_type)
        .body(Body::Bytes(body.as_bytes().to_vec()))
}

fn s3_error(status: u16, code: &str, message: &str) -> Response {
    text(
        status,
        "application/xml",
        &format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
        ),
    )
}

/// A parsed `Range` header against a body of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
enum Range {
    /// No usable range: serve everything.
    Full,
    /// Inclusive byte range.
    Part(usize, usize),
    /// 416.
    Unsatisfiable,
}

fn parse_range(header: Option<&str>, len: usize) -> Range {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Range::Full;
    };
    if spec.contains(',') {
        return Range::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Range::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // Suffix: the last `b` bytes.
        return match b.parse::<usize>() {
            Ok(n) if n > 0 && len > 0 => Range::Part(len.saturating_sub(n), len - 1),
            Ok(_) => Range::Unsatisfiable,
            Err(_) => Range::Full,
        };
    }
    let Ok(start) = a.parse::<usize>() else {
        return Range::Full;
    };
    let end = if b.is_empty() {
        usize::MAX
    } else {
        match b.parse::<usize>() {
            Ok(e) if e >= start => e,
            _ => return Range::Full,
        }
    };
    if start >= len {
        return Range::Unsatisfiable;
    }
    Range::Part(start, end.min(len - 1))
}

/// A 200/206/416 response for `data`, honouring `Range` (used by the CDN and by the
/// registry when it serves blobs itself).
pub(crate) fn blob_response(req: &Request, data: Arc<[u8]>) -> Response {
    let len = data.len();
    let mut resp = match parse_range(req.header("range"), len) {
        Range::Full => Response::new(200).body(Body::Blob {
            data,
            start: 0,
            end: len,
        }),
        Range::Part(a, b) => Response::new(206)
            .header("Content-Range", format!("bytes {a}-{b}/{len}"))
            .body(Body::Blob {
                data,
                start: a,
                end: b + 1,
            }),
        Range::Unsatisfiable => {
            return Response::new(416)
                .header("Content-Range", format!("bytes */{len}"))
                .header("Content-Type", "application/xml")
                .body(Body::Bytes(
                    b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InvalidRange</Code><Message>The requested range is not satisfiable</Message></Error>".to_vec(),
                ))
        }
    };
    resp.cuttable = true;
    resp.header("Content-Type", "application/octet-stream")
        .header("Accept-Ranges", "bytes")
}

/// Whether `path` is one of the signed-object paths ([`signed_object`]).
pub(crate) fn is_signed_path(path: &str) -> bool {
    path.starts_with("/registry-v2/")
        || path.starts_with("/hop/")
        || path.starts_with("/manifests/")
}

fn no_such_key() -> Response {
    s3_error(404, "NoSuchKey", "The specified key does not exist.")
}

/// Handles one request to the CDN host.
pub(crate) fn handle(sh: &Shared, req: &Request) -> Response {
    if req.header("authorization").is_some() {
        return s3_error(
            400,
            "InvalidArgument",
            "Authorization header is not supported: Missing x-amz-content-sha256",
        );
    }
    if let Some(rest) = req.path().strip_prefix("/regional/") {
        // k8s mode: `/regional/<region>/v2/...`, an anonymous read-only registry.
        let (region, tail) = rest.split_once('/').unwrap_or((rest, ""));
        let v2 = &req.path()["/regional/".len() + region.len()..];
        if !sh.knobs.is_region(region) || !(tail == "v2" || tail.starts_with("v2/")) {
            return no_such_key();
        }
        let prefix = &req.path()[..req.path().len() - v2.len()];
        return registry::handle_regional(sh, req, prefix, v2);
    }
    signed_object(sh, req)
}

/// Serves a signed object: blob data `/registry-v2/.../data`, a manifest `/manifests/sha256/<hex>`,
/// or a `/hop/<n>/...` relative redirect to one. Signatures may be Docker Hub's `verify=` or
/// CloudFront's `Expires=&Signature=&Key-Pair-Id=`. Used by the CDN host and, for relative
/// blob redirects, by the registry host.
pub(crate) fn signed_object(sh: &Shared, req: &Request) -> Response {
    if req.method != "GET" && !req.is_head() {
        return s3_error(
            405,
            "MethodNotAllowed",
            "The specified method is not allowed",
        );
    }
    let path = req.path();
    let (hops, data_path) = match path.strip_prefix("/hop/") {
        Some(rest) => match rest.split_once('/') {
            Some((n, tail)) => match n.parse::<u32>() {
                Ok(n) => (n, format!("/{tail}")),
                Err(_) => return no_such_key(),
            },
            None => return no_such_key(),
        },
        None => (0, path.to_string()),
    };
    let params = req.query_params();
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let now = unix_now();
    let checked = if param("Signature").is_some() || param("Key-Pair-Id").is_some() {
        sh.signer.verify_cloudfront(
            &data_path,
            param("Expires"),
            param("Signature"),
            param("Key-Pair-Id"),
            now,
        )
    } else {
        sh.signer.verify_url(&data_path, param("verify"), now)
    };
    match checked {
        Ok(()) => {}
        Err(UrlError::Expired) => return s3_error(403, "AccessDenied", "Request has expired"),
        Err(_) => return s3_error(403, "AccessDenied", "Access Denied"),
    }
    if hops > 0 {
        // A relative (absolute-path) Location, query untouched.
        let next = if hops > 1 {
            format!("/hop/{}{data_path}?{}", hops - 1, req.query())
        } else {
            format!("{data_path}?{}", req.query())
        };
        return text(
            302,
            "text/html; charset=utf-8",
            "<a href=\"next\">Found</a>.\n",
        )
        .header("Location", next);
    }
    if let Some(hex) = data_path.strip_prefix("/manifests/sha256/") {
        let digest = format!("sha256:{hex}");
        let found = crate::content::is_sha256_digest(&digest)
            .then(|| sh.content.manifest(&digest))
            .flatten();
        return match found {
            Some(m) => registry::manifest_response(sh, req, &digest, m)
                .header("Cache-Control", "public, max-age=14400")
                .header("Server", "cloudflare"),
            None => no_such_key(),
        };
    }
    let digest = data_path
        .strip_prefix("/registry-v2/docker/registry/v2/blobs/sha256/")
        .and_then(|rest| rest.strip_suffix("/data"))
        .and_then(|rest| rest.split_once('/'))
        .map(|(_, hex)| format!("sha256:{hex}"));
    let blob = digest
        .filter(|d| crate::content::is_sha256_digest(d) && cdn_data_path(d) == data_path)
        .and_then(|d| sh.content.blob(&d).map(|b| (d, b)));
    let Some((digest, data)) = blob else {
        return no_such_key();
    };
    let hex = &digest[7..];
    blob_response(req, data)
        .header("ETag", format!("\"{}\"", &hex[..32]))
        .header("Cache-Control", "public, max-age=14400")
        .header("Server", "cloudflare")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), Range::Full);
        assert_eq!(parse_range(Some("bytes=2-"), 10), Range::Part(2, 9));
        assert_eq!(parse_range(Some("bytes=2-4"), 10), Range::Part(2, 4));
        assert_eq!(parse_range(Some("bytes=2-40"), 10), Range::Part(2, 9));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Range::Part(7, 9));
        assert_eq!(parse_range(Some("bytes=-30"), 10), Range::Part(0, 9));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Range::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=4-2"), 10), Range::Full);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Range::Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), Range::Full);
    }
}
