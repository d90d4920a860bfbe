//! apt with a configuration of its own (sources, lists, cache, state and keyrings under one
//! directory), so the host's apt state is never read or changed: `apt-get update`, the kernel
//! packages the suites offer, their control fields, `apt-get download`. fetch.rs decides what
//! to ask for.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use super::{
    Arch,
    fetch::run_quiet,
    packages::{self, Candidate},
};

/// The suites the kernels come from: 5.10 (bullseye-security), 6.1 and 6.12
/// (bookworm-security, whose 6.12 backport is newer than trixie's), 6.18 and 7.x
/// (trixie-backports).
const SOURCES: &[(&str, &str)] = &[
    (
        "http://security.debian.org/debian-security",
        "bullseye-security",
    ),
    ("http://deb.debian.org/debian-security", "bookworm-security"),
    ("http://deb.debian.org/debian", "trixie"),
    ("http://deb.debian.org/debian", "trixie-backports"),
];
/// From the debian-archive-keyring package: it signs every suite above.
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// apt with a configuration of its own under `root`, for one architecture.
pub struct Apt {
    root: PathBuf,
    config: PathBuf,
    arch: Arch,
}

impl Apt {
    pub fn new(root: &Path, arch: Arch) -> anyhow::Result<Self> {
        for d in [
            "etc/apt.conf.d",
            "etc/preferences.d",
            "etc/sources.list.d",
            "etc/trusted.gpg.d",
            "state/lists/partial",
            "cache/archives/partial",
            "log",
        ] {
            fs::create_dir_all(root.join(d))
                .with_context(|| format!("creating {}", root.join(d).display()))?;
        }
        let mut sources = String::new();
        for (uri, suite) in SOURCES {
            sources.push_str(&format!(
                "deb [arch={} signed-by={KEYRING}] {uri} {suite} main\n",
                arch.debian()
            ));
        }
        fs::write(root.join("etc/sources.list"), sources)?;
        let status = root.join("state/status");
        if !status.exists() {
            fs::write(&status, b"")?;
        }
        let config = root.join("apt.conf");
        fs::write(&config, apt_conf(root, arch))?;
        Ok(Self {
            root: root.to_owned(),
            config,
            arch,
        })
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("APT_CONFIG", &self.config).env("LC_ALL", "C");
        cmd
    }

    pub fn update(&self) -> anyhow::Result<()> {
        eprintln!("apt-get update (private lists in {})", self.root.display());
        run_quiet(self.command("apt-get").args(["update", "-q"]))
    }

    /// Every kernel image of the architecture's flavour with its versions.
    pub fn candidates(&self) -> anyhow::Result<Vec<Candidate>> {
        let flavour = self.arch.flavour();
        let pattern = format!("^linux-image-[0-9].*-{flavour}$");
        let names = output(
            self.command("apt-cache")
                .args(["search", "--names-only", &pattern]),
        )?;
        let names: Vec<&str> = names
            .lines()
            .filter_map(|l| l.split(" - ").next())
            .collect();
        if names.is_empty() {
            bail!("apt-cache finds no kernel package matching {pattern}");
        }
        Ok(packages::parse_madison(
            &output(self.command("apt-cache").arg("madison").args(&names))?,
            flavour,
        ))
    }

    /// The package's control fields; an error when no suite has that version (apt-cache
    /// then prints nothing and exits 0).
    pub fn show(&self, package: &str, version: &str) -> anyhow::Result<String> {
        let text = output(
            self.command("apt-cache")
                .args(["show", &format!("{package}={version}")]),
        )?;
        if !text.lines().any(|l| l.starts_with("Package:")) {
            bail!("no suite has {package} {version}");
        }
        Ok(text)
    }

    /// Downloads `packages` into `dir`, all or none; returns the file names.
    pub fn download(
        &self,
        packages: &[(String, String)],
        dir: &Path,
    ) -> anyhow::Result<Vec<String>> {
        let partial = dir.join(format!(".partial-{}", std::process::id()));
        fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
        let result = self
            .command("apt-get")
            .args(["download", "-q"])
            .args(packages.iter().map(|(p, v)| format!("{p}={v}")))
            .current_dir(&partial)
            .output();
        let outcome = match result {
            Ok(out) if out.status.success() => move_debs(&partial, dir),
            Ok(out) => Err(anyhow::anyhow!(
                "apt-get download failed: {}",
                last_line(&out.stderr)
            )),
            Err(e) => Err(anyhow::Error::new(e).context("running apt-get")),
        };
        fs::remove_dir_all(&partial).with_context(|| format!("removing {}", partial.display()))?;
        outcome
    }

    /// Downloads `packages` and everything they depend on, as apt would install them on a
    /// system with nothing installed (no recommends), into `dir`; returns the file names.
    pub fn download_closure(&self, packages: &[&str], dir: &Path) -> anyhow::Result<Vec<String>> {
        let archives = dir.join(format!(".archives-{}", std::process::id()));
        fs::create_dir_all(archives.join("partial"))
            .with_context(|| format!("creating {}", archives.display()))?;
        let result = run_quiet(
            self.command("apt-get")
                .args([
                    "install",
                    "--download-only",
                    "--no-install-recommends",
                    "-y",
                    "-q",
                ])
                .arg(format!("-oDir::Cache::archives={}/", archives.display()))
                .args(packages),
        );
        let outcome = result.and_then(|()| move_debs(&archives, dir));
        fs::remove_dir_all(&archives)
            .with_context(|| format!("removing {}", archives.display()))?;
        outcome
    }
}

/// Moves the packages apt left in `from` to `to`; their file names, sorted.
fn move_debs(from: &Path, to: &Path) -> anyhow::Result<Vec<String>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(from)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".deb") {
            fs::rename(entry.path(), to.join(&name))?;
            files.push(name);
        }
    }
    files.sort();
    Ok(files)
}

fn apt_conf(root: &Path, arch: Arch) -> String {
    let r = root.display();
    let a = arch.debian();
    format!(
        "Dir::State \"{r}/state\";\n\
         Dir::State::status \"{r}/state/status\";\n\
         Dir::Cache \"{r}/cache\";\n\
         Dir::Log \"{r}/log\";\n\
         Dir::Etc \"{r}/etc\";\n\
         Dir::Etc::main \"apt.conf\";\n\
         Dir::Etc::parts \"apt.conf.d\";\n\
         Dir::Etc::sourcelist \"sources.list\";\n\
         Dir::Etc::sourceparts \"sources.list.d\";\n\
         Dir::Etc::preferences \"preferences\";\n\
         Dir::Etc::preferencesparts \"preferences.d\";\n\
         Dir::Etc::trusted \"trusted.gpg\";\n\
         Dir::Etc::trustedparts \"trusted.gpg.d\";\n\
         APT::Architecture \"{a}\";\n\
         APT::Architectures {{ \"{a}\"; }};\n\
         Acquire::Languages \"none\";\n\
         Acquire::Retries \"2\";\n\
         APT::Sandbox::User \"root\";\n"
    )
}

fn last_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    text.lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("no message")
        .trim()
        .to_owned()
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {}", crate::display(cmd)))?;
    if !out.status.success() {
        bail!("{} failed: {}", crate::display(cmd), last_line(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
