//! Base64 encoding (RFC 4648): the standard alphabet with padding (HTTP
//! Basic credentials) and the URL-safe one without (JOSE, ACME).

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// `data` in the standard alphabet, `=`-padded, appended to `out`.
pub fn encode_standard(data: &[u8], out: &mut Vec<u8>) {
    encode(data, STANDARD, true, out);
}

/// `data` in the URL-safe alphabet without padding (RFC 7515 2's
/// `BASE64URL`).
pub fn url(data: &[u8]) -> String {
    let mut out = Vec::with_capacity(data.len().div_ceil(3) * 4);
    encode(data, URL_SAFE, false, &mut out);
    String::from_utf8(out).expect("the alphabet is ASCII")
}

fn encode(data: &[u8], alphabet: &[u8; 64], pad: bool, out: &mut Vec<u8>) {
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(alphabet[(n >> (18 - 6 * i)) as usize & 63]);
            } else if pad {
                out.push(b'=');
            }
        }
    }
}

/// Decodes the standard alphabet, `=` padding optional (HTTP Basic
/// credentials). None for anything else.
pub fn standard_decode(s: &str) -> Option<Vec<u8>> {
    decode(s.trim_end_matches('='), STANDARD)
}

/// Decodes the URL-safe alphabet without padding (what [`url`] writes).
pub fn url_decode(s: &str) -> Option<Vec<u8>> {
    decode(s, URL_SAFE)
}

fn decode(s: &str, alphabet: &[u8; 64]) -> Option<Vec<u8>> {
    if s.len() % 4 == 1 {
        return None; // no whole byte in a last group of one character
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3 + 2);
    for group in s.as_bytes().chunks(4) {
        let mut n = 0u32;
        for (i, c) in group.iter().enumerate() {
            let v = alphabet.iter().position(|a| a == c)? as u32;
            n |= v << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..group.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_reverses_encoding() {
        for raw in ["", "f", "fo", "foo", "foob", "fooba", "foobar"] {
            assert_eq!(url_decode(&url(raw.as_bytes())).unwrap(), raw.as_bytes());
            let mut std = Vec::new();
            encode_standard(raw.as_bytes(), &mut std);
            let std = String::from_utf8(std).unwrap();
            assert_eq!(standard_decode(&std).unwrap(), raw.as_bytes());
        }
        assert_eq!(url_decode("-_8").unwrap(), [0xfb, 0xff]);
        assert_eq!(url_decode("Z"), None);
        assert_eq!(url_decode("Zm9v!"), None);
    }

    #[test]
    fn url_safe_has_no_padding_and_no_plus_or_slash() {
        // RFC 4648 10's test vectors, unpadded.
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(url(raw.as_bytes()), enc);
        }
        assert_eq!(url(&[0xfb, 0xff]), "-_8");
        let mut std = Vec::new();
        encode_standard(&[0xfb, 0xff], &mut std);
        assert_eq!(std, b"+/8=");
    }
}
