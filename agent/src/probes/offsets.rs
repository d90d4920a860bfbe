//! This kernel's layouts for the programs, one function per hook family: tracepoint record
//! offsets from tracefs `format` files, struct member offsets from BTF. A family that cannot be
//! understood leaves its offsets absent and says why; its programs are reported not attached.

use std::{collections::HashMap, path::Path};

use triage_agent_common::{
    ABSENT, IngressOffsets, KfreeSkbOffsets, Offsets, OomOffsets, SendResetOffsets, SkbOffsets,
    SockOffsets, send_reset_layout,
};

use crate::kernel::{
    btf::Btf,
    tracefs::{Format, TracefsError},
};

/// Why a program cannot run on this kernel, by program name.
pub type Problems = HashMap<&'static str, String>;

/// Layouts of this kernel, with a note for every program whose layout was not understood.
pub fn kernel_offsets(tracefs: &Path, btf: Option<&Btf>) -> (Offsets, Problems) {
    let mut o = Offsets::ABSENT;
    let mut problems = Problems::new();
    if let Some(btf) = btf {
        o.skb = skb(btf);
        o.sock = sock(btf);
        o.ingress = ingress(btf);
    }
    // The raw tracepoints read the socket itself (their arguments are the socket and states).
    let s = &o.sock;
    if [
        s.protocol,
        s.family,
        s.sport,
        s.dport,
        s.rcv_saddr,
        s.daddr,
        s.v6_rcv_saddr,
        s.v6_daddr,
    ]
    .contains(&ABSENT)
    {
        for program in ["inet_sock_set_state", "tcp_receive_reset"] {
            problems.insert(
                program,
                "kernel BTF lacks the struct sock fields the program reads".to_owned(),
            );
        }
    }
    match send_reset(tracefs, btf, &o.skb) {
        Ok(send) => o.send_reset = send,
        Err(e) => {
            problems.insert("tcp_send_reset", e);
        }
    }
    match kfree_skb(tracefs, btf, &o.skb) {
        Ok(v) => o.kfree_skb = v,
        Err(e) => {
            problems.insert("kfree_skb", e);
        }
    }
    match oom(tracefs, btf, &o.sock) {
        Ok(v) => o.oom = v,
        Err(e) => {
            problems.insert("mark_victim", e);
        }
    }
    (o, problems)
}

/// The raw tracepoint `mark_victim` passes the victim's task since the tracepoint gained its
/// process fields (Linux 6.8; before, it passed only a pid): the tracefs format tells which.
/// Everything else is read from the task through BTF offsets.
fn oom(tracefs: &Path, btf: Option<&Btf>, sock: &SockOffsets) -> Result<OomOffsets, String> {
    let f = Format::read(tracefs, "oom", "mark_victim").map_err(|e| e.to_string())?;
    if f.size("uid").is_none() || f.size("anon_rss").is_none() {
        return Err(
            "this kernel's oom:mark_victim passes only a pid (before Linux 6.8): OOM kills come \
             from the cgroup counters alone, without the victim's name"
                .to_owned(),
        );
    }
    let btf = btf.ok_or("kernel BTF unavailable: cannot read the victim's task")?;
    if [sock.cgroup_kn, sock.kn_id].contains(&ABSENT) {
        return Err("BTF: cgroup.kn or kernfs_node.id missing".to_owned());
    }
    let required = |strukt: &str, path: &str| {
        btf.member_offset(strukt, path)
            .map_err(|e| format!("BTF: {strukt}.{path}: {e}"))
    };
    let enumerator = |name: &str| {
        btf.enumerator(name)
            .ok()
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(ABSENT)
    };
    Ok(OomOffsets {
        task_pid: required("task_struct", "pid")?,
        task_tgid: required("task_struct", "tgid")?,
        task_comm: required("task_struct", "comm")?,
        task_real_parent: required("task_struct", "real_parent")?,
        task_cgroups: required("task_struct", "cgroups")?,
        task_signal: member(btf, "task_struct", "signal"),
        task_mm: member(btf, "task_struct", "mm"),
        css_set_dfl_cgrp: required("css_set", "dfl_cgrp")?,
        // Optional: without them the record lacks the limit, usage, rss or score.
        css_set_subsys: member(btf, "css_set", "subsys"),
        memory_cgrp_id: enumerator("memory_cgrp_id"),
        memcg_memory: member(btf, "mem_cgroup", "memory"),
        memcg_oom_group: member(btf, "mem_cgroup", "oom_group"),
        page_counter_usage: member(btf, "page_counter", "usage"),
        page_counter_max: member(btf, "page_counter", "max"),
        page_counter_parent: member(btf, "page_counter", "parent"),
        signal_oom_score_adj: member(btf, "signal_struct", "oom_score_adj"),
        mm_rss_stat: member(btf, "mm_struct", "rss_stat"),
        percpu_counter_count: member(btf, "percpu_counter", "count"),
        percpu_counter_size: btf.struct_size("percpu_counter").unwrap_or(ABSENT),
        rss_file: enumerator("MM_FILEPAGES"),
        rss_anon: enumerator("MM_ANONPAGES"),
        rss_shmem: enumerator("MM_SHMEMPAGES"),
    })
}

/// A struct member's offset, [`ABSENT`] when this kernel does not have it.
fn member(btf: &Btf, strukt: &str, path: &str) -> u32 {
    btf.member_offset(strukt, path).unwrap_or(ABSENT)
}

fn skb(btf: &Btf) -> SkbOffsets {
    SkbOffsets {
        data: member(btf, "sk_buff", "data"),
        head: member(btf, "sk_buff", "head"),
        network_header: member(btf, "sk_buff", "network_header"),
        transport_header: member(btf, "sk_buff", "transport_header"),
        sk: member(btf, "sk_buff", "sk"),
        dev: member(btf, "sk_buff", "dev"),
        dev_ifindex: member(btf, "net_device", "ifindex"),
        protocol: member(btf, "sk_buff", "protocol"),
    }
}

/// Where a dropped packet came from (see agent-ebpf/src/drop.rs). Any member missing leaves the
/// whole set absent: drops are then attributed to their sender by source address, unverified.
fn ingress(btf: &Btf) -> IngressOffsets {
    // `netdev_priv()`: the `priv` member where the kernel declares one (6.x), else the struct's
    // size aligned to NETDEV_ALIGN (32).
    let dev_priv = btf.member_offset("net_device", "priv").ok().or_else(|| {
        btf.struct_size("net_device")
            .ok()
            .map(|size| size.div_ceil(32) * 32)
    });
    let o = IngressOffsets {
        skb_iif: member(btf, "sk_buff", "skb_iif"),
        dev_net: member(btf, "net_device", "nd_net"),
        dev_link_ops: member(btf, "net_device", "rtnl_link_ops"),
        link_ops_kind: member(btf, "rtnl_link_ops", "kind"),
        dev_index_hlist: member(btf, "net_device", "index_hlist"),
        dev_priv: dev_priv.unwrap_or(ABSENT),
        net_index_head: member(btf, "net", "dev_index_head"),
        net_inum: member(btf, "net", "ns.inum"),
        sock_net: member(btf, "sock", "__sk_common.skc_net"),
    };
    let all = [
        o.skb_iif,
        o.dev_net,
        o.dev_link_ops,
        o.link_ops_kind,
        o.dev_index_hlist,
        o.dev_priv,
        o.net_index_head,
        o.net_inum,
        o.sock_net,
    ];
    if all.contains(&ABSENT) {
        Offsets::ABSENT.ingress
    } else {
        o
    }
}

fn sock(btf: &Btf) -> SockOffsets {
    SockOffsets {
        sk_err: member(btf, "sock", "sk_err"),
        sk_err_soft: member(btf, "sock", "sk_err_soft"),
        state: member(btf, "sock", "__sk_common.skc_state"),
        cgroup: member(btf, "sock", "sk_cgrp_data.cgroup"),
        cgroup_kn: member(btf, "cgroup", "kn"),
        kn_id: member(btf, "kernfs_node", "id"),
        protocol: member(btf, "sock", "sk_protocol"),
        family: member(btf, "sock", "__sk_common.skc_family"),
        sport: member(btf, "inet_sock", "inet_sport"),
        dport: member(btf, "sock", "__sk_common.skc_dport"),
        rcv_saddr: member(btf, "sock", "__sk_common.skc_rcv_saddr"),
        daddr: member(btf, "sock", "__sk_common.skc_daddr"),
        v6_rcv_saddr: member(btf, "sock", "__sk_common.skc_v6_rcv_saddr"),
        v6_daddr: member(btf, "sock", "__sk_common.skc_v6_daddr"),
    }
}

/// Why drops carry no reason on a kernel whose kfree_skb has none.
pub const NO_DROP_REASON: &str = "this kernel's kfree_skb has no drop reason (added in Linux 5.17)";

/// What drop evidence loses without the kernel's reason.
pub const DROPS_WITHOUT_REASON: &str = "drops carry the kernel function that freed the packet \
     (`location`, when the kernel shows the agent its symbols) instead of the kernel's reason \
     (reason UNKNOWN), --drop-reasons selects nothing, and packets freed for other causes (a \
     socket closed with unread data, ...) count as drops too";

fn kfree_skb(
    tracefs: &Path,
    btf: Option<&Btf>,
    skb: &SkbOffsets,
) -> Result<KfreeSkbOffsets, String> {
    let f = Format::read(tracefs, "skb", "kfree_skb").map_err(|e| e.to_string())?;
    let t = "skb:kfree_skb";
    // Without a reason (before Linux 5.17) the program records where the kernel dropped the
    // packet instead: the loader reports the signal degraded (see [`NO_DROP_REASON`]).
    let reason = f.offset(t, "reason", Some(4)).unwrap_or(ABSENT);
    let btf = btf.ok_or("kernel BTF unavailable: cannot read packet headers")?;
    if [skb.head, skb.network_header, skb.transport_header].contains(&ABSENT) {
        return Err("BTF: struct sk_buff has no head/network_header/transport_header".to_owned());
    }
    let no_socket = drop_reason_values(btf)
        .into_iter()
        .find(|(name, _)| name == "NO_SOCKET")
        .map_or(ABSENT, |(_, v)| v);
    Ok(KfreeSkbOffsets {
        skbaddr: f.offset(t, "skbaddr", Some(8)).map_err(|e| e.to_string())?,
        protocol: f
            .offset(t, "protocol", Some(2))
            .map_err(|e| e.to_string())?,
        reason,
        no_socket,
    })
}

/// `enum skb_drop_reason` of this kernel: (name without the prefix, value).
pub fn drop_reason_values(btf: &Btf) -> Vec<(String, u32)> {
    btf.enum_values("skb_drop_reason")
        .map(|values| {
            values
                .into_iter()
                .filter_map(|(name, value)| {
                    Some((
                        name.strip_prefix("SKB_DROP_REASON_")
                            .unwrap_or(&name)
                            .to_owned(),
                        u32::try_from(value).ok()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn send_reset(
    tracefs: &Path,
    btf: Option<&Btf>,
    skb: &SkbOffsets,
) -> Result<SendResetOffsets, String> {
    let f = Format::read(tracefs, "tcp", "tcp_send_reset").map_err(|e| e.to_string())?;
    if f.size("saddr") != Some(28) {
        return Err(
            "this kernel's tcp_send_reset has no packet addresses (added in Linux 6.10)".to_owned(),
        );
    }
    btf.ok_or("kernel BTF unavailable: cannot read TCP flags")?;
    if skb.data == ABSENT {
        return Err("BTF: struct sk_buff has no member data".to_owned());
    }
    let t = "tcp:tcp_send_reset";
    let send = (|| {
        Ok::<_, TracefsError>(SendResetOffsets {
            layout: send_reset_layout::SOCKADDR,
            skbaddr: f.offset(t, "skbaddr", Some(8))?,
            skaddr: f.offset(t, "skaddr", Some(8))?,
            reason: f.offset(t, "reason", Some(4)).unwrap_or(ABSENT),
            saddr: f.offset(t, "saddr", Some(28))?,
            daddr: f.offset(t, "daddr", Some(28))?,
        })
    })()
    .map_err(|e| e.to_string())?;
    Ok(send)
}

/// Names of `enum sk_rst_reason` values on this kernel, without the common prefix.
pub fn reset_reason_names(btf: Option<&Btf>) -> HashMap<u32, String> {
    let Some(Ok(values)) = btf.map(|b| b.enum_values("sk_rst_reason")) else {
        return HashMap::new();
    };
    values
        .into_iter()
        .filter_map(|(name, value)| {
            let v = u32::try_from(value).ok()?;
            Some((
                v,
                name.strip_prefix("SK_RST_REASON_")
                    .unwrap_or(&name)
                    .to_owned(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{btf::Lookup, tracefs};

    /// The running kernel's BTF and tracefs (there on every machine this project builds on).
    fn this_kernel() -> (Btf, std::path::PathBuf) {
        let btf = Btf::vmlinux().expect("kernel BTF at /sys/kernel/btf/vmlinux");
        let tracefs = tracefs::find_mounted()
            .or_else(|| tracefs::ensure_mounted().ok())
            .expect("tracefs (run as root)");
        (btf, tracefs)
    }

    /// The kernel's BTF bytes for btfparse.
    struct Bytes(Vec<u8>);

    impl btfparse::Readable for Bytes {
        fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
            let eof = || btfparse::Error::new(btfparse::ErrorKind::EOF, "past the end");
            let start = usize::try_from(offset).map_err(|_| eof())?;
            let end = start.checked_add(buffer.len()).ok_or_else(eof)?;
            buffer.copy_from_slice(self.0.get(start..end).ok_or_else(eof)?);
            Ok(())
        }
    }

    /// The hand-written BTF reader against a second, independent one (btfparse, Apache-2.0):
    /// every layout the loader asks of the running kernel's BTF (member offsets, struct sizes)
    /// gets the same answer from both, absent members included.
    #[test]
    fn the_btf_reader_agrees_with_btfparse_on_every_layout_the_loader_reads() {
        let (btf, tracefs) = this_kernel();
        let _ = kernel_offsets(&tracefs, Some(&btf));
        let asked = btf.asked();
        assert!(asked.len() >= 40, "the loader asked only {asked:?}");
        let bytes = std::fs::read(crate::kernel::btf::VMLINUX_BTF).unwrap();
        let theirs = btfparse::TypeInformation::new(&Bytes(bytes)).expect("btfparse reads it");
        let mut disagreements = Vec::new();
        let mut compared = 0;
        for lookup in &asked {
            let (ours, other) = match lookup {
                Lookup::Member(strukt, path) => (
                    btf.member_offset(strukt, path).ok(),
                    theirs
                        .id_of(strukt)
                        .and_then(|id| theirs.offset_of(id, path).ok())
                        .and_then(|(_, offset)| match offset {
                            btfparse::Offset::ByteOffset(n) => Some(n),
                            // A bitfield: ours refuses it too.
                            btfparse::Offset::BitOffsetAndSize(..) => None,
                        }),
                ),
                Lookup::Size(strukt) => (
                    btf.struct_size(strukt).ok(),
                    theirs
                        .id_of(strukt)
                        .and_then(|id| theirs.size_of(id).ok())
                        .and_then(|n| u32::try_from(n).ok()),
                ),
            };
            compared += 1;
            if ours != other {
                disagreements.push(format!("{lookup:?}: ours {ours:?}, btfparse {other:?}"));
            }
        }
        assert!(
            disagreements.is_empty(),
            "{} of {compared} layouts differ:\n{}",
            disagreements.len(),
            disagreements.join("\n")
        );
    }

    /// On the running kernel (BTF and tracefs are there on every machine this project builds
    /// on), every offset a program reads resolves and no program has a problem.
    #[test]
    fn every_offset_resolves_on_this_kernel() {
        let (btf, tracefs) = this_kernel();
        let (o, problems) = kernel_offsets(&tracefs, Some(&btf));
        assert!(problems.is_empty(), "{problems:?}");
        let all = [
            o.sock.sk_err,
            o.sock.sk_err_soft,
            o.sock.protocol,
            o.sock.v6_daddr,
            o.sock.state,
            o.sock.cgroup,
            o.sock.cgroup_kn,
            o.sock.kn_id,
            o.skb.head,
            o.skb.network_header,
            o.skb.transport_header,
            o.skb.sk,
            o.skb.dev,
            o.skb.dev_ifindex,
            o.skb.protocol,
            o.kfree_skb.no_socket,
            o.oom.task_pid,
            o.oom.css_set_dfl_cgrp,
            o.oom.css_set_subsys,
            o.oom.memory_cgrp_id,
            o.oom.memcg_memory,
            o.oom.memcg_oom_group,
            o.oom.page_counter_usage,
            o.oom.page_counter_max,
            o.oom.page_counter_parent,
            o.oom.signal_oom_score_adj,
            o.oom.mm_rss_stat,
            o.oom.percpu_counter_count,
            o.oom.percpu_counter_size,
            o.oom.rss_file,
            o.oom.rss_anon,
            o.oom.rss_shmem,
        ];
        assert!(!all.contains(&ABSENT), "{o:#?}");
        assert!(
            drop_reason_values(&btf)
                .iter()
                .any(|(n, _)| n == "NETFILTER_DROP")
        );
    }
}
