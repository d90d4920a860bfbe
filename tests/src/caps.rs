//! The agent in every test holds exactly the capabilities the DaemonSet gives it: the ones
//! deploy/daemonset.yaml adds, read from that manifest (compiled in, so the kernel matrix's
//! VMs use the same list), and no others. The test process itself stays root with every
//! capability (it builds the simulated node); only the agent's process is reduced, the way
//! the container runtime reduces the DaemonSet's container: uid 0, a bounding set of the added
//! capabilities (uid 0 gets them at exec), no inheritable or ambient ones, no_new_privs
//! (`allowPrivilegeEscalation: false`).

use std::os::unix::process::CommandExt as _;
use std::process::Command;

use anyhow::{Context as _, bail};

/// The DaemonSet manifest the capabilities come from.
const DAEMONSET: &str = include_str!("../../deploy/daemonset.yaml");

/// Capability numbers (linux/capability.h) of the names a manifest may add. A name missing
/// here is an error, never silently ignored.
const NUMBERS: [(&str, u32); 14] = [
    ("CHOWN", 0),
    ("DAC_OVERRIDE", 1),
    ("DAC_READ_SEARCH", 2),
    ("KILL", 5),
    ("NET_BIND_SERVICE", 10),
    ("NET_ADMIN", 12),
    ("NET_RAW", 13),
    ("SYS_PTRACE", 19),
    ("SYS_ADMIN", 21),
    ("SYS_RESOURCE", 24),
    ("SYSLOG", 34),
    ("PERFMON", 38),
    ("BPF", 39),
    ("CHECKPOINT_RESTORE", 40),
];

/// The capabilities the agent's container adds, by name (`BPF`, ...), as the manifest lists
/// them.
pub fn daemonset_capabilities() -> anyhow::Result<Vec<String>> {
    capabilities_of(DAEMONSET)
}

fn capabilities_of(manifest: &str) -> anyhow::Result<Vec<String>> {
    let doc: serde_json::Value =
        serde_saphyr::from_str(manifest).context("parsing daemonset.yaml")?;
    let containers = doc["spec"]["template"]["spec"]["containers"]
        .as_array()
        .context("daemonset.yaml: no containers")?;
    let agent = containers
        .iter()
        .find(|c| c["name"].as_str() == Some("agent"))
        .context("daemonset.yaml: no container named agent")?;
    let caps = &agent["securityContext"]["capabilities"];
    let drop: Vec<&str> = caps["drop"]
        .as_array()
        .map(|s| s.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    if drop != ["ALL"] {
        bail!("daemonset.yaml: the agent's container drops {drop:?}, not [ALL]");
    }
    let add: Vec<String> = caps["add"]
        .as_array()
        .context("daemonset.yaml: the agent's container adds no capabilities")?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .context("a capability that is not a string")
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(add)
}

/// The capability numbers of `names`.
fn numbers(names: &[String]) -> anyhow::Result<Vec<u32>> {
    names
        .iter()
        .map(|name| {
            let bare = name.strip_prefix("CAP_").unwrap_or(name);
            NUMBERS
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(bare))
                .map(|(_, bit)| *bit)
                .with_context(|| format!("capability {name}: not in tests/src/caps.rs's table"))
        })
        .collect()
}

/// Makes `cmd` run with exactly the DaemonSet's capabilities.
pub fn restrict_to_daemonset(cmd: &mut Command) -> anyhow::Result<()> {
    let keep = numbers(&daemonset_capabilities()?)?;
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .context("reading /proc/sys/kernel/cap_last_cap")?
        .trim()
        .parse()
        .context("parsing /proc/sys/kernel/cap_last_cap")?;
    let drop: Vec<libc::c_ulong> = (0..=last)
        .filter(|c| !keep.contains(c))
        .map(libc::c_ulong::from)
        .collect();
    // SAFETY: between fork and exec the closure calls only prctl(2), which is
    // async-signal-safe, and allocates nothing (the list was built before the fork).
    unsafe {
        cmd.pre_exec(move || {
            for cap in &drop {
                if libc::prctl(libc::PR_CAPBSET_DROP, *cap, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            let clear = libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong;
            if libc::prctl(libc::PR_CAP_AMBIENT, clear, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// A capability set (`CapEff`, `CapBnd`, ...) from a /proc/PID/status text.
fn cap_set(status: &str, name: &str) -> anyhow::Result<u64> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .with_context(|| format!("no {name} line"))?;
    Ok(u64::from_str_radix(hex.trim(), 16)?)
}

/// The effective capabilities of process `pid`.
pub fn effective(pid: u32) -> anyhow::Result<u64> {
    cap_set(
        &std::fs::read_to_string(format!("/proc/{pid}/status"))?,
        "CapEff",
    )
}

/// The mask of the DaemonSet's capabilities.
pub fn daemonset_mask() -> anyhow::Result<u64> {
    Ok(numbers(&daemonset_capabilities()?)?
        .iter()
        .fold(0, |m, bit| m | (1u64 << bit)))
}

/// What an agent started by [`restrict_to_daemonset`] holds: the DaemonSet's capabilities
/// that this process can pass on (its own bounding set). A machine whose root lacks one (a
/// sandbox without CAP_SYS_RESOURCE, say) runs the agent with less than the DaemonSet, never
/// with more.
pub fn expected_mask() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    Ok(daemonset_mask()? & cap_set(&status, "CapBnd")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_lists_what_the_agent_needs_and_every_name_is_known() {
        let caps = daemonset_capabilities().unwrap();
        assert_eq!(caps, ["BPF", "PERFMON", "NET_ADMIN", "SYS_RESOURCE"]);
        assert_eq!(
            daemonset_mask().unwrap(),
            (1 << 39) | (1 << 38) | (1 << 12) | (1 << 24)
        );
    }

    #[test]
    fn a_manifest_that_does_not_drop_all_or_names_an_unknown_capability_is_an_error() {
        let keep_all = DAEMONSET.replace("drop: [\"ALL\"]", "drop: []");
        assert!(capabilities_of(&keep_all).is_err());
        assert!(numbers(&["WAKE_ALARM".to_owned()]).is_err());
    }

    #[test]
    fn a_command_restricted_to_the_daemonset_runs_with_exactly_its_capabilities() {
        let mut cmd = Command::new("grep");
        cmd.args(["^CapEff:", "/proc/self/status"]);
        restrict_to_daemonset(&mut cmd).unwrap();
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let eff = cap_set(&text, "CapEff").unwrap();
        // Root gets its bounding set at exec; as another user nothing is effective at all.
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        let want = if euid == 0 {
            expected_mask().unwrap()
        } else {
            0
        };
        assert_eq!(eff, want, "{text}");
    }
}
