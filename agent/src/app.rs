//! Runs a parsed command line: sets up logging, dispatches to the node agent or a client
//! command, and turns failures into a one-line error and a non-zero exit code.

use std::{io::Write as _, process::ExitCode, time::SystemTime};

use anyhow::Context as _;
use tracing_subscriber::EnvFilter;

use crate::{
    cli::{self, Cli, Command, LogFormat, Output, client, diagnose, render},
    evidence::Filter,
};

fn init_logging(cli: &Cli) {
    let filter = EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cli.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs the command; errors are printed as one line on stderr.
pub async fn run(cli: Cli) -> ExitCode {
    init_logging(&cli);
    match dispatch(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let chain: Vec<String> = error.chain().map(ToString::to_string).collect();
            eprintln!("error: {}", chain.join(": "));
            ExitCode::FAILURE
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
            crate::node::run(crate::node::AgentConfig {
                node: args.node_name,
                listen: args.listen,
                store_capacity: args.store_capacity,
                store_max_age: args.store_max_age,
                cgroup_root: args.cgroup_root,
            })
            .await
        }
        Command::Query(args) => query(args).await,
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

async fn query(args: cli::QueryArgs) -> anyhow::Result<()> {
    let filter = Filter {
        namespace: Some(args.namespace.clone()),
        pod: Some(args.pod.clone()),
        since: SystemTime::now().checked_sub(args.since),
        kinds: args.kinds.clone(),
        include_unattributed: false,
    };
    let answers = client::query_all(&args.agents.agents, &filter, args.agents.timeout).await?;
    let mut evidence: Vec<_> = answers
        .iter()
        .flat_map(|a| a.evidence.iter().cloned())
        .collect();
    evidence.sort_by(|a, b| b.last_seen.cmp(&a.last_seen).then(b.count.cmp(&a.count)));
    let findings = diagnose::diagnose(&evidence);
    match args.output {
        Output::Json => print(&format!(
            "{}\n",
            serde_json::to_string_pretty(&render::query_json(&evidence, &findings, &answers))?
        )),
        Output::Table => print(&render::query_table(
            &args.pod,
            &args.namespace,
            &evidence,
            &findings,
            &answers,
        )),
    }
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
    while let Some(update) = updates.recv().await {
        let e = update?;
        match args.output {
            Output::Json => print(&format!("{}\n", render::evidence_json(&e)))?,
            Output::Table => print(&format!("{}\n", render::watch_line(&e)))?,
        }
    }
    Ok(())
}
