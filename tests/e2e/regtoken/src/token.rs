//! JWTs in the shape the distribution registry's `auth: token` controller verifies:
//! ES256 signature over `header.claims`, the signing certificate (issued by a root in
//! the registry's `rootcertbundle`) in the header's `x5c`, string `aud` = service,
//! `iss` = the configured issuer, `exp`/`nbf`/`iat`, and `access` entries.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use serde_json::json;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    pub typ: String,
    pub name: String,
    pub actions: Vec<String>,
}

/// Parses `repository:library/busybox:pull,push` (the name itself may not contain ':'
/// for repositories, but `registry:catalog:*` and names with a port-like suffix are
/// handled by splitting on the first and the last colon).
pub fn parse_scope(s: &str) -> Option<Access> {
    let (typ, rest) = s.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    if typ.is_empty() || name.is_empty() {
        return None;
    }
    Some(Access {
        typ: typ.to_string(),
        name: name.to_string(),
        actions: actions
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

/// Whether a repository is private: its name starts with one of `private`
/// (`private/` covers a namespace, `owner/private` one repository and its children).
pub fn is_private(name: &str, private: &[String]) -> bool {
    private.iter().any(|p| {
        name.strip_prefix(p.as_str())
            .is_some_and(|rest| p.ends_with('/') || rest.is_empty() || rest.starts_with('/'))
    })
}

/// The access policy of the fake upstream:
/// anonymous callers may pull anything that is not private (see [`is_private`]);
/// any authenticated user may pull everything and push / delete.
pub fn grant(user: Option<&str>, want: &Access, private: &[String]) -> Access {
    let mut actions = Vec::new();
    if want.typ == "repository" {
        let private = is_private(&want.name, private);
        for a in &want.actions {
            let ok = match a.as_str() {
                "pull" => user.is_some() || !private,
                "push" | "delete" | "*" => user.is_some(),
                _ => false,
            };
            if ok && !actions.contains(a) {
                actions.push(a.clone());
            }
        }
    }
    Access {
        typ: want.typ.clone(),
        name: want.name.clone(),
        actions,
    }
}

pub struct Signer {
    key: EcdsaKeyPair,
    x5c: Vec<String>,
    pub issuer: String,
    rng: SystemRandom,
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Signer {
    pub fn load(dir: &Path, issuer: &str) -> Result<Signer, Box<dyn std::error::Error>> {
        let key_path = dir.join("token-signer-key.pem");
        let cert_path = dir.join("token-signer.pem");
        let key = PrivatePkcs8KeyDer::from_pem_file(&key_path)
            .map_err(|e| format!("{}: {e}", key_path.display()))?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            key.secret_pkcs8_der(),
            &rng,
        )
        .map_err(|e| format!("{}: not a P-256 PKCS#8 key: {e}", key_path.display()))?;
        let mut x5c = Vec::new();
        for c in CertificateDer::pem_file_iter(&cert_path)
            .map_err(|e| format!("{}: {e}", cert_path.display()))?
        {
            let c = c.map_err(|e| format!("{}: {e}", cert_path.display()))?;
            x5c.push(STANDARD.encode(c.as_ref()));
        }
        if x5c.is_empty() {
            return Err(format!("{}: no certificate", cert_path.display()).into());
        }
        Ok(Signer {
            key,
            x5c,
            issuer: issuer.to_string(),
            rng,
        })
    }

    pub fn random_hex(&self, n: usize) -> String {
        let mut b = vec![0u8; n];
        self.rng.fill(&mut b).expect("rng");
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    pub fn issue(&self, subject: &str, audience: &str, access: &[Access], ttl: i64) -> String {
        let now = now();
        let header = json!({"typ": "JWT", "alg": "ES256", "x5c": self.x5c});
        let access: Vec<_> = access
            .iter()
            .map(|a| json!({"type": a.typ, "name": a.name, "actions": a.actions}))
            .collect();
        let claims = json!({
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "exp": now + ttl,
            "nbf": now - 1,
            "iat": now,
            "jti": self.random_hex(16),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .expect("ecdsa sign");
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

/// RFC 3339 UTC timestamp, e.g. `2023-06-03T23:43:21Z`.
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from a day count since 1970-01-01 (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        let a = parse_scope("repository:library/busybox:pull,push").unwrap();
        assert_eq!(a.name, "library/busybox");
        assert_eq!(a.actions, vec!["pull", "push"]);
        let c = parse_scope("registry:catalog:*").unwrap();
        assert_eq!((c.typ.as_str(), c.name.as_str()), ("registry", "catalog"));
        assert!(parse_scope("repository").is_none());
    }

    #[test]
    fn policy() {
        let hub = vec!["private/".to_string()];
        let want = parse_scope("repository:private/secret:pull,push").unwrap();
        assert!(grant(None, &want, &hub).actions.is_empty());
        assert_eq!(
            grant(Some("alice"), &want, &hub).actions,
            vec!["pull", "push"]
        );
        let want = parse_scope("repository:library/small:pull,push").unwrap();
        assert_eq!(grant(None, &want, &hub).actions, vec!["pull"]);
        let gh = vec!["owner/private".to_string()];
        let want = parse_scope("repository:owner/private:pull").unwrap();
        assert!(grant(None, &want, &gh).actions.is_empty());
        assert_eq!(grant(Some("octo"), &want, &gh).actions, vec!["pull"]);
        assert!(is_private("owner/private/sub", &gh));
        assert!(!is_private("owner/privateer", &gh));
        assert!(!is_private("owner/tool", &gh));
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_685_835_801), "2023-06-03T23:43:21Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
