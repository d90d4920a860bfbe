//! API discovery documents, built from the kinds table: `/api`, `/api/v1`, `/apis`,
//! `/apis/{group}`, `/apis/{group}/{version}`, and the aggregated form of `/api` and `/apis`
//! (apidiscovery.k8s.io/v2). Typed clients (`kube::Api::<NetworkPolicy>`) never read them;
//! dynamic ones do (`kube::discovery`, `Api::<DynamicObject>`), as does kubectl. Every kind is
//! listed with the verbs the stand-in really serves: get, list and watch.

use std::net::SocketAddr;

use serde_json::{Value, json};

use super::kinds::{Info, Kind};

/// Content type of an aggregated discovery answer.
const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
const VERBS: [&str; 3] = ["get", "list", "watch"];

/// A discovery document a path asks for.
#[derive(Debug, PartialEq)]
pub(super) enum Document<'a> {
    /// `/api`
    CoreVersions,
    /// `/apis`
    Groups,
    /// `/apis/{group}`
    Group(&'a str),
    /// `/api/{version}` (group "") or `/apis/{group}/{version}`
    Resources { group: &'a str, version: &'a str },
}

fn infos() -> impl Iterator<Item = &'static Info> {
    Kind::ALL.into_iter().map(Kind::info)
}

/// Named groups (not core), in table order.
fn group_names() -> Vec<&'static str> {
    let mut names = Vec::new();
    for info in infos().filter(|i| !i.group.is_empty()) {
        if !names.contains(&info.group) {
            names.push(info.group);
        }
    }
    names
}

/// The versions a group ("" for core) serves, in table order.
fn versions(group: &str) -> Vec<&'static str> {
    let mut versions = Vec::new();
    for info in infos().filter(|i| i.group == group) {
        if !versions.contains(&info.version) {
            versions.push(info.version);
        }
    }
    versions
}

pub(super) fn is_group(group: &str) -> bool {
    group_names().contains(&group)
}

/// Whether `group` ("" for core) serves `version`.
pub(super) fn is_group_version(group: &str, version: &str) -> bool {
    infos().any(|i| (i.group, i.version) == (group, version))
}

/// The body and content type of a document; None if nothing is served there.
pub(super) fn serve(
    doc: &Document<'_>,
    aggregated: bool,
    addr: SocketAddr,
) -> Option<(Value, &'static str)> {
    const JSON: &str = "application/json";
    Some(match doc {
        Document::CoreVersions if aggregated => (aggregated_list(&[""]), AGGREGATED),
        Document::Groups if aggregated => (aggregated_list(&group_names()), AGGREGATED),
        Document::CoreVersions => {
            let doc = json!({"kind": "APIVersions", "versions": versions(""),
                "serverAddressByClientCIDRs":
                    [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr.to_string()}]});
            (doc, JSON)
        }
        Document::Groups => {
            let groups: Vec<Value> = group_names().into_iter().map(group_doc).collect();
            (
                json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
                JSON,
            )
        }
        Document::Group(name) => {
            let mut doc = group_doc(group_names().into_iter().find(|g| g == name)?);
            if let Value::Object(map) = &mut doc {
                map.insert("kind".to_owned(), json!("APIGroup"));
                map.insert("apiVersion".to_owned(), json!("v1"));
            }
            (doc, JSON)
        }
        Document::Resources { group, version } => {
            let resources: Vec<Value> = infos()
                .filter(|i| (i.group, i.version) == (*group, *version))
                .map(|i| {
                    json!({"name": i.plural, "singularName": i.singular,
                        "namespaced": i.namespaced, "kind": i.kind, "verbs": VERBS,
                        "shortNames": i.short_names})
                })
                .collect();
            if resources.is_empty() {
                return None;
            }
            let group_version = if group.is_empty() {
                (*version).to_owned()
            } else {
                format!("{group}/{version}")
            };
            let doc = json!({"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": group_version, "resources": resources});
            (doc, JSON)
        }
    })
}

/// An `APIGroup` without kind and apiVersion (as inside an `APIGroupList`).
fn group_doc(group: &str) -> Value {
    let versions = versions(group);
    let version = |v: &str| json!({"groupVersion": format!("{group}/{v}"), "version": v});
    let listed: Vec<Value> = versions.iter().map(|v| version(v)).collect();
    json!({"name": group, "versions": listed,
        "preferredVersion": versions.first().map(|v| version(v))})
}

/// An `APIGroupDiscoveryList` of the given groups ("" is core).
fn aggregated_list(group_names: &[&str]) -> Value {
    let items: Vec<Value> = group_names
        .iter()
        .map(|group| {
            let versions: Vec<Value> = versions(group)
                .into_iter()
                .map(|version| {
                    let resources: Vec<Value> = infos()
                        .filter(|i| (i.group, i.version) == (*group, version))
                        .map(|i| {
                            json!({"resource": i.plural,
                                "responseKind": {"group": i.group, "version": i.version,
                                    "kind": i.kind},
                                "scope": if i.namespaced { "Namespaced" } else { "Cluster" },
                                "singularResource": i.singular, "verbs": VERBS,
                                "shortNames": i.short_names})
                        })
                        .collect();
                    json!({"version": version, "resources": resources, "freshness": "Current"})
                })
                .collect();
            let metadata = if group.is_empty() {
                json!({})
            } else {
                json!({"name": group})
            };
            json!({"metadata": metadata, "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {}, "items": items})
}
