//! The safest fix for a denial, as a NetworkPolicy the user can review before applying: it
//! allows exactly the denied flow (one peer, one port), nothing wider. DNS to port 53 gets the
//! well-known allow-DNS policy instead (to kube-system's kube-dns pods, UDP and TCP).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::networking::v1::{
        NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
        NetworkPolicyPort, NetworkPolicySpec,
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use super::{Flow, Proto, WorkloadRef};

fn selector(labels: &BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels.clone()),
        match_expressions: None,
    }
}

/// The far end as a peer: its pod and namespace labels, or its address as a /32 or /128.
fn peer(other: Option<&WorkloadRef>, ip: std::net::IpAddr) -> NetworkPolicyPeer {
    match other {
        Some(o) => NetworkPolicyPeer {
            pod_selector: Some(selector(&o.labels)),
            namespace_selector: Some(selector(&BTreeMap::from([(
                "kubernetes.io/metadata.name".to_owned(),
                o.namespace.clone(),
            )]))),
            ip_block: None,
        },
        None => NetworkPolicyPeer {
            ip_block: Some(k8s_openapi::api::networking::v1::IPBlock {
                cidr: format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 }),
                except: None,
            }),
            ..NetworkPolicyPeer::default()
        },
    }
}

fn port(flow: &Flow, proto: Proto) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(i32::from(flow.port))),
        protocol: Some(proto.as_k8s().to_owned()),
        end_port: None,
    }
}

fn yaml(policy: &NetworkPolicy) -> String {
    let mut v = serde_json::to_value(policy).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.insert("apiVersion".into(), "networking.k8s.io/v1".into());
        m.insert("kind".into(), "NetworkPolicy".into());
    }
    serde_saphyr::to_string(&v).unwrap_or_default()
}

fn meta(name: String, namespace: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(namespace.to_owned()),
        ..ObjectMeta::default()
    }
}

/// Allows the sender's egress to the destination (or DNS, for port 53).
pub fn allow_egress(sender: &WorkloadRef, receiver: Option<&WorkloadRef>, flow: &Flow) -> String {
    let spec = if flow.port == 53 {
        NetworkPolicySpec {
            pod_selector: Some(selector(&sender.labels)),
            policy_types: Some(vec!["Egress".to_owned()]),
            egress: Some(vec![NetworkPolicyEgressRule {
                to: Some(vec![NetworkPolicyPeer {
                    namespace_selector: Some(selector(&BTreeMap::from([(
                        "kubernetes.io/metadata.name".to_owned(),
                        "kube-system".to_owned(),
                    )]))),
                    pod_selector: Some(selector(&BTreeMap::from([(
                        "k8s-app".to_owned(),
                        "kube-dns".to_owned(),
                    )]))),
                    ip_block: None,
                }]),
                ports: Some(vec![port(flow, Proto::Udp), port(flow, Proto::Tcp)]),
            }]),
            ..NetworkPolicySpec::default()
        }
    } else {
        NetworkPolicySpec {
            pod_selector: Some(selector(&sender.labels)),
            policy_types: Some(vec!["Egress".to_owned()]),
            egress: Some(vec![NetworkPolicyEgressRule {
                to: Some(vec![peer(receiver, flow.dst)]),
                ports: Some(vec![port(flow, flow.proto)]),
            }]),
            ..NetworkPolicySpec::default()
        }
    };
    let name = if flow.port == 53 {
        format!("allow-dns-{}", sender.name)
    } else {
        format!("allow-{}-egress-{}", sender.name, flow.port)
    };
    yaml(&NetworkPolicy {
        metadata: meta(name, &sender.namespace),
        spec: Some(spec),
    })
}

/// Allows the receiver's ingress from the sender.
pub fn allow_ingress(receiver: &WorkloadRef, sender: Option<&WorkloadRef>, flow: &Flow) -> String {
    yaml(&NetworkPolicy {
        metadata: meta(
            format!("allow-{}-ingress-{}", receiver.name, flow.port),
            &receiver.namespace,
        ),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(&receiver.labels)),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![peer(sender, flow.src)]),
                ports: Some(vec![port(flow, flow.proto)]),
            }]),
            ..NetworkPolicySpec::default()
        }),
    })
}
