//! Which credentials a request takes upstream: the client's own, or, for an
//! anonymous client pulling a public repository from a registry with
//! `username`/`password` in the config, the operator's account. Docker Hub
//! counts anonymous manifest GETs per client IP, and every client of a
//! public mirror shares the mirror's IP; under the operator's account the
//! pulls count against its (larger) allowance instead.
//!
//! The operator's credentials must never open a private repository to a
//! client the upstream would refuse, so they are used only where the
//! upstream itself serves anonymous requests: the repository is known
//! (freshly, from an anonymous success, see `cache::access`) to be
//! anonymously pullable. When that is not known, a manifest GET (the
//! request the quota counts) first asks with a HEAD under the client's own
//! anonymous token (HEADs are free on Docker Hub); a blob GET (not counted)
//! simply goes with the client's own. A client that logged in keeps its own
//! credentials.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cache::access::Who;
use crate::config::RegistryId;
use crate::error::UpstreamError;
use crate::relay::{self, Collect};
use crate::route::classify::Route;
use crate::wire::challenge;
use crate::wire::http::ClientFraming;
use crate::wire::method::Method;
use crate::wire::url::{Scheme, Url};
use crate::worker::{Realm, Worker};

use super::fetch::{fetch, release_after, Fetch, Fetched};

/// A ping body is a few bytes of JSON; more is not read.
const MAX_PING_BODY: u64 = 64 * 1024;
/// Token answers are a few KiB of JSON.
const MAX_TOKEN_BODY: usize = 64 * 1024;
/// A token is given up this long before its `expires_in` says, so that it
/// does not expire between the check and the upstream's.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);
/// `expires_in` when the token service names none (the token spec's).
const DEFAULT_EXPIRES_IN: u64 = 60;

/// The operator's `Authorization` value to send upstream instead of the
/// client's, or `None` to send the client's own.
pub async fn operator_for(
    w: &Worker,
    reg: RegistryId,
    route: &Route<'_>,
    method: Method,
    who: Option<Who<'_>>,
    probe: &Fetch<'_>,
) -> Option<Arc<[u8]>> {
    w.cfg.registry(reg).credentials.as_ref()?;
    let access = w.access.as_ref()?;
    let who = who?;
    let manifest = matches!(route, Route::Manifest { .. });
    let content = manifest || matches!(route, Route::Blob { .. });
    if !content || method != Method::Get || !access.is_anonymous(who.authorization) {
        return None;
    }
    if !access.is_public(who) {
        // With no credentials at all a token registry answers 401 whatever
        // the repository: asking would teach nothing.
        if !manifest || who.authorization.is_none() {
            return None;
        }
        let head = Fetch {
            method: Method::Head,
            ..probe.clone()
        };
        let Ok(f) = fetch(w, head).await else {
            return None;
        };
        if f.granted() {
            access.learn_ok(who, None);
        } else if matches!(f.head.status, 401 | 403 | 404) {
            access.learn_refused(who);
        }
        release_after(w, f.conn, &f.head, MAX_PING_BODY).await;
        if !access.is_public(who) {
            return None;
        }
    }
    operator_token(w, reg, who.repo).await
}

/// With mirror authentication (`[auth]`): the mirror's own upstream
/// identity for pulling `repo`, never a client's. The operator's account
/// when the registry has one, else an anonymous token of the registry's
/// token service (what a client without credentials would get). `None`:
/// no credentials at all (a registry without token auth, or its token
/// service is down: the upstream's answer then says what is refused).
pub async fn mirror_authorization(w: &Worker, reg: RegistryId, repo: &str) -> Option<Arc<[u8]>> {
    if w.cfg.registry(reg).credentials.is_some() {
        return operator_token(w, reg, repo).await;
    }
    upstream_token(w, reg, repo, None).await
}

/// The operator's `Authorization` for pulling `repo`: a bearer token from
/// the registry's token service (kept per worker until it expires), or the
/// Basic credentials themselves for a registry without token auth. `None`
/// when none can be had (the client's own are used then).
async fn operator_token(w: &Worker, reg: RegistryId, repo: &str) -> Option<Arc<[u8]>> {
    let creds = w.cfg.registry(reg).credentials.as_ref()?;
    let basic = challenge::basic_authorization(&creds.username, &creds.password);
    upstream_token(w, reg, repo, Some(&basic)).await
}

/// A token of `reg`'s token service for pulling `repo`, asked with `basic`
/// credentials or without any; kept per worker until it expires (one
/// registry has either an account or none, so the two kinds never share a
/// key). Without token auth: the Basic credentials themselves, if any.
async fn upstream_token(
    w: &Worker,
    reg: RegistryId,
    repo: &str,
    basic: Option<&[u8]>,
) -> Option<Arc<[u8]>> {
    if let Some(t) = w.operator_token(reg, repo) {
        return Some(t);
    }
    let realm = match w.realm(reg) {
        Some(r) => r,
        None => match learn_realm(w, reg).await {
            Ok(Some(r)) => r,
            Ok(None) => return basic.map(Into::into),
            Err(_) => return None,
        },
    };
    let Realm { mut url, service } = realm;
    let sep = if url.path_and_query.contains('?') {
        '&'
    } else {
        '?'
    };
    url.path_and_query.push(sep);
    if let Some(s) = &service {
        url.path_and_query.push_str("service=");
        challenge::percent_encode(s, &mut url.path_and_query);
        url.path_and_query.push('&');
    }
    url.path_and_query.push_str("scope=");
    let scope = format!("repository:{repo}:pull");
    challenge::percent_encode(&scope, &mut url.path_and_query);
    let f = Fetch {
        method: Method::Get,
        url,
        registry: reg,
        headers: Vec::new(),
        authorization: basic,
        body: None,
    };
    let (token, expires_in) = match fetch_token(w, f).await {
        Ok(t) => t,
        Err(why) => {
            crate::event!(
                crate::ops::log::Level::Warn,
                Some(w.id),
                "{}: no token for the configured account ({why}); pulling with the client's own",
                w.cfg.registry(reg).name
            );
            return None;
        }
    };
    let value: Arc<[u8]> = format!("Bearer {token}").into_bytes().into();
    let life = Duration::from_secs(expires_in.unwrap_or(DEFAULT_EXPIRES_IN).min(86_400));
    if let Some(life) = life.checked_sub(EXPIRY_MARGIN) {
        w.keep_operator_token(reg, repo, value.clone(), Instant::now() + life);
    }
    Some(value)
}

/// A token service's answer: the token and its `expires_in`.
async fn fetch_token(w: &Worker, f: Fetch<'_>) -> Result<(String, Option<u64>), String> {
    let Fetched { mut conn, head, .. } = fetch(w, f).await.map_err(|e| e.to_string())?;
    if head.status != 200 {
        release_after(w, conn, &head, MAX_PING_BODY).await;
        return Err(format!("token service answered {}", head.status));
    }
    conn.consume(head.head_len);
    let mut body = Collect::new(MAX_TOKEN_BODY);
    let mut buf = w.bufs.take();
    let r = relay::relay_body(
        &mut conn,
        head.framing,
        &mut body,
        &relay::Pace::fixed(w.cfg.timeouts.upstream_read),
        &mut relay::tap::NoTap,
        ClientFraming::for_client(head.framing, 0),
        &mut buf,
    )
    .await;
    w.bufs.give(buf);
    match r {
        Ok(done) if done.reusable && head.keep_alive => w.upstreams.release(conn),
        Ok(_) => {}
        Err(e) => return Err(format!("token answer cut short: {e}")),
    }
    let body = body.into_inner();
    challenge::issued_token(&body)
        .map(|(t, e)| (t.to_string(), e))
        .ok_or_else(|| "token answer without a token".to_string())
}

/// Asks the upstream's `/v2/` for its challenge and remembers the realm.
/// `Ok(None)`: the upstream does not use token auth.
pub async fn learn_realm(w: &Worker, reg: RegistryId) -> Result<Option<Realm>, UpstreamError> {
    let f = Fetch {
        method: Method::Get,
        url: Url {
            origin: w.cfg.registry(reg).upstream.clone(),
            path_and_query: "/v2/".into(),
        },
        registry: reg,
        headers: Vec::new(),
        authorization: None,
        body: None,
    };
    let Fetched { conn, head, .. } = fetch(w, f).await?;
    let realm = if head.status == 401 {
        head.header(&conn, "www-authenticate")
            .and_then(challenge::parse_challenge)
            .and_then(|c| challenge::bearer_realm(&c))
            .filter(|(u, _)| u.origin.scheme == Scheme::Https || w.cfg.debug)
            .map(|(url, service)| Realm { url, service })
    } else {
        None
    };
    // Drain the small ping body so the connection can be reused.
    release_after(w, conn, &head, MAX_PING_BODY).await;
    if let Some(r) = &realm {
        w.learn_realm(reg, r.clone());
    }
    Ok(realm)
}
