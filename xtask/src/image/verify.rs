//! Reads an OCI archive back and checks it from the outside, as an engine would: the layout
//! file, every descriptor's media type, digest and size against the blob it names, no blob
//! missing or left over, the config against the image's definition, the layer's diff id, and
//! the layer's files (owner, mode, mtime, contents), the entrypoint a static executable.
#![expect(
    clippy::indexing_slicing,
    reason = "only serde_json::Value is indexed here: a missing key or index gives Null, never a panic"
)]

use std::{collections::BTreeMap, io::Read as _};

use anyhow::{Context as _, bail, ensure};
use serde_json::{Value, json};

use super::{
    elf,
    oci::{self, Spec},
};

/// What the archive holds, for the build's summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer_digest: String,
    pub layer_size: usize,
    /// The uncompressed layer.
    pub layer_tar_size: usize,
}

/// One tar entry as read back.
struct Entry {
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    contents: Vec<u8>,
}

fn entries(tar_bytes: &[u8]) -> anyhow::Result<BTreeMap<String, Entry>> {
    let mut out = BTreeMap::new();
    let mut archive = tar::Archive::new(tar_bytes);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let header = entry.header();
        let (kind, mode, uid, gid, mtime) = (
            header.entry_type(),
            header.mode()?,
            header.uid()?,
            header.gid()?,
            header.mtime()?,
        );
        ensure!(
            header.username()?.unwrap_or_default().is_empty()
                && header.groupname()?.unwrap_or_default().is_empty(),
            "{path}: user or group name recorded"
        );
        let mut contents = Vec::new();
        entry.read_to_end(&mut contents)?;
        let path = path.trim_end_matches('/').to_owned();
        ensure!(
            out.insert(
                path.clone(),
                Entry {
                    kind,
                    mode,
                    uid,
                    gid,
                    mtime,
                    contents
                }
            )
            .is_none(),
            "{path} appears twice"
        );
    }
    Ok(out)
}

fn parse(bytes: &[u8], what: &str) -> anyhow::Result<Value> {
    serde_json::from_slice(bytes).with_context(|| format!("{what} is not JSON"))
}

/// Checks a descriptor against the blobs: media type, digest, size. Returns the blob.
fn resolve<'a>(
    blobs: &'a BTreeMap<String, Entry>,
    descriptor: &Value,
    media_type: &str,
    what: &str,
) -> anyhow::Result<&'a [u8]> {
    let found = descriptor["mediaType"].as_str().unwrap_or_default();
    ensure!(
        found == media_type,
        "{what}: media type {found:?}, want {media_type}"
    );
    let digest = descriptor["digest"]
        .as_str()
        .with_context(|| format!("{what}: no digest"))?;
    let blob = blobs
        .get(&oci::blob_path(digest)?)
        .with_context(|| format!("{what}: blob {digest} missing"))?;
    ensure!(
        oci::sha256(&blob.contents) == digest,
        "{what}: blob {digest} has digest {}",
        oci::sha256(&blob.contents)
    );
    let size = descriptor["size"].as_u64();
    ensure!(
        size == Some(blob.contents.len() as u64),
        "{what}: size {size:?}, blob has {} bytes",
        blob.contents.len()
    );
    Ok(&blob.contents)
}

/// The archive's layout, entries and index.json, checked; its blobs.
fn open(archive: &[u8], mtime: u64) -> anyhow::Result<(Value, BTreeMap<String, Entry>)> {
    let files = entries(archive).context("reading the archive")?;
    for (path, e) in &files {
        ensure!(
            e.uid == 0 && e.gid == 0 && e.mtime == mtime,
            "archive entry {path}: owner {}:{} mtime {}",
            e.uid,
            e.gid,
            e.mtime
        );
    }
    let layout = files.get("oci-layout").context("no oci-layout")?;
    ensure!(
        parse(&layout.contents, "oci-layout")?
            == json!({ "imageLayoutVersion": oci::LAYOUT_VERSION }),
        "oci-layout is not version {}",
        oci::LAYOUT_VERSION
    );
    let index = parse(
        &files.get("index.json").context("no index.json")?.contents,
        "index.json",
    )?;
    check_index(&index, "index.json")?;
    for path in files.keys() {
        ensure!(
            ["oci-layout", "index.json", "blobs", "blobs/sha256"].contains(&path.as_str())
                || path.starts_with("blobs/sha256/"),
            "unexpected {path} in the archive"
        );
    }
    let blobs: BTreeMap<String, Entry> = files
        .into_iter()
        .filter(|(p, _)| p.starts_with("blobs/sha256/"))
        .collect();
    Ok((index, blobs))
}

fn check_index(index: &Value, what: &str) -> anyhow::Result<()> {
    ensure!(index["schemaVersion"] == 2, "{what} schemaVersion");
    ensure!(
        index["mediaType"] == oci::MEDIA_TYPE_INDEX,
        "{what} mediaType"
    );
    Ok(())
}

/// index.json's one descriptor, named `reference`.
fn the_named_descriptor<'a>(index: &'a Value, reference: &str) -> anyhow::Result<&'a Value> {
    let [descriptor] = index["manifests"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    else {
        bail!("index.json must list exactly one descriptor");
    };
    let annotations = &descriptor["annotations"];
    for key in [oci::ANNOTATION_REF_NAME, oci::ANNOTATION_CONTAINERD_NAME] {
        ensure!(
            annotations[key] == reference,
            "index annotation {key} is {}, want {reference}",
            annotations[key],
        );
    }
    Ok(descriptor)
}

/// No blob the descriptors do not name.
fn nothing_left_over(blobs: &BTreeMap<String, Entry>, referenced: &[String]) -> anyhow::Result<()> {
    for path in blobs.keys() {
        ensure!(
            referenced.contains(path),
            "{path} is named by no descriptor"
        );
    }
    Ok(())
}

/// An archive of [`oci::write`]: index.json names an image index that lists one manifest per
/// spec, in order, each with its platform. The index's digest and each platform's report.
pub fn verify(archive: &[u8], specs: &[Spec]) -> anyhow::Result<(String, Vec<Report>)> {
    let first = specs.first().context("no platform")?;
    let (index, blobs) = open(archive, first.mtime)?;
    let descriptor = the_named_descriptor(&index, &first.reference)?;
    let inner_bytes = resolve(&blobs, descriptor, oci::MEDIA_TYPE_INDEX, "image index")?;
    let inner = parse(inner_bytes, "image index")?;
    check_index(&inner, "image index")?;
    let manifests = inner["manifests"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    ensure!(
        manifests.len() == specs.len(),
        "the image index lists {} manifests, want one per platform ({})",
        manifests.len(),
        specs.len()
    );
    let mut referenced = vec![blob_of(descriptor)];
    let mut reports = Vec::new();
    for (manifest_descriptor, spec) in manifests.iter().zip(specs) {
        let (report, blobs_named) = verify_platform(&blobs, manifest_descriptor, spec)
            .with_context(|| format!("the {} image", spec.architecture))?;
        referenced.extend(blobs_named);
        reports.push(report);
    }
    nothing_left_over(&blobs, &referenced)?;
    Ok((oci::sha256(inner_bytes), reports))
}

fn blob_of(descriptor: &Value) -> String {
    descriptor["digest"]
        .as_str()
        .and_then(|d| oci::blob_path(d).ok())
        .unwrap_or_default()
}

/// One platform's manifest (its descriptor's platform too), config and layer; the report and
/// the blobs they name.
fn verify_platform(
    blobs: &BTreeMap<String, Entry>,
    manifest_descriptor: &Value,
    spec: &Spec,
) -> anyhow::Result<(Report, Vec<String>)> {
    ensure!(
        manifest_descriptor["platform"]
            == json!({ "architecture": spec.architecture, "os": "linux" }),
        "index platform {}, want linux/{}",
        manifest_descriptor["platform"],
        spec.architecture
    );
    let manifest_bytes = resolve(
        blobs,
        manifest_descriptor,
        oci::MEDIA_TYPE_MANIFEST,
        "manifest",
    )?;
    let manifest = parse(manifest_bytes, "manifest")?;
    ensure!(manifest["schemaVersion"] == 2, "manifest schemaVersion");
    ensure!(
        manifest["mediaType"] == oci::MEDIA_TYPE_MANIFEST,
        "manifest mediaType"
    );
    ensure!(
        manifest["annotations"] == json!(spec.labels),
        "manifest annotations"
    );
    let config_bytes = resolve(blobs, &manifest["config"], oci::MEDIA_TYPE_CONFIG, "config")?;
    let [layer_descriptor] = manifest["layers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    else {
        bail!("the manifest must have exactly one layer");
    };
    let layer_gz = resolve(blobs, layer_descriptor, oci::MEDIA_TYPE_LAYER_GZIP, "layer")?;
    let referenced = vec![
        blob_of(manifest_descriptor),
        blob_of(&manifest["config"]),
        blob_of(layer_descriptor),
    ];

    let mut layer_tar = Vec::new();
    flate2::read::GzDecoder::new(layer_gz)
        .read_to_end(&mut layer_tar)
        .context("the layer is not gzip")?;
    let config = parse(config_bytes, "config")?;
    check_config(&config, spec, &oci::sha256(&layer_tar))?;
    check_layer(&layer_tar, spec)?;

    Ok((
        Report {
            manifest_digest: oci::sha256(manifest_bytes),
            config_digest: oci::sha256(config_bytes),
            layer_digest: oci::sha256(layer_gz),
            layer_size: layer_gz.len(),
            layer_tar_size: layer_tar.len(),
        },
        referenced,
    ))
}

fn check_config(config: &Value, spec: &Spec, diff_id: &str) -> anyhow::Result<()> {
    ensure!(
        config["architecture"] == spec.architecture.as_str() && config["os"] == "linux",
        "config platform {} {}",
        config["architecture"],
        config["os"]
    );
    ensure!(
        config["created"] == oci::rfc3339(spec.created)?.as_str(),
        "config created {}",
        config["created"]
    );
    let c = &config["config"];
    let want = json!({
        "User": spec.user,
        "Env": spec.env,
        "Entrypoint": spec.entrypoint,
        "Cmd": spec.cmd,
        "Labels": spec.labels,
    });
    ensure!(*c == want, "config.config is {c}, want {want}");
    ensure!(
        config["rootfs"] == json!({ "type": "layers", "diff_ids": [diff_id] }),
        "config rootfs {} does not name the layer's diff id {diff_id}",
        config["rootfs"]
    );
    Ok(())
}

fn check_layer(layer_tar: &[u8], spec: &Spec) -> anyhow::Result<()> {
    let entries = entries(layer_tar).context("reading the layer")?;
    let mtime = spec.mtime;
    let mut want_dirs = std::collections::BTreeSet::new();
    for file in &spec.files {
        let mut path = file.path.as_str();
        while let Some((parent, _)) = path.rsplit_once('/') {
            want_dirs.insert(parent.to_owned());
            path = parent;
        }
    }
    ensure!(
        entries.len() == spec.files.len() + want_dirs.len(),
        "the layer has {:?}, want the files {:?} and their directories",
        entries.keys().collect::<Vec<_>>(),
        spec.files.iter().map(|f| &f.path).collect::<Vec<_>>()
    );
    for (path, e) in &entries {
        ensure!(
            e.uid == 0 && e.gid == 0 && e.mtime == mtime,
            "layer entry {path}: owner {}:{} mtime {}",
            e.uid,
            e.gid,
            e.mtime
        );
        if want_dirs.contains(path) {
            ensure!(
                e.kind == tar::EntryType::Directory && e.mode == 0o755,
                "{path}: not a 0755 directory"
            );
        }
    }
    for file in &spec.files {
        let e = entries
            .get(&file.path)
            .with_context(|| format!("{} missing from the layer", file.path))?;
        ensure!(
            e.kind == tar::EntryType::Regular && e.mode == file.mode,
            "{}: type {:?} mode {:o}, want a regular file with mode {:o}",
            file.path,
            e.kind,
            e.mode,
            file.mode
        );
        ensure!(
            e.contents == file.contents,
            "{}: contents differ",
            file.path
        );
    }
    let entrypoint = spec
        .entrypoint
        .first()
        .context("no entrypoint")?
        .strip_prefix('/')
        .context("the entrypoint must be an absolute path (an empty base has no shell)")?;
    let binary = entries
        .get(entrypoint)
        .with_context(|| format!("entrypoint /{entrypoint} is not in the layer"))?;
    ensure!(
        binary.mode & 0o111 == 0o111,
        "entrypoint /{entrypoint} is not executable by everyone (mode {:o})",
        binary.mode
    );
    elf::check_static(&binary.contents, &spec.architecture)
        .with_context(|| format!("entrypoint /{entrypoint} cannot run on an empty base"))?;
    let path = spec
        .env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .context("no PATH in the environment")?;
    let (dir, name) = entrypoint.rsplit_once('/').unwrap_or(("", entrypoint));
    ensure!(
        path.split(':').any(|p| p.trim_start_matches('/') == dir),
        "PATH={path} does not find {name} (manifests run it by name)"
    );
    Ok(())
}
