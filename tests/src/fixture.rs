//! The fixture the privileged tests start from: a simulated node (its cgroup driver, its pods)
//! and the real agent on it (its flags and environment), ready to be asked.
//!
//! [`NodeFixture::start`] makes both at once. A test that sets the node up before the agent
//! sees it (processes, nftables rules, limits, a DNS server, a NetworkPolicy) makes the node
//! with [`NodeFixture::node`], sets it up, then starts the agent with [`NodeFixture::agent`].
//! What only one test does (restarting the agent on its store, several agents, one machine
//! playing several nodes) that test does itself, on a node made here.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, ensure};

use crate::{
    agent::AgentProcess,
    simnode::{CgroupDriver, PodRuntime, SimConfig, SimNode},
};

/// How long an agent may take to be ready: its programs loaded and attached, the pods of its
/// node listed (the longest any test waited for this).
pub const READY_WITHIN: Duration = Duration::from_secs(30);

/// A simulated node and the agent on it, described; every method that makes something makes
/// it from this description, so one fixture can make a node and then its agent.
#[derive(Clone, Debug)]
pub struct NodeFixture {
    driver: CgroupDriver,
    runtime: PodRuntime,
    /// Ports (an nftables port or range) of shop/db that a bridge rule drops UDP to.
    dropping_udp: Option<String>,
    /// (namespace, name) of each pod, in order.
    pods: Vec<(String, String)>,
    kubelet_cgroup_root: bool,
    flags: Vec<String>,
    env: Vec<(String, String)>,
}

impl Default for NodeFixture {
    fn default() -> Self {
        NodeFixture::new()
    }
}

impl NodeFixture {
    /// A node whose pods come from containerd (cgroupfs driver), with no pods; an agent with
    /// no extra flags.
    pub fn new() -> Self {
        NodeFixture {
            driver: CgroupDriver::Cgroupfs,
            runtime: PodRuntime::Containerd,
            dropping_udp: None,
            pods: Vec::new(),
            kubelet_cgroup_root: false,
            flags: Vec::new(),
            env: Vec::new(),
        }
    }

    /// The kubelet cgroup driver whose layout the pods' cgroups have. The systemd driver's
    /// pods are hand-made: a runtime here cannot use it (PID 1 is not systemd).
    pub fn driver(mut self, driver: CgroupDriver) -> Self {
        self.driver = driver;
        if driver == CgroupDriver::Systemd {
            self.runtime = PodRuntime::HandMade;
        }
        self
    }

    /// Who makes the node's pods: the harness by hand, or a real container runtime.
    pub fn runtime(mut self, runtime: PodRuntime) -> Self {
        self.runtime = runtime;
        self
    }

    /// A pod with one container ("app") and its pause process, published to the API server.
    pub fn pod(mut self, namespace: &str, name: &str) -> Self {
        self.pods.push((namespace.to_owned(), name.to_owned()));
        self
    }

    /// Pods shop/db and shop/web before any other, and a bridge rule dropping UDP to db's
    /// `ports` (an nftables port or range), as a NetworkPolicy's rules would.
    pub fn dropping_udp(mut self, ports: &str) -> Self {
        self.dropping_udp = Some(ports.to_owned());
        self
    }

    /// Gives the agent the node's kubelet cgroup root (`--kubelet-cgroup-root`, before the
    /// other flags), so its samplers find the pods' cgroups.
    pub fn kubelet_cgroup_root(mut self) -> Self {
        self.kubelet_cgroup_root = true;
        self
    }

    /// Flags the agent is started with, after the harness's own (`--node-name`, `--listen`,
    /// `--log`, `--metrics-listen` unless given here).
    pub fn agent_flags<'a>(mut self, flags: impl IntoIterator<Item = &'a str>) -> Self {
        self.flags.extend(flags.into_iter().map(str::to_owned));
        self
    }

    /// Environment variables the agent is started with (`OTEL_EXPORTER_OTLP_ENDPOINT`, ...).
    pub fn agent_env<'a>(mut self, env: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        self.env
            .extend(env.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())));
        self
    }

    /// The node with its pods; their indexes in the order they were described (`N` must be
    /// their number: `let (node, [db, web]) = fixture.node()?`).
    pub fn node<const N: usize>(&self) -> anyhow::Result<(SimNode, [usize; N])> {
        let mut node = SimNode::start(SimConfig {
            workload: workload_binary()?,
            driver: self.driver,
            runtime: self.runtime,
        })
        .context("starting the simulated node")?;
        let mut pods = Vec::new();
        if let Some(ports) = &self.dropping_udp {
            let db = node.add_pod("shop", "db")?;
            pods.push(db);
            pods.push(node.add_pod("shop", "web")?);
            let db_ip = node.pod(db).ip;
            node.nft_node(&format!(
                "table bridge sim_policy {{\n chain forward {{\n  type filter hook forward priority 0; policy accept;\n  ip daddr {db_ip} udp dport {ports} drop\n }}\n}}\n"
            ))?;
        }
        for (namespace, name) in &self.pods {
            pods.push(node.add_pod(namespace, name)?);
        }
        let pods = <[usize; N]>::try_from(pods.as_slice()).map_err(|_| {
            anyhow::anyhow!("the fixture made {} pods, the test names {N}", pods.len())
        })?;
        Ok((node, pods))
    }

    /// Starts the agent on `node` and waits until it is ready: its programs attached, in sync
    /// with the API server and knowing every pod of the node.
    pub fn agent(&self, node: &SimNode) -> anyhow::Result<AgentProcess> {
        let mut agent = self.spawn_agent(node)?;
        agent.wait_ready(true, READY_WITHIN)?;
        agent.wait_pods(node.live_pods(), READY_WITHIN)?;
        Ok(agent)
    }

    /// Starts the agent on `node` and waits only until it answers with its programs attached,
    /// not for the API server: for a test that keeps the API server away, or asks before the
    /// agent has listed the pods.
    pub fn agent_unsynced(&self, node: &SimNode) -> anyhow::Result<AgentProcess> {
        let mut agent = self.spawn_agent(node)?;
        agent.wait_ready(false, READY_WITHIN)?;
        Ok(agent)
    }

    /// The node with its pods and the agent on it, ready ([`NodeFixture::node`],
    /// [`NodeFixture::agent`]).
    pub fn start<const N: usize>(&self) -> anyhow::Result<(SimNode, AgentProcess, [usize; N])> {
        let (node, pods) = self.node()?;
        let agent = self.agent(&node)?;
        Ok((node, agent, pods))
    }

    fn spawn_agent(&self, node: &SimNode) -> anyhow::Result<AgentProcess> {
        let root = format!("/{}", node.cgroup_base().display());
        let mut flags: Vec<&str> = Vec::new();
        if self.kubelet_cgroup_root {
            flags.extend(["--kubelet-cgroup-root", &root]);
        }
        // On the runtime backend, the node's own runtime; elsewhere the agent looks where
        // runtimes put their socket, as in production (none runs on these machines).
        let socket = node.cri_socket().map(|s| s.display().to_string());
        if let Some(socket) = &socket
            && !self.flags.iter().any(|f| f == "--cri-socket")
        {
            flags.extend(["--cri-socket", socket]);
        }
        flags.extend(self.flags.iter().map(String::as_str));
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        AgentProcess::start_with_env(node, &flags, &env)
    }
}

/// The `sim-workload` binary cargo built for the running test: a test runs from
/// `target/<profile>/deps/`, its package's binaries are in `target/<profile>/`.
pub fn workload_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("the running test's path")?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("the test binary has no target directory")?;
    let workload = profile_dir.join("sim-workload");
    ensure!(
        workload.is_file(),
        "{} missing: cargo builds it for the package's tests (`cargo test -p triage-agent-tests`)",
        workload.display()
    );
    Ok(workload)
}
