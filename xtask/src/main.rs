//! Project tasks. `cargo xtask demo` and `cargo xtask test` are the README's two commands; both
//! run `setup` first, which installs what a fresh Debian 12 machine lacks (idempotent, and
//! quick when everything is present).

mod arm64;
mod dist;
mod image;
mod links;
mod matrix;
mod notices;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "triage-agent project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchains, bpf-linker and Debian packages the build and tests need.
    Setup {
        /// Only what building the binaries needs (the Dockerfile's build stage): no test
        /// packages.
        #[arg(long)]
        build_only: bool,
    },
    /// Build the static release binaries every task runs, in
    /// target/x86_64-unknown-linux-musl/release: triage-agent (eBPF embedded, the image's
    /// binary) and the test programs (demo, bench, sim-workload, vm-check).
    Build,
    /// The container image as an OCI archive, target/image/triage-agent-<version>.oci.tar: a
    /// static musl build (eBPF embedded) on an empty base, built offline, checked after
    /// writing.
    Image {
        /// Also load it into podman and run `triage-agent --version` in it (needs root).
        #[arg(long)]
        run: bool,
    },
    /// The CLI for Linux on amd64 and arm64 as tarballs in target/dist, with the kubectl
    /// plugin's names, shell completions, the licence and the notices, and SHA256SUMS; the
    /// arm64 binary cross-built (see xtask/src/arm64.rs) and run under qemu-user.
    Dist,
    /// Run every check and test: fmt, clippy (host, CLI-only, BPF), unit, gRPC and privileged
    /// end-to-end tests, every fuzz seed replayed, the image (built, checked, run in podman),
    /// the kernel matrix, the bench reduced. Needs root.
    Test {
        /// Only what runs without root (a laptop): lint, unit tests, and the agent's tests that
        /// need no privileges. The privileged suites, `doctor`'s test, the image, the kernel
        /// matrix and the bench are left out (and named); CI runs everything.
        #[arg(long)]
        unprivileged: bool,
    },
    /// Start a simulated node with a few pods and a NetworkPolicy, provoke drops, timeouts and
    /// refused connections, show what `triage-agent query` and `explain` say, clean up. Needs
    /// root.
    Demo,
    /// Overhead ratios under failure floods, agent attached vs detached, interleaved rounds on a
    /// simulated node, and the pipeline's own limits (not a test: numbers to read). Needs root.
    /// Name scenarios to run only those: drop, refusal, memory, dns (dns-latency, dns-cost:
    /// parts of it), healthy (healthy-connections: the connection rate only), detection,
    /// sampling, query, pipeline.
    Bench {
        /// Every scenario reduced (2 rounds, short floods, small stores): that each runs and
        /// reports, as `cargo xtask test` checks.
        #[arg(long)]
        quick: bool,
        /// Scenarios (all when none).
        scenarios: Vec<String>,
    },
    /// Run every cargo-fuzz target (fuzz/fuzz_targets) for N seconds each from its checked-in
    /// seeds (fuzz/seeds/<target>), keeping what it finds in target/fuzz-corpus/<target>;
    /// fails on the first crash (its input is in fuzz/artifacts/<target>/).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Targets (all when none).
        targets: Vec<String>,
    },
    /// Regenerate proto/src/gen from the .proto files, the CLI reference (docs/cli.md,
    /// docs/man/) from the command line's definition, and THIRD-PARTY-NOTICES.txt from the
    /// dependencies (cargo-about).
    Codegen,
    /// The Markdown's relative links and anchors, fmt check, and clippy -D warnings on the host
    /// crates, the CLI-only build and the BPF crate.
    Lint,
    /// Boot Debian's cloud kernels under qemu (software emulation) and run the payload in each:
    /// kernels fetched once into target/kernel-matrix/cache (later runs need no network),
    /// consoles in target/kernel-matrix/<kernel>/console.log, results in
    /// target/kernel-matrix/results.json.
    KernelMatrix {
        /// Kernel series, comma-separated ("7" is the newest 7.x; "6.1-arm64" an arm64
        /// kernel, booted on qemu's arm64 machine with an arm64 payload).
        #[arg(long, value_delimiter = ',', default_values = matrix::DEFAULT_KERNELS)]
        kernels: Vec<String>,
        /// VMs at a time (default: the number of cores).
        #[arg(long)]
        jobs: Option<usize>,
        /// Seconds before a VM is killed.
        #[arg(long, default_value_t = matrix::DEFAULT_TIMEOUT_SECS)]
        timeout: u64,
        /// Look for newer kernels even when the cache has some (needs the network).
        #[arg(long)]
        refresh: bool,
        /// Write the results as the committed table (docs/kernel-matrix.json) and regenerate
        /// the README's kernel support table, instead of failing on cells worse than it.
        #[arg(long)]
        update: bool,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Runs a command in the workspace root, failing if it fails.
fn run(cmd: &mut Command) -> anyhow::Result<()> {
    cmd.current_dir(root());
    eprintln!("+ {}", display(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", display(cmd)))?;
    ensure!(status.success(), "{} failed ({status})", display(cmd));
    Ok(())
}

fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// How long each phase of `cargo xtask test` took (printed at the end, and so far on failure).
#[derive(Default)]
struct Phases(Vec<(&'static str, std::time::Duration)>);

impl Phases {
    fn time(
        &mut self,
        name: &'static str,
        phase: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let result = phase();
        self.0.push((name, started.elapsed()));
        if result.is_err() {
            eprintln!("{}", self.summary());
        }
        result
    }

    fn summary(&self) -> String {
        let total: std::time::Duration = self.0.iter().map(|(_, d)| *d).sum();
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(name, d)| format!("{name} {:.0} s", d.as_secs_f64()))
            .collect();
        format!(
            "phases: {} (total {:.1} min)",
            parts.join(", "),
            total.as_secs_f64() / 60.0
        )
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// eBPF, network namespaces and cgroups need root; say so before building anything.
fn require_root(what: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "{what} loads eBPF programs and creates network namespaces and cgroups: run it as root"
        );
    }
    Ok(())
}

/// The one release build every task runs from, static (musl) as the image ships it: the agent
/// (the image's binary, the one the end-to-end tests, the demo, the bench and the kernel matrix
/// run) and the tests crate's programs (demo, bench, sim-workload, vm-check). One cargo
/// invocation, so the agent and every dependency are compiled once for all of them.
pub const RELEASE_BUILD: &[&str] = &[
    "build",
    "--release",
    "--locked",
    "--target",
    image::TARGET,
    "-p",
    "triage-agent",
    "-p",
    "triage-agent-tests",
    "--bins",
];

/// Where [`RELEASE_BUILD`] leaves the binaries (tests/src/agent.rs `agent_binary()` looks
/// there too).
pub fn release_dir() -> PathBuf {
    root().join(format!("target/{}/release", image::TARGET))
}

fn build_release() -> anyhow::Result<()> {
    run(cargo().args(RELEASE_BUILD))
}

/// Formatting and clippy for the workspace and the kernel programs, then a type check of the
/// fuzz targets.
fn lint() -> anyhow::Result<()> {
    lint_workspace()?;
    // The fuzz targets (their own workspace, built with nightly). Each is a one-line call into
    // `triage_agent::fuzzing`, which `cargo test` compiles and runs on every seed, so
    // `cargo xtask test` leaves this out: from nothing it takes minutes (libFuzzer's C++ and
    // every dependency checked again with nightly), warm under a second.
    run(Command::new("cargo").args([
        "+nightly",
        "check",
        "--manifest-path",
        "fuzz/Cargo.toml",
        "--bins",
    ]))
}

fn lint_workspace() -> anyhow::Result<()> {
    // First: it takes milliseconds and needs no build.
    links::check(&root())?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    // cargo deny and cargo about read `cargo metadata` offline, which wants the sources of
    // every platform's dependencies (Windows, Android), not only the ones a build here
    // downloads: fetched first (nothing to do once present).
    run(cargo().args(["fetch", "--locked"]))?;
    // The dependency policy (deny.toml): licences, duplicate majors, sources. Advisories need
    // the RustSec database from github.com, which CI machines cannot reach (CONTRIBUTING.md).
    run(cargo().args([
        "deny",
        "--offline",
        "--locked",
        "check",
        "licenses",
        "bans",
        "sources",
    ]))?;
    notices::check()?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "triage-agent-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The CLI alone, as it builds on a laptop without the eBPF toolchain.
    run(cargo().args([
        "clippy",
        "-p",
        "triage-agent",
        "--no-default-features",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The kernel programs, for the BPF target.
    let bpf_target = root().join("target/bpf-clippy");
    run(Command::new("rustup")
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "-p",
            "triage-agent-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
        ])
        .arg(&bpf_target)
        .args(["--", "-D", "warnings"])
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "--cfg=bpf_target_arch=\"x86_64\"",
        ))
}

/// The agent's integration tests (agent/tests/<name>.rs) that need root; every other one runs
/// in `cargo xtask test --unprivileged`.
const AGENT_PRIVILEGED_TESTS: &[&str] = &["doctor", "store_disk_full"];

/// The agent's integration tests (agent/tests/*.rs) by name.
fn agent_tests() -> anyhow::Result<Vec<String>> {
    let dir = root().join("agent/tests");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs")
            && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
        {
            names.push(stem.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Every test that runs without root: unit tests of every crate (the tests crate's privileged
/// suites are its integration tests, left out), and the agent's unprivileged integration tests.
fn test_unprivileged() -> anyhow::Result<()> {
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--workspace",
        "--exclude",
        "triage-agent-ebpf",
        "--lib",
        "--bins",
    ]);
    run(&mut cmd)?;
    let mut agent = cargo();
    agent.args(["test", "-p", "triage-agent"]);
    for name in agent_tests()? {
        if !AGENT_PRIVILEGED_TESTS.contains(&name.as_str()) {
            agent.args(["--test", &name]);
        }
    }
    run(&mut agent)
}

/// Runs the fuzz targets (all when `only` is empty) for `seconds` each; prints each one's
/// executions and fails on a crash.
fn fuzz(seconds: u64, only: &[String]) -> anyhow::Result<()> {
    let listed = Command::new("cargo")
        .args(["+nightly", "fuzz", "list"])
        .current_dir(root())
        .output()
        .context("running cargo fuzz list (cargo xtask setup installs cargo-fuzz)")?;
    ensure!(
        listed.status.success(),
        "cargo fuzz list failed: {}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let all: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    for t in only {
        ensure!(
            all.contains(t),
            "no fuzz target {t:?} (there are: {})",
            all.join(", ")
        );
    }
    let targets: Vec<&String> = all
        .iter()
        .filter(|t| only.is_empty() || only.contains(t))
        .collect();
    run(Command::new("cargo").args(["+nightly", "fuzz", "build"]))?;
    let mut summary = Vec::new();
    for target in targets {
        let corpus = root().join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        let seeds = root().join("fuzz/seeds").join(target);
        ensure!(
            seeds.is_dir(),
            "fuzz target {target} has no seeds in {}",
            seeds.display()
        );
        let mut cmd = Command::new("cargo");
        cmd.args(["+nightly", "fuzz", "run", target])
            .arg(&corpus)
            .arg(&seeds)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-timeout=10",
                "-rss_limit_mb=2048",
                "-print_final_stats=1",
            ])
            .current_dir(root());
        eprintln!("+ {}", display(&cmd));
        let out = cmd.output().context("running cargo fuzz run")?;
        let log = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            eprintln!("{log}");
            bail!("fuzz target {target} failed: its input is in fuzz/artifacts/{target}/");
        }
        let runs = log
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .map_or_else(|| "?".to_owned(), |n| n.trim().to_owned());
        summary.push(format!(
            "{target:<16} {runs:>10} executions in {seconds} s, no crash"
        ));
    }
    for line in summary {
        eprintln!("{line}");
    }
    Ok(())
}

/// Both architectures' binaries, the arm64 one checked under qemu-user, as tarballs, each
/// read back and verified. `build`: the amd64 binary is built first (the image's build);
/// `cargo xtask test` passes its own release build, already there.
fn dist(build: bool) -> anyhow::Result<()> {
    if build {
        run(cargo().args(image::CARGO_BUILD))?;
    }
    let amd64 = release_dir().join("triage-agent");
    let arm64 = arm64::build()?;
    arm64::check(&arm64)?;
    let written = dist::write(
        &[("amd64", amd64.clone()), (arm64::ARCHITECTURE, arm64)],
        &amd64,
    )?;
    for (path, arch) in written.iter().zip(["amd64", arm64::ARCHITECTURE]) {
        dist::verify(path, arch)?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup { build_only: false } => setup::setup(),
        Task::Setup { build_only: true } => setup::setup_build(),
        Task::Image { run } => {
            if run {
                if !is_root() {
                    bail!("`cargo xtask image --run` runs podman as root: run it as root");
                }
                setup::setup()?;
            } else {
                setup::setup_build()?;
            }
            image::image(run)
        }
        Task::Build => {
            setup::setup()?;
            build_release()
        }
        Task::Dist => {
            setup::setup()?;
            dist(true)
        }
        Task::Lint => {
            setup::setup()?;
            lint()
        }
        Task::Codegen => {
            run(cargo()
                .args([
                    "test",
                    "-p",
                    "triage-agent-proto",
                    "--test",
                    "codegen",
                    "--",
                ])
                .args(["--ignored", "--exact", "regenerate"]))?;
            // The CLI reference (docs/cli.md, docs/man/) from the command line's definition.
            run(cargo()
                .args([
                    "test",
                    "-p",
                    "triage-agent",
                    "--test",
                    "cli_reference",
                    "--",
                ])
                .args(["--ignored", "--exact", "regenerate"]))?;
            notices::write()
        }
        Task::Test { unprivileged: true } => {
            let mut phases = Phases::default();
            phases.time("lint", lint_workspace)?;
            phases.time("cargo test (unprivileged)", test_unprivileged)?;
            eprintln!(
                "unprivileged checks and tests passed; not run (they need root, CI runs them): \
                 the privileged end-to-end suites (tests/tests), agent/tests/{{{}}}.rs, the \
                 image, the kernel matrix, the bench\n{}",
                AGENT_PRIVILEGED_TESTS.join(","),
                phases.summary()
            );
            Ok(())
        }
        Task::Test {
            unprivileged: false,
        } => {
            require_root("`cargo xtask test` runs privileged end-to-end tests")?;
            let mut phases = Phases::default();
            phases.time("setup", setup::setup)?;
            phases.time("lint", lint_workspace)?;
            // Built once: the end-to-end tests, the image, the kernel matrix and the bench all
            // run these static binaries.
            phases.time("release build", build_release)?;
            // The image's second platform and the CLI's arm64 tarball; the kernel matrix's
            // arm64 payload.
            phases.time("arm64 build", || {
                arm64::build()?;
                arm64::build_matrix_payload()
            })?;
            // Everything, privileged tests included; they fail (never skip) without privileges.
            // The fuzz targets' bodies run here on every seed (agent/tests/fuzz_seeds.rs);
            // `cargo xtask fuzz` fuzzes them.
            phases.time("cargo test", || {
                run(cargo()
                    .args(["test", "--workspace", "--exclude", "triage-agent-ebpf"])
                    .env("RUST_BACKTRACE", "1"))
            })?;
            phases.time("image", || image::test(&release_dir().join("triage-agent")))?;
            // The arm64 binary under qemu-user; the CLI tarballs.
            phases.time("dist", || dist(false))?;
            // Every signal on the kernels users run, in VMs, against the committed table.
            phases.time("kernel matrix", || {
                setup::setup_kernel_matrix()?;
                matrix::kernel_matrix(&matrix::Options {
                    kernels: matrix::DEFAULT_KERNELS
                        .iter()
                        .map(|k| (*k).to_owned())
                        .collect(),
                    jobs: cores(),
                    timeout: std::time::Duration::from_secs(matrix::DEFAULT_TIMEOUT_SECS),
                    refresh: false,
                    update: false,
                })
            })?;
            // Every bench scenario, reduced: it must run and report (what it measures is not
            // checked: numbers are read, never asserted).
            phases.time("bench --quick", || {
                run(Command::new(release_dir().join("bench")).arg("--quick"))
            })?;
            eprintln!("all checks and tests passed\n{}", phases.summary());
            Ok(())
        }
        Task::Demo => {
            require_root("the demo")?;
            setup::setup()?;
            build_release()?;
            run(&mut Command::new(release_dir().join("demo")))
        }
        Task::Fuzz { seconds, targets } => {
            setup::setup()?;
            fuzz(seconds, &targets)
        }
        Task::KernelMatrix {
            kernels,
            jobs,
            timeout,
            refresh,
            update,
        } => {
            setup::setup_kernel_matrix()?;
            build_release()?;
            if kernels
                .iter()
                .any(|k| matrix::Arch::of_wanted(k).0 == matrix::Arch::Arm64)
            {
                arm64::build()?;
                arm64::build_matrix_payload()?;
            }
            let jobs = jobs.unwrap_or_else(cores);
            matrix::kernel_matrix(&matrix::Options {
                kernels,
                jobs,
                timeout: std::time::Duration::from_secs(timeout),
                refresh,
                update,
            })
        }
        Task::Bench { quick, scenarios } => {
            require_root("the benchmarks")?;
            setup::setup()?;
            build_release()?;
            let mut bench = Command::new(release_dir().join("bench"));
            if quick {
                bench.arg("--quick");
            }
            run(bench.args(&scenarios))
        }
    }
}
