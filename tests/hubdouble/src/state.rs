//! State shared by the three hosts' threads.

use crate::content::Content;
use crate::knobs::Knobs;
use crate::log::RequestLog;
use crate::signing::Signer;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

pub(crate) struct Shared {
    /// The token endpoint, `https://127.0.0.2:<port><token_path>`.
    pub realm: String,
    /// Path of the token endpoint (`/token`).
    pub token_path: String,
    /// `https://127.0.0.3:<port>`.
    pub cdn_url: String,
    pub service: String,
    pub users: Vec<(String, String)>,
    pub content: Arc<Content>,
    pub signer: Signer,
    pub knobs: Arc<Knobs>,
    pub log: Arc<RequestLog>,
    pub shutdown: AtomicBool,
    pub next_conn: AtomicU64,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub idle_timeout: Duration,
}
