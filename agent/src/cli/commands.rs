//! The client commands' bodies: `query` (and `explain`), `watch`, `status` and `timeline`, each
//! asking the node agents and printing their answers; and the exit codes they end with.

use std::{
    collections::HashMap,
    io::Write as _,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;

#[cfg(feature = "cluster")]
use super::TimelineArgs;
use super::{
    DEFAULT_SINCE, Output, QueryArgs, StatusArgs, WatchArgs, client,
    exit::{self, Exit},
    render,
    targets::{Scope, gather, incomplete, other_side, progress, selected_pods, targets},
};
use crate::{
    diagnose,
    evidence::{Filter, Named as _, line::watch_line},
    loss::Loss,
    text,
};

pub fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).context("writing output")?;
    out.flush().context("writing output")
}

/// JSON (pretty) or YAML of a value, for `-o json|yaml`; None for the table formats.
pub fn structured(output: Output, value: &serde_json::Value) -> anyhow::Result<Option<String>> {
    Ok(match output {
        Output::Json => Some(format!("{}\n", serde_json::to_string_pretty(value)?)),
        Output::Yaml => Some(serde_yaml::to_string(value)?),
        Output::Table | Output::Wide => None,
    })
}

/// Every agent's health, problems first; agents that do not answer are listed (exit 3), or
/// the one-line error when none does (exit 4).
pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let (targets, mut unanswered) = targets(&args.agents, &Scope::AllNodes).await?;
    let mut statuses = Vec::new();
    let results = client::status_each(&targets, args.agents.timeout, progress()).await;
    for (target, result) in targets.iter().zip(results) {
        match result {
            Ok(s) => statuses.push(s),
            Err(e) => unanswered.push(render::Unanswered {
                agent: e.agent().to_owned(),
                node: target.node().map(str::to_owned),
                error: e.to_string(),
            }),
        }
    }
    if statuses.is_empty()
        && let Some(first) = unanswered.first()
    {
        return Err(Exit {
            code: exit::NO_ANSWER,
            message: first.error.clone(),
        }
        .into());
    }
    let style = render::Style::detect(args.output == Output::Wide, args.no_headers);
    let mut json = render::status_json(&statuses);
    if let Some(items) = json.as_array_mut() {
        for u in &unanswered {
            items.push(serde_json::json!({"agent": u.agent, "node": u.node, "answered": false, "error": u.error}));
        }
    }
    match structured(args.output, &json)? {
        Some(text) => print(&text)?,
        None => {
            let mut text = render::status_summary(&statuses, &unanswered, &style);
            if args.output == Output::Wide {
                text.push('\n');
                text.push_str(&render::status_table(&statuses));
            }
            print(&text)?;
        }
    }
    super::targets::partial("", statuses.len(), &unanswered)
}

/// The start of a window reaching `back` into the past. A window longer than the time since
/// 1970 starts at 1970 (everything), never "no window at all".
pub fn window_start(now: SystemTime, back: Duration) -> SystemTime {
    now.checked_sub(back).unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The namespace of a command without `-n`: the kubeconfig context's, as kubectl's (in a pod,
/// its own), else "default".
async fn default_namespace(agents: &super::AgentsArgs) -> String {
    #[cfg(feature = "cluster")]
    {
        super::cluster::default_namespace(&super::cluster::ClusterArgs {
            kubeconfig: agents.kubeconfig.clone(),
            context: agents.context.clone(),
        })
        .await
    }
    #[cfg(not(feature = "cluster"))]
    {
        let _ = agents;
        "default".to_owned()
    }
}

pub async fn query(args: QueryArgs, explain_only: bool) -> anyhow::Result<()> {
    let now = SystemTime::now();
    let since = window_start(now, args.since.unwrap_or(DEFAULT_SINCE));
    let namespace = match (&args.namespace, args.all_namespaces) {
        (_, true) => None,
        (Some(ns), false) => Some(ns.clone()),
        (None, false) => Some(default_namespace(&args.agents).await),
    };
    let scope = match (&args.pod, &namespace) {
        (Some(pod), Some(ns)) if !args.all_nodes => Scope::Pod {
            namespace: ns.clone(),
            name: pod.clone(),
            earlier: args.since.map(|_| since),
        },
        // -n, -A, -l and --all-nodes fan out to every agent.
        _ => Scope::AllNodes,
    };
    let filter = Filter {
        namespace: namespace.clone(),
        pod: args.pod.clone(),
        since: Some(since),
        kinds: args.kinds.clone(),
        include_unattributed: false,
    };
    let selected = match &args.selector {
        Some(selector) => Some(selected_pods(&args.agents, namespace.as_deref(), selector).await?),
        None => None,
    };
    let (mut answers, mut unanswered) = gather(&args.agents, &scope, &filter).await?;
    let mut not_shown = Vec::new();
    if args.agents.agents.is_empty() && matches!(scope, Scope::Pod { .. }) {
        not_shown = other_side(&args.agents, &filter, &mut answers, &mut unanswered).await;
    }
    if let Some(selected) = &selected {
        for a in &mut answers {
            a.evidence.retain(|e| {
                e.pod()
                    .is_some_and(|p| selected.contains(&(p.namespace.clone(), p.name.clone())))
            });
        }
    }
    let subject = Subject {
        namespace: namespace.unwrap_or_else(|| "*".to_owned()),
        pod: match (&args.pod, &args.selector) {
            (Some(pod), _) => pod.clone(),
            (None, Some(selector)) => format!("* (-l {selector})"),
            (None, None) => "*".to_owned(),
        },
    };
    let gathered = Gathered {
        answers: &answers,
        unanswered: &unanswered,
        not_shown: &not_shown,
    };
    query_answer(&args, &subject, explain_only, since, &gathered).await?;
    incomplete(&answers, &unanswered)
}

/// What the agents said: the answers, the agents that did not answer, and the records whose
/// other side is not shown.
struct Gathered<'a> {
    answers: &'a [client::AgentAnswer],
    unanswered: &'a [render::Unanswered],
    not_shown: &'a [super::peers::NotShown],
}

/// What a query is about, for its header: a pod, or `*` for a fan-out.
struct Subject {
    namespace: String,
    pod: String,
}

/// `timeline --pod X`: the incident timeline from the evidence, the pod's events and its
/// owner's rollout history.
#[cfg(feature = "cluster")]
pub async fn timeline(args: TimelineArgs) -> anyhow::Result<()> {
    use super::{TimelineFormat, cluster, timeline};
    let since = window_start(SystemTime::now(), args.since);
    let namespace = match &args.namespace {
        Some(ns) => ns.clone(),
        None => default_namespace(&args.agents).await,
    };
    let scope = if args.all_nodes {
        Scope::AllNodes
    } else {
        Scope::Pod {
            namespace: namespace.clone(),
            name: args.pod.clone(),
            earlier: Some(since),
        }
    };
    let filter = Filter {
        namespace: Some(namespace.clone()),
        pod: Some(args.pod.clone()),
        since: Some(since),
        kinds: Vec::new(),
        include_unattributed: false,
    };
    let (answers, unanswered) = gather(&args.agents, &scope, &filter).await?;
    let mut evidence: Vec<_> = answers
        .iter()
        .flat_map(|a| a.evidence.iter().cloned())
        .collect();
    // Oldest first: the document reads as the incident unfolded.
    evidence.sort_by(|a, b| a.first_seen.cmp(&b.first_seen).then(b.count.cmp(&a.count)));
    let findings = diagnose::diagnose_cited(&evidence);
    let view = match cluster::client(&cluster::ClusterArgs {
        kubeconfig: args.agents.kubeconfig.clone(),
        context: args.agents.context.clone(),
    })
    .await
    {
        Ok(kube) => timeline::read_cluster(&kube, &namespace, &args.pod, since).await,
        Err(e) => timeline::ClusterView {
            unreadable: vec![format!("the cluster: {e}")],
            ..timeline::ClusterView::default()
        },
    };
    let nodes: Vec<String> = answers.iter().map(|a| a.node.clone()).collect();
    let missing: Vec<(String, String)> = unanswered
        .iter()
        .map(|u| (u.agent.clone(), u.error.clone()))
        .collect();
    let inputs = timeline::Inputs {
        namespace: &namespace,
        pod: &args.pod,
        since,
        evidence: &evidence,
        findings: &findings,
        nodes: &nodes,
        unanswered: &missing,
        cluster: &view,
    };
    match args.output {
        TimelineFormat::Markdown => print(&timeline::markdown(&inputs))?,
        TimelineFormat::Json => print(&format!(
            "{}\n",
            serde_json::to_string_pretty(&timeline::json(&inputs))?
        ))?,
        TimelineFormat::Yaml => print(&serde_yaml::to_string(&timeline::json(&inputs))?)?,
    }
    incomplete(&answers, &unanswered)
}

/// Prints what the agents that answered said; `unanswered` lists the others.
async fn query_answer(
    args: &QueryArgs,
    subject: &Subject,
    explain_only: bool,
    since: SystemTime,
    gathered: &Gathered<'_>,
) -> anyhow::Result<()> {
    let Gathered {
        answers,
        unanswered,
        not_shown,
    } = *gathered;
    let mut evidence: Vec<_> = answers
        .iter()
        .flat_map(|a| a.evidence.iter().cloned())
        .collect();
    evidence.sort_by(|a, b| b.last_seen.cmp(&a.last_seen).then(b.count.cmp(&a.count)));
    let findings = diagnose::diagnose(&evidence);
    let notes = explanations(args, &evidence).await;
    let json = |findings: &[diagnose::Finding]| -> anyhow::Result<()> {
        let mut v = render::query_json(&evidence, findings, answers, &notes);
        if let Some(m) = v.as_object_mut() {
            m.insert("complete".into(), unanswered.is_empty().into());
            m.insert("unanswered".into(), render::unanswered_json(unanswered));
            m.insert(
                "other_side_not_shown".into(),
                render::not_shown_json(not_shown),
            );
        }
        match structured(args.output, &v)? {
            Some(text) => print(&text),
            None => Ok(()),
        }
    };
    let missing = render::unanswered_text(unanswered);
    let style = render::Style::detect(args.output == Output::Wide, args.no_headers);
    if explain_only {
        return match args.output {
            Output::Json | Output::Yaml => json(&[]),
            Output::Table | Output::Wide if notes.is_empty() => print(&format!(
                "Pod {}/{}: no drops or timeouts to explain in the requested window.\n{missing}",
                text::clean(&subject.namespace),
                text::clean(&subject.pod)
            )),
            Output::Table | Output::Wide => {
                print(&format!("{}{missing}", render::notes_text(&notes, true)))
            }
        };
    }
    match args.output {
        Output::Json | Output::Yaml => json(&findings),
        Output::Table | Output::Wide => print(&format!(
            "{}{}{missing}",
            render::query_table_styled(
                &render::Answer {
                    pod: &subject.pod,
                    namespace: &subject.namespace,
                    since: Some(since),
                    evidence: &evidence,
                    findings: &findings,
                    answers,
                    notes: &notes,
                },
                &style,
            ),
            render::not_shown_text(not_shown),
        )),
    }
}

/// NetworkPolicy explanations of the drops and timeouts, read with the user's kubeconfig.
#[cfg(feature = "cluster")]
async fn explanations(
    args: &QueryArgs,
    evidence: &[crate::evidence::Evidence],
) -> Vec<render::Note> {
    use crate::{cli::explain, evidence::Kind};
    let needed = evidence
        .iter()
        .any(|e| matches!(e.kind(), Kind::PacketDrop | Kind::ConnectionTimeout));
    if args.no_explain || !needed {
        return Vec::new();
    }
    let cluster = super::cluster::ClusterArgs {
        kubeconfig: args.agents.kubeconfig.clone(),
        context: args.agents.context.clone(),
    };
    let snapshot = explain::snapshot(&cluster).await.map_err(|e| {
        let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
        format!("cannot read NetworkPolicies ({})", chain.join(": "))
    });
    explain::explain_all(evidence, snapshot.as_ref().map_err(String::as_str))
        .into_iter()
        .map(|(index, x)| render::Note {
            index,
            verdict: match x.verdict {
                crate::policy::Verdict::Denied => "denied",
                crate::policy::Verdict::Allowed => "allowed",
                crate::policy::Verdict::Unknown => "unknown",
            },
            policies: x.policies,
            text: x.text,
            fix: x.fix,
        })
        .collect()
}

#[cfg(not(feature = "cluster"))]
async fn explanations(_: &QueryArgs, _: &[crate::evidence::Evidence]) -> Vec<render::Note> {
    Vec::new()
}

pub async fn watch(args: WatchArgs) -> anyhow::Result<()> {
    let namespace = if args.all_namespaces {
        None
    } else if args.namespace.is_none() && args.pod.is_some() {
        Some(default_namespace(&args.agents).await)
    } else {
        args.namespace.clone()
    };
    let filter = Filter {
        namespace: namespace.clone(),
        pod: args.pod.clone(),
        since: None,
        kinds: args.kinds.clone(),
        include_unattributed: args.pod.is_none() && namespace.is_none(),
    };
    let scope = match &args.pod {
        Some(pod) => Scope::Pod {
            namespace: namespace.clone().unwrap_or_else(|| "default".into()),
            name: pod.clone(),
            earlier: None,
        },
        None => Scope::AllNodes,
    };
    let (targets, missing) = targets(&args.agents, &scope).await?;
    for m in &missing {
        eprintln!("warning: {}", text::clean(&m.error));
    }
    if targets.is_empty() {
        return Err(Exit {
            code: exit::NO_ANSWER,
            message: "no agent to watch".into(),
        }
        .into());
    }
    let mut updates = client::watch_all(&targets, &filter, args.agents.timeout, args.give_up_after);
    let mut watching = targets.len();
    // Each agent's loss counters at its previous update: growth means the stream missed events.
    let mut seen: HashMap<String, HashMap<String, u64>> = HashMap::new();
    while let Some(item) = updates.recv().await {
        let update = match item {
            client::WatchItem::Update(u) => u,
            client::WatchItem::Lost(e) => {
                eprintln!("warning: {}; reconnecting", text::clean(&e.to_string()));
                continue;
            }
            client::WatchItem::Reconnected { agent } => {
                eprintln!(
                    "warning: agent {} is back; updates recorded while it was away are in `query`",
                    text::clean(&agent)
                );
                // Its counters restarted with it.
                seen.remove(&agent);
                continue;
            }
            client::WatchItem::GaveUp(e) => {
                watching -= 1;
                if watching == 0 {
                    return Err(Exit {
                        code: exit::NO_ANSWER,
                        message: e.to_string(),
                    }
                    .into());
                }
                eprintln!(
                    "warning: {}; no longer watched",
                    text::clean(&e.to_string())
                );
                continue;
            }
        };
        let before = seen.entry(update.agent.clone()).or_default();
        let grown: Vec<_> = update
            .loss
            .iter()
            .filter(|l| {
                let was = before.insert(l.name.clone(), l.count);
                was.is_some_and(|was| l.count > was)
                    && Loss::from_name(&l.name).map_or(true, Loss::affects_answers)
            })
            .cloned()
            .collect();
        let e = &update.evidence;
        match args.output {
            Output::Json | Output::Yaml => {
                let mut v = render::evidence_json(e);
                if !grown.is_empty()
                    && let Some(m) = v.as_object_mut()
                {
                    m.insert(
                        "lost_since_previous".into(),
                        grown
                            .iter()
                            .map(|l| (l.name.clone(), serde_json::Value::from(l.count)))
                            .collect::<serde_json::Map<_, _>>()
                            .into(),
                    );
                }
                if args.output == Output::Yaml {
                    print(&format!("---\n{}", serde_yaml::to_string(&v)?))?;
                } else {
                    print(&format!("{v}\n"))?;
                }
            }
            Output::Table | Output::Wide => {
                if !grown.is_empty() {
                    print(&format!("{}\n", render::watch_loss_line(&e.node, &grown)))?;
                }
                print(&format!("{}\n", watch_line(e)))?;
            }
        }
    }
    Ok(())
}
