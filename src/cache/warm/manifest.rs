//! The manifests a warm walks: an index leads to its platforms' manifests,
//! an image manifest to its config and layers. Only the fields that lead
//! somewhere are read.

use serde::Deserialize;

/// The index types (OCI's, Docker's manifest list): followed to the
/// manifests they list.
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

#[derive(Deserialize)]
pub(super) struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    pub(super) digest: String,
    pub(super) size: Option<u64>,
}

impl Descriptor {
    /// Layers a registry may not distribute (Windows base layers): clients
    /// fetch them from their `urls`, never from a registry or mirror.
    pub(super) fn foreign(&self) -> bool {
        self.media_type
            .starts_with("application/vnd.docker.image.rootfs.foreign.")
            || self
                .media_type
                .starts_with("application/vnd.oci.image.layer.nondistributable.")
    }
}

#[derive(Deserialize)]
struct ManifestDoc {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<Vec<Descriptor>>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// What a manifest leads to.
pub(super) enum Walk {
    /// An index: its platform manifests.
    Index(Vec<Descriptor>),
    /// An image: its config, then its layers.
    Image(Vec<Descriptor>),
}

pub(super) fn walk(content_type: Option<&str>, bytes: &[u8]) -> Result<Walk, String> {
    let doc: ManifestDoc =
        serde_json::from_slice(bytes).map_err(|e| format!("not a manifest: {e}"))?;
    let media_type = doc
        .media_type
        .as_deref()
        .or(content_type)
        .map(|t| t.split(';').next().unwrap_or(t).trim());
    let is_index = matches!(media_type, Some(OCI_INDEX | DOCKER_LIST))
        || (doc.manifests.is_some() && doc.config.is_none());
    if is_index {
        return Ok(Walk::Index(doc.manifests.unwrap_or_default()));
    }
    match doc.config {
        Some(config) => Ok(Walk::Image(
            std::iter::once(config).chain(doc.layers).collect(),
        )),
        None => Err(format!(
            "neither an index nor an image manifest (type {})",
            media_type.unwrap_or("unknown")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_lead_to_manifests_and_images_to_config_then_layers() {
        let index = br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:a","size":1}]}"#;
        assert!(matches!(walk(None, index), Ok(Walk::Index(d)) if d.len() == 1));
        let image = br#"{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"digest":"sha256:c","size":2},
            "layers":[{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"sha256:f","urls":["https://x"]},
                      {"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"sha256:l","size":3}]}"#;
        let Ok(Walk::Image(d)) = walk(None, image) else {
            panic!("an image")
        };
        let names: Vec<_> = d.iter().map(|d| (d.digest.as_str(), d.foreign())).collect();
        assert_eq!(
            names,
            [("sha256:c", false), ("sha256:f", true), ("sha256:l", false)]
        );
        assert!(walk(None, br#"{"schemaVersion":1,"fsLayers":[]}"#).is_err());
        assert!(walk(None, b"not json").is_err());
    }
}
