//! Which upstream registry serves a request, and what the repository is
//! called there. Docker Hub files one-component names under `library/`; the
//! client may use either form, the upstream always gets the full one.

use std::borrow::Cow;

use crate::config::{Config, Registry};
use crate::names::RepoName;

/// The upstream side of a repository request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    /// Index into `Config::registries` (also the upstream trust id).
    pub registry: usize,
    /// The name as the client wrote it.
    pub client_repo: &'a str,
    /// The name the upstream knows.
    pub upstream_repo: Cow<'a, str>,
}

/// Picks the registry for `repo`.
pub fn select<'a>(cfg: &Config, repo: RepoName<'a>) -> Target<'a> {
    let registry = cfg.default_registry();
    Target {
        registry,
        client_repo: repo.as_str(),
        upstream_repo: upstream_name(&cfg.registries[registry], repo.as_str()),
    }
}

/// The upstream's name for `client_name` (adds `library/` where needed).
pub fn upstream_name<'a>(reg: &Registry, client_name: &'a str) -> Cow<'a, str> {
    if reg.library_prefix && !client_name.contains('/') {
        Cow::Owned(format!("library/{client_name}"))
    } else {
        Cow::Borrowed(client_name)
    }
}

/// The registry a token request is for: named in the path, or the default.
pub fn for_token(cfg: &Config, named: Option<&str>) -> Option<usize> {
    match named {
        Some(n) => cfg
            .registries
            .iter()
            .position(|r| r.name.eq_ignore_ascii_case(n)),
        None => Some(cfg.default_registry()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_prefix_is_added_for_one_component_docker_hub_names() {
        let cfg = Config::default_config();
        let t = select(&cfg, RepoName::parse("alpine").unwrap());
        assert_eq!(t.upstream_repo, "library/alpine");
        assert_eq!(t.client_repo, "alpine");
        let t = select(&cfg, RepoName::parse("library/alpine").unwrap());
        assert_eq!(t.upstream_repo, "library/alpine");
        let t = select(&cfg, RepoName::parse("grafana/grafana").unwrap());
        assert_eq!(t.upstream_repo, "grafana/grafana");
    }
}
