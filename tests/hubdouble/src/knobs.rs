//! Runtime-switchable behaviour and faults, shared with the server threads.

use crate::Host;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

/// Which token fields the token host returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TokenFields {
    /// `token` and `access_token` (Docker Hub).
    #[default]
    Both,
    /// Only `token`.
    TokenOnly,
    /// Only `access_token`.
    AccessTokenOnly,
}

/// An injected error: answer the next `remaining` requests of a host with `status`.
#[derive(Clone, Copy, Debug)]
struct Injected {
    status: u16,
    remaining: u64,
}

const OFF: u64 = u64::MAX;

/// Knobs every host thread reads per request. Get them with [`crate::HubDouble::knobs`];
/// all setters take effect for the next request (connections in progress included).
#[derive(Debug)]
pub struct Knobs {
    stall: [AtomicBool; 3],
    inject: Mutex<[Option<Injected>; 3]>,
    cut_after: AtomicU64,
    cut_times: AtomicU64,
    extra_hops: AtomicU32,
    cdn_ttl: AtomicI64,
    token_ttl: AtomicI64,
    token_fields: AtomicU8,
    expires_in: AtomicBool,
    blob_redirect: AtomicBool,
    require_auth: AtomicBool,
    rate_limit: AtomicU64,
    enforce_rate_limit: AtomicBool,
    manifest_gets: AtomicU64,
}

impl Knobs {
    pub(crate) fn new(o: &crate::Options) -> Knobs {
        Knobs {
            stall: Default::default(),
            inject: Mutex::new([None; 3]),
            cut_after: AtomicU64::new(OFF),
            cut_times: AtomicU64::new(0),
            extra_hops: AtomicU32::new(o.extra_hops),
            cdn_ttl: AtomicI64::new(o.cdn_signature_ttl_secs),
            token_ttl: AtomicI64::new(o.token_ttl_secs),
            token_fields: AtomicU8::new(o.token_fields as u8),
            expires_in: AtomicBool::new(o.expires_in),
            blob_redirect: AtomicBool::new(o.blob_redirect),
            require_auth: AtomicBool::new(o.require_auth),
            rate_limit: AtomicU64::new(o.rate_limit),
            enforce_rate_limit: AtomicBool::new(o.enforce_rate_limit),
            manifest_gets: AtomicU64::new(0),
        }
    }

    /// Stall `host`: it still accepts connections and reads (and logs) requests, but answers
    /// nothing until the stall is lifted (then it answers normally) or the double shuts down.
    pub fn set_stall(&self, host: Host, on: bool) {
        self.stall[host as usize].store(on, Ordering::SeqCst);
    }

    /// Whether `host` is stalled.
    pub fn stalled(&self, host: Host) -> bool {
        self.stall[host as usize].load(Ordering::SeqCst)
    }

    /// Answer the next `count` requests to `host` with `status` and a fitting error body
    /// (e.g. 429 TOOMANYREQUESTS, 500, 503) instead of handling them.
    pub fn inject_status(&self, host: Host, status: u16, count: u64) {
        self.inject.lock().unwrap_or_else(|e| e.into_inner())[host as usize] = (count > 0)
            .then_some(Injected {
                status,
                remaining: count,
            });
    }

    pub(crate) fn take_injected(&self, host: Host) -> Option<u16> {
        let mut slots = self.inject.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut slots[host as usize];
        let inj = slot.as_mut()?;
        let status = inj.status;
        inj.remaining -= 1;
        if inj.remaining == 0 {
            *slot = None;
        }
        Some(status)
    }

    /// Cut blob bodies (CDN, or registry when it serves blobs itself) after `bytes` bytes
    /// and close the connection, for the next `times` blob responses (`None`: every one).
    pub fn cut_blobs_after(&self, bytes: u64, times: Option<u64>) {
        self.cut_times.store(times.unwrap_or(OFF), Ordering::SeqCst);
        self.cut_after.store(bytes, Ordering::SeqCst);
    }

    /// Stop cutting blob bodies.
    pub fn clear_cut(&self) {
        self.cut_after.store(OFF, Ordering::SeqCst);
        self.cut_times.store(0, Ordering::SeqCst);
    }

    /// Consumes one cut, if one is armed: the byte count to stop after.
    pub(crate) fn take_cut(&self) -> Option<u64> {
        let after = self.cut_after.load(Ordering::SeqCst);
        if after == OFF {
            return None;
        }
        let taken = self
            .cut_times
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
                0 => None,
                OFF => Some(OFF),
                n => Some(n - 1),
            });
        taken.is_ok().then_some(after)
    }

    /// Extra redirect hops: the registry's 307 points to a CDN path that answers `302` with a
    /// relative `Location` this many times before the data path serves the bytes.
    pub fn set_extra_hops(&self, hops: u32) {
        self.extra_hops.store(hops, Ordering::SeqCst);
    }

    pub(crate) fn extra_hops(&self) -> u32 {
        self.extra_hops.load(Ordering::SeqCst)
    }

    /// Lifetime of the CDN `verify=` signatures the registry hands out, in seconds from now
    /// (0 or negative: already expired, so the CDN answers 403).
    pub fn set_cdn_signature_ttl(&self, secs: i64) {
        self.cdn_ttl.store(secs, Ordering::SeqCst);
    }

    pub(crate) fn cdn_ttl(&self) -> i64 {
        self.cdn_ttl.load(Ordering::SeqCst)
    }

    /// Lifetime of bearer tokens minted from now on, in seconds (also the `expires_in`
    /// value; 0 or negative: the registry rejects them at once).
    pub fn set_token_ttl(&self, secs: i64) {
        self.token_ttl.store(secs, Ordering::SeqCst);
    }

    pub(crate) fn token_ttl(&self) -> i64 {
        self.token_ttl.load(Ordering::SeqCst)
    }

    /// Which of `token` / `access_token` the token host returns.
    pub fn set_token_fields(&self, fields: TokenFields) {
        self.token_fields.store(fields as u8, Ordering::SeqCst);
    }

    pub(crate) fn token_fields(&self) -> TokenFields {
        match self.token_fields.load(Ordering::SeqCst) {
            1 => TokenFields::TokenOnly,
            2 => TokenFields::AccessTokenOnly,
            _ => TokenFields::Both,
        }
    }

    /// Whether token responses carry `expires_in` (ghcr.io omits it).
    pub fn set_expires_in(&self, on: bool) {
        self.expires_in.store(on, Ordering::SeqCst);
    }

    pub(crate) fn expires_in(&self) -> bool {
        self.expires_in.load(Ordering::SeqCst)
    }

    /// Whether blob requests to the registry redirect to the CDN (true, like Docker Hub)
    /// or are served by the registry itself (false, like a plain `registry:2`).
    pub fn set_blob_redirect(&self, on: bool) {
        self.blob_redirect.store(on, Ordering::SeqCst);
    }

    pub(crate) fn blob_redirect(&self) -> bool {
        self.blob_redirect.load(Ordering::SeqCst)
    }

    /// Whether the registry demands bearer tokens (false: anonymous like registry.k8s.io).
    pub fn set_require_auth(&self, on: bool) {
        self.require_auth.store(on, Ordering::SeqCst);
    }

    pub(crate) fn require_auth(&self) -> bool {
        self.require_auth.load(Ordering::SeqCst)
    }

    /// Pull limit announced in `ratelimit-limit`; `enforce` makes manifest GETs past it
    /// answer 429 TOOMANYREQUESTS. Also resets the count of manifest GETs.
    pub fn set_rate_limit(&self, limit: u64, enforce: bool) {
        self.rate_limit.store(limit, Ordering::SeqCst);
        self.enforce_rate_limit.store(enforce, Ordering::SeqCst);
        self.manifest_gets.store(0, Ordering::SeqCst);
    }

    /// Manifest GETs the registry answered (HEADs do not count, as on Docker Hub).
    pub fn manifest_gets(&self) -> u64 {
        self.manifest_gets.load(Ordering::SeqCst)
    }

    /// Counts one manifest GET; returns (limit, remaining after it, allowed).
    pub(crate) fn count_manifest_get(&self) -> (u64, u64, bool) {
        let limit = self.rate_limit.load(Ordering::SeqCst);
        let before = self.manifest_gets.fetch_add(1, Ordering::SeqCst);
        let allowed = before < limit || !self.enforce_rate_limit.load(Ordering::SeqCst);
        (limit, limit.saturating_sub(before + 1), allowed)
    }

    /// Current (limit, remaining) without counting.
    pub(crate) fn rate_limit_now(&self) -> (u64, u64) {
        let limit = self.rate_limit.load(Ordering::SeqCst);
        (limit, limit.saturating_sub(self.manifest_gets()))
    }
}
