//! `triage-agent`: parses the command line and hands it to [`triage_agent::app::run`].

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = triage_agent::app::args::parse();
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
    runtime.block_on(triage_agent::app::run(cli))
}
