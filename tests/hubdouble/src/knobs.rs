//! Runtime-switchable behaviour and faults, shared with the server threads.

use crate::Host;
use std::sync::atomic::{
    AtomicBool, AtomicI64, AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering,
};
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

/// How signed CDN URLs (blob and manifest redirects) are signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UrlSigning {
    /// Docker Hub / Cloudflare style: `?verify=<expiry>-<hex hmac>`.
    #[default]
    Verify,
    /// CloudFront style (quay.io): `?Expires=<unix>&Signature=<b64 with -_~>&Key-Pair-Id=<id>`
    /// (see [`crate::CLOUDFRONT_KEY_PAIR_ID`]).
    CloudFront,
}

/// Where the registry's blob redirect (`Location`) points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BlobLocation {
    /// An absolute URL on the CDN host (`https://127.0.0.3:<port>/registry-v2/...?<sig>`).
    #[default]
    Cdn,
    /// An absolute-path reference on the registry host itself (`/registry-v2/...?<sig>`), which
    /// the registry serves (signature checked, `Authorization` ignored).
    RegistryPath,
    /// A relative reference with dot segments (`../../../../registry-v2/...?<sig>` for
    /// `/v2/a/b/blobs/<digest>`) that resolves (RFC 3986) to the [`BlobLocation::RegistryPath`]
    /// path on the registry host.
    RegistryDotSegments,
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
    corrupt_times: AtomicU64,
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
    blob_redirect_status: AtomicU16,
    url_signing: AtomicU8,
    blob_location: AtomicU8,
    manifest_redirect: AtomicBool,
    manifest_head_length: AtomicBool,
    manifest_head_digest: AtomicBool,
    k8s_redirects: AtomicBool,
    region_seq: AtomicU64,
    regions: Mutex<Vec<String>>,
    redirect_all: Mutex<Option<String>>,
    redirect_all_status: AtomicU16,
}

impl Knobs {
    pub(crate) fn new(o: &crate::Options) -> Knobs {
        Knobs {
            stall: Default::default(),
            inject: Mutex::new([None; 3]),
            cut_after: AtomicU64::new(OFF),
            cut_times: AtomicU64::new(0),
            corrupt_times: AtomicU64::new(0),
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
            blob_redirect_status: AtomicU16::new(o.blob_redirect_status),
            url_signing: AtomicU8::new(o.url_signing as u8),
            blob_location: AtomicU8::new(o.blob_location as u8),
            manifest_redirect: AtomicBool::new(o.manifest_redirect),
            manifest_head_length: AtomicBool::new(o.manifest_head_content_length),
            manifest_head_digest: AtomicBool::new(o.manifest_head_digest),
            k8s_redirects: AtomicBool::new(o.k8s_redirects),
            region_seq: AtomicU64::new(0),
            regions: Mutex::new(o.regions.clone()),
            redirect_all: Mutex::new(o.redirect_all_to.clone()),
            redirect_all_status: AtomicU16::new(o.redirect_all_status),
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

    /// Serve the next `times` blob bodies (CDN, or registry when it serves blobs itself) with
    /// their last byte flipped: an upstream sending bytes that do not match their digest.
    pub fn corrupt_blobs(&self, times: u64) {
        self.corrupt_times.store(times, Ordering::SeqCst);
    }

    /// Consumes one corruption, if one is armed.
    pub(crate) fn take_corrupt(&self) -> bool {
        self.corrupt_times
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
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

    /// Status of the registry's blob redirects: 307 (default, Docker Hub, ghcr.io) or 302
    /// (quay.io, gcr.io); any 3xx is sent as given.
    pub fn set_blob_redirect_status(&self, status: u16) {
        self.blob_redirect_status.store(status, Ordering::SeqCst);
    }

    pub(crate) fn blob_redirect_status(&self) -> u16 {
        self.blob_redirect_status.load(Ordering::SeqCst)
    }

    /// How the registry signs the CDN URLs it redirects to (the CDN accepts both styles).
    pub fn set_url_signing(&self, signing: UrlSigning) {
        self.url_signing.store(signing as u8, Ordering::SeqCst);
    }

    pub(crate) fn url_signing(&self) -> UrlSigning {
        match self.url_signing.load(Ordering::SeqCst) {
            1 => UrlSigning::CloudFront,
            _ => UrlSigning::Verify,
        }
    }

    /// Where blob redirects point (CDN, or a relative reference on the registry host).
    pub fn set_blob_location(&self, location: BlobLocation) {
        self.blob_location.store(location as u8, Ordering::SeqCst);
    }

    pub(crate) fn blob_location(&self) -> BlobLocation {
        match self.blob_location.load(Ordering::SeqCst) {
            1 => BlobLocation::RegistryPath,
            2 => BlobLocation::RegistryDotSegments,
            _ => BlobLocation::Cdn,
        }
    }

    /// Whether manifest GET/HEAD (after auth, for known manifests) answer `307` to a signed
    /// CDN URL `/manifests/sha256/<hex>` instead of the manifest itself.
    pub fn set_manifest_redirect(&self, on: bool) {
        self.manifest_redirect.store(on, Ordering::SeqCst);
    }

    pub(crate) fn manifest_redirect(&self) -> bool {
        self.manifest_redirect.load(Ordering::SeqCst)
    }

    /// Whether manifest HEAD responses carry `Content-Length` (gcr.io may omit it). GETs
    /// always do.
    pub fn set_manifest_head_content_length(&self, on: bool) {
        self.manifest_head_length.store(on, Ordering::SeqCst);
    }

    pub(crate) fn manifest_head_content_length(&self) -> bool {
        self.manifest_head_length.load(Ordering::SeqCst)
    }

    /// Whether manifest HEAD responses carry `Docker-Content-Digest`. GETs always do.
    pub fn set_manifest_head_digest(&self, on: bool) {
        self.manifest_head_digest.store(on, Ordering::SeqCst);
    }

    pub(crate) fn manifest_head_digest(&self) -> bool {
        self.manifest_head_digest.load(Ordering::SeqCst)
    }

    /// registry.k8s.io mode: `/v2/` answers 200 without auth and every other `/v2/...`
    /// request answers `307` to `<cdn>/regional/<region>/v2/...` (region rotating).
    pub fn set_k8s_redirects(&self, on: bool) {
        self.k8s_redirects.store(on, Ordering::SeqCst);
    }

    pub(crate) fn k8s_redirects(&self) -> bool {
        self.k8s_redirects.load(Ordering::SeqCst)
    }

    /// Regions the k8s mode rotates through (empty: ignored).
    pub fn set_regions(&self, regions: &[&str]) {
        if regions.is_empty() {
            return;
        }
        *self.regions.lock().unwrap_or_else(|e| e.into_inner()) =
            regions.iter().map(|r| r.to_string()).collect();
    }

    /// The regions the k8s mode rotates through.
    pub fn regions(&self) -> Vec<String> {
        self.regions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The region for the next k8s redirect (round robin).
    pub(crate) fn next_region(&self) -> String {
        let regions = self.regions.lock().unwrap_or_else(|e| e.into_inner());
        let n = self.region_seq.fetch_add(1, Ordering::SeqCst) as usize;
        regions
            .get(n % regions.len().max(1))
            .cloned()
            .unwrap_or_else(|| "us-east1".into())
    }

    pub(crate) fn is_region(&self, region: &str) -> bool {
        self.regions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|r| r == region)
    }

    /// k8s.gcr.io mode: `Some(base URL)` makes every `/v2...` request answer
    /// [`Knobs::set_redirect_all_status`] (302) to `<base URL><path>?<query>`; `None` turns it
    /// off.
    pub fn set_redirect_all_to(&self, url: Option<&str>) {
        *self.redirect_all.lock().unwrap_or_else(|e| e.into_inner()) =
            url.map(|u| u.trim_end_matches('/').to_string());
    }

    pub(crate) fn redirect_all_to(&self) -> Option<String> {
        self.redirect_all
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Status of the redirect-all answers (default 302).
    pub fn set_redirect_all_status(&self, status: u16) {
        self.redirect_all_status.store(status, Ordering::SeqCst);
    }

    pub(crate) fn redirect_all_status(&self) -> u16 {
        self.redirect_all_status.load(Ordering::SeqCst)
    }
}
