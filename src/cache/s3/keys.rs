//! The bucket's key scheme (see the module above). Every key is relative to
//! the configured prefix; [`super::S3Client::key`] adds it.

use crate::wire::names::Digest;

/// `blobs/sha256/ab/abcd...`; `None` for a digest that cannot name a file
/// (the local store's rule: hex only).
pub fn blob(digest: &Digest<'_>) -> Option<String> {
    content("blobs", digest)
}

/// `manifests/sha256/ab/abcd...`.
pub fn manifest(digest: &Digest<'_>) -> Option<String> {
    content("manifests", digest)
}

/// `used/sha256/ab/abcd...`: touched when a blob is used, at most once a
/// day per node (see `prune`).
pub fn used(digest: &Digest<'_>) -> Option<String> {
    content("used", digest)
}

/// `leases/sha256/abcd...`.
pub fn lease(digest: &Digest<'_>) -> Option<String> {
    let (alg, hex) = split(digest)?;
    Some(format!("leases/{alg}/{hex}"))
}

/// `tags/<registry>/<repo>:<tag>`, from the local record's name
/// (`Tags::name`): names are checked by the router (`wire::names`), so
/// they hold no `..` and no control characters.
pub fn tag(name: &str) -> String {
    format!("tags/{name}")
}

/// `links/<registry>/<repo>/sha256/abcd...`: the repository holds the
/// object and was anonymously pullable (body: `<open 0|1> <unix secs>`).
pub fn link(registry: &str, repo: &str, digest: &Digest<'_>) -> Option<String> {
    let (alg, hex) = split(digest)?;
    Some(format!("links/{registry}/{repo}/{alg}/{hex}"))
}

fn content(kind: &str, digest: &Digest<'_>) -> Option<String> {
    let (alg, hex) = split(digest)?;
    Some(format!("{kind}/{alg}/{}/{hex}", &hex[..2]))
}

fn split<'a>(digest: &'a Digest<'_>) -> Option<(&'a str, &'a str)> {
    let (alg, hex) = digest.as_str().split_once(':')?;
    let ok = hex.len() >= 2
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
        && alg.bytes().all(|b| b.is_ascii_alphanumeric());
    ok.then_some((alg, hex))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_content_addressed_and_fanned_out() {
        let hex = "ab".repeat(32);
        let s = format!("sha256:{hex}");
        let d = Digest::parse(&s).unwrap();
        assert_eq!(blob(&d).unwrap(), format!("blobs/sha256/ab/{hex}"));
        assert_eq!(manifest(&d).unwrap(), format!("manifests/sha256/ab/{hex}"));
        assert_eq!(lease(&d).unwrap(), format!("leases/sha256/{hex}"));
        assert_eq!(
            tag("docker.io/library/alpine:3.20"),
            "tags/docker.io/library/alpine:3.20"
        );
        assert_eq!(
            link("docker.io", "library/alpine", &d).unwrap(),
            format!("links/docker.io/library/alpine/sha256/{hex}")
        );
    }
}
