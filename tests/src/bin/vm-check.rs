//! `vm-check`: checks every signal of the agent end to end on this machine (a minimal VM of
//! some kernel, or a host) and prints one `TA-MATRIX <json>` line per result on stdout (see
//! `triage_agent_tests::matrix`). Exits 0 when every cell ran, whatever the results (judging
//! is the VM runner's job); 1 when the harness itself broke (no agent, no simulated node); 2
//! on a wrong command line.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Parser;
use triage_agent_tests::matrix::{self, Cell};

/// Checks each signal of triage-agent on this kernel by the agent's own answers.
#[derive(Debug, Parser)]
#[command(name = "vm-check")]
struct Cli {
    /// The triage-agent binary (agent and CLI) [default: $TRIAGE_AGENT_BIN, else
    /// `triage-agent` next to vm-check].
    #[arg(long, env = "TRIAGE_AGENT_BIN")]
    agent_bin: Option<PathBuf>,
    /// The sim-workload binary pod processes run [default: `sim-workload` next to vm-check].
    #[arg(long)]
    workload: Option<PathBuf>,
    /// Multiplies every wait (software emulation is about 20 times slower than a host).
    #[arg(long, default_value_t = 1.0, value_parser = positive)]
    timeout_scale: f64,
    /// Only these signals, comma-separated (refused_outbound, refused_inbound,
    /// connect_timeout, packet_drop, dns_nxdomain, dns_timeout, oom_kill, cpu_throttling).
    #[arg(long, value_delimiter = ',')]
    only: Vec<Cell>,
}

fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() && f > 0.0 => Ok(f),
        _ => Err(format!("{s:?} is not a positive number")),
    }
}

/// A binary next to this one.
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating vm-check")?;
    Ok(exe
        .parent()
        .context("vm-check has no directory")?
        .join(name))
}

fn options(cli: Cli) -> anyhow::Result<matrix::Options> {
    Ok(matrix::Options {
        agent_bin: match cli.agent_bin {
            Some(p) => p,
            None => sibling("triage-agent")?,
        },
        workload: match cli.workload {
            Some(p) => p,
            None => sibling("sim-workload")?,
        },
        timeout_scale: cli.timeout_scale,
        only: cli.only,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match options(cli).and_then(|o| matrix::run(&o)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            let error = format!("{e:#}");
            println!("TA-MATRIX {}", serde_json::json!({ "error": error }));
            eprintln!("vm-check: {error}");
            ExitCode::FAILURE
        }
    }
}
