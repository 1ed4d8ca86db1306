//! `/token` when the mirror authenticates its own clients (`[auth]`): the
//! mirror's users log in here (Basic credentials, as `docker login` sends
//! them) and get a token ocirelay issues itself (`gate::auth`); a request
//! without credentials gets a token that grants only what anonymous
//! clients may pull. Nothing is asked upstream.

use crate::config::auth::AuthConfig;
use crate::config::RegistryId;
use crate::downstream::{Outcome, Reply};
use crate::gate::auth;
use crate::relay::ClientSink;
use crate::wire::challenge;
use crate::wire::http::RequestHead;
use crate::wire::method::Method;
use crate::wire::oci::{ErrorCode, ErrorReply};
use crate::worker::Worker;

/// Answers `/token` for registry `reg` from the mirror's own users.
pub async fn mirror_token<S: ClientSink>(
    w: &Worker,
    auth: &AuthConfig,
    reg: RegistryId,
    req: &RequestHead<'_>,
    query: Option<&str>,
    client: &mut S,
    reply: &mut Reply<'_>,
) -> Outcome {
    if req.method == Method::Post {
        // The OAuth2 form (containerd with stored credentials) is not
        // offered: clients fall back to GET with Basic on a 404.
        let e = ErrorReply::new(
            404,
            ErrorCode::Unsupported,
            "this mirror issues tokens on GET with Basic credentials",
        );
        reply.must_close(); // the form body is not read
        return reply.error(client, &e).await;
    }
    let scopes: Vec<String> = query
        .unwrap_or("")
        .split('&')
        .filter_map(|p| p.strip_prefix("scope="))
        .filter_map(|v| challenge::percent_decode(&v.replace('+', " ")))
        .collect();
    let user = match req.header("authorization") {
        None => String::new(),
        Some(v) => match auth::basic_credentials(v)
            .and_then(|(u, p)| auth::login(auth, &w.logins, &u, &p))
        {
            Some(name) => name,
            None => {
                let e =
                    ErrorReply::new(401, ErrorCode::Unauthorized, "wrong user name or password");
                return reply.error(client, &e).await;
            }
        },
    };
    let (token, ttl) = auth::issue(auth, &user, &w.cfg.registry(reg).name, &scopes);
    super::issued(client, reply, &token, ttl).await
}
