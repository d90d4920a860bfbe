//! THIRD-PARTY-NOTICES.txt: the licence texts of every crate the static binary links, with the
//! crates each covers, written by cargo-about (`about.toml`, `about.hbs`) in `cargo xtask
//! codegen`, checked current in `cargo xtask lint`, shipped in the image.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, ensure};

use crate::{cargo, root};

/// The committed notices.
pub fn path() -> PathBuf {
    root().join("THIRD-PARTY-NOTICES.txt")
}

/// Where the image keeps them.
pub const IMAGE_PATH: &str = "usr/share/doc/triage-agent/THIRD-PARTY-NOTICES.txt";

/// The notices as cargo-about writes them now, from the lock file and the crates' own files.
pub fn generate() -> anyhow::Result<String> {
    let mut cmd: Command = cargo();
    cmd.current_dir(root()).args([
        "about",
        "generate",
        "--offline",
        "--locked",
        "--fail",
        "--manifest-path",
        "agent/Cargo.toml",
        "--config",
        "about.toml",
        "about.hbs",
    ]);
    eprintln!("+ cargo about generate (agent/Cargo.toml, about.toml, about.hbs)");
    let out = cmd
        .output()
        .context("running cargo about (cargo xtask setup installs it)")?;
    ensure!(
        out.status.success(),
        "cargo about generate failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).context("cargo about wrote something not UTF-8")?;
    // One newline at the end, no trailing spaces: the file is committed.
    let mut tidy: String = text
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n");
    tidy.push('\n');
    Ok(tidy)
}

pub fn write() -> anyhow::Result<()> {
    let text = generate()?;
    std::fs::write(path(), &text).with_context(|| format!("writing {}", path().display()))?;
    eprintln!("wrote {} ({} bytes)", path().display(), text.len());
    Ok(())
}

/// Fails when the committed notices differ from what cargo-about writes now (a dependency
/// changed without `cargo xtask codegen`).
pub fn check() -> anyhow::Result<()> {
    let now = generate()?;
    let committed = std::fs::read_to_string(path()).with_context(|| {
        format!(
            "reading {} (cargo xtask codegen writes it)",
            path().display()
        )
    })?;
    ensure!(
        now == committed,
        "{} is not current for Cargo.lock: run `cargo xtask codegen` and commit it",
        path().display()
    );
    Ok(())
}
