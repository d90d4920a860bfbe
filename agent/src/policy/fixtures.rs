//! A small cluster for the evaluator's tests: namespaces, pods with labels and named ports,
//! and policies written as the YAML/JSON users write.

use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use serde_json::{Value, json};

use super::Snapshot;

pub fn namespace(name: &str, labels: Value) -> Namespace {
    let mut labels = labels;
    if let Some(m) = labels.as_object_mut() {
        m.insert("kubernetes.io/metadata.name".into(), name.into());
    }
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
        .unwrap_or_default()
}

pub fn pod(namespace: &str, name: &str, ip: &str, labels: Value, ports: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"containers": [{"name": "app", "ports": ports}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    }))
    .unwrap_or_default()
}

pub fn policy(namespace: &str, name: &str, spec: Value) -> NetworkPolicy {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec
    }))
    .unwrap_or_default()
}

/// The cluster every case starts from; cases add policies.
pub fn cluster() -> Snapshot {
    Snapshot {
        policies: Vec::new(),
        namespaces: vec![
            namespace("default", json!({})),
            namespace("shop", json!({"team": "shop"})),
            namespace("data", json!({"team": "data", "env": "prod"})),
            namespace("kube-system", json!({})),
            namespace("jobs", json!({"team": "batch"})),
            namespace("myproject", json!({"project": "myproject"})),
        ],
        pods: vec![
            pod(
                "shop",
                "web",
                "10.0.0.1",
                json!({"app": "web", "tier": "front"}),
                json!([]),
            ),
            pod(
                "shop",
                "api",
                "10.0.0.2",
                json!({"app": "api", "tier": "back"}),
                json!([{"name": "http", "containerPort": 8080}]),
            ),
            pod(
                "data",
                "db",
                "10.0.1.1",
                json!({"app": "db", "role": "primary"}),
                json!([{"name": "pg", "containerPort": 5432}]),
            ),
            pod(
                "data",
                "cache",
                "10.0.1.2",
                json!({"app": "cache"}),
                json!([]),
            ),
            pod(
                "kube-system",
                "coredns",
                "10.0.2.1",
                json!({"k8s-app": "kube-dns"}),
                json!([
                    {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"}
                ]),
            ),
            pod(
                "jobs",
                "batch",
                "10.0.3.1",
                json!({"app": "batch"}),
                json!([]),
            ),
            // The Kubernetes documentation's example pods.
            pod(
                "default",
                "client",
                "172.17.0.5",
                json!({"role": "client"}),
                json!([]),
            ),
            pod(
                "default",
                "frontend",
                "10.9.0.3",
                json!({"role": "frontend"}),
                json!([]),
            ),
            pod(
                "default",
                "redis",
                "172.17.0.10",
                json!({"role": "db"}),
                json!([]),
            ),
            pod(
                "myproject",
                "worker",
                "10.9.1.4",
                json!({"app": "worker"}),
                json!([]),
            ),
            pod("shop", "v6", "fd00::5", json!({"app": "v6"}), json!([])),
        ],
        ..Snapshot::default()
    }
}
