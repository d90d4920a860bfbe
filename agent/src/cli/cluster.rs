//! The cluster as the CLI sees it, through the user's kubeconfig (so the user's RBAC applies):
//! the kube client (`KUBECONFIG`, `--kubeconfig`, `--context`, in-cluster), the agent
//! DaemonSet's pods and their nodes, the node of the pod asked about (and, for a pod that moved,
//! of its earlier incarnations), and a gRPC connection to an agent pod through the API
//! server's `pods/portforward` subresource, so the agent's port stays on its loopback.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::{
    Api,
    api::ListParams,
    config::{KubeConfigOptions, Kubeconfig},
};

/// How to reach the cluster: kubectl's flags and habits.
#[derive(Clone, Debug)]
pub struct ClusterArgs {
    pub kubeconfig: Option<std::path::PathBuf>,
    pub context: Option<String>,
    /// The kubeconfig's cluster and user, instead of the context's.
    pub cluster: Option<String>,
    pub user: Option<String>,
    /// Impersonation (`--as`, `--as-group`).
    pub impersonate: Option<String>,
    pub impersonate_groups: Vec<String>,
    /// One request's bound (`--request-timeout`, [`API_TIMEOUT`] by default; zero: none).
    pub request_timeout: Duration,
}

/// Where the agent DaemonSet's pods are; the defaults match deploy/.
#[derive(Clone, Debug)]
pub struct AgentSelector {
    pub namespace: String,
    pub selector: String,
    /// The agent's gRPC port inside its pod.
    pub port: u16,
}

/// Namespace of the DaemonSet in deploy/.
pub const DEFAULT_AGENT_NAMESPACE: &str = "triage-agent";
/// Label of the DaemonSet's pods in deploy/.
pub const DEFAULT_AGENT_SELECTOR: &str = "app.kubernetes.io/name=triage-agent";

/// How long one API request may take before the cluster counts as unreachable, by default.
pub const API_TIMEOUT: Duration = Duration::from_secs(10);

/// `--request-timeout`, set by [`client`] from the command's flags (one process runs one
/// command); zero: no bound.
static REQUEST_TIMEOUT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

/// Why the cluster could not tell what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No usable kubeconfig, context or in-cluster configuration.
    #[error("{detail}")]
    Config { detail: String },
    /// The API server refused the request (RBAC: 401/403) or failed it.
    #[error("{detail}")]
    Api { code: u16, detail: String },
    /// The API server could not be reached.
    #[error("cannot reach the API server: {detail}")]
    Unreachable { detail: String },
    /// What was asked about does not exist.
    #[error("{what} not found")]
    NotFound { what: String },
}

/// The innermost cause of an error, which is what a user can act on, on one line (a YAML
/// parser's message carries a multi-line excerpt of the file after its first line).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    let text = cur.to_string();
    text.lines()
        .next()
        .unwrap_or_default()
        .trim_end()
        .to_owned()
}

/// A kube-rs error as one line: the API server's own message for a Status.
pub fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if !s.message.is_empty() => s.message.clone(),
        kube::Error::Api(s) => format!("the API server answered {}", s.code),
        other => root_cause(other),
    }
}

fn api_error(e: kube::Error) -> ClusterError {
    match e {
        kube::Error::Api(s) => ClusterError::Api {
            code: s.code,
            detail: if s.message.is_empty() {
                format!("the API server answered {}", s.code)
            } else {
                s.message.clone()
            },
        },
        other => ClusterError::Unreachable {
            detail: root_cause(&other),
        },
    }
}

/// One API request, bounded in time.
pub(super) async fn bounded<T>(
    f: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, ClusterError> {
    let limit = REQUEST_TIMEOUT.get().copied().unwrap_or(API_TIMEOUT);
    if limit.is_zero() {
        return f.await.map_err(api_error);
    }
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(api_error),
        Err(_) => Err(ClusterError::Unreachable {
            detail: format!(
                "no answer within {} (--request-timeout)",
                humantime::format_duration(limit)
            ),
        }),
    }
}
/// The client kubectl would use: `--kubeconfig` (else `KUBECONFIG`, else `~/.kube/config`),
/// its `--context` (else the current one); in-cluster when there is no kubeconfig at all.
pub async fn client(args: &ClusterArgs) -> Result<kube::Client, ClusterError> {
    let _ = REQUEST_TIMEOUT.set(args.request_timeout);
    let mut config = config(args).await?;
    if let Some(user) = &args.impersonate {
        config.auth_info.impersonate = Some(user.clone());
        if !args.impersonate_groups.is_empty() {
            config.auth_info.impersonate_groups = Some(args.impersonate_groups.clone());
        }
    }
    kube::Client::try_from(config).map_err(|e| ClusterError::Config {
        detail: root_cause(&e),
    })
}

/// The namespace kubectl would use without `-n`: the context's (or, in a pod, its own), else
/// "default"; also "default" when there is no usable kubeconfig (the agents may be named
/// with `--agent`).
pub async fn default_namespace(args: &ClusterArgs) -> String {
    config(args)
        .await
        .map(|c| c.default_namespace)
        .unwrap_or_else(|_| "default".to_owned())
}

/// The configuration [`client`] is made from.
async fn config(args: &ClusterArgs) -> Result<kube::Config, ClusterError> {
    let config_error = |detail: String| ClusterError::Config { detail };
    let kubeconfig = match &args.kubeconfig {
        Some(path) => Some(Kubeconfig::read_from(path).map_err(|e| {
            config_error(format!("kubeconfig {}: {}", path.display(), root_cause(&e)))
        })?),
        None => match Kubeconfig::read() {
            Ok(k) => Some(k),
            // No kubeconfig anywhere: in a pod, the in-cluster configuration.
            Err(kube::config::KubeconfigError::FindPath) => None,
            Err(e) => return Err(config_error(format!("kubeconfig: {}", root_cause(&e)))),
        },
    };
    let config = match kubeconfig {
        Some(kubeconfig) => {
            if let Some(context) = &args.context
                && !kubeconfig.contexts.iter().any(|c| &c.name == context)
            {
                let known: Vec<&str> = kubeconfig
                    .contexts
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect();
                return Err(config_error(format!(
                    "context {context:?} not found in the kubeconfig (contexts: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                )));
            }
            for (what, given, known) in [
                (
                    "cluster",
                    &args.cluster,
                    kubeconfig
                        .clusters
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>(),
                ),
                (
                    "user",
                    &args.user,
                    kubeconfig
                        .auth_infos
                        .iter()
                        .map(|u| u.name.as_str())
                        .collect(),
                ),
            ] {
                if let Some(given) = given
                    && !known.contains(&given.as_str())
                {
                    return Err(config_error(format!(
                        "{what} {given:?} not found in the kubeconfig ({what}s: {})",
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    )));
                }
            }
            let options = KubeConfigOptions {
                context: args.context.clone(),
                cluster: args.cluster.clone(),
                user: args.user.clone(),
            };
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| config_error(format!("kubeconfig: {}", root_cause(&e))))?
        }
        None if args.context.is_some() => {
            return Err(config_error(
                "--context given but no kubeconfig found (set KUBECONFIG or --kubeconfig)".into(),
            ));
        }
        None => kube::Config::incluster().map_err(|e| {
            config_error(format!(
                "no kubeconfig (set KUBECONFIG or --kubeconfig) and not in a cluster: {}",
                root_cause(&e)
            ))
        })?,
    };
    Ok(config)
}

/// An agent pod of the DaemonSet, reached through `pods/portforward`.
#[derive(Clone)]
pub struct AgentPod {
    pub node: String,
    pub namespace: String,
    pub name: String,
    pub port: u16,
    pub client: kube::Client,
}

impl std::fmt::Debug for AgentPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentPod")
            .field("node", &self.node)
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// The agent pod of each node, by node name. Of several on one node (a rolling update), the
/// running one, else the newest.
pub async fn agent_pods(
    client: &kube::Client,
    agents: &AgentSelector,
) -> Result<BTreeMap<String, AgentPod>, ClusterError> {
    let api = Api::<Pod>::namespaced(client.clone(), &agents.namespace);
    let pods = bounded(api.list(&ListParams::default().labels(&agents.selector))).await?;
    let mut by_node: BTreeMap<String, (bool, Option<SystemTime>, AgentPod)> = BTreeMap::new();
    for pod in pods.items {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue; // not scheduled yet
        };
        let Some(name) = pod.metadata.name.clone() else {
            continue;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let running = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Running");
        let created = pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| SystemTime::from(t.0));
        let candidate = AgentPod {
            node: node.clone(),
            namespace: agents.namespace.clone(),
            name,
            port: agents.port,
            client: client.clone(),
        };
        let better = by_node
            .get(&node)
            .is_none_or(|(r, c, _)| (running, created) > (*r, *c));
        if better {
            by_node.insert(node, (running, created, candidate));
        }
    }
    Ok(by_node.into_iter().map(|(n, (_, _, p))| (n, p)).collect())
}

/// The pods a label selector picks, (namespace, name); every namespace when `namespace` is None.
pub async fn pods_by_selector(
    client: &kube::Client,
    namespace: Option<&str>,
    selector: &str,
) -> Result<Vec<(String, String)>, ClusterError> {
    let api = match namespace {
        Some(ns) => Api::<Pod>::namespaced(client.clone(), ns),
        None => Api::<Pod>::all(client.clone()),
    };
    let pods = bounded(api.list(&ListParams::default().labels(selector))).await?;
    Ok(pods
        .items
        .into_iter()
        .filter_map(|p| Some((p.metadata.namespace?, p.metadata.name?)))
        .collect())
}

/// The pod holding `ip` now, as (namespace, name, node) and when it started (status.startTime,
/// else its creation: the API keeps no history of who held an IP before); None when no pod (or
/// a hostNetwork pod, which shares its node's address) holds it.
pub async fn pod_by_ip(
    client: &kube::Client,
    ip: std::net::IpAddr,
) -> Result<Option<((String, String, String), Option<SystemTime>)>, ClusterError> {
    let api = Api::<Pod>::all(client.clone());
    let lp = ListParams::default().fields(&format!("status.podIP={ip}"));
    let pods = bounded(api.list(&lp)).await?;
    Ok(pods.items.into_iter().find_map(|p| {
        let spec = p.spec?;
        if spec.host_network == Some(true) {
            return None;
        }
        let started = p
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .or(p.metadata.creation_timestamp.as_ref())
            .map(|t| SystemTime::from(t.0));
        Some((
            (p.metadata.namespace?, p.metadata.name?, spec.node_name?),
            started,
        ))
    }))
}

/// The nodes a pod ran on: its current node, and with `since`, the nodes earlier pods of the
/// same name were scheduled to inside the window (from the scheduler's `Scheduled` events,
/// when readable). NotFound when the pod neither exists nor left such events.
pub async fn pod_nodes(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    since: Option<SystemTime>,
) -> Result<Vec<String>, ClusterError> {
    let api = Api::<Pod>::namespaced(client.clone(), namespace);
    let current = bounded(api.get_opt(pod)).await?;
    let mut nodes: Vec<String> = current
        .as_ref()
        .and_then(|p| p.spec.as_ref())
        .and_then(|s| s.node_name.clone())
        .into_iter()
        .collect();
    if let Some(since) = since {
        for node in scheduled_nodes(client, namespace, pod, since).await {
            if !nodes.contains(&node) {
                nodes.push(node);
            }
        }
    }
    if current.is_none() && nodes.is_empty() {
        return Err(ClusterError::NotFound {
            what: format!("pod {namespace}/{pod}"),
        });
    }
    Ok(nodes)
}

/// Nodes named by the pod's `Scheduled` events inside the window ("Successfully assigned
/// ns/pod to node"); best effort: events may be unreadable or expired.
async fn scheduled_nodes(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    since: SystemTime,
) -> Vec<String> {
    let api = Api::<Event>::namespaced(client.clone(), namespace);
    let lp = ListParams::default().fields(&format!(
        "involvedObject.kind=Pod,involvedObject.name={pod},reason=Scheduled"
    ));
    let Ok(events) = bounded(api.list(&lp)).await else {
        return Vec::new();
    };
    let mut nodes = Vec::new();
    for e in events.items {
        if event_time(&e).is_some_and(|w| w < since) {
            continue;
        }
        if let Some(node) = e
            .message
            .as_deref()
            .and_then(scheduled_to)
            .filter(|n| !nodes.contains(n))
        {
            nodes.push(node);
        }
    }
    nodes
}

/// The node a `Scheduled` event names: "Successfully assigned ns/pod to NODE".
pub fn scheduled_to(message: &str) -> Option<String> {
    message
        .rsplit_once(" to ")
        .map(|(_, node)| node.trim().to_owned())
        .filter(|n| !n.is_empty())
}

/// When an event last happened: `lastTimestamp`, else `eventTime` (events.k8s.io), else its
/// creation.
pub fn event_time(e: &Event) -> Option<SystemTime> {
    e.last_timestamp
        .as_ref()
        .map(|t| SystemTime::from(t.0))
        .or_else(|| e.event_time.as_ref().map(|t| SystemTime::from(t.0)))
        .or_else(|| {
            e.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| SystemTime::from(t.0))
        })
}

/// Errors the port-forward sent on its error channel, collected so a failed connection can
/// say why (e.g. nothing listens on the agent's port).
pub type ForwardErrors = Arc<Mutex<Vec<BoxFuture<'static, Option<String>>>>>;

/// A gRPC channel to an agent pod through `pods/portforward`; every (re)connection opens a
/// new forward, as `kubectl port-forward` does per connection.
pub async fn forward_channel(
    pod: &AgentPod,
    timeout: Duration,
    errors: &ForwardErrors,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let api = Api::<Pod>::namespaced(pod.client.clone(), &pod.namespace);
    let (name, port, sink) = (pod.name.clone(), pod.port, Arc::clone(errors));
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let (api, name, sink) = (api.clone(), name.clone(), Arc::clone(&sink));
        async move {
            let mut forward = api
                .portforward(&name, &[port])
                .await
                .map_err(|e| std::io::Error::other(describe(&e)))?;
            let stream = forward
                .take_stream(port)
                .ok_or_else(|| std::io::Error::other("port-forward gave no stream"))?;
            if let Some(error) = forward.take_error(port) {
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Box::pin(error));
            }
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    // The authority is never resolved: the connector ignores it.
    tonic::transport::Endpoint::from_static("http://agent.portforward")
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_with_connector(connector)
        .await
}

/// The first error a forward reported, waiting briefly for it to arrive.
pub async fn forward_error(errors: &ForwardErrors) -> Option<String> {
    let pending: Vec<_> =
        std::mem::take(&mut *errors.lock().unwrap_or_else(PoisonError::into_inner));
    for error in pending {
        if let Ok(Some(message)) = tokio::time::timeout(Duration::from_millis(500), error).await {
            return Some(message);
        }
    }
    None
}
