//! The operator's view of a cache directory (`ocirelay cache stats|verify|
//! prune`): these run in the command's own process, on the files, beside a
//! running mirror or without one. A running mirror writes its counters to
//! `<dir>/stats` every 2 s (see `evict`), which `stats` reads.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::ops::metrics::CacheCounts;
use crate::wire::digest::Verifier;
use crate::wire::names::Digest;

fn encode(t: &CacheCounts, started: SystemTime) -> String {
    let secs = started
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "started {secs}\nhits {}\nmisses {}\ncoalesced {}\nrevalidated {}\nstale {}\nbytes_served {}\n",
        t.hits, t.misses, t.coalesced, t.revalidated, t.stale, t.bytes_served
    )
}

fn decode(text: &str) -> Option<(CacheCounts, u64)> {
    let mut t = CacheCounts::default();
    let mut started = None;
    for line in text.lines() {
        let (k, v) = line.split_once(' ')?;
        let v: u64 = v.parse().ok()?;
        match k {
            "started" => started = Some(v),
            "hits" => t.hits = v,
            "misses" => t.misses = v,
            "coalesced" => t.coalesced = v,
            "revalidated" => t.revalidated = v,
            "stale" => t.stale = v,
            "bytes_served" => t.bytes_served = v,
            _ => {}
        }
    }
    Some((t, started?))
}

/// Writes a running process's totals to `<root>/stats`.
pub fn write_stats(root: &Path, totals: &CacheCounts, started: SystemTime) {
    let tmp = root.join(format!("stats.{}.tmp", std::process::id()));
    if std::fs::write(&tmp, encode(totals, started)).is_ok() {
        let _ = std::fs::rename(&tmp, root.join("stats"));
    }
}

/// What is on disk.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OnDisk {
    pub blobs: u64,
    pub blob_bytes: u64,
    pub manifests: u64,
    pub manifest_bytes: u64,
    pub tags: u64,
}

/// Every regular file under `dir`, with its metadata (unreadable parts are
/// passed over).
pub fn files(dir: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                dirs.push(e.path());
            } else if m.is_file() {
                out.push((e.path(), m));
            }
        }
    }
    out
}

pub fn on_disk(root: &Path) -> OnDisk {
    let mut d = OnDisk::default();
    for (_, m) in files(&root.join("blobs")) {
        d.blobs += 1;
        d.blob_bytes += m.len();
    }
    for (_, m) in files(&root.join("manifests")) {
        d.manifests += 1;
        d.manifest_bytes += m.len();
    }
    d.tags = files(&root.join("tags")).len() as u64;
    d
}

/// `ocirelay cache stats`: a report for a person.
pub fn stats_report(root: &Path) -> String {
    let d = on_disk(root);
    let mut out = format!(
        "cache {}\nobjects {} ({} blobs, {} manifests), {} bytes\ntags {}\n",
        root.display(),
        d.blobs + d.manifests,
        d.blobs,
        d.manifests,
        d.blob_bytes + d.manifest_bytes,
        d.tags
    );
    match std::fs::read_to_string(root.join("stats"))
        .ok()
        .and_then(|t| decode(&t))
    {
        Some((t, started)) => out.push_str(&format!(
            "since the mirror started (unix {started}): hit ratio {:.1}% ({} hits, {} coalesced, {} revalidated, {} stale, {} misses), {} bytes served from the cache\n",
            t.hit_ratio() * 100.0,
            t.hits,
            t.coalesced,
            t.revalidated,
            t.stale,
            t.misses,
            t.bytes_served
        )),
        None => out.push_str("no counters: no mirror has used this directory yet\n"),
    }
    out
}

/// What `verify` found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub good: u64,
    pub dropped: u64,
}

/// `ocirelay cache verify`: re-hashes every object against its name and
/// removes what does not match (or cannot be read, or is not named by a
/// digest).
pub fn verify(root: &Path) -> io::Result<Verified> {
    let mut v = Verified::default();
    for (kind, dir) in [
        ("blobs", root.join("blobs")),
        ("manifests", root.join("manifests")),
    ] {
        for (path, _) in files(&dir) {
            let ok = object_digest(&dir, &path)
                .is_some_and(|d| matches_digest(kind, &path, &d).unwrap_or(false));
            if ok {
                v.good += 1;
            } else {
                std::fs::remove_file(&path)?;
                v.dropped += 1;
            }
        }
    }
    Ok(v)
}

/// `sha256:<hex>` from `<dir>/sha256/ab/<hex>`.
fn object_digest(dir: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(dir).ok()?;
    let mut parts = rel.iter().map(|p| p.to_str());
    let alg = parts.next()??;
    let _shard = parts.next()??;
    let hex = parts.next()??;
    parts.next().is_none().then(|| format!("{alg}:{hex}"))
}

fn matches_digest(kind: &str, path: &Path, digest: &str) -> io::Result<bool> {
    let Ok(d) = Digest::parse(digest) else {
        return Ok(false);
    };
    let Some(mut v) = Verifier::new(&d) else {
        return Ok(false);
    };
    if kind == "manifests" {
        // Small (at most 4 MiB): read whole, the type line skipped.
        let bytes = std::fs::read(path)?;
        let Some((_, body)) = super::manifests::decode_manifest(&bytes) else {
            return Ok(false);
        };
        v.update(body);
    } else {
        // Blobs can be many GiB: hashed as they are read.
        use std::io::Read;
        let mut f = std::fs::File::open(path)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            v.update(&buf[..n]);
        }
    }
    Ok(v.matches())
}

/// `ocirelay cache prune`: removes objects last used longer ago than
/// `older_than`, then the least recently used until at most `to` bytes
/// remain. Returns (objects, bytes) removed.
pub fn prune(root: &Path, to: Option<u64>, older_than: Option<Duration>) -> (usize, u64) {
    let mut removed = (0, 0);
    if let Some(age) = older_than {
        let now = SystemTime::now();
        for dir in [root.join("blobs"), root.join("manifests")] {
            for (path, m) in files(&dir) {
                let old = m
                    .modified()
                    .ok()
                    .and_then(|t| now.duration_since(t).ok())
                    .is_some_and(|a| a > age);
                if old && std::fs::remove_file(&path).is_ok() {
                    removed.0 += 1;
                    removed.1 += m.len();
                }
            }
        }
    }
    if let Some(max) = to {
        let walk = super::evict::evict_to(root, max, max);
        removed.0 += walk.evicted_objects as usize;
        removed.1 += walk.evicted_bytes;
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_drops_what_does_not_match_its_name_and_keeps_the_rest() {
        let root = std::env::temp_dir().join(format!("ocirelay-verify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let hex = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"; // "hello"
        let dir = root.join("blobs/sha256/2c");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(hex), b"hello").unwrap();
        let bad = "2c00000000000000000000000000000000000000000000000000000000000000";
        std::fs::write(dir.join(bad), b"hello").unwrap();
        let mdir = root.join("manifests/sha256/2c");
        std::fs::create_dir_all(&mdir).unwrap();
        std::fs::write(mdir.join(hex), b"application/json\nhello").unwrap();
        assert_eq!(
            verify(&root).unwrap(),
            Verified {
                good: 2,
                dropped: 1
            }
        );
        assert!(!dir.join(bad).exists());
        let d = on_disk(&root);
        assert_eq!((d.blobs, d.manifests), (1, 1));
        let t = CacheCounts {
            hits: 3,
            misses: 1,
            ..CacheCounts::default()
        };
        write_stats(&root, &t, SystemTime::UNIX_EPOCH);
        let report = stats_report(&root);
        assert!(report.contains("hit ratio 75.0%"), "{report}");
        assert_eq!(prune(&root, Some(0), None).0, 2);
        let _ = std::fs::remove_dir_all(&root);
    }
}
