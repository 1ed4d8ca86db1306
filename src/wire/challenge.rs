//! Bearer challenges and token scopes.
//!
//! Upstream 401s carry `WWW-Authenticate: Bearer realm="<upstream token
//! host>",service="..",scope="repository:<upstream name>:pull"`. Clients must
//! never see the upstream realm (they may not reach it), so the realm is
//! rewritten to ocirelay's own token endpoint, and the scope is expressed in
//! the names the client used. The token endpoint maps scopes back.

use std::borrow::Cow;

/// One auth-param of a challenge, value unquoted (escapes still in place
/// only if the value contained none; see [`unquote`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param<'a> {
    pub name: &'a str,
    pub value: Cow<'a, str>,
}

/// A parsed challenge: `scheme param=value, ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge<'a> {
    pub scheme: &'a str,
    pub params: Vec<Param<'a>>,
}

impl<'a> Challenge<'a> {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
            .map(|p| p.value.as_ref())
    }

    pub fn is_bearer(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("bearer")
    }
}

/// Parses the first challenge of a `WWW-Authenticate` value.
pub fn parse_challenge(value: &[u8]) -> Option<Challenge<'_>> {
    let s = std::str::from_utf8(value).ok()?.trim();
    let (scheme, mut rest) = match s.find(' ') {
        Some(i) => (&s[..i], s[i + 1..].trim_start()),
        None => (s, ""),
    };
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return None;
    }
    let mut params = Vec::new();
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let name = rest[..eq].trim();
        if name.is_empty() || name.contains([' ', ',', '"']) {
            // The start of a second challenge (`, Basic realm=..`): stop here.
            break;
        }
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(q) = rest.strip_prefix('"') {
            let (v, after) = unquote(q)?;
            value = v;
            rest = after;
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = Cow::Borrowed(rest[..end].trim());
            rest = &rest[end..];
        }
        params.push(Param { name, value });
        rest = rest.trim_start();
        match rest.strip_prefix(',') {
            Some(r) => rest = r.trim_start(),
            None if rest.is_empty() => break,
            None => return None,
        }
    }
    Some(Challenge { scheme, params })
}

/// Reads a quoted-string body (after the opening quote). Returns the value
/// and the text after the closing quote.
fn unquote(s: &str) -> Option<(Cow<'_, str>, &str)> {
    let mut owned: Option<String> = None;
    // By character, not byte: a quoted-pair (RFC 9110 section 5.6.4) may
    // escape a character of several bytes, and an index into its middle
    // would be no place to slice at.
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => {
                let v = match owned {
                    Some(o) => Cow::Owned(o),
                    None => Cow::Borrowed(&s[..i]),
                };
                return Some((v, &s[i + 1..]));
            }
            '\\' => {
                let (_, escaped) = chars.next()?;
                owned
                    .get_or_insert_with(|| s[..i].to_string())
                    .push(escaped);
            }
            c => {
                if let Some(o) = owned.as_mut() {
                    o.push(c);
                }
            }
        }
    }
    None
}

/// Writes `value` as a quoted-string.
pub fn push_quoted(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    for b in value.bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// Writes the challenge with its realm replaced by `realm` and every scope
/// passed through `map_scope`; other params are kept in order.
pub fn write_rewritten(
    out: &mut Vec<u8>,
    ch: &Challenge<'_>,
    realm: &str,
    map_scope: impl Fn(&str) -> String,
) {
    out.extend_from_slice(ch.scheme.as_bytes());
    out.push(b' ');
    let mut first = true;
    for p in &ch.params {
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(p.name.as_bytes());
        out.push(b'=');
        if p.name.eq_ignore_ascii_case("realm") {
            push_quoted(out, realm);
        } else if p.name.eq_ignore_ascii_case("scope") {
            push_quoted(out, &map_scope(&p.value));
        } else {
            push_quoted(out, &p.value);
        }
    }
}

/// Applies `map_name` to the repository name of every `repository:` scope in
/// a space-separated scope list; other scopes are kept as they are.
pub fn map_scopes(scopes: &str, map_name: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(scopes.len() + 16);
    for (i, scope) in scopes.split(' ').filter(|s| !s.is_empty()).enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&map_scope(scope, &map_name));
    }
    out
}

fn map_scope(scope: &str, map_name: &impl Fn(&str) -> Option<String>) -> String {
    // `repository:<name>:<actions>`; the name may itself contain `:` (a
    // registry host with a port), so split at the first and the last colon.
    let Some(rest) = scope.strip_prefix("repository:") else {
        return scope.to_string();
    };
    let Some(last) = rest.rfind(':') else {
        return scope.to_string();
    };
    let (name, actions) = (&rest[..last], &rest[last..]);
    match map_name(name) {
        Some(mapped) => format!("repository:{mapped}{actions}"),
        None => scope.to_string(),
    }
}

/// Percent-decodes a query or form value (`+` is a space).
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let h = b.get(i + 1..i + 3)?;
                let v = u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()?;
                out.push(v);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes a query or form value (unreserved characters kept).
pub fn percent_encode(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
}

/// Rewrites every `scope=` parameter of a query string or form body with
/// `map_name`; all other parameters are kept byte for byte.
pub fn rewrite_scope_params(
    query: &str,
    map_name: impl Fn(&str) -> Option<String>,
) -> Option<String> {
    rewrite_token_params(query, map_name, None)
}

/// Rewrites the parameters of a token request (query or form body) for the
/// upstream: scopes mapped with `map_name`, `service` replaced by the
/// upstream's own when known, ocirelay's `ns` dropped; everything else kept
/// byte for byte.
pub fn rewrite_token_params(
    query: &str,
    map_name: impl Fn(&str) -> Option<String>,
    service: Option<&str>,
) -> Option<String> {
    let mut out = String::with_capacity(query.len() + 16);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let key = pair.split('=').next().unwrap_or("");
        if key == "ns" {
            continue;
        }
        if !out.is_empty() {
            out.push('&');
        }
        match (key, pair.split_once('=')) {
            ("scope", Some((_, v))) => {
                let decoded = percent_decode(v)?;
                out.push_str("scope=");
                percent_encode(&map_scopes(&decoded, &map_name), &mut out);
            }
            ("service", _) if service.is_some() => {
                out.push_str("service=");
                percent_encode(service.unwrap_or_default(), &mut out);
            }
            _ => out.push_str(pair),
        }
    }
    Some(out)
}

/// The realm URL and service of a Bearer challenge.
pub fn bearer_realm(ch: &Challenge<'_>) -> Option<(crate::wire::url::Url, Option<String>)> {
    if !ch.is_bearer() {
        return None;
    }
    let url = crate::wire::url::Url::parse(ch.param("realm")?).ok()?;
    Some((url, ch.param("service").map(str::to_string)))
}

/// The value of an `Authorization: Basic` header for `user:password`
/// (RFC 7617: base64 of the two joined by a colon).
pub fn basic_authorization(user: &str, password: &str) -> Vec<u8> {
    let raw = [user.as_bytes(), b":", password.as_bytes()].concat();
    let mut out = Vec::with_capacity(6 + raw.len().div_ceil(3) * 4);
    out.extend_from_slice(b"Basic ");
    crate::wire::base64::encode_standard(&raw, &mut out);
    out
}

/// The token and its `expires_in` from a token service's JSON answer
/// (`token` or `access_token`; the spec allows either).
pub fn issued_token(body: &[u8]) -> Option<(&str, Option<u64>)> {
    let text = std::str::from_utf8(body).ok()?;
    let token =
        json_string_field(text, "token").or_else(|| json_string_field(text, "access_token"))?;
    let expires = json_number_field(text, "expires_in");
    Some((token, expires))
}

/// The value of `"key": "<value>"` in a flat JSON object, when it has no
/// escapes (tokens are base64url and dots).
fn json_string_field<'t>(text: &'t str, key: &str) -> Option<&'t str> {
    let after = field_value(text, key)?;
    let rest = after.strip_prefix('"')?;
    let end = rest.find('"')?;
    let v = &rest[..end];
    (!v.is_empty() && !v.contains('\\')).then_some(v)
}

fn json_number_field(text: &str, key: &str) -> Option<u64> {
    let after = field_value(text, key)?;
    let end = after
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(after.len());
    after[..end].parse().ok()
}

/// What follows `"key":` (whitespace skipped).
fn field_value<'t>(text: &'t str, key: &str) -> Option<&'t str> {
    let quoted = format!("\"{key}\"");
    let mut from = 0;
    while let Some(i) = text[from..].find(&quoted) {
        let after = text[from + i + quoted.len()..].trim_start();
        if let Some(v) = after.strip_prefix(':') {
            return Some(v.trim_start());
        }
        from += i + quoted.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `www_authenticate` fuzz target: a backslash before a
    /// character of two bytes made the parser slice inside it, a panic on an
    /// upstream's header (with `panic = "abort"`, the whole relay).
    #[test]
    fn an_escaped_multibyte_character_is_kept_whole() {
        let v = "Bearer realm=\"a\\ǀb\\\\\",service=\"\\é\",scope=\"x\"";
        let c = parse_challenge(v.as_bytes()).unwrap();
        assert_eq!(c.param("realm"), Some("aǀb\\"));
        assert_eq!(c.param("service"), Some("é"));
        assert_eq!(c.param("scope"), Some("x"));
    }

    #[test]
    fn docker_hub_challenge_parses() {
        let v = br#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#;
        let c = parse_challenge(v).unwrap();
        assert!(c.is_bearer());
        assert_eq!(c.param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c.param("service"), Some("registry.docker.io"));
        assert_eq!(c.param("scope"), Some("repository:library/busybox:pull"));
    }

    #[test]
    fn quoted_escapes_unquoted_values_and_spaces_are_handled() {
        let c = parse_challenge(br#"Bearer realm = "a\"b" , error=insufficient_scope,scope="x y""#)
            .unwrap();
        assert_eq!(c.param("realm"), Some("a\"b"));
        assert_eq!(c.param("error"), Some("insufficient_scope"));
        assert_eq!(c.param("scope"), Some("x y"));
        assert!(parse_challenge(br#"Bearer realm="unterminated"#).is_none());
        assert_eq!(parse_challenge(b"Basic").unwrap().params.len(), 0);
    }

    #[test]
    fn realm_is_replaced_and_scope_mapped_service_kept() {
        let c = parse_challenge(br#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#).unwrap();
        let mut out = Vec::new();
        write_rewritten(&mut out, &c, "http://127.0.0.1:5000/token", |s| {
            map_scopes(s, |n| n.strip_prefix("library/").map(str::to_string))
        });
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"Bearer realm="http://127.0.0.1:5000/token",service="registry.docker.io",scope="repository:alpine:pull""#
        );
    }

    #[test]
    fn scopes_map_only_repository_names() {
        let m = |n: &str| (!n.contains('/')).then(|| format!("library/{n}"));
        assert_eq!(
            map_scopes("repository:alpine:pull", m),
            "repository:library/alpine:pull"
        );
        assert_eq!(
            map_scopes("repository:alpine:pull,push registry:catalog:*", m),
            "repository:library/alpine:pull,push registry:catalog:*"
        );
        assert_eq!(map_scopes("repository:a/b:pull", m), "repository:a/b:pull");
        assert_eq!(
            map_scopes("repository:host:5000/x:pull", |n| Some(n.to_uppercase())),
            "repository:HOST:5000/X:pull"
        );
    }

    #[test]
    fn query_scope_params_are_rewritten_and_the_rest_kept_verbatim() {
        let q = "service=registry.docker.io&scope=repository%3Aalpine%3Apull&scope=repository:busybox:pull&account=x%2By";
        let out = rewrite_scope_params(q, |n| Some(format!("library/{n}"))).unwrap();
        assert_eq!(
            out,
            "service=registry.docker.io&scope=repository%3Alibrary%2Falpine%3Apull&scope=repository%3Alibrary%2Fbusybox%3Apull&account=x%2By"
        );
        assert!(rewrite_scope_params("scope=%zz", |_| None).is_none());
    }

    #[test]
    fn token_params_get_the_upstream_service_and_lose_ns() {
        let q = "service=registry.docker.io&ns=ghcr.io&scope=repository%3Aghcr.io%2Fo%2Fi%3Apull";
        let out = rewrite_token_params(
            q,
            |n| n.strip_prefix("ghcr.io/").map(str::to_string),
            Some("ghcr.io"),
        )
        .unwrap();
        assert_eq!(out, "service=ghcr.io&scope=repository%3Ao%2Fi%3Apull");
    }

    #[test]
    fn basic_credentials_are_base64_with_padding() {
        // RFC 7617's example, and each padding length.
        assert_eq!(
            basic_authorization("Aladdin", "open sesame"),
            b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(
            basic_authorization("alice", "wonderland"),
            b"Basic YWxpY2U6d29uZGVybGFuZA=="
        );
        assert_eq!(basic_authorization("a", "b"), b"Basic YTpi");
        assert_eq!(basic_authorization("ab", "c"), b"Basic YWI6Yw==");
        assert_eq!(basic_authorization("ab", "cd"), b"Basic YWI6Y2Q=");
    }

    #[test]
    fn tokens_are_read_from_either_field() {
        let b = br#"{"token":"abc.def","access_token":"abc.def","expires_in":300,"issued_at":"x"}"#;
        assert_eq!(issued_token(b), Some(("abc.def", Some(300))));
        let b = br#"{ "access_token" : "t1" }"#;
        assert_eq!(issued_token(b), Some(("t1", None)));
        assert_eq!(issued_token(br#"{"tokens":"x"}"#), None);
        assert_eq!(issued_token(br#"{"token":""}"#), None);
        assert_eq!(issued_token(b"not json"), None);
    }
}
