//! Escaping client-controlled text for the logs. A request target, a user
//! agent or a repository name carries whatever a client sent: line breaks
//! that forge log lines (`\n`, `\r`, and U+2028/U+2029, where JavaScript
//! tools and some log viewers break lines), terminal control sequences
//! (C0, DEL, C1), characters that reorder what follows them (bidi
//! overrides), invalid UTF-8. Every client-controlled string goes through
//! one of these escapers, written straight into the log's buffer: no
//! allocation, and runs of plain ASCII are copied as they are.

/// What one escaper does with the characters that need it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    /// Inside a JSON string: `"`, `\` and C0 as JSON escapes; invalid UTF-8
    /// as U+FFFD (a JSON string is Unicode text: raw bytes have no form).
    Json,
    /// A text log line: `\`, C0 and DEL as `\xHH`, invalid bytes as `\xHH`
    /// (nothing is lost, and `\\` keeps the escapes unambiguous).
    Line,
    /// A space-separated text log field: [`Style::Line`], and spaces too.
    Field,
}

/// Writes `bytes` as a JSON string, quotes included.
pub fn json_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    escape(out, bytes, Style::Json);
    out.push(b'"');
}

/// Writes `bytes` for a text log line (spaces kept).
pub fn text_line(out: &mut Vec<u8>, bytes: &[u8]) {
    escape(out, bytes, Style::Line);
}

/// Writes `bytes` as one field of a space-separated text log line: what
/// [`text_line`] escapes, and spaces, so a field is always one token.
pub fn text_field(out: &mut Vec<u8>, bytes: &[u8]) {
    escape(out, bytes, Style::Field);
}

/// Non-ASCII characters escaped in every style: C1 controls (U+0085 is a
/// line break to some tools, U+009B starts terminal sequences), the line
/// and paragraph separators, and the bidi controls that reorder a line as
/// it is displayed.
fn escaped_everywhere(c: char) -> bool {
    matches!(c,
        '\u{80}'..='\u{9f}'
        | '\u{2028}' | '\u{2029}'
        | '\u{200e}' | '\u{200f}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}')
}

fn escape(out: &mut Vec<u8>, bytes: &[u8], style: Style) {
    for chunk in bytes.utf8_chunks() {
        escape_valid(out, chunk.valid(), style);
        for &b in chunk.invalid() {
            match style {
                // One replacement per invalid sequence would do; one per
                // byte keeps the count of what was there.
                Style::Json => out.extend_from_slice(b"\\ufffd"),
                Style::Line | Style::Field => hex_byte(out, b),
            }
        }
    }
}

fn escape_valid(out: &mut Vec<u8>, s: &str, style: Style) {
    let b = s.as_bytes();
    let mut plain = 0; // start of the run not yet copied
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let ascii_needs = match c {
            0x00..=0x1f | 0x7f | b'\\' => true,
            b'"' => style == Style::Json,
            b' ' => style == Style::Field,
            _ => false,
        };
        if c < 0x80 && !ascii_needs {
            i += 1;
            continue;
        }
        let ch = s[i..].chars().next().expect("i is on a char boundary");
        let width = ch.len_utf8();
        if c >= 0x80 && !escaped_everywhere(ch) {
            i += width;
            continue;
        }
        out.extend_from_slice(&b[plain..i]);
        match (style, c) {
            (Style::Json, b'"') => out.extend_from_slice(b"\\\""),
            (_, b'\\') => out.extend_from_slice(b"\\\\"),
            (Style::Json, b'\n') => out.extend_from_slice(b"\\n"),
            (Style::Json, b'\r') => out.extend_from_slice(b"\\r"),
            (Style::Json, b'\t') => out.extend_from_slice(b"\\t"),
            (Style::Json, _) => unicode(out, ch),
            (_, 0x00..=0x7f) => hex_byte(out, c),
            _ => unicode(out, ch),
        }
        i += width;
        plain = i;
    }
    out.extend_from_slice(&b[plain..]);
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `\xHH`
fn hex_byte(out: &mut Vec<u8>, b: u8) {
    out.extend_from_slice(&[
        b'\\',
        b'x',
        HEX[usize::from(b >> 4)],
        HEX[usize::from(b & 15)],
    ]);
}

/// `\uHHHH` (every escaped character is in the BMP).
fn unicode(out: &mut Vec<u8>, c: char) {
    let v = c as u32;
    debug_assert!(v <= 0xffff);
    out.extend_from_slice(b"\\u");
    for shift in [12, 8, 4, 0] {
        out.push(HEX[((v >> shift) & 15) as usize]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(b: &[u8]) -> String {
        let mut out = Vec::new();
        json_string(&mut out, b);
        String::from_utf8(out).expect("JSON output is UTF-8")
    }

    fn field(b: &[u8]) -> String {
        let mut out = Vec::new();
        text_field(&mut out, b);
        String::from_utf8(out).expect("text output is UTF-8")
    }

    #[test]
    fn plain_text_is_copied_as_it_is() {
        assert_eq!(json(b"/v2/library/alpine"), "\"/v2/library/alpine\"");
        assert_eq!(
            field("docker/27.0 (ünïcode 中文)".as_bytes()),
            "docker/27.0\\x20(ünïcode\\x20中文)"
        );
        let mut out = Vec::new();
        text_line(&mut out, b"a b");
        assert_eq!(out, b"a b");
    }

    #[test]
    fn json_escapes_quotes_backslashes_and_controls() {
        let s = json(b"a\"b\\c\nd\re\tf\x00g\x1b[31mh\x7f");
        assert_eq!(s, r#""a\"b\\c\nd\re\tf\u0000g\u001b[31mh\u007f""#);
        let v: String = serde_json::from_str(&s).unwrap();
        assert_eq!(v, "a\"b\\c\nd\re\tf\u{0}g\u{1b}[31mh\u{7f}");
    }

    #[test]
    fn line_and_paragraph_separators_c1_and_bidi_controls_are_escaped() {
        let hostile = "x\u{2028}y\u{2029}z\u{85}w\u{202e}v";
        assert_eq!(
            json(hostile.as_bytes()),
            r#""x\u2028y\u2029z\u0085w\u202ev""#
        );
        assert_eq!(field(hostile.as_bytes()), r"x\u2028y\u2029z\u0085w\u202ev");
    }

    #[test]
    fn invalid_utf8_is_replaced_in_json_and_kept_as_hex_in_text() {
        let s = json(b"ok\xff\xfe!");
        assert_eq!(s, r#""ok\ufffd\ufffd!""#);
        assert_eq!(
            serde_json::from_str::<String>(&s).unwrap(),
            "ok\u{fffd}\u{fffd}!"
        );
        assert_eq!(field(b"ok\xff\xfe!"), r"ok\xff\xfe!");
    }

    #[test]
    fn text_escapes_are_unambiguous() {
        // A backslash the client sent cannot pass for an escape.
        assert_eq!(field(br"\x0a"), r"\\x0a");
        assert_eq!(field(b"\n"), r"\x0a");
        assert_eq!(field(b"a\r\nGET /forged"), r"a\x0d\x0aGET\x20/forged");
    }
}
