//! What ACME needs to know of an issued certificate, read from its DER: the
//! validity period (when to renew) and the DNS names it covers (whether a
//! stored one still fits the config). A small DER walk over the fields of
//! RFC 5280 4.1; nothing else of the certificate is interpreted (rustls and
//! the clients verify it).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A certificate's validity and names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// subjectAltName dNSName entries, lowercase.
    pub dns_names: Vec<String>,
}

impl CertInfo {
    /// When to renew: at two thirds of the lifetime (Let's Encrypt's advice:
    /// 60 days into a 90-day certificate; 10 s into a 15 s test one).
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life * 2 / 3
    }

    /// Whether every name in `domains` is on the certificate.
    pub fn covers(&self, domains: &[String]) -> bool {
        domains
            .iter()
            .all(|d| self.dns_names.iter().any(|n| n.eq_ignore_ascii_case(d)))
    }
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const OID: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const VERSION: u8 = 0xa0; // [0] EXPLICIT
const ISSUER_UID: u8 = 0x81; // [1] IMPLICIT
const SUBJECT_UID: u8 = 0x82; // [2] IMPLICIT
const EXTENSIONS: u8 = 0xa3; // [3] EXPLICIT
const DNS_NAME: u8 = 0x82; // GeneralName [2] IMPLICIT IA5String
/// id-ce-subjectAltName, 2.5.29.17.
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// Reads the certificate `der`.
pub fn parse(der: &[u8]) -> Result<CertInfo, String> {
    let (cert, _) = expect(der, SEQUENCE, "certificate")?;
    let (tbs, _) = expect(cert, SEQUENCE, "tbsCertificate")?;
    let mut rest = tbs;
    if rest.first() == Some(&VERSION) {
        rest = tlv(rest)?.2;
    }
    let (_, rest) = expect(rest, INTEGER, "serialNumber")?;
    let (_, rest) = expect(rest, SEQUENCE, "signature")?;
    let (_, rest) = expect(rest, SEQUENCE, "issuer")?;
    let (validity, rest) = expect(rest, SEQUENCE, "validity")?;
    let (nb_tag, nb, after) = tlv(validity)?;
    let (na_tag, na, _) = tlv(after)?;
    let not_before = time(nb_tag, nb)?;
    let not_after = time(na_tag, na)?;
    let (_, rest) = expect(rest, SEQUENCE, "subject")?;
    let (_, mut rest) = expect(rest, SEQUENCE, "subjectPublicKeyInfo")?;
    let mut dns_names = Vec::new();
    while !rest.is_empty() {
        let (tag, value, more) = tlv(rest)?;
        rest = more;
        match tag {
            ISSUER_UID | SUBJECT_UID => {}
            EXTENSIONS => dns_names = san_dns_names(value)?,
            t => return Err(format!("unexpected field {t:#x} in tbsCertificate")),
        }
    }
    Ok(CertInfo {
        not_before,
        not_after,
        dns_names,
    })
}

/// The dNSName entries of the subjectAltName extension, if any.
fn san_dns_names(explicit: &[u8]) -> Result<Vec<String>, String> {
    let (mut exts, _) = expect(explicit, SEQUENCE, "extensions")?;
    while !exts.is_empty() {
        let (ext, more) = expect(exts, SEQUENCE, "extension")?;
        exts = more;
        let (oid, mut rest) = expect(ext, OID, "extnID")?;
        if rest.first() == Some(&BOOLEAN) {
            rest = tlv(rest)?.2;
        }
        if oid != SUBJECT_ALT_NAME {
            continue;
        }
        let (value, _) = expect(rest, OCTET_STRING, "extnValue")?;
        let (mut names, _) = expect(value, SEQUENCE, "GeneralNames")?;
        let mut out = Vec::new();
        while !names.is_empty() {
            let (tag, name, more) = tlv(names)?;
            names = more;
            if tag == DNS_NAME {
                let name = std::str::from_utf8(name).map_err(|_| "dNSName is not ASCII")?;
                out.push(name.to_ascii_lowercase());
            }
        }
        return Ok(out);
    }
    Ok(Vec::new())
}

/// One DER element: (tag, contents, what follows).
fn tlv(input: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let short = || "DER element cut short".to_string();
    let (&tag, rest) = input.split_first().ok_or_else(short)?;
    let (&first, rest) = rest.split_first().ok_or_else(short)?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err("bad DER length".into());
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err(short());
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// The contents of an element that must have `tag`, and what follows.
fn expect<'a>(input: &'a [u8], tag: u8, what: &str) -> Result<(&'a [u8], &'a [u8]), String> {
    match tlv(input)? {
        (t, value, rest) if t == tag => Ok((value, rest)),
        (t, _, _) => Err(format!("{what}: expected tag {tag:#x}, found {t:#x}")),
    }
}

/// UTCTime (`YYMMDDHHMMSSZ`, RFC 5280: 50-99 are 19xx) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`).
fn time(tag: u8, v: &[u8]) -> Result<SystemTime, String> {
    let text = std::str::from_utf8(v).map_err(|_| "time is not ASCII")?;
    let bad = || format!("bad certificate time {text:?}");
    let digits = text.strip_suffix('Z').ok_or_else(bad)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<u32, String> {
        digits.get(r).and_then(|s| s.parse().ok()).ok_or_else(bad)
    };
    let (year, rest) = match (tag, digits.len()) {
        (UTC_TIME, 12) => {
            let yy = num(0..2)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        (GENERALIZED_TIME, 14) => (num(0..4)?, 4),
        _ => return Err(bad()),
    };
    let field = |i: usize| num(rest + 2 * i..rest + 2 * i + 2);
    let secs = unix_seconds(year, field(0)?, field(1)?, field(2)?, field(3)?, field(4)?)
        .ok_or_else(bad)?;
    Ok(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Seconds since 1970 of a UTC civil time (days from Howard Hinnant's
/// `days_from_civil`); `None` for a field out of range or a time before
/// 1970.
pub(super) fn unix_seconds(
    year: u32,
    month: u32,
    day: u32,
    hour: u32,
    min: u32,
    sec: u32,
) -> Option<u64> {
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + i64::from(hour) * 3600 + i64::from(min) * 60 + i64::from(sec);
    u64::try_from(secs).ok()
}

/// A time as RFC 3339 UTC, to the second (`2026-12-06T08:28:35Z`), for log
/// lines: the access log's format.
pub fn rfc3339(t: SystemTime) -> String {
    let mut out = Vec::with_capacity(20);
    crate::ops::access_log::write_timestamp(&mut out, t, false);
    String::from_utf8(out).expect("a timestamp is ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate for `names` valid from 2024-01-01 to `until` (y, m, d).
    fn cert_for(names: &[&str], until: (i32, u8, u8)) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.not_before = rcgen::date_time_ymd(2024, 1, 1);
        p.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn validity_and_names_are_read_and_renewal_falls_at_two_thirds() {
        let info = parse(&cert_for(
            &["Mirror.Example.com", "docker.mirror.example.com"],
            (2024, 3, 31), // 90 days (a leap year)
        ))
        .unwrap();
        let jan1 = UNIX_EPOCH + Duration::from_secs(1_704_067_200);
        assert_eq!(info.not_before, jan1);
        assert_eq!(info.not_after, jan1 + Duration::from_secs(90 * 86_400));
        assert_eq!(info.renew_at(), jan1 + Duration::from_secs(60 * 86_400));
        assert_eq!(
            info.dns_names,
            ["mirror.example.com", "docker.mirror.example.com"]
        );
        let want = |d: &[&str]| d.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(info.covers(&want(&["docker.mirror.example.com"])));
        assert!(!info.covers(&want(&["mirror.example.com", "ghcr.mirror.example.com"])));
    }

    #[test]
    fn generalized_time_after_2049_and_broken_input_are_handled() {
        let info = parse(&cert_for(&["a.test"], (2054, 1, 1))).unwrap();
        // 2054: GeneralizedTime (RFC 5280 4.1.2.5).
        assert!(info.not_after > UNIX_EPOCH + Duration::from_secs(2_650_000_000));
        let der = cert_for(&["a.test"], (2024, 1, 2));
        for cut in [0, 1, 10, der.len() / 2, der.len() - 1] {
            assert!(parse(&der[..cut]).is_err(), "cut at {cut} parsed");
        }
        assert_eq!(unix_seconds(1970, 1, 1, 0, 0, 0), Some(0));
        assert_eq!(unix_seconds(2000, 3, 1, 0, 0, 0), Some(951_868_800));
        assert_eq!(unix_seconds(2024, 13, 1, 0, 0, 0), None);
        let t = UNIX_EPOCH + Duration::from_secs(unix_seconds(2024, 2, 29, 23, 5, 9).unwrap());
        assert_eq!(rfc3339(t), "2024-02-29T23:05:09Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
