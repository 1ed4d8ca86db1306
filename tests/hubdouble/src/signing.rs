//! HMAC-SHA256 signing: bearer tokens, refresh tokens and the CDN's signed URLs (Docker
//! Hub's `verify=` and CloudFront's `Expires=&Signature=&Key-Pair-Id=`).

use base64::Engine;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// What a valid bearer token grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Claims {
    /// Unix seconds after which the token is refused.
    pub exp: i64,
    /// Authenticated user, empty for anonymous.
    pub sub: String,
    /// Repositories the token may pull.
    pub pull: Vec<String>,
}

/// Why a signed URL was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UrlError {
    Missing,
    Bad,
    Expired,
}

/// Holds the per-instance secret.
pub(crate) struct Signer {
    key: hmac::Key,
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Signer {
    pub(crate) fn new() -> Signer {
        let mut secret = [0u8; 32];
        SystemRandom::new()
            .fill(&mut secret)
            .expect("system randomness");
        Signer {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
        }
    }

    fn mac(&self, domain: &str, data: &[u8]) -> String {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(domain.as_bytes());
        ctx.update(b"\0");
        ctx.update(data);
        hex(ctx.sign().as_ref())
    }

    fn check(&self, domain: &str, data: &[u8], mac_hex: &str) -> bool {
        let Some(tag) = unhex(mac_hex) else {
            return false;
        };
        let mut msg = Vec::with_capacity(domain.len() + 1 + data.len());
        msg.extend_from_slice(domain.as_bytes());
        msg.push(0);
        msg.extend_from_slice(data);
        hmac::verify(&self.key, &msg, &tag).is_ok()
    }

    /// Mints an opaque bearer token `hd1.<hex payload>.<hex mac>`.
    pub(crate) fn mint_token(&self, claims: &Claims) -> String {
        let payload = format!("{};{};{}", claims.exp, claims.sub, claims.pull.join(","));
        let payload = hex(payload.as_bytes());
        let mac = self.mac("token", payload.as_bytes());
        format!("hd1.{payload}.{mac}")
    }

    /// Verifies signature and expiry; `None` for anything invalid or expired.
    pub(crate) fn verify_token(&self, token: &str, now: i64) -> Option<Claims> {
        let rest = token.strip_prefix("hd1.")?;
        let (payload, mac) = rest.split_once('.')?;
        if !self.check("token", payload.as_bytes(), mac) {
            return None;
        }
        let text = String::from_utf8(unhex(payload)?).ok()?;
        let mut parts = text.splitn(3, ';');
        let exp: i64 = parts.next()?.parse().ok()?;
        let sub = parts.next()?.to_string();
        let pull = parts
            .next()?
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        (now <= exp).then_some(Claims { exp, sub, pull })
    }

    /// Mints a refresh token naming `user`.
    pub(crate) fn mint_refresh(&self, user: &str) -> String {
        let payload = hex(user.as_bytes());
        let mac = self.mac("refresh", payload.as_bytes());
        format!("hdr1.{payload}.{mac}")
    }

    /// The user a refresh token names, if it is genuine.
    pub(crate) fn verify_refresh(&self, token: &str) -> Option<String> {
        let (payload, mac) = token.strip_prefix("hdr1.")?.split_once('.')?;
        if !self.check("refresh", payload.as_bytes(), mac) {
            return None;
        }
        String::from_utf8(unhex(payload)?).ok()
    }

    /// The `verify=` value for `path`: `<expiry unix secs>-<hex hmac(path, expiry)>`.
    pub(crate) fn sign_url(&self, path: &str, exp: i64) -> String {
        let data = format!("{path}\n{exp}");
        format!("{exp}-{}", self.mac("url", data.as_bytes()))
    }

    /// Checks a `verify=` value against `path`.
    pub(crate) fn verify_url(
        &self,
        path: &str,
        verify: Option<&str>,
        now: i64,
    ) -> Result<(), UrlError> {
        let verify = verify.ok_or(UrlError::Missing)?;
        let (exp, mac) = verify.split_once('-').ok_or(UrlError::Bad)?;
        let exp_n: i64 = exp.parse().map_err(|_| UrlError::Bad)?;
        let data = format!("{path}\n{exp}");
        if !self.check("url", data.as_bytes(), mac) {
            return Err(UrlError::Bad);
        }
        if now > exp_n {
            return Err(UrlError::Expired);
        }
        Ok(())
    }
}

/// CloudFront's URL-safe base64: standard alphabet with `+` -> `-`, `=` -> `_`, `/` -> `~`.
fn cloudfront_b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(bytes)
        .chars()
        .map(|c| match c {
            '+' => '-',
            '=' => '_',
            '/' => '~',
            c => c,
        })
        .collect()
}

fn cloudfront_unb64(s: &str) -> Option<Vec<u8>> {
    let std: String = s
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '=',
            '~' => '/',
            c => c,
        })
        .collect();
    base64::engine::general_purpose::STANDARD.decode(std).ok()
}

impl Signer {
    fn cloudfront_data(path: &str, expires: &str, key_pair_id: &str) -> String {
        format!("{path}\n{expires}\n{key_pair_id}")
    }

    /// The `Signature=` value of a CloudFront-style signed URL for `path`.
    pub(crate) fn sign_cloudfront(&self, path: &str, exp: i64, key_pair_id: &str) -> String {
        let data = Self::cloudfront_data(path, &exp.to_string(), key_pair_id);
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(b"cloudfront\0");
        ctx.update(data.as_bytes());
        cloudfront_b64(ctx.sign().as_ref())
    }

    /// Checks the `Expires=` / `Signature=` / `Key-Pair-Id=` values against `path`.
    pub(crate) fn verify_cloudfront(
        &self,
        path: &str,
        expires: Option<&str>,
        signature: Option<&str>,
        key_pair_id: Option<&str>,
        now: i64,
    ) -> Result<(), UrlError> {
        let (Some(expires), Some(signature), Some(key_pair_id)) = (expires, signature, key_pair_id)
        else {
            return Err(UrlError::Missing);
        };
        let exp: i64 = expires.parse().map_err(|_| UrlError::Bad)?;
        let tag = cloudfront_unb64(signature).ok_or(UrlError::Bad)?;
        let data = Self::cloudfront_data(path, expires, key_pair_id);
        let mut msg = b"cloudfront\0".to_vec();
        msg.extend_from_slice(data.as_bytes());
        hmac::verify(&self.key, &msg, &tag).map_err(|_| UrlError::Bad)?;
        if now > exp {
            return Err(UrlError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_expire() {
        let s = Signer::new();
        let c = Claims {
            exp: 100,
            sub: "alice".into(),
            pull: vec!["library/alpine".into(), "private/secret".into()],
        };
        let t = s.mint_token(&c);
        assert_eq!(s.verify_token(&t, 50), Some(c));
        assert_eq!(s.verify_token(&t, 101), None);
        let mut forged = t.clone();
        forged.push('0');
        assert_eq!(s.verify_token(&forged, 50), None);
        assert_eq!(Signer::new().verify_token(&t, 50), None);
    }

    #[test]
    fn urls_sign_and_expire() {
        let s = Signer::new();
        let v = s.sign_url("/a/b", 100);
        assert_eq!(s.verify_url("/a/b", Some(&v), 99), Ok(()));
        assert_eq!(s.verify_url("/a/b", Some(&v), 101), Err(UrlError::Expired));
        assert_eq!(s.verify_url("/a/c", Some(&v), 99), Err(UrlError::Bad));
        assert_eq!(s.verify_url("/a/b", None, 99), Err(UrlError::Missing));
        let sig = s.sign_cloudfront("/a/b", 100, "K1");
        assert!(!sig.contains(['+', '/', '=']), "{sig}");
        let cf = |p: &str, e: &str, k: &str, now| {
            s.verify_cloudfront(p, Some(e), Some(&sig), Some(k), now)
        };
        assert_eq!(cf("/a/b", "100", "K1", 99), Ok(()));
        assert_eq!(cf("/a/b", "100", "K1", 101), Err(UrlError::Expired));
        assert_eq!(cf("/a/b", "101", "K1", 99), Err(UrlError::Bad));
        assert_eq!(cf("/a/b", "100", "K2", 99), Err(UrlError::Bad));
        assert_eq!(cf("/a/c", "100", "K1", 99), Err(UrlError::Bad));
        let r = s.mint_refresh("alice");
        assert_eq!(s.verify_refresh(&r).as_deref(), Some("alice"));
    }
}
