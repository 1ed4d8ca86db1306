//! Keeping the shared tier bounded: `ocirelay cache prune --tier shared`.
//!
//! The bucket holds content (`blobs/`, `manifests/`) and small records
//! (`tags/`, `links/`, `leases/`, `used/`). A blob's last use is the later
//! of its upload and its `used/` marker (touched by any node that served
//! it, at most once a day per node: see `tier::USED_EVERY`). Pruning goes
//! least recently used first:
//!
//! - `--to SIZE`: blobs and manifests until the content fits in SIZE;
//! - `--older-than AGE`: blobs and manifests unused for AGE, tag records
//!   not confirmed for AGE;
//! - always: access notes older than `STALE_PUBLIC_MAX` (they no longer
//!   let anything be served), leases older than a day (a dead node's), and
//!   `used/` markers of blobs that are gone.
//!
//! A pruned object is only a miss later: any node fetches it again from the
//! upstream (or from its own disk) and uploads it again. Run it from one
//! place (a cron job, a Kubernetes CronJob), not from every node.

use std::collections::HashMap;
use std::time::Duration;

use super::client::{Listed, S3Client, S3Error};
use crate::cache::access::STALE_PUBLIC_MAX;
use crate::upstream::Upstreams;

/// A lease older than this is a dead node's.
const LEASE_MAX: Duration = Duration::from_secs(86_400);

/// What to keep.
#[derive(Debug, Clone, Copy, Default)]
pub struct Policy {
    pub to: Option<u64>,
    pub older_than: Option<Duration>,
}

/// What a prune did (or, dry, would do).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pruned {
    /// Content objects (blobs, manifests) removed, and their bytes.
    pub objects: usize,
    pub bytes: u64,
    /// Small records removed (tags, notes, leases, markers).
    pub records: usize,
    /// Content objects and bytes left.
    pub kept_objects: usize,
    pub kept_bytes: u64,
}

/// The keys to delete from a full listing of the bucket (keys relative to
/// the prefix), at `now` (unix seconds). Pure: the I/O is [`run`].
pub fn plan(listing: &[Listed], now: u64, policy: Policy) -> (Vec<String>, Pruned) {
    let age = |t: u64| Duration::from_secs(now.saturating_sub(t));
    // Last use of each blob, from its `used/` marker.
    let used: HashMap<&str, u64> = listing
        .iter()
        .filter_map(|o| Some((o.key.strip_prefix("used/")?, o.modified_unix)))
        .collect();
    let mut content: Vec<(&Listed, u64)> = Vec::new();
    let mut delete = Vec::new();
    let mut out = Pruned::default();
    let mut present = std::collections::HashSet::new();
    for o in listing {
        if let Some(rest) = o.key.strip_prefix("blobs/") {
            present.insert(rest);
            let last = used
                .get(rest)
                .map_or(o.modified_unix, |u| (*u).max(o.modified_unix));
            content.push((o, last));
        } else if o.key.starts_with("manifests/") {
            content.push((o, o.modified_unix));
        } else if o.key.starts_with("tags/") {
            if policy
                .older_than
                .is_some_and(|max| age(o.modified_unix) > max)
            {
                delete.push(o.key.clone());
                out.records += 1;
            }
        } else if o.key.starts_with("links/") {
            if age(o.modified_unix) > STALE_PUBLIC_MAX {
                delete.push(o.key.clone());
                out.records += 1;
            }
        } else if o.key.starts_with("leases/") && age(o.modified_unix) > LEASE_MAX {
            delete.push(o.key.clone());
            out.records += 1;
        }
    }
    // Oldest last use first; ties by key, so that a plan is repeatable.
    content.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.key.cmp(&b.0.key)));
    let mut total: u64 = content.iter().map(|(o, _)| o.size).sum();
    let mut gone = std::collections::HashSet::new();
    for (o, last) in &content {
        let too_old = policy.older_than.is_some_and(|max| age(*last) > max);
        let too_big = policy.to.is_some_and(|to| total > to);
        if too_old || too_big {
            delete.push(o.key.clone());
            total -= o.size;
            out.objects += 1;
            out.bytes += o.size;
            if let Some(rest) = o.key.strip_prefix("blobs/") {
                gone.insert(rest);
            }
        }
    }
    out.kept_objects = content.len() - out.objects;
    out.kept_bytes = total;
    // Markers of blobs removed now or before.
    for o in listing {
        if let Some(rest) = o.key.strip_prefix("used/") {
            if gone.contains(rest) || !present.contains(rest) {
                delete.push(o.key.clone());
                out.records += 1;
            }
        }
    }
    (delete, out)
}

/// Lists the whole bucket (under the prefix), plans, and deletes (unless
/// `dry`).
pub async fn run(
    client: &S3Client,
    up: &Upstreams,
    policy: Policy,
    now: u64,
    dry: bool,
) -> Result<Pruned, S3Error> {
    let mut listing = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let page = client.list(up, "", next.as_deref()).await?;
        listing.extend(page.objects);
        match page.next {
            Some(n) => next = Some(n),
            None => break,
        }
    }
    let (delete, out) = plan(&listing, now, policy);
    if !dry {
        for key in &delete {
            client.delete(up, key).await?;
        }
    }
    Ok(out)
}

/// [`run`] from a command (`ocirelay cache prune --tier shared`): its own
/// single-threaded runtime and upstream pool, trusting the store's
/// `ca_file` (else the web roots).
pub fn run_command(
    cfg: &crate::config::s3::S3Config,
    timeouts: crate::config::Timeouts,
    policy: Policy,
    dry: bool,
) -> Result<Pruned, String> {
    let roots = match &cfg.ca_file {
        Some(p) => crate::tls::load_certs(p).map_err(|e| format!("{}: {e}", p.display()))?,
        None => Vec::new(),
    };
    let trust = crate::upstream::Trust {
        key: crate::upstream::TrustKey::of(&roots),
        config: crate::tls::client_config(&roots)?,
    };
    let client = S3Client::new(cfg);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async {
        let up = Upstreams::new(vec![trust], timeouts);
        run(&client, &up, policy, now, dry)
            .await
            .map_err(|e| format!("shared tier {}: {e}", cfg.endpoint.origin))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    fn obj(key: &str, size: u64, modified_unix: u64) -> Listed {
        Listed {
            key: key.into(),
            size,
            modified_unix,
        }
    }

    #[test]
    fn least_recently_used_content_goes_first_and_a_use_marker_counts_as_use() {
        let now = 100 * DAY;
        let listing = vec![
            obj("blobs/sha256/aa/aa1", 100, now - 30 * DAY), // old, but used yesterday
            obj("used/sha256/aa/aa1", 0, now - DAY),
            obj("blobs/sha256/bb/bb1", 100, now - 20 * DAY), // unused for 20 days
            obj("blobs/sha256/cc/cc1", 100, now - 2 * DAY),
            obj("manifests/sha256/dd/dd1", 10, now - 40 * DAY),
            obj("tags/docker.io/library/alpine:latest", 200, now - 40 * DAY),
        ];
        let (keys, out) = plan(
            &listing,
            now,
            Policy {
                to: Some(210),
                older_than: None,
            },
        );
        // 310 bytes of content down to 210: the manifest (40 days) and bb1
        // (20 days) go; aa1 stays for its marker.
        assert_eq!(keys, vec!["manifests/sha256/dd/dd1", "blobs/sha256/bb/bb1"]);
        assert_eq!((out.objects, out.bytes, out.kept_bytes), (2, 110, 200));

        let (keys, out) = plan(
            &listing,
            now,
            Policy {
                to: None,
                older_than: Some(Duration::from_secs(10 * DAY)),
            },
        );
        assert!(keys.contains(&"blobs/sha256/bb/bb1".to_string()));
        assert!(keys.contains(&"tags/docker.io/library/alpine:latest".to_string()));
        assert!(!keys.contains(&"blobs/sha256/aa/aa1".to_string()));
        assert!(!keys.contains(&"blobs/sha256/cc/cc1".to_string()));
        assert_eq!(out.records, 1);
    }

    #[test]
    fn dead_leases_old_notes_and_orphan_markers_always_go() {
        let now = 100 * DAY;
        let listing = vec![
            obj("leases/sha256/ee1", 20, now - 2 * DAY),
            obj("leases/sha256/ff1", 20, now - 60),
            obj(
                "links/docker.io/library/alpine/sha256/aa1",
                12,
                now - 8 * DAY,
            ),
            obj("links/docker.io/library/alpine/sha256/bb1", 12, now - DAY),
            obj("used/sha256/zz/zz1", 0, now - DAY),
        ];
        let (keys, out) = plan(&listing, now, Policy::default());
        assert_eq!(
            keys,
            vec![
                "leases/sha256/ee1",
                "links/docker.io/library/alpine/sha256/aa1",
                "used/sha256/zz/zz1"
            ]
        );
        assert_eq!((out.objects, out.records), (0, 3));
    }
}
