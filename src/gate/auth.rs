//! Who may pull: mirror authentication (`[auth]`). With it on, ocirelay is
//! its clients' token service: `/token` checks a user's Basic credentials
//! against the htpasswd users and issues its own token, an HMAC-SHA256 over
//! the user, the registry, the expiry and the repositories asked for; a
//! pull carries that token or a static one, or is in the `anonymous` list.
//! Clients' credentials never go upstream then: pulls go with the mirror's
//! own upstream identity (`pull::upstream_auth::mirror_authorization`).
//!
//! bcrypt costs ~50-100 ms of CPU on purpose. It runs on the worker's event
//! loop at most once per (user, password) per worker: a pair that verified
//! is remembered per worker (as its SHA-256, never the password), so the
//! next logins cost one hash. A wrong password is not remembered and costs
//! a bcrypt each time; per-client request limits bound how often.
//!
//! The token key: `key_file` when set (so that restarts and handovers keep
//! issued tokens valid), else 32 random bytes made once per process and
//! shared by every worker and kept across reloads.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use ring::hmac;

use crate::config::auth::AuthConfig;
use crate::wire::base64;
use crate::wire::oci::{ErrorCode, ErrorReply};

/// Verified pairs kept per worker; past it the memo is cleared.
const MAX_VERIFIED: usize = 4096;
/// Marks tokens of this format (and lets a later format coexist).
const TOKEN_PREFIX: &str = "ocr1.";

/// Who a request is, once admitted (for the access log and per-user
/// limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An htpasswd user, by a token ocirelay issued.
    User(String),
    /// A static token: its position in the config's list.
    StaticToken(usize),
    /// No login: only the `anonymous` patterns.
    Anonymous,
}

impl Principal {
    /// The name for logs: the user, or `token#N` (the static token's
    /// place in the config, never the token); None for anonymous.
    pub fn name(&self) -> Option<String> {
        match self {
            Principal::User(u) => Some(u.clone()),
            Principal::StaticToken(i) => Some(format!("token#{}", i + 1)),
            Principal::Anonymous => None,
        }
    }
}

/// Per-worker memory of verified credentials.
#[derive(Default)]
pub struct AuthCache {
    /// user -> (the bcrypt hash it verified against, SHA-256 of the password).
    verified: RefCell<HashMap<String, (String, [u8; 32])>>,
}

/// The key tokens are signed with.
fn key(auth: &AuthConfig) -> hmac::Key {
    static PROCESS_KEY: OnceLock<[u8; 32]> = OnceLock::new();
    match &auth.key {
        Some(k) => hmac::Key::new(hmac::HMAC_SHA256, k),
        None => {
            let k = PROCESS_KEY.get_or_init(|| {
                let mut k = [0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k)
                    .expect("the system's random source works");
                k
            });
            hmac::Key::new(hmac::HMAC_SHA256, k)
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Empty for a token issued without credentials.
    pub user: String,
    /// The registry it was issued for (its name).
    pub registry: String,
    /// Unix seconds.
    pub expires: u64,
    /// Repositories (as the client names them) it may pull.
    pub repos: Vec<String>,
}

/// A token for `claims`: `ocr1.<payload>.<mac>`, both base64url.
pub fn mint(auth: &AuthConfig, claims: &Claims) -> String {
    // Newlines cannot occur in a user name (htpasswd lines) or a registry
    // or repository name: the payload splits back unambiguously.
    let payload = format!(
        "{}\n{}\n{}\n{}",
        claims.user,
        claims.registry,
        claims.expires,
        claims.repos.join(" ")
    );
    let body = base64::url(payload.as_bytes());
    let mac = hmac::sign(&key(auth), body.as_bytes());
    format!("{TOKEN_PREFIX}{body}.{}", base64::url(mac.as_ref()))
}

/// The claims of a token this mirror issued, if its MAC holds and it has
/// not expired at `now`.
pub fn verify(auth: &AuthConfig, token: &str, now: u64) -> Option<Claims> {
    let (body, mac) = token.strip_prefix(TOKEN_PREFIX)?.split_once('.')?;
    let mac = base64::url_decode(mac)?;
    hmac::verify(&key(auth), body.as_bytes(), &mac).ok()?;
    let payload = String::from_utf8(base64::url_decode(body)?).ok()?;
    let mut parts = payload.split('\n');
    let user = parts.next()?.to_string();
    let registry = parts.next()?.to_string();
    let expires: u64 = parts.next()?.parse().ok()?;
    let repos = parts
        .next()?
        .split(' ')
        .filter(|r| !r.is_empty())
        .map(str::to_string)
        .collect();
    (expires > now).then_some(Claims {
        user,
        registry,
        expires,
        repos,
    })
}

/// Constant-time equality of two secrets (HMAC both under the process key
/// and compare tags: the time does not depend on where they differ).
fn same_secret(auth: &AuthConfig, a: &[u8], b: &[u8]) -> bool {
    let k = key(auth);
    hmac::verify(&k, a, hmac::sign(&k, b).as_ref()).is_ok()
}

/// The static token `presented` is, if any.
fn static_token(auth: &AuthConfig, presented: &[u8]) -> Option<usize> {
    // Every token is compared, so the time does not tell which one matched.
    let mut found = None;
    for (i, t) in auth.tokens.iter().enumerate() {
        if same_secret(auth, t.as_bytes(), presented) && found.is_none() {
            found = Some(i);
        }
    }
    found
}

/// A `/token` login: an htpasswd user with its password, or any user name
/// with a static token as the password (`docker login -u ci -p <token>`:
/// docker cannot send a bearer token of its own). The name the issued
/// token carries (the user, or `token#N`); None: refused.
pub fn login(auth: &AuthConfig, cache: &AuthCache, user: &str, password: &str) -> Option<String> {
    if let Some(i) = static_token(auth, password.as_bytes()) {
        return Principal::StaticToken(i).name();
    }
    check_password(auth, cache, user, password).then(|| user.to_string())
}

/// Whether `user` with `password` is an htpasswd user (bcrypt, once per
/// pair per worker; see the module comment).
pub fn check_password(auth: &AuthConfig, cache: &AuthCache, user: &str, password: &str) -> bool {
    let Some(u) = auth.users.iter().find(|u| u.name == user) else {
        // No such user: a bcrypt of the same cost anyway (against a real
        // user's hash, which a guess cannot pass as another user's), so
        // that the answer's time does not tell which users exist.
        if let Some(any) = auth.users.first() {
            let _ = bcrypt::verify(password, &any.hash);
        }
        return false;
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, password.as_bytes());
    if let Some((hash, known)) = cache.verified.borrow().get(user) {
        if *hash == u.hash {
            return same_secret(auth, known, digest.as_ref());
        }
    }
    if !bcrypt::verify(password, &u.hash).unwrap_or(false) {
        return false;
    }
    let mut memo = cache.verified.borrow_mut();
    if memo.len() >= MAX_VERIFIED {
        memo.clear();
    }
    let mut d = [0u8; 32];
    d.copy_from_slice(digest.as_ref());
    memo.insert(user.to_string(), (u.hash.clone(), d));
    true
}

/// The `user:password` of a `Basic` `Authorization` value.
pub fn basic_credentials(value: &[u8]) -> Option<(String, String)> {
    let v = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(base64::standard_decode(rest.trim())?).ok()?;
    let (u, p) = decoded.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// A repository request (or a `/v2/` ping, `repo` None) to decide.
pub struct Ask<'a> {
    /// The registry's name.
    pub registry: &'a str,
    /// The repository as the client named it (what tokens list), and as
    /// the upstream names it (what `anonymous` patterns match, qualified).
    pub repo: Option<(&'a str, &'a str)>,
}

/// Why a request is not admitted: answered 401 with the mirror's
/// challenge, so that the client logs in (or gets a fresh token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unadmitted {
    /// No credentials, and not an anonymous repository.
    LoginRequired,
    /// A token that is not the mirror's, has expired, or names another
    /// registry or repository.
    BadToken,
}

impl Unadmitted {
    pub fn reply(&self) -> ErrorReply {
        let m = match self {
            Unadmitted::LoginRequired => "authentication required: log in to this mirror",
            Unadmitted::BadToken => {
                "the token is not valid here (forged, expired, or for another repository)"
            }
        };
        ErrorReply::new(401, ErrorCode::Unauthorized, m)
    }
}

/// Who a request's credentials name, checked but not yet authorized: a
/// static token's name or the user of a mirror token whose MAC holds and
/// which has not expired. The per-client limits key on it before routing
/// (a user with limits of their own); whether that user may have the
/// repository is `admit`'s question, asked later in `pull`. Costs one
/// HMAC, and nothing without `Authorization: Bearer`; a Basic login (only
/// `/token` takes one) is never verified here, where bcrypt would run on
/// the request path.
pub fn identify(auth: &AuthConfig, authorization: Option<&[u8]>) -> Option<String> {
    let token = bearer(authorization)?;
    if let Some(i) = static_token(auth, token) {
        return Principal::StaticToken(i).name();
    }
    let claims = verify(auth, std::str::from_utf8(token).ok()?, now_secs())?;
    Principal::User(claims.user)
        .name()
        .filter(|u| !u.is_empty())
}

/// The credentials of `Authorization: Bearer <token>`, if that is what it is.
fn bearer(authorization: Option<&[u8]>) -> Option<&[u8]> {
    authorization.and_then(|v| {
        let v = v.trim_ascii();
        let (scheme, rest) = v.split_at(v.iter().position(|&b| b == b' ')?);
        scheme
            .eq_ignore_ascii_case(b"bearer")
            .then(|| rest.trim_ascii())
    })
}

/// The admit step of mirror authentication for a registry request.
pub fn admit(
    auth: &AuthConfig,
    authorization: Option<&[u8]>,
    ask: &Ask<'_>,
) -> Result<Principal, Unadmitted> {
    let bearer = bearer(authorization);
    let anonymous_ok = |ask: &Ask<'_>| {
        ask.repo.is_some_and(|(_, upstream)| {
            let q = format!("{}/{upstream}", ask.registry);
            auth.anonymous.iter().any(|p| p.glob.matches(&q))
        })
    };
    let Some(token) = bearer else {
        return match anonymous_ok(ask) {
            true => Ok(Principal::Anonymous),
            false => Err(Unadmitted::LoginRequired),
        };
    };
    if let Some(i) = static_token(auth, token) {
        return Ok(Principal::StaticToken(i));
    }
    let claims = std::str::from_utf8(token)
        .ok()
        .and_then(|t| verify(auth, t, now_secs()))
        .filter(|c| c.registry == ask.registry)
        .ok_or(Unadmitted::BadToken)?;
    if let Some((client_repo, _)) = ask.repo {
        if !claims.repos.iter().any(|r| r == client_repo) {
            return Err(Unadmitted::BadToken);
        }
    }
    if claims.user.is_empty() {
        // Issued without a login: what anonymous clients may have, and a
        // ping (which then says "log in" only for what needs it).
        return match ask.repo.is_none() || anonymous_ok(ask) {
            true => Ok(Principal::Anonymous),
            false => Err(Unadmitted::LoginRequired),
        };
    }
    Ok(Principal::User(claims.user))
}

/// A token for the repositories named by the `scope` parameters of a
/// `/token` query (`repository:<name>:pull`, pull only), for `user`
/// (empty: no login), on `registry`; with its lifetime in seconds.
pub fn issue(auth: &AuthConfig, user: &str, registry: &str, scopes: &[String]) -> (String, u64) {
    let mut repos: Vec<String> = Vec::new();
    for s in scopes.iter().flat_map(|s| s.split(' ')) {
        let mut parts = s.split(':');
        if let (Some("repository"), Some(name), Some(actions)) =
            (parts.next(), parts.next(), parts.next())
        {
            if actions.split(',').any(|a| a == "pull") && !repos.iter().any(|r| r == name) {
                repos.push(name.to_string());
            }
        }
    }
    let ttl = auth.token_ttl.as_secs();
    let claims = Claims {
        user: user.to_string(),
        registry: registry.to_string(),
        expires: now_secs() + ttl,
        repos,
    };
    (mint(auth, &claims), ttl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg() -> AuthConfig {
        AuthConfig {
            users: vec![crate::config::auth::User {
                name: "ci".into(),
                hash: bcrypt::hash("s3cret", 4).unwrap(),
            }],
            tokens: vec!["static-token-0123456789".into()],
            anonymous: vec![],
            key: Some(vec![7; 32]),
            token_ttl: Duration::from_secs(60),
        }
    }

    #[test]
    fn an_issued_token_verifies_and_a_changed_one_does_not() {
        let a = cfg();
        let (t, _) = issue(&a, "ci", "docker.io", &["repository:library/x:pull".into()]);
        let c = verify(&a, &t, now_secs()).unwrap();
        assert_eq!(c.user, "ci");
        assert_eq!(c.repos, ["library/x"]);
        let mut forged = t.clone().into_bytes();
        let i = TOKEN_PREFIX.len() + 2;
        forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
        assert!(verify(&a, std::str::from_utf8(&forged).unwrap(), now_secs()).is_none());
        assert!(verify(&a, &t, now_secs() + 61).is_none(), "expired");
        let other = AuthConfig {
            key: Some(vec![8; 32]),
            ..cfg()
        };
        assert!(verify(&other, &t, now_secs()).is_none(), "another key");
    }

    #[test]
    fn a_verified_password_is_remembered_and_a_wrong_one_refused() {
        let a = cfg();
        let cache = AuthCache::default();
        assert!(!check_password(&a, &cache, "ci", "wrong"));
        assert!(cache.verified.borrow().is_empty());
        assert!(check_password(&a, &cache, "ci", "s3cret"));
        assert_eq!(cache.verified.borrow().len(), 1);
        assert!(check_password(&a, &cache, "ci", "s3cret"));
        assert!(!check_password(&a, &cache, "ci", "s3cret2"));
        assert!(!check_password(&a, &cache, "nobody", "s3cret"));
    }

    #[test]
    fn basic_credentials_are_decoded() {
        assert_eq!(
            basic_credentials(b"Basic Y2k6czNjcmV0"),
            Some(("ci".into(), "s3cret".into()))
        );
        assert_eq!(basic_credentials(b"Bearer Y2k6czNjcmV0"), None);
    }
}
