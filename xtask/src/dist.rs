//! `cargo xtask dist`: the CLI (the same static binary as the agent) as tarballs for Linux on
//! amd64 and arm64, with the kubectl plugin's names, shell completions, the licence and the
//! third-party notices, and a SHA256SUMS file, in target/dist. Reproducible: entries sorted,
//! owned by 0:0, every mtime `SOURCE_DATE_EPOCH` (0 without it), gzip without a name or time.

use std::{
    collections::BTreeMap,
    io::Read as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, ensure};

use crate::{
    image::oci::{self, TarWriter},
    root,
};

/// The kubectl plugin's executable and its completion helper, both the binary itself.
const PLUGIN_LINKS: [&str; 2] = ["kubectl-triage_agent", "kubectl_complete-triage_agent"];
/// Shells whose completion scripts ship, and each file's name.
const COMPLETIONS: [(&str, &str); 3] = [
    ("bash", "completions/triage-agent.bash"),
    ("zsh", "completions/_triage-agent"),
    ("fish", "completions/triage-agent.fish"),
];

pub fn dir() -> PathBuf {
    root().join("target/dist")
}

/// `triage-agent-<version>-linux-<arch>`.
fn name(arch: &str) -> String {
    format!("triage-agent-{}-linux-{arch}", crate::image::VERSION)
}

/// One tarball's entries: path, then a file's mode and contents or a symlink's target.
enum Entry {
    File(u32, Vec<u8>),
    Link(String),
}

fn completions(host_binary: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    COMPLETIONS
        .iter()
        .map(|(shell, path)| {
            let out = Command::new(host_binary)
                .args(["completion", shell])
                .output()
                .with_context(|| format!("running {} completion", host_binary.display()))?;
            ensure!(
                out.status.success() && !out.stdout.is_empty(),
                "`triage-agent completion {shell}` failed ({})",
                out.status
            );
            Ok(((*path).to_owned(), out.stdout))
        })
        .collect()
}

fn tarball(arch: &str, binary: &[u8], shared: &[(String, Vec<u8>)]) -> anyhow::Result<Vec<u8>> {
    ensure!(
        crate::image::elf::machine(binary) == crate::image::elf::machine_of(arch),
        "the {arch} binary is for ELF machine {:?}",
        crate::image::elf::machine(binary)
    );
    let top = name(arch);
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    entries.insert("triage-agent".into(), Entry::File(0o755, binary.to_vec()));
    for link in PLUGIN_LINKS {
        entries.insert(link.into(), Entry::Link("triage-agent".into()));
    }
    for (path, contents) in shared {
        entries.insert(path.clone(), Entry::File(0o644, contents.clone()));
    }
    let mut tar = TarWriter::new(crate::image::mtime());
    let mut dirs = std::collections::BTreeSet::new();
    let mut dir = |tar: &mut TarWriter, path: &str| -> anyhow::Result<()> {
        if dirs.insert(path.to_owned()) {
            tar.dir(&format!("{path}/"))?;
        }
        Ok(())
    };
    dir(&mut tar, &top)?;
    for (path, entry) in &entries {
        if let Some((parent, _)) = path.rsplit_once('/') {
            dir(&mut tar, &format!("{top}/{parent}"))?;
        }
        let full = format!("{top}/{path}");
        match entry {
            Entry::File(mode, contents) => tar.file(&full, *mode, contents)?,
            Entry::Link(target) => tar.symlink(&full, target)?,
        }
    }
    oci::gzip(&tar.finish()?)
}

/// Writes the tarballs and SHA256SUMS for `binaries` (architecture, path); returns the
/// tarballs' paths. `host_binary` prints the completion scripts.
pub fn write(binaries: &[(&str, PathBuf)], host_binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut shared = completions(host_binary)?;
    for (from, to) in [
        ("LICENSE", "LICENSE"),
        ("THIRD-PARTY-NOTICES.txt", "THIRD-PARTY-NOTICES.txt"),
        ("README.md", "README.md"),
    ] {
        let path = root().join(from);
        shared.push((
            to.to_owned(),
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        ));
    }
    std::fs::create_dir_all(dir())?;
    let mut sums = String::new();
    let mut written = Vec::new();
    for (arch, path) in binaries {
        let binary = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let bytes = tarball(arch, &binary, &shared)?;
        let file = format!("{}.tar.gz", name(arch));
        let out = dir().join(&file);
        std::fs::write(&out, &bytes).with_context(|| format!("writing {}", out.display()))?;
        sums.push_str(&format!("{}  {file}\n", crate::image::sha256_hex(&bytes)));
        eprintln!("{}: {} bytes", out.display(), bytes.len());
        written.push(out);
    }
    std::fs::write(dir().join("SHA256SUMS"), &sums)?;
    eprint!("{}:\n{sums}", dir().join("SHA256SUMS").display());
    Ok(written)
}

/// Reads a written tarball back: its entries are the expected ones, the binary is for its
/// architecture, SHA256SUMS names its digest, and `sha256sum --check` agrees.
pub fn verify(tarball: &Path, arch: &str) -> anyhow::Result<()> {
    let bytes = std::fs::read(tarball)?;
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(bytes.as_slice())
        .read_to_end(&mut tar)
        .context("not gzip")?;
    let top = name(arch);
    let mut found = BTreeMap::new();
    let mut archive = tar::Archive::new(tar.as_slice());
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let kind = entry.header().entry_type();
        let link = entry.link_name()?.map(|l| l.to_string_lossy().into_owned());
        let mut contents = Vec::new();
        entry.read_to_end(&mut contents)?;
        found.insert(path, (kind, link, contents));
    }
    let binary = &found
        .get(&format!("{top}/triage-agent"))
        .context("no triage-agent in the tarball")?
        .2;
    ensure!(
        crate::image::elf::machine(binary) == crate::image::elf::machine_of(arch),
        "{}: the binary is for ELF machine {:?}",
        tarball.display(),
        crate::image::elf::machine(binary)
    );
    for link in PLUGIN_LINKS {
        let (kind, target, _) = found
            .get(&format!("{top}/{link}"))
            .with_context(|| format!("no {link} in the tarball"))?;
        ensure!(
            *kind == tar::EntryType::Symlink && target.as_deref() == Some("triage-agent"),
            "{link} is not a symlink to triage-agent"
        );
    }
    for (_, path) in COMPLETIONS {
        ensure!(
            found
                .get(&format!("{top}/{path}"))
                .is_some_and(|(_, _, c)| !c.is_empty()),
            "no {path} in the tarball"
        );
    }
    for file in ["LICENSE", "THIRD-PARTY-NOTICES.txt", "README.md"] {
        ensure!(
            found.contains_key(&format!("{top}/{file}")),
            "no {file} in the tarball"
        );
    }
    let sums = std::fs::read_to_string(dir().join("SHA256SUMS"))?;
    let file_name = tarball
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    ensure!(
        sums.lines()
            .any(|l| l == format!("{}  {file_name}", crate::image::sha256_hex(&bytes))),
        "SHA256SUMS does not name {file_name}'s digest"
    );
    let check = Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(dir())
        .output()
        .context("running sha256sum")?;
    ensure!(
        check.status.success(),
        "sha256sum --check: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tarball_for_the_wrong_architecture_is_refused() {
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[18] = 62;
        assert!(tarball("arm64", &elf, &[]).is_err());
        assert!(tarball("amd64", &elf, &[]).is_ok());
        // Reproducible.
        assert_eq!(
            tarball("amd64", &elf, &[("README.md".into(), b"x".to_vec())]).unwrap(),
            tarball("amd64", &elf, &[("README.md".into(), b"x".to_vec())]).unwrap()
        );
    }
}
