//! The account key and JWS (RFC 7515) as ACME uses them (RFC 8555 6.2):
//! ES256 (ECDSA P-256 with SHA-256, ring), flattened JSON serialization, the
//! key as a JWK in `newAccount` and by its account URL (`kid`) after that,
//! and the key's thumbprint (RFC 7638) for key authorizations.

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde::Serialize;

use crate::wire::base64;

/// The ACME account's key pair, with its PKCS#8 form for storage.
pub struct AccountKey {
    pair: EcdsaKeyPair,
    pkcs8: Vec<u8>,
    rng: SystemRandom,
}

/// How a request names its signer: by key before the account exists, by
/// account URL after (RFC 8555 6.2).
pub enum Signer<'a> {
    Jwk,
    Kid(&'a str),
}

#[derive(Serialize)]
struct Protected<'a> {
    alg: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    jwk: Option<Jwk>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<&'a str>,
    nonce: &'a str,
    url: &'a str,
}

/// The public key as a JWK. Fields in lexicographic order, as RFC 7638
/// requires for the thumbprint (serde keeps declaration order).
#[derive(Serialize)]
struct Jwk {
    crv: &'static str,
    kty: &'static str,
    x: String,
    y: String,
}

#[derive(Serialize)]
struct Flattened {
    protected: String,
    payload: String,
    signature: String,
}

impl AccountKey {
    /// A new P-256 key.
    pub fn generate() -> Result<AccountKey, String> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| "cannot generate an ECDSA key".to_string())?;
        AccountKey::from_pkcs8(pkcs8.as_ref())
    }

    /// A stored key (PKCS#8 DER).
    pub fn from_pkcs8(der: &[u8]) -> Result<AccountKey, String> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| format!("not a P-256 PKCS#8 key: {e}"))?;
        Ok(AccountKey {
            pair,
            pkcs8: der.to_vec(),
            rng,
        })
    }

    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    fn jwk(&self) -> Jwk {
        // Uncompressed point: 0x04 || X (32 bytes) || Y (32 bytes).
        let point = self.pair.public_key().as_ref();
        Jwk {
            crv: "P-256",
            kty: "EC",
            x: base64::url(&point[1..33]),
            y: base64::url(&point[33..65]),
        }
    }

    /// RFC 7638: base64url(SHA-256(the JWK's required members, sorted, no
    /// whitespace)).
    pub fn thumbprint(&self) -> String {
        let json = serde_json::to_vec(&self.jwk()).expect("a JWK serializes");
        base64::url(ring::digest::digest(&ring::digest::SHA256, &json).as_ref())
    }

    /// The key authorization for a challenge `token` (RFC 8555 8.1).
    pub fn key_authorization(&self, token: &str) -> String {
        format!("{token}.{}", self.thumbprint())
    }

    /// A signed request body for `url`: `payload` is JSON, or empty for a
    /// POST-as-GET (RFC 8555 6.3).
    pub fn sign(
        &self,
        signer: Signer<'_>,
        nonce: &str,
        url: &str,
        payload: &str,
    ) -> Result<String, String> {
        let (jwk, kid) = match signer {
            Signer::Jwk => (Some(self.jwk()), None),
            Signer::Kid(k) => (None, Some(k)),
        };
        let protected = Protected {
            alg: "ES256",
            jwk,
            kid,
            nonce,
            url,
        };
        let protected =
            base64::url(&serde_json::to_vec(&protected).expect("a JWS header serializes"));
        let payload = base64::url(payload.as_bytes());
        let signing_input = format!("{protected}.{payload}");
        // ring's FIXED encoding is r || s, 32 bytes each: JWS's ES256 form.
        let signature = self
            .pair
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| "ECDSA signing failed".to_string())?;
        Ok(serde_json::to_string(&Flattened {
            protected,
            payload,
            signature: base64::url(signature.as_ref()),
        })
        .expect("a JWS serializes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};

    fn b64url_decode(s: &str) -> Vec<u8> {
        let val = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => panic!("not base64url: {c}"),
        };
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u32, 0);
        for &c in s.as_bytes() {
            acc = (acc << 6) | u32::from(val(c));
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        out
    }

    #[test]
    fn a_signed_request_verifies_with_the_key_it_names() {
        let key = AccountKey::generate().unwrap();
        let body = key
            .sign(
                Signer::Jwk,
                "n0nce",
                "https://ca.test/new-acct",
                "{\"a\":1}",
            )
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let (p, pl, sig) = (
            v["protected"].as_str().unwrap(),
            v["payload"].as_str().unwrap(),
            v["signature"].as_str().unwrap(),
        );
        let header: serde_json::Value = serde_json::from_slice(&b64url_decode(p)).unwrap();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["nonce"], "n0nce");
        assert_eq!(header["url"], "https://ca.test/new-acct");
        assert!(header.get("kid").is_none());
        let x = b64url_decode(header["jwk"]["x"].as_str().unwrap());
        let y = b64url_decode(header["jwk"]["y"].as_str().unwrap());
        let point = [&[4u8][..], &x, &y].concat();
        assert_eq!(b64url_decode(pl), b"{\"a\":1}");
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
            .verify(format!("{p}.{pl}").as_bytes(), &b64url_decode(sig))
            .expect("the signature verifies");

        let by_kid = key
            .sign(
                Signer::Kid("https://ca.test/acct/1"),
                "n",
                "https://ca.test/x",
                "",
            )
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&by_kid).unwrap();
        let header: serde_json::Value =
            serde_json::from_slice(&b64url_decode(v["protected"].as_str().unwrap())).unwrap();
        assert_eq!(header["kid"], "https://ca.test/acct/1");
        assert!(header.get("jwk").is_none());
        assert_eq!(v["payload"], "", "POST-as-GET has an empty payload");
    }

    #[test]
    fn the_thumbprint_follows_rfc_7638_and_survives_storage() {
        let key = AccountKey::generate().unwrap();
        let again = AccountKey::from_pkcs8(key.pkcs8()).unwrap();
        assert_eq!(key.thumbprint(), again.thumbprint());
        // The hashed JSON: required members, sorted, no whitespace.
        let json = String::from_utf8(serde_json::to_vec(&key.jwk()).unwrap()).unwrap();
        assert!(
            json.starts_with("{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\""),
            "{json}"
        );
        assert_eq!(key.thumbprint().len(), 43, "base64url of 32 bytes");
        assert_eq!(
            key.key_authorization("tok"),
            format!("tok.{}", key.thumbprint())
        );
    }
}
