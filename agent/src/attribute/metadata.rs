//! Pod metadata: a kube-rs watcher on this node's pods (fieldSelector spec.nodeName=<node>,
//! relists served from the API server's watch cache like kubelet's),
//! turned into [`MetaUpdate`]s for attribution. The API server being slow or down never stops
//! collection: the watch is retried with backoff (each attempt a full list from the watch
//! cache, so "in sync" is true only after a list completed), every failure is logged and shown
//! in Status, and events wait in attribution until metadata arrives.
//!
//! Pods are decoded as [`PodView`], the few fields attribution reads, never as whole `Pod`
//! objects: managedFields, annotations, labels, the containers' specs (env, volumes, probes)
//! and the conditions are skipped by the JSON decoder without being allocated, so a list of
//! the node's pods costs the response's text and a few hundred bytes a pod.

use std::{
    borrow::Cow,
    collections::HashMap,
    future::Future,
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures::StreamExt as _;
use k8s_openapi::{
    NamespaceResourceScope,
    api::core::v1::Pod,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use kube::{Api, Client, runtime::watcher};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    attribute::{Input, MetaHealth, MetaUpdate, pods::PodInfo},
    cgroup::path::strip_runtime_scheme,
    evidence::PodRef,
};

/// A Pod as the agent decodes it: what [`pod_info`] reads and what the watcher needs (the
/// resource version), nothing else. Read from the same API as `Pod` (`/api/v1/pods`).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct PodView {
    /// Name, namespace, uid, resourceVersion and creationTimestamp only.
    #[serde(default, deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<PodSpecView>,
    #[serde(default)]
    pub status: Option<PodStatusView>,
}

/// `spec` of a [`PodView`].
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpecView {
    #[serde(default)]
    pub host_network: Option<bool>,
}

/// `status` of a [`PodView`].
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatusView {
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default, rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(default, rename = "podIPs")]
    pub pod_ips: Option<Vec<PodIpView>>,
    #[serde(default)]
    pub start_time: Option<Time>,
    #[serde(default)]
    pub container_statuses: Option<Vec<ContainerStatusView>>,
    #[serde(default)]
    pub init_container_statuses: Option<Vec<ContainerStatusView>>,
    #[serde(default)]
    pub ephemeral_container_statuses: Option<Vec<ContainerStatusView>>,
}

/// One of `status.podIPs`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct PodIpView {
    #[serde(default)]
    pub ip: String,
}

/// A container's name and runtime ID, from `status.*containerStatuses`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatusView {
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "containerID")]
    pub container_id: Option<String>,
}

/// The metadata fields a [`PodView`] keeps.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetaView {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    resource_version: Option<String>,
    #[serde(default)]
    creation_timestamp: Option<Time>,
}

fn slim_meta<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = Option::<MetaView>::deserialize(d)?;
    Ok(m.map(|m| ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        creation_timestamp: m.creation_timestamp,
        ..ObjectMeta::default()
    })
    .unwrap_or_default())
}

impl kube::Resource for PodView {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind((): &()) -> Cow<'_, str> {
        <Pod as kube::Resource>::kind(&())
    }
    fn group((): &()) -> Cow<'_, str> {
        <Pod as kube::Resource>::group(&())
    }
    fn version((): &()) -> Cow<'_, str> {
        <Pod as kube::Resource>::version(&())
    }
    fn api_version((): &()) -> Cow<'_, str> {
        <Pod as kube::Resource>::api_version(&())
    }
    fn plural((): &()) -> Cow<'_, str> {
        <Pod as kube::Resource>::plural(&())
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The attributor's view of a Pod object; `None` for objects without a UID (never from a real
/// API server, but the bytes come from the network).
pub fn pod_info(pod: &PodView) -> Option<PodInfo> {
    let meta = &pod.metadata;
    let uid = meta.uid.clone().filter(|u| !u.is_empty())?;
    let status = pod.status.as_ref();
    let spec = pod.spec.as_ref();
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .map(|ips| ips.iter().filter_map(|ip| ip.ip.parse().ok()).collect())
        .unwrap_or_default();
    if ips.is_empty()
        && let Some(ip) = status
            .and_then(|s| s.pod_ip.as_ref())
            .and_then(|ip| ip.parse().ok())
    {
        ips.push(ip);
    }
    ips.shrink_to_fit();
    let mut containers = HashMap::new();
    if let Some(s) = status {
        let all = [
            &s.container_statuses,
            &s.init_container_statuses,
            &s.ephemeral_container_statuses,
        ];
        for c in all.into_iter().flatten().flatten() {
            if let Some(id) = c.container_id.as_deref() {
                containers.insert(
                    strip_runtime_scheme(id).to_ascii_lowercase(),
                    c.name.as_str().into(),
                );
            }
        }
    }
    let started = status
        .and_then(|s| s.start_time.as_ref())
        .or(meta.creation_timestamp.as_ref())
        .map(|t| SystemTime::from(t.0));
    let phase = status.and_then(|s| s.phase.as_deref());
    Some(PodInfo {
        pod: Arc::new(PodRef {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid,
        }),
        ips,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        containers,
        started,
        finished: matches!(phase, Some("Succeeded" | "Failed")),
    })
}

/// Makes the watcher's health channel; returns it (for Status) and the task, which watches
/// this node's pods until cancelled or until attribution stops taking updates.
pub fn spawn(
    client: Client,
    node: String,
    out: mpsc::Sender<Input>,
    cancel: CancellationToken,
) -> (
    watch::Receiver<MetaHealth>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (health, rx) = watch::channel(MetaHealth::default());
    (rx, run(client, node, out, health, cancel))
}

/// What the agent asks the API server: the pods bound to this node only (the API server
/// filters, so the agent neither receives nor keeps any other pod; RBAC cannot express this
/// scope, see docs/rbac.md), relisted from the watch cache (resourceVersion=0), as kubelet
/// does: a thousand agents restarting must not turn into a thousand quorum reads of etcd.
/// `node` is a validated node name (`app::args`), so the selector is exactly one term.
pub(crate) fn watch_config(node: &str) -> watcher::Config {
    watcher::Config::default()
        .fields(&format!("spec.nodeName={node}"))
        .any_semantic()
}

/// Backoff between watch attempts after a failure: doubles from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

async fn run(
    client: Client,
    node: String,
    out: mpsc::Sender<Input>,
    health: watch::Sender<MetaHealth>,
    cancel: CancellationToken,
) {
    let api: Api<PodView> = Api::all(client);
    let config = watch_config(&node);
    let mut backoff = BACKOFF_FIRST;
    loop {
        // A fresh watcher per attempt: it starts with a full list, so "in sync" is only ever
        // claimed after a list that really completed. (A watcher that resumes by itself after
        // an outage yields nothing when it succeeds, so recovery could not be seen.)
        let mut stream = watcher(api.clone(), config.clone()).boxed();
        loop {
            let item = tokio::select! {
                () = cancel.cancelled() => return,
                item = stream.next() => item,
            };
            let event = match item {
                None => break,
                Some(Err(error)) => {
                    let mut retries = 0;
                    health.send_modify(|h| {
                        // Not in sync any more: what we hold may be stale until the next list.
                        h.synced = false;
                        h.retries = h.retries.saturating_add(1);
                        h.last_error = Some(error.to_string());
                        retries = h.retries;
                    });
                    warn!(%error, retries, ?backoff, "pod metadata watch failed; retrying with backoff (events are kept and attributed once metadata arrives)");
                    if out.send(Input::MetaLost).await.is_err() {
                        return;
                    }
                    break;
                }
                Some(Ok(event)) => event,
            };
            let update = match event {
                watcher::Event::Init => Some(MetaUpdate::RelistStarted),
                watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                    pod_info(&pod).map(MetaUpdate::Apply)
                }
                watcher::Event::Delete(pod) => pod
                    .metadata
                    .uid
                    .clone()
                    .map(|uid| MetaUpdate::Delete { uid }),
                watcher::Event::InitDone => {
                    let recovered = health.borrow().last_error.is_some();
                    health.send_modify(|h| {
                        h.synced = true;
                        h.last_synced = Some(SystemTime::now());
                        h.retries = 0;
                        h.last_error = None;
                    });
                    backoff = BACKOFF_FIRST;
                    if recovered {
                        info!(node = %node, "pod metadata watch recovered; in sync");
                    } else {
                        info!(node = %node, "pod metadata in sync");
                    }
                    Some(MetaUpdate::RelistDone)
                }
            };
            if let Some(update) = update
                && out.send(Input::Meta(update)).await.is_err()
            {
                return;
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_the_pods_of_this_node_are_listed_and_watched() {
        let config = watch_config("node-a");
        assert_eq!(
            config.field_selector.as_deref(),
            Some("spec.nodeName=node-a")
        );
        assert_eq!(config.label_selector, None);
    }

    #[test]
    fn pod_object_to_info() {
        let pod: PodView = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"nodeName": "n1", "containers": [{"name": "app"}]},
            "status": {
                "phase": "Running",
                "podIP": "10.0.0.5",
                "podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}],
                "startTime": "2026-01-01T00:00:02Z",
                "containerStatuses": [{"name": "app", "containerID": "containerd://ABCDEF0123456789", "image": "i", "imageID": "", "ready": true, "restartCount": 0}]
            }
        }))
        .unwrap();
        let info = pod_info(&pod).unwrap();
        assert_eq!(info.pod.to_string(), "shop/web");
        assert_eq!(info.ips.len(), 2);
        assert_eq!(
            info.containers.get("abcdef0123456789").map(|s| &**s),
            Some("app")
        );
        assert!(!info.host_network && !info.finished);
        assert_eq!(
            info.started
                .unwrap()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            1_767_225_602
        );
    }

    /// A Deployment's pod as the API server sends it (managedFields, a last-applied annotation,
    /// init and app containers with env, volumes and probes): the view reads what the whole
    /// object says.
    #[test]
    fn the_view_reads_what_the_whole_pod_says() {
        let text = include_str!("fixtures/deployment-pod.json");
        let pod: Pod = serde_json::from_str(text).unwrap();
        let view: PodView = serde_json::from_str(text).unwrap();
        use kube::Resource as _;
        assert_eq!(view.meta().resource_version, pod.metadata.resource_version);
        assert_eq!(view.meta().uid, pod.metadata.uid);
        assert!(view.meta().managed_fields.is_none() && view.meta().annotations.is_none());
        let info = pod_info(&view).unwrap();
        assert_eq!(info.pod.namespace, pod.metadata.namespace.unwrap());
        assert_eq!(info.pod.name, pod.metadata.name.unwrap());
        let status = pod.status.unwrap();
        let ips: Vec<IpAddr> = status
            .pod_ips
            .unwrap()
            .iter()
            .map(|ip| ip.ip.parse().unwrap())
            .collect();
        assert_eq!(info.ips, ips);
        let containers: HashMap<String, Arc<str>> = status
            .container_statuses
            .into_iter()
            .chain(status.init_container_statuses)
            .flatten()
            .map(|c| {
                let id = c.container_id.unwrap();
                (strip_runtime_scheme(&id).to_owned(), c.name.as_str().into())
            })
            .collect();
        assert_eq!(info.containers.len(), 3);
        assert_eq!(info.containers, containers);
        assert_eq!(
            info.started,
            status.start_time.map(|t| SystemTime::from(t.0))
        );
        assert_eq!(
            info.host_network,
            pod.spec.unwrap().host_network.unwrap_or(false)
        );
        assert!(!info.finished);
    }

    /// The watch's events and the list's pages are decoded as kube-rs decodes them.
    #[test]
    fn watch_events_and_lists_decode_as_views() {
        use kube::core::{ObjectList, WatchEvent};
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1", "resourceVersion": "7",
                         "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}]},
            "spec": {"containers": [{"name": "app", "env": [{"name": "A", "value": "b"}]}]},
            "status": {"podIP": "10.0.0.5", "containerStatuses": [{"name": "app", "containerID": "cri-o://ab", "image": "i", "imageID": "", "ready": true, "restartCount": 0}]}
        });
        for kind in ["ADDED", "MODIFIED", "DELETED"] {
            let line = json!({"type": kind, "object": pod}).to_string();
            let event: WatchEvent<PodView> = serde_json::from_str(&line).unwrap();
            let view = match event {
                WatchEvent::Added(v) | WatchEvent::Modified(v) | WatchEvent::Deleted(v) => v,
                other => panic!("{other:?}"),
            };
            assert_eq!(view.metadata.resource_version.as_deref(), Some("7"));
            assert!(view.metadata.managed_fields.is_none());
            let info = pod_info(&view).unwrap();
            assert_eq!(info.containers.get("ab").map(|s| &**s), Some("app"));
        }
        let bookmark = json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": "9"}}});
        let event: WatchEvent<PodView> = serde_json::from_value(bookmark).unwrap();
        assert!(matches!(event, WatchEvent::Bookmark(b) if b.metadata.resource_version == "9"));
        let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "8"}, "items": [pod]});
        let list: ObjectList<PodView> = serde_json::from_value(list).unwrap();
        assert_eq!(list.metadata.resource_version.as_deref(), Some("8"));
        assert_eq!(list.items.len(), 1);
    }

    #[test]
    fn pod_without_uid_or_status() {
        let pod: PodView = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
        assert!(pod_info(&pod).is_none());
        let pod: PodView = serde_json::from_value(json!({"metadata": {"name": "x", "uid": "u"}, "status": {"phase": "Failed", "podIP": "bogus"}})).unwrap();
        let info = pod_info(&pod).unwrap();
        assert!(info.ips.is_empty() && info.finished);
    }
}
