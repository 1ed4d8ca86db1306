//! The access rules of the config: `allow` and `deny` lists of repository
//! globs and `max_blob_bytes`, in a `[[registry]]` (matched against the
//! upstream's repository name) or in the global `[access]` table (matched
//! against `<registry>/<repository>`). Patterns are checked here, at load;
//! `gate::rules` applies them.

use serde::Deserialize;
use toml::Spanned;

use super::parse_size;

/// One component of a [`RepoGlob`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// `**`: one or more whole components.
    Any,
    /// A component, where each `*` stands for any run of characters
    /// other than `/` (`nginx`, `*`, `ng*-alpine`).
    One(String),
}

/// A repository name pattern: components split by `/`; `*` inside a
/// component, `**` as a whole component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoGlob {
    text: String,
    parts: Vec<Part>,
}

/// Why a pattern is not a [`RepoGlob`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlobError {
    Empty,
    EmptyComponent,
    /// A character that is in no repository or registry name.
    BadChar(char),
    /// `**` mixed with other characters in one component (`a**`).
    MixedDoubleStar,
}

impl std::fmt::Display for GlobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GlobError::Empty => f.write_str("is empty"),
            GlobError::EmptyComponent => f.write_str("has an empty component (`//`, or `/` at an end)"),
            GlobError::BadChar(c) => write!(
                f,
                "has {c:?}, which is in no repository name (lowercase letters, digits, `._-`, `/`, `*`; `:` in a registry name)"
            ),
            GlobError::MixedDoubleStar => f.write_str("has `**` inside a component: it stands for whole components only (`bitnami/**`)"),
        }
    }
}

impl RepoGlob {
    /// Parses a pattern. Repository names are lowercase, so an uppercase
    /// letter could never match: it is refused rather than ignored.
    pub fn parse(text: &str) -> Result<RepoGlob, GlobError> {
        if text.is_empty() {
            return Err(GlobError::Empty);
        }
        let mut parts = Vec::new();
        for comp in text.split('/') {
            if comp.is_empty() {
                return Err(GlobError::EmptyComponent);
            }
            if let Some(c) = comp
                .chars()
                .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "._-*:".contains(c)))
            {
                return Err(GlobError::BadChar(c));
            }
            if comp == "**" {
                parts.push(Part::Any);
            } else if comp.contains("**") {
                return Err(GlobError::MixedDoubleStar);
            } else {
                parts.push(Part::One(comp.to_string()));
            }
        }
        Ok(RepoGlob {
            text: text.to_string(),
            parts,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern's first component matches `component` (the
    /// registry of a global pattern: `config check` asks).
    pub fn first_matches(&self, component: &str) -> bool {
        match self.parts.first() {
            Some(Part::One(p)) => match_component(p.as_bytes(), component.as_bytes()),
            _ => true,
        }
    }

    /// Whether `name` (components split by `/`) matches.
    pub fn matches(&self, name: &str) -> bool {
        let comps: Vec<&str> = name.split('/').collect();
        match_parts(&self.parts, &comps)
    }
}

/// Components against parts; `**` tries each number of components it can
/// take (patterns and names are a few components long).
fn match_parts(parts: &[Part], comps: &[&str]) -> bool {
    match parts.split_first() {
        None => comps.is_empty(),
        Some((Part::Any, rest)) => {
            (1..=comps.len()).any(|taken| match_parts(rest, &comps[taken..]))
        }
        Some((Part::One(p), rest)) => match comps.split_first() {
            Some((c, more)) => {
                match_component(p.as_bytes(), c.as_bytes()) && match_parts(rest, more)
            }
            None => false,
        },
    }
}

/// One component against a pattern with `*`s.
fn match_component(p: &[u8], c: &[u8]) -> bool {
    match p.split_first() {
        None => c.is_empty(),
        Some((b'*', rest)) => (0..=c.len()).any(|i| match_component(rest, &c[i..])),
        Some((&b, rest)) => c.first() == Some(&b) && match_component(rest, &c[1..]),
    }
}

/// A pattern with the config line it was written on (named in refusals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    pub glob: RepoGlob,
    pub line: usize,
}

/// A limit with the config line it was written on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeLimit {
    pub bytes: u64,
    pub line: usize,
}

/// The access rules of one scope (a registry, or the global `[access]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessRules {
    /// Non-empty: only what matches one of these may be pulled.
    pub allow: Vec<Pattern>,
    /// What matches one of these is refused, whatever `allow` says.
    pub deny: Vec<Pattern>,
    /// Blobs known to be larger are refused before their first byte.
    pub max_blob_bytes: Option<SizeLimit>,
}

/// `max_blob_bytes` as written: a byte count, or a size (`"2GiB"`).
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub(super) enum FileSize {
    Bytes(u64),
    Text(String),
}

/// The global `[access]` table as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileAccess {
    pub allow: Vec<Spanned<String>>,
    pub deny: Vec<Spanned<String>>,
    pub max_blob_bytes: Option<Spanned<FileSize>>,
}

/// The lists and limit as written, checked into [`AccessRules`]; errors
/// carry the span of what is wrong.
pub(super) fn parse_rules(
    text: &str,
    allow: &[Spanned<String>],
    deny: &[Spanned<String>],
    max_blob_bytes: Option<&Spanned<FileSize>>,
) -> Result<AccessRules, (std::ops::Range<usize>, String)> {
    let list = |key: &str, items: &[Spanned<String>]| {
        items
            .iter()
            .map(|p| {
                RepoGlob::parse(p.get_ref().trim())
                    .map(|glob| Pattern {
                        glob,
                        line: super::line_of(text, p.span().start),
                    })
                    .map_err(|e| (p.span(), format!("{key} pattern {:?} {e}", p.get_ref())))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let max_blob_bytes = match max_blob_bytes {
        None => None,
        Some(s) => {
            let bytes = match s.get_ref() {
                FileSize::Bytes(n) => Some(*n).filter(|n| *n > 0),
                FileSize::Text(t) => parse_size(t),
            };
            let bytes = bytes.ok_or_else(|| {
                (
                    s.span(),
                    "max_blob_bytes must be a positive size (`2147483648`, `\"2GiB\"`, `\"500 MB\"`)"
                        .to_string(),
                )
            })?;
            Some(SizeLimit {
                bytes,
                line: super::line_of(text, s.span().start),
            })
        }
    };
    Ok(AccessRules {
        allow: list("allow", allow)?,
        deny: list("deny", deny)?,
        max_blob_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, name: &str) -> bool {
        RepoGlob::parse(p).unwrap().matches(name)
    }

    #[test]
    fn one_star_is_one_component() {
        assert!(m("library/*", "library/nginx"));
        assert!(!m("library/*", "library/a/b"));
        assert!(!m("library/*", "bitnami/nginx"));
        assert!(m("library/ng*", "library/nginx"));
        assert!(!m("library/ng*", "library/redis"));
        assert!(m("*/app", "myorg/app"));
    }

    #[test]
    fn double_star_is_one_or_more_components() {
        assert!(m("bitnami/**", "bitnami/nginx"));
        assert!(m("bitnami/**", "bitnami/charts/nginx"));
        assert!(!m("bitnami/**", "bitnami"));
        assert!(!m("bitnami/**", "bitnamix/nginx"));
        assert!(m("**/nginx", "library/nginx"));
        assert!(m("docker.io/**", "docker.io/library/nginx"));
    }

    #[test]
    fn a_plain_name_is_exact() {
        assert!(m("myorg/app", "myorg/app"));
        assert!(!m("myorg/app", "myorg/app2"));
        assert!(!m("myorg/app", "myorg/app/x"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert_eq!(RepoGlob::parse(""), Err(GlobError::Empty));
        assert_eq!(RepoGlob::parse("a//b"), Err(GlobError::EmptyComponent));
        assert_eq!(RepoGlob::parse("a/"), Err(GlobError::EmptyComponent));
        assert_eq!(RepoGlob::parse("Library/x"), Err(GlobError::BadChar('L')));
        assert_eq!(RepoGlob::parse("a/b?"), Err(GlobError::BadChar('?')));
        assert_eq!(RepoGlob::parse("a/b**"), Err(GlobError::MixedDoubleStar));
    }
}
