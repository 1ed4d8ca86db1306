//! `ocirelay config check`: what a config means, beyond whether it parses.
//! [`Config::parse`] refuses what cannot run at all (syntax, values, a host
//! two registries claim); [`check_file`] then reports, each with the line it
//! comes from, what would go wrong on this machine or route otherwise than
//! meant:
//!
//! - a registry `hosts` entry that is the mirror's own `domain`, and two
//!   registries with one `prefix` (their hosts collide once `domain` is set);
//! - a cache directory that cannot be created or written;
//! - a TLS certificate that is not its key's, or either file unusable;
//! - an `[access]` or `anonymous` pattern whose first component names no
//!   registry (a typo there refuses or opens nothing).
//!
//! An ACME domain the mirror does not serve is refused when the `[acme]`
//! table is parsed (`parse_acme`), on its line.

use std::path::Path;

use super::{find_line, line_of, read, CertSource, Config, ConfigError, File};

/// Parses the file at `path`, then looks for problems. `Err`: it does not
/// parse (the one error). `Ok`: the config and its problems, by line.
pub fn check_file(path: &Path) -> Result<(Config, Vec<ConfigError>), ConfigError> {
    check(&read(path)?)
}

/// [`check_file`] on config text.
pub fn check(text: &str) -> Result<(Config, Vec<ConfigError>), ConfigError> {
    let cfg = Config::parse(text)?;
    let file: File = toml::from_str(text).expect("the text parsed a moment ago");
    let at = |span: std::ops::Range<usize>, message: String| ConfigError {
        line: Some(line_of(text, span.start)),
        message,
    };
    let mut problems = Vec::new();

    // ---- labels: hosts and prefixes ----
    for r in &file.registry {
        let r = r.get_ref();
        for h in &r.hosts {
            let host = h.get_ref().trim();
            if cfg
                .domain
                .as_deref()
                .is_some_and(|d| d.eq_ignore_ascii_case(host))
            {
                problems.push(at(
                    h.span(),
                    format!(
                        "host {host} is the mirror's own domain: every request to it would go to \
                         {}, none by path prefix",
                        r.name.get_ref()
                    ),
                ));
            }
        }
    }
    if cfg.domain.is_none() {
        // With a domain, Config::parse refuses this as a host collision.
        for (i, a) in cfg.registries.iter().enumerate() {
            let Some(p) = &a.prefix else { continue };
            let Some(b) = cfg.registries[..i]
                .iter()
                .find(|b| b.prefix.as_ref() == Some(p))
            else {
                continue;
            };
            let line = file
                .registry
                .iter()
                .filter_map(|r| r.get_ref().prefix.as_ref())
                .rfind(|q| q.get_ref().trim().eq_ignore_ascii_case(p))
                .map(|q| line_of(text, q.span().start));
            problems.push(ConfigError {
                line,
                message: format!(
                    "prefix {p:?} is both {}'s and {}'s: their hosts collide once `domain` is set",
                    b.name, a.name
                ),
            });
        }
    }

    // ---- the cache directory ----
    if let Some(cache) = &cfg.cache {
        if let Err(why) = writable_dir(&cache.dir) {
            problems.push(ConfigError {
                line: match &file.cache.dir {
                    Some(d) => Some(line_of(text, d.span().start)),
                    None => find_line(text, "[cache]"),
                },
                message: format!("cache dir {}: {why}", cache.dir.display()),
            });
        }
    }

    // ---- TLS certificates and keys ----
    for (t, listener) in file.tls_listener.iter().zip(&cfg.tls_listeners) {
        // ACME listeners have no files to check; their domains are below.
        let (CertSource::Files { cert, key }, Some(cert_at), Some(key_at)) =
            (&listener.certs, &t.cert, &t.key)
        else {
            continue;
        };
        if let Err(e) = crate::tls::load_server(cert, key) {
            let span = match e.file() {
                Some(f) if f == key => key_at.span(),
                _ => cert_at.span(),
            };
            problems.push(at(span, format!("tls_listener {}: {e}", listener.addr)));
        }
    }

    // ---- access: global patterns name `<registry>/<repository>` ----
    let global = cfg.access.allow.iter().chain(&cfg.access.deny);
    let anonymous = cfg.auth.iter().flat_map(|a| &a.anonymous);
    for p in global.chain(anonymous) {
        if !cfg.registries.iter().any(|r| p.glob.first_matches(&r.name)) {
            problems.push(ConfigError {
                line: Some(p.line),
                message: format!(
                    "pattern {:?} names no configured registry first (`docker.io/library/*`): it matches nothing",
                    p.glob.as_str()
                ),
            });
        }
    }

    problems.sort_by_key(|p| p.line);
    Ok((cfg, problems))
}

/// Whether the cache could use `dir`: an existing directory takes a new
/// file; a missing one could be created in its nearest existing ancestor.
/// Probes with a name of its own and removes it: nothing is left behind.
fn writable_dir(dir: &Path) -> Result<(), String> {
    let probe_name = format!(".ocirelay-check-{}", std::process::id());
    if dir.exists() {
        if !dir.is_dir() {
            return Err("not a directory".into());
        }
        let probe = dir.join(&probe_name);
        std::fs::File::create_new(&probe).map_err(|e| format!("not writable: {e}"))?;
        let _ = std::fs::remove_file(&probe);
        return Ok(());
    }
    let mut ancestor = dir;
    while !ancestor.exists() {
        ancestor = match ancestor.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
    }
    if !ancestor.is_dir() {
        return Err(format!(
            "cannot be created: {} is not a directory",
            ancestor.display()
        ));
    }
    let probe = ancestor.join(&probe_name);
    std::fs::create_dir(&probe)
        .map_err(|e| format!("cannot be created in {}: {e}", ancestor.display()))?;
    let _ = std::fs::remove_dir(&probe);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "listen = [\"127.0.0.1:1\"]\n[cache]\nenabled = false\n";

    #[test]
    fn a_host_that_is_the_domain_is_reported_on_its_line() {
        let text =
            "listen = [\"127.0.0.1:1\"]\ndomain = \"mirror.test\"\n[cache]\nenabled = false\n\
                    [[registry]]\nname = \"corp\"\nupstream = \"https://corp.test\"\n\
                    hosts = [\"other.test\",\n  \"Mirror.Test\"]\n";
        let (_, problems) = check(text).unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].line, Some(9), "{}", problems[0]);
        assert!(
            problems[0].message.contains("own domain"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn a_shared_prefix_is_reported_without_a_domain_and_refused_with_one() {
        let reg =
            "[[registry]]\nname = \"myquay\"\nupstream = \"https://q.test\"\nprefix = \"quay\"\n";
        let (_, problems) = check(&format!("{BASE}{reg}")).unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].line, Some(7), "{}", problems[0]);
        assert!(problems[0].message.contains("quay.io"), "{}", problems[0]);
        let e = check(&format!("domain = \"m.test\"\n{BASE}{reg}")).unwrap_err();
        assert_eq!(e.line, Some(8), "the prefix's line: {e}");
        assert!(e.message.contains("quay.m.test"), "{e}");
    }
}
