//! Building images (config + layers + manifest, or an index) with self-consistent digests,
//! and the images every double starts with.

use crate::archive;
use crate::content::{self, sha256_digest, Content};
use serde_json::json;

/// A content descriptor: what a manifest says about a blob or child manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// Media type as written in the parent.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
}

/// An image manifest that was added to the double.
#[derive(Clone, Debug)]
pub struct Image {
    /// Repository, e.g. `library/alpine`.
    pub repo: String,
    /// Tag it was added under (may be empty for digest-only children of an index).
    pub tag: String,
    /// The manifest itself.
    pub manifest: Descriptor,
    /// The exact manifest bytes.
    pub manifest_bytes: Vec<u8>,
    /// The config blob.
    pub config: Descriptor,
    /// The layer blobs, in order.
    pub layers: Vec<Descriptor>,
}

/// A multi-platform index that was added to the double.
#[derive(Clone, Debug)]
pub struct Index {
    /// Repository.
    pub repo: String,
    /// Tag.
    pub tag: String,
    /// The index itself.
    pub manifest: Descriptor,
    /// The exact index bytes.
    pub manifest_bytes: Vec<u8>,
    /// One image per platform (`linux/amd64`, `linux/arm64`), reachable by digest only.
    pub images: Vec<Image>,
}

/// The images every double is seeded with (unless [`crate::Options::seed`] is off).
#[derive(Clone, Debug)]
pub struct Seeded {
    /// `library/alpine:latest` (also tagged `3.20`): Docker schema 2, two small real tar.gz layers.
    pub alpine: Image,
    /// `library/multi:latest`: an OCI index of two OCI platform manifests.
    pub multi: Index,
    /// `private/secret:latest`: Docker schema 2, private (needs Basic auth at the token host).
    pub secret: Image,
}

/// The flavour of image manifest to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// Docker schema 2 (`application/vnd.docker.distribution.manifest.v2+json`).
    Docker,
    /// OCI (`application/vnd.oci.image.manifest.v1+json`).
    Oci,
}

impl Flavor {
    fn types(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Flavor::Docker => (
                content::DOCKER_MANIFEST_V2,
                content::DOCKER_CONFIG,
                content::DOCKER_LAYER_GZIP,
            ),
            Flavor::Oci => (
                content::OCI_MANIFEST,
                content::OCI_CONFIG,
                content::OCI_LAYER_GZIP,
            ),
        }
    }
}

/// A layer already stored in the repo: digest, size and uncompressed diff_id.
struct Layer {
    digest: String,
    size: u64,
    diff_id: String,
}

/// Adds an image whose layers are already stored and returns it.
fn add_image_from_layers(
    content: &Content,
    repo: &str,
    tag: Option<&str>,
    flavor: Flavor,
    arch: &str,
    layers: Vec<Layer>,
) -> Image {
    let (manifest_type, config_type, layer_type) = flavor.types();
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    for layer in layers {
        layer_descs.push(Descriptor {
            media_type: layer_type.to_string(),
            digest: layer.digest,
            size: layer.size,
        });
        diff_ids.push(layer.diff_id);
    }
    let history: Vec<_> = diff_ids
        .iter()
        .map(|_| json!({"created": "2024-01-01T00:00:00Z", "created_by": "hubdouble"}))
        .collect();
    let config = json!({
        "architecture": arch,
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "Labels": {"repo": repo},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    });
    let config_bytes = serde_json::to_vec(&config).expect("json");
    let config_desc = Descriptor {
        media_type: config_type.to_string(),
        size: config_bytes.len() as u64,
        digest: content.add_blob(repo, config_bytes),
    };
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": desc_json(&config_desc),
        "layers": layer_descs.iter().map(desc_json).collect::<Vec<_>>(),
    });
    let manifest_bytes = serde_json::to_vec_pretty(&manifest).expect("json");
    let digest = content.add_manifest(repo, tag, manifest_type, manifest_bytes.clone());
    Image {
        repo: repo.to_string(),
        tag: tag.unwrap_or_default().to_string(),
        manifest: Descriptor {
            media_type: manifest_type.to_string(),
            digest,
            size: manifest_bytes.len() as u64,
        },
        manifest_bytes,
        config: config_desc,
        layers: layer_descs,
    }
}

fn desc_json(d: &Descriptor) -> serde_json::Value {
    json!({"mediaType": d.media_type, "size": d.size, "digest": d.digest})
}

/// Stores a real `.tar.gz` layer holding `files` in `repo`.
fn real_layer(content: &Content, repo: &str, files: &[(&str, &[u8])]) -> Layer {
    let tar = archive::tar(files);
    let gz = archive::gzip(&tar);
    Layer {
        size: gz.len() as u64,
        digest: content.add_blob(repo, gz),
        diff_id: sha256_digest(&tar),
    }
}

/// Adds a tagged image of `flavor` to `repo` whose layers are pseudo-random blobs of the
/// given sizes (seeded by `seed`, `seed+1`, ...; media type says tar+gzip but the bytes are
/// not a real archive, and each diff_id is set to the layer digest).
pub fn add_random_image(
    content: &Content,
    repo: &str,
    tag: &str,
    flavor: Flavor,
    layer_sizes: &[usize],
    seed: u64,
) -> Image {
    let layers = layer_sizes
        .iter()
        .zip(seed..)
        .map(|(&size, seed)| {
            let digest = content.add_random_blob(repo, size, seed);
            Layer {
                size: size as u64,
                diff_id: digest.clone(),
                digest,
            }
        })
        .collect();
    add_image_from_layers(content, repo, Some(tag), flavor, "amd64", layers)
}

/// Adds the seeded images and returns their descriptions.
pub(crate) fn seed(content: &Content) -> Seeded {
    let alpine = add_image_from_layers(
        content,
        "library/alpine",
        Some("latest"),
        Flavor::Docker,
        "amd64",
        vec![
            real_layer(
                content,
                "library/alpine",
                &[
                    ("etc/alpine-release", b"3.20.0\n"),
                    ("bin/sh", b"#!hubdouble\n"),
                ],
            ),
            real_layer(
                content,
                "library/alpine",
                &[("etc/motd", b"Welcome to the hub double!\n")],
            ),
        ],
    );
    content.tag("library/alpine", "3.20", &alpine.manifest.digest);

    let mut images = Vec::new();
    let mut entries = Vec::new();
    for (arch, variant) in [("amd64", None), ("arm64", Some("v8"))] {
        let note = format!("multi for {arch}\n");
        let img = add_image_from_layers(
            content,
            "library/multi",
            None,
            Flavor::Oci,
            arch,
            vec![real_layer(
                content,
                "library/multi",
                &[("etc/arch", note.as_bytes())],
            )],
        );
        let mut platform = json!({"architecture": arch, "os": "linux"});
        if let Some(v) = variant {
            platform["variant"] = json!(v);
        }
        let mut entry = desc_json(&img.manifest);
        entry["platform"] = platform;
        entries.push(entry);
        images.push(img);
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": content::OCI_INDEX,
        "manifests": entries,
    });
    let index_bytes = serde_json::to_vec_pretty(&index).expect("json");
    let index_digest = content.add_manifest(
        "library/multi",
        Some("latest"),
        content::OCI_INDEX,
        index_bytes.clone(),
    );
    let multi = Index {
        repo: "library/multi".into(),
        tag: "latest".into(),
        manifest: Descriptor {
            media_type: content::OCI_INDEX.into(),
            digest: index_digest,
            size: index_bytes.len() as u64,
        },
        manifest_bytes: index_bytes,
        images,
    };

    content.set_private("private/secret", true);
    let secret = add_image_from_layers(
        content,
        "private/secret",
        Some("latest"),
        Flavor::Docker,
        "amd64",
        vec![real_layer(
            content,
            "private/secret",
            &[("secret.txt", b"the cake is a lie\n")],
        )],
    );
    Seeded {
        alpine,
        multi,
        secret,
    }
}
