//! ocirelay: a thread-per-core io_uring mirror for Docker Hub and other OCI
//! registries.
//!
//! A request's path through the modules:
//!
//! ```text
//! accept    server/      TCP (+ PROXY header, + TLS handshake) on this core's listener
//! parse     conn/        one head, borrowed from the read buffer (wire::http)
//! route     route/       what is asked -> local/ | pull/ | token/ | refusal
//! admit     gate/        per-client limits (in conn)                     -> 429
//! pull      pull/        target -> admit -> plan -> lookup -> fetch -> head -> body
//!   admit   gate/        allow/deny lists, largest blob                  -> 403
//!   lookup  cache/       disk hit | follow | lead; a miss asks the shared
//!                        tier (cache::s3, pull::shared) before the upstream
//!   fetch   upstream/    pool -> connect -> exchange (redirects in pull::fetch)
//!   body    relay/       bounded buffers, taps (digest check), TLS-to-TLS in place
//! respond   downstream/  Reply writes heads; keep-alive | close | reset
//! finish    conn/        RequestSummary -> access log, metrics (ops/) and event log
//! ```
//!
//! Layers (imports go down, never up; `tests/layering.rs` enforces it):
//!
//! ```text
//! server -> conn -> {pull, token, local} -> worker
//!   -> {gate, route, cache, downstream, relay, upstream, acme}
//!   -> {blocking, tls, ops, config, error, sys, wire}
//! ```
//!
//! Sideways in the middle only where one stage plugs into another
//! (`cache -> relay` for the tee and for serving, `cache -> upstream` for the
//! shared tier's S3 requests, `downstream -> relay` for
//! the sink, `downstream -> gate` for the pacer of shaped bodies,
//! `relay -> upstream` for the connection, `token -> pull` for the
//! shared fetch and body phases).
//! `wire/` imports nothing from the crate; `tls/` only `wire/`; `config/`
//! only `wire/` and `tls/` (`config check` asks whether a certificate fits
//! its key); `blocking/` (the HTTP client of commands and background
//! threads) `wire/` and `tls/`.

// ---- the top: start-up, connections, handlers ----
pub mod server;

pub mod conn;

pub mod local;
pub mod pull;
pub mod token;

// ---- per-core state ----
pub mod worker;

// ---- stages ----
pub mod acme;
pub mod cache;
pub mod downstream;
pub mod gate;
pub mod relay;
pub mod route;
pub mod upstream;

// ---- foundations ----
pub mod blocking;
pub mod config;
pub mod error;
pub mod ops;
pub mod sys;
pub mod tls;
pub mod wire;

// The landing page (template, style, script, texts), rendered by `local`.
pub mod landing;
