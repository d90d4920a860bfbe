//! Kernel modules for a VM: which of the wanted modules a kernel builds in, which it ships as
//! modules (with every dependency, in an order `insmod` can follow) and which it lacks, read from
//! the modules.dep and modules.builtin that `depmod` wrote into the extracted tree (fetch.rs);
//! and the modules themselves, decompressed on the host (the guest's busybox `insmod` takes
//! plain .ko files only).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// Modules the network tests need, where the kernel ships them as modules: veth pairs and a
/// bridge between namespaces, tc (clsact qdisc, BPF classifier) and nftables in the `ip`,
/// `inet` and `bridge` families with drop, reject and conntrack matches. `ip netns` needs
/// nothing beyond what is always built in.
pub const NETWORK: &[&str] = &[
    "veth",
    "bridge",
    "sch_ingress",
    "cls_bpf",
    "nf_tables",
    "nf_conntrack",
    "nft_ct",
    "nft_reject_ipv4",
    "nft_reject_ipv6",
    "nft_reject_inet",
    // Reject in the bridge family (skipped on a kernel that does not build it).
    "nft_reject_bridge",
    "nft_meta_bridge",
    // `ct` matches in the bridge family.
    "nf_conntrack_bridge",
    // The cluster DNS Service address, translated to the DNS pod in the node's namespace (as
    // kube-proxy does).
    "nf_nat",
    "nft_chain_nat",
    "nft_nat",
];

/// One module file to load, relative to the modules directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleFile {
    pub name: String,
    pub path: String,
}

/// What a kernel does with the wanted modules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Every module to insert, dependencies first.
    pub load: Vec<ModuleFile>,
    /// Wanted modules the kernel has built in: nothing to load.
    pub builtin: Vec<String>,
    /// Wanted modules the kernel has in neither form.
    pub absent: Vec<String>,
}

/// The kernel's own spelling: `-` and `_` are the same in module names.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// A module's name from its path: "kernel/net/bridge/bridge.ko.xz" -> "bridge".
pub fn name_of(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))?;
    Some(normalize(stem))
}

/// modules.dep: each module's path and its dependencies' paths.
#[derive(Debug, Default)]
pub struct DepTable {
    modules: BTreeMap<String, (String, Vec<String>)>,
}

impl DepTable {
    pub fn parse(text: &str) -> Self {
        let mut modules = BTreeMap::new();
        for line in text.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let Some(name) = name_of(path.trim()) else {
                continue;
            };
            let deps = deps.split_whitespace().map(str::to_owned).collect();
            modules.insert(name, (path.trim().to_owned(), deps));
        }
        Self { modules }
    }

    pub fn len(&self) -> usize {
        self.modules.len()
    }

    /// Loads `name` after everything it needs (depth first: each dependency's own
    /// dependencies before it, whatever order modules.dep lists them in).
    fn visit(&self, name: &str, seen: &mut BTreeSet<String>, out: &mut Vec<ModuleFile>) {
        if !seen.insert(name.to_owned()) {
            return;
        }
        let Some((path, deps)) = self.modules.get(name) else {
            return;
        };
        // modules.dep lists what loads last first; walking it backwards keeps that order
        // among independent dependencies.
        for dep in deps.iter().rev() {
            if let Some(dep_name) = name_of(dep) {
                self.visit(&dep_name, seen, out);
            }
        }
        out.push(ModuleFile {
            name: name.to_owned(),
            path: path.clone(),
        });
    }
}

/// The names in modules.builtin ("kernel/net/ipv6/ipv6.ko" lines).
pub fn parse_builtin(text: &str) -> BTreeSet<String> {
    text.lines().filter_map(|l| name_of(l.trim())).collect()
}

/// What loading `wanted` on this kernel means.
pub fn plan(deps: &DepTable, builtin: &BTreeSet<String>, wanted: &[String]) -> Plan {
    let mut plan = Plan::default();
    let mut seen = BTreeSet::new();
    for want in wanted {
        let name = normalize(want);
        if deps.modules.contains_key(&name) {
            deps.visit(&name, &mut seen, &mut plan.load);
        } else if builtin.contains(&name) {
            plan.builtin.push(name);
        } else {
            plan.absent.push(name);
        }
    }
    plan
}

/// Reads `modules_dir`'s tables and plans `wanted`.
pub fn plan_for(modules_dir: &Path, wanted: &[String]) -> anyhow::Result<Plan> {
    let read = |file: &str| {
        let path = modules_dir.join(file);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let deps = DepTable::parse(&read("modules.dep")?);
    if deps.len() == 0 {
        bail!("{}/modules.dep lists no module", modules_dir.display());
    }
    Ok(plan(
        &deps,
        &parse_builtin(&read("modules.builtin")?),
        wanted,
    ))
}

/// Decompresses every module of `plan` into `out_dir` as `<name>.ko` (kept across runs: a
/// module file of a kernel release never changes) and returns their paths in load order.
pub fn prepare(
    modules_dir: &Path,
    plan: &Plan,
    out_dir: &Path,
) -> anyhow::Result<Vec<(String, PathBuf)>> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut out = Vec::new();
    for module in &plan.load {
        let source = modules_dir.join(&module.path);
        let target = out_dir.join(format!("{}.ko", module.name));
        if !target.exists() {
            let partial = target.with_extension("ko.partial");
            decompress(&source, &partial)?;
            std::fs::rename(&partial, &target)
                .with_context(|| format!("renaming to {}", target.display()))?;
        }
        out.push((module.name.clone(), target));
    }
    Ok(out)
}

fn decompress(source: &Path, target: &Path) -> anyhow::Result<()> {
    let name = source.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else if name.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    let Some(tool) = tool else {
        std::fs::copy(source, target)
            .with_context(|| format!("copying {} to {}", source.display(), target.display()))?;
        return Ok(());
    };
    let out =
        std::fs::File::create(target).with_context(|| format!("creating {}", target.display()))?;
    let status = Command::new(tool)
        .args(["-d", "-c"])
        .arg(source)
        .stdout(out)
        .status()
        .with_context(|| format!("running {tool} (cargo xtask setup installs it)"))?;
    if !status.success() {
        bail!("{tool} -d -c {} failed ({status})", source.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Excerpt of 6.12's modules.dep (depmod output), in its own order.
    const DEP: &str = "\
kernel/drivers/net/veth.ko.xz:
kernel/net/sched/cls_bpf.ko.xz:
kernel/net/netfilter/nft_ct.ko.xz: kernel/net/netfilter/nf_tables.ko.xz kernel/net/netfilter/nfnetlink.ko.xz kernel/net/netfilter/nf_conntrack.ko.xz kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko.xz kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko.xz kernel/lib/libcrc32c.ko.xz
kernel/net/netfilter/nf_tables.ko.xz: kernel/net/netfilter/nfnetlink.ko.xz kernel/lib/libcrc32c.ko.xz
kernel/net/netfilter/nfnetlink.ko.xz:
kernel/lib/libcrc32c.ko.xz:
kernel/net/netfilter/nf_conntrack.ko.xz: kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko.xz kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko.xz kernel/lib/libcrc32c.ko.xz
kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko.xz:
kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko.xz:
kernel/net/bridge/bridge.ko.xz: kernel/net/802/stp.ko.xz kernel/net/llc/llc.ko.xz
kernel/net/802/stp.ko.xz: kernel/net/llc/llc.ko.xz
kernel/net/llc/llc.ko.xz:
kernel/net/bridge/netfilter/nft_meta_bridge.ko.xz: kernel/net/bridge/bridge.ko.xz kernel/net/802/stp.ko.xz kernel/net/netfilter/nf_tables.ko.xz kernel/net/netfilter/nfnetlink.ko.xz kernel/net/llc/llc.ko.xz kernel/lib/libcrc32c.ko.xz
kernel/drivers/net/dummy-thing.ko.xz:
";
    const BUILTIN: &str = "kernel/net/ipv6/ipv6.ko\nkernel/crypto/crc32c_generic.ko\n";

    fn wanted(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    fn names(plan: &Plan) -> Vec<&str> {
        plan.load.iter().map(|m| m.name.as_str()).collect()
    }

    #[test]
    fn dependencies_load_first_and_once() {
        let deps = DepTable::parse(DEP);
        let builtin = parse_builtin(BUILTIN);
        let plan = plan(
            &deps,
            &builtin,
            &wanted(&["nft_ct", "nft_meta_bridge", "veth", "bridge"]),
        );
        let order = names(&plan);
        assert_eq!(
            order,
            [
                "libcrc32c",
                "nf_defrag_ipv4",
                "nf_defrag_ipv6",
                "nf_conntrack",
                "nfnetlink",
                "nf_tables",
                "nft_ct",
                "llc",
                "stp",
                "bridge",
                "nft_meta_bridge",
                "veth",
            ]
        );
        // Every module after all of its own dependencies.
        for (i, m) in plan.load.iter().enumerate() {
            let (_, their) = &deps.modules[&m.name];
            for dep in their {
                let dep = name_of(dep).unwrap();
                let at = order.iter().position(|n| *n == dep).unwrap();
                assert!(at < i, "{dep} loads after {}", m.name);
            }
        }
        assert_eq!(plan.load[0].path, "kernel/lib/libcrc32c.ko.xz");
    }

    #[test]
    fn builtin_and_absent_modules_are_told_apart() {
        let plan = plan(
            &DepTable::parse(DEP),
            &parse_builtin(BUILTIN),
            &wanted(&["ipv6", "crc32c-generic", "nft_reject_bridge", "dummy-thing"]),
        );
        assert_eq!(names(&plan), ["dummy_thing"]);
        assert_eq!(plan.builtin, ["ipv6", "crc32c_generic"]);
        assert_eq!(plan.absent, ["nft_reject_bridge"]);
    }

    #[test]
    fn module_names_come_from_any_compression() {
        assert_eq!(name_of("kernel/a/b.ko").as_deref(), Some("b"));
        assert_eq!(name_of("kernel/a/b-c.ko.zst").as_deref(), Some("b_c"));
        assert_eq!(name_of("kernel/a/b.ko.gz").as_deref(), Some("b"));
        assert_eq!(name_of("kernel/a/b.o"), None);
    }
}
