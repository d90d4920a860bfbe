//! `cargo xtask setup`: what a fresh Debian 12 build machine lacks, installed idempotently.
//!
//! - the nightly toolchain's rust-src (the BPF target builds `core` from source);
//! - bpf-linker 0.13, linked against the LLVM inside the nightly toolchain (no Debian LLVM):
//!   rebuilt when that LLVM changes;
//! - the musl target and musl-tools, for the image's static binary (`cargo xtask image`);
//! - Debian packages the tests, the demo and the bench use (iproute2, nftables, iperf3,
//!   dnsmasq-base, dnsutils, tcpdump, bpftrace, procps, python3-venv), and podman with runc, which the
//!   image test loads the image into;
//! - what `cargo xtask kernel-matrix` needs: qemu-system-x86, busybox-static (the VMs' init),
//!   kmod (depmod), xz-utils and zstd (compressed kernel modules);
//! - cargo-fuzz, for the fuzz targets; cargo-deny (the dependency policy in `cargo xtask
//!   lint`) and cargo-about (the third-party notices), from crates.io;
//! - `kubernetes-validate` (PyPI), in a virtualenv under target/tools: the manifest test
//!   validates deploy/ against the Kubernetes OpenAPI schemas with it.
//!
//! `--build-only` installs just what building the binaries needs (the Dockerfile's build stage).

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::run;

const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages: `ip` for network namespaces and veths; `nft` for the simulated node's
/// NetworkPolicy enforcement and firewall rules; iperf3 for the benchmarks; a real DNS server
/// and client for DNS tests.
const DEBIAN_PACKAGES: &[&str] = &[
    // musl-gcc: ring (rustls) compiles C for the static musl build.
    "musl-tools",
    "iproute2",
    "nftables",
    "iperf3",
    "dnsmasq-base",
    "dnsutils",
    "tcpdump",
    // The bench's peers: bpftrace counting and printing the events the agent observes.
    "bpftrace",
    // sysctl, for the simulated node's forwarding settings.
    "procps",
    // A virtualenv for the manifest validator (Debian's Python refuses system-wide pip).
    "python3-venv",
    // The image test's engine. runc besides Debian 12's default crun 1.8, which refuses
    // hosts with cgroup v1 controllers and a cgroup2 mount that has a controller of its own.
    "podman",
    "runc",
    // The simulated node's runtime backend: a private containerd (CRI plugin, `ctr` to import
    // the locally written image), runc, and the CNI bridge, host-local and portmap plugins.
    "containerd",
    "containernetworking-plugins",
    // A real Prometheus scrapes the agent in the metrics test; promtool checks the exposition
    // and the shipped alert rules.
    "prometheus",
];
/// The arm64 build: gcc for arm64's C and assembly (ring, SQLite, psm), qemu-user to run the
/// result.
const ARM64_PACKAGES: &[&str] = &["gcc-aarch64-linux-gnu", "qemu-user"];
/// `cargo xtask kernel-matrix`: qemu with software emulation (x86 and arm64 machines), a
/// static busybox for the VMs' init, depmod for the kernels' module tables, xz and zstd for
/// compressed modules, and the host programs the payload copies into the amd64 VMs (ip, nft,
/// dnsmasq; the arm64 VMs get Debian's arm64 ones, whose libraries qemu-user lists). The
/// kernels and the arm64 programs come through a private apt configuration signed by the
/// Debian archive keyring.
const KERNEL_MATRIX_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-system-arm",
    "qemu-user",
    "busybox-static",
    "kmod",
    "xz-utils",
    "zstd",
    "debian-archive-keyring",
    "iproute2",
    "nftables",
    "dnsmasq-base",
];
/// What building needs of the above.
const DEBIAN_BUILD_PACKAGES: &[&str] = &["musl-tools"];
/// The image's binary is static: musl.
const MUSL_TARGET: &str = crate::image::TARGET;
/// The Kubernetes manifest validator (schemas of every Kubernetes release bundled), pinned.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {}", crate::display(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            crate::display(cmd),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// Everything: building, the tests, the demo, the bench, the image test.
pub fn setup() -> anyhow::Result<()> {
    nightly()?;
    bpf_linker()?;
    musl_target()?;
    debian_packages(&[DEBIAN_PACKAGES, KERNEL_MATRIX_PACKAGES, ARM64_PACKAGES].concat())?;
    manifest_validator()?;
    arm64()?;
    for tool in CARGO_TOOLS {
        cargo_tool(tool)?;
    }
    Ok(())
}

/// What building the binaries needs, nothing for the tests.
pub fn setup_build() -> anyhow::Result<()> {
    nightly()?;
    bpf_linker()?;
    musl_target()?;
    debian_packages(DEBIAN_BUILD_PACKAGES)
}

/// What `cargo xtask kernel-matrix` needs: the build (its payload is the static binaries) and
/// the VMs' packages.
pub fn setup_kernel_matrix() -> anyhow::Result<()> {
    setup_build()?;
    debian_packages(KERNEL_MATRIX_PACKAGES)?;
    // The arm64 VMs' payload is cross-built.
    arm64()
}

/// The musl standard library for the default (stable) toolchain.
fn musl_target() -> anyhow::Result<()> {
    rust_target(MUSL_TARGET)
}

fn rust_target(target: &str) -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if !installed.lines().any(|l| l.trim() == target) {
        run(Command::new("rustup").args(["target", "add", target]))?;
    }
    Ok(())
}

/// The arm64 static binary's cross build (see xtask/src/arm64.rs): the target's standard
/// library, the cross compiler and qemu-user (Debian), musl's arm64 headers.
fn arm64() -> anyhow::Result<()> {
    rust_target(crate::arm64::TARGET)?;
    debian_packages(ARM64_PACKAGES)?;
    crate::arm64::setup()
}

/// A cargo subcommand from crates.io, at a pinned version.
struct CargoTool {
    /// The crate, and `cargo <subcommand>` without the `cargo-`.
    krate: &'static str,
    version: &'static str,
    /// Features its binary needs.
    features: &'static str,
}

/// cargo-fuzz for `cargo xtask fuzz`; cargo-deny (licences, bans, sources) in `cargo xtask
/// lint`; cargo-about for the third-party notices the image ships (`cargo xtask notices`).
const CARGO_TOOLS: &[CargoTool] = &[
    CargoTool {
        krate: "cargo-fuzz",
        version: "0.13.1",
        features: "",
    },
    CargoTool {
        krate: "cargo-deny",
        version: "0.20.2",
        features: "",
    },
    CargoTool {
        krate: "cargo-about",
        version: "0.9.3",
        features: "cli",
    },
];

fn cargo_tool(tool: &CargoTool) -> anyhow::Result<()> {
    let subcommand = tool.krate.trim_start_matches("cargo-");
    let have = Command::new("cargo")
        .args([subcommand, "--version"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if have.split_whitespace().any(|w| w == tool.version) {
        return Ok(());
    }
    let mut install = Command::new("cargo");
    install.args(["install", "--locked", tool.krate, "--version", tool.version]);
    if !tool.features.is_empty() {
        install.args(["--features", tool.features]);
    }
    run(&mut install)
}

/// Where `kubernetes-validate` is installed (agent/tests/deploy.rs runs it from there).
pub fn manifest_validator_dir() -> PathBuf {
    crate::root().join("target/tools/kubernetes-validate")
}

fn manifest_validator() -> anyhow::Result<()> {
    let dir = manifest_validator_dir();
    let bin = dir.join("bin/kubernetes-validate");
    let want = KUBERNETES_VALIDATE.rsplit("==").next().unwrap_or_default();
    let have = Command::new(&bin)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if have.contains(want) {
        return Ok(());
    }
    run(Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(&dir))?;
    run(Command::new(dir.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        KUBERNETES_VALIDATE,
    ]))
}

fn nightly() -> anyhow::Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// The nightly toolchain's libLLVM and its major version.
fn nightly_llvm() -> anyhow::Result<(PathBuf, u32)> {
    let verbose = output(Command::new("rustc").args(["+nightly", "--version", "--verbose"]))?;
    let version = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("rustc +nightly reports no LLVM version")?;
    let major: u32 = version
        .split('.')
        .next()
        .unwrap_or_default()
        .parse()
        .context("LLVM major version")?;
    let sysroot = PathBuf::from(
        output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim(),
    );
    let lib = std::fs::read_dir(sysroot.join("lib"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so."))
        })
        .or_else(|| {
            std::fs::read_dir(sysroot.join("lib"))
                .ok()?
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name().is_some_and(|n| {
                        let n = n.to_string_lossy();
                        n.starts_with("libLLVM") && n.ends_with(".so")
                    })
                })
        })
        .context("no libLLVM in the nightly toolchain")?;
    Ok((lib, major))
}

fn bpf_linker() -> anyhow::Result<()> {
    let (llvm_lib, major) = nightly_llvm()?;
    let stamp_path = cargo_home().join("bpf-linker.llvm");
    let want = format!("{BPF_LINKER_VERSION} {}", llvm_lib.display());
    let installed = Command::new(cargo_home().join("bin/bpf-linker"))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false);
    let stamp = std::fs::read_to_string(&stamp_path).unwrap_or_default();
    if installed
        && (stamp.trim() == want
            || stamp.is_empty() && llvm_works(&cargo_home().join("bin/bpf-linker")))
    {
        if stamp.is_empty() {
            std::fs::write(&stamp_path, &want)?;
        }
        return Ok(());
    }
    eprintln!(
        "installing bpf-linker {BPF_LINKER_VERSION} against the nightly toolchain's LLVM {major}"
    );
    let prefix = crate::root().join("target/llvm-prefix");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm_lib, &link)?;
    let lib_dir = llvm_lib.parent().unwrap_or(Path::new("/"));
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix)
        .env(
            "RUSTFLAGS",
            format!("-C link-arg=-Wl,-rpath,{}", lib_dir.display()),
        ))?;
    std::fs::write(&stamp_path, want)?;
    Ok(())
}

/// bpf-linker starts (its LLVM library resolves).
fn llvm_works(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--help")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn debian_packages(packages: &[&'static str]) -> anyhow::Result<()> {
    let mut missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| !String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(true)
        })
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    if !crate::is_root() {
        bail!(
            "missing Debian packages {missing:?}: run `apt-get install {}` as root",
            missing.join(" ")
        );
    }
    run(Command::new("apt-get").arg("update"))?;
    // Packages such as prometheus, containerd and dnsmasq start a service when installed on a
    // host that runs an init system; the tests run their own, on their own ports. Debian's
    // policy-rc.d (exit 101: "action forbidden") keeps the install from starting any, unless
    // the machine already has a policy of its own.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let guard = !policy.exists();
    if guard {
        std::fs::write(
            policy,
            "#!/bin/sh\n# written by cargo xtask setup for one apt-get install\nexit 101\n",
        )
        .and_then(|()| std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755)))
        .with_context(|| format!("writing {}", policy.display()))?;
    }
    let installed = run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    if guard {
        std::fs::remove_file(policy).with_context(|| format!("removing {}", policy.display()))?;
    }
    installed
}
