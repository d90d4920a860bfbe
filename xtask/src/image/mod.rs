//! `cargo xtask image`: the container image, built offline. A static musl build of
//! `triage-agent` (eBPF programs embedded) on an empty base, written as an OCI archive,
//! target/image/triage-agent-<version>.oci.tar, that `podman load` and
//! `ctr images import` take. The Dockerfile at the repository root builds the same image where a
//! registry is at hand; a test keeps the two in agreement (dockerfile.rs).

#[cfg(test)]
mod dockerfile;
pub mod elf;
mod engine;
pub mod oci;
mod verify;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, ensure};

use crate::{cargo, root, run};

/// Static: musl links everything in, so the image needs no libc and no loader.
pub const TARGET: &str = "x86_64-unknown-linux-musl";
/// The target's architecture as OCI spells it.
const ARCHITECTURE: &str = "amd64";
/// `cargo build` arguments for the image's binary (the Dockerfile's build stage runs the same).
/// `cargo xtask test` builds it together with the test programs instead
/// ([`crate::RELEASE_BUILD`]: same profile, target and flags, so the same artifact path).
pub const CARGO_BUILD: &[&str] = &[
    "build",
    "--release",
    "--locked",
    "--target",
    TARGET,
    "-p",
    "triage-agent",
    "--bin",
    "triage-agent",
];
/// Where the binary lives in the image. On PATH: the DaemonSet and its probes run it by name.
pub const BINARY: &str = "usr/local/bin/triage-agent";
pub const ENV: &[&str] = &["PATH=/usr/local/bin"];
/// Arguments when none are given: the usage (the DaemonSet gives `agent ...`).
pub const CMD: &[&str] = &["--help"];
/// Not root by default: the CLI commands need no privilege, and an image that runs as root
/// only when asked is the safer default. The node agent needs root (Kubernetes makes added
/// capabilities effective only for uid 0), and deploy/daemonset.yaml asks for it with
/// `runAsUser: 0`, saying why. 65532 is the `nonroot` user of distroless images.
pub const USER: &str = "65532:65532";
/// The registry repository the DaemonSet pulls; the archive carries this name, so loading it
/// into a node's containerd (`ctr -n k8s.io images import`) satisfies the DaemonSet as is.
pub const REPOSITORY: &str = "ghcr.io/triage-agent/triage-agent";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
const TITLE: &str = "triage-agent";
/// agent/Cargo.toml's description (a test keeps them equal).
const DESCRIPTION: &str =
    "Node agent and CLI that catch the Kubernetes failures that produce no Kubernetes event.";

pub fn reference() -> String {
    format!("{REPOSITORY}:{VERSION}")
}

pub fn archive_path() -> PathBuf {
    root().join(format!("target/image/triage-agent-{VERSION}.oci.tar"))
}

fn binary_path() -> PathBuf {
    root().join(format!("target/{TARGET}/release/triage-agent"))
}

/// SOURCE_DATE_EPOCH (reproducible-builds.org), when set.
fn source_date_epoch() -> Option<i64> {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
}

/// The image's `created`: SOURCE_DATE_EPOCH, else the commit's time, else the epoch; never the
/// clock, so two builds of a commit are identical.
fn created() -> i64 {
    source_date_epoch()
        .or_else(|| git(&["log", "-1", "--format=%ct"]).and_then(|t| t.parse().ok()))
        .unwrap_or(0)
}

/// The files' mtime: SOURCE_DATE_EPOCH, else the epoch (not the commit's time: the layer then
/// changes only when the binary does).
/// `hex` of SHA-256, as sha256sum prints it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    oci::sha256(bytes).trim_start_matches("sha256:").to_owned()
}

/// Every archive entry's mtime: `SOURCE_DATE_EPOCH`, else 0.
pub fn mtime() -> u64 {
    source_date_epoch()
        .and_then(|t| u64::try_from(t).ok())
        .unwrap_or(0)
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(root())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The image around `binary`, for `architecture`.
fn spec(
    binary: Vec<u8>,
    architecture: &str,
    created: i64,
    mtime: u64,
    revision: Option<String>,
) -> anyhow::Result<oci::Spec> {
    let mut labels = BTreeMap::new();
    let mut label = |k: &str, v: String| labels.insert(format!("org.opencontainers.image.{k}"), v);
    label("title", TITLE.into());
    label("description", DESCRIPTION.into());
    label("version", VERSION.into());
    label("licenses", env!("CARGO_PKG_LICENSE").into());
    label("source", env!("CARGO_PKG_REPOSITORY").into());
    label("created", oci::rfc3339(created)?);
    if let Some(revision) = revision {
        label("revision", revision);
    }
    Ok(oci::Spec {
        reference: reference(),
        architecture: architecture.into(),
        files: vec![
            oci::File {
                path: BINARY.into(),
                mode: 0o755,
                contents: binary,
            },
            // The licence of the software and of what it links, where images keep them.
            oci::File {
                path: LICENSE_PATH.into(),
                mode: 0o644,
                contents: read(&root().join("LICENSE"))?,
            },
            oci::File {
                path: crate::notices::IMAGE_PATH.into(),
                mode: 0o644,
                contents: read(&crate::notices::path())?,
            },
        ],
        entrypoint: vec![format!("/{BINARY}")],
        cmd: CMD.iter().map(|s| (*s).to_owned()).collect(),
        env: ENV.iter().map(|s| (*s).to_owned()).collect(),
        user: USER.into(),
        labels,
        created,
        mtime,
    })
}

/// The project's licence in the image.
pub const LICENSE_PATH: &str = "usr/share/doc/triage-agent/LICENSE";

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Builds the static binary alone (as the Dockerfile does) and checks it.
fn build_binary() -> anyhow::Result<Vec<u8>> {
    run(cargo().args(CARGO_BUILD))?;
    checked_binary(&binary_path(), ARCHITECTURE)
}

/// The image's platforms: amd64 around `amd64`, arm64 around `arm64`.
fn specs(amd64: Vec<u8>, arm64: Vec<u8>) -> anyhow::Result<Vec<oci::Spec>> {
    let (created, mtime, revision) = (created(), mtime(), git(&["rev-parse", "HEAD"]));
    Ok(vec![
        spec(amd64, ARCHITECTURE, created, mtime, revision.clone())?,
        spec(arm64, crate::arm64::ARCHITECTURE, created, mtime, revision)?,
    ])
}

/// The binary at `path`, checked to be static for `architecture` and to embed its eBPF
/// programs.
fn checked_binary(path: &Path, architecture: &str) -> anyhow::Result<Vec<u8>> {
    let binary = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    elf::check_static(&binary, architecture).with_context(|| format!("{}", path.display()))?;
    ensure!(
        elf::embeds_bpf_object(&binary),
        "{} embeds no eBPF object (built without the node-agent feature?)",
        path.display()
    );
    Ok(binary)
}

/// `cargo xtask image`: builds both platforms' binaries, writes and checks the archive; with
/// `run`, loads it into podman and runs `triage-agent --version` in it (the host's platform).
pub fn image(run_in_engine: bool) -> anyhow::Result<()> {
    let amd64 = build_binary()?;
    let arm64 = checked_binary(&crate::arm64::build()?, crate::arm64::ARCHITECTURE)?;
    let specs = specs(amd64, arm64)?;
    let path = write_checked(&specs, oci::write(&specs)?)?;
    if run_in_engine {
        run_version(&path)?;
    }
    Ok(())
}

/// Verifies `image` against `specs` and writes it to [`archive_path`].
fn write_checked(specs: &[oci::Spec], image: oci::Image) -> anyhow::Result<PathBuf> {
    let (index_digest, reports) =
        verify::verify(&image.archive, specs).context("the archive just written")?;
    ensure!(
        index_digest == image.index.digest
            && reports.len() == image.images.len()
            && reports.iter().zip(&image.images).all(|(r, i)| {
                [&r.manifest_digest, &r.config_digest, &r.layer_digest]
                    == [&i.manifest.digest, &i.config.digest, &i.layer.digest]
            }),
        "the archive read back holds other blobs than the ones written"
    );
    let path = archive_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, &image.archive)?;
    let reference = specs
        .first()
        .map(|s| s.reference.as_str())
        .unwrap_or_default();
    eprintln!(
        "{}: {} bytes, {reference}\n  archive  {}\n  index    {}",
        path.display(),
        image.archive.len(),
        oci::sha256(&image.archive),
        index_digest,
    );
    for ((report, image), spec) in reports.iter().zip(&image.images).zip(specs) {
        eprintln!(
            "  linux/{}: manifest {}\n    config {}\n    layer  {} ({} bytes gzip, {} bytes tar, diff id {})",
            spec.architecture,
            report.manifest_digest,
            report.config_digest,
            report.layer_digest,
            report.layer_size,
            report.layer_tar_size,
            image.diff_id,
        );
    }
    Ok(path)
}

fn run_version(archive: &Path) -> anyhow::Result<()> {
    let out = engine::load_and_run(archive, &reference(), &["--version"])?;
    let want = format!("triage-agent {VERSION}");
    ensure!(
        out.trim() == want,
        "`triage-agent --version` in the image printed {:?}, want {want:?}",
        out.trim()
    );
    eprintln!("podman ran {}: {}", reference(), out.trim());
    Ok(())
}

/// The image part of `cargo xtask test`, around `binary`, the static agent the end-to-end tests
/// and the kernel matrix run (built once, by [`crate::build_release`]), and the arm64 binary
/// ([`crate::arm64::build`], an earlier phase): check them, write the image twice (the same
/// bytes), check the structure, load into podman and run `--version`.
pub fn test(binary: &Path) -> anyhow::Result<()> {
    let specs = specs(
        checked_binary(binary, ARCHITECTURE)?,
        checked_binary(&crate::arm64::binary(), crate::arm64::ARCHITECTURE)?,
    )?;
    let first = oci::write(&specs)?;
    let second = oci::write(&specs)?;
    ensure!(
        first.archive == second.archive,
        "two writes of the image differ: {} and {}",
        oci::sha256(&first.archive),
        oci::sha256(&second.archive)
    );
    let path = write_checked(&specs, first)?;
    eprintln!("reproducible: a second write gave the same bytes");
    run_version(&path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> oci::Spec {
        spec(
            elf::fixtures::static_with_bpf(),
            ARCHITECTURE,
            1_764_460_800,
            0,
            Some("0123456789abcdef0123456789abcdef01234567".into()),
        )
        .unwrap()
    }

    #[test]
    fn the_image_ships_the_licence_and_the_third_party_notices() {
        let spec = fixture();
        let file = |path: &str| {
            spec.files
                .iter()
                .find(|f| f.path == path)
                .map(|f| (f.mode, f.contents.clone()))
        };
        assert_eq!(
            file(LICENSE_PATH),
            Some((0o644, std::fs::read(root().join("LICENSE")).unwrap()))
        );
        let notices = file(crate::notices::IMAGE_PATH).unwrap();
        assert_eq!(notices.0, 0o644);
        assert!(
            String::from_utf8(notices.1)
                .unwrap()
                .starts_with("Third-party software in triage-agent")
        );
    }

    #[test]
    fn the_written_archive_verifies() {
        let spec = fixture();
        let image = oci::write(std::slice::from_ref(&spec)).unwrap();
        let (index, reports) = verify::verify(&image.archive, std::slice::from_ref(&spec)).unwrap();
        assert_eq!(index, image.index.digest);
        let (report, image) = (&reports[0], &image.images[0]);
        assert_eq!(report.manifest_digest, image.manifest.digest);
        assert_eq!(report.layer_digest, image.layer.digest);
        let config: serde_json::Value = serde_json::from_slice(&image.config.bytes).unwrap();
        assert_eq!(config["config"]["User"], USER);
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!(["/usr/local/bin/triage-agent"])
        );
        assert_eq!(config["created"], "2025-11-30T00:00:00Z");
        assert_eq!(
            config["config"]["Labels"]["org.opencontainers.image.version"],
            VERSION
        );
        assert_eq!(config["rootfs"]["diff_ids"][0], image.diff_id.as_str());
    }

    #[test]
    fn two_writes_are_identical_and_the_time_changes_them() {
        let specs = [fixture(), arm64_fixture()];
        let a = oci::write(&specs).unwrap();
        let b = oci::write(&specs).unwrap();
        assert_eq!(a.archive, b.archive);
        let mut later = specs.clone();
        later[1].created += 1;
        let c = oci::write(&later).unwrap();
        assert_eq!(c.images[0].manifest.digest, a.images[0].manifest.digest);
        assert_ne!(c.images[1].manifest.digest, a.images[1].manifest.digest);
        assert_ne!(c.index.digest, a.index.digest);
    }

    /// The fixture's image for arm64: the same static executable, its ELF machine aarch64.
    fn arm64_fixture() -> oci::Spec {
        let mut binary = elf::fixtures::static_with_bpf();
        binary[0x12..0x14].copy_from_slice(&183u16.to_le_bytes());
        let mut spec = fixture();
        spec.architecture = crate::arm64::ARCHITECTURE.into();
        spec.files[0].contents = binary;
        spec
    }

    #[test]
    fn the_index_lists_each_platform_once_and_in_order() {
        let specs = [fixture(), arm64_fixture()];
        let image = oci::write(&specs).unwrap();
        let (_, reports) = verify::verify(&image.archive, &specs).unwrap();
        assert_eq!(reports.len(), 2);
        let index: serde_json::Value = serde_json::from_slice(&image.index.bytes).unwrap();
        assert_eq!(index["manifests"][0]["platform"]["architecture"], "amd64");
        assert_eq!(index["manifests"][1]["platform"]["architecture"], "arm64");
        // Judged against the platforms in the other order, or one of them alone: refused.
        let swapped = [arm64_fixture(), fixture()];
        let e = verify::verify(&image.archive, &swapped).unwrap_err();
        assert!(format!("{e:#}").contains("platform"), "{e:#}");
        let e = verify::verify(&image.archive, &specs[..1]).unwrap_err();
        assert!(format!("{e:#}").contains("one per platform"), "{e:#}");
        // An amd64 binary in the arm64 image is caught.
        let mut wrong = arm64_fixture();
        wrong.files[0].contents = elf::fixtures::static_with_bpf();
        let both = [fixture(), wrong];
        let image = oci::write(&both).unwrap();
        let e = verify::verify(&image.archive, &both).unwrap_err();
        assert!(format!("{e:#}").contains("not arm64"), "{e:#}");
    }

    /// Rewrites one member of the outer archive, keeping the rest.
    fn tamper(archive: &[u8], edit: impl Fn(&str, Vec<u8>) -> Option<Vec<u8>>) -> Vec<u8> {
        use std::io::Read as _;
        let mut out = tar::Builder::new(Vec::new());
        for e in tar::Archive::new(archive).entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut header = e.header().clone();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            if let Some(data) = edit(&path, data) {
                header.set_size(data.len() as u64);
                out.append_data(&mut header, &path, &data[..]).unwrap();
            }
        }
        out.into_inner().unwrap()
    }

    #[test]
    fn verification_catches_what_an_engine_would_reject() {
        let spec = fixture();
        let specs = std::slice::from_ref(&spec);
        let image = oci::write(specs).unwrap();
        let config_path = oci::blob_path(&image.images[0].config.digest).unwrap();
        let layer_path = oci::blob_path(&image.images[0].layer.digest).unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "has digest",
                tamper(&image.archive, |p, mut d| {
                    if p == config_path {
                        d.push(b' ');
                    }
                    Some(d)
                }),
            ),
            (
                "missing",
                tamper(&image.archive, |p, d| (p != layer_path).then_some(d)),
            ),
            (
                "media type",
                tamper(&image.archive, |p, d| {
                    Some(if p == "index.json" {
                        // The descriptor's (the first), not index.json's own.
                        String::from_utf8(d)
                            .unwrap()
                            .replacen("image.index.v1+json", "image.index.v2+json", 1)
                            .into_bytes()
                    } else {
                        d
                    })
                }),
            ),
            (
                "no oci-layout",
                tamper(&image.archive, |p, d| (p != "oci-layout").then_some(d)),
            ),
        ];
        for (want, archive) in cases {
            let e = verify::verify(&archive, specs).unwrap_err();
            assert!(format!("{e:#}").contains(want), "want {want:?}: {e:#}");
        }
        // The same archive judged against another image definition.
        let mut other = spec.clone();
        other.user = "0:0".into();
        let e = verify::verify(&image.archive, &[other]).unwrap_err();
        assert!(format!("{e:#}").contains("config.config"), "{e:#}");
    }

    #[test]
    fn a_dynamic_binary_is_refused() {
        let mut spec = fixture();
        spec.files[0].contents = elf::fixtures::elf(&[1, 3], 0, &[]);
        let image = oci::write(std::slice::from_ref(&spec)).unwrap();
        let e = verify::verify(&image.archive, &[spec]).unwrap_err();
        assert!(format!("{e:#}").contains("PT_INTERP"), "{e:#}");
    }

    #[test]
    fn the_daemonset_runs_this_image() {
        let manifest = std::fs::read_to_string(root().join("deploy/daemonset.yaml")).unwrap();
        let images: Vec<&str> = manifest
            .lines()
            .filter_map(|l| l.trim().strip_prefix("image: "))
            .collect();
        assert_eq!(
            images,
            [reference()],
            "deploy/daemonset.yaml names another image than `cargo xtask image` builds"
        );
    }

    #[test]
    fn the_description_is_the_agent_crates() {
        let manifest = std::fs::read_to_string(root().join("agent/Cargo.toml")).unwrap();
        assert!(
            manifest.contains(&format!("description = \"{DESCRIPTION}\"")),
            "agent/Cargo.toml's description changed: update image::DESCRIPTION"
        );
    }
}
