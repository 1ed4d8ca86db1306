//! `[cache.s3]`: the shared cache tier, one bucket of an S3-compatible store
//! (AWS S3, Cloudflare R2, MinIO, Ceph RGW, Garage, SeaweedFS) behind every
//! node's local disk cache. Absent table: no shared tier (the default).
//!
//! Credentials come from the table (`access_key_id` + `secret_access_key`),
//! else from `credentials_file` (the AWS shared-credentials format, section
//! `profile`), else from the usual environment variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{line_of, parse_duration, parse_size, ConfigError};
use crate::wire::url::{Scheme, Url};

/// The checked `[cache.s3]` table.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// Scheme, host and port of the store (`https://s3.eu-west-1.amazonaws.com`,
    /// `http://10.0.0.5:8333`); a plain-http endpoint is allowed (a
    /// self-hosted store on a private network often is).
    pub endpoint: Url,
    pub bucket: String,
    pub region: String,
    /// `https://endpoint/bucket/key` (true: MinIO, Garage, SeaweedFS, most
    /// self-hosted stores) or `https://bucket.endpoint/key` (false: AWS, R2).
    pub path_style: bool,
    /// Prepended to every key (`""`, or e.g. `"ocirelay/"`), so that one
    /// bucket can hold other things too.
    pub prefix: String,
    pub credentials: S3Credentials,
    /// Extra CA certificates (PEM) for a store with its own CA.
    pub ca_file: Option<PathBuf>,
    /// Answer hits held in the bucket with a `307` to a presigned URL of
    /// the object (after the same access checks as any hit), so that the
    /// store or its CDN sends the bytes. Off by default.
    pub redirect: bool,
    /// Lifetime of a presigned URL in redirect mode.
    pub redirect_ttl: Duration,
    /// Objects up to this size are uploaded with one PUT, larger ones in
    /// parts of this size (S3 allows at most 10,000 parts of 5 MiB..5 GiB).
    pub part_size: u64,
    /// One request to the store (head, a small object, one part) gives up
    /// after this long; the tier is then marked down for a while and nodes
    /// serve from their disk and the upstream.
    pub timeout: Duration,
    /// How long a node waits for another node's download of the same blob
    /// to appear in the bucket before fetching it itself.
    pub lease_wait: Duration,
    /// Conditional writes (`If-None-Match: *`): `None` = probe the store at
    /// start; `Some(false)` = the store ignores them (Garage), use the
    /// write-then-read lease; `Some(true)` = trust them without a probe.
    pub conditional_writes: Option<bool>,
    /// `ocirelay cache prune --tier shared` keeps the bucket under this size
    /// (least recently used first); `None`: prune only when asked with
    /// `--max-size` (or by the store's lifecycle rules).
    pub max_size: Option<u64>,
}

/// Credentials for the store. `Debug` never shows the secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint.to_string())
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("prefix", &self.prefix)
            .field("credentials", &self.credentials)
            .field("redirect", &self.redirect)
            .finish_non_exhaustive()
    }
}

/// Part size by default: 64 MiB (a 1 GiB layer in 16 parts; each part is
/// read from the local file as it is sent, never held whole).
pub const DEFAULT_PART_SIZE: u64 = 64 << 20;
/// S3's smallest part (all but the last).
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// S3's largest part.
pub const MAX_PART_SIZE: u64 = 5 << 30;

/// `[cache.s3]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileS3 {
    endpoint: Spanned<String>,
    bucket: Spanned<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    path_style: Option<bool>,
    #[serde(default)]
    prefix: Option<Spanned<String>>,
    #[serde(default)]
    access_key_id: Option<Spanned<String>>,
    #[serde(default)]
    secret_access_key: Option<Spanned<String>>,
    #[serde(default)]
    session_token: Option<String>,
    #[serde(default)]
    credentials_file: Option<Spanned<String>>,
    #[serde(default)]
    profile: Option<String>,
    #[serde(default)]
    ca_file: Option<Spanned<String>>,
    #[serde(default)]
    redirect: bool,
    #[serde(default)]
    redirect_ttl: Option<Spanned<String>>,
    #[serde(default)]
    part_size: Option<Spanned<String>>,
    #[serde(default)]
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    lease_wait: Option<Spanned<String>>,
    #[serde(default)]
    conditional_writes: Option<Spanned<String>>,
    #[serde(default)]
    max_size: Option<Spanned<String>>,
}

/// Where the environment is read from (tests pass their own).
pub(super) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Checks `[cache.s3]`.
pub(super) fn parse(
    text: &str,
    f: &Spanned<FileS3>,
    env: Env<'_>,
) -> Result<S3Config, ConfigError> {
    let table_line = Some(line_of(text, f.span().start));
    let at = |span: std::ops::Range<usize>, message: String| ConfigError {
        line: Some(line_of(text, span.start)),
        message,
    };
    let f = f.get_ref();

    let endpoint = Url::parse(f.endpoint.get_ref().trim_end_matches('/')).map_err(|e| {
        at(
            f.endpoint.span(),
            format!(
                "cache.s3 endpoint {:?} is not a URL ({e:?}); e.g. \"https://s3.us-east-1.amazonaws.com\" or \"http://127.0.0.1:8333\"",
                f.endpoint.get_ref()
            ),
        )
    })?;
    if endpoint.path_and_query != "/" {
        return Err(at(
            f.endpoint.span(),
            format!(
                "cache.s3 endpoint {:?} has a path; give scheme, host and port only (the bucket goes in `bucket`)",
                f.endpoint.get_ref()
            ),
        ));
    }
    let bucket = f.bucket.get_ref().clone();
    if !valid_bucket(&bucket) {
        return Err(at(
            f.bucket.span(),
            format!("cache.s3 bucket {bucket:?} is not a bucket name (3-63 of a-z, 0-9, '.', '-')"),
        ));
    }
    // Virtual-host style puts the bucket in the host name: a name with dots
    // breaks TLS name checks against `*.endpoint` certificates.
    let path_style = f
        .path_style
        .unwrap_or(endpoint.origin.scheme == Scheme::Http);
    if !path_style && bucket.contains('.') && endpoint.origin.scheme == Scheme::Https {
        return Err(at(
            f.bucket.span(),
            format!("cache.s3 bucket {bucket:?} has dots: use path_style = true (a virtual-host name with dots fails the store's wildcard certificate)"),
        ));
    }
    let prefix = match &f.prefix {
        None => String::new(),
        Some(p) => {
            let v = p.get_ref();
            if v.starts_with('/') || v.contains("..") || v.chars().any(|c| c.is_control()) {
                return Err(at(
                    p.span(),
                    format!(
                        "cache.s3 prefix {v:?}: no leading '/', no '..', no control characters"
                    ),
                ));
            }
            if v.is_empty() || v.ends_with('/') {
                v.clone()
            } else {
                format!("{v}/")
            }
        }
    };

    let credentials = credentials(text, f, env, table_line)?;

    let ca_file = match &f.ca_file {
        None => None,
        Some(p) => {
            let path = PathBuf::from(p.get_ref());
            if !path.is_file() {
                return Err(at(
                    p.span(),
                    format!("cache.s3 ca_file {} does not exist", path.display()),
                ));
            }
            Some(path)
        }
    };

    let dur = |v: &Option<Spanned<String>>, name: &str, default: Duration| match v {
        None => Ok(default),
        Some(s) => parse_duration(s.get_ref())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                at(
                    s.span(),
                    format!(
                        "cache.s3 {name} {:?} is not a duration (e.g. \"30s\", \"5m\")",
                        s.get_ref()
                    ),
                )
            }),
    };
    let redirect_ttl = dur(&f.redirect_ttl, "redirect_ttl", Duration::from_secs(300))?;
    if redirect_ttl > Duration::from_secs(7 * 86_400) {
        return Err(at(
            f.redirect_ttl.as_ref().map_or(0..0, |s| s.span()),
            "cache.s3 redirect_ttl: a presigned URL lives at most 7 days".into(),
        ));
    }
    let timeout = dur(&f.timeout, "timeout", Duration::from_secs(10))?;
    let lease_wait = dur(&f.lease_wait, "lease_wait", Duration::from_secs(120))?;

    let part_size = match &f.part_size {
        None => DEFAULT_PART_SIZE,
        Some(s) => match parse_size(s.get_ref()) {
            Some(n) if (MIN_PART_SIZE..=MAX_PART_SIZE).contains(&n) => n,
            _ => {
                return Err(at(
                    s.span(),
                    format!(
                        "cache.s3 part_size {:?}: a size from 5MiB to 5GiB (S3's part limits)",
                        s.get_ref()
                    ),
                ))
            }
        },
    };
    let conditional_writes = match &f.conditional_writes {
        None => None,
        Some(s) => match s.get_ref().as_str() {
            "auto" => None,
            "yes" | "true" | "on" => Some(true),
            "no" | "false" | "off" => Some(false),
            other => {
                return Err(at(
                    s.span(),
                    format!("cache.s3 conditional_writes {other:?}: \"auto\", \"yes\" or \"no\""),
                ))
            }
        },
    };
    let max_size = match &f.max_size {
        None => None,
        Some(s) => Some(parse_size(s.get_ref()).ok_or_else(|| {
            at(
                s.span(),
                format!(
                    "cache.s3 max_size {:?} is not a size (e.g. \"2TiB\")",
                    s.get_ref()
                ),
            )
        })?),
    };

    Ok(S3Config {
        endpoint,
        bucket,
        region: f.region.clone().unwrap_or_else(|| "us-east-1".into()),
        path_style,
        prefix,
        credentials,
        ca_file,
        redirect: f.redirect,
        redirect_ttl,
        part_size,
        timeout,
        lease_wait,
        conditional_writes,
        max_size,
    })
}

/// The table's keys, else the credentials file, else the environment.
fn credentials(
    text: &str,
    f: &FileS3,
    env: Env<'_>,
    table_line: Option<usize>,
) -> Result<S3Credentials, ConfigError> {
    match (&f.access_key_id, &f.secret_access_key) {
        (Some(id), Some(secret)) => {
            return Ok(S3Credentials {
                access_key_id: id.get_ref().clone(),
                secret_access_key: secret.get_ref().clone(),
                session_token: f.session_token.clone(),
            })
        }
        (Some(s), None) | (None, Some(s)) => {
            return Err(ConfigError {
                line: Some(line_of(text, s.span().start)),
                message: "cache.s3: access_key_id and secret_access_key go together".into(),
            })
        }
        (None, None) => {}
    }
    if let Some(path) = &f.credentials_file {
        let profile = f.profile.as_deref().unwrap_or("default");
        let body = std::fs::read_to_string(path.get_ref()).map_err(|e| ConfigError {
            line: Some(line_of(text, path.span().start)),
            message: format!("cache.s3 credentials_file {}: {e}", path.get_ref()),
        })?;
        return read_credentials_file(&body, profile).ok_or_else(|| ConfigError {
            line: Some(line_of(text, path.span().start)),
            message: format!(
                "cache.s3 credentials_file {}: no [{profile}] section with aws_access_key_id and aws_secret_access_key",
                path.get_ref()
            ),
        });
    }
    match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => Ok(S3Credentials {
            access_key_id: id,
            secret_access_key: secret,
            session_token: env("AWS_SESSION_TOKEN").filter(|t| !t.is_empty()),
        }),
        _ => Err(ConfigError {
            line: table_line,
            message: "cache.s3 has no credentials: set access_key_id and secret_access_key, credentials_file, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
        }),
    }
}

/// The AWS shared-credentials format: `[profile]` sections of
/// `key = value` lines, `#` and `;` comments.
fn read_credentials_file(body: &str, profile: &str) -> Option<S3Credentials> {
    let mut in_section = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in body.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_section = name.trim() == profile;
            continue;
        }
        if !in_section {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().to_string();
        match k.trim() {
            "aws_access_key_id" => id = Some(v),
            "aws_secret_access_key" => secret = Some(v),
            "aws_session_token" => token = Some(v),
            _ => {}
        }
    }
    Some(S3Credentials {
        access_key_id: id.filter(|s| !s.is_empty())?,
        secret_access_key: secret.filter(|s| !s.is_empty())?,
        session_token: token.filter(|s| !s.is_empty()),
    })
}

/// S3's bucket naming rules (the subset every store accepts).
fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && b.as_bytes()[0].is_ascii_alphanumeric()
        && b.as_bytes()[b.len() - 1].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const BASE: &str = "listen = [\"127.0.0.1:1\"]\n[cache]\ndir = \"/tmp/x\"\n";

    fn parse_with(extra: &str, env: Env<'_>) -> Result<S3Config, ConfigError> {
        Config::parse_with_env(&format!("{BASE}{extra}"), env)
            .map(|c| c.cache.unwrap().s3.expect("s3 table"))
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn a_self_hosted_store_over_plain_http_with_keys_in_the_table() {
        let c = parse_with(
            "[cache.s3]\nendpoint = \"http://127.0.0.1:8333\"\nbucket = \"mirror\"\n\
             access_key_id = \"AK\"\nsecret_access_key = \"SK\"\nprefix = \"ocirelay\"\n",
            &no_env,
        )
        .unwrap();
        assert_eq!(c.endpoint.to_string(), "http://127.0.0.1:8333/");
        assert!(c.path_style, "plain http defaults to path style");
        assert_eq!(c.prefix, "ocirelay/");
        assert_eq!(c.region, "us-east-1");
        assert_eq!(c.part_size, DEFAULT_PART_SIZE);
        assert_eq!(c.conditional_writes, None);
        assert!(!c.redirect);
        assert!(
            !format!("{c:?}").contains("SK"),
            "the secret is never printed"
        );
    }

    #[test]
    fn credentials_come_from_the_table_then_the_file_then_the_environment() {
        let env = |k: &str| match k {
            "AWS_ACCESS_KEY_ID" => Some("ENVID".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("ENVSECRET".to_string()),
            "AWS_SESSION_TOKEN" => Some("TOK".to_string()),
            _ => None,
        };
        let t = "[cache.s3]\nendpoint = \"https://s3.eu-west-1.amazonaws.com\"\nbucket = \"b-1\"\nregion = \"eu-west-1\"\n";
        let c = parse_with(t, &env).unwrap();
        assert_eq!(c.credentials.access_key_id, "ENVID");
        assert_eq!(c.credentials.session_token.as_deref(), Some("TOK"));
        assert!(!c.path_style, "https defaults to virtual-host style");

        let dir = std::env::temp_dir().join(format!("ocirelay-s3cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("credentials");
        std::fs::write(
            &file,
            "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n\n[mirror]\n# c\naws_access_key_id=M\naws_secret_access_key = MS\n",
        )
        .unwrap();
        let with_file = format!(
            "{t}credentials_file = \"{}\"\nprofile = \"mirror\"\n",
            file.display()
        );
        let c = parse_with(&with_file, &env).unwrap();
        assert_eq!(
            (
                c.credentials.access_key_id.as_str(),
                c.credentials.secret_access_key.as_str()
            ),
            ("M", "MS")
        );
        let missing = with_file.replace("\"mirror\"", "\"nope\"");
        let e = parse_with(&missing, &env).unwrap_err();
        assert!(e.message.contains("[nope]"), "{}", e.message);
        std::fs::remove_dir_all(&dir).unwrap();

        let e = parse_with(t, &no_env).unwrap_err();
        assert!(e.message.contains("no credentials"), "{}", e.message);
        assert_eq!(e.line, Some(4));
    }

    #[test]
    fn bad_values_are_refused_with_their_line() {
        let keys = "access_key_id = \"a\"\nsecret_access_key = \"b\"\n";
        for (extra, line, says) in [
            ("endpoint = \"ftp://x\"\nbucket = \"bkt\"\n", 5, "not a URL"),
            (
                "endpoint = \"http://x/path\"\nbucket = \"bkt\"\n",
                5,
                "has a path",
            ),
            (
                "endpoint = \"http://x\"\nbucket = \"B_d\"\n",
                6,
                "bucket name",
            ),
            (
                "endpoint = \"https://x\"\nbucket = \"a.b.c\"\n",
                6,
                "path_style",
            ),
            (
                "endpoint = \"http://x\"\nbucket = \"bkt\"\npart_size = \"1MiB\"\n",
                7,
                "5MiB to 5GiB",
            ),
            (
                "endpoint = \"http://x\"\nbucket = \"bkt\"\nconditional_writes = \"maybe\"\n",
                7,
                "auto",
            ),
            (
                "endpoint = \"http://x\"\nbucket = \"bkt\"\ntimeout = \"soon\"\n",
                7,
                "duration",
            ),
        ] {
            let e = parse_with(&format!("[cache.s3]\n{extra}{keys}"), &no_env).unwrap_err();
            assert!(e.message.contains(says), "{extra}: {}", e.message);
            assert_eq!(e.line, Some(line), "{extra}: {}", e.message);
        }
        let e = parse_with(
            "[cache.s3]\nendpoint = \"http://x\"\nbucket = \"bkt\"\naccess_key_id = \"a\"\n",
            &no_env,
        )
        .unwrap_err();
        assert!(e.message.contains("go together"), "{}", e.message);
    }
}
