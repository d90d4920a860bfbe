//! Pod metadata: a kube-rs watcher on this node's pods (fieldSelector spec.nodeName=<node>),
//! turned into [`MetaUpdate`]s for attribution. The API server being slow or down never stops
//! collection: the watcher retries with backoff, every failure is logged and shown in Status,
//! and events wait in attribution until metadata arrives.

use std::{collections::HashMap, net::IpAddr, time::SystemTime};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    attribute::{Input, MetaHealth, MetaUpdate, cgroup::strip_runtime_scheme, pods::PodInfo},
    evidence::PodRef,
};

/// The attributor's view of a Pod object; `None` for objects without a UID (never from a real
/// API server, but the bytes come from the network).
pub fn pod_info(pod: &Pod) -> Option<PodInfo> {
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
                    c.name.clone(),
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
        pod: PodRef {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid,
        },
        ips,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        containers,
        started,
        finished: matches!(phase, Some("Succeeded" | "Failed")),
    })
}

/// Watches this node's pods until cancelled.
pub async fn run(
    client: Client,
    node: String,
    out: mpsc::Sender<Input>,
    health: watch::Sender<MetaHealth>,
    cancel: CancellationToken,
) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut failing = false;
    loop {
        let item = tokio::select! {
            () = cancel.cancelled() => return,
            item = stream.next() => item,
        };
        let update = match item {
            None => return,
            Some(Err(error)) => {
                let mut retries = 0;
                health.send_modify(|h| {
                    h.retries = h.retries.saturating_add(1);
                    h.last_error = Some(error.to_string());
                    retries = h.retries;
                });
                warn!(%error, retries, "pod metadata watch failed; retrying with backoff (events are kept and attributed once metadata arrives)");
                if !failing {
                    failing = true;
                    if out.send(Input::MetaLost).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            Some(Ok(event)) => event,
        };
        if failing {
            failing = false;
            info!("pod metadata watch recovered");
            health.send_modify(|h| {
                h.retries = 0;
                h.last_error = None;
            });
        }
        let update = match update {
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
                health.send_modify(|h| h.synced = true);
                info!(node = %node, "pod metadata in sync");
                Some(MetaUpdate::RelistDone)
            }
        };
        if let Some(update) = update
            && out.send(Input::Meta(update)).await.is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_object_to_info() {
        let pod: Pod = serde_json::from_value(json!({
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
            info.containers.get("abcdef0123456789").map(String::as_str),
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

    #[test]
    fn pod_without_uid_or_status() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
        assert!(pod_info(&pod).is_none());
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "x", "uid": "u"}, "status": {"phase": "Failed", "podIP": "bogus"}})).unwrap();
        let info = pod_info(&pod).unwrap();
        assert!(info.ips.is_empty() && info.finished);
    }
}
