//! What may be pulled: the allow and deny lists of repository globs, and
//! the largest blob served (`max_blob_bytes`).
