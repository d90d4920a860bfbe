//! `triage-agent`: parses the command line and hands it to [`triage_agent::app::run`].

use std::process::ExitCode;

fn main() -> ExitCode {
    let completing = triage_agent::app::args::completion_request();
    let cli = match completing {
        Some(_) => None,
        None => Some(triage_agent::app::args::parse()),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match (cli, completing) {
        (Some(cli), _) => runtime.block_on(triage_agent::app::run(cli)),
        (None, words) => runtime.block_on(triage_agent::app::complete(&words.unwrap_or_default())),
    }
}
