//! Image references, read as docker reads them and turned into the paths
//! the mirror is asked; and the mirror's own address.

use std::fmt;
use std::net::SocketAddr;

use super::WarmError;
use crate::wire::challenge::percent_encode;
use crate::wire::names::{Digest, RepoName, Tag};
use crate::wire::url::Url;

/// An image as docker names it, resolved to what the mirror is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ImageRef {
    /// The registry host as written (lowercased; `index.docker.io` is
    /// `docker.io`); `None`: the mirror's default registry.
    pub(super) registry: Option<String>,
    /// The repository (`library/alpine`).
    pub(super) repo: String,
    /// Tag or digest (`latest` when none was given).
    pub(super) reference: String,
}

impl ImageRef {
    /// Parses `[registry/]repo[:tag][@digest]` by docker's rules: the first
    /// component names a registry when it has a `.` or `:` or is
    /// `localhost`; Docker Hub files one-component names under `library/`;
    /// with both a tag and a digest, the digest is what is pulled.
    pub(super) fn parse(image: &str) -> Result<ImageRef, WarmError> {
        let bad = |reason: &str| WarmError::Reference {
            image: image.to_string(),
            reason: reason.to_string(),
        };
        let (name_tag, digest) = match image.split_once('@') {
            Some((n, d)) => {
                Digest::parse(d).map_err(|_| {
                    bad("the part after @ is not a digest (sha256:<64 hex digits>)")
                })?;
                (n, Some(d))
            }
            None => (image, None),
        };
        let last_slash = name_tag.rfind('/');
        let (name, tag) = match name_tag.rfind(':') {
            Some(i) if last_slash.is_none_or(|s| i > s) => {
                (&name_tag[..i], Some(&name_tag[i + 1..]))
            }
            _ => (name_tag, None),
        };
        if let Some(t) = tag {
            Tag::parse(t).map_err(|_| bad("invalid tag (letters, digits, _ . -; at most 128)"))?;
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (Some(first.to_ascii_lowercase()), rest)
            }
            _ => (None, name),
        };
        if let Some(r) = &registry {
            if !valid_host_port(r) {
                return Err(bad("invalid registry host"));
            }
        }
        let registry = registry.map(|r| {
            if r == "index.docker.io" {
                "docker.io".into()
            } else {
                r
            }
        });
        let hub = registry.as_deref().is_none_or(|r| r == "docker.io");
        let repo = if hub && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        let name_rule = "invalid repository name (lowercase letters, digits, separators . _ __ -, components joined by /)";
        RepoName::parse(&repo).map_err(|_| bad(name_rule))?;
        // The mirror must take `<registry>/<repo>` as one name too.
        if let Some(r) = registry.as_deref().filter(|r| !r.contains(':')) {
            RepoName::parse(&format!("{r}/{repo}")).map_err(|_| bad(name_rule))?;
        }
        Ok(ImageRef {
            registry,
            repo,
            reference: digest.or(tag).unwrap_or("latest").to_string(),
        })
    }

    /// `/v2/<name>/<kind>/<reference>`: the registry, when one was named,
    /// as a path prefix (the mirror's path routing), or, for a host with a
    /// port (a `:` cannot be part of a repository name), as containerd's
    /// `?ns=`.
    pub(super) fn path(&self, kind: &str, reference: &str) -> String {
        match self.registry.as_deref() {
            None => format!("/v2/{}/{kind}/{reference}", self.repo),
            Some(r) if r.contains(':') => {
                let mut p = format!("/v2/{}/{kind}/{reference}?ns=", self.repo);
                percent_encode(r, &mut p);
                p
            }
            Some(r) => format!("/v2/{r}/{}/{kind}/{reference}", self.repo),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sep = if self.reference.contains(':') {
            '@'
        } else {
            ':'
        };
        let registry = self.registry.as_deref().unwrap_or("docker.io");
        write!(f, "{registry}/{}{sep}{}", self.repo, self.reference)
    }
}

/// `host[:port]` with a DNS name or IPv4 address.
fn valid_host_port(s: &str) -> bool {
    let (host, port) = match s.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    host_ok && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
}

// ---- the mirror's address ----

/// `--mirror URL`: `http(s)://host[:port]`, nothing after it.
pub fn parse_mirror(s: &str) -> Result<Url, WarmError> {
    let url = Url::parse(s).map_err(|e| WarmError::Mirror(format!("--mirror {s:?}: {e}")))?;
    if url.path_and_query != "/" {
        return Err(WarmError::Mirror(format!(
            "--mirror {s:?}: give only scheme, host and port (http://HOST:PORT)"
        )));
    }
    Ok(url)
}

/// The default mirror: `http://` + the first plain listen address, with an
/// unspecified address (`0.0.0.0`, `[::]`) meaning this machine's loopback.
pub fn default_mirror(listen: &[SocketAddr]) -> Result<Url, WarmError> {
    let Some(first) = listen.first() else {
        return Err(WarmError::Mirror(
            "the config has no plain `listen` address: name the mirror with --mirror URL".into(),
        ));
    };
    if first.port() == 0 {
        return Err(WarmError::Mirror(format!(
            "the config listens on {first} (any free port): name the mirror with --mirror URL"
        )));
    }
    let ip = match first.ip() {
        std::net::IpAddr::V4(a) if a.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(a) if a.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    parse_mirror(&format!("http://{}", SocketAddr::new(ip, first.port())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(image: &str) -> (Option<String>, String, String, String) {
        let r = ImageRef::parse(image).unwrap_or_else(|e| panic!("{image}: {e}"));
        let path = r.path("manifests", &r.reference);
        (
            r.registry.clone(),
            r.repo.clone(),
            r.reference.clone(),
            path,
        )
    }

    #[test]
    fn references_are_read_as_docker_reads_them() {
        let d = format!("sha256:{}", "a".repeat(64));
        let hub = |repo: &str, r: &str| {
            (
                None,
                repo.to_string(),
                r.to_string(),
                format!("/v2/{repo}/manifests/{r}"),
            )
        };
        assert_eq!(parsed("alpine"), hub("library/alpine", "latest"));
        assert_eq!(parsed("alpine:3.19"), hub("library/alpine", "3.19"));
        assert_eq!(parsed("library/alpine"), hub("library/alpine", "latest"));
        assert_eq!(parsed("owner/img:v1"), hub("owner/img", "v1"));
        assert_eq!(
            parsed(&format!("alpine:3.19@{d}")),
            hub("library/alpine", &d)
        );
        assert_eq!(
            parsed("ghcr.io/owner/img:tag"),
            (
                Some("ghcr.io".into()),
                "owner/img".into(),
                "tag".into(),
                "/v2/ghcr.io/owner/img/manifests/tag".into()
            )
        );
        assert_eq!(
            parsed(&format!("quay.io/x/y@{d}")).3,
            format!("/v2/quay.io/x/y/manifests/{d}")
        );
        assert_eq!(
            parsed("docker.io/alpine").3,
            "/v2/docker.io/library/alpine/manifests/latest"
        );
        assert_eq!(
            parsed("index.docker.io/alpine").3,
            "/v2/docker.io/library/alpine/manifests/latest"
        );
        assert_eq!(
            parsed("localhost/img").3,
            "/v2/localhost/img/manifests/latest"
        );
        // A port cannot be part of a repository name: containerd's `ns`.
        assert_eq!(
            parsed("localhost:5000/img:1").3,
            "/v2/img/manifests/1?ns=localhost%3A5000"
        );
        assert_eq!(
            ImageRef::parse("ghcr.io/owner/img:tag")
                .unwrap()
                .to_string(),
            "ghcr.io/owner/img:tag"
        );
        assert_eq!(
            ImageRef::parse("alpine").unwrap().to_string(),
            "docker.io/library/alpine:latest"
        );
        assert_eq!(
            ImageRef::parse(&format!("x/y@{d}")).unwrap().to_string(),
            format!("docker.io/x/y@{d}")
        );
    }

    #[test]
    fn bad_references_say_what_is_wrong() {
        for (image, why) in [
            ("Alpine", "repository name"),
            ("alpine:", "tag"),
            ("alpine:a+b", "tag"),
            ("alpine@sha256:123", "digest"),
            ("", "repository name"),
            ("ghcr.io/", "repository name"),
            ("bad_host.io:99999/x", "registry host"),
        ] {
            let e = ImageRef::parse(image).unwrap_err().to_string();
            assert!(
                e.contains(why) && e.contains(&format!("{image:?}")),
                "{image}: {e}"
            );
        }
    }

    #[test]
    fn the_default_mirror_is_the_first_listen_address_on_loopback() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let url = |l: &[SocketAddr]| default_mirror(l).map(|u| u.origin.to_string());
        assert_eq!(
            url(&[a("0.0.0.0:5000"), a("10.0.0.1:6000")]).unwrap(),
            "http://127.0.0.1:5000"
        );
        assert_eq!(url(&[a("[::]:5000")]).unwrap(), "http://[::1]:5000");
        assert_eq!(url(&[a("10.1.2.3:80")]).unwrap(), "http://10.1.2.3");
        assert!(url(&[a("127.0.0.1:0")])
            .unwrap_err()
            .to_string()
            .contains("--mirror"));
        assert!(url(&[]).unwrap_err().to_string().contains("--mirror"));
        assert!(parse_mirror("http://h:1/v2/").is_err());
        assert!(parse_mirror("ftp://h:1").is_err());
    }
}
