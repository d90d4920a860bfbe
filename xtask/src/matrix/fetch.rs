//! Debian cloud kernels on the host, cached: apt through a private configuration (apt.rs: its
//! own sources, lists, cache and state under the cache directory, the Debian archive keyring
//! from /usr/share/keyrings), so the host's apt state is never touched; `apt-get download` of the
//! newest kernel of each series that the mirror still serves; `dpkg-deb -x` and `depmod -b`
//! into one tree per kernel release. What was chosen is remembered in kernels.json, so a re-run
//! uses the cache and needs no network.
//!
//! Cache layout (under `cache`): apt/ (configuration and state), debs/, trees/<release>/,
//! modules/<release>/ (decompressed modules, written by mod.rs), kernels.json. Kernels that a
//! refresh replaced are removed from all of them.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::{
    Arch,
    apt::Apt,
    packages::{self, Candidate},
};

/// A kernel ready to boot: its image and its modules with depmod's tables.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The series, "6.1" (for "7" or "7.x" the newest series found, e.g. "7.3"), with
    /// `-arm64` for an arm64 kernel.
    pub name: String,
    pub arch: Arch,
    /// `uname -r`, e.g. "6.1.0-57-cloud-amd64".
    pub release: String,
    pub package: String,
    pub version: String,
    pub vmlinuz: PathBuf,
    pub modules_dir: PathBuf,
}

const INDEX: &str = "kernels.json";
/// Written last into a tree: extraction and depmod finished.
const COMPLETE: &str = ".ta-matrix-complete";

/// The kernels `wanted` ("5.10", "6.1", "7" for the newest 7.x; "6.1-arm64" for arm64), from
/// the cache when it has them (no network), else resolved and downloaded. `refresh` resolves
/// again even when cached (a newer kernel of a series replaces the cached one).
pub fn fetch_kernels(cache: &Path, wanted: &[&str], refresh: bool) -> anyhow::Result<Vec<Kernel>> {
    let index_path = cache.join(INDEX);
    let mut index: Value = fs::read(&index_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| json!({}));
    let mut online: Vec<(Arch, Online)> = Vec::new();
    let mut kernels = Vec::new();
    for want in wanted {
        let (arch, series) = Arch::of_wanted(want);
        let key = arch.name(series);
        let cached = index.get(&key).filter(|_| !refresh).cloned();
        let entry = match cached.and_then(|e| Entry::from_json(&e)) {
            Some(entry) if entry.available(cache) => entry,
            _ => {
                if !online.iter().any(|(a, _)| *a == arch) {
                    online.push((arch, Online::new(cache, arch)?));
                }
                let o = online
                    .iter()
                    .find(|(a, _)| *a == arch)
                    .map(|(_, o)| o)
                    .context("apt for the architecture")?;
                let entry = resolve(&o.apt, &o.candidates, series, arch, &cache.join("debs"))?;
                if let Some(map) = index.as_object_mut() {
                    map.insert(key, entry.to_json());
                }
                fs::write(&index_path, serde_json::to_vec_pretty(&index)?)
                    .with_context(|| format!("writing {}", index_path.display()))?;
                entry
            }
        };
        kernels.push(entry.tree(cache)?);
    }
    if !online.is_empty() {
        prune(cache, &index)?;
    }
    Ok(kernels)
}

/// The programs a foreign architecture's VMs run besides the payload's own (busybox, and the
/// simulated node's `ip`, `nft` and `dnsmasq`, as the host's are for amd64), from Debian's
/// packages for that architecture.
const USERLAND: &[&str] = &["busybox-static", "iproute2", "nftables", "dnsmasq-base"];

/// A userland of `arch` ([`USERLAND`] and every package they depend on, unpacked into one tree
/// with the merged-/usr links a system has), cached like the kernels: downloaded and unpacked
/// once, then used without the network. Returns the tree's root.
pub fn userland(cache: &Path, arch: Arch) -> anyhow::Result<PathBuf> {
    let dir = cache.join(format!("userland-{}", arch.debian()));
    let root = dir.join("root");
    if root.join(COMPLETE).exists() {
        return Ok(root);
    }
    let debs = dir.join("debs");
    fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    let apt = Apt::new(&cache.join(format!("apt-{}", arch.debian())), arch)?;
    apt.update()?;
    let files = apt
        .download_closure(USERLAND, &debs)
        .with_context(|| format!("downloading {} for {}", USERLAND.join(", "), arch.debian()))?;
    eprintln!(
        "userland {}: {} packages ({})",
        arch.debian(),
        files.len(),
        USERLAND.join(", ")
    );
    let paths: Vec<PathBuf> = files.iter().map(|f| debs.join(f)).collect();
    // Merged /usr first, so packages that still ship /lib, /bin or /sbin land in /usr too.
    let merged_usr = |tree: &Path| {
        for d in ["lib", "bin", "sbin"] {
            fs::create_dir_all(tree.join("usr").join(d))?;
            std::os::unix::fs::symlink(format!("usr/{d}"), tree.join(d))
                .with_context(|| format!("linking {d}"))?;
        }
        Ok(())
    };
    unpack(&paths, &root, merged_usr, |_| Ok(()))?;
    Ok(root)
}

/// apt with fresh package lists and the kernels they offer: set up once per architecture, the
/// first time one of its kernels is not in the cache.
struct Online {
    apt: Apt,
    candidates: Vec<Candidate>,
}

impl Online {
    fn new(cache: &Path, arch: Arch) -> anyhow::Result<Self> {
        // amd64's apt state keeps the directory it always had.
        let dir = match arch {
            Arch::Amd64 => cache.join("apt"),
            other => cache.join(format!("apt-{}", other.debian())),
        };
        let apt = Apt::new(&dir, arch)?;
        apt.update()?;
        let candidates = apt.candidates()?;
        Ok(Self { apt, candidates })
    }
}

/// Removes the packages, trees and decompressed modules of kernels kernels.json no longer
/// names (replaced by newer ones).
fn prune(cache: &Path, index: &Value) -> anyhow::Result<()> {
    let entries: Vec<Entry> = index
        .as_object()
        .map(|m| m.values().filter_map(Entry::from_json).collect())
        .unwrap_or_default();
    let keep = |dir: &str, name: &str| {
        entries.iter().any(|e| match dir {
            "debs" => e.debs.iter().any(|d| d == name),
            _ => e.release == name,
        })
    };
    for dir in ["debs", "trees", "modules"] {
        let Ok(read) = fs::read_dir(cache.join(dir)) else {
            continue;
        };
        for entry in read.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if keep(dir, &name) {
                continue;
            }
            let path = entry.path();
            eprintln!("removing {} (no longer used)", path.display());
            if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            }
            .with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// A chosen kernel as kernels.json remembers it.
struct Entry {
    name: String,
    package: String,
    version: String,
    release: String,
    debs: Vec<String>,
}

impl Entry {
    fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "package": self.package,
            "version": self.version,
            "release": self.release,
            "debs": self.debs,
        })
    }

    fn from_json(v: &Value) -> Option<Self> {
        let s = |k: &str| v.get(k)?.as_str().map(str::to_owned);
        Some(Self {
            name: s("name")?,
            package: s("package")?,
            version: s("version")?,
            release: s("release")?,
            debs: v
                .get("debs")?
                .as_array()?
                .iter()
                .filter_map(|d| d.as_str().map(str::to_owned))
                .collect(),
        })
    }

    fn tree_dir(&self, cache: &Path) -> PathBuf {
        cache.join("trees").join(&self.release)
    }

    /// Usable without the network: extracted already, or its packages are at hand.
    fn available(&self, cache: &Path) -> bool {
        self.tree_dir(cache).join(COMPLETE).exists()
            || (!self.debs.is_empty()
                && self
                    .debs
                    .iter()
                    .all(|d| cache.join("debs").join(d).exists()))
    }

    /// The extracted tree (extracting and running depmod the first time).
    fn tree(&self, cache: &Path) -> anyhow::Result<Kernel> {
        let dir = self.tree_dir(cache);
        if !dir.join(COMPLETE).exists() {
            let debs: Vec<PathBuf> = self
                .debs
                .iter()
                .map(|d| cache.join("debs").join(d))
                .collect();
            extract(&debs, &self.release, &dir)?;
        }
        let vmlinuz = [
            format!("boot/vmlinuz-{}", self.release),
            format!("usr/lib/modules/{}/vmlinuz", self.release),
            format!("lib/modules/{}/vmlinuz", self.release),
        ]
        .iter()
        .map(|p| dir.join(p))
        .find(|p| p.is_file())
        .with_context(|| format!("no vmlinuz for {} in {}", self.release, dir.display()))?;
        let modules_dir = modules_dir(&dir, &self.release)
            .with_context(|| format!("no modules for {} in {}", self.release, dir.display()))?;
        Ok(Kernel {
            name: self.name.clone(),
            arch: Arch::of_wanted(&self.name).0,
            release: self.release.clone(),
            package: self.package.clone(),
            version: self.version.clone(),
            vmlinuz,
            modules_dir,
        })
    }
}

fn modules_dir(tree: &Path, release: &str) -> Option<PathBuf> {
    ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| tree.join(d).join(release))
        .find(|p| p.join("modules.dep").is_file())
}

/// Unpacks `debs` into `dir` and writes depmod's tables there.
fn extract(debs: &[PathBuf], release: &str, dir: &Path) -> anyhow::Result<()> {
    unpack(
        debs,
        dir,
        |_| Ok(()),
        |tree| {
            // depmod (kmod 30) looks in <base>/lib/modules only; trixie's packages install
            // into usr/lib/modules (merged /usr), so give the tree the merged-/usr link a
            // system has.
            if !tree.join("lib").exists() && tree.join("usr/lib/modules").is_dir() {
                std::os::unix::fs::symlink("usr/lib", tree.join("lib"))
                    .context("linking lib to usr/lib")?;
            }
            run_quiet(Command::new("depmod").arg("-b").arg(tree).arg(release))
                .context("depmod (cargo xtask setup installs kmod)")
        },
    )
}

/// Unpacks `debs` into `dir`, whole or not at all: into `<dir>.partial`, `before` run on the
/// empty tree and `after` on the unpacked one, then marked complete ([`COMPLETE`]) and
/// renamed into place.
fn unpack(
    debs: &[PathBuf],
    dir: &Path,
    before: impl FnOnce(&Path) -> anyhow::Result<()>,
    after: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let partial = dir.with_extension("partial");
    if partial.exists() {
        fs::remove_dir_all(&partial).with_context(|| format!("removing {}", partial.display()))?;
    }
    fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    before(&partial)?;
    for deb in debs {
        run_quiet(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&partial))?;
    }
    after(&partial)?;
    fs::write(partial.join(COMPLETE), b"")?;
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::rename(&partial, dir).with_context(|| format!("renaming to {}", dir.display()))
}

/// The newest kernel of `want` that downloads, with the packages it depends on from the same
/// build.
fn resolve(
    apt: &Apt,
    candidates: &[Candidate],
    want: &str,
    arch: Arch,
    debs: &Path,
) -> anyhow::Result<Entry> {
    let chosen = packages::select(candidates, want);
    if chosen.is_empty() {
        bail!(
            "no linux-image-*-{} package of series {want} in the configured suites",
            arch.flavour()
        );
    }
    let mut failures = Vec::new();
    for c in chosen {
        let mut wanted = vec![(c.package.clone(), c.version.clone())];
        let mut i = 0;
        while let Some((name, version)) = wanted.get(i).cloned() {
            match apt.show(&name, &version) {
                Ok(show) => {
                    for dep in packages::release_depends(&show, &c.release) {
                        if !wanted.contains(&dep) {
                            wanted.push(dep);
                        }
                    }
                    i += 1;
                }
                // A dependency the archive lacks (6.18's linux-base-<release> is in no suite):
                // the kernel may still be whole without it; the extracted tree is checked for
                // its image and modules.
                Err(_) if i > 0 => {
                    eprintln!("kernel {want}: {name} {version} is in no suite, going without it");
                    wanted.remove(i);
                }
                Err(e) => return Err(e),
            }
        }
        match apt.download(&wanted, debs) {
            Ok(files) => {
                eprintln!(
                    "kernel {want}: {} {} ({})",
                    c.package,
                    c.version,
                    files.join(", ")
                );
                return Ok(Entry {
                    name: arch.name(&c.series),
                    package: c.package.clone(),
                    version: c.version.clone(),
                    release: c.release.clone(),
                    debs: files,
                });
            }
            Err(e) => {
                eprintln!(
                    "kernel {want}: {} {} does not download, trying an older one: {e:#}",
                    c.package, c.version
                );
                failures.push(format!("{} {}: {e:#}", c.package, c.version));
            }
        }
    }
    bail!(
        "no kernel of series {want} downloads:\n  {}",
        failures.join("\n  ")
    )
}

/// Runs `cmd`, showing its output only when it fails.
pub fn run_quiet(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("running {}", crate::display(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}{}",
            crate::display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
