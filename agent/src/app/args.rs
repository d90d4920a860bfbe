//! The command line of the `triage-agent` binary: the node agent (`agent`), `doctor`, shell
//! completion, and the client commands whose arguments and bodies live in [`crate::cli`].

#[cfg(feature = "node-agent")]
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[cfg(feature = "node-agent")]
use crate::cli::DEFAULT_LISTEN;
#[cfg(feature = "cluster")]
use crate::cli::TimelineArgs;
use crate::cli::{QueryArgs, StatusArgs, WatchArgs};

#[derive(Debug, Parser)]
#[command(
    name = "triage-agent",
    version,
    about = "Finds what is silently going wrong with a Kubernetes pod: refused connections, drops, DNS, OOM kills, CPU throttling.",
    long_about = None
)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "triage_agent=debug" [default:
    /// "info" for the agent; for client commands "warn" without kube-rs's own error logs, as
    /// the command reports every failure itself, on one line].
    #[arg(long, global = true, env = "TRIAGE_LOG")]
    pub log: Option<String>,
    /// Log format: text (no colours unless stderr is a terminal) or json (one object per line,
    /// for log pipelines).
    #[arg(long, global = true, env = "TRIAGE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Colours in tables: auto (on a terminal, unless NO_COLOR is set), always, never.
    #[arg(long, global = true, value_enum, default_value_t = crate::cli::render::ColorChoice::Auto)]
    pub color: crate::cli::render::ColorChoice,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a shell completion script, e.g. `source <(triage-agent completion bash)`.
    Completion(CompletionArgs),
    /// Run the node agent (DaemonSet): load the eBPF programs, watch this node's pods, serve gRPC.
    #[cfg(feature = "node-agent")]
    Agent(AgentArgs),
    /// What is silently going wrong with a pod, with a diagnosis and the safest next step.
    Query(QueryArgs),
    /// NetworkPolicy explanations of a pod's drops and timeouts (AdminNetworkPolicy tiers
    /// included): which policy denies them, with a policy that would allow each, to review.
    #[cfg(feature = "cluster")]
    Explain(QueryArgs),
    /// Stream evidence as it is recorded.
    Watch(WatchArgs),
    /// Agent health: probes attached, metadata sync, loss counters.
    Status(StatusArgs),
    /// Check this node for the agent (run on the node, or `kubectl exec` in the agent's pod):
    /// capabilities, BTF, tracefs, cgroups, each program's load and attach (with the
    /// verifier's reason), each signal's mode. Exit 0: every signal full; 3: some degraded;
    /// 4: some off or a check failed.
    #[cfg(feature = "node-agent")]
    Doctor(DoctorArgs),
    /// The incident timeline of a pod, ready to paste into an incident document: evidence,
    /// the pod's events and its owner's rollout history, findings ranked with the safest next
    /// step.
    #[cfg(feature = "cluster")]
    Timeline(TimelineArgs),
}

#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// The name of the kubectl plugin: `kubectl triage-agent` runs `kubectl-triage_agent` from
/// PATH (kubectl maps a `-` in the command to `_` in the file name), and completes it with
/// `kubectl_complete-triage_agent`.
pub const PLUGIN: &str = "kubectl-triage_agent";
/// The completion helper kubectl runs for the plugin (kubectl 1.26+).
pub const PLUGIN_COMPLETION: &str = "kubectl_complete-triage_agent";

fn file_name(argv0: Option<&std::ffi::OsStr>) -> &str {
    argv0
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or_default()
}

/// The command as the user typed it: `kubectl triage-agent` when run as the kubectl plugin
/// (installed as [`PLUGIN`]), else `triage-agent`.
pub fn invoked_as(argv0: Option<&std::ffi::OsStr>) -> &'static str {
    if file_name(argv0) == PLUGIN {
        "kubectl triage-agent"
    } else {
        "triage-agent"
    }
}

/// The words to complete when this run is a completion request: run as [`PLUGIN_COMPLETION`]
/// (every argument), or as `triage-agent __complete ARGS...`.
pub fn completion_request() -> Option<Vec<String>> {
    let mut args = std::env::args_os();
    let argv0 = args.next();
    let words: Vec<String> = args.map(|a| a.to_string_lossy().into_owned()).collect();
    if file_name(argv0.as_deref()) == PLUGIN_COMPLETION {
        return Some(words);
    }
    match words.split_first() {
        Some((first, rest)) if first == "__complete" => Some(rest.to_vec()),
        _ => None,
    }
}

/// Parses the command line, naming the program as it was invoked.
pub fn parse() -> Cli {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let bin = invoked_as(std::env::args_os().next().as_deref());
    let matches = Cli::command().bin_name(bin).get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

#[cfg(feature = "node-agent")]
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Name of the node this agent runs on (the DaemonSet sets NODE_NAME from the downward API).
    /// The agent watches only the pods bound to it (fieldSelector spec.nodeName).
    #[arg(help_heading = "Node and endpoints", long, env = "NODE_NAME", value_parser = parse_node_name)]
    pub node_name: String,
    /// gRPC listen address.
    #[arg(help_heading = "Node and endpoints", long, env = "TRIAGE_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: std::net::SocketAddr,
    /// Most records kept in all. Room is made fairly: whoever is over its quota loses its own
    /// least recently seen records first (every eviction is counted, per pod too).
    #[arg(help_heading = "Evidence store", long, env = "TRIAGE_STORE_CAPACITY", default_value_t = crate::store::DEFAULT_CAPACITY)]
    pub store_capacity: usize,
    /// Most records of one pod [default: capacity / 20].
    #[arg(help_heading = "Evidence store", long, env = "TRIAGE_STORE_POD_QUOTA")]
    pub store_pod_quota: Option<usize>,
    /// Most records of one namespace [default: capacity / 4].
    #[arg(
        help_heading = "Evidence store",
        long,
        env = "TRIAGE_STORE_NAMESPACE_QUOTA"
    )]
    pub store_namespace_quota: Option<usize>,
    /// Most records tied to no pod [default: capacity / 10].
    #[arg(
        help_heading = "Evidence store",
        long,
        env = "TRIAGE_STORE_UNATTRIBUTED_QUOTA"
    )]
    pub store_unattributed_quota: Option<usize>,
    /// Records not seen for this long are evicted, e.g. "24h", "90m".
    #[arg(help_heading = "Evidence store", long, env = "TRIAGE_STORE_MAX_AGE", value_parser = humantime::parse_duration, default_value = "24h")]
    pub store_max_age: Duration,
    /// Keep the evidence in this file too, so it survives restarts and upgrades (SQLite,
    /// written in batches every second: a kill -9 loses at most the last second). Memory only
    /// when not given. An unusable file there is moved aside and a fresh store started.
    #[arg(help_heading = "Evidence store", long, env = "TRIAGE_STORE_PATH")]
    pub store_path: Option<std::path::PathBuf>,
    /// Most bytes the store's file may use, e.g. "256MiB", "1GiB"; over it the oldest records
    /// are evicted (fairly, and counted).
    #[arg(help_heading = "Evidence store", long, env = "TRIAGE_STORE_MAX_BYTES", value_parser = parse_bytes, default_value = "256MiB")]
    pub store_max_bytes: u64,
    /// cgroup2 mount point (found in /proc/self/mountinfo when not given).
    #[arg(help_heading = "Kernel programs", long, env = "TRIAGE_CGROUP_ROOT")]
    pub cgroup_root: Option<std::path::PathBuf>,
    /// Kernel drop reasons to report: "default", "all", a list of names (NETFILTER_DROP,...),
    /// or changes to the default ("+TCP_ZEROWINDOW,-QDISC_DROP"); docs/json.md lists them.
    #[arg(
        help_heading = "Kernel programs",
        long,
        env = "TRIAGE_DROP_REASONS",
        default_value = "default"
    )]
    pub drop_reasons: crate::probes::reasons::DropReasons,
    /// kubelet's --cgroup-root as kubelet was given it (`/kubelet`, or its slice
    /// `/kubelet.slice`): the cgroup that holds `kubepods` (or `kubepods.slice`, or
    /// `kubelet-kubepods.slice` for the systemd driver), the same in every hierarchy.
    /// Containers' cgroups are found under it, and a cgroup is a pod's only right under it; when
    /// not given, `/` for the samplers and a pod level anywhere in a path for attribution.
    #[arg(
        help_heading = "OOM kills and CPU throttling (cgroupfs)",
        long,
        env = "TRIAGE_KUBELET_CGROUP_ROOT"
    )]
    pub kubelet_cgroup_root: Option<std::path::PathBuf>,
    /// The container runtime's CRI socket, read (never written) to name containers' pods
    /// before the API server reports them. Default: the first of
    /// /run/containerd/containerd.sock, /run/crio/crio.sock,
    /// /run/k3s/containerd/containerd.sock (or under /var/run) that exists; "none": not read.
    #[arg(help_heading = "Pod metadata", long, env = "TRIAGE_CRI_SOCKET", value_parser = parse_cri_socket)]
    pub cri_socket: Option<crate::attribute::runtime::CriSocket>,
    /// How often every container's CPU and OOM counters are sampled, e.g. "10s" (100ms to 1h).
    #[arg(help_heading = "OOM kills and CPU throttling (cgroupfs)", long, env = "TRIAGE_SAMPLE_INTERVAL", value_parser = parse_sample_interval, default_value = "10s")]
    pub sample_interval: Duration,
    /// Throttled CFS periods in one sampling interval from which a container is reported
    /// (10 = one second of throttling at the default 100 ms period).
    #[arg(help_heading = "OOM kills and CPU throttling (cgroupfs)", long, env = "TRIAGE_THROTTLE_THRESHOLD", default_value_t = crate::samplers::DEFAULT_THROTTLE_THRESHOLD)]
    pub throttle_threshold: u64,
    /// Prometheus `/metrics` address (its own listener, apart from gRPC); the DaemonSet binds it
    /// to the pod IP. "none" switches it off.
    #[arg(help_heading = "Node and endpoints", long, env = "TRIAGE_METRICS_LISTEN", default_value = crate::metrics::DEFAULT_METRICS_LISTEN, value_parser = crate::metrics::parse_listen)]
    pub metrics_listen: crate::metrics::MetricsListen,
    /// Ports whose UDP and TCP traffic is DNS, comma-separated (at most 8); "none" switches
    /// DNS capture off.
    #[arg(help_heading = "DNS", long = "dns-ports", env = "TRIAGE_DNS_PORTS", default_value = "53", value_parser = parse_dns_ports)]
    pub dns_ports: DnsPorts,
    /// A DNS query with no answer after this long is a `timeout` (glibc waits 5s per try).
    #[arg(help_heading = "DNS", long, env = "TRIAGE_DNS_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub dns_timeout: Duration,
    /// A DNS answer slower than this is `slow`.
    #[arg(help_heading = "DNS", long, env = "TRIAGE_DNS_SLOW", default_value = "1s", value_parser = humantime::parse_duration)]
    pub dns_slow: Duration,
    /// DNS queries awaiting their answer, at most, per pod container and in all; beyond them the
    /// oldest is given up (counted as dns_inflight_evicted).
    #[arg(
        help_heading = "DNS",
        long,
        env = "TRIAGE_DNS_INFLIGHT_PER_POD",
        default_value_t = 1024
    )]
    pub dns_inflight_per_pod: usize,
    /// DNS queries awaiting their answer, at most, in all (see --dns-inflight-per-pod).
    #[arg(
        help_heading = "DNS",
        long,
        env = "TRIAGE_DNS_INFLIGHT",
        default_value_t = 16_384
    )]
    pub dns_inflight: usize,
}

/// `doctor`'s flags: the agent's own flags that change what it loads, with the same defaults
/// and variables.
#[cfg(feature = "node-agent")]
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = DoctorOutput::Table)]
    pub output: DoctorOutput,
    /// The cgroup2 mount the DNS programs attach to (default: the first cgroup2 mount).
    #[arg(long, env = "TRIAGE_CGROUP_ROOT")]
    pub cgroup_root: Option<std::path::PathBuf>,
    /// kubelet's --cgroup-root, where pod cgroups are looked for (default `/`).
    #[arg(long, env = "TRIAGE_KUBELET_CGROUP_ROOT")]
    pub kubelet_cgroup_root: Option<std::path::PathBuf>,
    /// Drop reasons to report, as the agent's --drop-reasons.
    #[arg(long, env = "TRIAGE_DROP_REASONS", default_value = "default")]
    pub drop_reasons: crate::probes::reasons::DropReasons,
    /// DNS ports, as the agent's --dns-ports ("none": no DNS capture).
    #[arg(long = "dns-ports", env = "TRIAGE_DNS_PORTS", default_value = "53", value_parser = parse_dns_ports)]
    pub dns_ports: DnsPorts,
    /// The container runtime's CRI socket, as the agent's --cri-socket (default: the usual
    /// paths; "none").
    #[arg(long, env = "TRIAGE_CRI_SOCKET", value_parser = parse_cri_socket)]
    pub cri_socket: Option<crate::attribute::runtime::CriSocket>,
}

/// `doctor` output formats.
#[cfg(feature = "node-agent")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DoctorOutput {
    Table,
    Json,
}

/// A size in bytes: a number with an optional unit (B, KiB, MiB, GiB, or KB, MB, GB).
#[cfg(feature = "node-agent")]
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 256MiB)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "Ki" => 1 << 10,
        "MiB" | "Mi" => 1 << 20,
        "GiB" | "Gi" => 1 << 30,
        "KB" | "K" => 1_000,
        "MB" | "M" => 1_000_000,
        "GB" | "G" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (B, KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    n.checked_mul(mult)
        .filter(|b| *b > 0)
        .ok_or_else(|| format!("{s:?} is not a usable size"))
}

/// The DNS ports of `--dns-ports`.
#[cfg(feature = "node-agent")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsPorts(pub Vec<u16>);

/// `--sample-interval`: a duration between 100 ms (each sweep reads every container's files)
/// and an hour (a longer one hides throttling in its average).
#[cfg(feature = "node-agent")]
pub fn parse_sample_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&d) {
        return Err(format!("{s}: must be between 100ms and 1h"));
    }
    Ok(d)
}

/// A node name as Kubernetes allows it (a DNS subdomain: at most 253 lowercase letters,
/// digits, `-` and `.`, alphanumeric at both ends). It goes into the pod watch's field
/// selector, so nothing else may: an empty name would select the unscheduled pods instead, and
/// a comma or `!=` would add terms that widen what the agent receives.
#[cfg(feature = "node-agent")]
pub fn parse_node_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.split('.')
            .all(|label| !label.is_empty() && !label.starts_with('-') && !label.ends_with('-'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{:?} is not a Kubernetes node name (lowercase letters, digits, '-' and '.'; set NODE_NAME from spec.nodeName)",
            crate::text::clean(s)
        ))
    }
}

#[cfg(feature = "node-agent")]
fn parse_dns_ports(s: &str) -> Result<DnsPorts, String> {
    if s.trim() == "none" {
        return Ok(DnsPorts(Vec::new()));
    }
    let mut ports = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let port: u16 = part
            .parse()
            .map_err(|_| format!("{part:?} is not a port number"))?;
        if port == 0 {
            return Err("port 0 is not a DNS port".into());
        }
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    let max = triage_agent_common::DNS_PORTS_MAX;
    if ports.len() > max {
        return Err(format!("at most {max} DNS ports"));
    }
    if ports.is_empty() {
        return Err("no port given (use \"none\" to switch DNS capture off)".into());
    }
    Ok(DnsPorts(ports))
}

/// `--cri-socket`: a path, or "none".
#[cfg(feature = "node-agent")]
fn parse_cri_socket(s: &str) -> Result<crate::attribute::runtime::CriSocket, String> {
    use crate::attribute::runtime::CriSocket;
    match s {
        "" => Err("empty: give the socket's path, or \"none\"".to_owned()),
        "none" => Ok(CriSocket::Off),
        path if path.starts_with('/') => Ok(CriSocket::Path(path.into())),
        other => Err(format!("{other:?} is not an absolute path (or \"none\")")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::{cli::parse_agent, evidence::Kind};
    use clap::CommandFactory as _;

    #[cfg(feature = "node-agent")]
    #[test]
    fn the_sample_interval_is_bounded_and_absurd_ones_are_refused() {
        assert_eq!(parse_sample_interval("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(
            parse_sample_interval("100ms"),
            Ok(Duration::from_millis(100))
        );
        assert!(
            parse_sample_interval("1ms")
                .unwrap_err()
                .contains("between")
        );
        assert!(parse_sample_interval("2h").unwrap_err().contains("between"));
        // Before the bound it parsed, and the sampler's first deadline overflowed (a panic).
        assert!(parse_sample_interval("500000000years").is_err());
        assert!(parse_sample_interval("soon").is_err());
    }

    #[cfg(feature = "node-agent")]
    #[test]
    fn the_node_name_is_one_selector_term() {
        for good in ["node-a", "ip-10-0-0-1.eu-west-1.compute.internal", "n1"] {
            assert_eq!(parse_node_name(good).as_deref(), Ok(good));
        }
        for bad in [
            "",
            "Node",
            "a,spec.nodeName!=a",
            "a=b",
            "-a",
            "a..b",
            " a",
            "a\n",
        ] {
            assert!(parse_node_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[cfg(feature = "node-agent")]
    #[test]
    fn sizes_parse_with_units_and_bad_ones_are_clear() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("256MiB"), Ok(256 << 20));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("10MB"), Ok(10_000_000));
        assert!(parse_bytes("lots").unwrap_err().contains("not a size"));
        assert!(
            parse_bytes("5PiB")
                .unwrap_err()
                .contains("unknown size unit")
        );
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("99999999999GiB").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every agent flag can also be set by an environment variable (a DaemonSet sets env).
    #[cfg(feature = "node-agent")]
    #[test]
    fn every_agent_flag_has_an_environment_variable() {
        let cli = Cli::command();
        let agent = cli
            .find_subcommand("agent")
            .unwrap_or_else(|| unreachable!("the agent subcommand exists"));
        let missing: Vec<String> = agent
            .get_arguments()
            .filter(|a| a.get_long().is_some_and(|l| l != "help" && l != "version"))
            .filter(|a| a.get_env().is_none())
            .map(|a| a.get_id().to_string())
            .collect();
        assert!(missing.is_empty(), "flags without env: {missing:?}");
        let ungrouped: Vec<String> = agent
            .get_arguments()
            .filter(|a| a.get_long().is_some_and(|l| l != "help" && l != "version"))
            .filter(|a| !a.is_global_set() && a.get_help_heading().is_none())
            .map(|a| a.get_id().to_string())
            .collect();
        assert!(
            ungrouped.is_empty(),
            "flags without a --help group: {ungrouped:?}"
        );
    }

    /// Every agent flag's value type matches its field (clap checks that only at parse time).
    #[cfg(feature = "node-agent")]
    #[test]
    fn agent_flags_parse_with_defaults_and_values() {
        use clap::Parser as _;
        let parse = |extra: &[&str]| {
            let mut args = vec!["triage-agent", "agent", "--node-name", "n"];
            args.extend_from_slice(extra);
            match Cli::try_parse_from(args).map(|c| c.command) {
                Ok(Command::Agent(a)) => a,
                Ok(_) => panic!("not the agent command"),
                Err(e) => panic!("{e}"),
            }
        };
        let a = parse(&[]);
        assert_eq!(
            a.metrics_listen.0,
            Some("127.0.0.1:9743".parse().unwrap_or_else(|_| unreachable!()))
        );
        assert_eq!(a.dns_ports, DnsPorts(vec![53]));
        let a = parse(&[
            "--metrics-listen",
            "none",
            "--dns-ports",
            "53,5353",
            "--dns-timeout",
            "2s",
        ]);
        assert_eq!(a.metrics_listen.0, None);
        assert_eq!(a.store_path, None);
        assert_eq!(a.store_max_bytes, 256 << 20);
        assert_eq!(a.dns_ports, DnsPorts(vec![53, 5353]));
        assert_eq!(a.dns_timeout, Duration::from_secs(2));
        assert!(
            Cli::try_parse_from([
                "triage-agent",
                "agent",
                "--node-name",
                "n",
                "--dns-ports",
                "0"
            ])
            .is_err()
        );
        assert!(
            Cli::try_parse_from([
                "triage-agent",
                "agent",
                "--node-name",
                "n",
                "--metrics-listen",
                "x"
            ])
            .is_err()
        );
    }

    #[test]
    fn agent_addresses() {
        assert_eq!(
            parse_agent("10.0.0.1:9000").unwrap(),
            "http://10.0.0.1:9000"
        );
        assert_eq!(parse_agent("node-a").unwrap(), "http://node-a:9742");
        assert_eq!(
            parse_agent("http://localhost:1").unwrap(),
            "http://localhost:1"
        );
        assert_eq!(parse_agent("[fd00::1]:5").unwrap(), "http://[fd00::1]:5");
        assert_eq!(parse_agent("[fd00::1]").unwrap(), "http://[fd00::1]:9742");
        assert!(parse_agent("host:notaport").is_err());
        assert!(parse_agent("").is_err());
        assert!(parse_agent("https://x:1").is_err());
        assert!(parse_agent("x:1/path").is_err());
    }

    #[test]
    fn query_requires_pod_and_finds_agents_without_agent() {
        assert!(Cli::try_parse_from(["triage-agent", "query", "--agent", "a:1"]).is_err());
        // Without its TRIAGE_AGENTS binding, so the result cannot depend on the environment.
        let no_env = Cli::command()
            .mut_subcommand("query", |q| q.mut_arg("agents", |a| a.env(None::<&str>)));
        assert!(
            no_env
                .clone()
                .try_get_matches_from(["triage-agent", "query", "--pod", "p"])
                .is_ok(),
            "without --agent the agents are discovered"
        );
        for fan_out in [
            &["-A"][..],
            &["-n", "shop"],
            &["-n", "shop", "-l", "app=web"],
        ] {
            let args = [&["triage-agent", "query"][..], fan_out].concat();
            assert!(
                no_env.clone().try_get_matches_from(&args).is_ok(),
                "{args:?}"
            );
        }
        for wrong in [
            &["-A", "-n", "x"][..],
            &["--pod", "p", "-l", "a=b"],
            &["-A", "--pod", "p"],
        ] {
            let args = [&["triage-agent", "query"][..], wrong].concat();
            assert!(
                no_env.clone().try_get_matches_from(&args).is_err(),
                "{args:?}"
            );
        }
        let cli = Cli::try_parse_from([
            "triage-agent",
            "query",
            "--pod",
            "p",
            "-n",
            "ns",
            "--agent",
            "a:1",
            "--agent",
            "b:2",
            "-o",
            "json",
            "--since",
            "5m",
            "--kind",
            "dns",
        ])
        .unwrap();
        let Command::Query(q) = cli.command else {
            panic!("query")
        };
        assert_eq!(q.agents.agents, vec!["http://a:1", "http://b:2"]);
        assert_eq!(
            q.since,
            Some(crate::cli::select::When::Ago(Duration::from_secs(300)))
        );
        assert_eq!(q.kinds, vec![Kind::Dns]);
        assert!(
            Cli::try_parse_from([
                "triage-agent",
                "query",
                "--pod",
                "p",
                "--agent",
                "a:1",
                "--kind",
                "nope"
            ])
            .is_err()
        );
    }
}
