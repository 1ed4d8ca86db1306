//! regtoken: the pieces of a Docker-Hub-like upstream that real software does not ship.
//!
//! - `regtoken gen-certs DIR NAME=HOST[,HOST..]...` makes a test CA, TLS leaf
//!   certificates and the JWT signing certificate (see certs.rs).
//! - `regtoken serve ...` is a token server for the distribution registry's
//!   `auth: token` mode (GET and OAuth2 POST `/token`), and optionally, on a second
//!   plain-HTTP loopback listener, `/sign`: nginx hands it the registry's blob redirect
//!   and gets back the same URL signed for nginx's `secure_link` (expiring CDN URLs).
//! - `regtoken sign-url --secret S --ttl N URL` signs a CDN URL from the shell.

mod certs;
mod http;
mod md5;
mod token;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use http::{Request, Response};
use ring::hmac;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::exit;
use std::sync::Arc;
use std::thread;
use token::{grant, now, parse_scope, rfc3339, Access, Signer};

const USAGE: &str = "usage:
  regtoken gen-certs DIR NAME=HOST[,HOST..]...
  regtoken serve --addr IP:PORT --cert PEM --key PEM --signing-dir DIR
                 [--issuer NAME] [--service NAME] [--user NAME:PASSWORD]... [--token-ttl SECS]
                 [--private PREFIX]...  (default: private/)
                 [--internal-addr IP:PORT --cdn-secret SECRET [--cdn-ttl SECS]]
  regtoken sign-url --secret SECRET --ttl SECS URL";

fn die(msg: &str) -> ! {
    eprintln!("regtoken: {msg}");
    exit(2)
}

fn log(msg: &str) {
    eprintln!("{} {msg}", rfc3339(now()));
}

/// Signs `url` for nginx: `secure_link $arg_md5,$arg_expires;`
/// `secure_link_md5 "$secure_link_expires$uri SECRET";`
fn sign_url(url: &str, secret: &str, ttl: i64) -> Option<String> {
    let after_scheme = url.split_once("://")?.1;
    let path_and_query = &after_scheme[after_scheme.find('/')?..];
    let path = path_and_query.split('?').next()?;
    let expires = now() + ttl;
    let sum = md5::digest(format!("{expires}{path} {secret}").as_bytes());
    let sep = if url.contains('?') { '&' } else { '?' };
    Some(format!(
        "{url}{sep}md5={}&expires={expires}",
        URL_SAFE_NO_PAD.encode(sum)
    ))
}

struct Server {
    signer: Signer,
    service: String,
    users: Vec<(String, String)>,
    private: Vec<String>,
    token_ttl: i64,
    refresh_key: hmac::Key,
}

enum Auth {
    Anonymous,
    User(String),
    Bad,
}

impl Server {
    fn check_password(&self, user: &str, pass: &str) -> Auth {
        if self.users.iter().any(|(u, p)| u == user && p == pass) {
            Auth::User(user.to_string())
        } else {
            Auth::Bad
        }
    }

    fn basic_auth(&self, req: &Request) -> Auth {
        let Some(h) = req.header("authorization") else {
            return Auth::Anonymous;
        };
        let Some(b64) = h
            .strip_prefix("Basic ")
            .or_else(|| h.strip_prefix("basic "))
        else {
            return Auth::Bad;
        };
        let Ok(raw) = STANDARD.decode(b64.trim()) else {
            return Auth::Bad;
        };
        let raw = String::from_utf8_lossy(&raw);
        match raw.split_once(':') {
            Some((u, p)) => self.check_password(u, p),
            None => Auth::Bad,
        }
    }

    fn refresh_token(&self, user: &str) -> String {
        let tag = hmac::sign(&self.refresh_key, user.as_bytes());
        format!("rt1.{user}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    fn check_refresh_token(&self, rt: &str) -> Auth {
        let mut parts = rt.splitn(3, '.');
        let (Some("rt1"), Some(user), Some(tag)) = (parts.next(), parts.next(), parts.next())
        else {
            return Auth::Bad;
        };
        let Ok(tag) = URL_SAFE_NO_PAD.decode(tag) else {
            return Auth::Bad;
        };
        match hmac::verify(&self.refresh_key, user.as_bytes(), &tag) {
            Ok(()) => Auth::User(user.to_string()),
            Err(_) => Auth::Bad,
        }
    }

    fn issue(
        &self,
        user: Option<&str>,
        service: Option<&str>,
        scopes: &[String],
        refresh: bool,
    ) -> (Response, String) {
        let mut access: Vec<Access> = Vec::new();
        for s in scopes.iter().flat_map(|s| s.split(' ')) {
            if s.is_empty() {
                continue;
            }
            if let Some(want) = parse_scope(s) {
                let got = grant(user, &want, &self.private);
                match access
                    .iter_mut()
                    .find(|a| a.typ == got.typ && a.name == got.name)
                {
                    Some(a) => {
                        for act in got.actions {
                            if !a.actions.contains(&act) {
                                a.actions.push(act);
                            }
                        }
                    }
                    None => access.push(got),
                }
            }
        }
        let aud = service.filter(|s| !s.is_empty()).unwrap_or(&self.service);
        let jwt = self
            .signer
            .issue(user.unwrap_or(""), aud, &access, self.token_ttl);
        let mut body = json!({
            "token": jwt,
            "access_token": jwt,
            "expires_in": self.token_ttl,
            "issued_at": rfc3339(now()),
        });
        if let (true, Some(u)) = (refresh, user) {
            body["refresh_token"] = json!(self.refresh_token(u));
        }
        let granted: Vec<String> = access
            .iter()
            .map(|a| format!("{}:{}:{}", a.typ, a.name, a.actions.join(",")))
            .collect();
        (Response::json(200, &body), granted.join(" "))
    }

    fn handle(&self, req: &Request) -> Response {
        let (resp, note) = self.route(req);
        log(&format!(
            "{} {}{}{} -> {} {}",
            req.method,
            req.path,
            if req.query.is_empty() { "" } else { "?" },
            req.query,
            resp.status,
            note
        ));
        resp
    }

    fn unauthorized(what: &str) -> (Response, String) {
        (
            Response::json(401, &json!({"details": "incorrect username or password"}))
                .header("Www-Authenticate", "Basic realm=\"regtoken\""),
            format!("(bad credentials: {what})"),
        )
    }

    fn route(&self, req: &Request) -> (Response, String) {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET" | "HEAD", "/healthz") => (Response::text(200, "ok\n"), String::new()),
            ("GET", "/token") => {
                let q = http::parse_pairs(&req.query);
                let user = match self.basic_auth(req) {
                    Auth::Anonymous => None,
                    Auth::User(u) => Some(u),
                    Auth::Bad => return Self::unauthorized("basic"),
                };
                let service = q
                    .iter()
                    .find(|(k, _)| k == "service")
                    .map(|(_, v)| v.as_str());
                let scopes: Vec<String> = q
                    .iter()
                    .filter(|(k, _)| k == "scope")
                    .map(|(_, v)| v.clone())
                    .collect();
                let offline = q.iter().any(|(k, v)| k == "offline_token" && v == "true");
                let (r, g) = self.issue(user.as_deref(), service, &scopes, offline);
                (
                    r,
                    format!("user={} granted=[{g}]", user.unwrap_or_default()),
                )
            }
            ("POST", "/token") => {
                let ct = req.header("content-type").unwrap_or("");
                if !ct.starts_with("application/x-www-form-urlencoded") {
                    return (
                        Response::json(400, &json!({"error": "invalid_request"})),
                        format!("(content-type {ct:?})"),
                    );
                }
                let f = http::parse_pairs(&String::from_utf8_lossy(&req.body));
                let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
                let auth = match get("grant_type") {
                    Some("password") => self.check_password(
                        get("username").unwrap_or(""),
                        get("password").unwrap_or(""),
                    ),
                    Some("refresh_token") => {
                        self.check_refresh_token(get("refresh_token").unwrap_or(""))
                    }
                    other => {
                        return (
                            Response::json(400, &json!({"error": "unsupported_grant_type"})),
                            format!("(grant_type {other:?})"),
                        )
                    }
                };
                let user = match auth {
                    Auth::User(u) => u,
                    _ => return Self::unauthorized("oauth"),
                };
                let scopes: Vec<String> = f
                    .iter()
                    .filter(|(k, _)| k == "scope")
                    .map(|(_, v)| v.clone())
                    .collect();
                let offline = get("access_type") == Some("offline");
                let (r, g) = self.issue(Some(&user), get("service"), &scopes, offline);
                (r, format!("oauth user={user} granted=[{g}]"))
            }
            (_, "/token") => (Response::text(405, "method not allowed\n"), String::new()),
            _ => (Response::text(404, "not found\n"), String::new()),
        }
    }
}

/// The internal listener: nginx's `error_page 307 = @sign` passes the registry's
/// redirect target in `X-Location` and relays our 307 with the signed URL.
fn handle_sign(req: &Request, secret: &str, ttl: i64) -> Response {
    let resp = match (req.method.as_str(), req.path.as_str()) {
        ("GET" | "HEAD", "/healthz") => Response::text(200, "ok\n"),
        (_, "/sign") => match req
            .header("x-location")
            .and_then(|l| sign_url(l, secret, ttl))
        {
            Some(signed) => Response::new(307)
                .header("Location", &signed)
                .header("Cache-Control", "no-store"),
            None => Response::text(400, "missing or bad X-Location\n"),
        },
        _ => Response::text(404, "not found\n"),
    };
    log(&format!(
        "internal {} {} {:?} -> {}",
        req.method,
        req.path,
        req.header("x-location").unwrap_or(""),
        resp.status
    ));
    resp
}

struct Args {
    rest: Vec<String>,
}

impl Args {
    fn take(&mut self, flag: &str) -> Option<String> {
        let i = self.rest.iter().position(|a| a == flag)?;
        if i + 1 >= self.rest.len() {
            die(&format!("{flag} needs a value"));
        }
        let v = self.rest.remove(i + 1);
        self.rest.remove(i);
        Some(v)
    }
    fn take_all(&mut self, flag: &str) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(v) = self.take(flag) {
            out.push(v);
        }
        out
    }
    fn need(&mut self, flag: &str) -> String {
        self.take(flag)
            .unwrap_or_else(|| die(&format!("{flag} is required\n{USAGE}")))
    }
    fn done(self) -> Vec<String> {
        if let Some(a) = self.rest.iter().find(|a| a.starts_with("--")) {
            die(&format!("unknown option {a}\n{USAGE}"));
        }
        self.rest
    }
}

fn num(s: &str, what: &str) -> i64 {
    s.parse()
        .unwrap_or_else(|_| die(&format!("{what}: not a number: {s}")))
}

fn tls_config(cert: &str, key: &str) -> Arc<rustls::ServerConfig> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap_or_else(|e| die(&format!("{cert}: {e}")))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| die(&format!("{cert}: {e}")));
    let key = PrivateKeyDer::from_pem_file(key).unwrap_or_else(|e| die(&format!("{key}: {e}")));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| die(&format!("tls: {e}")))
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap_or_else(|e| die(&format!("tls: {e}")));
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

fn serve(mut a: Args) {
    let addr = a.need("--addr");
    let cert = a.need("--cert");
    let key = a.need("--key");
    let signing_dir = PathBuf::from(a.need("--signing-dir"));
    let issuer = a.take("--issuer").unwrap_or_else(|| "regtoken".into());
    let service = a
        .take("--service")
        .unwrap_or_else(|| "registry.docker.io".into());
    let token_ttl = a
        .take("--token-ttl")
        .map(|v| num(&v, "--token-ttl"))
        .unwrap_or(300);
    let mut users: Vec<(String, String)> = a
        .take_all("--user")
        .iter()
        .map(|u| {
            let (n, p) = u
                .split_once(':')
                .unwrap_or_else(|| die("--user wants NAME:PASSWORD"));
            (n.to_string(), p.to_string())
        })
        .collect();
    if users.is_empty() {
        users.push(("alice".into(), "wonderland".into()));
    }
    let mut private = a.take_all("--private");
    if private.is_empty() {
        private.push("private/".into());
    }
    let internal = a.take("--internal-addr");
    let cdn_secret = a.take("--cdn-secret");
    let cdn_ttl = a
        .take("--cdn-ttl")
        .map(|v| num(&v, "--cdn-ttl"))
        .unwrap_or(1200);
    if !a.done().is_empty() {
        die(USAGE);
    }

    let signer = Signer::load(&signing_dir, &issuer).unwrap_or_else(|e| die(&e.to_string()));
    let mut rk = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut rk).expect("rng");
    let server = Arc::new(Server {
        signer,
        service,
        users,
        private,
        token_ttl,
        refresh_key: hmac::Key::new(hmac::HMAC_SHA256, &rk),
    });
    let tls = tls_config(&cert, &key);
    let listener = TcpListener::bind(&addr).unwrap_or_else(|e| die(&format!("bind {addr}: {e}")));

    if let Some(iaddr) = internal {
        let secret = cdn_secret.unwrap_or_else(|| die("--internal-addr needs --cdn-secret"));
        let il = TcpListener::bind(&iaddr).unwrap_or_else(|e| die(&format!("bind {iaddr}: {e}")));
        log(&format!(
            "internal signer on http://{iaddr}, cdn ttl {cdn_ttl}s"
        ));
        thread::spawn(move || {
            http::serve_plain(
                il,
                Arc::new(move |r: &Request| handle_sign(r, &secret, cdn_ttl)),
            )
        });
    }
    log(&format!("token server on https://{addr}/token"));
    http::serve_tls(listener, tls, Arc::new(move |r: &Request| server.handle(r)));
}

fn main() {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() {
        die(USAGE);
    }
    let cmd = argv.remove(0);
    let mut a = Args { rest: argv };
    match cmd.as_str() {
        "gen-certs" => {
            let rest = a.done();
            let Some((dir, specs)) = rest.split_first() else {
                die(USAGE)
            };
            if let Err(e) = certs::gen_certs(&PathBuf::from(dir), specs) {
                die(&e.to_string());
            }
        }
        "serve" => serve(a),
        "sign-url" => {
            let secret = a.need("--secret");
            let ttl = num(&a.need("--ttl"), "--ttl");
            let rest = a.done();
            let [url] = rest.as_slice() else { die(USAGE) };
            match sign_url(url, &secret, ttl) {
                Some(s) => println!("{s}"),
                None => die("not an absolute URL"),
            }
        }
        "-h" | "--help" | "help" => println!("{USAGE}"),
        _ => die(USAGE),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn signs_like_nginx() {
        let s = super::sign_url("https://h:1/a/b/data", "k", 10).unwrap();
        assert!(s.starts_with("https://h:1/a/b/data?md5="));
        assert!(s.contains("&expires="));
        let t = super::sign_url("https://h/x?y=1", "k", 10).unwrap();
        assert!(t.starts_with("https://h/x?y=1&md5="));
    }
}
