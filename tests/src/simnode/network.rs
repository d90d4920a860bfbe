//! The simulated node's network: the node's namespace and bridge, a pod's namespace and its
//! veth pair on that bridge, addresses, routes, and nftables rulesets where a policy-enforcing
//! CNI would load its own.

use std::net::Ipv4Addr;

use anyhow::ensure;

use super::{NodeNet, SimNode, SimPod, tools::nft, tools::sh};

/// The node's network namespace `netns` with the bridge br0 holding the node's address `ip`
/// (the pods' gateway), and loopback up.
pub(super) fn create_node_network(netns: &str, ip: Ipv4Addr) -> anyhow::Result<()> {
    sh("ip", &["netns", "add", netns])?;
    sh("ip", &["-n", netns, "link", "add", "br0", "type", "bridge"])?;
    let gw = format!("{ip}/24");
    sh("ip", &["-n", netns, "addr", "add", &gw, "dev", "br0"])?;
    sh("ip", &["-n", netns, "link", "set", "br0", "up"])?;
    sh("ip", &["-n", netns, "link", "set", "lo", "up"])?;
    Ok(())
}

/// The pod's network namespace, and a veth pair from it (eth0, holding the pod's IP) to the
/// node's bridge.
pub(super) fn create_pod_network(node: &NodeNet<'_>, pod: &SimPod) -> anyhow::Result<()> {
    sh("ip", &["netns", "add", &pod.netns])?;
    // The MAC follows from the IP (as several CNIs do), so a reused IP keeps its MAC and
    // peers' neighbour caches stay right.
    let [a, b, c, d] = pod.ip.octets();
    let mac = format!("02:42:{a:02x}:{b:02x}:{c:02x}:{d:02x}");
    sh(
        "ip",
        &[
            "-n",
            node.node_netns,
            "link",
            "add",
            &pod.veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "address",
            &mac,
            "netns",
            &pod.netns,
        ],
    )?;
    sh(
        "ip",
        &[
            "-n",
            node.node_netns,
            "link",
            "set",
            &pod.veth,
            "master",
            node.bridge,
            "up",
        ],
    )?;
    let cidr = format!("{}/{}", pod.ip, node.prefix_len);
    sh(
        "ip",
        &["-n", &pod.netns, "addr", "add", &cidr, "dev", "eth0"],
    )?;
    sh("ip", &["-n", &pod.netns, "link", "set", "eth0", "up"])?;
    sh("ip", &["-n", &pod.netns, "link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes the pod's network namespace (its end of the veth pair, and so the pair, with it).
pub(super) fn remove_pod_network(pod: &SimPod) {
    let _ = sh("ip", &["netns", "del", &pod.netns]);
}

impl SimNode {
    /// The node's network namespace (where the bridge and Service translation live).
    pub fn node_netns(&self) -> &str {
        &self.node_netns
    }

    /// The node's own address on the bridge.
    pub fn node_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], 1)
    }

    /// The next free pod address in the node's /24.
    pub(super) fn next_pod_ip(&mut self) -> anyhow::Result<Ipv4Addr> {
        let ip = Ipv4Addr::new(
            self.subnet[0],
            self.subnet[1],
            self.subnet[2],
            self.next_host,
        );
        ensure!(self.next_host < 250, "subnet full");
        self.next_host += 1;
        Ok(ip)
    }

    /// The node-side interfaces of every live pod (in the node's network namespace).
    pub fn pod_interfaces(&self) -> Vec<&str> {
        self.pods
            .iter()
            .filter(|p| !p.netns.is_empty())
            .map(SimPod::host_interface)
            .collect()
    }

    /// Routes a ClusterIP range out of a pod's eth0, as pods reach Service VIPs (the node
    /// would translate them; here nothing answers, which is all a drop test needs).
    pub fn route_services(&self, index: usize, cidr: &str) -> anyhow::Result<()> {
        let pod = &self.pods[index];
        ensure!(!pod.netns.is_empty(), "pod was deleted");
        sh(
            "ip",
            &["-n", &pod.netns, "route", "add", cidr, "dev", "eth0"],
        )
    }

    /// Routes a range from a pod through the node's network namespace (where Service VIPs are
    /// translated), as a pod's default route does.
    pub fn route_via_node(&self, index: usize, cidr: &str) -> anyhow::Result<()> {
        let pod = &self.pods[index];
        ensure!(!pod.netns.is_empty(), "pod was deleted");
        let via = self.node_ip().to_string();
        sh(
            "ip",
            &["-n", &pod.netns, "route", "replace", cidr, "via", &via],
        )
    }

    /// Loads an nftables ruleset into the node's network namespace, where the bridge forwards
    /// pod-to-pod traffic: what a policy-enforcing CNI does with its own rules. A `bridge`
    /// family table there sees every packet between pods of the node.
    pub fn nft_node(&self, ruleset: &str) -> anyhow::Result<()> {
        nft(&self.node_netns, ruleset)
    }

    /// Loads an nftables ruleset into a pod's network namespace (a host firewall inside the
    /// pod, or per-pod rules as some CNIs install them).
    pub fn nft_pod(&self, index: usize, ruleset: &str) -> anyhow::Result<()> {
        let pod = &self.pods[index];
        ensure!(!pod.netns.is_empty(), "pod was deleted");
        nft(&pod.netns, ruleset)
    }
}

impl SimPod {
    /// The node side of the pod's veth pair (in the node's network namespace), where a capture
    /// on "the pod's interface" runs.
    pub fn host_interface(&self) -> &str {
        &self.veth
    }
}
