//! Which agents a command asks and how their answers are gathered: `--agent` addresses, or
//! the DaemonSet's pods found through the kubeconfig (the pod's nodes, every node, the other
//! side of a pod's flows), fanned out with a progress line on a terminal; no answer at all is
//! the one-line error (exit 4), a partial answer the warning (exit 3).

use std::time::SystemTime;

use super::{
    client,
    exit::{self, Exit},
    render,
};
use crate::{cli, evidence::Filter};

/// Which agents a command asks.
#[cfg_attr(
    not(feature = "cluster"),
    expect(
        dead_code,
        reason = "without Kubernetes support only --agent targets exist"
    )
)]
pub(super) enum Scope {
    /// The agents of the nodes a pod ran on.
    Pod {
        namespace: String,
        name: String,
        /// With `--since`: also the nodes of earlier pods of this name inside the window.
        earlier: Option<SystemTime>,
    },
    /// The agents of these nodes (a workload's pods ran there).
    Nodes(Vec<String>),
    AllNodes,
}

/// A cluster error as the command's exit: NotFound is exit 6, the rest exit 5.
#[cfg(feature = "cluster")]
pub(super) fn cluster_exit(e: cli::cluster::ClusterError) -> anyhow::Error {
    let code = match e {
        cli::cluster::ClusterError::NotFound { .. } => exit::NOT_FOUND,
        _ => exit::CLUSTER,
    };
    anyhow::Error::from(Exit {
        code,
        message: e.to_string(),
    })
}

/// The pods of a workload inside the window, and the nodes they ran on; a workload that has
/// no pods and created none inside the window is exit 6.
#[cfg(feature = "cluster")]
pub(super) async fn workload_pods(
    agents: &cli::AgentsArgs,
    namespace: &str,
    kind: cli::subject::WorkloadKind,
    name: &str,
    since: SystemTime,
) -> anyhow::Result<cli::subject::Resolved> {
    let kube = cli::cluster::client(&agents.cluster())
        .await
        .map_err(cluster_exit)?;
    let resolved = cli::subject::resolve(&kube, namespace, kind, name, since)
        .await
        .map_err(cluster_exit)?;
    if resolved.pods.is_empty() {
        return Err(Exit {
            code: exit::NOT_FOUND,
            message: format!(
                "{} {namespace}/{name} has no pods, and created none since {}",
                kind.kind().to_ascii_lowercase(),
                crate::text::rfc3339(since)
            ),
        }
        .into());
    }
    Ok(resolved)
}

#[cfg(not(feature = "cluster"))]
pub(super) async fn workload_pods(
    _: &cli::AgentsArgs,
    _: &str,
    _: cli::subject::WorkloadKind,
    _: &str,
    _: SystemTime,
) -> anyhow::Result<cli::subject::Resolved> {
    Err(Exit {
        code: exit::CLUSTER,
        message: "built without Kubernetes support (feature `cluster`): a workload needs it".into(),
    }
    .into())
}

/// The agents to ask, and the nodes that should have one but have none (as unanswered).
pub(super) async fn targets(
    args: &cli::AgentsArgs,
    scope: &Scope,
) -> anyhow::Result<(Vec<client::Target>, Vec<render::Unanswered>)> {
    if !args.agents.is_empty() {
        return Ok((client::direct(&args.agents), Vec::new()));
    }
    discover(args, scope).await
}

#[cfg(feature = "cluster")]
async fn discover(
    args: &cli::AgentsArgs,
    scope: &Scope,
) -> anyhow::Result<(Vec<client::Target>, Vec<render::Unanswered>)> {
    use cli::cluster;
    let fail = cluster_exit;
    let kube = cluster::client(&args.cluster()).await.map_err(fail)?;
    let selector = cluster::AgentSelector {
        namespace: args.agent_namespace.clone(),
        selector: args.agent_selector.clone(),
        port: args.agent_port,
    };
    let (agents, nodes) = match scope {
        Scope::Pod {
            namespace,
            name,
            earlier,
        } => {
            // The pod first: an unknown pod is the clearer error.
            let nodes = cluster::pod_nodes(&kube, namespace, name, *earlier)
                .await
                .map_err(fail)?;
            let agents = cluster::agent_pods(&kube, &selector).await.map_err(fail)?;
            (agents, Some(nodes))
        }
        Scope::Nodes(nodes) => (
            cluster::agent_pods(&kube, &selector).await.map_err(fail)?,
            Some(nodes.clone()),
        ),
        Scope::AllNodes => (
            cluster::agent_pods(&kube, &selector).await.map_err(fail)?,
            None,
        ),
    };
    let Some(nodes) = nodes else {
        if agents.is_empty() {
            return Err(Exit {
                code: exit::NO_ANSWER,
                message: format!(
                    "no agent pods in namespace {} with labels {} (see --agent-namespace, --agent-selector)",
                    selector.namespace, selector.selector
                ),
            }
            .into());
        }
        return Ok((
            agents.into_values().map(client::Target::Forward).collect(),
            Vec::new(),
        ));
    };
    let mut targets = Vec::new();
    let mut missing = Vec::new();
    for node in nodes {
        match agents.get(&node) {
            Some(pod) => targets.push(client::Target::Forward(pod.clone())),
            None => missing.push(render::Unanswered {
                agent: format!("node {node}"),
                node: Some(node.clone()),
                error: format!(
                    "no agent pod on node {node} (namespace {}, labels {})",
                    selector.namespace, selector.selector
                ),
            }),
        }
    }
    Ok((targets, missing))
}

#[cfg(not(feature = "cluster"))]
async fn discover(
    _: &cli::AgentsArgs,
    _: &Scope,
) -> anyhow::Result<(Vec<client::Target>, Vec<render::Unanswered>)> {
    Err(Exit {
        code: exit::CLUSTER,
        message: "built without Kubernetes support (feature `cluster`): give --agent".into(),
    }
    .into())
}

/// A progress line on a terminal while more than a few agents answer; nothing otherwise.
pub(super) fn progress() -> impl FnMut(usize, usize) {
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    move |done, total| {
        if !tty || total <= 3 {
            return;
        }
        if done < total {
            eprint!("\r{done}/{total} agents answered");
        } else {
            // Clear the line before the answer is printed.
            eprint!("\r{}\r", " ".repeat(40));
        }
    }
}

/// Asks the agents of the nodes at the other end of the pod's unexplained failed connections
/// (see [`cli::peers`]) for their records of those flows. Best effort: a peer that cannot be
/// found is skipped; a peer agent that does not answer makes the answer incomplete. Returns,
/// per destination, the records whose other side is not shown because the pod holding the
/// address now started after them (the answer says so).
#[cfg(feature = "cluster")]
pub(super) async fn other_side(
    agents: &cli::AgentsArgs,
    filter: &Filter,
    answers: &mut Vec<client::AgentAnswer>,
    unanswered: &mut Vec<render::Unanswered>,
) -> Vec<cli::peers::NotShown> {
    use cli::{cluster, peers};
    let mut not_shown = Vec::new();
    let evidence: Vec<_> = answers
        .iter()
        .flat_map(|a| a.evidence.iter().cloned())
        .collect();
    let (own, destinations) = peers::other_side_flows(&evidence);
    if destinations.is_empty() {
        return not_shown;
    }
    let Ok(kube) = cluster::client(&agents.cluster()).await else {
        return not_shown;
    };
    let selector = cluster::AgentSelector {
        namespace: agents.agent_namespace.clone(),
        selector: agents.agent_selector.clone(),
        port: agents.agent_port,
    };
    let Ok(agent_pods) = cluster::agent_pods(&kube, &selector).await else {
        return not_shown;
    };
    let asked: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|a| a.node.clone())
        .chain(unanswered.iter().filter_map(|u| u.node.clone()))
        .collect();
    let mut peers = Vec::new();
    for ip in destinations.into_iter().take(client::FAN_OUT) {
        // The pod holding the address now is the other side only of records seen since it
        // started: one over before then was an earlier holder's (a reused address).
        let Ok(Some((peer, started))) = cluster::pod_by_ip(&kube, ip).await else {
            continue;
        };
        let (its, before) = peers::held_by(&evidence, ip, started);
        if before > 0 {
            not_shown.push(peers::NotShown {
                ip,
                holder: (peer.0.clone(), peer.1.clone()),
                started,
                records: before,
            });
        }
        if its > 0 && !asked.contains(&peer.2) && !peers.contains(&peer) {
            peers.push(peer);
        }
    }
    for (namespace, name, node) in peers {
        let Some(pod) = agent_pods.get(&node) else {
            continue;
        };
        let target = client::Target::Forward(pod.clone());
        let peer_filter = Filter {
            namespace: Some(namespace),
            pod: Some(name),
            since: filter.since,
            // The other side may hold another kind (a timeout here, drops there).
            kinds: Vec::new(),
            include_unattributed: false,
        };
        let results = client::query_each(
            std::slice::from_ref(&target),
            &peer_filter,
            agents.timeout,
            |_, _| {},
        )
        .await;
        for result in results {
            match result {
                Ok(mut answer) => {
                    peers::retain_flows_from(&mut answer.evidence, &own);
                    answers.push(answer);
                }
                Err(e) => unanswered.push(render::Unanswered {
                    agent: e.agent().to_owned(),
                    node: Some(node.clone()),
                    error: format!("the other side of this pod's connections: {e}"),
                }),
            }
        }
    }
    not_shown
}

#[cfg(not(feature = "cluster"))]
pub(super) async fn other_side(
    _: &cli::AgentsArgs,
    _: &Filter,
    _: &mut Vec<client::AgentAnswer>,
    _: &mut Vec<render::Unanswered>,
) -> Vec<cli::peers::NotShown> {
    Vec::new()
}

/// The pods `-l` selects, (namespace, name), through the kubeconfig.
#[cfg(feature = "cluster")]
pub(super) async fn selected_pods(
    agents: &cli::AgentsArgs,
    namespace: Option<&str>,
    selector: &str,
) -> anyhow::Result<std::collections::HashSet<(String, String)>> {
    use cli::cluster;
    let fail = |e: cluster::ClusterError| Exit {
        code: exit::CLUSTER,
        message: e.to_string(),
    };
    let kube = cluster::client(&agents.cluster()).await.map_err(fail)?;
    Ok(cluster::pods_by_selector(&kube, namespace, selector)
        .await
        .map_err(fail)?
        .into_iter()
        .collect())
}

#[cfg(not(feature = "cluster"))]
pub(super) async fn selected_pods(
    _: &cli::AgentsArgs,
    _: Option<&str>,
    _: &str,
) -> anyhow::Result<std::collections::HashSet<(String, String)>> {
    Err(Exit {
        code: exit::CLUSTER,
        message: "built without Kubernetes support (feature `cluster`): -l needs it".into(),
    }
    .into())
}

/// Asks the agents of `scope`; the answers and the agents that did not answer. No answer at all
/// is the one-line error (exit 4).
pub(super) async fn gather(
    agents: &cli::AgentsArgs,
    scope: &Scope,
    filter: &Filter,
) -> anyhow::Result<(Vec<client::AgentAnswer>, Vec<render::Unanswered>)> {
    let (targets, mut unanswered) = targets(agents, scope).await?;
    let mut answers = Vec::new();
    let results = client::query_each(&targets, filter, agents.timeout, progress()).await;
    for (target, answer) in targets.iter().zip(results) {
        match answer {
            Ok(a) => answers.push(a),
            Err(e) => unanswered.push(render::Unanswered {
                agent: e.agent().to_owned(),
                node: target.node().map(str::to_owned),
                error: e.to_string(),
            }),
        }
    }
    if answers.is_empty()
        && let Some(first) = unanswered.first()
    {
        let message = if unanswered.len() == 1 {
            first.error.clone()
        } else {
            format!(
                "no agent answered ({}; and {} more)",
                first.error,
                unanswered.len() - 1
            )
        };
        return Err(Exit {
            code: exit::NO_ANSWER,
            message,
        }
        .into());
    }
    Ok((answers, unanswered))
}

/// Ok when every agent answered, else the partial-answer warning (exit 3).
pub(super) fn incomplete(
    answers: &[client::AgentAnswer],
    unanswered: &[render::Unanswered],
) -> anyhow::Result<()> {
    partial("the answer is incomplete: ", answers.len(), unanswered)
}

/// Ok when no agent is missing, else exit 3 naming the missing ones after `what`.
pub(super) fn partial(
    what: &str,
    answered: usize,
    unanswered: &[render::Unanswered],
) -> anyhow::Result<()> {
    if unanswered.is_empty() {
        return Ok(());
    }
    Err(Exit {
        code: exit::PARTIAL,
        message: format!(
            "{what}{} of {} agents did not answer ({})",
            unanswered.len(),
            answered + unanswered.len(),
            unanswered
                .iter()
                .map(|u| u.agent.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
    .into())
}
