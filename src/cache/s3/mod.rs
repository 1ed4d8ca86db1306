//! The shared tier: one bucket of an S3-compatible store behind every
//! node's local disk cache (tier 1). Any node serves any object it finds
//! here, after the same access checks as a local hit and a digest check of
//! every byte; nothing unverified is uploaded, and a wrong object found
//! here is never served.
//!
//! - `client`: S3 requests (SigV4 by `rusty-s3`, sans-IO) over ocirelay's
//!   own upstream client on monoio; bodies streamed both ways;
//! - `tier`: what the pull path asks of the shared tier (blobs, manifests,
//!   tag records, leases, uploads, health);
//! - `prune`: keeping the bucket under a size (`ocirelay cache prune
//!   --tier shared`).
//!
//! Keys are content addressed, so that every node names an object alike:
//!
//! ```text
//! <prefix>blobs/sha256/ab/abcdef...        a blob, as its digest names it
//! <prefix>manifests/sha256/ab/abcdef...    "<media type>\n<manifest bytes>"
//! <prefix>tags/<registry>/<repo>:<tag>     a tag record (digest, checked at)
//! <prefix>links/<registry>/<repo>/sha256/abcdef...
//!                                          the repository holds the object
//!                                          and was anonymously pullable
//!                                          (body: "<open> <unix secs>")
//! <prefix>leases/sha256/abcdef...          a node is downloading this blob
//! <prefix>used/sha256/ab/abcdef...         last use of a blob (for prune)
//! ```

pub mod client;
pub mod keys;
pub mod prune;
pub mod tier;

pub use client::{ListPage, Listed, ObjectInfo, S3Client, S3Error, Written};
