//! Pods on the simulated node: made through a [`PodBackend`] (network namespace, veth, cgroups,
//! and a pause process, as a sandbox always has one), published to the API server as kubelet
//! reports them, and deleted again so their IPs can be reused.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::Context as _;

use super::{CgroupDriver, SimNode, SimPod, cgroup, containerd::CriPodSpec, network};
use crate::apiserver::{PodFixture, pod_object};

/// Pod numbers are unique in the process, so UIDs and container IDs never repeat across nodes.
static NEXT_POD: AtomicU32 = AtomicU32::new(1);

/// What pods need from the node they are created on.
pub struct NodeNet<'a> {
    pub node_netns: &'a str,
    pub bridge: &'a str,
    pub prefix_len: u8,
    pub cgroup_base: &'a Path,
    pub driver: CgroupDriver,
    pub hierarchies: &'a [PathBuf],
}

/// Makes and removes pods on a simulated node.
pub trait PodBackend {
    fn create(&mut self, node: &NodeNet<'_>, pod: &mut SimPod) -> anyhow::Result<()>;
    fn remove(&mut self, node: &NodeNet<'_>, pod: &mut SimPod);
    /// Whether the node must start the pod's pause process itself (a runtime starts its own).
    fn spawns_pause(&self) -> bool {
        true
    }
    /// Whether the backend picks pods' addresses (a CNI's IPAM) instead of the node.
    fn assigns_addresses(&self) -> bool {
        false
    }
    /// The container runtime behind the pods, if any.
    fn cri(&self) -> Option<&super::containerd::Containerd> {
        None
    }
    /// Called once when the node goes, after every pod was removed: stops what the backend
    /// runs and returns what it found left behind (none is expected).
    fn finish(&mut self) -> Vec<String> {
        Vec::new()
    }
}

/// Pods built by hand: `ip netns`, a veth pair on the node bridge, cgroup directories.
#[derive(Default)]
pub struct HandMade;

impl PodBackend for HandMade {
    fn create(&mut self, node: &NodeNet<'_>, pod: &mut SimPod) -> anyhow::Result<()> {
        network::create_pod_network(node, pod)?;
        cgroup::create_pod_cgroups(node, pod)
    }

    fn remove(&mut self, node: &NodeNet<'_>, pod: &mut SimPod) {
        for mut child in pod.children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        network::remove_pod_network(pod);
        cgroup::remove_pod_cgroups(node, pod);
    }
}

/// The node's side of [`NodeNet`], owned, so the backend can be called while the node's pods
/// are borrowed mutably.
pub(super) struct OwnedNet {
    node_netns: String,
    cgroup_base: PathBuf,
    driver: CgroupDriver,
    hierarchies: Vec<PathBuf>,
}

impl OwnedNet {
    pub(super) fn as_net(&self) -> NodeNet<'_> {
        NodeNet {
            node_netns: &self.node_netns,
            bridge: "br0",
            prefix_len: 24,
            cgroup_base: &self.cgroup_base,
            driver: self.driver,
            hierarchies: &self.hierarchies,
        }
    }
}

impl SimNode {
    /// Creates a running pod with one container ("app") and publishes it to the API server.
    pub fn add_pod(&mut self, namespace: &str, name: &str) -> anyhow::Result<usize> {
        self.add_pod_full(namespace, name, None, None, CriPodSpec::default())
    }

    /// Like [`SimNode::add_pod`], made with `spec` (hostNetwork, resources) on the runtime
    /// backend; on the hand-made backend only `spec.host_network = false` and no resources.
    pub fn add_pod_spec(
        &mut self,
        namespace: &str,
        name: &str,
        spec: CriPodSpec,
    ) -> anyhow::Result<usize> {
        self.add_pod_full(namespace, name, None, None, spec)
    }

    /// Like [`SimNode::add_pod`], but the API server says the pod runs on `node`: with one agent
    /// per node name (`AgentProcess::start_as`), one machine plays several nodes, each agent
    /// owning the pods of its node.
    pub fn add_pod_on(&mut self, node: &str, namespace: &str, name: &str) -> anyhow::Result<usize> {
        self.add_pod_full(namespace, name, None, Some(node), CriPodSpec::default())
    }

    /// Like [`SimNode::add_pod`], but the API server is not told (yet): what an agent sees
    /// between the runtime starting a pod and its watch event arriving. [`SimNode::announce`]
    /// tells it.
    pub fn add_pod_unannounced(&mut self, namespace: &str, name: &str) -> anyhow::Result<usize> {
        let spec = CriPodSpec {
            unannounced: true,
            ..CriPodSpec::default()
        };
        self.add_pod_full(namespace, name, None, None, spec)
    }

    /// Publishes pod `index` (again) to the API server as kubelet reports it now.
    pub fn announce(&self, index: usize) {
        self.publish(index, None);
    }

    /// Like [`SimNode::add_pod`] with a chosen IP (to test IP reuse).
    pub fn add_pod_with_ip(
        &mut self,
        namespace: &str,
        name: &str,
        ip: Ipv4Addr,
    ) -> anyhow::Result<usize> {
        self.add_pod_full(namespace, name, Some(ip), None, CriPodSpec::default())
    }

    fn add_pod_full(
        &mut self,
        namespace: &str,
        name: &str,
        ip: Option<Ipv4Addr>,
        node: Option<&str>,
        spec: CriPodSpec,
    ) -> anyhow::Result<usize> {
        let ip = if self.backend.assigns_addresses() {
            anyhow::ensure!(
                ip.is_none(),
                "the runtime's CNI assigns pod addresses: a chosen IP needs the hand-made backend"
            );
            Ipv4Addr::UNSPECIFIED
        } else {
            anyhow::ensure!(
                !spec.host_network && spec.cpu_quota_us.is_none() && spec.memory_limit.is_none(),
                "hostNetwork pods and resources at creation need the runtime backend"
            );
            match ip {
                Some(ip) => ip,
                None => self.next_pod_ip()?,
            }
        };
        self.pod_seq += 1;
        let seq = NEXT_POD.fetch_add(1, Ordering::Relaxed);
        let uid = uuid_like(seq);
        let container_id = format!(
            "{:0>64x}",
            u128::from(seq) << 64 | u128::from(std::process::id())
        );
        let mut pod = SimPod {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid,
            ip,
            container: "app".to_owned(),
            container_id,
            netns: format!("{}-p{}", self.node_netns, self.pod_seq),
            container_cgroup: PathBuf::new(),
            pod_cgroup: PathBuf::new(),
            veth: format!("vp{}", self.pod_seq),
            children: Vec::new(),
            resolv_conf: None,
            sandbox_id: String::new(),
            restart_count: 0,
            cri_sandbox: None,
            cri_spec: spec,
        };
        let owned = self.net_owned();
        let net = owned.as_net();
        if let Err(e) = self.backend.create(&net, &mut pod) {
            self.backend.remove(&net, &mut pod);
            return Err(e);
        }
        if pod.cri_spec.host_network {
            pod.ip = self.node_ip();
        }
        self.pods.push(pod);
        let index = self.pods.len() - 1;
        if self.backend.spawns_pause() {
            // The pause process: a pod always has one process, like a real sandbox.
            let pause = self.spawn(index, &["sleep"])?;
            self.pods[index].children.push(pause);
        }
        if !self.pods[index].cri_spec.unannounced {
            self.publish(index, node);
        }
        Ok(index)
    }

    /// Publishes pod `index` to the API server as kubelet reports it (again after a change).
    fn publish(&self, index: usize, node: Option<&str>) {
        let p = &self.pods[index];
        let node_ip = IpAddr::V4(self.node_ip());
        let mut object = pod_object(&PodFixture {
            namespace: &p.namespace,
            name: &p.name,
            uid: &p.uid,
            node: node.unwrap_or(&self.name),
            pod_ip: Some(IpAddr::V4(p.ip)),
            host_ip: Some(node_ip),
            host_network: p.cri_spec.host_network,
            qos_class: "BestEffort",
            containers: &[(&p.container, &p.container_id)],
        });
        for status in object
            .status
            .iter_mut()
            .flat_map(|s| s.container_statuses.iter_mut().flatten())
        {
            status.restart_count = i32::try_from(p.restart_count).unwrap_or(i32::MAX);
        }
        self.api.apply_pod(object);
    }

    /// Restarts pod `index`'s container through the runtime (a new container ID in the same
    /// sandbox, restart count + 1), then, unless `quietly`, tells the API server. Runtime
    /// backend only.
    pub fn restart_container(&mut self, index: usize, quietly: bool) -> anyhow::Result<()> {
        let cri = self
            .backend
            .cri()
            .context("restarting a container needs the runtime backend")?;
        let pod = &mut self.pods[index];
        for mut child in pod.children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        cri.restart_container(pod, &self.hierarchies)?;
        if !quietly {
            self.publish(index, None);
        }
        Ok(())
    }

    /// The runtime's CRI socket, on the runtime backend.
    pub fn cri_socket(&self) -> Option<&Path> {
        self.backend.cri().map(|c| c.socket())
    }

    pub fn pod(&self, index: usize) -> &SimPod {
        &self.pods[index]
    }

    /// Pods of this node that exist (added and not deleted).
    pub fn live_pods(&self) -> u64 {
        self.pods.iter().filter(|p| !p.netns.is_empty()).count() as u64
    }

    /// Deletes a pod from the API server and tears it down; its IP may then be reused.
    pub fn delete_pod(&mut self, index: usize) {
        let (ns, name) = (
            self.pods[index].namespace.clone(),
            self.pods[index].name.clone(),
        );
        self.api.delete_pod(&ns, &name);
        let net = self.net_owned();
        let mut pod = std::mem::replace(&mut self.pods[index], SimPod::gone());
        self.backend.remove(&net.as_net(), &mut pod);
    }

    pub(super) fn net_owned(&self) -> OwnedNet {
        OwnedNet {
            node_netns: self.node_netns.clone(),
            cgroup_base: self.cgroup_base.clone(),
            driver: self.driver,
            hierarchies: self.hierarchies.clone(),
        }
    }
}

impl SimPod {
    /// A deleted pod's place in the node's list (indexes stay valid).
    fn gone() -> SimPod {
        SimPod {
            namespace: String::new(),
            name: String::new(),
            uid: String::new(),
            ip: Ipv4Addr::UNSPECIFIED,
            container: String::new(),
            container_id: String::new(),
            netns: String::new(),
            container_cgroup: PathBuf::new(),
            pod_cgroup: PathBuf::new(),
            veth: String::new(),
            children: Vec::new(),
            resolv_conf: None,
            sandbox_id: String::new(),
            restart_count: 0,
            cri_sandbox: None,
            cri_spec: CriPodSpec::default(),
        }
    }
}

/// A valid RFC 4122-shaped UID, unique per pod in this process.
fn uuid_like(seq: u32) -> String {
    let pid = std::process::id();
    format!(
        "{pid:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        seq & 0xffff,
        seq & 0xfff,
        (pid >> 8) & 0xfff,
        u64::from(seq) * 7919
    )
}
