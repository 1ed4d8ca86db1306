//! The `[auth]` table: mirror authentication. Users from an htpasswd file
//! (bcrypt hashes only), static bearer tokens (CI), the repositories left
//! open to anonymous clients, and the key that signs the tokens ocirelay
//! issues. Without the table clients' credentials pass through to the
//! upstream as before. Checked here, at load; `gate::auth` applies it.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::access::{Pattern, RepoGlob};
use super::parse_duration;

/// The shortest static token accepted: a guessable one would open the
/// mirror to anyone.
const MIN_TOKEN_LEN: usize = 16;
/// The shortest token key accepted from `key_file`, in bytes (HMAC-SHA256's
/// block of security).
const MIN_KEY_LEN: usize = 32;

/// One htpasswd user.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// The bcrypt hash as written (`$2y$10$...`).
    pub hash: String,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "User({})", self.name)
    }
}

/// Mirror authentication, from `[auth]`. `Debug` shows no secret.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthConfig {
    pub users: Vec<User>,
    /// Static bearer tokens.
    pub tokens: Vec<String>,
    /// Patterns (`<registry>/<repository>`) pulled without a login.
    pub anonymous: Vec<Pattern>,
    /// The token key from `key_file`; `None`: one made at start.
    pub key: Option<Vec<u8>>,
    /// How long an issued token is valid.
    pub token_ttl: Duration,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("users", &self.users)
            .field("tokens", &self.tokens.len())
            .field("anonymous", &self.anonymous)
            .field("key_file", &self.key.is_some())
            .field("token_ttl", &self.token_ttl)
            .finish()
    }
}

/// `[auth]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileAuth {
    htpasswd: Option<Spanned<String>>,
    #[serde(default)]
    tokens: Vec<Spanned<String>>,
    tokens_file: Option<Spanned<String>>,
    #[serde(default)]
    anonymous: Vec<Spanned<String>>,
    key_file: Option<Spanned<String>>,
    token_ttl: Option<Spanned<String>>,
}

type Fail = (std::ops::Range<usize>, String);

/// Checks `[auth]` (whose span is `span`) into an [`AuthConfig`].
pub(super) fn parse_auth(
    text: &str,
    a: &FileAuth,
    span: std::ops::Range<usize>,
) -> Result<AuthConfig, Fail> {
    let users = match &a.htpasswd {
        Some(p) => read_htpasswd(Path::new(p.get_ref())).map_err(|m| (p.span(), m))?,
        None => Vec::new(),
    };
    let mut tokens = Vec::new();
    for t in &a.tokens {
        tokens.push(check_token(t.get_ref()).map_err(|m| (t.span(), m))?);
    }
    if let Some(f) = &a.tokens_file {
        let body = std::fs::read_to_string(f.get_ref())
            .map_err(|e| (f.span(), format!("tokens_file {}: {e}", f.get_ref())))?;
        for (i, line) in body.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let t = check_token(line).map_err(|m| {
                (
                    f.span(),
                    format!("tokens_file {} line {}: {m}", f.get_ref(), i + 1),
                )
            })?;
            tokens.push(t);
        }
    }
    if users.is_empty() && tokens.is_empty() {
        return Err((
            span,
            "[auth] has no users and no tokens: set `htpasswd`, `tokens` or `tokens_file`".into(),
        ));
    }
    let mut anonymous = Vec::new();
    for p in &a.anonymous {
        let glob = RepoGlob::parse(p.get_ref().trim())
            .map_err(|e| (p.span(), format!("anonymous pattern {:?} {e}", p.get_ref())))?;
        anonymous.push(Pattern {
            glob,
            line: super::line_of(text, p.span().start),
        });
    }
    let key = match &a.key_file {
        Some(f) => {
            let k = std::fs::read(f.get_ref())
                .map_err(|e| (f.span(), format!("key_file {}: {e}", f.get_ref())))?;
            if k.len() < MIN_KEY_LEN {
                return Err((
                    f.span(),
                    format!(
                        "key_file {} holds {} bytes; at least {MIN_KEY_LEN} random bytes are needed (head -c 32 /dev/urandom > FILE)",
                        f.get_ref(),
                        k.len()
                    ),
                ));
            }
            Some(k)
        }
        None => None,
    };
    let token_ttl = match &a.token_ttl {
        Some(t) => parse_duration(t.get_ref())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                (
                    t.span(),
                    format!("token_ttl {:?} is not a duration", t.get_ref()),
                )
            })?,
        None => Duration::from_secs(3600),
    };
    Ok(AuthConfig {
        users,
        tokens,
        anonymous,
        key,
        token_ttl,
    })
}

fn check_token(t: &str) -> Result<String, String> {
    let t = t.trim();
    if t.len() < MIN_TOKEN_LEN || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "a static token must be at least {MIN_TOKEN_LEN} printable characters, without spaces"
        ));
    }
    Ok(t.to_string())
}

/// An htpasswd file's users. Only bcrypt (`htpasswd -B`) is taken: the
/// other kinds (MD5 `$apr1$`, `{SHA}`, crypt) are too cheap to guess.
/// Errors name the file's line.
pub fn read_htpasswd(path: &Path) -> Result<Vec<User>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("htpasswd {}: {e}", path.display()))?;
    let mut users: Vec<User> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |m: String| format!("htpasswd {} line {}: {m}", path.display(), i + 1);
        let Some((name, hash)) = line.split_once(':') else {
            return Err(at("not `user:hash`".into()));
        };
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err(at("empty user name".into()));
        }
        if name.starts_with("token#") {
            // What static-token logins are called in tokens and logs.
            return Err(at(format!("user {name}: `token#` names are reserved")));
        }
        let bcrypt =
            ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) && hash.len() == 60;
        if !bcrypt {
            return Err(at(format!(
                "user {name}: not a bcrypt hash (only bcrypt is accepted: htpasswd -B)"
            )));
        }
        if users.iter().any(|u| u.name == name) {
            return Err(at(format!("user {name} is listed twice")));
        }
        users.push(User {
            name: name.to_string(),
            hash: hash.to_string(),
        });
    }
    Ok(users)
}
