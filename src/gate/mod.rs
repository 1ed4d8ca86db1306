//! May this client have this? The admit steps of a request: which
//! repositories may be pulled at all, and how big a blob may be (`rules`).
//! Each check is a plain function over the config and the request's
//! target; it answers with the registry's JSON error or lets it pass.

pub mod rules;
