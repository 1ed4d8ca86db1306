//! Which upstream registry serves a request, and what the repository is
//! called there.
//!
//! A registry is picked, in this order, by the Host the client used
//! (`ghcr.mirror.example.com`, or any `hosts` entry), by containerd's
//! `?ns=ghcr.io`, by a path prefix (`/v2/ghcr.io/owner/img/...`), or else
//! it is the `default` registry (dockerd's `registry-mirrors` sends
//! `/v2/library/<name>/...` to the mirror root). Docker Hub files
//! one-component names under `library/`; the client may use either form, the
//! upstream always gets the full one.

use std::borrow::Cow;

use crate::config::{Config, Registry, RegistryId};
use crate::error::{ErrorCode, ErrorReply};
use crate::wire::names::RepoName;

/// The upstream side of a repository request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    /// Index into `Config::registries` (also the upstream trust id).
    pub registry: RegistryId,
    /// The name as the client wrote it (with a path prefix, if any).
    pub client_repo: &'a str,
    /// The name the upstream knows.
    pub upstream_repo: Cow<'a, str>,
}

/// What in the request, besides the path, says which registry is meant.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hints<'a> {
    /// The Host header, port included.
    pub host: Option<&'a str>,
    /// containerd's `ns` query parameter.
    pub ns: Option<&'a str>,
}

impl<'a> Hints<'a> {
    pub fn new(host: Option<&'a str>, query: Option<&'a str>) -> Hints<'a> {
        let ns = query.and_then(|q| {
            q.split('&')
                .find_map(|p| p.strip_prefix("ns="))
                .filter(|v| !v.is_empty())
        });
        Hints { host, ns }
    }
}

/// Why no registry could be picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// A host under the mirror's domain that names no registry.
    UnknownHost(String),
    /// A path prefix or `ns` that names no configured registry.
    UnknownRegistry(String),
}

impl RouteError {
    /// A 404 that tells the client what this mirror does serve.
    pub fn reply(&self, cfg: &Config) -> ErrorReply {
        let what = match self {
            RouteError::UnknownHost(h) => format!("no registry is served on host {h}"),
            RouteError::UnknownRegistry(r) => format!("registry {r} is not mirrored here"),
        };
        ErrorReply::new(
            404,
            ErrorCode::NameUnknown,
            format!("{what}; this mirror serves: {}", describe_routes(cfg)),
        )
    }
}

/// One line per registry: name, how to reach it.
pub fn describe_routes(cfg: &Config) -> String {
    let mut parts = Vec::with_capacity(cfg.registries.len());
    for (i, r) in cfg.registry_ids() {
        let mut ways = vec![format!("/v2/{}/...", r.name)];
        ways.extend(
            cfg.host_routes
                .iter()
                .filter(|h| h.registry == i)
                .map(|h| format!("host {}", h.host)),
        );
        ways.push(format!("?ns={}", r.name));
        if r.default {
            ways.push("default".into());
        }
        parts.push(format!("{} ({})", r.name, ways.join(", ")));
    }
    parts.join("; ")
}

/// The host name of a Host header value (port and IPv6 brackets removed),
/// lowercased.
fn host_name(host: &str) -> String {
    let h = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

/// The registry picked by Host or `ns` alone (for `/v2/` and `/token`).
/// `Ok(None)`: nothing in the request names one.
pub fn by_hints(cfg: &Config, hints: Hints<'_>) -> Result<Option<RegistryId>, RouteError> {
    if let Some(host) = hints.host {
        let name = host_name(host);
        if let Some(r) = cfg.host_routes.iter().find(|r| r.host == name) {
            return Ok(Some(r.registry));
        }
        if let Some(d) = &cfg.domain {
            let under_domain = name.len() > d.len() + 1
                && name.ends_with(d.as_str())
                && name.as_bytes()[name.len() - d.len() - 1] == b'.';
            if under_domain {
                return Err(RouteError::UnknownHost(name));
            }
        }
    }
    if let Some(ns) = hints.ns {
        return match by_name(cfg, ns) {
            Some(i) => Ok(Some(i)),
            None => Err(RouteError::UnknownRegistry(ns.to_string())),
        };
    }
    Ok(None)
}

/// The registry for a request that names no repository.
pub fn for_request(cfg: &Config, hints: Hints<'_>) -> Result<RegistryId, RouteError> {
    Ok(by_hints(cfg, hints)?.unwrap_or_else(|| cfg.default_registry()))
}

/// A configured registry by name.
pub fn by_name(cfg: &Config, name: &str) -> Option<RegistryId> {
    cfg.registry_named(name)
}

/// Whether a first path component names a registry host rather than a
/// namespace (Docker's rule: it has a dot or is `localhost`; colons cannot
/// occur in a valid repository name).
fn looks_like_registry(component: &str) -> bool {
    component.contains('.') || component == "localhost"
}

/// Picks the registry for a request on `repo`.
pub fn select<'a>(
    cfg: &Config,
    hints: Hints<'_>,
    repo: RepoName<'a>,
) -> Result<Target<'a>, RouteError> {
    let name = repo.as_str();
    if let Some(registry) = by_hints(cfg, hints)? {
        return Ok(target(cfg, registry, name, name));
    }
    if let Some((first, rest)) = name.split_once('/') {
        if looks_like_registry(first) {
            return match by_name(cfg, first) {
                Some(registry) => Ok(target(cfg, registry, name, rest)),
                None => Err(RouteError::UnknownRegistry(first.to_string())),
            };
        }
    }
    Ok(target(cfg, cfg.default_registry(), name, name))
}

fn target<'a>(
    cfg: &Config,
    registry: RegistryId,
    client_repo: &'a str,
    name: &'a str,
) -> Target<'a> {
    Target {
        registry,
        client_repo,
        upstream_repo: upstream_name(cfg.registry(registry), name),
    }
}

/// The upstream's name for a repository name in a token scope: a path prefix
/// naming this registry is removed, then `library/` added where needed.
pub fn scope_name(reg: &Registry, name: &str) -> String {
    let bare = name
        .strip_prefix(reg.name.as_str())
        .and_then(|r| r.strip_prefix('/'))
        .unwrap_or(name);
    upstream_name(reg, bare).into_owned()
}

/// The upstream's name for `client_name` (adds `library/` where needed).
pub fn upstream_name<'a>(reg: &Registry, client_name: &'a str) -> Cow<'a, str> {
    if reg.library_prefix && !client_name.contains('/') {
        Cow::Owned(format!("library/{client_name}"))
    } else {
        Cow::Borrowed(client_name)
    }
}

/// The registry a token request is for: named in the path (`/token/ghcr.io`),
/// by Host or `ns`, by the path prefix of its first repository scope (docker
/// keeps using the realm of its first `/v2/` challenge for every repository),
/// or the default.
pub fn for_token(
    cfg: &Config,
    named: Option<&str>,
    hints: Hints<'_>,
    query: Option<&str>,
) -> Result<RegistryId, RouteError> {
    if let Some(n) = named {
        return by_name(cfg, n).ok_or_else(|| RouteError::UnknownRegistry(n.to_string()));
    }
    if let Some(i) = by_hints(cfg, hints)? {
        return Ok(i);
    }
    let prefixed = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|p| p.strip_prefix("scope="))
        .filter_map(crate::wire::challenge::percent_decode)
        .find_map(|scopes| {
            let repo = scopes
                .split(' ')
                .find_map(|s| s.strip_prefix("repository:"))?;
            let first = repo.split('/').next()?;
            (looks_like_registry(first) && repo.contains('/')).then(|| first.to_string())
        });
    if let Some(first) = prefixed {
        return by_name(cfg, &first).ok_or(RouteError::UnknownRegistry(first));
    }
    Ok(cfg.default_registry())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::parse("listen = [\"127.0.0.1:1\"]\ndomain = \"mirror.example.com\"\n[[registry]]\nname = \"corp.example\"\nupstream = \"https://corp.example\"\nhosts = [\"registry.corp.test\"]\n").unwrap()
    }

    fn pick(
        c: &Config,
        host: Option<&str>,
        query: Option<&str>,
        repo: &str,
    ) -> Result<(String, String), RouteError> {
        let t = select(c, Hints::new(host, query), RepoName::parse(repo).unwrap())?;
        Ok((
            c.registry(t.registry).name.clone(),
            t.upstream_repo.into_owned(),
        ))
    }

    #[test]
    fn library_prefix_is_added_for_one_component_docker_hub_names() {
        let c = Config::default_config();
        assert_eq!(
            pick(&c, None, None, "alpine").unwrap(),
            ("docker.io".into(), "library/alpine".into())
        );
        assert_eq!(
            pick(&c, None, None, "library/alpine").unwrap().1,
            "library/alpine"
        );
        assert_eq!(
            pick(&c, None, None, "grafana/grafana").unwrap().1,
            "grafana/grafana"
        );
    }

    #[test]
    fn host_routes_pick_the_registry_and_keep_the_name() {
        let c = cfg();
        assert_eq!(
            pick(&c, Some("ghcr.mirror.example.com"), None, "owner/img").unwrap(),
            ("ghcr.io".into(), "owner/img".into())
        );
        assert_eq!(
            pick(&c, Some("GHCR.mirror.example.com:443"), None, "o/i")
                .unwrap()
                .0,
            "ghcr.io"
        );
        assert_eq!(
            pick(&c, Some("docker.mirror.example.com"), None, "alpine")
                .unwrap()
                .1,
            "library/alpine"
        );
        assert_eq!(
            pick(&c, Some("registry.corp.test:5000"), None, "a/b")
                .unwrap()
                .0,
            "corp.example"
        );
        assert_eq!(
            pick(&c, Some("nope.mirror.example.com"), None, "a/b").unwrap_err(),
            RouteError::UnknownHost("nope.mirror.example.com".into())
        );
    }

    #[test]
    fn path_prefixes_pick_the_registry_and_are_removed() {
        let c = cfg();
        assert_eq!(
            pick(&c, Some("mirror.example.com"), None, "ghcr.io/owner/img").unwrap(),
            ("ghcr.io".into(), "owner/img".into())
        );
        assert_eq!(
            pick(&c, None, None, "docker.io/alpine").unwrap(),
            ("docker.io".into(), "library/alpine".into())
        );
        assert_eq!(
            pick(&c, None, None, "registry.k8s.io/pause").unwrap(),
            ("registry.k8s.io".into(), "pause".into())
        );
        assert_eq!(
            pick(&c, None, None, "evil.example/x").unwrap_err(),
            RouteError::UnknownRegistry("evil.example".into())
        );
        // A dotless first component is a Docker Hub namespace.
        assert_eq!(
            pick(&c, None, None, "bitnami/redis").unwrap(),
            ("docker.io".into(), "bitnami/redis".into())
        );
    }

    #[test]
    fn containerd_ns_picks_the_registry() {
        let c = cfg();
        assert_eq!(
            pick(
                &c,
                Some("mirror.example.com"),
                Some("ns=ghcr.io"),
                "owner/img"
            )
            .unwrap(),
            ("ghcr.io".into(), "owner/img".into())
        );
        assert_eq!(
            pick(&c, None, Some("ns=docker.io"), "alpine").unwrap().1,
            "library/alpine"
        );
        assert_eq!(
            pick(&c, None, Some("ns=evil.example"), "a").unwrap_err(),
            RouteError::UnknownRegistry("evil.example".into())
        );
    }

    #[test]
    fn token_requests_find_their_registry() {
        let c = cfg();
        let name = |r: Result<RegistryId, RouteError>| c.registry(r.unwrap()).name.clone();
        assert_eq!(
            name(for_token(&c, Some("ghcr.io"), Hints::default(), None)),
            "ghcr.io"
        );
        assert_eq!(
            name(for_token(
                &c,
                None,
                Hints::new(Some("quay.mirror.example.com"), None),
                None
            )),
            "quay.io"
        );
        assert_eq!(
            name(for_token(
                &c,
                None,
                Hints::default(),
                Some("service=x&scope=repository%3Aghcr.io%2Fo%2Fi%3Apull")
            )),
            "ghcr.io"
        );
        assert_eq!(
            name(for_token(
                &c,
                None,
                Hints::default(),
                Some("scope=repository:alpine:pull")
            )),
            "docker.io"
        );
        assert!(for_token(&c, Some("nope"), Hints::default(), None).is_err());
    }

    #[test]
    fn scope_names_lose_their_prefix_and_gain_library() {
        let c = Config::default_config();
        let hub = c.registry(by_name(&c, "docker.io").unwrap());
        let ghcr = c.registry(by_name(&c, "ghcr.io").unwrap());
        assert_eq!(scope_name(hub, "alpine"), "library/alpine");
        assert_eq!(scope_name(hub, "docker.io/alpine"), "library/alpine");
        assert_eq!(scope_name(ghcr, "ghcr.io/owner/img"), "owner/img");
        assert_eq!(scope_name(ghcr, "owner/img"), "owner/img");
    }

    #[test]
    fn the_404_lists_every_route() {
        let c = cfg();
        let r = RouteError::UnknownRegistry("evil.example".into()).reply(&c);
        assert_eq!(r.status, 404);
        assert!(
            r.message
                .contains("ghcr.io (/v2/ghcr.io/..., host ghcr.mirror.example.com, ?ns=ghcr.io)"),
            "{}",
            r.message
        );
        assert!(r.message.contains("default"));
    }
}
