//! The simulated node: a node network namespace with a bridge and no uplink, pods as network
//! namespaces with veths on that bridge, kubelet-style cgroups (either driver) holding real
//! processes, and the stand-in API server serving those pods. Everything is torn down on drop,
//! also when a test fails, and names are unique so tests run in parallel.
//!
//! Cgroups: on a hybrid host (v1 controllers, cgroup2 without them) a pod's container gets a
//! directory in cgroup2 and in each v1 hierarchy of memory, cpu and pids; on a pure cgroup2
//! machine the controllers those pods need are enabled in `cgroup.subtree_control` of each of
//! their ancestors (and nowhere else). [`SimNode::set_memory_limit`] and
//! [`SimNode::set_cpu_quota`] write whichever of the v1 and v2 files exist.
//!
//! Pod creation goes through [`PodBackend`]: [`HandMade`] builds pods directly (fast, fully
//! controlled); a CRI backend (containerd + runc + CNI) can be added behind the same interface.
//!
//! This module holds the node and its pods and wires the parts together: `network`
//! (namespaces, veths, addresses, routes, nftables), `cgroup` (kubelet's layouts, limits),
//! `pods` (making, publishing and deleting pods), `processes` (real processes in a pod's
//! cgroups and network namespace) and `dns` (the cluster DNS server, a pod's resolv.conf).

use std::{
    io::Write as _,
    net::Ipv4Addr,
    path::PathBuf,
    process::Child,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, ensure};

use crate::apiserver::ApiServer;

mod cgroup;
pub mod containerd;
mod dns;
mod network;
mod pods;
mod processes;
mod tools;

pub use cgroup::CgroupDriver;
pub use containerd::CriPodSpec;
pub use pods::{HandMade, NodeNet, PodBackend};

use tools::sh;

static NEXT_NODE: AtomicU32 = AtomicU32::new(0);

/// One simulated pod.
#[derive(Debug)]
pub struct SimPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub ip: Ipv4Addr,
    pub container: String,
    pub container_id: String,
    netns: String,
    /// The container's cgroup directory relative to each hierarchy root.
    container_cgroup: PathBuf,
    pod_cgroup: PathBuf,
    veth: String,
    children: Vec<Child>,
    /// The pod's /etc/resolv.conf (bind-mounted over the host's for its processes), as kubelet
    /// writes one per pod.
    resolv_conf: Option<std::ffi::CString>,
    /// The runtime's sandbox ID (runtime backend), empty for hand-made pods.
    pub sandbox_id: String,
    /// How many times the runtime restarted the container (its CRI `attempt`).
    pub restart_count: u32,
    /// The sandbox config the pod was made with (runtime backend): kubelet sends it again with
    /// every container it creates.
    cri_sandbox: Option<Box<containerd_api::PodSandboxConfig>>,
    /// What the pod was made with (hostNetwork, resources).
    cri_spec: CriPodSpec,
}

use triage_agent_proto::cri::v1 as containerd_api;

/// Who makes the simulated node's pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodRuntime {
    /// The harness itself: `ip netns`, veths, cgroup directories, a `sleep` as pause process.
    HandMade,
    /// A private containerd with runc and the CNI plugins, driven through CRI as kubelet does.
    Containerd,
}

/// Settings of a simulated node.
pub struct SimConfig {
    /// The `sim-workload` binary that pod processes run.
    pub workload: PathBuf,
    pub driver: CgroupDriver,
    pub runtime: PodRuntime,
}

/// A simulated node with its API server. Dropping it removes everything it made.
pub struct SimNode {
    pub name: String,
    pub api: ApiServer,
    node_netns: String,
    subnet: [u8; 3],
    next_host: u8,
    cgroup_base: PathBuf,
    hierarchies: Vec<PathBuf>,
    driver: CgroupDriver,
    workload: PathBuf,
    kubeconfig: tempfile_path::TempDir,
    backend: Box<dyn PodBackend + Send>,
    pods: Vec<SimPod>,
    pod_seq: u32,
}

/// A tiny owned temporary directory (no extra dependency).
mod tempfile_path {
    use std::path::{Path, PathBuf};
    pub struct TempDir(PathBuf);
    impl TempDir {
        pub fn new(tag: &str) -> std::io::Result<Self> {
            let dir = std::env::temp_dir().join(tag);
            std::fs::create_dir_all(&dir)?;
            Ok(TempDir(dir))
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Fails loudly unless running as root: privileged tests must never pass by skipping.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the simulated node needs root (network namespaces, cgroups, eBPF): run `cargo xtask test` as root"
    );
}

impl SimNode {
    /// Creates the node network namespace, its bridge, the cgroup base and the API server.
    pub fn start(config: SimConfig) -> anyhow::Result<SimNode> {
        require_root();
        ensure!(
            config.workload.exists(),
            "workload binary {} missing",
            config.workload.display()
        );
        let seq = NEXT_NODE.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let id = format!("{:x}-{seq}", pid & 0xfffff);
        let name = format!("sim-node-{id}");
        let node_netns = format!("ta-node-{id}");
        // 10.<64..191>.<seq>.0/24: unique per test in this process, and per process in
        // practice, so IP attribution of parallel tests never mixes pods.
        let subnet = [10, 64 + (pid % 128) as u8, (seq % 256) as u8];
        let (v2, v1) = cgroup::cgroup_mounts()?;
        let base_name = match config.driver {
            CgroupDriver::Cgroupfs => format!("ta-sim-{id}"),
            CgroupDriver::Systemd => format!("ta-sim-{id}.slice"),
        };
        let mut hierarchies = vec![v2];
        hierarchies.extend(v1);
        let api = ApiServer::start().context("starting the stand-in API server")?;
        let kubeconfig = tempfile_path::TempDir::new(&format!("triage-sim-{id}"))?;
        api.write_kubeconfig(&kubeconfig.path().join("kubeconfig"))?;
        network::create_node_network(
            &node_netns,
            Ipv4Addr::new(subnet[0], subnet[1], subnet[2], 1),
        )?;
        let backend: Box<dyn PodBackend + Send> = match config.runtime {
            PodRuntime::HandMade => Box::new(HandMade),
            PodRuntime::Containerd => {
                ensure!(
                    config.driver == CgroupDriver::Cgroupfs,
                    "the runtime backend uses the cgroupfs driver (systemd's needs systemd as PID 1)"
                );
                match containerd::Containerd::start(&id, &node_netns, subnet) {
                    Ok(c) => Box::new(containerd::Cri::new(c)),
                    Err(e) => {
                        let _ = sh("ip", &["netns", "del", &node_netns]);
                        return Err(e.context("starting the node's containerd"));
                    }
                }
            }
        };
        let node = SimNode {
            name,
            api,
            node_netns,
            subnet,
            next_host: 2,
            cgroup_base: PathBuf::from(base_name),
            hierarchies,
            driver: config.driver,
            workload: config.workload,
            kubeconfig,
            backend,
            pods: Vec::new(),
            pod_seq: 0,
        };
        Ok(node)
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.kubeconfig.path().join("kubeconfig")
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        let net = self.net_owned();
        for mut pod in std::mem::take(&mut self.pods) {
            if !pod.netns.is_empty() {
                self.backend.remove(&net.as_net(), &mut pod);
            }
        }
        let mut leftovers = self.backend.finish();
        let _ = sh("ip", &["netns", "del", &self.node_netns]);
        for root in &self.hierarchies {
            let base = root.join(&self.cgroup_base);
            if self.backend.cri().is_some() && cgroup::has_pod_cgroups(&base) {
                leftovers.push(format!("cgroups below {}", base.display()));
                // Processes a lost shim left behind hold them.
                cgroup::kill_tree(&base);
            }
            cgroup::remove_cgroup_tree(&base);
        }
        if !leftovers.is_empty() {
            note(&format!(
                "teardown left behind (now removed): {leftovers:?}"
            ));
            assert!(
                std::thread::panicking(),
                "the runtime backend's teardown left {leftovers:?} behind"
            );
        }
    }
}

/// Writes a line to stderr for test logs.
pub fn note(msg: &str) {
    let _ = writeln!(std::io::stderr(), "[sim] {msg}");
}
