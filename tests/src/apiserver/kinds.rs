//! The kinds the stand-in serves: their names and URL segments (taken from k8s-openapi, so a
//! name is written once), their scope, the field selectors each supports, and the defaults the
//! real API server fills in on every write. Routing, discovery, selectors and the store all
//! read this table; adding a kind means one [`Stored`] impl and one [`Kind`] variant.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Namespace, NamespaceSpec, NamespaceStatus, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::crd::{
    AdminNetworkPolicy, BaselineAdminNetworkPolicy, CiliumNetworkPolicy, ClusterNetworkPolicy,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::serde::Serialize;
use k8s_openapi::serde::de::DeserializeOwned;
use k8s_openapi::{ClusterResourceScope, ListableResource, Metadata, NamespaceResourceScope};

/// Label the API server puts on every Namespace (on create and update, since Kubernetes 1.22):
/// NetworkPolicy `namespaceSelector`s rely on it to pick a namespace by name.
/// <https://kubernetes.io/docs/reference/labels-annotations-taints/#kubernetes-io-metadata-name>
pub(super) const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// One served kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Kind {
    Namespace,
    Pod,
    NetworkPolicy,
    Event,
    ReplicaSet,
    Deployment,
    StatefulSet,
    DaemonSet,
    Job,
    CiliumNetworkPolicy,
    // Before the v1alpha1 kinds: the group then prefers v1alpha2, as a cluster with the
    // newer API installed does.
    ClusterNetworkPolicy,
    AdminNetworkPolicy,
    BaselineAdminNetworkPolicy,
}

/// Names and scope of a kind, as discovery documents and URLs spell them.
pub(super) struct Info {
    pub(super) kind: &'static str,
    pub(super) list_kind: &'static str,
    /// "" for the core group.
    pub(super) group: &'static str,
    pub(super) version: &'static str,
    pub(super) api_version: &'static str,
    /// The URL segment, e.g. `pods`.
    pub(super) plural: &'static str,
    pub(super) singular: &'static str,
    pub(super) short_names: &'static [&'static str],
    pub(super) namespaced: bool,
}

impl Kind {
    pub(super) const ALL: [Kind; 13] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::NetworkPolicy,
        Kind::Event,
        Kind::ReplicaSet,
        Kind::Deployment,
        Kind::StatefulSet,
        Kind::DaemonSet,
        Kind::Job,
        Kind::CiliumNetworkPolicy,
        Kind::ClusterNetworkPolicy,
        Kind::AdminNetworkPolicy,
        Kind::BaselineAdminNetworkPolicy,
    ];

    pub(super) fn info(self) -> &'static Info {
        match self {
            Kind::Namespace => &NAMESPACE,
            Kind::Pod => &POD,
            Kind::NetworkPolicy => &NETWORK_POLICY,
            Kind::Event => &EVENT,
            Kind::ReplicaSet => &REPLICA_SET,
            Kind::Deployment => &DEPLOYMENT,
            Kind::StatefulSet => &STATEFUL_SET,
            Kind::DaemonSet => &DAEMON_SET,
            Kind::Job => &JOB,
            Kind::CiliumNetworkPolicy => &CILIUM_NETWORK_POLICY,
            Kind::ClusterNetworkPolicy => &CLUSTER_NETWORK_POLICY,
            Kind::AdminNetworkPolicy => &ADMIN_NETWORK_POLICY,
            Kind::BaselineAdminNetworkPolicy => &BASELINE_ADMIN_NETWORK_POLICY,
        }
    }

    /// Whether a field selector may name `field` for this kind (the real server answers
    /// 400 for any other field).
    pub(super) fn supports_field(self, field: &str) -> bool {
        // Every field is always extracted, so a default object shows which exist.
        let fields = match self {
            Kind::Namespace => selectable(&Namespace::default()),
            Kind::Pod => selectable(&Pod::default()),
            Kind::NetworkPolicy => selectable(&NetworkPolicy::default()),
            Kind::Event => selectable(&Event::default()),
            Kind::ReplicaSet => selectable(&ReplicaSet::default()),
            Kind::Deployment => selectable(&Deployment::default()),
            Kind::StatefulSet => selectable(&StatefulSet::default()),
            Kind::DaemonSet => selectable(&DaemonSet::default()),
            Kind::Job => selectable(&Job::default()),
            Kind::CiliumNetworkPolicy => selectable(&CiliumNetworkPolicy::default()),
            Kind::ClusterNetworkPolicy => selectable(&ClusterNetworkPolicy::default()),
            Kind::AdminNetworkPolicy => selectable(&AdminNetworkPolicy::default()),
            Kind::BaselineAdminNetworkPolicy => selectable(&BaselineAdminNetworkPolicy::default()),
        };
        fields.iter().any(|(name, _)| *name == field)
    }

    /// How a NotFound message names the resource: `pods`, `networkpolicies.networking.k8s.io`.
    pub(super) fn resource_name(self) -> String {
        let info = self.info();
        if info.group.is_empty() {
            info.plural.to_owned()
        } else {
            format!("{}.{}", info.plural, info.group)
        }
    }
}

static NAMESPACE: Info = info::<Namespace>("namespace", &["ns"]);
static POD: Info = info::<Pod>("pod", &["po"]);
static NETWORK_POLICY: Info = info::<NetworkPolicy>("networkpolicy", &["netpol"]);
static EVENT: Info = info::<Event>("event", &["ev"]);
static REPLICA_SET: Info = info::<ReplicaSet>("replicaset", &["rs"]);
static DEPLOYMENT: Info = info::<Deployment>("deployment", &["deploy"]);
static STATEFUL_SET: Info = info::<StatefulSet>("statefulset", &["sts"]);
static DAEMON_SET: Info = info::<DaemonSet>("daemonset", &["ds"]);
static JOB: Info = info::<Job>("job", &[]);
static CILIUM_NETWORK_POLICY: Info =
    info::<CiliumNetworkPolicy>("ciliumnetworkpolicy", &["cnp", "ciliumnp"]);
static CLUSTER_NETWORK_POLICY: Info = info::<ClusterNetworkPolicy>("clusternetworkpolicy", &[]);
static ADMIN_NETWORK_POLICY: Info = info::<AdminNetworkPolicy>("adminnetworkpolicy", &["anp"]);
static BASELINE_ADMIN_NETWORK_POLICY: Info =
    info::<BaselineAdminNetworkPolicy>("baselineadminnetworkpolicy", &["banp"]);

const fn info<K: Stored>(singular: &'static str, short_names: &'static [&'static str]) -> Info {
    Info {
        kind: K::KIND,
        list_kind: K::LIST_KIND,
        group: K::GROUP,
        version: K::VERSION,
        api_version: K::API_VERSION,
        plural: K::URL_PATH_SEGMENT,
        singular,
        short_names,
        namespaced: <K::Scope as Scope>::NAMESPACED,
    }
}

/// Whether a k8s-openapi scope type is the namespaced one.
pub(super) trait Scope {
    const NAMESPACED: bool;
}

impl Scope for NamespaceResourceScope {
    const NAMESPACED: bool = true;
}

impl Scope for ClusterResourceScope {
    const NAMESPACED: bool = false;
}

/// A k8s-openapi type the stand-in stores.
pub(super) trait Stored:
    ListableResource<Scope: Scope> + Metadata<Ty = ObjectMeta> + Serialize + DeserializeOwned + Default
{
    const STORED: Kind;

    /// Field selector values beyond `metadata.name` (and `metadata.namespace`), every
    /// supported field always present (an unset field selects as "", as on the real server).
    fn fields(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// What the API server itself sets on every create and update.
    fn on_write(&mut self) {}
}

/// Every field selector value of an object, `metadata.*` first.
pub(super) fn selectable<K: Stored>(object: &K) -> Vec<(&'static str, String)> {
    let meta = object.metadata();
    let mut fields = vec![("metadata.name", meta.name.clone().unwrap_or_default())];
    if <K::Scope as Scope>::NAMESPACED {
        fields.push((
            "metadata.namespace",
            meta.namespace.clone().unwrap_or_default(),
        ));
    }
    fields.extend(object.fields());
    fields
}

impl Stored for Pod {
    const STORED: Kind = Kind::Pod;

    /// The real server's pod field set (pkg/registry/core/pod/strategy.go `ToSelectableFields`).
    fn fields(&self) -> Vec<(&'static str, String)> {
        let spec = self.spec.as_ref();
        let status = self.status.as_ref();
        let text = |v: Option<&String>| v.cloned().unwrap_or_default();
        vec![
            (
                "spec.nodeName",
                text(spec.and_then(|s| s.node_name.as_ref())),
            ),
            (
                "spec.restartPolicy",
                text(spec.and_then(|s| s.restart_policy.as_ref())),
            ),
            (
                "spec.schedulerName",
                text(spec.and_then(|s| s.scheduler_name.as_ref())),
            ),
            (
                "spec.serviceAccountName",
                text(spec.and_then(|s| s.service_account_name.as_ref())),
            ),
            (
                "spec.hostNetwork",
                spec.and_then(|s| s.host_network)
                    .unwrap_or(false)
                    .to_string(),
            ),
            ("status.phase", text(status.and_then(|s| s.phase.as_ref()))),
            ("status.podIP", text(status.and_then(|s| s.pod_ip.as_ref()))),
            (
                "status.nominatedNodeName",
                text(status.and_then(|s| s.nominated_node_name.as_ref())),
            ),
        ]
    }
}

impl Stored for Namespace {
    const STORED: Kind = Kind::Namespace;

    fn fields(&self) -> Vec<(&'static str, String)> {
        let phase = self.status.as_ref().and_then(|s| s.phase.clone());
        vec![("status.phase", phase.unwrap_or_default())]
    }

    /// The name label on every write, and the finalizer and phase a new namespace gets
    /// (pkg/registry/core/namespace/strategy.go).
    fn on_write(&mut self) {
        let name = self.metadata.name.clone().unwrap_or_default();
        self.metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(NAMESPACE_NAME_LABEL.to_owned(), name);
        self.spec.get_or_insert_with(|| NamespaceSpec {
            finalizers: Some(vec!["kubernetes".to_owned()]),
        });
        self.status
            .get_or_insert_with(NamespaceStatus::default)
            .phase
            .get_or_insert_with(|| "Active".to_owned());
    }
}

impl Stored for NetworkPolicy {
    const STORED: Kind = Kind::NetworkPolicy;
}

impl Stored for Event {
    const STORED: Kind = Kind::Event;

    /// The real server's event field set (pkg/registry/core/event/strategy.go
    /// `ToSelectableFields`).
    fn fields(&self) -> Vec<(&'static str, String)> {
        let o = &self.involved_object;
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        vec![
            ("involvedObject.kind", text(&o.kind)),
            ("involvedObject.namespace", text(&o.namespace)),
            ("involvedObject.name", text(&o.name)),
            ("involvedObject.uid", text(&o.uid)),
            ("involvedObject.apiVersion", text(&o.api_version)),
            ("involvedObject.resourceVersion", text(&o.resource_version)),
            ("involvedObject.fieldPath", text(&o.field_path)),
            ("reason", text(&self.reason)),
            (
                "reportingComponent",
                self.reporting_component.clone().unwrap_or_default(),
            ),
            (
                "source",
                self.source
                    .as_ref()
                    .and_then(|s| s.component.clone())
                    .unwrap_or_default(),
            ),
            ("type", text(&self.type_)),
        ]
    }
}

impl Stored for ReplicaSet {
    const STORED: Kind = Kind::ReplicaSet;

    fn fields(&self) -> Vec<(&'static str, String)> {
        let replicas = self.status.as_ref().map_or(0, |s| s.replicas);
        vec![("status.replicas", replicas.to_string())]
    }
}

impl Stored for Deployment {
    const STORED: Kind = Kind::Deployment;
}

impl Stored for StatefulSet {
    const STORED: Kind = Kind::StatefulSet;
}

impl Stored for DaemonSet {
    const STORED: Kind = Kind::DaemonSet;
}

/// The real server's job field set adds `status.successful` (pkg/registry/batch/job).
impl Stored for Job {
    const STORED: Kind = Kind::Job;

    fn fields(&self) -> Vec<(&'static str, String)> {
        let successful = self.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0);
        vec![("status.successful", successful.to_string())]
    }
}

impl Stored for CiliumNetworkPolicy {
    const STORED: Kind = Kind::CiliumNetworkPolicy;
}

impl Stored for ClusterNetworkPolicy {
    const STORED: Kind = Kind::ClusterNetworkPolicy;
}

impl Stored for AdminNetworkPolicy {
    const STORED: Kind = Kind::AdminNetworkPolicy;
}

impl Stored for BaselineAdminNetworkPolicy {
    const STORED: Kind = Kind::BaselineAdminNetworkPolicy;
}
