//! Namespaces and NetworkPolicies: list and get, what the CLI reads to explain drops. Every
//! namespace that holds a pod exists, labelled `kubernetes.io/metadata.name` as the real
//! API server's namespace controller labels it; tests add labels with
//! [`super::ApiServer::apply_namespace`].

use std::collections::BTreeMap;

use k8s_openapi::api::{core::v1::Namespace, networking::v1::NetworkPolicy};
use serde_json::{Value, json};

/// What the stand-in stores besides pods.
#[derive(Default)]
pub struct Objects {
    pub namespaces: BTreeMap<String, Namespace>,
    pub policies: BTreeMap<(String, String), NetworkPolicy>,
    /// Namespaces that hold pods (they exist even when never applied).
    pub pod_namespaces: Vec<String>,
}

/// A request for one of these objects.
pub enum Route<'a> {
    Namespaces,
    Namespace(&'a str),
    Policies(Option<&'a str>),
    Policy(&'a str, &'a str),
}

/// The route of a path's segments, if it is one of these objects.
pub fn route<'a>(segments: &[&'a str]) -> Option<Route<'a>> {
    Some(match segments {
        ["api", "v1", "namespaces"] => Route::Namespaces,
        ["api", "v1", "namespaces", name] if !name.is_empty() => Route::Namespace(name),
        ["apis", "networking.k8s.io", "v1", "networkpolicies"] => Route::Policies(None),
        [
            "apis",
            "networking.k8s.io",
            "v1",
            "namespaces",
            ns,
            "networkpolicies",
        ] => Route::Policies(Some(ns)),
        [
            "apis",
            "networking.k8s.io",
            "v1",
            "namespaces",
            ns,
            "networkpolicies",
            name,
        ] => Route::Policy(ns, name),
        _ => return None,
    })
}

fn item<T: k8s_openapi::serde::Serialize>(v: &T) -> Value {
    let mut v = serde_json::to_value(v).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        map.remove("apiVersion");
        map.remove("kind");
    }
    v
}

impl Objects {
    fn all_namespaces(&self) -> Vec<Namespace> {
        let mut out = self.namespaces.clone();
        for ns in &self.pod_namespaces {
            out.entry(ns.clone()).or_insert_with(|| {
                serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap_or_default()
            });
        }
        out.into_iter()
            .map(|(name, mut ns)| {
                ns.metadata
                    .labels
                    .get_or_insert_with(BTreeMap::new)
                    .insert("kubernetes.io/metadata.name".into(), name);
                ns
            })
            .collect()
    }

    /// The answer to a GET, or the NotFound message.
    pub fn serve(&self, route: &Route<'_>, rv: u64) -> Result<Value, String> {
        let list = |kind: &str, api: &str, items: Vec<Value>| {
            json!({"apiVersion": api, "kind": kind,
                "metadata": {"resourceVersion": rv.to_string()}, "items": items})
        };
        match route {
            Route::Namespaces => Ok(list(
                "NamespaceList",
                "v1",
                self.all_namespaces().iter().map(item).collect(),
            )),
            Route::Namespace(name) => self
                .all_namespaces()
                .into_iter()
                .find(|n| n.metadata.name.as_deref() == Some(name))
                .map(|n| serde_json::to_value(n).unwrap_or(Value::Null))
                .ok_or_else(|| format!("namespaces \"{name}\" not found")),
            Route::Policies(ns) => Ok(list(
                "NetworkPolicyList",
                "networking.k8s.io/v1",
                self.policies
                    .iter()
                    .filter(|((pns, _), _)| ns.is_none_or(|n| n == pns))
                    .map(|(_, p)| item(p))
                    .collect(),
            )),
            Route::Policy(ns, name) => self
                .policies
                .get(&((*ns).to_owned(), (*name).to_owned()))
                .map(|p| serde_json::to_value(p).unwrap_or(Value::Null))
                .ok_or_else(|| format!("networkpolicies.networking.k8s.io \"{name}\" not found")),
        }
    }
}
