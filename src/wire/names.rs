//! Registry vocabulary: repository names, tags, digests and references,
//! validated against the distribution grammar once, at the edge.
//!
//! All types borrow the request buffer; nothing here allocates.

use std::fmt;

/// Longest repository name the distribution spec allows.
pub const MAX_NAME_LEN: usize = 255;
/// Longest tag the distribution spec allows.
pub const MAX_TAG_LEN: usize = 128;

/// A validated repository name such as `library/alpine` or `owner/img`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RepoName<'a>(&'a str);

/// A validated tag such as `3.20` or `latest`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Tag<'a>(&'a str);

/// A validated content digest `algorithm:encoded`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Digest<'a> {
    full: &'a str,
    colon: usize,
}

/// What a manifest request names: a tag or a digest.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Reference<'a> {
    Tag(Tag<'a>),
    Digest(Digest<'a>),
}

/// Why a name, tag or digest was refused; maps onto the OCI error codes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NameError {
    Name,
    Tag,
    Digest,
}

impl<'a> RepoName<'a> {
    /// Parses a repository name: `component ("/" component)*`, each component
    /// `[a-z0-9]+ (separator [a-z0-9]+)*` with separator `.`, `_`, `__` or `-+`.
    pub fn parse(s: &'a str) -> Result<Self, NameError> {
        if s.is_empty() || s.len() > MAX_NAME_LEN {
            return Err(NameError::Name);
        }
        for component in s.split('/') {
            if !valid_component(component.as_bytes()) {
                return Err(NameError::Name);
            }
        }
        Ok(RepoName(s))
    }

    pub fn as_str(&self) -> &'a str {
        self.0
    }

    /// Whether the name has a single component (`alpine`): Docker Hub files
    /// those under `library/`.
    pub fn is_single_component(&self) -> bool {
        !self.0.contains('/')
    }
}

fn valid_component(c: &[u8]) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(&first), Some(&last)) = (c.first(), c.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut i = 0;
    while i < c.len() {
        let b = c[i];
        if alnum(b) {
            i += 1;
            continue;
        }
        // A separator run: one '.', one or two '_', or any number of '-'.
        let start = i;
        while i < c.len() && !alnum(c[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == b"." || sep == b"_" || sep == b"__" || sep.iter().all(|&b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

impl<'a> Tag<'a> {
    /// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
    pub fn parse(s: &'a str) -> Result<Self, NameError> {
        let b = s.as_bytes();
        let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
        match b.first() {
            Some(&c) if word(c) => {}
            _ => return Err(NameError::Tag),
        }
        if b.len() > MAX_TAG_LEN || !b.iter().all(|&c| word(c) || c == b'.' || c == b'-') {
            return Err(NameError::Tag);
        }
        Ok(Tag(s))
    }

    pub fn as_str(&self) -> &'a str {
        self.0
    }
}

/// Hash algorithms whose digests ocirelay can verify while streaming.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Algorithm {
    Sha256,
    Sha512,
    /// Syntactically valid but not one we can check (passed through unverified).
    Other,
}

impl<'a> Digest<'a> {
    /// `algorithm ":" encoded`, algorithm `[a-z0-9]+([+._-][a-z0-9]+)*`,
    /// encoded `[a-zA-Z0-9=_-]+`; sha256 and sha512 must be lowercase hex of
    /// their exact length.
    pub fn parse(s: &'a str) -> Result<Self, NameError> {
        let colon = s.find(':').ok_or(NameError::Digest)?;
        let (alg, enc) = (&s.as_bytes()[..colon], &s.as_bytes()[colon + 1..]);
        if !valid_algorithm(alg) || enc.is_empty() || s.len() > 256 {
            return Err(NameError::Digest);
        }
        let hex = |n: usize| {
            enc.len() == n && enc.iter().all(|&c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        };
        let ok = match alg {
            b"sha256" => hex(64),
            b"sha512" => hex(128),
            _ => enc
                .iter()
                .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'=' | b'_' | b'-')),
        };
        if !ok {
            return Err(NameError::Digest);
        }
        Ok(Digest { full: s, colon })
    }

    pub fn as_str(&self) -> &'a str {
        self.full
    }

    pub fn algorithm(&self) -> Algorithm {
        match &self.full[..self.colon] {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => Algorithm::Other,
        }
    }

    /// The encoded part (hex for sha256/sha512).
    pub fn encoded(&self) -> &'a str {
        &self.full[self.colon + 1..]
    }
}

fn valid_algorithm(a: &[u8]) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(&first), Some(&last)) = (a.first(), a.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    a.windows(2)
        .all(|w| alnum(w[0]) || (matches!(w[0], b'+' | b'.' | b'_' | b'-') && alnum(w[1])))
        && a.iter()
            .all(|&b| alnum(b) || matches!(b, b'+' | b'.' | b'_' | b'-'))
}

impl<'a> Reference<'a> {
    /// A reference with a `:` is a digest, otherwise a tag.
    pub fn parse(s: &'a str) -> Result<Self, NameError> {
        if s.contains(':') {
            Digest::parse(s).map(Reference::Digest)
        } else {
            Tag::parse(s).map(Reference::Tag)
        }
    }

    pub fn as_str(&self) -> &'a str {
        match self {
            Reference::Tag(t) => t.as_str(),
            Reference::Digest(d) => d.as_str(),
        }
    }
}

impl fmt::Debug for RepoName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoName({})", self.0)
    }
}
impl fmt::Debug for Tag<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({})", self.0)
    }
}
impl fmt::Debug for Digest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.full)
    }
}
impl fmt::Display for RepoName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names_follow_the_distribution_grammar() {
        for ok in [
            "alpine",
            "library/alpine",
            "a/b/c",
            "foo.bar",
            "foo_bar",
            "foo__bar",
            "foo---bar",
            "0a/9z",
        ] {
            assert!(RepoName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Alpine",
            "foo/",
            "/foo",
            "foo//bar",
            "-foo",
            "foo-",
            "foo...bar",
            "foo___bar",
            "foo.-bar",
            "a b",
            "foo%2fbar",
        ] {
            assert_eq!(RepoName::parse(bad), Err(NameError::Name), "{bad}");
        }
        assert!(RepoName::parse(&"a".repeat(255)).is_ok());
        assert!(RepoName::parse(&"a".repeat(256)).is_err());
    }

    #[test]
    fn tags_follow_the_distribution_grammar() {
        for ok in ["latest", "3.20", "v1.0-rc_1", "_x", "A"] {
            assert!(Tag::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "a+b"] {
            assert_eq!(Tag::parse(bad), Err(NameError::Tag), "{bad}");
        }
        assert!(Tag::parse(&"a".repeat(128)).is_ok());
        assert!(Tag::parse(&"a".repeat(129)).is_err());
    }

    #[test]
    fn digests_are_checked_for_algorithm_and_length() {
        let hex64 = "a".repeat(64);
        let text = format!("sha256:{hex64}");
        let d = Digest::parse(&text).unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.encoded(), hex64);
        assert!(Digest::parse(&format!("sha512:{}", "0".repeat(128))).is_ok());
        assert!(
            Digest::parse("multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8")
                .is_ok()
        );
        for bad in [
            "sha256:".to_string(),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("SHA256:{hex64}"),
            format!(":{hex64}"),
            "sha256".to_string(),
            format!("sha256+:{hex64}"),
        ] {
            assert_eq!(Digest::parse(&bad), Err(NameError::Digest), "{bad}");
        }
    }

    #[test]
    fn a_reference_with_a_colon_is_a_digest() {
        assert!(matches!(Reference::parse("latest"), Ok(Reference::Tag(_))));
        let d = format!("sha256:{}", "0".repeat(64));
        assert!(matches!(Reference::parse(&d), Ok(Reference::Digest(_))));
        assert_eq!(Reference::parse("sha256:zz"), Err(NameError::Digest));
        assert_eq!(Reference::parse("la/test"), Err(NameError::Tag));
    }
}
