//! Flows (refusals, drops, timeouts) and OOM victims, as decoded from the kernel's records.

use std::net::SocketAddr;

/// A process the OOM killer chose, read from the victim's task in the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OomVictim {
    pub boot_ns: u64,
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
    pub uid: u32,
    /// The victim's cgroup v2 id.
    pub cgroup_id: Option<u64>,
    /// Whether its parent process is outside its cgroup (it is the container's first process).
    pub main_process: Option<bool>,
    pub memcg_usage_bytes: Option<u64>,
    /// The tightest limit of the memory cgroup and its ancestors; `None` when unlimited.
    pub memcg_limit_bytes: Option<u64>,
    pub rss_bytes: Option<u64>,
    pub oom_score_adj: i16,
    /// `mem_cgroup.oom_group` (meaningful on cgroup v2 only).
    pub oom_group: Option<bool>,
}

/// Which hot signal a flow is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowKind {
    /// A local connect() was refused (by RST, or by ICMP with `icmp_errno`).
    ConnectRefused,
    /// A local port with no listener answered a SYN with RST.
    SynRefused,
    /// The kernel dropped a packet (`reason`).
    PacketDrop,
    /// A local connect() ended without any answer.
    ConnectTimeout,
}

/// The process that called connect().
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskInfo {
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
}

/// Occurrences of one flow: `src` sent the packet or SYN, `dst` was its destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    pub kind: FlowKind,
    pub count: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    /// The source port is the latest occurrence's.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// IP protocol number.
    pub protocol: u8,
    /// TCP flags of a dropped segment.
    pub tcp_flags: u8,
    /// Raw kernel enum value (`sk_rst_reason`, `skb_drop_reason`).
    pub reason: Option<u32>,
    /// The errno of a connect() refused by ICMP.
    pub icmp_errno: Option<u32>,
    /// cgroup v2 id of the process (connects) or sending socket (drops).
    pub cgroup_id: Option<u64>,
    pub task: Option<TaskInfo>,
    /// A dropped packet with no local socket: the network namespace it truly came from (the
    /// far end of the veth it entered through), whatever its source address says.
    pub ingress_netns: Option<u32>,
    /// The socket cgroups the kernel has seen in `ingress_netns` (filled by the reader): who may
    /// have sent it.
    pub ingress_cgroups: Vec<u64>,
    pub syn_retransmits: u32,
    /// Where the kernel freed a dropped packet, on kernels without drop reasons (an address in
    /// kernel text).
    pub location: Option<u64>,
}
