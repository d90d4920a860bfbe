//! The running kernel's layouts the programs read through: tracepoint record offsets from
//! tracefs `format` files and struct member offsets from BTF, found by the loader and handed to
//! the programs as one read-only global.

use core::mem::size_of;

/// Field offsets of a tracepoint record, read from tracefs `format` at load time.
/// `u32::MAX` marks a field this kernel does not have.
pub const ABSENT: u32 = u32::MAX;

/// Layout of `tcp:tcp_send_reset` on this kernel.
pub mod send_reset_layout {
    /// Tracepoint missing or layout not understood: the program does nothing.
    pub const UNSUPPORTED: u32 = 0;
    /// Since Linux 6.10: `saddr`/`daddr` are `struct sockaddr_in6`-sized buffers filled from the
    /// socket or, when there is none, from the packet.
    pub const SOCKADDR: u32 = 1;
}

/// Member offsets for the OOM victim program (BTF), and enumerator values it needs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OomOffsets {
    /// `task_struct.{pid, tgid, comm, real_parent, cgroups, signal, mm}`.
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_comm: u32,
    pub task_real_parent: u32,
    pub task_cgroups: u32,
    pub task_signal: u32,
    pub task_mm: u32,
    /// `css_set.dfl_cgrp` (the cgroup2 cgroup) and `css_set.subsys` (array of css pointers).
    pub css_set_dfl_cgrp: u32,
    pub css_set_subsys: u32,
    /// `enum cgroup_subsys_id` value of the memory controller.
    pub memory_cgrp_id: u32,
    /// `mem_cgroup.memory` (a page_counter; the css is mem_cgroup's first member) and
    /// `mem_cgroup.oom_group`.
    pub memcg_memory: u32,
    pub memcg_oom_group: u32,
    /// `page_counter.{usage, max, parent}`.
    pub page_counter_usage: u32,
    pub page_counter_max: u32,
    pub page_counter_parent: u32,
    /// `signal_struct.oom_score_adj` (short).
    pub signal_oom_score_adj: u32,
    /// `mm_struct.rss_stat` (array of percpu_counter), `percpu_counter.count` (s64) and
    /// `sizeof(struct percpu_counter)`.
    pub mm_rss_stat: u32,
    pub percpu_counter_count: u32,
    pub percpu_counter_size: u32,
    /// Indices in rss_stat: MM_FILEPAGES, MM_ANONPAGES, MM_SHMEMPAGES.
    pub rss_file: u32,
    pub rss_anon: u32,
    pub rss_shmem: u32,
}

/// `skb:kfree_skb` record offsets (tracefs `format`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KfreeSkbOffsets {
    pub skbaddr: u32,
    pub protocol: u32,
    pub reason: u32,
    /// This kernel's value of `SKB_DROP_REASON_NO_SOCKET` (BTF), [`ABSENT`] when unknown.
    pub no_socket: u32,
}

/// Member offsets of `struct sock` and what hangs off it (BTF).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockOffsets {
    /// `sock.sk_err`: the errno a failed connect() ends with.
    pub sk_err: u32,
    /// `sock.sk_err_soft`: an ICMP error that arrived while the socket was busy (the
    /// application may give up before the kernel makes it `sk_err`).
    pub sk_err_soft: u32,
    /// `sock.__sk_common.skc_state` (u8): full sockets only have their cgroup read.
    pub state: u32,
    /// `sock.sk_cgrp_data.cgroup`, `cgroup.kn`, `kernfs_node.id`: the socket's cgroup2 id.
    pub cgroup: u32,
    pub cgroup_kn: u32,
    pub kn_id: u32,
    /// `sock.sk_protocol` (u16).
    pub protocol: u32,
    /// `sock.__sk_common.*`: family (u16), remote port (skc_dport, network order), IPv4
    /// addresses, IPv6 addresses; and `inet_sock.inet_sport` (network order; `struct sock` is
    /// the first member of `struct inet_sock`), which unlike skc_num survives the port's
    /// release when the socket closes.
    pub family: u32,
    pub sport: u32,
    pub dport: u32,
    pub rcv_saddr: u32,
    pub daddr: u32,
    pub v6_rcv_saddr: u32,
    pub v6_daddr: u32,
}

/// `tcp:tcp_send_reset` record offsets (tracefs `format`) and which layout this kernel has.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendResetOffsets {
    /// One of [`send_reset_layout`].
    pub layout: u32,
    pub skbaddr: u32,
    pub skaddr: u32,
    pub reason: u32,
    pub saddr: u32,
    pub daddr: u32,
}

/// Member offsets of `struct sk_buff` and `struct net_device` (BTF).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkbOffsets {
    pub data: u32,
    pub head: u32,
    pub network_header: u32,
    pub transport_header: u32,
    pub sk: u32,
    pub dev: u32,
    /// `net_device.ifindex`.
    pub dev_ifindex: u32,
    /// `sk_buff.protocol` (__be16, the ETH_P_* of the packet).
    pub protocol: u32,
}

/// Where a dropped packet came from: its input interface, that interface's veth peer and the
/// peer's network namespace; and a socket's network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IngressOffsets {
    /// `sk_buff.skb_iif`: the ifindex the packet was last received on.
    pub skb_iif: u32,
    /// `net_device.nd_net` (its first word is the `struct net *`).
    pub dev_net: u32,
    /// `net_device.rtnl_link_ops`, and `rtnl_link_ops.kind` (a `const char *`).
    pub dev_link_ops: u32,
    pub link_ops_kind: u32,
    /// `net_device.index_hlist`: a device's node in its namespace's ifindex hash.
    pub dev_index_hlist: u32,
    /// Where a device's private data starts (`netdev_priv`): a veth's first word is its peer.
    pub dev_priv: u32,
    /// `net.dev_index_head` (an array of 256 `hlist_head`) and `net.ns.inum`.
    pub net_index_head: u32,
    pub net_inum: u32,
    /// `sock.__sk_common.skc_net` (its first word is the `struct net *`).
    pub sock_net: u32,
}

/// The running kernel's layouts, one typed struct per hook family, handed to the programs as a
/// read-only global so the verifier sees them as constants. Tracepoint record offsets come from
/// tracefs `format` files; struct member offsets from /sys/kernel/btf/vmlinux.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    pub send_reset: SendResetOffsets,
    pub kfree_skb: KfreeSkbOffsets,
    pub sock: SockOffsets,
    pub skb: SkbOffsets,
    pub oom: OomOffsets,
    pub ingress: IngressOffsets,
}
const _: () = assert!(size_of::<Offsets>() == 252);

impl Offsets {
    /// Every offset absent: the programs attach but do nothing until real offsets are set.
    pub const ABSENT: Self = Self {
        send_reset: SendResetOffsets {
            layout: send_reset_layout::UNSUPPORTED,
            skbaddr: ABSENT,
            skaddr: ABSENT,
            reason: ABSENT,
            saddr: ABSENT,
            daddr: ABSENT,
        },
        kfree_skb: KfreeSkbOffsets {
            skbaddr: ABSENT,
            protocol: ABSENT,
            reason: ABSENT,
            no_socket: ABSENT,
        },
        sock: SockOffsets {
            sk_err: ABSENT,
            sk_err_soft: ABSENT,
            state: ABSENT,
            cgroup: ABSENT,
            cgroup_kn: ABSENT,
            kn_id: ABSENT,
            protocol: ABSENT,
            family: ABSENT,
            sport: ABSENT,
            dport: ABSENT,
            rcv_saddr: ABSENT,
            daddr: ABSENT,
            v6_rcv_saddr: ABSENT,
            v6_daddr: ABSENT,
        },
        skb: SkbOffsets {
            data: ABSENT,
            head: ABSENT,
            network_header: ABSENT,
            transport_header: ABSENT,
            sk: ABSENT,
            dev: ABSENT,
            dev_ifindex: ABSENT,
            protocol: ABSENT,
        },
        oom: OomOffsets {
            task_pid: ABSENT,
            task_tgid: ABSENT,
            task_comm: ABSENT,
            task_real_parent: ABSENT,
            task_cgroups: ABSENT,
            task_signal: ABSENT,
            task_mm: ABSENT,
            css_set_dfl_cgrp: ABSENT,
            css_set_subsys: ABSENT,
            memory_cgrp_id: ABSENT,
            memcg_memory: ABSENT,
            memcg_oom_group: ABSENT,
            page_counter_usage: ABSENT,
            page_counter_max: ABSENT,
            page_counter_parent: ABSENT,
            signal_oom_score_adj: ABSENT,
            mm_rss_stat: ABSENT,
            percpu_counter_count: ABSENT,
            percpu_counter_size: ABSENT,
            rss_file: ABSENT,
            rss_anon: ABSENT,
            rss_shmem: ABSENT,
        },
        ingress: IngressOffsets {
            skb_iif: ABSENT,
            dev_net: ABSENT,
            dev_link_ops: ABSENT,
            link_ops_kind: ABSENT,
            dev_index_hlist: ABSENT,
            dev_priv: ABSENT,
            net_index_head: ABSENT,
            net_inum: ABSENT,
            sock_net: ABSENT,
        },
    };
}
