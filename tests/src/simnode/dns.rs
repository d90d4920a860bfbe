//! The cluster DNS on the simulated node: a DNS server (dnsmasq) in a kube-system pod behind a
//! Service VIP translated in the node's namespace, as kube-proxy does, and a pod's
//! resolv.conf for ClusterFirst DNS, as kubelet writes it.

use std::{fs, path::Path, process::Stdio};

use anyhow::Context as _;

use super::{
    SimNode,
    tools::{find_program, nft, sh, sysctl_in},
};

impl SimNode {
    /// Gives a pod kubelet's resolv.conf for ClusterFirst DNS: the cluster DNS Service, the
    /// namespace's search path, ndots:5; `options` adds resolver options ("use-vc").
    pub fn set_cluster_dns(
        &mut self,
        index: usize,
        vip: &str,
        options: &str,
    ) -> anyhow::Result<()> {
        let ns = self.pods[index].namespace.clone();
        let text = format!(
            "nameserver {vip}\nsearch {ns}.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5 {options}\n"
        );
        let path = self
            .kubeconfig
            .path()
            .join(format!("resolv-{}.conf", self.pods[index].name));
        fs::write(&path, text)?;
        // The bind mount needs a file to cover (a minimal VM may have none).
        let etc_resolv = Path::new("/etc/resolv.conf");
        if fs::symlink_metadata(etc_resolv).is_err() {
            fs::create_dir_all("/etc")?;
            fs::write(etc_resolv, "").context("creating /etc/resolv.conf to mount over")?;
        }
        self.pods[index].resolv_conf = Some(std::ffi::CString::new(
            path.to_str().context("temp path is not UTF-8")?,
        )?);
        self.route_via_node(index, "10.96.0.0/12")
    }

    /// Starts a cluster DNS server: dnsmasq (with `args`) in pod `kube-system/<name>`, behind
    /// the Service VIP `vip` (UDP and TCP 53 translated in the node's namespace, as kube-proxy
    /// does). The server's replies go back through the node so the translation is undone.
    pub fn add_dns_server(
        &mut self,
        name: &str,
        vip: &str,
        args: &[&str],
    ) -> anyhow::Result<usize> {
        let index = self.add_pod("kube-system", name)?;
        let pod_ip = self.pods[index].ip.to_string();
        let netns = self.pods[index].netns.clone();
        let subnet = format!(
            "{}.{}.{}.0/24",
            self.subnet[0], self.subnet[1], self.subnet[2]
        );
        let node_ip = self.node_ip().to_string();
        sh(
            "ip",
            &["-n", &netns, "route", "del", &subnet, "dev", "eth0"],
        )?;
        sh(
            "ip",
            &[
                "-n",
                &netns,
                "route",
                "add",
                &format!("{node_ip}/32"),
                "dev",
                "eth0",
            ],
        )?;
        sh(
            "ip",
            &["-n", &netns, "route", "add", &subnet, "via", &node_ip],
        )?;
        for key in [
            "net.ipv4.conf.all.send_redirects",
            "net.ipv4.conf.br0.send_redirects",
        ] {
            sysctl_in(&self.node_netns, key, "0")?;
        }
        sysctl_in(&self.node_netns, "net.ipv4.ip_forward", "1")?;
        let table = format!("sim_svc_{}", name.replace('-', "_"));
        nft(
            &self.node_netns,
            &format!(
                "table ip {table} {{\n chain prerouting {{\n  type nat hook prerouting priority -100; policy accept;\n  ip daddr {vip} udp dport 53 dnat to {pod_ip}:53\n  ip daddr {vip} tcp dport 53 dnat to {pod_ip}:53\n }}\n}}\n"
            ),
        )?;
        let listen = format!("--listen-address={pod_ip}");
        let mut dnsmasq_args = vec![
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--port=53",
            "--pid-file=",
            // No user to switch to, so no passwd lookup (a minimal VM may have no /etc/passwd).
            "--user=",
            "--group=",
            "--cache-size=0",
            &listen,
        ];
        dnsmasq_args.extend_from_slice(args);
        let dnsmasq = find_program("dnsmasq")
            .context("dnsmasq not found on PATH (Debian package dnsmasq-base)")?;
        let child = self
            .command_of(index, &dnsmasq, &dnsmasq_args)?
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", dnsmasq.display()))?;
        self.pods[index].children.push(child);
        Ok(index)
    }
}
