//! Pods from a real container runtime: a private containerd (its own root, state, socket and
//! CNI configuration; never the host's) running in the node's network namespace, runc, and the
//! CNI bridge, host-local and portmap plugins attaching pods to the node's bridge. Pods and
//! containers are made through the CRI v1 API as kubelet makes them: the pod's labels and
//! annotations, a `cgroup_parent` in kubelet's cgroupfs layout, a container's resources,
//! `hostNetwork`. Images cannot be pulled here: two tiny images (the static `sim-pause` for
//! sandboxes; busybox-static, whose `sleep` is a container's main process) are written as OCI
//! archives and imported with `ctr`.
//!
//! Test processes join a container as `runc exec` does (its cgroups in every hierarchy, its
//! pod's network namespace) but keep the host's mounts, so they run the host's programs; the
//! container's own main process and the sandbox's pause process are the runtime's, children
//! of its shim.
//!
//! Teardown stops and removes every sandbox through CRI, removes what kubelet would (the pod's
//! cgroups), stops containerd and then checks that nothing is left: no shim or other process
//! of this containerd, no mount under its directory, no network namespace it made.

use std::{
    collections::HashMap,
    fs,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;
use tonic::transport::{Channel, Endpoint, Uri};
use triage_agent_proto::cri::v1::{self as cri, runtime_service_client::RuntimeServiceClient};

use super::{NodeNet, PodBackend, SimPod, cgroup, note, tools::find_program};

#[path = "../../../xtask/src/image/oci.rs"]
#[expect(
    dead_code,
    reason = "the image writer of `cargo xtask image`, shared: the harness uses part of it"
)]
mod oci;

/// The containers' image: busybox-static.
pub const IMAGE: &str = "triage.local/busybox:1";
/// The sandboxes' image: the static `sim-pause`.
pub const PAUSE_IMAGE: &str = "triage.local/pause:1";
/// What a container and the sandbox run: sleep (as long as a signed 32-bit count allows).
const SLEEP: [&str; 3] = ["/bin/busybox", "sleep", "2147483647"];

/// A private containerd serving CRI for one simulated node.
pub struct Containerd {
    dir: PathBuf,
    socket: PathBuf,
    daemon: Option<Child>,
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

/// What a pod is made with, beyond its name.
#[derive(Clone, Debug, Default)]
pub struct CriPodSpec {
    /// `spec.hostNetwork`: the pod shares the node's network namespace.
    pub host_network: bool,
    /// CPU quota in microseconds per 100 ms period (`resources.limits.cpu` × 100,000).
    pub cpu_quota_us: Option<i64>,
    /// `resources.limits.memory`.
    pub memory_limit: Option<i64>,
    /// The API server is not told about the pod when it is made ([`super::SimNode::announce`]).
    pub unannounced: bool,
}

fn block<T>(
    rt: &tokio::runtime::Runtime,
    what: &str,
    f: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> anyhow::Result<T> {
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), f)
            .await
            .map_err(|_| anyhow::anyhow!("CRI {what}: no answer within 30 s"))?
            .map(tonic::Response::into_inner)
            .map_err(|s| anyhow::anyhow!("CRI {what}: {} ({:?})", s.message(), s.code()))
    })
}

impl Containerd {
    /// Starts containerd for the node `id` in the network namespace `node_netns`, with pods
    /// on the bridge br0 at `subnet`.0/24 (addresses from .2, the node .1), and imports the
    /// image.
    pub fn start(id: &str, node_netns: &str, subnet: [u8; 3]) -> anyhow::Result<Containerd> {
        let containerd = find_program("containerd")
            .context("containerd not found (Debian package containerd: `cargo xtask setup`)")?;
        let dir = PathBuf::from(format!("/run/ta-cri-{id}"));
        if dir.exists() {
            remove_dir_all_unmounting(&dir);
        }
        fs::create_dir_all(dir.join("cni"))?;
        let socket = dir.join("containerd.sock");
        let d = dir.display();
        let [a, b, c] = subnet;
        fs::write(
            dir.join("cni/10-sim.conflist"),
            format!(
                r#"{{"cniVersion":"0.4.0","name":"sim","plugins":[
 {{"type":"bridge","bridge":"br0","isGateway":false,"ipMasq":false,
  "ipam":{{"type":"host-local","dataDir":"{d}/ipam",
   "ranges":[[{{"subnet":"{a}.{b}.{c}.0/24","rangeStart":"{a}.{b}.{c}.2","rangeEnd":"{a}.{b}.{c}.250","gateway":"{a}.{b}.{c}.1"}}]]}}}},
 {{"type":"portmap","capabilities":{{"portMappings":true}}}}]}}
"#
            ),
        )?;
        // restrict_oom_score_adj: CAP_SYS_RESOURCE may be missing from the bounding set, and
        // runc could not write kubelet's -998. isGateway/ipMasq false: the plugins change no
        // host-wide setting. The stream server is never used (no exec, attach or port-forward
        // through the runtime): a random port, on the node namespace's loopback.
        fs::write(
            dir.join("config.toml"),
            format!(
                r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni"
"#
            ),
        )?;
        let netns = fs::File::open(format!("/run/netns/{node_netns}"))
            .with_context(|| format!("opening the node's network namespace {node_netns}"))?;
        let log = fs::File::create(dir.join("containerd.log"))?;
        let mut cmd = Command::new(&containerd);
        cmd.arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: setns and prctl on an fd opened before fork; async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // containerd goes when the thread that made the node goes, even on a crash.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut daemon = cmd.spawn().context("starting containerd")?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = match connect(&rt, &mut daemon, &socket, &dir) {
            Ok(client) => client,
            Err(e) => {
                let _ = daemon.kill();
                let _ = daemon.wait();
                remove_dir_all_unmounting(&dir);
                return Err(e);
            }
        };
        let mut this = Containerd {
            dir,
            socket,
            daemon: Some(daemon),
            rt,
            client,
        };
        if let Err(e) = this.import_images() {
            this.stop();
            return Err(e);
        }
        Ok(this)
    }

    /// The CRI socket (for the agent's `--cri-socket`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Writes the two images as OCI archives and imports them.
    fn import_images(&self) -> anyhow::Result<()> {
        let busybox = fs::read("/bin/busybox")
            .context("reading /bin/busybox (Debian package busybox-static)")?;
        let pause_path = pause_binary();
        let pause = fs::read(&pause_path).with_context(|| {
            format!(
                "reading {} (`cargo xtask build` builds it)",
                pause_path.display()
            )
        })?;
        for (reference, path, contents, cmd) in [
            (IMAGE, "bin/busybox", busybox, SLEEP.to_vec()),
            (PAUSE_IMAGE, "pause", pause, vec!["/pause"]),
        ] {
            let image = oci::write(&[oci::Spec {
                reference: reference.to_owned(),
                architecture: oci_architecture().to_owned(),
                files: vec![oci::File {
                    path: path.to_owned(),
                    mode: 0o755,
                    contents,
                }],
                entrypoint: Vec::new(),
                cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
                env: vec!["PATH=/bin".to_owned()],
                user: "0:0".to_owned(),
                labels: Default::default(),
                created: 0,
                mtime: 0,
            }])?;
            let archive = self.dir.join(format!("{}.oci.tar", path.replace('/', "-")));
            fs::write(&archive, &image.archive)?;
            let out =
                Command::new(find_program("ctr").context("ctr not found (package containerd)")?)
                    .arg("--address")
                    .arg(&self.socket)
                    .args(["-n", "k8s.io", "images", "import"])
                    .arg(&archive)
                    .output()?;
            ensure!(
                out.status.success(),
                "ctr images import {reference}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn client(&self) -> RuntimeServiceClient<Channel> {
        self.client.clone()
    }

    /// Runs a pod sandbox and its container "app" (`attempt` 0), as kubelet does for a new
    /// pod; fills in the pod's sandbox, container ID, IP, network namespace, host-side veth
    /// and cgroups.
    pub fn run_pod(
        &self,
        node: &NodeNet<'_>,
        pod: &mut SimPod,
        spec: &CriPodSpec,
    ) -> anyhow::Result<()> {
        let pod_cgroup = node
            .cgroup_base
            .join("kubepods/besteffort")
            .join(format!("pod{}", pod.uid));
        let sandbox = sandbox_config(pod, &pod_cgroup, spec.host_network);
        let mut client = self.client();
        let run = block(
            &self.rt,
            "RunPodSandbox",
            client.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(sandbox.clone()),
                runtime_handler: String::new(),
            }),
        )?;
        pod.sandbox_id = run.pod_sandbox_id;
        pod.pod_cgroup = pod_cgroup;
        pod.cri_sandbox = Some(Box::new(sandbox));
        pod.cri_spec = spec.clone();
        let status = block(
            &self.rt,
            "PodSandboxStatus",
            client.pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: pod.sandbox_id.clone(),
                verbose: true,
            }),
        )?;
        if spec.host_network {
            pod.netns = node.node_netns.to_owned();
            pod.veth = String::new();
        } else {
            let info: Value =
                serde_json::from_str(status.info.get("info").map(String::as_str).unwrap_or("{}"))
                    .context("the sandbox's verbose info")?;
            pod.netns = netns_name(&info).context("the sandbox's network namespace")?;
            pod.veth = host_veth(&info).context("the sandbox's host-side interface")?;
            let ip = status
                .status
                .and_then(|s| s.network)
                .map(|n| n.ip)
                .unwrap_or_default();
            pod.ip = ip
                .parse()
                .with_context(|| format!("the sandbox's IP {ip:?}"))?;
        }
        self.start_container(pod, 0)
    }

    /// Creates and starts the pod's container "app" (`attempt`: its restart count).
    fn start_container(&self, pod: &mut SimPod, attempt: u32) -> anyhow::Result<()> {
        let sandbox = pod
            .cri_sandbox
            .as_deref()
            .cloned()
            .context("the pod has no sandbox")?;
        let mut client = self.client();
        let created = block(
            &self.rt,
            "CreateContainer",
            client.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.sandbox_id.clone(),
                config: Some(container_config(pod, attempt)),
                sandbox_config: Some(sandbox),
            }),
        )?;
        pod.container_id = created.container_id;
        pod.container_cgroup = pod.pod_cgroup.join(&pod.container_id);
        pod.restart_count = attempt;
        block(
            &self.rt,
            "StartContainer",
            client.start_container(cri::StartContainerRequest {
                container_id: pod.container_id.clone(),
            }),
        )?;
        Ok(())
    }

    /// Restarts the pod's container as kubelet does after it exits: the old container is
    /// stopped and removed, a new one (new ID, restart count + 1) made in the same sandbox.
    /// What test processes left in the old container's cgroups (in `hierarchies`) is killed
    /// once the runtime stopped it.
    pub fn restart_container(
        &self,
        pod: &mut SimPod,
        hierarchies: &[PathBuf],
    ) -> anyhow::Result<()> {
        let id = pod.container_id.clone();
        let mut client = self.client();
        block(
            &self.rt,
            "StopContainer",
            client.stop_container(cri::StopContainerRequest {
                container_id: id.clone(),
                timeout: 0,
            }),
        )?;
        for root in hierarchies {
            cgroup::empty_cgroup(root, &pod.container_cgroup);
        }
        block(
            &self.rt,
            "RemoveContainer",
            client.remove_container(cri::RemoveContainerRequest { container_id: id }),
        )?;
        self.start_container(pod, pod.restart_count + 1)
    }

    /// Changes a running container's resources through the runtime, as kubelet does for an
    /// in-place resize: runc writes the cgroup files.
    pub fn update_resources(
        &self,
        pod: &SimPod,
        resources: cri::LinuxContainerResources,
    ) -> anyhow::Result<()> {
        let mut client = self.client();
        block(
            &self.rt,
            "UpdateContainerResources",
            client.update_container_resources(cri::UpdateContainerResourcesRequest {
                container_id: pod.container_id.clone(),
                linux: Some(resources),
                windows: None,
                annotations: HashMap::new(),
            }),
        )?;
        Ok(())
    }

    /// Stops the pod's sandbox (and with it its containers and network).
    pub fn stop_pod(&self, sandbox_id: &str) -> anyhow::Result<()> {
        let mut client = self.client();
        block(
            &self.rt,
            "StopPodSandbox",
            client.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: sandbox_id.to_owned(),
            }),
        )?;
        Ok(())
    }

    /// Removes a stopped sandbox and its containers.
    pub fn remove_pod(&self, sandbox_id: &str) -> anyhow::Result<()> {
        let mut client = self.client();
        block(
            &self.rt,
            "RemovePodSandbox",
            client.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: sandbox_id.to_owned(),
            }),
        )?;
        Ok(())
    }

    /// Stops containerd, then checks that nothing of it is left: processes started with its
    /// socket (shims), mounts under its directory. Returns what was found (and cleaned).
    fn stop(&mut self) -> Vec<String> {
        let mut leftovers = Vec::new();
        if let Some(mut daemon) = self.daemon.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while daemon.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        let socket = self.socket.to_string_lossy().into_owned();
        for pid in processes_mentioning(&socket) {
            leftovers.push(format!("process {pid} ({})", cmdline(pid)));
            // SAFETY: kill(2); the process was started for this node's containerd.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for point in mounts_under(&self.dir) {
            leftovers.push(format!("mount {point}"));
        }
        if !leftovers.is_empty() {
            // containerd's own account, kept for the failing test's reader.
            let kept = std::env::temp_dir().join(format!(
                "{}.containerd.log",
                self.dir.file_name().unwrap_or_default().to_string_lossy()
            ));
            if fs::copy(self.dir.join("containerd.log"), &kept).is_ok() {
                leftovers.push(format!("containerd's log: {}", kept.display()));
            }
        }
        remove_dir_all_unmounting(&self.dir);
        leftovers
    }
}

/// Waits (up to 10 s) for containerd's socket and CRI's `Version`.
fn connect(
    rt: &tokio::runtime::Runtime,
    daemon: &mut Child,
    socket: &Path,
    dir: &Path,
) -> anyhow::Result<RuntimeServiceClient<Channel>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = daemon.try_wait().ok().flatten() {
            bail!(
                "containerd exited ({status}): {}",
                tail(&dir.join("containerd.log"))
            );
        }
        if socket.exists() {
            let path = socket.to_owned();
            let channel = rt.block_on(
                Endpoint::from_static("http://cri.invalid").connect_with_connector(
                    tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                                tokio::net::UnixStream::connect(path).await?,
                            ))
                        }
                    }),
                ),
            );
            if let Ok(channel) = channel {
                let mut client = RuntimeServiceClient::new(channel);
                if let Ok(v) = block(
                    rt,
                    "Version",
                    client.version(cri::VersionRequest {
                        version: "v1".into(),
                    }),
                ) {
                    note(&format!(
                        "containerd {} (CRI {}) at {}",
                        v.runtime_version,
                        v.runtime_api_version,
                        socket.display()
                    ));
                    return Ok(client);
                }
            }
        }
        ensure!(
            Instant::now() < deadline,
            "containerd did not serve CRI within 10 s: {}",
            tail(&dir.join("containerd.log"))
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A CRI backend: pods are containerd's.
pub struct Cri {
    pub containerd: Containerd,
    leftovers: Vec<String>,
    /// Every sandbox made, for the check that their shims' sockets are gone.
    sandboxes: Vec<String>,
}

impl Cri {
    pub fn new(containerd: Containerd) -> Self {
        Cri {
            containerd,
            leftovers: Vec::new(),
            sandboxes: Vec::new(),
        }
    }
}

/// Where containerd 1.6's shim for `id` listens: `/run/containerd/s/<sha256 of the containerd
/// address, namespace and id joined as a path>`, for every containerd on the machine (the
/// shim removes it when it exits cleanly).
fn shim_socket(address: &Path, id: &str) -> PathBuf {
    use sha2::{Digest as _, Sha256};
    let digest = Sha256::digest(
        address
            .join("k8s.io")
            .join(id)
            .as_os_str()
            .as_encoded_bytes(),
    );
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Path::new("/run/containerd/s").join(hex)
}

impl PodBackend for Cri {
    fn create(&mut self, node: &NodeNet<'_>, pod: &mut SimPod) -> anyhow::Result<()> {
        let spec = pod.cri_spec.clone();
        let made = self.containerd.run_pod(node, pod, &spec);
        if !pod.sandbox_id.is_empty() {
            self.sandboxes.push(pod.sandbox_id.clone());
        }
        made
    }

    fn remove(&mut self, node: &NodeNet<'_>, pod: &mut SimPod) {
        for mut child in pod.children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !pod.sandbox_id.is_empty() {
            // The runtime stops its own processes first (killing a container's init under
            // the shim's feet races its exit handling); then what test processes left in the
            // container is killed (runc's kill reaches only the container's pid namespace; on
            // a real node an exec'd process dies with it), then the sandbox is removed.
            let stopped = self.containerd.stop_pod(&pod.sandbox_id);
            for root in node.hierarchies {
                cgroup::empty_cgroup(root, &pod.container_cgroup);
            }
            if let Err(e) = stopped.and_then(|()| self.containerd.remove_pod(&pod.sandbox_id)) {
                self.leftovers.push(format!(
                    "sandbox {} of {}/{}: {e:#}",
                    pod.sandbox_id, pod.namespace, pod.name
                ));
            }
        }
        // kubelet removes the pod's cgroup; the runtime removed its containers'.
        cgroup::remove_pod_cgroups(node, pod);
        if !pod.netns.is_empty()
            && !pod.cri_spec.host_network
            && Path::new("/run/netns").join(&pod.netns).exists()
        {
            self.leftovers
                .push(format!("network namespace {}", pod.netns));
            let _ = Command::new("ip")
                .args(["netns", "del", &pod.netns])
                .status();
        }
    }

    fn spawns_pause(&self) -> bool {
        false
    }

    fn assigns_addresses(&self) -> bool {
        true
    }

    fn cri(&self) -> Option<&Containerd> {
        Some(&self.containerd)
    }

    fn finish(&mut self) -> Vec<String> {
        let mut leftovers = std::mem::take(&mut self.leftovers);
        leftovers.extend(self.containerd.stop());
        for id in &self.sandboxes {
            let socket = shim_socket(&self.containerd.socket, id);
            if socket.exists() {
                leftovers.push(format!("shim socket {}", socket.display()));
                let _ = fs::remove_file(&socket);
            }
        }
        leftovers
    }
}

/// The sandbox config kubelet sends for a pod (labels, annotations, cgroup parent, namespaces).
fn sandbox_config(pod: &SimPod, pod_cgroup: &Path, host_network: bool) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            namespace: pod.namespace.clone(),
            attempt: 0,
        }),
        // kubelet leaves a hostNetwork pod the node's hostname (no UTS namespace of its own).
        hostname: if host_network {
            String::new()
        } else {
            pod.name.clone()
        },
        log_directory: String::new(),
        dns_config: None,
        port_mappings: Vec::new(),
        labels: HashMap::from([
            ("app".to_owned(), pod.name.clone()),
            ("io.kubernetes.pod.name".to_owned(), pod.name.clone()),
            (
                "io.kubernetes.pod.namespace".to_owned(),
                pod.namespace.clone(),
            ),
            ("io.kubernetes.pod.uid".to_owned(), pod.uid.clone()),
        ]),
        annotations: HashMap::from([("kubernetes.io/config.source".to_owned(), "api".to_owned())]),
        linux: Some(cri::LinuxPodSandboxConfig {
            // kubelet's cgroupfs driver passes the absolute path.
            cgroup_parent: format!("/{}", pod_cgroup.display()),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options(host_network)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        windows: None,
    }
}

/// The namespaces kubelet asks for a pod's sandbox and containers: the pod's network (or the
/// node's, `hostNetwork`), a pid namespace per container, the pod's IPC.
fn namespace_options(host_network: bool) -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: if host_network {
            cri::NamespaceMode::Node
        } else {
            cri::NamespaceMode::Pod
        } as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// The container config kubelet sends for container "app" of a pod.
fn container_config(pod: &SimPod, attempt: u32) -> cri::ContainerConfig {
    let spec = &pod.cri_spec;
    let resources = cri::LinuxContainerResources {
        cpu_period: if spec.cpu_quota_us.is_some() {
            100_000
        } else {
            0
        },
        cpu_quota: spec.cpu_quota_us.unwrap_or(0),
        cpu_shares: 2,
        memory_limit_in_bytes: spec.memory_limit.unwrap_or(0),
        ..Default::default()
    };
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: pod.container.clone(),
            attempt,
        }),
        image: Some(cri::ImageSpec {
            image: IMAGE.to_owned(),
            ..Default::default()
        }),
        command: SLEEP.iter().map(|s| (*s).to_owned()).collect(),
        labels: HashMap::from([
            (
                "io.kubernetes.container.name".to_owned(),
                pod.container.clone(),
            ),
            ("io.kubernetes.pod.name".to_owned(), pod.name.clone()),
            (
                "io.kubernetes.pod.namespace".to_owned(),
                pod.namespace.clone(),
            ),
            ("io.kubernetes.pod.uid".to_owned(), pod.uid.clone()),
        ]),
        annotations: HashMap::from([(
            "io.kubernetes.container.restartCount".to_owned(),
            attempt.to_string(),
        )]),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(resources),
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(namespace_options(spec.host_network)),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// The basename of the sandbox's network namespace (`cni-<uuid>` under /run/netns), from the
/// runtime spec in containerd's verbose sandbox info.
fn netns_name(info: &Value) -> Option<String> {
    info.pointer("/runtimeSpec/linux/namespaces")?
        .as_array()?
        .iter()
        .find(|ns| ns.get("type").and_then(Value::as_str) == Some("network"))?
        .get("path")?
        .as_str()?
        .rsplit('/')
        .next()
        .map(str::to_owned)
}

/// The node-side interface the CNI bridge plugin made (the one outside the sandbox), from the
/// CNI result in containerd's verbose sandbox info.
fn host_veth(info: &Value) -> Option<String> {
    info.get("cniResult")?
        .get("Interfaces")?
        .as_object()?
        .iter()
        .find(|(name, iface)| {
            name.as_str() != "br0"
                && name.as_str() != "eth0"
                && iface
                    .get("Sandbox")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
        })
        .map(|(name, _)| name.clone())
}

/// The static pause binary `cargo xtask build` makes (`TRIAGE_PAUSE_BIN` overrides it).
pub fn pause_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TRIAGE_PAUSE_BIN") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/x86_64-unknown-linux-musl/release/sim-pause")
}

fn oci_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

/// Processes whose command line names `needle` (a containerd socket: its shims).
fn processes_mentioning(needle: &str) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| cmdline(pid).contains(needle))
        .collect()
}

/// Mount points at or below `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    triage_agent::kernel::mountinfo::mounts(&mountinfo)
        .filter(|m| Path::new(&m.point).starts_with(dir))
        .map(|m| m.point.to_string())
        .collect()
}

/// Removes `dir` after detaching any mount below it (deepest first).
fn remove_dir_all_unmounting(dir: &Path) {
    let mut points = mounts_under(dir);
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        if let Ok(c) = std::ffi::CString::new(point) {
            // SAFETY: umount2 on a path string; MNT_DETACH never blocks.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
    let _ = fs::remove_dir_all(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket a SIGKILLed shim of this containerd left in /run/containerd/s, named as
    /// containerd 1.6 names it.
    #[test]
    fn shim_sockets_are_named_as_containerd_names_them() {
        assert_eq!(
            shim_socket(
                Path::new("/run/ta-cri-730a-0/containerd.sock"),
                "5f943ae96eca630b9a6157827c35f0f30132b99aa4cf99839306e69b20a1423f"
            ),
            Path::new(
                "/run/containerd/s/a610ddb20c9c24486aec5eeeda3e2d1a619b5005dc3c01fbd809b28c9d721d68"
            )
        );
    }

    #[test]
    fn the_sandbox_info_names_its_network_namespace_and_host_interface() {
        let info: Value = serde_json::from_str(
            r#"{"runtimeSpec":{"linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/var/run/netns/cni-1ec23062-0f52-8870-f128-23b02c3d44b2"}]}},
                "cniResult":{"Interfaces":{"br0":{"IPConfigs":null,"Mac":"aa","Sandbox":""},"eth0":{"Sandbox":"/var/run/netns/cni-1ec23062"},"veth1a2b3c4d":{"Mac":"bb","Sandbox":""}}}}"#,
        )
        .unwrap();
        assert_eq!(
            netns_name(&info).as_deref(),
            Some("cni-1ec23062-0f52-8870-f128-23b02c3d44b2")
        );
        assert_eq!(host_veth(&info).as_deref(), Some("veth1a2b3c4d"));
    }
}
