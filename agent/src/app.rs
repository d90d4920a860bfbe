//! Runs a parsed command line: sets up logging, dispatches to the node agent or a client
//! command, and turns failures into a one-line error and a non-zero exit code.

pub mod args;

#[cfg(feature = "node-agent")]
use std::time::Duration;
use std::{io::Write as _, process::ExitCode};

use anyhow::Context as _;
use args::{Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

#[cfg(feature = "node-agent")]
use crate::cli::commands::print;
use crate::{
    cli::{
        commands,
        exit::{self, Exit},
    },
    text,
};

fn init_logging(cli: &Cli) {
    #[cfg(feature = "node-agent")]
    let agent = matches!(cli.command, Command::Agent(_));
    #[cfg(not(feature = "node-agent"))]
    let agent = false;
    let default = if agent {
        "info"
    } else {
        "warn,kube_client=off"
    };
    let filter = EnvFilter::try_new(cli.log.as_deref().unwrap_or(default))
        .unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only on a terminal: `kubectl logs` and log files get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match cli.log_format {
        LogFormat::Text => builder.try_init(),
        // The event's fields (`message` first) at the top level of each object, as log
        // pipelines (Loki, Elasticsearch, Cloud Logging) expect.
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Answers a completion request (kubectl's plugin completion protocol) on stdout.
pub async fn complete(words: &[String]) -> ExitCode {
    use clap::CommandFactory as _;
    let text = crate::cli::complete::complete(&Cli::command(), words).await;
    let mut out = std::io::stdout().lock();
    if out
        .write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Runs the command; errors are printed as one line on stderr.
pub async fn run(cli: Cli) -> ExitCode {
    init_logging(&cli);
    crate::cli::render::set_color(cli.color);
    match dispatch(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line, and nothing from the API server or an agent reaches the terminal raw.
            let chain: Vec<String> = error.chain().map(text::cleaned).collect();
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

/// `doctor`: checks this node, prints the report, exits by the worst finding.
#[cfg(feature = "node-agent")]
fn doctor(args: args::DoctorArgs) -> anyhow::Result<()> {
    let report = crate::doctor::run(&crate::doctor::DoctorConfig {
        cgroup_root: args.cgroup_root,
        kubelet_cgroup_root: args.kubelet_cgroup_root,
        dns_ports: args.dns_ports.0,
        drop_reasons: args.drop_reasons,
        cri_socket: args
            .cri_socket
            .unwrap_or(crate::attribute::runtime::CriSocket::Discover),
    });
    let text = match args.output {
        args::DoctorOutput::Table => crate::doctor::render_table(&report),
        args::DoctorOutput::Json => {
            let mut json = serde_json::to_string_pretty(&report).context("encoding the report")?;
            json.push('\n');
            json
        }
    };
    print(&text)?;
    let s = &report.summary;
    match s.exit_code {
        0 => Ok(()),
        code => Err(Exit {
            code,
            message: format!(
                "{} of {} signals degraded, {} off, {} checks failed",
                s.degraded,
                report.signals.len(),
                s.off,
                s.failed_checks
            ),
        }
        .into()),
    }
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
                        max_pending: crate::store::persist::DEFAULT_MAX_PENDING,
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
                cri_socket: args
                    .cri_socket
                    .unwrap_or(crate::attribute::runtime::CriSocket::Discover),
                sample_interval: args.sample_interval.max(Duration::from_millis(100)),
                throttle_threshold: args.throttle_threshold,
                otlp,
            })
            .await
        }
        Command::Query(args) => commands::query(args, false).await,
        #[cfg(feature = "cluster")]
        Command::Explain(args) => commands::query(args, true).await,
        Command::Watch(args) => commands::watch(args).await,
        Command::Status(args) => commands::status(args).await,
        #[cfg(feature = "node-agent")]
        Command::Doctor(args) => doctor(args),
        #[cfg(feature = "cluster")]
        Command::Timeline(args) => commands::timeline(args).await,
        Command::Completion(args) => {
            use clap::CommandFactory as _;
            let bin = args::invoked_as(std::env::args_os().next().as_deref());
            // A plugin's completion is kubectl's (through the helper); the script completes
            // the binary's own name.
            let name = if bin == "triage-agent" {
                "triage-agent"
            } else {
                args::PLUGIN
            };
            let mut script = Vec::new();
            clap_complete::generate(args.shell, &mut Cli::command(), name, &mut script);
            let mut out = std::io::stdout().lock();
            out.write_all(&script).context("writing output")?;
            out.flush().context("writing output")
        }
    }
}
