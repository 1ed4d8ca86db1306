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

#[cfg(test)]
mod tests {
    use super::*;

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
