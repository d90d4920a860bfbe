//! The client commands `query`, `explain`, `watch`, `status` and `timeline`: their arguments,
//! their bodies ([`commands`]), how they find and ask the node agents over gRPC ([`client`],
//! [`targets`], [`cluster`]) and how they print the answers ([`render`], [`timeline`]).

pub mod client;
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod commands;
pub mod complete;
pub mod exit;
#[cfg(feature = "cluster")]
pub mod explain;
pub mod output;
pub mod peers;
pub mod render;
pub mod select;
pub mod subject;
pub mod targets;
pub mod timeline;

use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::evidence::Kind;

/// Default gRPC port of the node agent. Listens on loopback by default: in a cluster it is
/// reached through `kubectl port-forward`, so Kubernetes RBAC is the access control.
pub const DEFAULT_PORT: u16 = 9742;
/// Default listen address of the node agent.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9742";
/// Namespace of the agent DaemonSet in deploy/.
pub const DEFAULT_AGENT_NAMESPACE: &str = "triage-agent";
/// Label selector of the agent DaemonSet's pods in deploy/.
pub const DEFAULT_AGENT_SELECTOR: &str = "app.kubernetes.io/name=triage-agent";
/// How long `watch` keeps reconnecting to an agent that does not answer, by default.
pub const DEFAULT_GIVE_UP: Duration = Duration::from_secs(60);
/// The window of `query` when `--since` is not given.
pub const DEFAULT_SINCE: Duration = Duration::from_secs(3600);

/// Where the node agents are: found through the kubeconfig (the DaemonSet's pods, reached
/// through the API server's pods/portforward), or given with `--agent`.
#[derive(Debug, Args)]
pub struct AgentsArgs {
    /// A node agent's gRPC address, HOST:PORT (default port 9742); repeat for several nodes.
    /// Without it, the agents are found through the kubeconfig and reached through the API
    /// server (pods/portforward).
    #[arg(long = "agent", env = "TRIAGE_AGENTS", value_delimiter = ',', value_parser = parse_agent)]
    pub agents: Vec<String>,
    /// Give up on an agent after this long, e.g. "5s".
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub timeout: Duration,
    /// Path to the kubeconfig file (default: KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long)]
    pub context: Option<String>,
    /// The kubeconfig cluster to use (instead of the context's).
    #[arg(long)]
    pub cluster: Option<String>,
    /// The kubeconfig user to use (instead of the context's).
    #[arg(long)]
    pub user: Option<String>,
    /// Act as this user (impersonation, as kubectl --as).
    #[arg(long = "as", value_name = "USER")]
    pub impersonate: Option<String>,
    /// Act as this group too (repeatable, as kubectl --as-group).
    #[arg(long = "as-group", value_name = "GROUP", requires = "impersonate")]
    pub impersonate_groups: Vec<String>,
    /// Give up on one API server request after this long, e.g. "10s" ("0": no limit).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub request_timeout: Duration,
    /// Namespace of the agent DaemonSet.
    #[arg(long, env = "TRIAGE_AGENT_NAMESPACE", default_value = DEFAULT_AGENT_NAMESPACE)]
    pub agent_namespace: String,
    /// Label selector of the agent DaemonSet's pods.
    #[arg(long, env = "TRIAGE_AGENT_SELECTOR", default_value = DEFAULT_AGENT_SELECTOR)]
    pub agent_selector: String,
    /// The agents' gRPC port inside their pods.
    #[arg(long, env = "TRIAGE_AGENT_PORT", default_value_t = DEFAULT_PORT)]
    pub agent_port: u16,
}

impl AgentsArgs {
    /// How to reach the cluster, from these flags.
    #[cfg(feature = "cluster")]
    pub fn cluster(&self) -> cluster::ClusterArgs {
        cluster::ClusterArgs {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
            cluster: self.cluster.clone(),
            user: self.user.clone(),
            impersonate: self.impersonate.clone(),
            impersonate_groups: self.impersonate_groups.clone(),
            request_timeout: self.request_timeout,
        }
    }
}

pub use output::Output;

#[derive(Debug, Args)]
#[command(group(
    clap::ArgGroup::new("which")
        .required(true)
        .multiple(true)
        .args(["subject", "pod", "namespace", "all_namespaces", "selector"])
))]
pub struct QueryArgs {
    /// What to ask about: a pod (`web-7c9f-abcde`, `pod/NAME`), a workload's pods, current
    /// and earlier ones inside the window (`deploy/web`, `sts/db`, `ds/NAME`, `job/NAME`,
    /// `rs/NAME`), or `NAMESPACE/NAME`. In -n's namespace; without -n, the kubeconfig
    /// context's, as kubectl.
    #[arg(value_name = "TYPE/NAME", conflicts_with = "pod")]
    pub subject: Option<String>,
    /// Pod name (as the subject argument).
    #[arg(long)]
    pub pod: Option<String>,
    /// Namespace: of --pod; without --pod, every pod of it (every agent is asked).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Every namespace (every agent is asked).
    #[arg(short = 'A', long, conflicts_with_all = ["namespace", "pod", "subject"])]
    pub all_namespaces: bool,
    /// Only pods matching this label selector (with -n or -A), e.g. "app=web".
    #[arg(short = 'l', long, conflicts_with_all = ["pod", "subject"])]
    pub selector: Option<String>,
    /// Only evidence seen since then: a duration back ("15m", "2h") or an RFC 3339 time
    /// [default: 1h]. Given, the nodes earlier pods of this name ran on are asked too (a pod
    /// that moved).
    #[arg(long, value_parser = select::parse_when)]
    pub since: Option<select::When>,
    /// Only evidence first seen before then: a duration back ("10m") or an RFC 3339 time (a
    /// record seen across it counts every occurrence it aggregates).
    #[arg(long, value_parser = select::parse_when)]
    pub until: Option<select::When>,
    #[command(flatten)]
    pub filters: select::RecordFilters,
    /// Watch instead: stream the subject's evidence as it is recorded (`watch`, as kubectl
    /// get -w).
    #[arg(short = 'w', long, conflicts_with_all = ["selector", "since", "until", "all_nodes"])]
    pub watch: bool,
    /// Only these kinds (repeatable): connection_refused, connection_timeout, packet_drop, dns, oom_kill, cpu_throttling.
    #[arg(long = "kind")]
    pub kinds: Vec<Kind>,
    /// Output format: table, wide, json, yaml, jsonpath=TEMPLATE (kubectl's, e.g.
    /// '{.evidence[*].kind}'), custom-columns=NAME:PATH,... (a row per record), over the JSON
    /// of -o json.
    #[arg(short = 'o', long, value_name = "FORMAT", value_parser = output::parse_output, default_value = "table")]
    pub output: Output,
    /// Tables without their header row.
    #[arg(long)]
    pub no_headers: bool,
    /// Ask every agent, not only those of the pod's nodes (a pod whose node is unknown, or
    /// evidence on other nodes that names it).
    #[arg(long)]
    pub all_nodes: bool,
    #[command(flatten)]
    pub agents: AgentsArgs,
    /// Do not read NetworkPolicies (and the other policy kinds) to explain drops and timeouts.
    #[arg(long)]
    pub no_explain: bool,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Only this pod, or this workload's pods (`deploy/web`, `sts/db`, ...), as `query`'s.
    #[arg(value_name = "TYPE/NAME", conflicts_with = "pod")]
    pub subject: Option<String>,
    /// Only this pod.
    #[arg(long)]
    pub pod: Option<String>,
    /// Only this namespace (with --pod: the pod's namespace; without -n, the kubeconfig
    /// context's, as kubectl).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Every namespace (the default without -n), records tied to no pod included.
    #[arg(short = 'A', long, conflicts_with_all = ["namespace", "pod", "subject"])]
    pub all_namespaces: bool,
    /// Only these kinds (repeatable).
    #[arg(long = "kind")]
    pub kinds: Vec<Kind>,
    #[command(flatten)]
    pub filters: select::RecordFilters,
    /// Output format: a line per update (table), a JSON object per line (json), a YAML
    /// document per update (yaml), or jsonpath=TEMPLATE / custom-columns=NAME:PATH,... applied
    /// to each update's JSON.
    #[arg(short = 'o', long, value_name = "FORMAT", value_parser = output::parse_output, default_value = "table")]
    pub output: Output,
    /// Stop watching an agent that stays unreachable this long (its stream is reconnected
    /// with backoff until then, e.g. across an agent restart).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub give_up_after: Duration,
    #[command(flatten)]
    pub agents: AgentsArgs,
}

/// Formats of `timeline`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TimelineFormat {
    /// The incident template, in Markdown.
    Markdown,
    Json,
    Yaml,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["subject", "pod"])))]
pub struct TimelineArgs {
    /// The pod: `NAME`, `pod/NAME` or `NAMESPACE/NAME`.
    #[arg(value_name = "POD")]
    pub subject: Option<String>,
    /// Pod name (as the subject argument).
    #[arg(long)]
    pub pod: Option<String>,
    /// Pod namespace (default: the kubeconfig context's, as kubectl).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// How far back, e.g. "1h", "30m"; earlier pods of this name inside it are included.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    pub since: Duration,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = TimelineFormat::Markdown)]
    pub output: TimelineFormat,
    /// Ask every agent, not only those of the pod's nodes.
    #[arg(long)]
    pub all_nodes: bool,
    #[command(flatten)]
    pub agents: AgentsArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Output format: a row per agent, problems first (wide: every agent's detail too); json,
    /// yaml, jsonpath=TEMPLATE, custom-columns=NAME:PATH,... (a row per agent).
    #[arg(short = 'o', long, value_name = "FORMAT", value_parser = output::parse_output, default_value = "table")]
    pub output: Output,
    /// Tables without their header row.
    #[arg(long)]
    pub no_headers: bool,
    #[command(flatten)]
    pub agents: AgentsArgs,
}

/// Accepts HOST:PORT, HOST (default port) or an http:// URL; returns the URL tonic wants.
pub fn parse_agent(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty agent address".into());
    }
    let rest = s.strip_prefix("http://").unwrap_or(s);
    if rest.contains('/') || s.starts_with("https://") {
        return Err(format!("{s:?}: expected HOST:PORT"));
    }
    let with_port = match rest.rsplit_once(':') {
        Some((_, port)) if !rest.ends_with(']') && !port.contains(']') => {
            port.parse::<u16>()
                .map_err(|_| format!("{s:?}: bad port {port:?}"))?;
            rest.to_owned()
        }
        _ => format!("{rest}:{DEFAULT_PORT}"),
    };
    Ok(format!("http://{with_port}"))
}
