//! The Dockerfile at the repository root cannot be built here (no registry for its base
//! images), so its test reads it instead: the build stage runs the same `cargo build` as
//! `cargo xtask image`, and the runtime stage is empty and has the same binary path, PATH,
//! user, entrypoint, command and labels as the archive's config.

/// One instruction: its keyword in capitals and the rest of its (joined) lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    pub keyword: String,
    pub args: String,
}

/// Instructions of a Dockerfile: comments and blank lines dropped, `\` continuations joined.
pub fn parse(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, args) = current
                    .split_once(char::is_whitespace)
                    .unwrap_or((&current, ""));
                out.push(Instruction {
                    keyword: keyword.to_ascii_uppercase(),
                    args: args.trim().to_owned(),
                });
                current.clear();
            }
        }
    }
    out
}

/// `KEY="value" KEY2=value` pairs (LABEL, ENV, ARG).
pub fn pairs(args: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = args.trim_start();
    while let Some((key, after)) = rest.split_once('=') {
        let (value, tail) = match after.strip_prefix('"') {
            Some(quoted) => quoted.split_once('"').unwrap_or((quoted, "")),
            None => after.split_once(char::is_whitespace).unwrap_or((after, "")),
        };
        out.push((key.trim().to_owned(), value.to_owned()));
        rest = tail.trim_start();
    }
    out
}

mod tests {
    use super::*;
    use crate::{image, root};

    fn stages() -> Vec<Vec<Instruction>> {
        let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
        let mut stages: Vec<Vec<Instruction>> = Vec::new();
        for i in parse(&text) {
            if i.keyword == "FROM" {
                stages.push(Vec::new());
            }
            if let Some(stage) = stages.last_mut() {
                stage.push(i);
            }
        }
        stages
    }

    fn one<'a>(stage: &'a [Instruction], keyword: &str) -> &'a str {
        let found: Vec<_> = stage.iter().filter(|i| i.keyword == keyword).collect();
        assert_eq!(
            found.len(),
            1,
            "want one {keyword} in the stage: {stage:#?}"
        );
        &found[0].args
    }

    fn json_list(args: &str) -> Vec<String> {
        serde_json::from_str(args).unwrap_or_else(|e| panic!("{args}: not a JSON list ({e})"))
    }

    #[test]
    fn parses_continuations_comments_and_pairs() {
        let got = parse("# c\nFROM a AS b\n\nRUN x \\\n  y\nLABEL k=\"v w\" \\\n  j=u\n");
        assert_eq!(got.len(), 3);
        assert_eq!(got[1].args, "x  y");
        assert_eq!(
            pairs(&got[2].args),
            [("k".into(), "v w".into()), ("j".into(), "u".into())]
        );
    }

    #[test]
    fn the_build_stage_runs_the_same_cargo_build() {
        let stages = stages();
        assert_eq!(stages.len(), 2, "a build stage and a runtime stage");
        let build = &stages[0];
        assert!(one(build, "FROM").ends_with(" AS build"), "{build:?}");
        let cargo_build = format!("cargo {}", image::CARGO_BUILD.join(" "));
        assert!(
            build
                .iter()
                .any(|i| i.keyword == "RUN" && i.args == cargo_build),
            "the build stage must `RUN {cargo_build}`"
        );
        assert!(
            build
                .iter()
                .any(|i| i.keyword == "RUN" && i.args == "cargo xtask setup --build-only"),
            "the build stage installs the toolchain with `cargo xtask setup --build-only`"
        );
    }

    #[test]
    fn the_runtime_stage_is_the_archives_image() {
        let stages = stages();
        let runtime = &stages[1];
        assert_eq!(one(runtime, "FROM"), "scratch", "an empty base");
        let copies: Vec<&str> = runtime
            .iter()
            .filter(|i| i.keyword == "COPY")
            .map(|i| i.args.as_str())
            .collect();
        assert_eq!(
            copies,
            [
                format!(
                    "--from=build /src/target/{}/release/triage-agent /{}",
                    image::TARGET,
                    image::BINARY
                ),
                format!("--from=build /src/LICENSE /{}", image::LICENSE_PATH),
                format!(
                    "--from=build /src/THIRD-PARTY-NOTICES.txt /{}",
                    crate::notices::IMAGE_PATH
                ),
            ],
            "the runtime stage copies the archive's files, no others"
        );
        assert_eq!(one(runtime, "USER"), image::USER);
        assert_eq!(
            json_list(one(runtime, "ENTRYPOINT")),
            [format!("/{}", image::BINARY)]
        );
        assert_eq!(json_list(one(runtime, "CMD")), image::CMD);
        let env: Vec<String> = pairs(one(runtime, "ENV"))
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(env, image::ENV);

        // Labels: the archive's, with the build arguments standing in for version, revision
        // and creation time, and the version argument defaulting to the crate's.
        let args: Vec<(String, String)> = runtime
            .iter()
            .filter(|i| i.keyword == "ARG")
            .map(|i| {
                let (k, v) = i.args.split_once('=').unwrap_or((&i.args, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect();
        assert!(
            args.contains(&("VERSION".into(), image::VERSION.into())),
            "{args:?}"
        );
        let spec = image::spec(Vec::new(), "amd64", 0, 0, Some("r".into())).unwrap();
        let mut labels: Vec<(String, String)> = pairs(one(runtime, "LABEL"));
        labels.sort();
        let want: Vec<(String, String)> = spec
            .labels
            .into_iter()
            .map(|(k, v)| {
                let arg = match k.trim_start_matches("org.opencontainers.image.") {
                    "version" => Some("${VERSION}"),
                    "revision" => Some("${REVISION}"),
                    "created" => Some("${CREATED}"),
                    _ => None,
                };
                (k, arg.map_or(v, str::to_owned))
            })
            .collect();
        assert_eq!(labels, want);
    }
}
