//! ocirelay's token endpoint. Clients are sent here by the rewritten
//! challenge; the request is forwarded to the realm the upstream named in its
//! own challenge (never to one a client supplies), with scopes mapped to the
//! upstream's names and `Authorization` (docker login) passed through. The
//! upstream's answer is returned unchanged.

use monoio::io::AsyncReadRent;

use crate::conn::{respond_error, BodyError, ClientCtx, Outcome, PendingBody};
use crate::error::{ErrorCode, ErrorReply, UpstreamError};
use crate::pull::{end_head, fetch, send_streamed, Fetch};
use crate::relay::{self, ClientFraming, ClientSink};
use crate::route::registry::{self, Hints};
use crate::upstream::TrustId;
use crate::wire::challenge;
use crate::wire::http::{name_eq, write_header, write_status, RequestHead};
use crate::wire::url::{Scheme, Url};
use crate::worker::{Realm, Worker};

/// Handles `GET|POST /token[/<registry>]`.
#[allow(clippy::too_many_arguments)]
pub async fn token_request<S: AsyncReadRent + ClientSink>(
    w: &Worker,
    req: &RequestHead<'_>,
    named: Option<&str>,
    query: Option<&str>,
    body: &mut PendingBody<'_>,
    client: &mut S,
    out: &mut Vec<u8>,
    _cx: &ClientCtx,
) -> Outcome {
    let cfg = &w.cfg;
    let close = !req.keep_alive;
    let hints = Hints::new(req.host(), query);
    let reg_index = match registry::for_token(cfg, named, hints, query) {
        Ok(i) => i,
        Err(e) => return respond_error(client, out, &e.reply(cfg), false, true).await,
    };
    let reg = &cfg.registries[reg_index];
    let map_name = |name: &str| Some(registry::scope_name(reg, name));

    let realm = match w.realm(reg_index) {
        Some(r) => r,
        None => match learn_realm(w, reg_index).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                let e = ErrorReply::new(
                    404,
                    ErrorCode::Unsupported,
                    format!("registry {} does not use token authentication", reg.name),
                );
                return respond_error(client, out, &e, false, true).await;
            }
            Err(e) => return respond_error(client, out, &e.reply(&reg.name), false, true).await,
        },
    };

    // The query: the realm's own parameters, then the client's, scopes mapped.
    let Realm { mut url, service } = realm;
    let service = service.as_deref();
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        let Some(mapped) = challenge::rewrite_token_params(q, map_name, service) else {
            let e = ErrorReply::new(400, ErrorCode::Unknown, "malformed query string");
            return respond_error(client, out, &e, false, true).await;
        };
        let sep = if url.path_and_query.contains('?') {
            '&'
        } else {
            '?'
        };
        url.path_and_query.reserve(1 + mapped.len());
        url.path_and_query.push(sep);
        url.path_and_query.push_str(&mapped);
    }

    let form;
    let post = req.method == "POST";
    if post {
        let raw = match body
            .read_all(
                client,
                cfg.limits.max_token_body_bytes,
                cfg.timeouts.client_header,
            )
            .await
        {
            Ok(b) => b,
            Err(BodyError::TooLarge) => {
                let e = ErrorReply::new(413, ErrorCode::Unknown, "token request body too large");
                return respond_error(client, out, &e, false, true).await;
            }
            Err(BodyError::Malformed) => {
                let e = ErrorReply::new(400, ErrorCode::Unknown, "malformed chunked request body");
                return respond_error(client, out, &e, false, true).await;
            }
            Err(BodyError::Io) => return Outcome::Close,
        };
        let text = String::from_utf8(raw).unwrap_or_default();
        match challenge::rewrite_token_params(text.trim(), map_name, service) {
            Some(f) => form = f.into_bytes(),
            None => {
                let e = ErrorReply::new(400, ErrorCode::Unknown, "malformed form body");
                return respond_error(client, out, &e, false, true).await;
            }
        }
    } else {
        form = Vec::new();
    }

    let mut headers: Vec<(&str, &[u8])> = Vec::with_capacity(6);
    let mut authorization = None;
    for h in req.headers {
        if name_eq(h.name, "authorization") {
            authorization = Some(h.value);
        } else if name_eq(h.name, "user-agent") || name_eq(h.name, "accept") {
            headers.push((h.name, h.value));
        }
    }
    if post {
        headers.push(("Content-Type", b"application/x-www-form-urlencoded"));
    }
    let f = Fetch {
        method: if post { "POST" } else { "GET" },
        url,
        trust: TrustId(reg_index),
        headers,
        authorization,
        body: post.then_some(form.as_slice()),
    };
    let (mut conn, head, _) = match fetch(w, f).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ocirelay[{}]: token for {} -> {e}", w.id, reg.name);
            return respond_error(client, out, &e.reply(&reg.name), false, true).await;
        }
    };

    let to_client = ClientFraming::for_client(head.framing, req.minor);
    let close = close || to_client.close_delimited(head.framing);
    out.clear();
    write_status(out, head.status);
    for (name, value) in head.headers(&conn) {
        let keep = [
            "content-type",
            "cache-control",
            "pragma",
            "www-authenticate",
            "retry-after",
        ]
        .iter()
        .any(|h| name_eq(name, h));
        // A Bearer challenge from the token server would name an upstream
        // host; Basic ones (bad credentials) are passed on.
        let bearer_challenge = name_eq(name, "www-authenticate") && !value.starts_with(b"Basic");
        if keep && !bearer_challenge {
            write_header(out, name, value);
        }
    }
    end_head(out, head.framing, to_client, close);
    conn.consume(head.head_len);
    send_streamed(w, req, conn, &head, client, out, to_client, close, None).await
}

/// Asks the upstream's `/v2/` for its challenge and remembers the realm.
/// `Ok(None)`: the upstream does not use token auth.
async fn learn_realm(w: &Worker, reg_index: usize) -> Result<Option<Realm>, UpstreamError> {
    let reg = &w.cfg.registries[reg_index];
    let f = Fetch {
        method: "GET",
        url: Url {
            origin: reg.upstream.clone(),
            path_and_query: "/v2/".into(),
        },
        trust: TrustId(reg_index),
        headers: Vec::new(),
        authorization: None,
        body: None,
    };
    let (mut conn, head, _) = fetch(w, f).await?;
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
    conn.consume(head.head_len);
    let mut buf = w.take_buf();
    if let Ok(done) = relay::relay_body(
        &mut conn,
        head.framing,
        &mut relay::Collect::discard(),
        w.cfg.timeouts.client_write,
        None,
        ClientFraming::Same,
        &mut buf,
    )
    .await
    {
        if done.reusable && head.keep_alive {
            w.upstreams.release(conn);
        }
    }
    w.give_buf(buf);
    if let Some(r) = &realm {
        w.learn_realm(reg_index, r.clone());
    }
    Ok(realm)
}
