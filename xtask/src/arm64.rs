//! The static binary for arm64 (`aarch64-unknown-linux-musl`), cross-built on this x86_64
//! machine, and its check under qemu-user.
//!
//! Rust code needs only the target's standard library (rustup) and a linker: rust-lld, which
//! links against the target's self-contained musl start files. Three dependencies compile C or
//! assembly for the target (ring, SQLite in libsqlite3-sys, psm): Debian's
//! `gcc-aarch64-linux-gnu` compiles them against musl's own arm64 headers, taken from Debian's
//! `musl-dev` arm64 package (pinned by version and SHA-256, downloaded once by apt's own
//! downloader into target/tools, never installed into the host's dpkg state), so nothing of
//! glibc reaches the binary.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, ensure};
use serde_json::Value;

use crate::{cargo, root, run};

pub const TARGET: &str = "aarch64-unknown-linux-musl";
/// The OCI/GOARCH spelling.
pub const ARCHITECTURE: &str = "arm64";

/// Debian 12's musl-dev for arm64: musl's headers for that architecture.
const MUSL_DEV: &str = "musl-dev_1.2.3-1_arm64.deb";
const MUSL_DEV_URL: &str =
    "http://deb.debian.org/debian/pool/main/m/musl/musl-dev_1.2.3-1_arm64.deb";
const MUSL_DEV_SHA256: &str = "55c2ca4bc3041c8ed8ac7dc3ef6080d9551a21650568b2fd7610b59eaf98a4f4";
/// The cross compiler (Debian's `gcc-aarch64-linux-gnu`); only its compiler proper is used.
const GCC: &str = "aarch64-linux-gnu-gcc";
const AR: &str = "aarch64-linux-gnu-ar";

/// target/tools/aarch64-linux-musl: musl's arm64 headers and the compiler wrapper.
fn tools() -> PathBuf {
    root().join("target/tools/aarch64-linux-musl")
}

fn include_dir() -> PathBuf {
    tools().join("usr/include/aarch64-linux-musl")
}

fn wrapper() -> PathBuf {
    tools().join("cc")
}

/// Downloads and unpacks musl's arm64 headers and writes the compiler wrapper, unless there.
pub fn setup() -> anyhow::Result<()> {
    let gcc_include = Command::new(GCC)
        .arg("-print-file-name=include")
        .output()
        .with_context(|| format!("running {GCC} (Debian's gcc-aarch64-linux-gnu)"))?;
    ensure!(
        gcc_include.status.success(),
        "{GCC} -print-file-name failed"
    );
    let gcc_include = String::from_utf8_lossy(&gcc_include.stdout)
        .trim()
        .to_owned();
    if !include_dir().join("stdio.h").is_file() {
        let deb = root().join("target/tools/cache").join(MUSL_DEV);
        if let Some(dir) = deb.parent() {
            std::fs::create_dir_all(dir)?;
        }
        run(Command::new("/usr/lib/apt/apt-helper")
            .args(["download-file", MUSL_DEV_URL])
            .arg(&deb)
            .arg(format!("SHA256:{MUSL_DEV_SHA256}")))?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(tools()))?;
        ensure!(
            include_dir().join("stdio.h").is_file(),
            "{MUSL_DEV} has no {}",
            include_dir().display()
        );
    }
    // musl's headers only, then the compiler's own (stddef.h, arm_neon.h); no outline atomics
    // (they would need libgcc, which the link does not have).
    let script = format!(
        "#!/bin/sh\n# Written by cargo xtask setup: {GCC} compiling against musl's arm64 headers.\nexec {GCC} -nostdinc -isystem '{}' -isystem '{gcc_include}' -mno-outline-atomics \"$@\"\n",
        include_dir().display()
    );
    if std::fs::read_to_string(wrapper()).ok().as_deref() != Some(script.as_str()) {
        std::fs::write(wrapper(), &script)?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(wrapper(), std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// The release build of the agent for arm64.
pub fn build() -> anyhow::Result<PathBuf> {
    setup()?;
    // The image's build for the other target.
    let args = crate::image::CARGO_BUILD.iter().map(|a| {
        if *a == crate::image::TARGET {
            TARGET
        } else {
            a
        }
    });
    run(cross(cargo().args(args)))?;
    Ok(binary())
}

/// Where the arm64 release builds leave their binaries.
pub fn release_dir() -> PathBuf {
    root().join(format!("target/{TARGET}/release"))
}

pub fn binary() -> PathBuf {
    release_dir().join("triage-agent")
}

/// The kernel matrix's arm64 payload besides the agent ([`build`]): the tests crate's
/// `vm-check` and `sim-workload`, built for arm64 on their own (a build together with the
/// agent would unify features and change the agent the image ships).
pub fn build_matrix_payload() -> anyhow::Result<()> {
    setup()?;
    run(cross(cargo().args([
        "build",
        "--release",
        "--locked",
        "--target",
        TARGET,
        "-p",
        "triage-agent-tests",
        "--bin",
        "vm-check",
        "--bin",
        "sim-workload",
    ])))
}

/// `cmd` with the cross toolchain: musl's arm64 headers through the gcc wrapper, rust-lld.
fn cross(cmd: &mut Command) -> &mut Command {
    cmd.env("CC_aarch64_unknown_linux_musl", wrapper())
        .env("AR_aarch64_unknown_linux_musl", AR)
        .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER", "rust-lld")
}

fn qemu(binary: &Path, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let mut cmd = Command::new("qemu-aarch64");
    cmd.arg(binary).args(args);
    eprintln!("+ {}", crate::display(&cmd));
    cmd.output()
        .context("running qemu-aarch64 (Debian's qemu-user)")
}

/// The arm64 binary under qemu-user: `--version`, and `doctor`, whose host checks (the
/// kernel's BTF read by the agent's own reader, cgroups, capabilities) run as arm64 code.
/// qemu-user has no bpf(2) (ENOSYS), so the programs' load is the one check it cannot pass;
/// that they load and work on arm64 kernels is a VM's job.
pub fn check(binary: &Path) -> anyhow::Result<()> {
    let version = qemu(binary, &["--version"])?;
    let want = format!("triage-agent {}", crate::image::VERSION);
    ensure!(
        version.status.success() && String::from_utf8_lossy(&version.stdout).trim() == want,
        "arm64 `--version` printed {:?} ({}), want {want:?}",
        String::from_utf8_lossy(&version.stdout).trim(),
        version.status
    );
    let doctor = qemu(binary, &["doctor", "-o", "json"])?;
    let report: Value = serde_json::from_slice(&doctor.stdout).with_context(|| {
        format!(
            "arm64 `doctor -o json` printed no JSON ({}): {}",
            doctor.status,
            String::from_utf8_lossy(&doctor.stderr).trim()
        )
    })?;
    let check = |name: &str| {
        report
            .get("checks")
            .and_then(Value::as_array)
            .and_then(|c| {
                c.iter()
                    .find(|c| c.get("check").and_then(Value::as_str) == Some(name))
            })
            .cloned()
            .unwrap_or(Value::Null)
    };
    let field = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let btf = check("btf");
    ensure!(
        field(&btf, "result") == "ok",
        "arm64 doctor's BTF check: {btf} (the host has /sys/kernel/btf/vmlinux)"
    );
    let load = check("load");
    ensure!(
        field(&load, "result") == "ok"
            || field(&load, "detail").contains("Function not implemented"),
        "arm64 doctor's load check failed for another reason than qemu-user's missing bpf(2): {load}"
    );
    eprintln!(
        "arm64 binary under qemu-user: {want}; doctor's host checks ran (btf ok; eBPF load: {})",
        field(&load, "result")
    );
    Ok(())
}
