//! An OCI image written by hand: per platform one layer on an empty base, as an OCI archive (a
//! tar of an image layout: `oci-layout`, `index.json`, `blobs/sha256/<digest>`).
//!
//! Reproducible: every tar entry has a fixed mtime, uid and gid 0 and no user names, the gzip
//! header has no time or name, JSON keys are sorted, so the same files give the same bytes.
//! Specification: <https://github.com/opencontainers/image-spec> (image-layout.md,
//! manifest.md, config.md, layer.md, annotations.md).

use std::collections::BTreeMap;

use anyhow::Context as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const LAYOUT_VERSION: &str = "1.0.0";
/// The tag-or-name annotation podman, skopeo and buildah read (and write: they put the full
/// reference in it).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The name containerd (`ctr images import`) gives the image.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// A regular file of the image's one layer. Its parent directories are added (mode 0755).
#[derive(Debug, Clone)]
pub struct File {
    /// Path inside the image, relative (`usr/local/bin/triage-agent`).
    pub path: String,
    pub mode: u32,
    pub contents: Vec<u8>,
}

/// Everything the image is made of.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Full reference, `registry/repository:tag`, recorded in `index.json`.
    pub reference: String,
    /// GOARCH spelling (`amd64`), as the config and the index's platform want it.
    pub architecture: String,
    pub files: Vec<File>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    /// `uid:gid`, numeric (the image has no /etc/passwd).
    pub user: String,
    /// `org.opencontainers.image.*` labels (also the manifest's annotations).
    pub labels: BTreeMap<String, String>,
    /// Seconds since the epoch: the config's `created`.
    pub created: i64,
    /// Every tar entry's mtime, kept apart from `created` so that the layer depends on its
    /// files only (the same binary gives the same layer blob, whatever the commit).
    pub mtime: u64,
}

/// A content-addressed blob and its descriptor fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub media_type: &'static str,
    pub digest: String,
    pub bytes: Vec<u8>,
}

impl Blob {
    fn new(media_type: &'static str, bytes: Vec<u8>) -> Self {
        Self {
            media_type,
            digest: sha256(&bytes),
            bytes,
        }
    }

    fn descriptor(&self) -> Value {
        json!({
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.bytes.len(),
        })
    }
}

/// One platform's image in the archive.
#[derive(Debug)]
pub struct PlatformImage {
    pub manifest: Blob,
    pub config: Blob,
    pub layer: Blob,
    /// sha256 of the uncompressed layer tar (the config's `rootfs.diff_ids`).
    pub diff_id: String,
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in digest.iter() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// RFC 3339 UTC of `secs` since the epoch.
pub fn rfc3339(secs: i64) -> anyhow::Result<String> {
    let t = chrono::DateTime::from_timestamp(secs, 0)
        .with_context(|| format!("timestamp {secs} out of range"))?;
    Ok(t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

fn platform(spec: &Spec) -> anyhow::Result<PlatformImage> {
    let layer_tar = layer(spec)?;
    let diff_id = sha256(&layer_tar);
    let layer = Blob::new(MEDIA_TYPE_LAYER_GZIP, gzip(&layer_tar)?);
    let created = rfc3339(spec.created)?;
    let config = Blob::new(
        MEDIA_TYPE_CONFIG,
        to_json(&json!({
            "created": created,
            "architecture": spec.architecture,
            "os": "linux",
            "config": {
                "User": spec.user,
                "Env": spec.env,
                "Entrypoint": spec.entrypoint,
                "Cmd": spec.cmd,
                "Labels": spec.labels,
            },
            "rootfs": { "type": "layers", "diff_ids": [diff_id] },
            "history": [{ "created": created, "created_by": "cargo xtask image" }],
        }))?,
    );
    let manifest = Blob::new(
        MEDIA_TYPE_MANIFEST,
        to_json(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": config.descriptor(),
            "layers": [layer.descriptor()],
            "annotations": spec.labels,
        }))?,
    );
    Ok(PlatformImage {
        manifest,
        config,
        layer,
        diff_id,
    })
}

/// `descriptor` with the annotations that name the image `reference`.
fn named(mut descriptor: Value, reference: &str) -> Value {
    if let Some(d) = descriptor.as_object_mut() {
        d.insert(
            "annotations".into(),
            json!({
                ANNOTATION_REF_NAME: reference,
                ANNOTATION_CONTAINERD_NAME: reference,
            }),
        );
    }
    descriptor
}

fn with_platform(mut descriptor: Value, architecture: &str) -> Value {
    if let Some(d) = descriptor.as_object_mut() {
        d.insert(
            "platform".into(),
            json!({ "architecture": architecture, "os": "linux" }),
        );
    }
    descriptor
}

fn archive(mtime: u64, index: &Value, blobs: &[&Blob]) -> anyhow::Result<Vec<u8>> {
    let layout = to_json(&json!({ "imageLayoutVersion": LAYOUT_VERSION }))?;
    let mut archive = TarWriter::new(mtime);
    archive.file("oci-layout", 0o644, &layout)?;
    archive.file("index.json", 0o644, &to_json(index)?)?;
    archive.dir("blobs/")?;
    archive.dir("blobs/sha256/")?;
    // Content-addressed: a blob two platforms share (the same layer) is stored once.
    let mut written = std::collections::BTreeSet::new();
    for blob in blobs {
        if written.insert(&blob.digest) {
            archive.file(&blob_path(&blob.digest)?, 0o644, &blob.bytes)?;
        }
    }
    archive.finish()
}

/// The written image: the archive, its image index and each platform's image.
#[derive(Debug)]
pub struct Image {
    pub archive: Vec<u8>,
    /// The image index (a blob) listing one manifest per platform.
    pub index: Blob,
    /// Per spec, in order.
    pub images: Vec<PlatformImage>,
}

/// One image for one or more platforms (one spec each, same reference and mtime), as
/// registries and `docker buildx` write them: index.json names an image index (the
/// reference's annotations on it), which lists each platform's manifest with its platform; an
/// engine pulls or loads the one for its own.
pub fn write(specs: &[Spec]) -> anyhow::Result<Image> {
    let first = specs.first().context("no platform")?;
    anyhow::ensure!(
        specs
            .iter()
            .all(|s| s.reference == first.reference && s.mtime == first.mtime),
        "the platforms of one image share its reference and mtime"
    );
    let platforms = specs
        .iter()
        .map(platform)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let index = Blob::new(
        MEDIA_TYPE_INDEX,
        to_json(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_INDEX,
            "manifests": platforms
                .iter()
                .zip(specs)
                .map(|(p, s)| with_platform(p.manifest.descriptor(), &s.architecture))
                .collect::<Vec<_>>(),
        }))?,
    );
    let top = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_INDEX,
        "manifests": [named(index.descriptor(), &first.reference)],
    });
    let mut blobs = vec![&index];
    for p in &platforms {
        blobs.extend([&p.manifest, &p.config, &p.layer]);
    }
    let archive = archive(first.mtime, &top, &blobs)?;
    Ok(Image {
        archive,
        index,
        images: platforms,
    })
}

/// `blobs/sha256/<hex>` of a `sha256:<hex>` digest.
pub fn blob_path(digest: &str) -> anyhow::Result<String> {
    let hex = digest
        .strip_prefix("sha256:")
        .with_context(|| format!("digest {digest} is not sha256"))?;
    Ok(format!("blobs/sha256/{hex}"))
}

/// The layer tar: each file's parent directories first, then the file.
fn layer(spec: &Spec) -> anyhow::Result<Vec<u8>> {
    let mut tar = TarWriter::new(spec.mtime);
    let mut dirs = std::collections::BTreeSet::new();
    for file in &spec.files {
        let mut prefix = String::new();
        let parts: Vec<&str> = file.path.split('/').collect();
        for part in parts.iter().take(parts.len().saturating_sub(1)) {
            prefix.push_str(part);
            prefix.push('/');
            if dirs.insert(prefix.clone()) {
                tar.dir(&prefix)?;
            }
        }
        tar.file(&file.path, file.mode, &file.contents)?;
    }
    tar.finish()
}

pub fn gzip(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    use std::io::Write as _;
    // No name, mtime 0, OS "unknown": the header carries nothing of the build machine.
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes)?;
    Ok(gz.finish()?)
}

fn to_json(value: &Value) -> anyhow::Result<Vec<u8>> {
    Ok(serde_json::to_vec(value)?)
}

/// ustar entries owned by 0:0 with no user names and one mtime.
pub struct TarWriter {
    builder: tar::Builder<Vec<u8>>,
    mtime: u64,
}

impl TarWriter {
    pub fn new(mtime: u64) -> Self {
        Self {
            builder: tar::Builder::new(Vec::new()),
            mtime,
        }
    }

    fn header(&self, kind: tar::EntryType, mode: u32, size: usize) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(self.mtime);
        h.set_size(size as u64);
        h
    }

    pub fn dir(&mut self, path: &str) -> anyhow::Result<()> {
        let mut h = self.header(tar::EntryType::Directory, 0o755, 0);
        self.builder
            .append_data(&mut h, path, std::io::empty())
            .with_context(|| format!("tar entry {path}"))
    }

    pub fn file(&mut self, path: &str, mode: u32, contents: &[u8]) -> anyhow::Result<()> {
        let mut h = self.header(tar::EntryType::Regular, mode, contents.len());
        self.builder
            .append_data(&mut h, path, contents)
            .with_context(|| format!("tar entry {path}"))
    }

    /// A symbolic link at `path` to `target` (the CLI tarballs' plugin names).
    pub fn symlink(&mut self, path: &str, target: &str) -> anyhow::Result<()> {
        let mut h = self.header(tar::EntryType::Symlink, 0o777, 0);
        self.builder
            .append_link(&mut h, path, target)
            .with_context(|| format!("tar entry {path}"))
    }

    pub fn finish(self) -> anyhow::Result<Vec<u8>> {
        Ok(self.builder.into_inner()?)
    }
}
