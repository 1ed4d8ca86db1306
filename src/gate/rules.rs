//! What may be pulled: the allow and deny lists of repository globs, and
//! the largest blob served (`max_blob_bytes`).
//!
//! Two scopes: the global `[access]` table, whose patterns name
//! `<registry>/<repository>`, and each `[[registry]]`, whose patterns name
//! the repository as the upstream knows it (`library/nginx` on docker.io,
//! however the client wrote it and whichever way the registry was chosen).
//! A deny pattern in either scope refuses; each non-empty allow list refuses
//! what it does not match; of the two blob limits the smaller one holds.

use crate::config::access::{AccessRules, Pattern, SizeLimit};
use crate::config::{Config, RegistryId};
use crate::wire::oci::{ErrorCode, ErrorReply};

/// Where a rule was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'c> {
    /// The global `[access]` table.
    Global,
    /// The `[[registry]]` of this name.
    Registry(&'c str),
}

impl std::fmt::Display for Scope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Global => f.write_str("[access]"),
            Scope::Registry(name) => write!(f, "[[registry]] {name}"),
        }
    }
}

/// Why a pull is refused, naming the rule that refused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal<'c> {
    /// A deny pattern matched.
    Denied {
        pattern: &'c Pattern,
        scope: Scope<'c>,
    },
    /// An allow list that does not match; `first` is its first pattern
    /// (the line the list starts on).
    NotAllowed {
        first: &'c Pattern,
        scope: Scope<'c>,
    },
    /// A blob known to be larger than `max_blob_bytes`.
    BlobTooLarge {
        size: u64,
        limit: SizeLimit,
        scope: Scope<'c>,
    },
}

impl Refusal<'_> {
    /// The registry's JSON error: `403 DENIED` (the OCI code for "access to
    /// the resource was denied"; a size over the operator's limit is a
    /// refusal by policy, not a malformed request, so it is DENIED too).
    /// `what` names the repository (`docker.io/library/nginx`) or blob.
    pub fn reply(&self, what: &str) -> ErrorReply {
        let message = match self {
            Refusal::Denied { pattern, scope } => format!(
                "{what} is refused by deny pattern {:?} of {scope} (config line {})",
                pattern.glob.as_str(),
                pattern.line
            ),
            Refusal::NotAllowed { first, scope } => format!(
                "{what} matches no pattern of the allow list of {scope} (config line {})",
                first.line
            ),
            Refusal::BlobTooLarge { size, limit, scope } => format!(
                "{what} is {size} bytes, over max_blob_bytes = {} of {scope} (config line {})",
                limit.bytes, limit.line
            ),
        };
        ErrorReply::new(403, ErrorCode::Denied, message)
    }
}

/// The two scopes of `reg`'s rules, global first.
fn scopes(cfg: &Config, reg: RegistryId) -> [(Scope<'_>, &AccessRules); 2] {
    let r = cfg.registry(reg);
    [
        (Scope::Global, &cfg.access),
        (Scope::Registry(r.name.as_str()), &r.access),
    ]
}

/// The admit step for a repository request: `repo` is the upstream's name
/// of the repository on registry `reg`. Every deny list is asked before any
/// allow list, so that a deny wins wherever it is written.
pub fn admit<'c>(cfg: &'c Config, reg: RegistryId, repo: &str) -> Result<(), Refusal<'c>> {
    let scopes = scopes(cfg, reg);
    if scopes
        .iter()
        .all(|(_, r)| r.allow.is_empty() && r.deny.is_empty())
    {
        return Ok(()); // no lists: nothing to match, nothing allocated
    }
    let qualified = format!("{}/{repo}", cfg.registry(reg).name);
    let name_in = |scope: Scope<'_>| match scope {
        Scope::Global => qualified.as_str(),
        Scope::Registry(_) => repo,
    };
    for (scope, rules) in scopes {
        if let Some(pattern) = rules.deny.iter().find(|p| p.glob.matches(name_in(scope))) {
            return Err(Refusal::Denied { pattern, scope });
        }
    }
    for (scope, rules) in scopes {
        if let Some(first) = rules.allow.first() {
            if !rules.allow.iter().any(|p| p.glob.matches(name_in(scope))) {
                return Err(Refusal::NotAllowed { first, scope });
            }
        }
    }
    Ok(())
}

/// The smallest `max_blob_bytes` that applies to `reg`, with its scope.
fn blob_limit(cfg: &Config, reg: RegistryId) -> Option<(SizeLimit, Scope<'_>)> {
    scopes(cfg, reg)
        .into_iter()
        .filter_map(|(scope, rules)| rules.max_blob_bytes.map(|l| (l, scope)))
        .min_by_key(|(l, _)| l.bytes)
}

/// Whether any `max_blob_bytes` applies to `reg` (without one, a blob's
/// size is not even looked up).
pub fn limits_blobs(cfg: &Config, reg: RegistryId) -> bool {
    blob_limit(cfg, reg).is_some()
}

/// Whether a blob of `size` bytes may be sent from registry `reg`. Asked
/// wherever the size is known before the first body byte: the cache's
/// index, the upstream's `Content-Length` or `Content-Range`.
pub fn admit_blob(cfg: &Config, reg: RegistryId, size: u64) -> Result<(), Refusal<'_>> {
    match blob_limit(cfg, reg) {
        Some((limit, scope)) if size > limit.bytes => {
            Err(Refusal::BlobTooLarge { size, limit, scope })
        }
        _ => Ok(()),
    }
}

/// A blob's whole size from an upstream answer's head: the total of a
/// `Content-Range` (`bytes 0-99/5000`) for a part, else `Content-Length`
/// (also sent on a HEAD). None when neither says (a chunked body: its size
/// is not known before it is sent, and a body is never cut midway).
pub fn blob_size(content_range: Option<&[u8]>, content_length: Option<&[u8]>) -> Option<u64> {
    let number = |v: &[u8]| {
        let v = v.trim_ascii();
        (!v.is_empty() && v.len() <= 19 && v.iter().all(u8::is_ascii_digit))
            .then(|| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
            .flatten()
    };
    if let Some(total) = content_range.and_then(|v| v.rsplit(|&b| b == b'/').next()) {
        if let Some(n) = number(total) {
            return Some(n);
        }
    }
    content_length.and_then(number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_size_prefers_the_total_of_a_range() {
        assert_eq!(blob_size(Some(b"bytes 0-9/5000"), Some(b"10")), Some(5000));
        assert_eq!(blob_size(Some(b"bytes 0-9/*"), Some(b"10")), Some(10));
        assert_eq!(blob_size(None, Some(b" 42 ")), Some(42));
        assert_eq!(blob_size(None, Some(b"-1")), None);
        assert_eq!(blob_size(None, None), None);
    }
}
