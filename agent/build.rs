//! Builds the eBPF programs (agent-ebpf) for the BPF target and leaves the object in OUT_DIR,
//! where src/probes embeds it. Only with the `node-agent` feature: the CLI alone needs no eBPF
//! toolchain.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(feature = "node-agent")]
    ebpf::build()?;
    Ok(())
}

/// What aya-build's `build_ebpf` does (a nested `cargo build` of the programs with the nightly
/// toolchain, `build-std=core` and BTF), with two differences:
///
/// - One target directory for every build of the agent (`<target-dir>/ebpf`): the debug build
///   of `cargo test`, clippy's check and the release builds all embed the same object, built
///   once; aya-build builds it anew under each build's OUT_DIR (a minute and a half each on 2
///   cores, `core` included).
/// - The nested cargo's output is captured: a build script's only channel is `cargo:warning`,
///   so forwarding every line (as aya-build does) printed ~150 "warnings" per build. Now one
///   summary line when something was compiled, the real warnings, and everything on failure.
#[cfg(feature = "node-agent")]
mod ebpf {
    use std::{
        env,
        io::{BufRead as _, BufReader},
        path::{Path, PathBuf},
        process::{Command, ExitStatus, Stdio},
        time::Instant,
    };

    use anyhow::{Context as _, anyhow, bail, ensure};
    use cargo_metadata::{Message, diagnostic::DiagnosticLevel};

    const EBPF_PACKAGE: &str = "triage-agent-ebpf";
    /// The toolchain with the BPF target's `core` (rust-src) and bpf-linker's LLVM.
    const TOOLCHAIN: &str = "nightly";

    pub fn build() -> anyhow::Result<()> {
        let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
        let ebpf_dir = manifest_dir.join("../agent-ebpf");
        // The programs and their shared types; the nested cargo decides what is stale.
        println!("cargo:rerun-if-changed={}", ebpf_dir.display());
        let out_dir = PathBuf::from(env::var("OUT_DIR")?);
        let endian = env::var("CARGO_CFG_TARGET_ENDIAN")?;
        let target = match endian.as_str() {
            "little" => "bpfel-unknown-none",
            "big" => "bpfeb-unknown-none",
            other => bail!("unsupported endianness {other:?}"),
        };
        let arch = env::var("CARGO_CFG_TARGET_ARCH")?;
        let arch = if arch.starts_with("riscv64") {
            "riscv64"
        } else {
            &arch
        };
        let target_dir = shared_target_dir(&out_dir).unwrap_or_else(|| out_dir.join("ebpf"));

        let mut cmd = Command::new("rustup");
        cmd.args([
            "run",
            TOOLCHAIN,
            "cargo",
            "build",
            "--package",
            EBPF_PACKAGE,
        ])
        .args(["--bins", "--release", "--message-format=json"])
        .args(["--target", target, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&manifest_dir);
        // What cargo set for this build script describes the agent's build, not the nested one
        // (which sets its own): dropped, so every build of the agent runs the same nested build.
        for (key, _) in env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("CARGO_CFG_")
                || key.starts_with("CARGO_FEATURE_")
                || key.starts_with("CARGO_PKG_")
                || key.starts_with("CARGO_MANIFEST_")
                || [
                    "CARGO_PRIMARY_PACKAGE",
                    "OUT_DIR",
                    "TARGET",
                    "HOST",
                    "PROFILE",
                    "OPT_LEVEL",
                    "DEBUG",
                    "NUM_JOBS",
                    "RUSTC",
                    "RUSTDOC",
                    "RUSTC_LINKER",
                    "RUSTC_WRAPPER",
                    "RUSTC_WORKSPACE_WRAPPER",
                ]
                .contains(&key.as_ref())
            {
                cmd.env_remove(key.as_ref());
            }
        }
        let rustflags = [
            format!("--cfg=bpf_target_arch=\"{arch}\""),
            "-Cdebuginfo=2".to_owned(),
            "-Clink-arg=--btf".to_owned(),
        ];
        cmd.env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\x1f"));

        let started = Instant::now();
        let outcome = run(&mut cmd).context(
            "building the eBPF programs (run `cargo xtask setup` to install the toolchain)",
        )?;
        let report = |line: &str| println!("cargo:warning={line}");
        if !outcome.status.success() {
            for line in outcome.stderr.iter().chain(&outcome.diagnostics) {
                report(line);
            }
            bail!(
                "`cargo build -p {EBPF_PACKAGE} --target {target}` (toolchain {TOOLCHAIN}, target \
                 directory {}) failed ({}); its output is above",
                target_dir.display(),
                outcome.status
            );
        }
        for line in &outcome.warnings {
            report(line);
        }
        if outcome.compiled > 0 {
            report(&format!(
                "eBPF programs built: {EBPF_PACKAGE} for {target}, {} crate{} compiled in {:.1} s ({})",
                outcome.compiled,
                if outcome.compiled == 1 { "" } else { "s" },
                started.elapsed().as_secs_f64(),
                target_dir.display()
            ));
        }
        ensure!(
            !outcome.executables.is_empty(),
            "{EBPF_PACKAGE} built no program"
        );
        for (name, path) in outcome.executables {
            let dst = out_dir.join(&name);
            std::fs::copy(&path, &dst)
                .with_context(|| format!("copying {} to {}", path.display(), dst.display()))?;
        }
        Ok(())
    }

    /// `<target-dir>/ebpf`, from OUT_DIR (`<target-dir>[/<triple>]/<profile>/build/<pkg>/out`);
    /// `None` when the layout is not that one (then the object is built under OUT_DIR).
    fn shared_target_dir(out_dir: &Path) -> Option<PathBuf> {
        let above_profile = out_dir.ancestors().nth(4)?;
        let triple = env::var("TARGET").ok()?;
        let target_dir = if above_profile.file_name()? == triple.as_str() {
            above_profile.parent()?
        } else {
            above_profile
        };
        // Cargo tags every target directory it creates.
        target_dir
            .join("CACHEDIR.TAG")
            .is_file()
            .then(|| target_dir.join("ebpf"))
    }

    struct Outcome {
        status: ExitStatus,
        /// Crates compiled (none when everything was fresh).
        compiled: usize,
        /// (bin name, path) of each program built.
        executables: Vec<(String, PathBuf)>,
        /// Warnings: rustc's (rendered) and cargo's own lines.
        warnings: Vec<String>,
        /// Every rendered compiler message.
        diagnostics: Vec<String>,
        /// cargo's progress and messages, for a failure.
        stderr: Vec<String>,
    }

    fn run(cmd: &mut Command) -> anyhow::Result<Outcome> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        let stderr = child.stderr.take().context("no stderr")?;
        let stderr = std::thread::spawn(move || {
            BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        let stdout = child.stdout.take().context("no stdout")?;
        let mut executables = Vec::new();
        let mut warnings = Vec::new();
        let mut diagnostics = Vec::new();
        for message in Message::parse_stream(BufReader::new(stdout)) {
            match message.context("reading cargo's JSON messages")? {
                Message::CompilerArtifact(artifact) => {
                    if let Some(path) = artifact.executable {
                        executables.push((artifact.target.name, path.into_std_path_buf()));
                    }
                }
                Message::CompilerMessage(m) => {
                    let rendered = m.message.rendered.unwrap_or(m.message.message);
                    let lines = rendered.lines().map(str::to_owned);
                    if m.message.level == DiagnosticLevel::Warning {
                        warnings.extend(lines.clone());
                    }
                    diagnostics.extend(lines);
                }
                Message::TextLine(line) => diagnostics.push(line),
                _ => {}
            }
        }
        let status = child.wait().context("waiting for cargo")?;
        let stderr = stderr
            .join()
            .map_err(|_| anyhow!("reading cargo's stderr failed"))?;
        let compiled = stderr
            .iter()
            .filter(|l| l.trim_start().starts_with("Compiling "))
            .count();
        // cargo's own warnings (a build script's, a manifest's); rustc's come as JSON above.
        warnings.extend(
            stderr
                .iter()
                .filter(|l| l.starts_with("warning:") || l.starts_with("error:"))
                .cloned(),
        );
        Ok(Outcome {
            status,
            compiled,
            executables,
            warnings,
            diagnostics,
            stderr,
        })
    }
}
