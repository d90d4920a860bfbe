//! The CLI reference is generated from the command line's definition, so it cannot drift:
//! docs/cli.md (clap-markdown) and the man pages in docs/man/ (clap_mangen).
//! `cli_reference_is_fresh` only compares (it never writes); `cargo xtask codegen` runs the
//! ignored `regenerate` test, which writes them.
#![expect(
    clippy::expect_used,
    reason = "test helpers panic with context, like the tests that call them"
)]

use std::{fs, path::PathBuf};

use clap::CommandFactory as _;
use triage_agent::app::args::Cli;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The command line as documented: values of environment variables set where the test runs
/// are never shown.
fn command() -> clap::Command {
    fn quiet(cmd: clap::Command) -> clap::Command {
        let cmd = cmd.mut_args(|a| a.hide_env_values(true));
        let names: Vec<String> = cmd
            .get_subcommands()
            .map(|s| s.get_name().to_owned())
            .collect();
        names
            .into_iter()
            .fold(cmd, |c, n| c.mut_subcommand(n, quiet))
    }
    quiet(Cli::command().bin_name("triage-agent"))
}

/// (path under the repository, contents) of every generated file.
fn generate() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    let options = clap_markdown::MarkdownOptions::new()
        .title("triage-agent command line".to_owned())
        .show_footer(false);
    let markdown = clap_markdown::help_markdown_command_custom(&command(), &options);
    files.push((
        PathBuf::from("docs/cli.md"),
        format!(
            "<!-- generated from the command line's definition by `cargo xtask codegen`; \
             [README](../README.md) -->\n\n{markdown}"
        ),
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    clap_mangen::generate_to(command(), dir.path()).expect("man pages");
    let mut pages: Vec<_> = fs::read_dir(dir.path())
        .expect("the man pages")
        .map(|e| e.expect("an entry").path())
        .collect();
    pages.sort();
    for page in pages {
        let name = page.file_name().expect("a name").to_owned();
        files.push((
            PathBuf::from("docs/man").join(name),
            fs::read_to_string(&page).expect("a man page"),
        ));
    }
    files
}

#[test]
fn cli_reference_is_fresh() {
    let files = generate();
    let mut stale = Vec::new();
    for (path, text) in &files {
        if fs::read_to_string(root().join(path)).ok().as_ref() != Some(text) {
            stale.push(path.display().to_string());
        }
    }
    let listed: Vec<PathBuf> = files.iter().map(|(p, _)| p.clone()).collect();
    for entry in fs::read_dir(root().join("docs/man"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = PathBuf::from("docs/man").join(entry.file_name());
        if !listed.contains(&path) {
            stale.push(format!("{} (no longer generated)", path.display()));
        }
    }
    assert!(
        stale.is_empty(),
        "the CLI reference is stale: {}; run `cargo xtask codegen`",
        stale.join(", ")
    );
}

/// Writes the reference (`cargo xtask codegen`).
#[test]
#[ignore = "writes docs/: run by `cargo xtask codegen`"]
fn regenerate() {
    let man = root().join("docs/man");
    let _ = fs::remove_dir_all(&man);
    fs::create_dir_all(&man).expect("docs/man");
    for (path, text) in generate() {
        fs::write(root().join(path), text).expect("writing the reference");
    }
}
