//! The provocations: what each [`Group`](super::cells::Group) does to the simulated node to make its signal
//! happen, and what in the agent's answer is its evidence ([`Check`]s). Pods live in namespace
//! [`NS`] and go with their group.

use std::{io::BufRead as _, process::Output, time::Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::{
    Cell,
    cells::{Check, Ctx, NS, Provoked},
    judge::Seen,
};
use crate::agent::{count_of, records};

/// The cluster DNS Service's address (translated to the dnsmasq pod in the node's namespace).
const DNS_VIP: &str = "10.96.0.10";
/// The OOM cell's container limit, and what its worker child tries to allocate (well past it,
/// far below a small VM's memory).
const MEMORY_LIMIT: u64 = 48 << 20;
const ALLOC_MIB: &str = "192";

impl Ctx<'_> {
    /// A client connects three times to a port of another pod where nothing listens: refused
    /// outbound on the client, and (6.10+) by the server's own stack inbound.
    pub(super) fn refused(&mut self) -> anyhow::Result<Provoked> {
        let server = self.add("refuse-server")?;
        let client = self.add("refuse-client")?;
        self.node.start_process(server, &["listen", "5432"])?;
        self.wait_pods()?;
        // Nothing listens on 5433: the server's stack answers each SYN with a reset.
        let dst = format!("{}:5433", self.node.pod(server).ip);
        let out = self.node.run(client, &["connect", &dst, "3", "50"])?;
        let (d1, d2) = (dst.clone(), dst.clone());
        Ok(Provoked {
            checks: vec![
                Check::new(
                    Cell::RefusedOutbound,
                    "refuse-client",
                    format!("connection_refused outbound record to {dst} on {NS}/refuse-client"),
                    move |v| {
                        let r = to(records(v, "connection_refused", "outbound"), &d1);
                        match r.first() {
                            None => Seen::Nothing(String::new()),
                            Some(first) => Seen::Full(format!(
                                "{} refusal(s) to {d1} on {NS}/refuse-client (cause {}, attribution {}, process {})",
                                count_of(&r),
                                txt(&first["cause"]),
                                txt(&first["attribution"]),
                                txt(&first["process"]["comm"])
                            )),
                        }
                    },
                ),
                Check::new(
                    Cell::RefusedInbound,
                    "refuse-server",
                    format!("connection_refused inbound record to {dst} on {NS}/refuse-server"),
                    move |v| {
                        let r = to(records(v, "connection_refused", "inbound"), &d2);
                        match r.first() {
                            None => Seen::Nothing(String::new()),
                            Some(first) => Seen::Full(format!(
                                "{} refusal(s) of {d2} by {NS}/refuse-server's own stack (reason {}, cause {}, peer {})",
                                count_of(&r),
                                txt(&first["reason"]),
                                txt(&first["cause"]),
                                txt(&first["peer"]["name"])
                            )),
                        }
                    },
                ),
            ],
            wait_secs: 20.0,
            workload: format!("the client saw {}", outcomes(&out)),
        })
    }

    /// A client connects twice (1.5 s each) to a pod port whose SYNs a bridge rule drops: a
    /// timeout and a NETFILTER_DROP drop on the client.
    pub(super) fn blackhole(&mut self) -> anyhow::Result<Provoked> {
        let server = self.add("drop-server")?;
        let client = self.add("drop-client")?;
        self.node.start_process(server, &["listen", "5432"])?;
        let ip = self.node.pod(server).ip;
        // A policy-enforcing CNI's rule on the node's bridge: SYNs to the server vanish.
        self.node.nft_node(&format!(
            "table bridge sim_matrix_drop {{\n chain forward {{\n  type filter hook forward priority 0; policy accept;\n  ip daddr {ip} tcp dport 5432 drop\n }}\n}}\n"
        ))?;
        self.wait_pods()?;
        let dst = format!("{ip}:5432");
        let out = self
            .node
            .run(client, &["connect", &dst, "2", "10", "1500"])?;
        let (d1, d2) = (dst.clone(), dst.clone());
        Ok(Provoked {
            checks: vec![
                Check::new(
                    Cell::ConnectTimeout,
                    "drop-client",
                    format!("connection_timeout outbound record to {dst} on {NS}/drop-client"),
                    move |v| {
                        let r = to(records(v, "connection_timeout", "outbound"), &d1);
                        match r.first() {
                            None => Seen::Nothing(String::new()),
                            Some(first) => Seen::Full(format!(
                                "{} timeout(s) to {d1} on {NS}/drop-client (syn_retransmits {})",
                                count_of(&r),
                                txt(&first["syn_retransmits"])
                            )),
                        }
                    },
                ),
                Check::new(
                    Cell::PacketDrop,
                    "drop-client",
                    format!("packet_drop outbound record to {dst} on {NS}/drop-client"),
                    move |v| judge_drop(&to(records(v, "packet_drop", "outbound"), &d2), &d2),
                ),
            ],
            wait_secs: 20.0,
            workload: format!("the client saw {}", outcomes(&out)),
        })
    }

    /// The cluster DNS (dnsmasq answering NXDOMAIN for every name but one), started once and
    /// proven to answer through the Service address before any DNS cell relies on it.
    fn ensure_dns(&mut self) -> anyhow::Result<()> {
        if self.dns.is_some() {
            return Ok(());
        }
        let dns = self.node.add_dns_server(
            "coredns",
            DNS_VIP,
            &["--local=/#/", "--host-record=ready.matrix.test,10.96.0.99"],
        )?;
        self.dns = Some(dns);
        let probe = self.add("dns-ready")?;
        self.node
            .set_cluster_dns(probe, DNS_VIP, "timeout:1 attempts:1")?;
        let deadline = Instant::now() + self.scale.secs(15.0);
        loop {
            let out = self
                .node
                .run(probe, &["resolve", "ready.matrix.test.", "1", "0"])?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if text.starts_with("ok") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the cluster DNS ({DNS_VIP} -> dnsmasq) does not answer: {}",
                    text.trim()
                );
            }
            std::thread::sleep(self.scale.poll());
        }
    }

    /// A pod resolves a short name that does not exist through the cluster DNS (search path,
    /// ndots:5): NXDOMAIN.
    pub(super) fn dns_nxdomain(&mut self) -> anyhow::Result<Provoked> {
        self.ensure_dns()?;
        let client = self.add("dns-client")?;
        self.node
            .set_cluster_dns(client, DNS_VIP, "timeout:2 attempts:2")?;
        self.wait_pods()?;
        // A short name: the resolver walks the search path (ndots:5), NXDOMAIN each time.
        let out = self
            .node
            .run(client, &["resolve", "nosuch-svc", "2", "50"])?;
        Ok(Provoked {
            checks: vec![Check::new(
                Cell::DnsNxdomain,
                "dns-client",
                format!("dns record with outcome nxdomain on {NS}/dns-client"),
                |v| match dns_with(v, "nxdomain").first() {
                    None => Seen::Nothing(String::new()),
                    Some(r) => Seen::Full(format!(
                        "NXDOMAIN for {} from {} ({} lookup(s), {} search-path NXDOMAINs)",
                        txt(&r["query"]),
                        txt(&r["server"]),
                        txt(&r["count"]),
                        txt(&r["search_nxdomains"])
                    )),
                },
            )],
            wait_secs: 20.0,
            workload: format!("the resolver saw {}", outcomes(&out)),
        })
    }

    /// A pod whose every packet a node rule drops resolves a name once (timeout:2 attempts:1):
    /// the agent calls the lookup unanswered after its --dns-timeout (5 s).
    pub(super) fn dns_timeout(&mut self) -> anyhow::Result<Provoked> {
        self.ensure_dns()?;
        let blocked = self.add("dns-blocked")?;
        self.node
            .set_cluster_dns(blocked, DNS_VIP, "timeout:2 attempts:1")?;
        let ip = self.node.pod(blocked).ip;
        // A default-deny egress policy: everything the pod sends through the node is dropped.
        self.node.nft_node(&format!(
            "table ip sim_matrix_dns_block {{\n chain forward {{\n  type filter hook forward priority 0; policy accept;\n  ip saddr {ip} drop\n }}\n}}\n"
        ))?;
        self.wait_pods()?;
        let out = self.node.run(
            blocked,
            &["resolve", "db.matrix.svc.cluster.local.", "1", "0"],
        )?;
        Ok(Provoked {
            checks: vec![Check::new(
                Cell::DnsTimeout,
                "dns-blocked",
                format!("dns record with outcome timeout on {NS}/dns-blocked"),
                |v| match dns_with(v, "timeout").first() {
                    None => Seen::Nothing(String::new()),
                    Some(r) => Seen::Full(format!(
                        "timeout for {} to {} after {} ms (reached_server {})",
                        txt(&r["query"]),
                        txt(&r["server"]),
                        txt(&r["latency_ms"]),
                        txt(&r["reached_server"])
                    )),
                },
            )],
            // The agent calls a query unanswered after 5 s (--dns-timeout), in wall time.
            wait_secs: 30.0,
            workload: format!("the resolver saw {}", outcomes(&out)),
        })
    }

    /// A worker child (not the container's first process) allocates past the container's
    /// memory limit: the OOM killer takes it.
    pub(super) fn oom(&mut self) -> anyhow::Result<Provoked> {
        let pod = self.add("oom")?;
        let files = self.node.set_memory_limit(pod, MEMORY_LIMIT)?;
        self.wait_pods()?;
        let sampled = self.wait_sampled("oom_kill");
        // The container's first process stays; a worker child allocates past the limit.
        let mut main = self.node.spawn_piped(pod, &["alloc-child", ALLOC_MIB])?;
        let mut line = String::new();
        if let Some(out) = main.stdout.take() {
            std::io::BufReader::new(out).read_line(&mut line)?;
        }
        self.spawned.push(main);
        let child: u64 = line
            .trim()
            .strip_prefix("child ")
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("alloc-child did not start its worker: {line:?}"))?;
        let limit = file_names(&files);
        Ok(Provoked {
            checks: vec![Check::new(
                Cell::OomKill,
                "oom",
                format!("oom_kill record naming the worker child (pid {child}) on {NS}/oom"),
                move |v| judge_oom(v, child),
            )],
            wait_secs: 30.0,
            workload: format!(
                "worker pid {child} allocating {ALLOC_MIB} MiB against {MEMORY_LIMIT} bytes in {limit}{sampled}"
            ),
        })
    }

    /// A busy loop under a 0.1-core limit: throttled in nearly every period.
    pub(super) fn cpu(&mut self) -> anyhow::Result<Provoked> {
        let pod = self.add("throttled")?;
        // 0.1 core: 10 ms per 100 ms period. Without it nothing may spin (it would take the
        // whole CPU of a one-CPU VM).
        let files = self.node.set_cpu_quota(pod, 10_000, 100_000)?;
        self.wait_pods()?;
        let sampled = self.wait_sampled("cpu_throttling");
        let wait_secs = 30.0;
        let spin = format!("{:.0}", self.scale.secs(wait_secs + 10.0).as_secs_f64());
        self.node.start_process(pod, &["spin", &spin])?;
        let limit = file_names(&files);
        Ok(Provoked {
            checks: vec![Check::new(
                Cell::CpuThrottling,
                "throttled",
                format!("cpu_throttling record on {NS}/throttled"),
                |v| match of_kind(v, "cpu_throttling").first() {
                    Some(r) if r["throttled_periods"].as_u64() >= Some(1) => Seen::Full(format!(
                        "throttled in {} of {} periods (ratio {}, limit {} cores, {} s throttled)",
                        txt(&r["throttled_periods"]),
                        txt(&r["total_periods"]),
                        txt(&r["ratio"]),
                        txt(&r["cpu_limit_cores"]),
                        txt(&r["throttled_seconds"])
                    )),
                    _ => Seen::Nothing(String::new()),
                },
            )],
            wait_secs,
            workload: format!("a busy loop under 10000/100000 us in {limit}{sampled}"),
        })
    }
}

/// The names of cgroup files written (`memory.max`: v2; `memory.limit_in_bytes`: v1).
fn file_names(files: &[std::path::PathBuf]) -> String {
    files
        .iter()
        .filter_map(|f| f.file_name())
        .map(|f| f.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A JSON value as text: strings without their quotes.
fn txt(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

/// The records among `recs` whose destination is `dst`.
fn to<'v>(recs: Vec<&'v Value>, dst: &str) -> Vec<&'v Value> {
    recs.into_iter().filter(|r| r["dst"] == dst).collect()
}

/// Records of one kind (resource kinds have no direction).
fn of_kind<'v>(answer: &'v Value, kind: &str) -> Vec<&'v Value> {
    answer["evidence"]
        .as_array()
        .map(|a| a.iter().filter(|e| e["kind"] == kind).collect())
        .unwrap_or_default()
}

/// DNS records with an outcome.
fn dns_with<'v>(answer: &'v Value, outcome: &str) -> Vec<&'v Value> {
    records(answer, "dns", "outbound")
        .into_iter()
        .filter(|r| r["outcome"] == outcome)
        .collect()
}

/// A drop by the bridge rule is NETFILTER_DROP; without drop reasons (before 5.17) the agent
/// records UNKNOWN (and where the packet was freed).
fn judge_drop(drops: &[&Value], dst: &str) -> Seen {
    let reason = |r: &&&Value| r["reason"].as_str().unwrap_or("").to_owned();
    if let Some(r) = drops.iter().find(|r| reason(r) == "NETFILTER_DROP") {
        return Seen::Full(format!(
            "{} drop(s) to {dst} (reason NETFILTER_DROP, tcp_flags {}, attribution {})",
            count_of(drops),
            txt(&r["tcp_flags"]),
            txt(&r["attribution"])
        ));
    }
    // Without reasons (before 5.17) the reduced form names where netfilter freed the packet:
    // any other location is not the drop the rule made.
    if let Some(r) = drops.iter().find(|r| {
        matches!(reason(r).as_str(), "" | "UNKNOWN")
            && r["location"]
                .as_str()
                .is_some_and(|l| l.starts_with("nf_hook_slow+"))
    }) {
        return Seen::Reduced(format!(
            "{} drop(s) to {dst} recorded without a reason ({}, location {}, attribution {})",
            count_of(drops),
            txt(&r["reason"]),
            txt(&r["location"]),
            txt(&r["attribution"])
        ));
    }
    match drops.first() {
        None => Seen::Nothing(String::new()),
        Some(r) => Seen::Wrong(format!(
            "drop(s) to {dst} recorded with reason {}, not NETFILTER_DROP",
            txt(&r["reason"])
        )),
    }
}

/// The kill of the worker child `child`: by the kernel's event, naming it and saying it was
/// not the container's first process. A kill only the cgroup's counter saw is the reduced form.
fn judge_oom(answer: &Value, child: u64) -> Seen {
    let kills = of_kind(answer, "oom_kill");
    let describe = |r: &Value| {
        format!(
            "{} (pid {}) killed, main_process {}, limit {}, source {}",
            txt(&r["process"]["comm"]),
            txt(&r["process"]["pid"]),
            txt(&r["main_process"]),
            txt(&r["memory_limit_bytes"]),
            txt(&r["source"])
        )
    };
    if let Some(r) = kills
        .iter()
        .find(|r| r["process"]["pid"].as_u64() == Some(child))
    {
        return match r["main_process"].as_bool() {
            Some(false) => Seen::Full(describe(r)),
            Some(true) => Seen::Wrong(format!(
                "the worker child taken for the main process: {}",
                describe(r)
            )),
            None => Seen::Reduced(format!(
                "{}: whether it was the main process is unknown",
                describe(r)
            )),
        };
    }
    if let Some(r) = kills
        .iter()
        .find(|r| r["process"].is_null() || r["source"] == "counter")
    {
        return Seen::Reduced(format!(
            "an OOM kill counted by the cgroup without its victim (source {}, count {})",
            txt(&r["source"]),
            txt(&r["count"])
        ));
    }
    match kills.first() {
        None => Seen::Nothing(String::new()),
        Some(r) => Seen::Wrong(format!(
            "the kill names another process than the worker child {child}: {}",
            describe(r)
        )),
    }
}

/// What a workload run printed, counted by first word: `refused x3`.
fn outcomes(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    let mut counts: Vec<(String, usize)> = Vec::new();
    for word in text.lines().filter_map(|l| l.split_whitespace().next()) {
        match counts.iter_mut().find(|(w, _)| w == word) {
            Some((_, n)) => *n += 1,
            None => counts.push((word.to_owned(), 1)),
        }
    }
    if counts.is_empty() {
        return "nothing".to_owned();
    }
    counts
        .iter()
        .map(|(w, n)| format!("{w} x{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
