//! The container runtime as a metadata source: the node's CRI v1 socket (containerd, CRI-O),
//! read-only. It names a container's pod (namespace, name, UID) and the container (name,
//! image, restart count, cgroup) from the moment the runtime made it: before the API server
//! reports the pod, after the agent restarts while the API server is away, and for a restarted
//! container whose new ID the pod's status does not show yet. The API server stays the source
//! of IPs, hostNetwork and deletions; the runtime adds identities only.
//!
//! The socket is the first of [`SOCKETS`] that exists, unless `--cri-socket` names one (or
//! `none`). Without one the agent works from the API server alone and says so in Status. The
//! runtime is asked every [`POLL`] and whenever attribution holds an event for a pod nobody
//! has named (at most every [`MIN_GAP`]); a change goes to attribution as one
//! [`MetaUpdate::Runtime`] of every pod. Only `Version`, `ListPodSandbox`, `ListContainers` and
//! `ContainerStatus` (once per new container, for its cgroup) are called.

use std::{
    collections::HashMap,
    future::Future,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde_json::Value;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint, Uri};
use tracing::{info, warn};
use triage_agent_proto::cri::v1::{self as cri, runtime_service_client::RuntimeServiceClient};

use crate::{
    attribute::{
        Input, MetaUpdate, RuntimeHealth,
        pods::{RuntimeContainer, RuntimePod},
    },
    evidence::PodRef,
};

/// Where runtimes put their CRI socket, in the order they are tried: containerd, CRI-O,
/// k3s's containerd (and the same under /var/run, for hosts where it is not a link to /run).
pub const SOCKETS: &[&str] = &[
    "/run/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/run/k3s/containerd/containerd.sock",
    "/var/run/containerd/containerd.sock",
    "/var/run/crio/crio.sock",
];
/// How often the runtime is asked when nothing waits.
pub const POLL: Duration = Duration::from_secs(2);
/// The shortest gap between two reports asked for by attribution.
pub const MIN_GAP: Duration = Duration::from_millis(200);
/// Each call's deadline.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Backoff between connection attempts after a failure: doubles from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often the usual paths are looked at again when none exists (a runtime started later).
const LOOK_AGAIN: Duration = Duration::from_secs(30);
/// Largest answer taken from the runtime (a node's containers, with room to spare).
const MAX_MESSAGE: usize = 16 << 20;
/// At most this many containers' cgroups are remembered (they are asked once per container).
const CGROUP_CACHE: usize = 16_384;

/// Which socket to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CriSocket {
    /// The first of [`SOCKETS`] that exists.
    Discover,
    /// This path (`--cri-socket`).
    Path(PathBuf),
    /// Not at all (`--cri-socket none`).
    Off,
}

/// Starts the source: returns its health (for Status) and the task, which reports until
/// cancelled or until attribution stops taking updates. `wake` asks for a report now.
pub fn spawn(
    socket: CriSocket,
    out: mpsc::Sender<Input>,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) -> (
    watch::Receiver<RuntimeHealth>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (health, rx) = watch::channel(RuntimeHealth::default());
    (rx, run(socket, out, wake, health, cancel))
}

/// The socket to use now, or why there is none.
pub fn find_socket(socket: &CriSocket) -> Result<PathBuf, String> {
    match socket {
        CriSocket::Off => Err("off (--cri-socket none)".to_owned()),
        CriSocket::Path(p) => Ok(p.clone()),
        CriSocket::Discover => SOCKETS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| {
                format!(
                    "no container runtime socket at {} (--cri-socket names one): pods are known from the API server only",
                    SOCKETS.join(", ")
                )
            }),
    }
}

async fn connect(path: &Path) -> Result<RuntimeServiceClient<Channel>, String> {
    let target = path.to_owned();
    let channel = Endpoint::from_static("http://cri.invalid")
        .connect_timeout(CALL_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let target = target.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(target).await?,
                ))
            }
        }))
        .await
        .map_err(|e| format!("connecting to {}: {e}", path.display()))?;
    Ok(RuntimeServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE))
}

async fn call<T>(
    what: &str,
    f: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Err(_) => Err(format!("{what}: no answer within {CALL_TIMEOUT:?}")),
        Ok(Err(status)) => Err(format!(
            "{what}: {} ({:?})",
            status.message(),
            status.code()
        )),
        Ok(Ok(response)) => Ok(response.into_inner()),
    }
}

async fn run(
    socket: CriSocket,
    out: mpsc::Sender<Input>,
    wake: Arc<Notify>,
    health: watch::Sender<RuntimeHealth>,
    cancel: CancellationToken,
) {
    let mut backoff = BACKOFF_FIRST;
    let mut cgroups: HashMap<String, Option<String>> = HashMap::new();
    let mut last_sent: Option<Arc<Vec<RuntimePod>>> = None;
    loop {
        let path = match find_socket(&socket) {
            Ok(path) => path,
            Err(why) => {
                if health.borrow().last_error != why {
                    info!("container runtime: {why}");
                }
                health.send_replace(RuntimeHealth {
                    last_error: why,
                    ..RuntimeHealth::default()
                });
                if socket == CriSocket::Off {
                    cancel.cancelled().await;
                    return;
                }
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(LOOK_AGAIN) => continue,
                }
            }
        };
        let failed = match session(
            &path,
            &out,
            &wake,
            &health,
            &mut cgroups,
            &mut last_sent,
            &cancel,
        )
        .await
        {
            Ok(()) => return,
            Err(e) => e,
        };
        warn!(socket = %path.display(), "container runtime: {failed}; retrying in {backoff:?}");
        health.send_modify(|h| {
            h.socket = Some(path.clone());
            h.connected = false;
            h.last_error = failed;
        });
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Reads the runtime at `path` until cancelled (`Ok`) or until a call fails (`Err`).
async fn session(
    path: &Path,
    out: &mpsc::Sender<Input>,
    wake: &Notify,
    health: &watch::Sender<RuntimeHealth>,
    cgroups: &mut HashMap<String, Option<String>>,
    last_sent: &mut Option<Arc<Vec<RuntimePod>>>,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let mut client = connect(path).await?;
    let version = call(
        "Version",
        client.version(cri::VersionRequest {
            version: "v1".to_owned(),
        }),
    )
    .await?;
    let runtime = format!("{} {}", version.runtime_name, version.runtime_version);
    info!(socket = %path.display(), %runtime, "container runtime: reading pods and containers");
    loop {
        let pods = report(&mut client, cgroups).await?;
        let containers = pods.iter().map(|p| p.containers.len()).sum::<usize>();
        health.send_replace(RuntimeHealth {
            socket: Some(path.to_owned()),
            runtime: runtime.clone(),
            connected: true,
            pods: u32::try_from(pods.len()).unwrap_or(u32::MAX),
            containers: u32::try_from(containers).unwrap_or(u32::MAX),
            last_error: String::new(),
        });
        if last_sent.as_deref() != Some(&pods) {
            let pods = Arc::new(pods);
            *last_sent = Some(pods.clone());
            if out
                .send(Input::Meta(MetaUpdate::Runtime(pods)))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(POLL) => {}
            () = wake.notified() => {
                tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    () = tokio::time::sleep(MIN_GAP) => {}
                }
            }
        }
    }
}

/// One report: every sandbox with its containers, sorted (so equal reports compare equal).
async fn report(
    client: &mut RuntimeServiceClient<Channel>,
    cgroups: &mut HashMap<String, Option<String>>,
) -> Result<Vec<RuntimePod>, String> {
    let sandboxes = call(
        "ListPodSandbox",
        client.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }),
    )
    .await?
    .items;
    let containers = call(
        "ListContainers",
        client.list_containers(cri::ListContainersRequest { filter: None }),
    )
    .await?
    .containers;
    let mut by_sandbox: HashMap<String, Vec<RuntimeContainer>> = HashMap::new();
    let live: std::collections::HashSet<&str> = containers.iter().map(|c| c.id.as_str()).collect();
    cgroups.retain(|id, _| live.contains(id.as_str()));
    for c in &containers {
        if c.id.is_empty() {
            continue;
        }
        let cgroup = match cgroups.get(&c.id) {
            Some(known) => known.clone(),
            None => {
                let found = container_cgroup(client, &c.id).await;
                if cgroups.len() < CGROUP_CACHE {
                    cgroups.insert(c.id.clone(), found.clone());
                }
                found
            }
        };
        let metadata = c.metadata.clone().unwrap_or_default();
        by_sandbox
            .entry(c.pod_sandbox_id.clone())
            .or_default()
            .push(RuntimeContainer {
                id: c.id.to_ascii_lowercase(),
                name: metadata.name,
                image: c
                    .image
                    .as_ref()
                    .map(|i| i.image.clone())
                    .filter(|i| !i.is_empty())
                    .unwrap_or_else(|| c.image_ref.clone()),
                restart_count: metadata.attempt,
                cgroup,
            });
    }
    let mut pods: Vec<RuntimePod> = sandboxes
        .into_iter()
        .filter_map(|s| {
            let m = s.metadata?;
            if m.uid.is_empty() {
                return None;
            }
            let mut containers = by_sandbox.remove(&s.id).unwrap_or_default();
            containers.sort_by(|a, b| a.id.cmp(&b.id));
            Some(RuntimePod {
                pod: PodRef {
                    namespace: m.namespace,
                    name: m.name,
                    uid: m.uid,
                },
                containers,
            })
        })
        .collect();
    // Several sandboxes of one pod (a sandbox made again after the node restarted): one pod.
    pods.sort_by(|a, b| a.pod.uid.cmp(&b.pod.uid));
    pods.dedup_by(|later, first| {
        if later.pod.uid == first.pod.uid {
            first.containers.append(&mut later.containers);
            true
        } else {
            false
        }
    });
    Ok(pods)
}

/// The container's cgroup directory from the runtime's verbose status (the OCI spec's
/// `linux.cgroupsPath`, as containerd and CRI-O give it), `None` when it does not say.
async fn container_cgroup(client: &mut RuntimeServiceClient<Channel>, id: &str) -> Option<String> {
    let status = call(
        "ContainerStatus",
        client.container_status(cri::ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: true,
        }),
    )
    .await
    .ok()?;
    let info: Value = serde_json::from_str(status.info.get("info")?).ok()?;
    let path = info.pointer("/runtimeSpec/linux/cgroupsPath")?.as_str()?;
    cgroup_dir(path)
}

/// The cgroup directory an OCI `cgroupsPath` names, relative to the cgroup root with a leading
/// `/`. The cgroupfs form is a path already; the systemd form `slice:prefix:name` is the unit
/// `prefix-name.scope` (or `name` when it is a slice) in the slice's directory, where a slice
/// `a-b-c.slice` lives at `/a.slice/a-b.slice/a-b-c.slice` (systemd's and runc's rule).
pub fn cgroup_dir(path: &str) -> Option<String> {
    if path.is_empty() {
        return None;
    }
    if path.starts_with('/') || !path.contains(':') {
        return Some(format!("/{}", path.trim_start_matches('/')));
    }
    let mut parts = path.splitn(3, ':');
    let (slice, prefix, name) = (parts.next()?, parts.next()?, parts.next()?);
    if name.is_empty() {
        return None;
    }
    let mut dir = String::new();
    if !slice.is_empty() && slice != "-.slice" {
        let base = slice.strip_suffix(".slice")?;
        if base.is_empty() || base.starts_with('-') || base.ends_with('-') || base.contains("--") {
            return None;
        }
        let mut at = 0;
        while let Some(i) = base[at..].find('-') {
            at += i;
            dir.push('/');
            dir.push_str(&base[..at]);
            dir.push_str(".slice");
            at += 1;
        }
        dir.push('/');
        dir.push_str(slice);
    }
    dir.push('/');
    if name.ends_with(".slice") {
        dir.push_str(name);
    } else if prefix.is_empty() {
        dir.push_str(name);
        dir.push_str(".scope");
    } else {
        dir.push_str(prefix);
        dir.push('-');
        dir.push_str(name);
        dir.push_str(".scope");
    }
    Some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::path::parse_cgroup_path;

    const ID: &str = "0f5b0a5c9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b";

    /// The runtimes' own `cgroupsPath` values (containerd's CRI plugin and CRI-O, both cgroup
    /// drivers, as they write them into a container's OCI spec) name the directory kubelet's
    /// layout gives the container, and that directory names the pod and the container.
    #[test]
    fn cgroups_paths_of_real_runtimes_name_the_pod_and_container() {
        let uid = "1d2c3b4a-5f6e-4d8c-9b0a-1f2e3d4c5b6a";
        let uid_ = uid.replace('-', "_");
        let cases = [
            // containerd, SystemdCgroup = true: basename(cgroup_parent):cri-containerd:id
            (
                format!("kubepods-besteffort-pod{uid_}.slice:cri-containerd:{ID}"),
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{ID}.scope"
                ),
            ),
            // CRI-O, systemd: slice:crio:id
            (
                format!("kubepods-burstable-pod{uid_}.slice:crio:{ID}"),
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/crio-{ID}.scope"
                ),
            ),
            // guaranteed pods sit right under kubepods.slice
            (
                format!("kubepods-pod{uid_}.slice:cri-containerd:{ID}"),
                format!("/kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{ID}.scope"),
            ),
            // containerd and CRI-O, cgroupfs: cgroup_parent/id
            (
                format!("/kubepods/besteffort/pod{uid}/{ID}"),
                format!("/kubepods/besteffort/pod{uid}/{ID}"),
            ),
            (
                format!("/kubepods/pod{uid}/{ID}"),
                format!("/kubepods/pod{uid}/{ID}"),
            ),
        ];
        for (cgroups_path, dir) in cases {
            let got = cgroup_dir(&cgroups_path).unwrap();
            assert_eq!(got, dir, "{cgroups_path}");
            let identity = parse_cgroup_path(&got).unwrap();
            assert_eq!(identity.pod_uid, uid, "{got}");
            assert_eq!(identity.container_id.as_deref(), Some(ID), "{got}");
        }
    }

    #[test]
    fn malformed_cgroups_paths_name_nothing() {
        for bad in [
            "",
            "a-.slice:p:x",
            "-a.slice:p:x",
            "a--b.slice:p:x",
            "nota:p:",
            "x.service:p:y",
        ] {
            assert_eq!(cgroup_dir(bad), None, "{bad:?}");
        }
        assert_eq!(cgroup_dir("-.slice:p:x").as_deref(), Some("/p-x.scope"));
        assert_eq!(cgroup_dir(":p:x").as_deref(), Some("/p-x.scope"));
    }

    #[test]
    fn an_absent_socket_is_a_reason_not_an_error() {
        let why = find_socket(&CriSocket::Off).unwrap_err();
        assert!(why.contains("none"), "{why}");
        assert_eq!(
            find_socket(&CriSocket::Path("/x".into())),
            Ok(PathBuf::from("/x"))
        );
    }
}
