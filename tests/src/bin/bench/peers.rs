//! Other tools doing the agent's job during the same floods, for their ratios beside ours:
//! bpftrace counting the events in a kernel map (the cheapest possible eBPF observer),
//! bpftrace printing a line per event (per-event delivery to userspace, what the agent avoids)
//! `tcpdump -w` on the pod's interface (a packet capture), and empty programs at the agent's
//! own hooks ([`crate::floor`]: what any work there costs at least). Each is started before a flood,
//! checked attached, and stopped after it with SIGINT so it reports what it lost.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use triage_agent_tests::simnode::SimNode;

/// A peer tool: its command line, where it runs, and the text it prints once attached.
pub struct Peer {
    pub label: &'static str,
    /// Loads eBPF programs (whose run time the bench can read).
    pub ebpf: bool,
    /// argv; `{out}` is replaced by a scratch file and `{iface}` by the pod's interface.
    argv: Vec<String>,
    /// Runs in the node's network namespace (a capture on a pod's interface), else the host's.
    in_node_netns: bool,
    ready: &'static str,
}

fn bpftrace(label: &'static str, script: &str) -> Peer {
    Peer {
        label,
        // Output to a file: bpftrace writes "Attaching N probes..." there once attached.
        argv: ["bpftrace", "-o", "{out}", "-e", script]
            .map(str::to_owned)
            .to_vec(),
        in_node_netns: false,
        ebpf: true,
        ready: "Attaching",
    }
}

fn tcpdump() -> Peer {
    Peer {
        label: "tcpdump -w (the pod's interface)",
        argv: ["tcpdump", "-i", "{iface}", "-w", "{out}"]
            .map(str::to_owned)
            .to_vec(),
        in_node_netns: true,
        ebpf: false,
        ready: "listening on",
    }
}

/// Empty programs at every hook the agent uses ([`crate::floor`]): the floor of its design.
pub fn floor() -> Peer {
    held_by_the_bench(FLOOR, &[])
}

/// The bench itself holding programs at the agent's hooks (`--hold-empty-hooks` and `args`).
fn held_by_the_bench(label: &'static str, args: &[&str]) -> Peer {
    let mut argv = vec![
        "/proc/self/exe".to_owned(),
        crate::floor::HOLD_ARG.to_owned(),
        crate::floor::AT_CGROUP_ARG.to_owned(),
        "{pods_cgroup}".to_owned(),
    ];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    Peer {
        label,
        ebpf: true,
        argv,
        in_node_netns: false,
        ready: crate::floor::READY,
    }
}

/// The floor's label.
pub const FLOOR: &str = "empty programs at the agent's hooks (the floor)";

/// [`floor`] with programs at the cgroup_skb hooks that find DNS packets and do nothing else
/// (`crate::floor::CLASSIFY`): the least a DNS capture at those hooks costs.
pub fn classify_floor() -> Peer {
    held_by_the_bench(CLASSIFY_FLOOR, &[crate::floor::CLASSIFY_ARG])
}

/// The classifier floor's label.
pub const CLASSIFY_FLOOR: &str =
    "programs that only find DNS packets (IP version, protocol and ports read; nothing kept)";

/// [`floor`] with programs at the cgroup_skb hooks that match answers to queries and do
/// nothing else (`crate::floor::matcher`): the least exact matching at those hooks costs.
pub fn match_floor() -> Peer {
    held_by_the_bench(MATCH_FLOOR, &[crate::floor::MATCH_ARG])
}

/// The matcher floor's label.
pub const MATCH_FLOOR: &str = "programs that only match answers to queries (a key stored per \
     query in a one-line slot, loaded, compared and cleared by its answer; no clock, counter or \
     cgroup)";

/// Empty TCX programs, both directions, on every pod's node-side interface: the floor of the
/// other way to capture DNS (tc on the pods' interfaces instead of cgroup_skb on the cgroup2
/// root), measured beside [`floor`] in the DNS scenario.
pub fn tcx_floor() -> anyhow::Result<Peer> {
    Ok(Peer {
        label: TCX_FLOOR,
        ebpf: true,
        argv: vec![
            std::env::current_exe()?.to_string_lossy().into_owned(),
            crate::floor::HOLD_ARG.to_owned(),
            crate::floor::TCX_ARG.to_owned(),
            "{ifaces}".to_owned(),
        ],
        in_node_netns: true,
        ready: crate::floor::READY,
    })
}

/// The TCX floor's label.
pub const TCX_FLOOR: &str = "empty TCX programs on every pod interface (the other hook's floor)";

/// Peers of the drop flood: packets freed with a drop reason.
pub fn of_drops() -> Vec<Peer> {
    vec![
        floor(),
        bpftrace(
            "bpftrace count (kfree_skb by reason, in a map)",
            "tracepoint:skb:kfree_skb { @drops[args->reason] = count(); }",
        ),
        bpftrace(
            "bpftrace print (a line per drop)",
            r#"tracepoint:skb:kfree_skb { printf("%llu %d %d\n", nsecs, args->protocol, args->reason); }"#,
        ),
        tcpdump(),
    ]
}

/// Peers of the refusal flood: resets received by connecting sockets (and sent for closed
/// ports), the tracepoints the agent's refusal programs use.
pub fn of_refusals() -> Vec<Peer> {
    vec![
        floor(),
        bpftrace(
            "bpftrace count (tcp resets by comm, in a map)",
            "tracepoint:tcp:tcp_receive_reset { @refused[comm] = count(); } \
             tracepoint:tcp:tcp_send_reset { @sent = count(); }",
        ),
        bpftrace(
            "bpftrace print (a line per reset)",
            r#"tracepoint:tcp:tcp_receive_reset { printf("%llu %s %d\n", nsecs, comm, args->dport); } tracepoint:tcp:tcp_send_reset { printf("%llu rst %d\n", nsecs, args->reason); }"#,
        ),
        tcpdump(),
    ]
}

/// A running peer; [`Running::stop`] ends it and removes its files.
pub struct Running {
    child: Child,
    dir: PathBuf,
}

impl Peer {
    /// Starts the peer for pod `pod`'s traffic and waits until it says it is attached.
    pub fn start(&self, node: &SimNode, pod: usize) -> anyhow::Result<Running> {
        let dir = std::env::temp_dir().join(format!("triage-bench-peer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let out = dir.join("out");
        let argv: Vec<String> = self
            .argv
            .iter()
            .map(|a| {
                a.replace("{out}", &out.to_string_lossy())
                    .replace("{iface}", node.pod(pod).host_interface())
                    .replace("{ifaces}", &node.pod_interfaces().join(","))
                    .replace("{pods_cgroup}", &node.pods_cgroup_v2().to_string_lossy())
            })
            .collect();
        let mut cmd = if self.in_node_netns {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", node.node_netns()]).args(&argv);
            c
        } else {
            let mut c = Command::new(argv.first().context("empty argv")?);
            c.args(argv.get(1..).unwrap_or_default());
            c
        };
        let child = cmd
            .stdout(std::fs::File::create(dir.join("stdout"))?)
            .stderr(std::fs::File::create(dir.join("stderr"))?)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} (setup installs it)", self.label))?;
        let mut running = Running { child, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if ["out", "stdout", "stderr"]
                .iter()
                .any(|f| read_lossy(&running.dir.join(f)).contains(self.ready))
            {
                break;
            }
            if let Some(status) = running.child.try_wait()? {
                let log = read_lossy(&running.dir.join("stderr"));
                anyhow::bail!("{} exited before attaching ({status}): {log}", self.label);
            }
            if Instant::now() > deadline {
                anyhow::bail!("{} did not attach within 30 s", self.label);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Attached is printed just before the last program is; let it settle.
        std::thread::sleep(Duration::from_millis(200));
        Ok(running)
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the peer (SIGINT: bpftrace prints its maps and lost events, tcpdump its drop
    /// counts) and returns what it reported losing, if anything.
    pub fn stop(mut self) -> anyhow::Result<Option<u64>> {
        let pid = libc::pid_t::try_from(self.child.id())?;
        // SAFETY: signals our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let text: String = ["out", "stdout", "stderr"]
            .iter()
            .map(|f| read_lossy(&self.dir.join(f)))
            .collect::<Vec<_>>()
            .join("\n");
        Ok(lost(&text))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What a peer says it lost: bpftrace's "Lost N events" lines, tcpdump's "N packets dropped
/// by kernel" (by `ip netns exec`, tcpdump's own stderr is ours).
fn lost(text: &str) -> Option<u64> {
    let mut total = None;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let n = match words.as_slice() {
            ["Lost", n, "events", ..] => n.parse::<u64>().ok(),
            [n, "packets", "dropped", "by", "kernel", ..] => n.parse::<u64>().ok(),
            _ => None,
        };
        if let Some(n) = n {
            total = Some(total.unwrap_or(0) + n);
        }
    }
    total
}

/// Run time and runs of every eBPF program a process holds open, from each program fd's
/// fdinfo (`run_time_ns`, `run_cnt`: counted while `kernel.bpf_stats_enabled` is 1).
pub fn bpf_run_stats(pid: u32) -> (u64, u64) {
    let (mut ns, mut runs) = (0u64, 0u64);
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return (0, 0);
    };
    for fd in fds.flatten() {
        let text = read_lossy(&fd.path());
        if !text.contains("prog_type:") {
            continue;
        }
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some(name), Some(value)) = (words.next(), words.next()) else {
                continue;
            };
            let value: u64 = value.parse().unwrap_or(0);
            match name {
                "run_time_ns:" => ns += value,
                "run_cnt:" => runs += value,
                _ => {}
            }
        }
    }
    (ns, runs)
}

/// Turns on the kernel's eBPF run-time statistics until dropped (they cost two clock reads
/// per program run, so only the rounds that read them have them on).
pub struct BpfStats(String);

impl BpfStats {
    const PATH: &'static str = "/proc/sys/kernel/bpf_stats_enabled";

    pub fn enable() -> anyhow::Result<BpfStats> {
        let old = std::fs::read_to_string(Self::PATH)?;
        std::fs::write(Self::PATH, "1")?;
        Ok(BpfStats(old.trim().to_owned()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::lost;

    #[test]
    fn losses_are_read_from_both_tools() {
        assert_eq!(lost("Attaching 1 probe...\n1 2 3\n"), None);
        assert_eq!(lost("Lost 120 events\nLost 5 events\n"), Some(125));
        assert_eq!(
            lost(
                "1000 packets captured\n1200 packets received by filter\n200 packets dropped by kernel\n"
            ),
            Some(200)
        );
    }
}
