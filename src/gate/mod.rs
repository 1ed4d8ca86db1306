//! May this client have this? The admit steps of a request: who the
//! client is (`auth`, mirror authentication), which repositories may be
//! pulled at all, and how big a blob may be (`rules`); how much one client
//! may ask (`limits`: requests, connections, bytes).
//! Each check is a plain function over the config and the request's
//! target; it answers with the registry's JSON error or lets it pass.

pub mod auth;
pub mod limits;
pub mod rules;

/// Who a request is, once admitted (per-user limits key on it).
pub use auth::Principal;
