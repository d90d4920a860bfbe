//! `triage-agent doctor` on this host, for real: it loads and attaches every program, reads the
//! host's cgroups and capabilities, and its verdict and exit code follow what it found. Needs
//! root (as `cargo xtask test` runs it); without root it fails, never skips. The kernel matrix
//! runs it in every VM.
#![expect(
    clippy::expect_used,
    clippy::panic,
    reason = "test scenarios panic with context; helpers are not #[test] fns"
)]

use std::process::{Command, Output};

use serde_json::Value;

fn doctor(args: &[&str], wrap: &[&str]) -> (Output, Value) {
    let bin = env!("CARGO_BIN_EXE_triage-agent");
    let mut cmd = match wrap.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg("--").arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let out = cmd
        .arg("doctor")
        .args(["-o", "json"])
        .args(args)
        .output()
        .expect("running doctor");
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, json)
}

fn signal<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["signals"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["signal"] == name))
        .unwrap_or_else(|| panic!("no signal {name}: {report}"))
}

fn require_root() {
    let uid = Command::new("id").arg("-u").output().expect("id -u");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "doctor loads eBPF programs: run the tests as root (`cargo xtask test` does)"
    );
}

#[test]
fn every_signal_is_full_on_this_host_and_the_report_has_every_part() {
    require_root();
    let (out, report) = doctor(&[], &[]);
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    let checks: Vec<&str> = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter_map(|c| c["check"].as_str())
        .collect();
    for name in [
        "capabilities",
        "memlock",
        "btf",
        "tracefs",
        "cgroup",
        "kubelet_cgroups",
        "container_runtime",
        "load",
    ] {
        assert!(checks.contains(&name), "{name} missing: {checks:?}");
    }
    let programs = report["programs"].as_array().expect("programs");
    assert_eq!(programs.len(), 9, "{report:#}");
    assert!(programs.iter().all(|p| p["mode"] == "full"), "{report:#}");
    for s in [
        "connection_refused",
        "connection_timeout",
        "packet_drop",
        "dns",
        "oom_kill",
        "cpu_throttling",
    ] {
        assert_eq!(signal(&report, s)["mode"], "full", "{report:#}");
    }
    assert_eq!(report["summary"]["exit_code"], 0);
    // The table says the same, one line per check, program and signal.
    let table = Command::new(env!("CARGO_BIN_EXE_triage-agent"))
        .arg("doctor")
        .output()
        .expect("doctor");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("6 signals: 6 full, 0 degraded, 0 off; 0 checks failed (exit 0)"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("dns_egress") && l.contains("full")),
        "{text}"
    );
}

#[test]
fn a_signal_switched_off_by_a_flag_is_off_but_not_a_failure() {
    require_root();
    let (out, report) = doctor(&["--dns-ports", "none"], &[]);
    assert_eq!(signal(&report, "dns")["mode"], "off", "{report:#}");
    assert_eq!(out.status.code(), Some(0), "{report:#}");
}

#[test]
fn without_cap_net_admin_the_dns_capture_is_off_and_doctor_says_why() {
    require_root();
    // Root without CAP_NET_ADMIN (and CAP_SYS_ADMIN, which the kernel takes in its place): what
    // a DaemonSet that forgot it gets.
    let (out, report) = doctor(
        &[],
        &[
            "setpriv",
            "--bounding-set",
            "-net_admin,-sys_admin",
            "--inh-caps",
            "-net_admin,-sys_admin",
        ],
    );
    assert_eq!(out.status.code(), Some(4), "{report:#}");
    let caps = report["checks"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["check"] == "capabilities"))
        .expect("capabilities check");
    assert_eq!(caps["result"], "fail", "{caps}");
    assert!(
        caps["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("CAP_NET_ADMIN"),
        "{caps}"
    );
    let dns = signal(&report, "dns");
    assert_eq!(dns["mode"], "off", "{report:#}");
    // Everything else still loads: the other signals do not need it.
    assert_eq!(signal(&report, "packet_drop")["mode"], "full", "{report:#}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("off"), "{stderr}");
}
