//! The OCI distribution spec's error answers (codes and the JSON body
//! `{"errors":[{"code":..,"message":..,"detail":null}]}`), the manifest
//! `Accept` list, and Docker Hub's rate-limit header.

/// The count in a `ratelimit-remaining` value: Docker Hub sends
/// `76;w=21600` (76 pulls left in a window of 21600 s), the IETF draft it
/// follows allows a bare `76`. None for anything else.
pub fn ratelimit_remaining(value: &[u8]) -> Option<u64> {
    let count = value.split(|&b| b == b';').next()?.trim_ascii();
    if count.is_empty() || count.len() > 19 || !count.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(count).ok()?.parse().ok()
}

/// Every manifest media type, index types first, as docker asks for a tag:
/// it lists every type because a registry answers a tag with the index when
/// it has one and the client accepts it (every platform can then be found),
/// and with a single image's manifest otherwise. What a tag record is the
/// answer to, what revalidations ask with (`pull::cached`), and what
/// `cache warm` asks the mirror with.
pub const FULL_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// The error codes of the OCI distribution spec (plus distribution's
/// `UNAVAILABLE`), written into `{"errors":[{"code":..}]}` bodies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    NameInvalid,
    TagInvalid,
    DigestInvalid,
    NameUnknown,
    ManifestUnknown,
    BlobUnknown,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    Unavailable,
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::TagInvalid => "TAG_INVALID",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Unknown => "UNKNOWN",
        }
    }
}

/// A complete error answer: status, code and a human message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    pub status: u16,
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorReply {
    pub fn new(status: u16, code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply {
            status,
            code,
            message: message.into(),
        }
    }

    /// The JSON body `{"errors":[{"code":..,"message":..,"detail":null}]}`.
    pub fn body(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + self.message.len());
        b.extend_from_slice(b"{\"errors\":[{\"code\":\"");
        b.extend_from_slice(self.code.as_str().as_bytes());
        b.extend_from_slice(b"\",\"message\":");
        json_string(&mut b, &self.message);
        b.extend_from_slice(b",\"detail\":null}]}");
        b
    }
}

/// Appends `s` as a JSON string literal.
pub fn json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            }
            c => {
                let mut tmp = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratelimit_remaining_is_the_count_before_the_window() {
        assert_eq!(ratelimit_remaining(b"76;w=21600"), Some(76));
        assert_eq!(ratelimit_remaining(b" 0 ; w=21600"), Some(0));
        assert_eq!(ratelimit_remaining(b"100"), Some(100));
        for bad in [
            &b""[..],
            b";w=21600",
            b"-1;w=1",
            b"many",
            b"99999999999999999999",
        ] {
            assert_eq!(ratelimit_remaining(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn error_body_is_the_oci_json_shape() {
        let r = ErrorReply::new(400, ErrorCode::NameInvalid, "bad \"name\"\n");
        assert_eq!(
            String::from_utf8(r.body()).unwrap(),
            r#"{"errors":[{"code":"NAME_INVALID","message":"bad \"name\"\n","detail":null}]}"#
        );
    }
}
