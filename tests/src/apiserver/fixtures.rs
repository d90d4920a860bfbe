//! Realistic objects for the simulated node and the tests: Pods as the kubelet reports them,
//! Namespaces, NetworkPolicies.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStatus, HostIP, Namespace, Pod,
    PodCondition, PodIP, PodSpec, PodStatus,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::store::now;

fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    let map: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    (!map.is_empty()).then_some(map)
}

/// A Namespace with these labels (the server adds `kubernetes.io/metadata.name`).
pub fn namespace_object(name: &str, label_pairs: &[(&str, &str)]) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: labels(label_pairs),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

/// A NetworkPolicy with these labels that selects the pods matching `pod_labels` (all pods
/// of the namespace when empty) for ingress and allows nothing: the usual default-deny.
pub fn network_policy_object(
    namespace: &str,
    name: &str,
    label_pairs: &[(&str, &str)],
    pod_labels: &[(&str, &str)],
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: ObjectMeta {
            namespace: Some(namespace.to_owned()),
            name: Some(name.to_owned()),
            labels: labels(label_pairs),
            ..ObjectMeta::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: labels(pod_labels),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ..NetworkPolicySpec::default()
        }),
    }
}

/// Inputs for [`pod_object`].
pub struct PodFixture<'a> {
    /// metadata.namespace
    pub namespace: &'a str,
    /// metadata.name; also the value of the `app` label.
    pub name: &'a str,
    /// metadata.uid
    pub uid: &'a str,
    /// spec.nodeName
    pub node: &'a str,
    /// status.podIP / podIPs; None for a pod whose sandbox has no IP yet.
    pub pod_ip: Option<IpAddr>,
    /// status.hostIP / hostIPs
    pub host_ip: Option<IpAddr>,
    /// spec.hostNetwork
    pub host_network: bool,
    /// status.qosClass, e.g. "BestEffort", "Burstable", "Guaranteed".
    pub qos_class: &'a str,
    /// (container name, container id without the `containerd://` prefix)
    pub containers: &'a [(&'a str, &'a str)],
}

/// Builds a realistic Running Pod object:
///
/// ```text
/// metadata {namespace, name, uid, creationTimestamp, labels {app: name}}
/// spec {nodeName, hostNetwork, containers [{name, image: "sim"}]}
/// status {phase: "Running", conditions, podIP, podIPs, hostIP, hostIPs, qosClass, startTime,
///         containerStatuses [{name, containerID: "containerd://<id>", ready: true,
///                             restartCount: 0, image, imageID, state: running}]}
/// ```
pub fn pod_object(f: &PodFixture<'_>) -> Pod {
    let started = now();
    let containers = f
        .containers
        .iter()
        .map(|(name, _)| Container {
            name: (*name).to_owned(),
            image: Some("sim".to_owned()),
            ..Container::default()
        })
        .collect();
    let container_statuses = f
        .containers
        .iter()
        .map(|(name, id)| ContainerStatus {
            name: (*name).to_owned(),
            container_id: Some(format!("containerd://{id}")),
            ready: true,
            started: Some(true),
            restart_count: 0,
            image: "docker.io/library/sim:latest".to_owned(),
            image_id: format!("docker.io/library/sim@sha256:{}", "0".repeat(64)),
            state: Some(ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(started.clone()),
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        })
        .collect();
    let conditions = [
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
    ]
    .into_iter()
    .map(|kind| PodCondition {
        type_: kind.to_owned(),
        status: "True".to_owned(),
        last_transition_time: Some(started.clone()),
        ..PodCondition::default()
    })
    .collect();
    let pod_ip = f.pod_ip.map(|ip| ip.to_string());
    let host_ip = f.host_ip.map(|ip| ip.to_string());
    Pod {
        metadata: ObjectMeta {
            namespace: Some(f.namespace.to_owned()),
            name: Some(f.name.to_owned()),
            uid: Some(f.uid.to_owned()),
            creation_timestamp: Some(started.clone()),
            labels: Some(BTreeMap::from([("app".to_owned(), f.name.to_owned())])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(f.node.to_owned()),
            host_network: Some(f.host_network),
            containers,
            restart_policy: Some("Always".to_owned()),
            scheduler_name: Some("default-scheduler".to_owned()),
            service_account_name: Some("default".to_owned()),
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".to_owned()),
            conditions: Some(conditions),
            pod_ips: pod_ip.clone().map(|ip| vec![PodIP { ip }]),
            pod_ip,
            host_ips: host_ip.clone().map(|ip| vec![HostIP { ip }]),
            host_ip,
            qos_class: Some(f.qos_class.to_owned()),
            start_time: Some(started),
            container_statuses: Some(container_statuses),
            ..PodStatus::default()
        }),
    }
}

/// A pod of the agent DaemonSet as deploy/ makes it: namespace `triage-agent`, label
/// `app.kubernetes.io/name: triage-agent`, on `node`.
pub fn agent_pod_object(name: &str, node: &str) -> Pod {
    let mut pod = pod_object(&PodFixture {
        namespace: "triage-agent",
        name,
        uid: &format!("uid-agent-{name}"),
        node,
        pod_ip: None,
        host_ip: None,
        host_network: false,
        qos_class: "Burstable",
        containers: &[("agent", &format!("{:0>64}", name.len()))],
    });
    pod.metadata.labels = labels(&[("app.kubernetes.io/name", "triage-agent")]);
    pod
}

/// An Event about a pod as kubelet or the scheduler records it (`lastTimestamp` now).
pub fn pod_event_object(
    namespace: &str,
    pod: &str,
    name: &str,
    type_: &str,
    reason: &str,
    message: &str,
) -> k8s_openapi::api::core::v1::Event {
    use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
    let at = now();
    Event {
        metadata: ObjectMeta {
            namespace: Some(namespace.to_owned()),
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Pod".to_owned()),
            namespace: Some(namespace.to_owned()),
            name: Some(pod.to_owned()),
            ..ObjectReference::default()
        },
        type_: Some(type_.to_owned()),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        count: Some(1),
        first_timestamp: Some(at.clone()),
        last_timestamp: Some(at),
        source: Some(EventSource {
            component: Some("kubelet".to_owned()),
            ..EventSource::default()
        }),
        ..Event::default()
    }
}

/// A Deployment and its ReplicaSets, one per `(revision, ReplicaSet name, image)`, owned as
/// the Deployment controller owns them (controller ownerReference, the
/// `deployment.kubernetes.io/revision` annotation): what `kubectl rollout history` reads.
pub fn deployment_objects(
    namespace: &str,
    name: &str,
    revisions: &[(u32, &str, &str)],
) -> (
    k8s_openapi::api::apps::v1::Deployment,
    Vec<k8s_openapi::api::apps::v1::ReplicaSet>,
) {
    use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
    use k8s_openapi::api::core::v1::PodTemplateSpec;
    let uid = format!("uid-deploy-{namespace}-{name}");
    let deployment = Deployment {
        metadata: ObjectMeta {
            namespace: Some(namespace.to_owned()),
            name: Some(name.to_owned()),
            uid: Some(uid.clone()),
            ..ObjectMeta::default()
        },
        ..Deployment::default()
    };
    let replica_sets = revisions
        .iter()
        .map(|(revision, rs, image)| ReplicaSet {
            metadata: ObjectMeta {
                namespace: Some(namespace.to_owned()),
                name: Some((*rs).to_owned()),
                uid: Some(format!("uid-rs-{namespace}-{rs}")),
                annotations: Some(BTreeMap::from([(
                    "deployment.kubernetes.io/revision".to_owned(),
                    revision.to_string(),
                )])),
                owner_references: Some(vec![controller_ref("Deployment", name, &uid)]),
                ..ObjectMeta::default()
            },
            spec: Some(ReplicaSetSpec {
                template: Some(PodTemplateSpec {
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "app".to_owned(),
                            image: Some((*image).to_owned()),
                            ..Container::default()
                        }],
                        ..PodSpec::default()
                    }),
                    ..PodTemplateSpec::default()
                }),
                ..ReplicaSetSpec::default()
            }),
            ..ReplicaSet::default()
        })
        .collect();
    (deployment, replica_sets)
}

/// The pod, owned by the ReplicaSet `rs` (from [`deployment_objects`]).
pub fn owned_by_replica_set(pod: Pod, namespace: &str, rs: &str) -> Pod {
    owned_by(pod, "ReplicaSet", rs, &format!("uid-rs-{namespace}-{rs}"))
}

/// The pod, controlled by the workload `kind`/`name` with `uid` (a StatefulSet, DaemonSet or
/// Job owns its pods directly).
pub fn owned_by(mut pod: Pod, kind: &str, name: &str, uid: &str) -> Pod {
    pod.metadata.owner_references = Some(vec![controller_ref(kind, name, uid)]);
    pod
}

/// An Event about a controller (`SuccessfulCreate` "Created pod: NAME" from a ReplicaSet,
/// DaemonSet or Job controller), `lastTimestamp` now.
pub fn controller_event_object(
    namespace: &str,
    (kind, object, uid): (&str, &str, &str),
    name: &str,
    reason: &str,
    message: &str,
) -> k8s_openapi::api::core::v1::Event {
    let mut event = pod_event_object(namespace, object, name, "Normal", reason, message);
    event.involved_object.kind = Some(kind.to_owned());
    event.involved_object.api_version =
        Some(if kind == "Job" { "batch/v1" } else { "apps/v1" }.to_owned());
    event.involved_object.uid = Some(uid.to_owned());
    if let Some(source) = event.source.as_mut() {
        source.component = Some(format!("{}-controller", kind.to_ascii_lowercase()));
    }
    event
}

fn controller_ref(
    kind: &str,
    name: &str,
    uid: &str,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: if kind == "Job" { "batch/v1" } else { "apps/v1" }.to_owned(),
        kind: kind.to_owned(),
        name: name.to_owned(),
        uid: uid.to_owned(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}
