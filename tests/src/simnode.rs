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

use std::{
    fs,
    io::Write as _,
    net::Ipv4Addr,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, bail, ensure};

use crate::apiserver::{ApiServer, PodFixture, pod_object};

mod cgroup;
mod tools;

use tools::{find_program, nft, sh, sysctl_in};

/// Which kubelet cgroup driver the simulated pods' cgroups imitate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupDriver {
    /// `kubepods/besteffort/pod<uid>/<container-id>`
    Cgroupfs,
    /// `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice/cri-containerd-<id>.scope`
    Systemd,
}

static NEXT_NODE: AtomicU32 = AtomicU32::new(0);
/// Pod numbers are unique in the process, so UIDs and container IDs never repeat across nodes.
static NEXT_POD: AtomicU32 = AtomicU32::new(1);

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
}

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
}

/// Pods built by hand: `ip netns`, a veth pair on the node bridge, cgroup directories.
#[derive(Default)]
pub struct HandMade;

impl PodBackend for HandMade {
    fn create(&mut self, node: &NodeNet<'_>, pod: &mut SimPod) -> anyhow::Result<()> {
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
        let uid_ = pod.uid.replace('-', "_");
        let (pod_dir, container_dir) = match node.driver {
            CgroupDriver::Cgroupfs => {
                let p = node
                    .cgroup_base
                    .join("kubepods/besteffort")
                    .join(format!("pod{}", pod.uid));
                let c = p.join(&pod.container_id);
                (p, c)
            }
            CgroupDriver::Systemd => {
                let p = node
                    .cgroup_base
                    .join("kubepods.slice/kubepods-besteffort.slice")
                    .join(format!("kubepods-besteffort-pod{uid_}.slice"));
                let c = p.join(format!("cri-containerd-{}.scope", pod.container_id));
                (p, c)
            }
        };
        for (i, root) in node.hierarchies.iter().enumerate() {
            fs::create_dir_all(root.join(&container_dir)).with_context(|| {
                format!("creating cgroup {}", root.join(&container_dir).display())
            })?;
            if i == 0 {
                // cgroup2: controllers down to the pod, so its container has limit files.
                cgroup::enable_v2_controllers(root, &pod_dir);
            }
        }
        pod.pod_cgroup = pod_dir;
        pod.container_cgroup = container_dir;
        Ok(())
    }

    fn remove(&mut self, node: &NodeNet<'_>, pod: &mut SimPod) {
        for mut child in pod.children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = sh("ip", &["netns", "del", &pod.netns]);
        for root in node.hierarchies {
            // Processes the pod's own left behind (a worker child of a killed parent).
            cgroup::empty_cgroup(root, &pod.container_cgroup);
            let _ = fs::remove_dir(root.join(&pod.container_cgroup));
            let _ = fs::remove_dir(root.join(&pod.pod_cgroup));
        }
    }
}

/// Settings of a simulated node.
pub struct SimConfig {
    /// The `sim-workload` binary that pod processes run.
    pub workload: PathBuf,
    pub driver: CgroupDriver,
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
            backend: Box::new(HandMade),
            pods: Vec::new(),
            pod_seq: 0,
        };
        sh("ip", &["netns", "add", &node.node_netns])?;
        sh(
            "ip",
            &[
                "-n",
                &node.node_netns,
                "link",
                "add",
                "br0",
                "type",
                "bridge",
            ],
        )?;
        let gw = format!("{}/24", node.node_ip());
        sh(
            "ip",
            &["-n", &node.node_netns, "addr", "add", &gw, "dev", "br0"],
        )?;
        sh("ip", &["-n", &node.node_netns, "link", "set", "br0", "up"])?;
        sh("ip", &["-n", &node.node_netns, "link", "set", "lo", "up"])?;
        Ok(node)
    }

    /// A node with pods shop/db and shop/web, and a bridge rule dropping UDP to db's `ports`
    /// (an nftables port or range): (node, db, web, db's IP).
    pub fn dropping_udp(
        config: SimConfig,
        ports: &str,
    ) -> anyhow::Result<(SimNode, usize, usize, Ipv4Addr)> {
        let mut node = SimNode::start(config)?;
        let db = node.add_pod("shop", "db")?;
        let web = node.add_pod("shop", "web")?;
        let db_ip = node.pod(db).ip;
        node.nft_node(&format!(
            "table bridge sim_policy {{\n chain forward {{\n  type filter hook forward priority 0; policy accept;\n  ip daddr {db_ip} udp dport {ports} drop\n }}\n}}\n"
        ))?;
        Ok((node, db, web, db_ip))
    }

    /// The node's network namespace (where the bridge and Service translation live).
    pub fn node_netns(&self) -> &str {
        &self.node_netns
    }

    /// The node's own address on the bridge.
    pub fn node_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], 1)
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.kubeconfig.path().join("kubeconfig")
    }

    /// Creates a running pod with one container ("app") and publishes it to the API server.
    pub fn add_pod(&mut self, namespace: &str, name: &str) -> anyhow::Result<usize> {
        let ip = Ipv4Addr::new(
            self.subnet[0],
            self.subnet[1],
            self.subnet[2],
            self.next_host,
        );
        ensure!(self.next_host < 250, "subnet full");
        self.next_host += 1;
        self.add_pod_with_ip(namespace, name, ip)
    }

    /// Like [`SimNode::add_pod`], but the API server says the pod runs on `node`: with one agent
    /// per node name (`AgentProcess::start_as`), one machine plays several nodes, each agent
    /// owning the pods of its node.
    pub fn add_pod_on(&mut self, node: &str, namespace: &str, name: &str) -> anyhow::Result<usize> {
        let ip = Ipv4Addr::new(
            self.subnet[0],
            self.subnet[1],
            self.subnet[2],
            self.next_host,
        );
        ensure!(self.next_host < 250, "subnet full");
        self.next_host += 1;
        self.add_pod_full(namespace, name, ip, Some(node))
    }

    /// Like [`SimNode::add_pod`] with a chosen IP (to test IP reuse).
    pub fn add_pod_with_ip(
        &mut self,
        namespace: &str,
        name: &str,
        ip: Ipv4Addr,
    ) -> anyhow::Result<usize> {
        self.add_pod_full(namespace, name, ip, None)
    }

    fn add_pod_full(
        &mut self,
        namespace: &str,
        name: &str,
        ip: Ipv4Addr,
        node: Option<&str>,
    ) -> anyhow::Result<usize> {
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
        };
        let owned = self.net_owned();
        let net = owned.as_net();
        if let Err(e) = self.backend.create(&net, &mut pod) {
            self.backend.remove(&net, &mut pod);
            return Err(e);
        }
        self.pods.push(pod);
        let index = self.pods.len() - 1;
        // The pause process: a pod always has one process, like a real sandbox.
        let pause = self.spawn(index, &["sleep"])?;
        self.pods[index].children.push(pause);
        let p = &self.pods[index];
        let node_ip = std::net::IpAddr::V4(self.node_ip());
        self.api.apply_pod(pod_object(&PodFixture {
            namespace: &p.namespace,
            name: &p.name,
            uid: &p.uid,
            node: node.unwrap_or(&self.name),
            pod_ip: Some(std::net::IpAddr::V4(p.ip)),
            host_ip: Some(node_ip),
            host_network: false,
            qos_class: "BestEffort",
            containers: &[(&p.container, &p.container_id)],
        }));
        Ok(index)
    }

    pub fn pod(&self, index: usize) -> &SimPod {
        &self.pods[index]
    }

    /// The node-side interfaces of every live pod (in the node's network namespace).
    pub fn pod_interfaces(&self) -> Vec<&str> {
        self.pods
            .iter()
            .filter(|p| !p.netns.is_empty())
            .map(SimPod::host_interface)
            .collect()
    }

    /// The directory of a pod's container cgroup in the cgroup v2 hierarchy (the one whose ids
    /// the kernel's programs report).
    pub fn container_cgroup_v2(&self, index: usize) -> PathBuf {
        self.hierarchies[0].join(&self.pods[index].container_cgroup)
    }

    /// Pods of this node that exist (added and not deleted).
    pub fn live_pods(&self) -> u64 {
        self.pods.iter().filter(|p| !p.netns.is_empty()).count() as u64
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

    fn net_owned(&self) -> OwnedNet {
        OwnedNet {
            node_netns: self.node_netns.clone(),
            cgroup_base: self.cgroup_base.clone(),
            driver: self.driver,
            hierarchies: self.hierarchies.clone(),
        }
    }

    fn command(&self, index: usize, args: &[&str]) -> anyhow::Result<Command> {
        self.command_of(index, &self.workload, args)
    }

    fn command_of(&self, index: usize, program: &Path, args: &[&str]) -> anyhow::Result<Command> {
        let pod = &self.pods[index];
        ensure!(!pod.netns.is_empty(), "pod was deleted");
        let netns =
            fs::File::open(format!("/run/netns/{}", pod.netns)).context("opening pod netns")?;
        let mut procs = Vec::new();
        for root in &self.hierarchies {
            let path = root.join(&pod.container_cgroup).join("cgroup.procs");
            procs.push(
                fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .with_context(|| format!("opening {}", path.display()))?,
            );
        }
        let resolv = pod.resolv_conf.clone();
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null());
        // SAFETY: only async-signal-safe calls (write, setns, unshare, mount) on fds and
        // strings made before fork.
        unsafe {
            cmd.pre_exec(move || {
                // Join the container's cgroups first, then its network namespace ("0" = self).
                for f in &procs {
                    if libc::write(f.as_raw_fd(), c"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(resolv) = &resolv {
                    // The pod's own resolv.conf in a mount namespace of its own.
                    if libc::unshare(libc::CLONE_NEWNS) != 0
                        || libc::mount(
                            std::ptr::null(),
                            c"/".as_ptr(),
                            std::ptr::null(),
                            libc::MS_REC | libc::MS_PRIVATE,
                            std::ptr::null(),
                        ) != 0
                        || libc::mount(
                            resolv.as_ptr(),
                            c"/etc/resolv.conf".as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND,
                            std::ptr::null(),
                        ) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

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

    /// kubelet's cgroup root of this node (the parent of `kubepods`), for `--kubelet-cgroup-root`.
    pub fn cgroup_base(&self) -> &Path {
        &self.cgroup_base
    }

    /// Writes a cgroup file of a pod's container in every hierarchy that has it (e.g.
    /// `memory.limit_in_bytes` on v1, `memory.max` on v2); fails when none has it.
    pub fn cgroup_write(&self, index: usize, file: &str, value: &str) -> anyhow::Result<()> {
        let pod = &self.pods[index];
        let mut written = 0;
        for root in &self.hierarchies {
            let path = root.join(&pod.container_cgroup).join(file);
            if path.exists() {
                fs::write(&path, value).with_context(|| format!("writing {}", path.display()))?;
                written += 1;
            }
        }
        ensure!(written > 0, "no hierarchy has {file}");
        Ok(())
    }

    /// Limits the memory of a pod's container: v2 `memory.max` and v1
    /// `memory.limit_in_bytes`, whichever exist. Returns the files written.
    pub fn set_memory_limit(&self, index: usize, bytes: u64) -> anyhow::Result<Vec<PathBuf>> {
        let value = bytes.to_string();
        self.write_limit(
            index,
            &[("memory.max", &value), ("memory.limit_in_bytes", &value)],
        )
    }

    /// Limits the CPU of a pod's container to `quota_us` per `period_us`: v2 `cpu.max`, v1
    /// `cpu.cfs_period_us` and `cpu.cfs_quota_us`, whichever exist. Returns the files written.
    pub fn set_cpu_quota(
        &self,
        index: usize,
        quota_us: u64,
        period_us: u64,
    ) -> anyhow::Result<Vec<PathBuf>> {
        let (quota, period) = (quota_us.to_string(), period_us.to_string());
        let max = format!("{quota} {period}");
        self.write_limit(
            index,
            &[
                ("cpu.max", &max),
                // The period first: a quota is checked against the period in place.
                ("cpu.cfs_period_us", &period),
                ("cpu.cfs_quota_us", &quota),
            ],
        )
    }

    /// Writes each `(file, value)` that exists in the container's cgroup of any hierarchy, in
    /// order; fails when none exists (the controller is enabled nowhere for this cgroup).
    fn write_limit(&self, index: usize, files: &[(&str, &str)]) -> anyhow::Result<Vec<PathBuf>> {
        let pod = &self.pods[index];
        ensure!(!pod.netns.is_empty(), "pod was deleted");
        let written = cgroup::write_existing(&self.hierarchies, &pod.container_cgroup, files)?;
        ensure!(
            !written.is_empty(),
            "no cgroup of {}/{} has any of {} (controller not enabled for it)",
            pod.namespace,
            pod.name,
            files.iter().map(|(f, _)| *f).collect::<Vec<_>>().join(", ")
        );
        Ok(written)
    }

    /// Starts another program (iperf3, ...) in a pod's container, owned by the pod.
    pub fn start_program(
        &mut self,
        index: usize,
        program: &Path,
        args: &[&str],
    ) -> anyhow::Result<()> {
        let child = self
            .command_of(index, program, args)?
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        self.pods[index].children.push(child);
        Ok(())
    }

    /// Starts another program in a pod's container with its output piped, owned by the caller.
    pub fn spawn_program_piped(
        &self,
        index: usize,
        program: &Path,
        args: &[&str],
    ) -> anyhow::Result<Child> {
        self.command_of(index, program, args)?
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", program.display()))
    }

    /// Runs another program in a pod's container to completion.
    pub fn run_program(
        &self,
        index: usize,
        program: &Path,
        args: &[&str],
    ) -> anyhow::Result<Output> {
        let out = self
            .command_of(index, program, args)?
            .output()
            .with_context(|| format!("running {}", program.display()))?;
        if !out.status.success() {
            bail!(
                "{} {args:?} in pod failed: {}",
                program.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }

    /// Starts a process in a pod's container (kept until the pod goes).
    pub fn spawn(&self, index: usize, args: &[&str]) -> anyhow::Result<Child> {
        self.command(index, args)?
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting pod process")
    }

    /// Like [`SimNode::spawn`], with its output piped (for `wait_with_output`).
    pub fn spawn_piped(&self, index: usize, args: &[&str]) -> anyhow::Result<Child> {
        self.command(index, args)?
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting pod process")
    }

    /// Starts a long-running process in a pod, owned by the pod.
    pub fn start_process(&mut self, index: usize, args: &[&str]) -> anyhow::Result<()> {
        let child = self.spawn(index, args)?;
        self.pods[index].children.push(child);
        Ok(())
    }

    /// Runs a process in a pod's container to completion.
    pub fn run(&self, index: usize, args: &[&str]) -> anyhow::Result<Output> {
        let out = self
            .command(index, args)?
            .output()
            .context("running pod process")?;
        if !out.status.success() {
            bail!(
                "{args:?} in pod failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }
}

struct OwnedNet {
    node_netns: String,
    cgroup_base: PathBuf,
    driver: CgroupDriver,
    hierarchies: Vec<PathBuf>,
}

impl OwnedNet {
    fn as_net(&self) -> NodeNet<'_> {
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

impl SimPod {
    /// The node side of the pod's veth pair (in the node's network namespace), where a capture
    /// on "the pod's interface" runs.
    pub fn host_interface(&self) -> &str {
        &self.veth
    }

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

impl Drop for SimNode {
    fn drop(&mut self) {
        let net = self.net_owned();
        for mut pod in std::mem::take(&mut self.pods) {
            if !pod.netns.is_empty() {
                self.backend.remove(&net.as_net(), &mut pod);
            }
        }
        let _ = sh("ip", &["netns", "del", &self.node_netns]);
        for root in &self.hierarchies {
            cgroup::remove_cgroup_tree(&root.join(&self.cgroup_base));
        }
    }
}

/// Writes a line to stderr for test logs.
pub fn note(msg: &str) {
    let _ = writeln!(std::io::stderr(), "[sim] {msg}");
}
