//! [`RequestSummary`]: what one request was and how it ended, filled in by
//! the phases as they run and consumed once when the request finishes (the
//! access log and the metrics). Borrowed fields point into the request
//! head: filling it costs no allocation.

use std::time::Duration;

use crate::config::RegistryId;
use crate::error::Error;

/// What kind of request it was: the route it took. Bounded, so it can
/// label metrics; named as the distribution registry names its handlers
/// where it has one (`base` for `/v2/`), so that its dashboards apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum RouteKind {
    Landing,
    Health,
    AcmeChallenge,
    Ready,
    Metrics,
    Ping,
    Token,
    Manifest,
    Blob,
    Tags,
    Referrers,
    Push,
    Catalog,
    Invalid,
    #[default]
    NotFound,
}

impl RouteKind {
    /// Every kind, in the order of their indices (see [`RouteKind::index`]).
    pub const ALL: [RouteKind; 15] = [
        RouteKind::Landing,
        RouteKind::Health,
        RouteKind::AcmeChallenge,
        RouteKind::Ready,
        RouteKind::Metrics,
        RouteKind::Ping,
        RouteKind::Token,
        RouteKind::Manifest,
        RouteKind::Blob,
        RouteKind::Tags,
        RouteKind::Referrers,
        RouteKind::Push,
        RouteKind::Catalog,
        RouteKind::Invalid,
        RouteKind::NotFound,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Landing => "landing",
            RouteKind::Health => "health",
            RouteKind::AcmeChallenge => "acme_challenge",
            RouteKind::Ready => "ready",
            RouteKind::Metrics => "metrics",
            RouteKind::Ping => "base",
            RouteKind::Token => "token",
            RouteKind::Manifest => "manifest",
            RouteKind::Blob => "blob",
            RouteKind::Tags => "tags",
            RouteKind::Referrers => "referrers",
            RouteKind::Push => "push",
            RouteKind::Catalog => "catalog",
            RouteKind::Invalid => "invalid",
            RouteKind::NotFound => "not_found",
        }
    }

    /// Its position in [`RouteKind::ALL`].
    pub fn index(self) -> u8 {
        self as u8
    }

    pub fn from_index(i: u8) -> Option<RouteKind> {
        RouteKind::ALL.get(usize::from(i)).copied()
    }
}

/// How the cache took part in a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheStatus {
    /// Not a cacheable request, or no cache.
    #[default]
    None,
    /// Served from disk, no upstream transfer.
    Hit,
    /// Fetched upstream and stored while it streamed.
    Miss,
    /// Followed another request's download of the same object.
    Coalesced,
    /// A tag's record was revalidated with one upstream HEAD, then served.
    Revalidated,
    /// Served from the cache because the upstream could not answer.
    Stale,
    /// Served from the shared tier (this node's disk did not have it; the
    /// bucket did), and stored on this node's disk as it passed.
    Shared,
}

impl CacheStatus {
    /// Every outcome where the cache took part, in index order.
    pub const ALL: [CacheStatus; 6] = [
        CacheStatus::Hit,
        CacheStatus::Miss,
        CacheStatus::Coalesced,
        CacheStatus::Revalidated,
        CacheStatus::Stale,
        CacheStatus::Shared,
    ];

    /// Answered from what the cache holds, without an upstream transfer of
    /// the body (everything but a miss).
    pub fn served_from_cache(self) -> bool {
        matches!(
            self,
            CacheStatus::Hit
                | CacheStatus::Coalesced
                | CacheStatus::Revalidated
                | CacheStatus::Stale
                | CacheStatus::Shared
        )
    }

    /// A label index: 0 for `None`, then the order of [`CacheStatus::ALL`].
    pub fn index(self) -> u8 {
        self as u8
    }

    pub fn from_index(i: u8) -> Option<CacheStatus> {
        CacheStatus::ALL
            .get(usize::from(i.checked_sub(1)?))
            .copied()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::None => "-",
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Coalesced => "coalesced",
            CacheStatus::Revalidated => "revalidated",
            CacheStatus::Stale => "stale",
            CacheStatus::Shared => "shared",
        }
    }
}

/// One request's record.
#[derive(Debug, Default)]
pub struct RequestSummary<'a> {
    /// The route's kind (`manifest`, `blob`, `token`, `landing`, ...).
    pub route: RouteKind,
    /// The registry, once one was picked.
    pub registry: Option<RegistryId>,
    /// The repository as the client named it.
    pub repository: Option<&'a str>,
    /// Who the mirror authenticated (`[auth]`: a user, or `token#N`).
    pub user: Option<String>,
    /// The status and bytes the client was sent (read off the stream).
    pub status: u16,
    pub bytes: u64,
    /// The last upstream response's status, and the time to its head.
    pub upstream_status: Option<u16>,
    pub upstream_time: Option<Duration>,
    /// What ended the request early, if anything.
    pub error: Option<Error>,
    pub cache: CacheStatus,
    /// Body bytes received from upstreams for this request (redirect
    /// bodies and heads not counted).
    pub pulled: u64,
    /// Body bytes answered from the cache: what the upstream would have
    /// sent without it (nothing for a HEAD).
    pub from_cache: u64,
    /// Bytes of the object this request put in the cache (verified and
    /// renamed into place), if it stored one.
    pub stored: u64,
}
