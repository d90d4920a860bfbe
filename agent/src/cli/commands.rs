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
    output::Format,
    render,
    subject::{self, Target},
    targets::{
        Scope, gather, incomplete, other_side, progress, selected_pods, targets, workload_pods,
    },
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

/// JSON (pretty), YAML, a template's or columns' text of a value, for `-o json|yaml|
/// jsonpath=|custom-columns=`; None for the table formats.
pub fn structured(
    output: &Output,
    value: &serde_json::Value,
    no_headers: bool,
) -> anyhow::Result<Option<String>> {
    Ok(match output {
        Output::Json => Some(format!("{}\n", serde_json::to_string_pretty(value)?)),
        Output::Yaml => Some(serde_saphyr::to_string(value)?),
        Output::JsonPath(_) | Output::CustomColumns(_) => Format::new(output)
            .map_err(anyhow::Error::msg)?
            .map(|f| f.render(value, no_headers)),
        Output::Table | Output::Wide => None,
    })
}

/// Checks `-o`'s template or columns before anything is asked.
fn check_output(output: &Output) -> anyhow::Result<()> {
    Format::new(output).map(|_| ()).map_err(anyhow::Error::msg)
}

/// Every agent's health, problems first; agents that do not answer are listed (exit 3), or
/// the one-line error when none does (exit 4).
pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    check_output(&args.output)?;
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
    let style = render::Style::detect(args.output.is_wide(), args.no_headers);
    let mut json = render::status_json(&statuses);
    if let Some(items) = json.as_array_mut() {
        for u in &unanswered {
            items.push(serde_json::json!({"agent": u.agent, "node": u.node, "answered": false, "error": u.error}));
        }
    }
    match structured(&args.output, &json, args.no_headers)? {
        Some(text) => print(&text)?,
        None => {
            let mut text = render::status_summary(&statuses, &unanswered, &style);
            if args.output.is_wide() {
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
        super::cluster::default_namespace(&agents.cluster()).await
    }
    #[cfg(not(feature = "cluster"))]
    {
        let _ = agents;
        "default".to_owned()
    }
}

pub async fn query(args: QueryArgs, explain_only: bool) -> anyhow::Result<()> {
    if args.watch {
        return watch(watch_args(args)).await;
    }
    check_output(&args.output)?;
    let now = SystemTime::now();
    let since = args
        .since
        .map_or_else(|| window_start(now, DEFAULT_SINCE), |w| w.at(now));
    let until = args.until.map(|w| w.at(now));
    if until.is_some_and(|u| u < since) {
        anyhow::bail!("--until is before --since: the window is empty");
    }
    let (target, given) = subject_of(
        args.subject.as_deref(),
        args.pod.as_deref(),
        args.namespace.as_deref(),
    )?;
    let namespace = match (given, args.all_namespaces) {
        (_, true) => None,
        (Some(ns), false) => Some(ns),
        (None, false) => Some(default_namespace(&args.agents).await),
    };
    let pod = match &target {
        Some(Target::Pod(pod)) => Some(pod.clone()),
        _ => None,
    };
    // A workload is its pods inside the window, gone ones included.
    let workload = match (&target, &namespace) {
        (Some(Target::Workload(kind, name)), Some(ns)) => {
            Some(workload_pods(&args.agents, ns, *kind, name, since).await?)
        }
        _ => None,
    };
    let scope = match (&pod, &workload, &namespace) {
        _ if args.all_nodes => Scope::AllNodes,
        (Some(pod), _, Some(ns)) => Scope::Pod {
            namespace: ns.clone(),
            name: pod.clone(),
            earlier: args.since.map(|_| since),
        },
        (_, Some(w), _) => Scope::Nodes(w.nodes.iter().cloned().collect()),
        // -n, -A and -l fan out to every agent.
        _ => Scope::AllNodes,
    };
    let filter = Filter {
        namespace: namespace.clone(),
        pod: pod.clone(),
        since: Some(since),
        kinds: args.kinds.clone(),
        include_unattributed: false,
    };
    let selected = match (&args.selector, &workload, &namespace) {
        (Some(selector), _, _) => {
            Some(selected_pods(&args.agents, namespace.as_deref(), selector).await?)
        }
        (None, Some(w), Some(ns)) => Some(
            w.pods
                .iter()
                .map(|p| (ns.clone(), p.clone()))
                .collect::<std::collections::HashSet<_>>(),
        ),
        _ => None,
    };
    let (mut answers, mut unanswered) = gather(&args.agents, &scope, &filter).await?;
    let mut not_shown = Vec::new();
    if args.agents.agents.is_empty() && matches!(scope, Scope::Pod { .. } | Scope::Nodes(_)) {
        not_shown = other_side(&args.agents, &filter, &mut answers, &mut unanswered).await;
    }
    for a in &mut answers {
        a.evidence.retain(|e| {
            selected.as_ref().is_none_or(|selected| {
                e.pod()
                    .is_some_and(|p| selected.contains(&(p.namespace.clone(), p.name.clone())))
            }) && until.is_none_or(|u| e.first_seen <= u)
                && (!args.filters.any() || args.filters.keeps(&render::evidence_json(e)))
        });
    }
    let subject = Subject {
        namespace: namespace.unwrap_or_else(|| "*".to_owned()),
        pod: match (&target, &args.selector) {
            (Some(target), _) => target.to_string(),
            (None, Some(selector)) => format!("* (-l {selector})"),
            (None, None) => "*".to_owned(),
        },
        single_pod: pod.is_some(),
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

/// What a query is about, for its header: a pod, a workload, or `*` for a fan-out.
struct Subject {
    namespace: String,
    pod: String,
    /// Whether it is one pod (its rows need not name it).
    single_pod: bool,
}

/// `timeline --pod X`: the incident timeline from the evidence, the pod's events and its
/// owner's rollout history.
#[cfg(feature = "cluster")]
pub async fn timeline(args: TimelineArgs) -> anyhow::Result<()> {
    use super::{TimelineFormat, cluster, timeline};
    let since = window_start(SystemTime::now(), args.since);
    let (target, given) = subject_of(
        args.subject.as_deref(),
        args.pod.as_deref(),
        args.namespace.as_deref(),
    )?;
    let Some(Target::Pod(pod)) = target else {
        anyhow::bail!(
            "timeline is about one pod: give POD, pod/POD or NAMESPACE/POD (a workload's pods: `query TYPE/NAME`)"
        );
    };
    let namespace = match given {
        Some(ns) => ns,
        None => default_namespace(&args.agents).await,
    };
    let scope = if args.all_nodes {
        Scope::AllNodes
    } else {
        Scope::Pod {
            namespace: namespace.clone(),
            name: pod.clone(),
            earlier: Some(since),
        }
    };
    let filter = Filter {
        namespace: Some(namespace.clone()),
        pod: Some(pod.clone()),
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
    let view = match cluster::client(&args.agents.cluster()).await {
        Ok(kube) => timeline::read_cluster(&kube, &namespace, &pod, since).await,
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
        pod: &pod,
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
        TimelineFormat::Yaml => print(&serde_saphyr::to_string(&timeline::json(&inputs))?)?,
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
        match structured(&args.output, &v, args.no_headers)? {
            Some(text) => print(&text),
            None => Ok(()),
        }
    };
    let missing = render::unanswered_text(unanswered);
    let style = render::Style::detect(args.output.is_wide(), args.no_headers);
    if explain_only {
        return match args.output {
            Output::Json | Output::Yaml | Output::JsonPath(_) | Output::CustomColumns(_) => {
                json(&[])
            }
            Output::Table | Output::Wide if notes.is_empty() => print(&format!(
                "{}: no drops or timeouts to explain in the requested window.\n{missing}",
                render::subject_text(&subject.pod, &subject.namespace)
            )),
            Output::Table | Output::Wide => {
                print(&format!("{}{missing}", render::notes_text(&notes, true)))
            }
        };
    }
    match args.output {
        Output::Json | Output::Yaml | Output::JsonPath(_) | Output::CustomColumns(_) => {
            json(&findings)
        }
        Output::Table | Output::Wide => print(&format!(
            "{}{}{missing}",
            render::query_table_styled(
                &render::Answer {
                    pod: &subject.pod,
                    namespace: &subject.namespace,
                    since: Some(since),
                    now: SystemTime::now(),
                    pod_column: !subject.single_pod,
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
    let cluster = args.agents.cluster();
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

/// The subject (from the argument or `--pod`) and its namespace as given: written in front of
/// it, else `-n`; None for the kubeconfig's to decide.
fn subject_of(
    positional: Option<&str>,
    pod: Option<&str>,
    namespace: Option<&str>,
) -> anyhow::Result<(Option<Target>, Option<String>)> {
    let subject = subject::choose(positional, pod, namespace).map_err(anyhow::Error::msg)?;
    let given = subject
        .as_ref()
        .and_then(|s| s.namespace.clone())
        .or_else(|| namespace.map(str::to_owned));
    Ok((subject.map(|s| s.target), given))
}

/// `query -w`: the same subject and filters, watched.
fn watch_args(q: QueryArgs) -> WatchArgs {
    WatchArgs {
        subject: q.subject,
        pod: q.pod,
        namespace: q.namespace,
        all_namespaces: q.all_namespaces,
        kinds: q.kinds,
        filters: q.filters,
        output: q.output,
        give_up_after: super::DEFAULT_GIVE_UP,
        agents: q.agents,
    }
}

/// Least time between two look-ups of a watched workload's pods.
const WORKLOAD_RELOOK: Duration = Duration::from_secs(5);

pub async fn watch(args: WatchArgs) -> anyhow::Result<()> {
    check_output(&args.output)?;
    let format = Format::new(&args.output).map_err(anyhow::Error::msg)?;
    let mut first = true;
    let (target, given) = subject_of(
        args.subject.as_deref(),
        args.pod.as_deref(),
        args.namespace.as_deref(),
    )?;
    let namespace = if args.all_namespaces {
        None
    } else if given.is_some() {
        given
    } else if target.is_some() {
        Some(default_namespace(&args.agents).await)
    } else {
        None
    };
    let pod = match &target {
        Some(Target::Pod(pod)) => Some(pod.clone()),
        _ => None,
    };
    // A workload's pods, looked up again when an update names a pod not among them (a new
    // pod of a rollout or a scale-up), at most every few seconds.
    let mut workload = match (&target, &namespace) {
        (Some(Target::Workload(kind, name)), Some(ns)) => {
            let since = window_start(SystemTime::now(), DEFAULT_SINCE);
            let pods = workload_pods(&args.agents, ns, *kind, name, since).await?;
            Some((
                ns.clone(),
                *kind,
                name.clone(),
                pods.pods,
                std::time::Instant::now(),
            ))
        }
        _ => None,
    };
    let filter = Filter {
        namespace: namespace.clone(),
        pod: pod.clone(),
        since: None,
        kinds: args.kinds.clone(),
        include_unattributed: target.is_none() && namespace.is_none(),
    };
    let scope = match (&pod, &namespace) {
        (Some(pod), Some(ns)) => Scope::Pod {
            namespace: ns.clone(),
            name: pod.clone(),
            earlier: None,
        },
        // A workload's new pods may land on any node.
        _ => Scope::AllNodes,
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
        // Another pod's update: skipped before its loss counters are read, so the next
        // shown update reports their growth.
        if let Some((ns, kind, name, pods, looked)) = &mut workload {
            let Some(of) = update.evidence.pod().map(|p| p.name.clone()) else {
                continue;
            };
            if !pods.contains(&of) && looked.elapsed() >= WORKLOAD_RELOOK {
                let since = window_start(SystemTime::now(), DEFAULT_SINCE);
                if let Ok(now) = workload_pods(&args.agents, ns, *kind, name, since).await {
                    *pods = now.pods;
                }
                *looked = std::time::Instant::now();
            }
            if !pods.contains(&of) {
                continue;
            }
        }
        if args.filters.any() && !args.filters.keeps(&render::evidence_json(&update.evidence)) {
            continue;
        }
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
            Output::Json | Output::Yaml | Output::JsonPath(_) | Output::CustomColumns(_) => {
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
                if let Some(format) = &format {
                    // Columns' header once, before the first update.
                    let text = format.render(&v, !first);
                    first = false;
                    print(&if text.ends_with('\n') {
                        text
                    } else {
                        format!("{text}\n")
                    })?;
                } else if args.output == Output::Yaml {
                    print(&format!("---\n{}", serde_saphyr::to_string(&v)?))?;
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
