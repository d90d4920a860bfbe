//! Dynamic shell completion, in the protocol kubectl (1.26+) speaks to a plugin's completion
//! helper: kubectl runs `kubectl_complete-triage_agent ARGS... WORD` (ARGS what was typed after
//! the plugin's name, WORD the one being completed, maybe empty) and reads one candidate a line
//! (`value<TAB>description`), then `:N`, cobra's directive (4: no file completion; 2: no space
//! after, for `deploy/`). The binary answers so when it is installed under that name, and as
//! `triage-agent __complete ARGS... WORD`.
//!
//! Subcommands, flags and flag values with fixed choices come from the command line's own
//! definition (clap), so they cannot drift; namespaces, pods and workloads from the cluster,
//! with the user's kubeconfig, each list bounded by [`LOOKUP_TIMEOUT`]; contexts, clusters and
//! users from the kubeconfig. A lookup that fails completes nothing rather than an error.

use std::time::Duration;

use clap::Command;

/// Cobra's directives.
const NO_SPACE: u8 = 2;
const NO_FILE: u8 = 4;
/// Default: the shell completes file names.
const FILES: u8 = 0;

/// A lookup that takes longer completes nothing: a tab press must not hang.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// The workload types a subject may name, as completed (`deploy/`).
const TYPES: [&str; 6] = ["pod/", "deploy/", "sts/", "ds/", "job/", "rs/"];

/// Subcommands whose positional argument is a subject (pods only for `timeline`).
const SUBJECT_COMMANDS: [&str; 4] = ["query", "explain", "watch", "timeline"];

/// The completions of `words` (the last is the word being completed) for `cli`, in
/// kubectl's plugin completion protocol.
pub async fn complete(cli: &Command, words: &[String]) -> String {
    let (candidates, directive) = candidates(cli, words).await;
    let mut out = String::new();
    for (value, description) in candidates {
        out.push_str(&crate::text::cleaned(value));
        if !description.is_empty() {
            out.push('\t');
            out.push_str(&crate::text::cleaned(description));
        }
        out.push('\n');
    }
    out.push_str(&format!(":{directive}\n"));
    out
}

type Candidates = Vec<(String, String)>;

async fn candidates(cli: &Command, words: &[String]) -> (Candidates, u8) {
    let (current, typed) = match words.split_last() {
        Some((current, typed)) => (current.as_str(), typed),
        None => ("", &[][..]),
    };
    let sub = typed
        .iter()
        .find(|w| !w.starts_with('-'))
        .and_then(|w| cli.find_subcommand(w));
    let Some(sub) = sub else {
        let subs = cli
            .get_subcommands()
            .filter(|c| !c.is_hide_set() && c.get_name().starts_with(current))
            .map(|c| (c.get_name().to_owned(), first_line(c.get_about())))
            .collect();
        return (subs, NO_FILE);
    };
    // A flag's value: `--flag VALUE` or `--flag=VALUE`.
    let (flag, prefix, value) = match current.split_once('=') {
        Some((flag, value)) if flag.starts_with("--") => (Some(flag), format!("{flag}="), value),
        _ => (
            typed
                .last()
                .filter(|w| w.starts_with('-'))
                .map(String::as_str),
            String::new(),
            current,
        ),
    };
    if let Some(arg) = flag.and_then(|f| find_arg(cli, sub, f))
        && arg.get_action().takes_values()
    {
        let (mut found, directive) = flag_values(arg, typed, value).await;
        for (v, _) in &mut found {
            v.insert_str(0, &prefix);
        }
        return (found, directive);
    }
    if current.starts_with('-') {
        let flags = sub
            .get_arguments()
            .chain(cli.get_arguments().filter(|a| a.is_global_set()))
            .filter(|a| !a.is_hide_set())
            .filter_map(|a| {
                let long = format!("--{}", a.get_long()?);
                long.starts_with(current)
                    .then(|| (long, first_line(a.get_help())))
            })
            .collect();
        return (flags, NO_FILE);
    }
    let name = sub.get_name();
    if name == "completion" {
        let shells = ["bash", "zsh", "fish", "elvish", "powershell"];
        return (matching(shells.map(str::to_owned), current), NO_FILE);
    }
    if SUBJECT_COMMANDS.contains(&name) {
        return subjects(typed, current, name == "timeline").await;
    }
    (Vec::new(), NO_FILE)
}

fn first_line(s: Option<&clap::builder::StyledStr>) -> String {
    s.map(|s| s.to_string().lines().next().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

/// The argument a flag names: `-n`, `--namespace`, in the subcommand or global.
fn find_arg<'a>(cli: &'a Command, sub: &'a Command, flag: &str) -> Option<&'a clap::Arg> {
    let matches = |a: &&clap::Arg| match flag.strip_prefix("--") {
        Some(long) => a.get_long() == Some(long),
        None => flag
            .strip_prefix('-')
            .and_then(|s| s.chars().next())
            .is_some_and(|c| a.get_short() == Some(c) && flag.len() == 2),
    };
    sub.get_arguments()
        .find(matches)
        .or_else(|| cli.get_arguments().find(matches))
}

fn matching(values: impl IntoIterator<Item = String>, current: &str) -> Candidates {
    values
        .into_iter()
        .filter(|v| v.starts_with(current))
        .map(|v| (v, String::new()))
        .collect()
}

/// The values a flag takes: its fixed choices, else what the cluster or kubeconfig has.
async fn flag_values(arg: &clap::Arg, typed: &[String], current: &str) -> (Candidates, u8) {
    let choices: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| v.get_name().to_owned())
        .collect();
    if !choices.is_empty() {
        return (matching(choices, current), NO_FILE);
    }
    match arg.get_long().unwrap_or_default() {
        "output" => {
            let formats = [
                "table",
                "wide",
                "json",
                "yaml",
                "jsonpath=",
                "custom-columns=",
            ];
            let found = matching(formats.map(str::to_owned), current);
            let open = found.iter().any(|(v, _)| v.ends_with('='));
            (found, if open { NO_FILE | NO_SPACE } else { NO_FILE })
        }
        "kind" => (
            matching(
                crate::evidence::Kind::ALL
                    .iter()
                    .map(|k| k.as_str().to_owned()),
                current,
            ),
            NO_FILE,
        ),
        "kubeconfig" | "store-path" => (Vec::new(), FILES),
        "namespace" | "agent-namespace" => {
            (matching(cluster::namespaces(typed).await, current), NO_FILE)
        }
        "pod" => {
            let pods = cluster::names(typed, "pod").await;
            (matching(pods, current), NO_FILE)
        }
        "context" | "cluster" | "user" => (
            matching(
                cluster::kubeconfig_names(typed, arg.get_long().unwrap_or_default()),
                current,
            ),
            NO_FILE,
        ),
        _ => (Vec::new(), NO_FILE),
    }
}

/// A subject: pods and `TYPE/` prefixes; after `TYPE/`, that type's objects; after
/// `NAMESPACE/`, that namespace's pods.
async fn subjects(typed: &[String], current: &str, pods_only: bool) -> (Candidates, u8) {
    if let Some((first, rest)) = current.split_once('/') {
        let kind = match super::subject::parse(&format!("{first}/x")) {
            Ok(s) => match s.target {
                super::subject::Target::Pod(_) if s.namespace.is_none() => Some("pod"),
                super::subject::Target::Workload(kind, _) if !pods_only => Some(kind.kind()),
                _ => None,
            },
            Err(_) => return (Vec::new(), NO_FILE),
        };
        let names = match kind {
            Some(kind) => cluster::names(typed, kind).await,
            // NAMESPACE/POD
            None => cluster::names_in(typed, first).await,
        };
        let found = names
            .into_iter()
            .filter(|n| n.starts_with(rest))
            .map(|n| (format!("{first}/{n}"), String::new()))
            .collect();
        return (found, NO_FILE);
    }
    let mut found = matching(cluster::names(typed, "pod").await, current);
    if !pods_only {
        let types: Vec<(String, String)> = matching(TYPES.map(str::to_owned), current);
        let open = !types.is_empty();
        found.extend(types);
        if open {
            return (found, NO_FILE | NO_SPACE);
        }
    }
    (found, NO_FILE)
}

#[cfg(feature = "cluster")]
mod cluster {
    use k8s_openapi::api::{
        apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet},
        batch::v1::Job,
        core::v1::{Namespace, Pod},
    };
    use kube::{Api, api::ListParams, config::Kubeconfig};

    use super::LOOKUP_TIMEOUT;
    use crate::cli::cluster::{self, ClusterArgs};

    /// A flag's value in what was typed: `--flag V`, `--flag=V`, or `-s V`.
    fn flag(typed: &[String], long: &str, short: Option<&str>) -> Option<String> {
        let eq = format!("--{long}=");
        let mut words = typed.iter();
        while let Some(w) = words.next() {
            if let Some(v) = w.strip_prefix(&eq) {
                return Some(v.to_owned());
            }
            if *w == format!("--{long}") || short.is_some_and(|s| w == s) {
                return words.next().cloned();
            }
        }
        None
    }

    fn args(typed: &[String]) -> ClusterArgs {
        ClusterArgs {
            kubeconfig: flag(typed, "kubeconfig", None).map(Into::into),
            context: flag(typed, "context", None),
            cluster: flag(typed, "cluster", None),
            user: flag(typed, "user", None),
            impersonate: flag(typed, "as", None),
            impersonate_groups: Vec::new(),
            request_timeout: LOOKUP_TIMEOUT,
        }
    }

    async fn client(typed: &[String]) -> Option<(kube::Client, String)> {
        let args = args(typed);
        let namespace = match flag(typed, "namespace", Some("-n")) {
            Some(ns) => ns,
            None => cluster::default_namespace(&args).await,
        };
        Some((cluster::client(&args).await.ok()?, namespace))
    }

    async fn list<K>(api: Api<K>) -> Vec<String>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        match tokio::time::timeout(LOOKUP_TIMEOUT, api.list(&ListParams::default())).await {
            Ok(Ok(list)) => list
                .items
                .into_iter()
                .filter_map(|o| o.meta().name.clone())
                .collect(),
            _ => Vec::new(),
        }
    }

    pub async fn namespaces(typed: &[String]) -> Vec<String> {
        match client(typed).await {
            Some((c, _)) => list(Api::<Namespace>::all(c)).await,
            None => Vec::new(),
        }
    }

    /// Objects of `kind` ("pod", "Deployment", ...) in the command's namespace.
    pub async fn names(typed: &[String], kind: &str) -> Vec<String> {
        let Some((c, ns)) = client(typed).await else {
            return Vec::new();
        };
        of_kind(c, &ns, kind).await
    }

    /// Pods of `namespace`.
    pub async fn names_in(typed: &[String], namespace: &str) -> Vec<String> {
        let Some((c, _)) = client(typed).await else {
            return Vec::new();
        };
        of_kind(c, namespace, "pod").await
    }

    async fn of_kind(c: kube::Client, ns: &str, kind: &str) -> Vec<String> {
        match kind {
            "Deployment" => list(Api::<Deployment>::namespaced(c, ns)).await,
            "StatefulSet" => list(Api::<StatefulSet>::namespaced(c, ns)).await,
            "DaemonSet" => list(Api::<DaemonSet>::namespaced(c, ns)).await,
            "Job" => list(Api::<Job>::namespaced(c, ns)).await,
            "ReplicaSet" => list(Api::<ReplicaSet>::namespaced(c, ns)).await,
            _ => list(Api::<Pod>::namespaced(c, ns)).await,
        }
    }

    /// The kubeconfig's contexts, clusters or users.
    pub fn kubeconfig_names(typed: &[String], what: &str) -> Vec<String> {
        let config = match flag(typed, "kubeconfig", None) {
            Some(path) => Kubeconfig::read_from(path),
            None => Kubeconfig::read(),
        };
        let Ok(config) = config else {
            return Vec::new();
        };
        match what {
            "context" => config.contexts.into_iter().map(|c| c.name).collect(),
            "cluster" => config.clusters.into_iter().map(|c| c.name).collect(),
            _ => config.auth_infos.into_iter().map(|u| u.name).collect(),
        }
    }
}

#[cfg(not(feature = "cluster"))]
mod cluster {
    pub async fn namespaces(_: &[String]) -> Vec<String> {
        Vec::new()
    }
    pub async fn names(_: &[String], _: &str) -> Vec<String> {
        Vec::new()
    }
    pub async fn names_in(_: &[String], _: &str) -> Vec<String> {
        Vec::new()
    }
    pub fn kubeconfig_names(_: &[String], _: &str) -> Vec<String> {
        Vec::new()
    }
}
