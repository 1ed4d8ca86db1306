//! [`RequestSummary`]: what one request was and how it ended, filled in by
//! the phases as they run and consumed once when the request finishes (the
//! access log today; metrics next). Borrowed fields point into the request
//! head and the config: filling it costs no allocation.

use std::time::Duration;

use crate::error::Error;

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
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::None => "-",
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Coalesced => "coalesced",
            CacheStatus::Revalidated => "revalidated",
            CacheStatus::Stale => "stale",
        }
    }
}

/// One request's record.
#[derive(Debug, Default)]
pub struct RequestSummary<'a> {
    /// The route's kind (`manifest`, `blob`, `token`, `landing`, ...).
    pub route: &'static str,
    /// The registry's configured name, once one was picked.
    pub registry: Option<&'a str>,
    /// The repository as the client named it.
    pub repository: Option<&'a str>,
    /// The status and bytes the client was sent (read off the stream).
    pub status: u16,
    pub bytes: u64,
    /// The last upstream response's status, and the time to its head.
    pub upstream_status: Option<u16>,
    pub upstream_time: Option<Duration>,
    /// What ended the request early, if anything.
    pub error: Option<Error>,
    pub cache: CacheStatus,
}
