//! Runs a parsed command line: sets up logging, dispatches to the node agent or a client
//! command, and turns failures into a one-line error and a non-zero exit code.

use std::{
    collections::HashMap,
    io::Write as _,
    process::ExitCode,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use tracing_subscriber::EnvFilter;

use crate::{
    cli::{self, Cli, Command, LogFormat, Output, client, diagnose, render},
    evidence::{Filter, Named as _},
    loss::Loss,
};

fn init_logging(cli: &Cli) {
    let filter = EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: `kubectl logs` and log files get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match cli.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Exit codes beyond 0 (success) and 1 (an error: bad input, output failed); clap uses 2 for
/// a wrong command line.
pub mod exit {
    /// Some agents did not answer: the output is the others' answer, marked incomplete.
    pub const PARTIAL: u8 = 3;
    /// No agent answered.
    pub const NO_ANSWER: u8 = 4;
}

/// An outcome that is not plain success or failure: printed as one line on stderr, exits with
/// `code`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

/// Runs the command; errors are printed as one line on stderr.
pub async fn run(cli: Cli) -> ExitCode {
    init_logging(&cli);
    match dispatch(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let chain: Vec<String> = error.chain().map(ToString::to_string).collect();
            match error.downcast_ref::<Exit>() {
                Some(exit) if exit.code == exit::PARTIAL => {
                    eprintln!("warning: {}", chain.join(": "));
                    ExitCode::from(exit.code)
                }
                Some(exit) => {
                    eprintln!("error: {}", chain.join(": "));
                    ExitCode::from(exit.code)
                }
                None => {
                    eprintln!("error: {}", chain.join(": "));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).context("writing output")?;
    out.flush().context("writing output")
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        #[cfg(feature = "node-agent")]
        Command::Agent(args) => {
            let mut store = crate::store::StoreConfig::new(
                args.node_name.clone(),
                args.store_capacity,
                args.store_max_age,
            );
            if let Some(q) = args.store_pod_quota {
                store.pod_quota = q.max(1);
            }
            if let Some(q) = args.store_namespace_quota {
                store.namespace_quota = q.max(1);
            }
            if let Some(q) = args.store_unattributed_quota {
                store.unattributed_quota = q.max(1);
            }
            // The standard OpenTelemetry variables; a wrong one stops the agent at startup.
            let otlp = crate::otlp::OtlpConfig::from_env(|name| std::env::var(name).ok())
                .context("OTLP export configuration")?;
            crate::node::run(crate::node::AgentConfig {
                node: args.node_name,
                listen: args.listen,
                metrics_listen: args.metrics_listen.0,
                store,
                persist: args
                    .store_path
                    .map(|path| crate::store::persist::PersistConfig {
                        path,
                        max_bytes: args.store_max_bytes,
                    }),
                cgroup_root: args.cgroup_root,
                drop_reasons: args.drop_reasons,
                dns: crate::dns::DnsConfig {
                    ports: args.dns_ports.0,
                    track: crate::dns::TrackConfig {
                        timeout: args.dns_timeout,
                        slow: args.dns_slow,
                        per_pod: args.dns_inflight_per_pod.max(1),
                        total: args.dns_inflight.max(1),
                    },
                },
                kubelet_cgroup_root: args.kubelet_cgroup_root,
                sample_interval: args.sample_interval.max(Duration::from_millis(100)),
                throttle_threshold: args.throttle_threshold,
                otlp,
            })
            .await
        }
        Command::Query(args) => query(args, false).await,
        #[cfg(feature = "cluster")]
        Command::Explain(args) => query(args, true).await,
        Command::Watch(args) => watch(args).await,
        Command::Status(args) => {
            let statuses = client::status_all(&args.agents.agents, args.agents.timeout).await?;
            match args.output {
                Output::Json => print(&format!(
                    "{}\n",
                    serde_json::to_string_pretty(&render::status_json(&statuses))?
                )),
                Output::Table => print(&render::status_table(&statuses)),
            }
        }
    }
}

/// The start of a window reaching `back` into the past. A window longer than the time since
/// 1970 starts at 1970 (everything), never "no window at all".
pub fn window_start(now: SystemTime, back: Duration) -> SystemTime {
    now.checked_sub(back).unwrap_or(SystemTime::UNIX_EPOCH)
}

async fn query(args: cli::QueryArgs, explain_only: bool) -> anyhow::Result<()> {
    let since = window_start(SystemTime::now(), args.since);
    let filter = Filter {
        namespace: Some(args.namespace.clone()),
        pod: Some(args.pod.clone()),
        since: Some(since),
        kinds: args.kinds.clone(),
        include_unattributed: false,
    };
    let mut answers = Vec::new();
    let mut missing = Vec::new();
    for answer in client::query_each(&args.agents.agents, &filter, args.agents.timeout).await {
        match answer {
            Ok(a) => answers.push(a),
            Err(e) => missing.push(e),
        }
    }
    if answers.is_empty()
        && let Some(first) = missing.first()
    {
        let message = if missing.len() == 1 {
            first.to_string()
        } else {
            format!(
                "no agent answered ({}; and {} more)",
                first,
                missing.len() - 1
            )
        };
        return Err(Exit {
            code: exit::NO_ANSWER,
            message,
        }
        .into());
    }
    let unanswered: Vec<render::Unanswered> = missing
        .iter()
        .map(|e| render::Unanswered {
            agent: e.agent().to_owned(),
            error: e.to_string(),
        })
        .collect();
    let result = query_answer(&args, explain_only, since, &answers, &unanswered).await;
    result?;
    if unanswered.is_empty() {
        return Ok(());
    }
    Err(Exit {
        code: exit::PARTIAL,
        message: format!(
            "the answer is incomplete: {} of {} agents did not answer ({})",
            unanswered.len(),
            args.agents.agents.len(),
            unanswered
                .iter()
                .map(|u| u.agent.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
    .into())
}

/// Prints what the agents that answered said; `unanswered` lists the others.
async fn query_answer(
    args: &cli::QueryArgs,
    explain_only: bool,
    since: SystemTime,
    answers: &[client::AgentAnswer],
    unanswered: &[render::Unanswered],
) -> anyhow::Result<()> {
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
        }
        print(&format!("{}\n", serde_json::to_string_pretty(&v)?))
    };
    let missing = render::unanswered_text(unanswered);
    if explain_only {
        return match args.output {
            Output::Json => json(&[]),
            Output::Table if notes.is_empty() => print(&format!(
                "Pod {}/{}: no drops or timeouts to explain in the requested window.\n{missing}",
                render::clean(&args.namespace),
                render::clean(&args.pod)
            )),
            Output::Table => print(&format!("{}{missing}", render::notes_text(&notes, true))),
        };
    }
    match args.output {
        Output::Json => json(&findings),
        Output::Table => print(&format!(
            "{}{missing}",
            render::query_table(
                &args.pod,
                &args.namespace,
                Some(since),
                &evidence,
                &findings,
                answers,
                &notes,
            )
        )),
    }
}

/// NetworkPolicy explanations of the drops and timeouts, read with the user's kubeconfig.
#[cfg(feature = "cluster")]
async fn explanations(
    args: &cli::QueryArgs,
    evidence: &[crate::evidence::Evidence],
) -> Vec<render::Note> {
    use crate::{cli::explain, evidence::Kind};
    let needed = evidence
        .iter()
        .any(|e| matches!(e.kind(), Kind::PacketDrop | Kind::ConnectionTimeout));
    if args.no_explain || !needed {
        return Vec::new();
    }
    let cluster = explain::ClusterArgs {
        kubeconfig: args.kubeconfig.clone(),
        context: args.context.clone(),
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
async fn explanations(_: &cli::QueryArgs, _: &[crate::evidence::Evidence]) -> Vec<render::Note> {
    Vec::new()
}

async fn watch(args: cli::WatchArgs) -> anyhow::Result<()> {
    let filter = Filter {
        namespace: args.namespace.clone(),
        pod: args.pod.clone(),
        since: None,
        kinds: Vec::new(),
        include_unattributed: args.pod.is_none() && args.namespace.is_none(),
    };
    let mut updates = client::watch_all(&args.agents.agents, &filter, args.agents.timeout).await?;
    // Each agent's loss counters at its previous update: growth means the stream missed events.
    let mut seen: HashMap<String, HashMap<String, u64>> = HashMap::new();
    while let Some(update) = updates.recv().await {
        let update = update?;
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
            Output::Json => {
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
                print(&format!("{v}\n"))?;
            }
            Output::Table => {
                if !grown.is_empty() {
                    print(&format!("{}\n", render::watch_loss_line(&e.node, &grown)))?;
                }
                print(&format!("{}\n", render::watch_line(e)))?;
            }
        }
    }
    Ok(())
}
