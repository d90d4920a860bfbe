//! `cargo xtask kernel-matrix`: the agent's kernel code paths on the kernels nodes run, not
//! just this host's. Debian's cloud kernels (amd64: 5.10, 6.1, 6.12, 6.18 and the newest 7.x;
//! arm64: 6.1 and the newest 7.x, on qemu's `virt` machine) boot under qemu with software
//! emulation, each from an initramfs holding a payload of its architecture; /init prepares
//! what a node has (cgroup2 alone, tracefs, bpffs, the network modules), runs the payload's
//! command, and the payload's `TA-MATRIX {json}` lines come back over the serial console.
//!
//! - fetch.rs, apt.rs: the kernels (and arm64's userland: busybox, ip, nft, dnsmasq), through
//!   a private apt configuration per architecture, cached under target/kernel-matrix/cache (a
//!   re-run needs no network);
//! - packages.rs: which package versions to take (pure);
//! - modules.rs: the wanted modules' dependency closure per kernel, decompressed on the host;
//! - cpio.rs, initramfs.rs: the archive and its /init;
//! - qemu.rs, console.rs: the VM, its timeout and what its console said.
//!
//! - table.rs: the kernel x signal table, compared with the committed docs/kernel-matrix.json
//!   and rendered into the README's support table.
//!
//! The payload ([`payload`]) is the static agent the image ships and the tests crate's static
//! `vm-check`, which builds a simulated node in the VM and checks every signal by the agent's
//! own answer. Results land in target/kernel-matrix/<kernel>/console.log, results.json and
//! table.json.

mod apt;
mod console;
mod cpio;
mod fetch;
mod initramfs;
mod modules;
mod packages;
mod qemu;
pub mod table;

use std::{
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use serde_json::json;

pub use console::Console;
pub use fetch::{Kernel, fetch_kernels};

/// The kernels `--kernels` defaults to: series of amd64 kernels ("7" is the newest 7.x), and
/// arm64 ones (`-arm64`): the oldest series with every signal and the newest.
pub const DEFAULT_KERNELS: &[&str] = &["5.10", "6.1", "6.12", "6.18", "7", "6.1-arm64", "7-arm64"];

/// A machine architecture of the matrix's VMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    /// Debian's name.
    pub fn debian(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The kernel flavour the matrix boots.
    pub fn flavour(self) -> &'static str {
        match self {
            Arch::Amd64 => "cloud-amd64",
            Arch::Arm64 => "cloud-arm64",
        }
    }

    /// A kernel as `--kernels` names it: "6.1" (amd64) or "6.1-arm64"; the series and its
    /// architecture.
    pub fn of_wanted(wanted: &str) -> (Arch, &str) {
        match wanted.strip_suffix("-arm64") {
            Some(series) => (Arch::Arm64, series),
            None => (Arch::Amd64, wanted.strip_suffix("-amd64").unwrap_or(wanted)),
        }
    }

    /// A kernel's name in the table and its directory: the series, with `-arm64` for arm64.
    pub fn name(self, series: &str) -> String {
        match self {
            Arch::Amd64 => series.to_owned(),
            Arch::Arm64 => format!("{series}-arm64"),
        }
    }
}
/// Per VM: a boot takes seconds under emulation; the checks run the agent for tens of
/// checks run the agent for tens of seconds.
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;

/// What runs inside every VM.
#[derive(Debug, Clone, Default)]
pub struct Payload {
    /// Host files and their absolute paths in the guest (permission bits kept).
    pub files: Vec<(PathBuf, String)>,
    /// Host programs ("ip", "nft", "dnsmasq", or a path), copied to their host paths with every
    /// shared library `ldd` lists and the ELF interpreter.
    pub host_binaries: Vec<String>,
    /// For another architecture: where busybox and the host programs come from instead of
    /// this machine.
    pub userland: Option<initramfs::Userland>,
    /// The command /init runs (PATH has /usr/local/bin, /usr/sbin, ... and busybox last); its
    /// stdout and stderr go to the console.
    pub command: Vec<String>,
    /// Modules to load with their dependencies, where the kernel has them as modules.
    pub modules: Vec<String>,
}

/// One kernel's run.
#[derive(Debug, Clone)]
pub struct VmResult {
    /// The series, "6.1".
    pub kernel: String,
    pub release: String,
    /// The payload's `TA-MATRIX` lines.
    pub lines: Vec<serde_json::Value>,
    /// The payload command's exit code; none when the VM never got there.
    pub exit: Option<i32>,
    pub console_log: PathBuf,
    /// From qemu's start to its end.
    pub elapsed: Duration,
    /// From qemu's start to /init's first line on the console.
    pub boot_to_init: Option<Duration>,
    /// From /init's first line to the exit line (modules, mounts and the payload).
    pub payload_time: Option<Duration>,
    pub timed_out: bool,
    /// A failure on the host's side (building the initramfs, starting qemu).
    pub error: Option<String>,
    /// Everything else the console said (modules, cgroup controllers, bad result lines).
    pub console: Console,
    /// The harness error of an earlier boot of this kernel, when the payload broke before any
    /// cell ran and the VM was booted once more (see [`run_one`]).
    pub rebooted_after: Option<String>,
}

impl VmResult {
    fn new(kernel: &str, release: &str, console_log: PathBuf) -> Self {
        Self {
            kernel: kernel.to_owned(),
            release: release.to_owned(),
            lines: Vec::new(),
            exit: None,
            console_log,
            elapsed: Duration::ZERO,
            boot_to_init: None,
            payload_time: None,
            timed_out: false,
            error: None,
            console: Console::default(),
            rebooted_after: None,
        }
    }

    /// The payload's own `{"error"}` line: its harness broke (no agent, no simulated node)
    /// before any cell ran.
    pub fn harness_error(&self) -> Option<&str> {
        self.lines.iter().find_map(|line| {
            (line.get("doctor").is_none() && line.get("signal").is_none())
                .then(|| line.get("error").and_then(serde_json::Value::as_str))
                .flatten()
        })
    }

    /// The payload exited 0, every result line parsed, every module loaded.
    pub fn passed(&self) -> bool {
        self.exit == Some(0)
            && !self.timed_out
            && self.error.is_none()
            && self.console.bad_lines.is_empty()
            && self.console.modules_with("failed").is_empty()
    }
}

/// target/kernel-matrix: per-kernel directories, results.json, the cache.
pub fn out_dir() -> PathBuf {
    crate::root().join("target/kernel-matrix")
}

pub fn cache_dir() -> PathBuf {
    out_dir().join("cache")
}

/// Runs the payload of each kernel's architecture on every kernel, `jobs` VMs at a time, each
/// killed after `timeout`. An error is returned only for what fails every kernel of an
/// architecture (the payload's files); a kernel's own failure is in its result.
pub fn run_all(
    kernels: &[Kernel],
    payloads: &[(Arch, Payload)],
    jobs: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<VmResult>> {
    let mut bases = Vec::new();
    for (arch, payload) in payloads {
        let base = initramfs::Base::new(payload)
            .with_context(|| format!("assembling the {} payload", arch.debian()))?;
        bases.push((*arch, base, payload));
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, VmResult)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, kernels.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(kernel) = kernels.get(i) else {
                        break;
                    };
                    let result = match bases.iter().find(|(a, _, _)| *a == kernel.arch) {
                        Some((_, base, payload)) => run_one(kernel, base, payload, timeout),
                        None => {
                            let dir = out_dir().join(&kernel.name);
                            let mut r = VmResult::new(
                                &kernel.name,
                                &kernel.release,
                                dir.join("console.log"),
                            );
                            r.error = Some(format!("no {} payload", kernel.arch.debian()));
                            r
                        }
                    };
                    eprintln!("{}", summary_line(&result));
                    if let Ok(mut r) = results.lock() {
                        r.push((i, result));
                    }
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_default();
    results.sort_by_key(|(i, _)| *i);
    Ok(results.into_iter().map(|(_, r)| r).collect())
}

fn run_one(
    kernel: &Kernel,
    base: &initramfs::Base,
    payload: &Payload,
    timeout: Duration,
) -> VmResult {
    let dir = out_dir().join(&kernel.name);
    let prepared = prepare(kernel, base, payload, &dir);
    match prepared {
        Ok(initramfs) => {
            let boot = || {
                eprintln!("{}: booting {}", kernel.name, kernel.release);
                qemu::run(&qemu::Vm {
                    name: &kernel.name,
                    arch: kernel.arch,
                    release: &kernel.release,
                    vmlinuz: &kernel.vmlinuz,
                    initramfs: &initramfs,
                    dir: &dir,
                    timeout,
                })
            };
            let first = boot();
            if first.passed() {
                return first;
            }
            // Whatever failed, the console's own lines say why: printed here, as CI keeps
            // only what the command printed.
            eprintln!(
                "{}: {}; the console's last lines ({}):\n{}",
                kernel.name,
                verdict(&first),
                first.console_log.display(),
                console_tail(&first.console_log, 40)
            );
            // A harness that broke before any cell ran (the simulated node or the agent did
            // not start) judged nothing: the VM is booted once more, and the table says so.
            // A kernel whose cells fail, or whose harness breaks twice, fails.
            let Some(error) = first.harness_error().map(str::to_owned) else {
                return first;
            };
            let saved = dir.join("console.first.log");
            let _ = std::fs::rename(&first.console_log, &saved);
            let mut second = boot();
            second.rebooted_after = Some(format!("{error} (console {})", saved.display()));
            second
        }
        Err(e) => {
            let mut r = VmResult::new(&kernel.name, &kernel.release, dir.join("console.log"));
            r.error = Some(format!("{e:#}"));
            r
        }
    }
}

/// The kernel's initramfs: its modules planned, decompressed (cached) and archived with `base`.
fn prepare(
    kernel: &Kernel,
    base: &initramfs::Base,
    payload: &Payload,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let plan = modules::plan_for(&kernel.modules_dir, &payload.modules)?;
    let files = modules::prepare(
        &kernel.modules_dir,
        &plan,
        &cache_dir().join("modules").join(&kernel.release),
    )?;
    let skipped: Vec<(String, &str)> = plan
        .builtin
        .iter()
        .map(|m| (m.clone(), "builtin"))
        .chain(plan.absent.iter().map(|m| (m.clone(), "absent")))
        .collect();
    let path = dir.join("initramfs.cpio");
    let started = Instant::now();
    let bytes = initramfs::write(&path, base, &files, &skipped)?;
    eprintln!(
        "{}: initramfs {} MB ({} modules, {} built in, {} absent) in {:.1} s",
        kernel.name,
        bytes / 1_000_000,
        files.len(),
        plan.builtin.len(),
        plan.absent.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(path)
}

/// `cargo xtask kernel-matrix` options.
pub struct Options {
    pub kernels: Vec<String>,
    pub jobs: usize,
    pub timeout: Duration,
    /// Resolve the kernels again even when cached.
    pub refresh: bool,
    /// Write the table as the committed one (docs/kernel-matrix.json and the README's
    /// support table) instead of comparing with it.
    pub update: bool,
}

/// Fetches the kernels, runs [`payload`] on each, reports, fails unless every kernel passed.
pub fn kernel_matrix(options: &Options) -> anyhow::Result<()> {
    let wanted: Vec<&str> = options.kernels.iter().map(String::as_str).collect();
    let started = Instant::now();
    let kernels = fetch_kernels(&cache_dir(), &wanted, options.refresh)?;
    eprintln!(
        "kernels ready in {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        kernels
            .iter()
            .map(|k| format!("{} ({} {})", k.name, k.package, k.version))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut payloads = Vec::new();
    for arch in [Arch::Amd64, Arch::Arm64] {
        if kernels.iter().any(|k| k.arch == arch) {
            payloads.push((arch, payload(arch)?));
        }
    }
    let started = Instant::now();
    let results = run_all(&kernels, &payloads, options.jobs, options.timeout)?;
    let wall = started.elapsed();
    write_results(&results)?;
    eprintln!("\n{}", report(&results));
    eprintln!(
        "{} VMs in {:.1} s ({} at a time); consoles in {}",
        results.len(),
        wall.as_secs_f64(),
        options.jobs.clamp(1, results.len().max(1)),
        out_dir().display()
    );
    let table = table::Table::from_results(&results);
    eprintln!("\n{}", table.markdown());
    let table_path = out_dir().join("table.json");
    std::fs::write(&table_path, serde_json::to_string_pretty(&table)?)
        .with_context(|| format!("writing {}", table_path.display()))?;
    if options.update {
        table.write_committed()?;
        let readme_path = crate::root().join("README.md");
        let readme = std::fs::read_to_string(&readme_path)?;
        std::fs::write(&readme_path, table.in_readme(&readme)?)?;
        eprintln!(
            "wrote {} and the README's kernel support table",
            table::committed_path().display()
        );
        return Ok(());
    }
    let mut committed = table::Table::read_committed()?;
    // Only the kernels asked for (`--kernels`); a kernel whose VM did not run still has a row.
    committed
        .rows
        .retain(|then| table.rows.iter().any(|now| now.series == then.series));
    for better in table.improvements(&committed) {
        eprintln!("better than the committed table: {better}");
    }
    let worse = table.regressions(&committed);
    ensure!(
        worse.is_empty(),
        "the kernel matrix regressed from docs/kernel-matrix.json:\n  {}\n(consoles in {})",
        worse.join("\n  "),
        out_dir().display()
    );
    eprintln!("kernel matrix: no cell worse than docs/kernel-matrix.json");
    Ok(())
}

/// How much slower than this host every wait inside a VM may be (software emulation).
/// Cells settle within about 10 s under emulation (their base waits are 20-30 s); a cell
/// that really fails then costs minutes, not the VM's whole timeout.
const VM_TIMEOUT_SCALE: &str = "6";

/// The payload every VM of `arch` runs, from the static release build of that architecture
/// (amd64: [`crate::build_release`]; arm64: the image's arm64 build and
/// [`crate::arm64::build_matrix_payload`]; the caller ran them): the agent the image ships,
/// the tests crate's `vm-check` (the simulated node and a check of every signal by the agent's
/// own answer) and `sim-workload` (the pods' processes), with the programs the simulated node
/// runs: the host's for amd64, Debian's arm64 packages for arm64 ([`fetch::userland`]).
pub fn payload(arch: Arch) -> anyhow::Result<Payload> {
    let dir = match arch {
        Arch::Amd64 => crate::release_dir(),
        Arch::Arm64 => crate::arm64::release_dir(),
    };
    let bin = |name: &str| dir.join(name);
    let agent = bin("triage-agent");
    for path in [agent.clone(), bin("vm-check"), bin("sim-workload")] {
        ensure!(
            path.is_file(),
            "{} missing: the kernel matrix runs the static release build of {} (`cargo xtask \
             kernel-matrix` builds it)",
            path.display(),
            arch.debian()
        );
    }
    let userland = match arch {
        Arch::Amd64 => None,
        Arch::Arm64 => Some(initramfs::Userland {
            root: fetch::userland(&cache_dir(), arch)?,
            qemu: "qemu-aarch64",
        }),
    };
    Ok(Payload {
        files: vec![
            (agent, "/usr/local/bin/triage-agent".to_owned()),
            (bin("vm-check"), "/usr/local/bin/vm-check".to_owned()),
            (
                bin("sim-workload"),
                "/usr/local/bin/sim-workload".to_owned(),
            ),
        ],
        host_binaries: ["ip", "nft", "dnsmasq"].map(str::to_owned).to_vec(),
        userland,
        command: vec![
            "vm-check".to_owned(),
            "--timeout-scale".to_owned(),
            VM_TIMEOUT_SCALE.to_owned(),
        ],
        modules: modules::NETWORK.iter().map(|m| (*m).to_owned()).collect(),
    })
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()))
}

fn verdict(r: &VmResult) -> String {
    if r.passed() {
        "ok".to_owned()
    } else if let Some(e) = &r.error {
        format!("error: {e}")
    } else if r.timed_out {
        "timed out".to_owned()
    } else {
        match r.exit {
            Some(code) => format!("exit {code}"),
            None => "no exit line".to_owned(),
        }
    }
}

fn summary_line(r: &VmResult) -> String {
    let rebooted = r
        .rebooted_after
        .as_ref()
        .map(|e| format!("; booted twice, the first boot's harness broke: {e}"))
        .unwrap_or_default();
    format!(
        "{}: {} (boot to init {}, total {}){rebooted}",
        r.kernel,
        verdict(r),
        secs(r.boot_to_init),
        secs(Some(r.elapsed))
    )
}

/// The console's last `n` lines that are not the kernel's own messages (`[   1.234] ...`).
fn console_tail(path: &Path, n: usize) -> String {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => return format!("  (unreadable: {e})"),
    };
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('['))
        .collect();
    lines
        .iter()
        .skip(lines.len().saturating_sub(n))
        .map(|l| format!("  {}", l.chars().take(400).collect::<String>()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The table printed at the end.
fn report(results: &[VmResult]) -> String {
    let mut out = format!(
        "{:<6} {:<28} {:>10} {:>9} {:>8}  {:<26} {:>5}  result\n",
        "kernel", "release", "boot-init", "payload", "total", "modules ld/bi/abs/fail", "lines"
    );
    for r in results {
        let c = &r.console;
        let modules = format!(
            "{}/{}/{}/{}",
            c.modules_with("loaded").len(),
            c.modules_with("builtin").len(),
            c.modules_with("absent").len(),
            c.modules_with("failed").len()
        );
        out.push_str(&format!(
            "{:<6} {:<28} {:>10} {:>9} {:>8}  {:<26} {:>5}  {}\n",
            r.kernel,
            r.release,
            secs(r.boot_to_init),
            secs(r.payload_time),
            secs(Some(r.elapsed)),
            modules,
            r.lines.len(),
            verdict(r)
        ));
        for m in c.modules.iter().filter(|m| m.status == "failed") {
            out.push_str(&format!("       module {} failed: {}\n", m.name, m.detail));
        }
    }
    out
}

/// target/kernel-matrix/results.json: every kernel's outcome and result lines.
fn write_results(results: &[VmResult]) -> anyhow::Result<()> {
    let ms = |d: Option<Duration>| d.map(|d| d.as_millis());
    let all: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            json!({
                "kernel": r.kernel,
                "release": r.release,
                "passed": r.passed(),
                "exit": r.exit,
                "timed_out": r.timed_out,
                "error": r.error,
                "rebooted_after": r.rebooted_after,
                "elapsed_ms": r.elapsed.as_millis(),
                "boot_to_init_ms": ms(r.boot_to_init),
                "payload_ms": ms(r.payload_time),
                "cgroup_controllers": r.console.cgroup_controllers,
                "modules": r.console.modules.iter().map(|m| json!({
                    "name": m.name, "status": m.status, "detail": m.detail,
                })).collect::<Vec<_>>(),
                "lines": r.lines,
                "bad_lines": r.console.bad_lines,
                "console_log": r.console_log,
            })
        })
        .collect();
    let path = out_dir().join("results.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&all)?)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn kernels_are_named_with_their_architecture() {
        assert_eq!(Arch::of_wanted("6.1"), (Arch::Amd64, "6.1"));
        assert_eq!(Arch::of_wanted("7"), (Arch::Amd64, "7"));
        assert_eq!(Arch::of_wanted("6.1-amd64"), (Arch::Amd64, "6.1"));
        assert_eq!(Arch::of_wanted("6.1-arm64"), (Arch::Arm64, "6.1"));
        assert_eq!(Arch::Arm64.name("6.1"), "6.1-arm64");
        assert_eq!(Arch::Amd64.name("6.12"), "6.12");
        // A name read back gives the architecture it was made with.
        for arch in [Arch::Amd64, Arch::Arm64] {
            assert_eq!(Arch::of_wanted(&arch.name("6.18")), (arch, "6.18"));
        }
        assert_eq!(table::series_key(&Arch::Arm64.name("6.1")), "6.1-arm64");
        assert_eq!(table::series_key(&Arch::Arm64.name("7.3")), "7.x-arm64");
        assert_eq!(table::series_key("7.3"), "7.x");
        assert_eq!(table::series_key("6.12"), "6.12");
    }

    #[test]
    fn a_harness_error_is_the_payloads_own_error_line_only() {
        let mut r = VmResult::new("6.12", "6.12.1", PathBuf::from("/nonexistent"));
        r.lines = vec![
            json!({"kernel": "6.12.1"}),
            // doctor's own error and a cell's are results, not a broken harness.
            json!({"doctor": null, "error": "doctor exited 3"}),
            json!({"signal": "oom_kill", "result": "fails", "error": "x"}),
        ];
        assert_eq!(r.harness_error(), None);
        r.lines
            .push(json!({"error": "starting the simulated node: ip: RTNETLINK answers"}));
        assert_eq!(
            r.harness_error(),
            Some("starting the simulated node: ip: RTNETLINK answers")
        );
    }

    #[test]
    fn the_console_tail_leaves_out_kernel_messages() {
        let dir = std::env::temp_dir().join(format!("xtask-console-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("console.log");
        let mut text = String::new();
        for i in 0..50 {
            text.push_str(&format!(
                "[    {i}.000] kernel says {i}\npayload line {i}\n"
            ));
        }
        text.push_str("vm-check: the agent exited with exit status: 1\n");
        std::fs::write(&path, text).unwrap();
        let tail = console_tail(&path, 3);
        assert_eq!(
            tail,
            "  payload line 48\n  payload line 49\n  vm-check: the agent exited with exit status: 1"
        );
        assert!(console_tail(&dir.join("absent"), 3).contains("unreadable"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
