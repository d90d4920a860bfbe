//! Loads the archive into a real engine (podman, from Debian) and runs the binary in it.
//!
//! Podman runs with its own storage under target/image/podman (vfs driver, removed afterwards),
//! so the machine's images are left alone and nothing mounts. Two settings this machine needs,
//! and any host like it:
//! - runtime runc, not Debian 12's default crun 1.8: crun refuses hosts with cgroup v1
//!   controllers and a cgroup2 mount that has a controller of its own ("cgroups in hybrid mode
//!   not supported, drop all controllers from cgroupv2"); runc runs there.
//! - `--ulimit nofile=1024:1024,nproc=1024:1024`: podman as root raises RLIMIT_NOFILE and
//!   RLIMIT_NPROC to its own defaults (1048576, 4194304), which needs CAP_SYS_RESOURCE
//!   ("setrlimit `RLIMIT_NOFILE`: Operation not permitted") where root does not hold it
//!   (containers, CI sandboxes); lowering a limit needs no privilege, and even the current
//!   limits are not safe to ask for (podman's own process chain can hold lower ones).

use std::{path::Path, process::Command};

use anyhow::{Context as _, ensure};

use crate::root;

fn podman(storage: &Path) -> Command {
    let mut cmd = Command::new("podman");
    cmd.arg("--root")
        .arg(storage.join("root"))
        .arg("--runroot")
        .arg(storage.join("run"))
        .args([
            "--storage-driver",
            "vfs",
            "--runtime",
            "runc",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "none",
        ]);
    cmd
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    eprintln!("+ {}", crate::display(cmd));
    let out = cmd
        .output()
        .with_context(|| format!("starting {}", crate::display(cmd)))?;
    ensure!(
        out.status.success(),
        "{} failed ({}): {}{}",
        crate::display(cmd),
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Limits any process may set (see the module's note): ample for `--version`.
const ULIMITS: &[&str] = &["nofile=1024:1024", "nproc=1024:1024"];

/// Loads `archive`, checks it is named `reference`, runs `args` in it (no network) and returns
/// the output.
pub fn load_and_run(archive: &Path, reference: &str, args: &[&str]) -> anyhow::Result<String> {
    let storage = root().join("target/image/podman");
    let result = run_in(&storage, archive, reference, args);
    // The storage holds only this image: drop it whatever happened.
    let _ = podman(&storage).args(["rmi", "--all", "--force"]).output();
    let _ = std::fs::remove_dir_all(&storage);
    result
}

fn run_in(
    storage: &Path,
    archive: &Path,
    reference: &str,
    args: &[&str],
) -> anyhow::Result<String> {
    let _ = std::fs::remove_dir_all(storage);
    std::fs::create_dir_all(storage)?;
    let loaded = output(podman(storage).arg("load").arg("--input").arg(archive))?;
    eprint!("{loaded}");
    let names = output(podman(storage).args(["images", "--format", "{{.Repository}}:{{.Tag}}"]))?;
    ensure!(
        names.lines().any(|n| n == reference),
        "podman load named the image {:?}, want {reference}",
        names.trim()
    );
    output(
        podman(storage)
            .args(["run", "--rm", "--network", "none"])
            .args(ULIMITS.iter().flat_map(|u| ["--ulimit", u]))
            .arg(reference)
            .args(args),
    )
}
