//! `triage-agent doctor`: what the agent needs on this node and what it will do here, checked
//! the way the agent itself starts (no API server needed): the capabilities it holds, kernel
//! BTF, tracefs, the cgroup hierarchy and kubelet's layout in it, each program's load and
//! attach (with the verifier's reason when the kernel rejects one), and each signal's mode
//! (full / degraded / off, and what is lost). Run it on a node, or `kubectl exec` it in the
//! agent's pod; the kernel matrix runs it in every VM.
//!
//! Exit codes: 0 every signal full and every check passed; 3 some signal degraded; 4 some
//! signal off or a check failed; 1 doctor itself could not run; 2 a wrong command line.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::{
    cgroup::{layout::Hierarchies, path::KubeletRoot},
    kernel::{btf::Btf, mountinfo, tracefs},
    probes::{
        PROGRAMS, ProbeStatus,
        loader::{self, chain},
    },
    samplers,
    signals::{self, Mode, SignalState},
    text::cleaned,
};

/// Exit code when some signal runs degraded (and none is off).
pub const EXIT_DEGRADED: u8 = 3;
/// Exit code when some signal is off or a check failed.
pub const EXIT_FAILED: u8 = 4;

/// What doctor is asked to check (the agent's own flags that change what it loads).
#[derive(Clone, Debug)]
pub struct DoctorConfig {
    pub cgroup_root: Option<PathBuf>,
    /// `None`: `/`.
    pub kubelet_cgroup_root: Option<PathBuf>,
    pub dns_ports: Vec<u16>,
    pub drop_reasons: crate::probes::reasons::DropReasons,
    /// The container runtime's CRI socket, as the agent's `--cri-socket`.
    pub cri_socket: crate::attribute::runtime::CriSocket,
}

/// A check's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    /// Works, with a caveat the detail names.
    Warn,
    Fail,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Warn => "warn",
            Outcome::Fail => "fail",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub check: String,
    pub result: Outcome,
    pub detail: String,
}

/// One program: loaded and attached, degraded (a fallback runs) or not.
#[derive(Clone, Debug, Serialize)]
pub struct ProgramReport {
    pub program: String,
    pub hook: String,
    pub mode: Mode,
    /// The program that runs when it is a fallback.
    pub running: Option<String>,
    pub detail: String,
}

/// Everything doctor found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub kernel: String,
    pub checks: Vec<Check>,
    pub programs: Vec<ProgramReport>,
    pub signals: Vec<SignalState>,
    pub summary: Summary,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub full: usize,
    pub degraded: usize,
    /// Off, not counting signals the flags switched off.
    pub off: usize,
    pub failed_checks: usize,
    pub exit_code: u8,
}

/// Capability bits the agent needs (linux/capability.h) and why.
const NEEDED_CAPS: [(u32, &str, &str); 3] = [
    (39, "BPF", "load programs and create maps"),
    (
        38,
        "PERFMON",
        "attach tracepoints, read kernel memory from programs",
    ),
    (
        12,
        "NET_ADMIN",
        "attach the DNS programs to the pods' cgroup",
    ),
];
/// CAP_SYS_ADMIN: the kernel accepts it for all three (and kernels before 5.8 ask for it).
const CAP_SYS_ADMIN: u32 = 21;

/// Runs every check. Loads and attaches the programs for real (and detaches them again).
pub fn run(config: &DoctorConfig) -> Report {
    let mut checks = vec![capabilities()];
    // Raised before the load (as the agent does), judged after it: a limit the maps fit in
    // is no problem.
    let memlock_limit = loader::raise_memlock();
    let memlock_at = checks.len();
    let btf = match Btf::vmlinux() {
        Ok(btf) => {
            checks.push(check(
                "btf",
                Outcome::Ok,
                "/sys/kernel/btf/vmlinux read: struct layouts and enum names come from it",
            ));
            Some(btf)
        }
        Err(e) => {
            checks.push(check(
                "btf",
                Outcome::Fail,
                &format!(
                    "{}: programs that read kernel structs stay off (a kernel built with CONFIG_DEBUG_INFO_BTF is needed)",
                    chain(&e)
                ),
            ));
            None
        }
    };
    let tracefs = match tracefs::ensure_mounted() {
        Ok(path) => {
            checks.push(check("tracefs", Outcome::Ok, &path.display().to_string()));
            Some(path)
        }
        Err(e) => {
            checks.push(check("tracefs", Outcome::Fail, &chain(&e)));
            None
        }
    };
    let mountinfo_text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let (cgroup_check, cgroup_root) = cgroups(&mountinfo_text, config.cgroup_root.clone());
    checks.push(cgroup_check);
    let kubelet_root = KubeletRoot::new(
        config
            .kubelet_cgroup_root
            .as_deref()
            .unwrap_or(Path::new("/")),
    );
    checks.push(kubelet_layout(cgroup_root.as_deref(), &kubelet_root));
    checks.push(container_runtime(&config.cri_socket));

    let statuses = match (&tracefs, &cgroup_root) {
        (Some(tracefs), Some(root)) => {
            let loaded = loader::load(&loader::LoadOptions {
                tracefs,
                btf: btf.as_ref(),
                drop_reasons: &config.drop_reasons,
                skb_cgroup: &crate::cgroup::layout::pods_cgroup(root, &kubelet_root)
                    .unwrap_or_else(|| root.clone()),
                dns_ports: &config.dns_ports,
                dns_timing: crate::dns::kernel_timing(&crate::dns::TrackConfig::default()),
            });
            match loaded {
                Ok(loaded) => {
                    checks.push(check("load", Outcome::Ok, "the eBPF object loaded"));
                    loaded.probes.statuses.clone()
                }
                Err(e) => {
                    checks.push(check("load", Outcome::Fail, &chain(&e)));
                    not_loaded(&chain(&e))
                }
            }
        }
        _ => not_loaded("tracefs or the cgroup2 mount is missing"),
    };
    let loaded = checks
        .iter()
        .any(|c| c.check == "load" && c.result == Outcome::Ok);
    checks.insert(memlock_at, memlock(memlock_limit, loaded));
    let programs = statuses.iter().map(program_report).collect();
    let oom_event = statuses.iter().find(|p| p.name == "mark_victim").map_or(
        Err("not loaded".to_owned()),
        |p| {
            if p.attached {
                Ok(())
            } else {
                Err(p.error.clone().unwrap_or_default())
            }
        },
    );
    let sources = samplers::task::sources(
        &samplers::sampler::SamplerConfig {
            hierarchies: Hierarchies::detect(),
            kubelet_root,
            throttle_threshold: samplers::DEFAULT_THROTTLE_THRESHOLD,
        },
        oom_event,
    );
    let signals = signals::states(&statuses, &sources);
    let summary = summarize(&checks, &signals);
    Report {
        kernel: kernel_release(),
        checks,
        programs,
        signals,
        summary,
    }
}

/// Whether the agent will find the container runtime's socket. Without one it names pods
/// from the API server alone: a caveat, not a fault.
fn container_runtime(socket: &crate::attribute::runtime::CriSocket) -> Check {
    use crate::attribute::runtime::{CriSocket, find_socket};
    match (socket, find_socket(socket)) {
        (CriSocket::Off, _) => check(
            "container_runtime",
            Outcome::Ok,
            "not read (--cri-socket none): pods are named from the API server only",
        ),
        (_, Ok(path)) if path.exists() => check(
            "container_runtime",
            Outcome::Ok,
            &format!("CRI socket {}", path.display()),
        ),
        (_, Ok(path)) => check(
            "container_runtime",
            Outcome::Warn,
            &format!(
                "{} does not exist: pods are named from the API server only",
                path.display()
            ),
        ),
        (_, Err(why)) => check("container_runtime", Outcome::Warn, &why),
    }
}

fn check(name: &str, result: Outcome, detail: &str) -> Check {
    Check {
        check: name.to_owned(),
        result,
        detail: detail.to_owned(),
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

fn not_loaded(why: &str) -> Vec<ProbeStatus> {
    PROGRAMS
        .iter()
        .map(|p| ProbeStatus {
            name: p.name.to_owned(),
            hook: p.hook.to_string(),
            attached: false,
            error: Some(why.to_owned()),
            degraded: None,
            switched_off: false,
        })
        .collect()
}

fn program_report(p: &ProbeStatus) -> ProgramReport {
    let (mode, detail) = match (&p.degraded, p.attached) {
        (_, false) if p.switched_off => (
            Mode::Off,
            format!("switched off: {}", p.error.as_deref().unwrap_or_default()),
        ),
        (_, false) => (
            Mode::Off,
            p.error.clone().unwrap_or_else(|| "not attached".into()),
        ),
        (Some(d), true) => (Mode::Degraded, format!("{} ({})", d.loses, d.rejected)),
        (None, true) => (Mode::Full, p.error.clone().unwrap_or_default()),
    };
    ProgramReport {
        program: p.name.clone(),
        hook: p.hook.clone(),
        mode,
        running: p
            .degraded
            .as_ref()
            .filter(|d| d.program != p.name)
            .map(|d| d.program.clone()),
        detail,
    }
}

fn summarize(checks: &[Check], signals: &[SignalState]) -> Summary {
    // A signal the flags switched off (`--dns-ports none`) is what was asked for.
    let count = |m| {
        signals
            .iter()
            .filter(|s| s.mode == m && !s.switched_off)
            .count()
    };
    let failed_checks = checks.iter().filter(|c| c.result == Outcome::Fail).count();
    let (full, degraded, off) = (count(Mode::Full), count(Mode::Degraded), count(Mode::Off));
    let exit_code = if off > 0 || failed_checks > 0 {
        EXIT_FAILED
    } else if degraded > 0 {
        EXIT_DEGRADED
    } else {
        0
    };
    Summary {
        full,
        degraded,
        off,
        failed_checks,
        exit_code,
    }
}

/// The effective capability set from `/proc/self/status` (`CapEff:` in hex).
pub fn effective_caps(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

fn capabilities() -> Check {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(eff) = effective_caps(&status) else {
        return check(
            "capabilities",
            Outcome::Warn,
            "cannot read CapEff from /proc/self/status",
        );
    };
    caps_check(eff)
}

fn caps_check(eff: u64) -> Check {
    let has = |bit: u32| eff & (1u64 << bit) != 0;
    let missing: Vec<String> = NEEDED_CAPS
        .iter()
        .filter(|(bit, _, _)| !(has(*bit) || has(CAP_SYS_ADMIN)))
        .map(|(_, name, why)| format!("CAP_{name} ({why})"))
        .collect();
    if missing.is_empty() {
        let via = if has(CAP_SYS_ADMIN) {
            " (CAP_SYS_ADMIN held: more than the DaemonSet grants)"
        } else {
            ""
        };
        check(
            "capabilities",
            Outcome::Ok,
            &format!("CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN effective{via}"),
        )
    } else {
        check(
            "capabilities",
            Outcome::Fail,
            &format!("missing {}", missing.join(", ")),
        )
    }
}

fn memlock(limit: std::io::Result<Option<u64>>, loaded: bool) -> Check {
    match limit {
        Ok(None) => check("memlock", Outcome::Ok, "RLIMIT_MEMLOCK unlimited"),
        Ok(Some(bytes)) if loaded => check(
            "memlock",
            Outcome::Ok,
            &format!(
                "RLIMIT_MEMLOCK is {} KiB (cannot be raised without CAP_SYS_RESOURCE): the maps fit, or this kernel does not charge them to it (5.11+)",
                bytes / 1024
            ),
        ),
        Ok(Some(bytes)) => check(
            "memlock",
            Outcome::Warn,
            &format!(
                "RLIMIT_MEMLOCK is {} KiB and cannot be raised: kernels before 5.11 charge maps to it (a load failing with EPERM there needs CAP_SYS_RESOURCE or a higher limit)",
                bytes / 1024
            ),
        ),
        Err(e) => check("memlock", Outcome::Warn, &format!("RLIMIT_MEMLOCK: {e}")),
    }
}

/// The cgroup hierarchy: cgroup2 only, hybrid, or v1 only; where the DNS programs attach.
fn cgroups(mountinfo_text: &str, root: Option<PathBuf>) -> (Check, Option<PathBuf>) {
    let mut v2 = None;
    let mut v1 = Vec::new();
    for m in mountinfo::mounts(mountinfo_text) {
        match m.fstype {
            "cgroup2" if v2.is_none() => v2 = Some(PathBuf::from(m.point)),
            "cgroup" => {
                for c in ["cpu", "memory", "pids"] {
                    if m.has_option(c) {
                        v1.push(c);
                    }
                }
            }
            _ => {}
        }
    }
    let root = root.or(v2.clone());
    let Some(mount) = v2 else {
        return (
            check(
                "cgroup",
                Outcome::Fail,
                "no cgroup2 mount: the DNS programs and cgroup ids need it",
            ),
            root,
        );
    };
    let controllers = std::fs::read_to_string(mount.join("cgroup.controllers"))
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let detail = if v1.is_empty() {
        format!(
            "cgroup v2 only at {} (controllers: {})",
            mount.display(),
            if controllers.is_empty() {
                "none"
            } else {
                &controllers
            }
        )
    } else {
        format!(
            "hybrid: cgroup2 at {}, v1 controllers {} (oom and cpu counters read from v1)",
            mount.display(),
            v1.join(" ")
        )
    };
    (check("cgroup", Outcome::Ok, &detail), root)
}

/// Where kubelet's pod cgroups are, and with which driver.
fn kubelet_layout(cgroup2: Option<&Path>, kubelet_root: &KubeletRoot) -> Check {
    let Some(mount) = cgroup2 else {
        return check(
            "kubelet_cgroups",
            Outcome::Warn,
            "no cgroup2 mount to look in",
        );
    };
    let Some(pods) = crate::cgroup::layout::pods_cgroup(mount, kubelet_root) else {
        let base = kubelet_root.anchors().first().map_or_else(
            || mount.to_path_buf(),
            |a| mount.join(a.dir.iter().collect::<PathBuf>()),
        );
        return check(
            "kubelet_cgroups",
            Outcome::Warn,
            &format!(
                "no kubepods or kubepods.slice under {}: not a kubelet node yet, or kubelet's \
                 --cgroup-root differs (pass --kubelet-cgroup-root); the DNS programs would \
                 attach to the cgroup2 root, where every process of the node runs them",
                base.display()
            ),
        );
    };
    let driver = if pods.extension().is_some_and(|e| e == "slice") {
        "systemd"
    } else {
        "cgroupfs"
    };
    let entries = std::fs::read_dir(&pods)
        .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
        .unwrap_or(0);
    check(
        "kubelet_cgroups",
        Outcome::Ok,
        &format!(
            "{driver} driver: {} ({entries} entries); the DNS programs attach here",
            pods.display()
        ),
    )
}

/// One line per check, program and signal, then the summary.
pub fn render_table(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "kernel {}", cleaned(&r.kernel));
    let _ = writeln!(out, "\nCHECK             RESULT  DETAIL");
    for c in &r.checks {
        let line = format!(
            "{:<17} {:<7} {}",
            c.check,
            c.result.as_str(),
            cleaned(&c.detail)
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let _ = writeln!(out, "\nPROGRAM               MODE      DETAIL");
    for p in &r.programs {
        let mut detail = p
            .running
            .as_ref()
            .map(|run| format!("runs {run}: "))
            .unwrap_or_default();
        detail.push_str(&p.detail);
        let line = format!(
            "{:<21} {:<9} {}",
            p.program,
            p.mode.as_str(),
            cleaned(&detail)
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let _ = writeln!(out, "\nSIGNAL                MODE      DETAIL");
    for s in &r.signals {
        let line = format!(
            "{:<21} {:<9} {}",
            s.signal,
            s.mode.as_str(),
            cleaned(&s.detail)
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let s = &r.summary;
    let _ = writeln!(
        out,
        "\n{} signals: {} full, {} degraded, {} off; {} checks failed (exit {})",
        r.signals.len(),
        s.full,
        s.degraded,
        s.off,
        s.failed_checks,
        s.exit_code
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_read_from_the_effective_set() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000000c000001000\n";
        let eff = effective_caps(status).expect("parsed");
        assert_eq!(
            caps_check(eff).result,
            Outcome::Ok,
            "BPF, PERFMON, NET_ADMIN"
        );
        let missing = caps_check(1 << 39);
        assert_eq!(missing.result, Outcome::Fail);
        assert!(missing.detail.contains("CAP_PERFMON") && missing.detail.contains("CAP_NET_ADMIN"));
        // SYS_ADMIN covers all three (bpf_capable, perfmon_capable, bpf_net_capable).
        assert_eq!(caps_check(1 << 21).result, Outcome::Ok);
        assert_eq!(effective_caps("CapEff:\tzz\n"), None);
    }

    #[test]
    fn hierarchies_are_named() {
        let v2 = "30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let (c, root) = cgroups(v2, None);
        assert_eq!(c.result, Outcome::Ok);
        assert!(
            c.detail.starts_with("cgroup v2 only at /sys/fs/cgroup"),
            "{}",
            c.detail
        );
        assert_eq!(root.as_deref(), Some(Path::new("/sys/fs/cgroup")));
        let hybrid = "30 1 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
                      31 1 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let (c, _) = cgroups(hybrid, None);
        assert!(c.detail.starts_with("hybrid"), "{}", c.detail);
        let (c, root) = cgroups("", None);
        assert_eq!(c.result, Outcome::Fail);
        assert_eq!(root, None);
    }

    #[test]
    fn the_exit_code_follows_the_worst_signal() {
        let s = |mode| SignalState {
            signal: "dns",
            mode,
            detail: String::new(),
            switched_off: false,
        };
        let ok = [check("btf", Outcome::Ok, "")];
        assert_eq!(summarize(&ok, &[s(Mode::Full)]).exit_code, 0);
        assert_eq!(
            summarize(&ok, &[s(Mode::Full), s(Mode::Degraded)]).exit_code,
            EXIT_DEGRADED
        );
        assert_eq!(
            summarize(&ok, &[s(Mode::Degraded), s(Mode::Off)]).exit_code,
            EXIT_FAILED
        );
        let failed = [check("btf", Outcome::Fail, "")];
        assert_eq!(summarize(&failed, &[s(Mode::Full)]).exit_code, EXIT_FAILED);
    }
}
