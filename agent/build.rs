//! Builds the eBPF programs (agent-ebpf) for the BPF target and leaves the object in OUT_DIR,
//! where src/probes embeds it. Only with the `node-agent` feature: the CLI alone needs no eBPF
//! toolchain.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(feature = "node-agent")]
    ebpf::build()?;
    Ok(())
}

#[cfg(feature = "node-agent")]
mod ebpf {
    use anyhow::{Context as _, anyhow};

    const EBPF_PACKAGE: &str = "triage-agent-ebpf";

    pub fn build() -> anyhow::Result<()> {
        let metadata = cargo_metadata::MetadataCommand::new()
            .no_deps()
            .exec()
            .context("cargo metadata")?;
        let package = metadata
            .packages
            .into_iter()
            .find(|p| p.name.as_str() == EBPF_PACKAGE)
            .ok_or_else(|| anyhow!("{EBPF_PACKAGE} package not found in the workspace"))?;
        let root_dir = package
            .manifest_path
            .parent()
            .ok_or_else(|| anyhow!("no parent for {}", package.manifest_path))?;
        println!(
            "cargo:rerun-if-changed={}",
            root_dir.join("../agent-ebpf/common/src")
        );
        aya_build::build_ebpf(
            [aya_build::Package {
                name: EBPF_PACKAGE,
                root_dir: root_dir.as_str(),
                ..Default::default()
            }],
            aya_build::Toolchain::default(),
        )
        .context("building the eBPF programs (run `cargo xtask setup` to install the toolchain)")
    }
}
