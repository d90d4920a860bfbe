//! The host programs and kernel interfaces the simulated node drives: `ip`, `nft` inside a
//! network namespace, sysctls of a namespace, programs found on `PATH`.

use std::{
    fs,
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, ensure};

/// Runs a command, failing with its stderr.
pub(super) fn sh(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// `nft -f -` inside a network namespace.
pub(super) fn nft(netns: &str, ruleset: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft (cargo xtask setup installs nftables)")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(ruleset.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "nft in {netns}: {}\n{ruleset}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Writes a sysctl (`net.ipv4.ip_forward`) of a named network namespace: a thread joins the
/// namespace and writes /proc/sys, which shows the writer's namespace (no sysctl program).
pub(super) fn sysctl_in(netns: &str, key: &str, value: &str) -> anyhow::Result<()> {
    let ns = fs::File::open(format!("/run/netns/{netns}"))
        .with_context(|| format!("opening network namespace {netns}"))?;
    let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
    let value = value.to_owned();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        // SAFETY: setns on an open namespace fd; it changes only this thread, which ends here.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        fs::write(&path, value)
    });
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the sysctl thread panicked"))?
        .with_context(|| format!("sysctl {key} in {netns}"))
}

/// A program found on `PATH` (then in /usr/sbin and /sbin, which a non-root `PATH` may lack).
pub(super) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}
