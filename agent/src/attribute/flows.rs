//! From flows to occurrences: which pod each end of a failed connection or a dropped packet
//! is, and what the record says (kind, direction, peer, cause, reason names).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use triage_agent_common::{IPPROTO_TCP, TCP_ACK, TCP_SYN, errno};

use super::{Attributor, CgroupLookup, Clues, Now};
use crate::{
    event::{Flow, FlowKind, TimedEvent},
    evidence::{
        Attribution, Cause, Connection, Detail, Direction, Drop, Occurrence, PodRef, Process,
        Protocol, Subject,
    },
    kernel::kallsyms::Symbols,
};

/// Whose network namespace a dropped packet came from (see [`Attributor::pod_netns`]).
enum NetnsOwner {
    /// One pod's: one of its socket cgroups, and whether it is the only container seen there.
    Pod {
        cgroup: u64,
        one_container: bool,
    },
    NotOnePod,
    Wait,
}

impl Attributor {
    /// A refused, timed-out or dropped flow; `None`: wait for metadata.
    pub(super) fn flow(
        &mut self,
        event: &TimedEvent,
        f: &Flow,
        now: Now,
        last_chance: bool,
    ) -> Option<Vec<Occurrence>> {
        let occurrence = |subject, detail| Occurrence {
            at: event.at,
            first_at: event.first_at.min(event.at),
            count: f.count,
            subject,
            detail,
        };
        match f.kind {
            FlowKind::ConnectRefused | FlowKind::ConnectTimeout => {
                let clues = Clues {
                    cgroup: f.cgroup_id,
                    ip: Some(f.src.ip()),
                };
                let process = f.task.as_ref().map(|t| Process {
                    pid: t.tgid,
                    comm: self.strings.get(&t.comm),
                });
                let subject = self.subject(clues, process, event.at, now, last_chance)?;
                let peer = self.peer(f.dst.ip(), event.at);
                let detail = if f.kind == FlowKind::ConnectTimeout {
                    Detail::ConnectionTimeout(Connection {
                        direction: Direction::Outbound,
                        src: f.src,
                        dst: f.dst,
                        protocol: Protocol::Tcp,
                        // ETIMEDOUT: the kernel gave up; none: the application did first.
                        reason: f
                            .reason
                            .filter(|e| *e != 0)
                            .map(|e| self.strings.get(&errno_name(e))),
                        peer,
                        cause: None,
                        syn_retransmits: f.syn_retransmits,
                    })
                } else {
                    let (cause, reason) = self.refusal_cause(f, peer.is_some(), now);
                    Detail::ConnectionRefused(Connection {
                        direction: Direction::Outbound,
                        src: f.src,
                        dst: f.dst,
                        protocol: Protocol::Tcp,
                        reason,
                        peer,
                        cause: Some(cause),
                        syn_retransmits: 0,
                    })
                };
                Some(vec![occurrence(subject, detail)])
            }
            FlowKind::SynRefused => {
                let clues = Clues {
                    cgroup: None,
                    ip: Some(f.dst.ip()),
                };
                let subject = self.subject(clues, None, event.at, now, last_chance)?;
                let detail = Detail::ConnectionRefused(Connection {
                    direction: Direction::Inbound,
                    src: f.src,
                    dst: f.dst,
                    protocol: Protocol::Tcp,
                    reason: f.reason.map(|r| self.names.reset(r)),
                    peer: self.peer(f.src.ip(), event.at),
                    cause: Some(Cause::NoListener),
                    syn_retransmits: 0,
                });
                Some(vec![occurrence(subject, detail)])
            }
            FlowKind::PacketDrop => {
                // Shared, as every name an event carries: no allocation per event.
                let reason = match f.reason {
                    Some(r) => self.names.drop(r),
                    None => self.strings.get("UNKNOWN"),
                };
                let location = f
                    .location
                    .and_then(|a| self.names.location(a))
                    .map(|l| self.strings.get(&l));
                // Without reasons, a SYN to a closed port is freed where TCP finds no socket
                // (after answering it with a RST): a refusal the refusal probes report, as
                // NO_SOCKET drops are skipped in the kernel when there are reasons. Only the
                // bare SYN: other segments freed there (backlog, filter, checksum) are drops.
                if u16::from(f.protocol) == IPPROTO_TCP
                    && f.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
                    && location
                        .as_deref()
                        .is_some_and(|l| NO_SOCKET_SITES.iter().any(|s| l.starts_with(s)))
                {
                    return Some(Vec::new());
                }
                let protocol = Protocol::from_ip(f.protocol);
                let drop = |direction, peer| {
                    Detail::PacketDrop(Drop {
                        direction,
                        src: f.src,
                        dst: f.dst,
                        protocol,
                        reason: reason.clone(),
                        peer,
                        tcp_flags: (protocol == Protocol::Tcp).then_some(f.tcp_flags),
                        location: location.clone(),
                    })
                };
                // Each end that is a pod of this node gets its own record. The sender is the
                // socket's cgroup when the packet had one; else the pod whose network namespace
                // it entered from; else, unverified, whoever holds its source address (which a
                // pod with CAP_NET_RAW can forge).
                let mut one_container = true;
                let (clues, verified) = match (f.cgroup_id, f.ingress_netns) {
                    (Some(_), _) => (
                        Clues {
                            cgroup: f.cgroup_id,
                            ip: Some(f.src.ip()),
                        },
                        true,
                    ),
                    (None, Some(_)) => match self.pod_netns(&f.ingress_cgroups, now) {
                        // A cgroup or its pod not known yet: asked again later.
                        NetnsOwner::Wait if !last_chance => return None,
                        NetnsOwner::Pod {
                            cgroup,
                            one_container: one,
                        } => {
                            one_container = one;
                            (
                                Clues {
                                    cgroup: Some(cgroup),
                                    ip: None,
                                },
                                true,
                            )
                        }
                        NetnsOwner::Wait | NetnsOwner::NotOnePod => (
                            Clues {
                                cgroup: None,
                                ip: Some(f.src.ip()),
                            },
                            false,
                        ),
                    },
                    (None, None) => (
                        Clues {
                            cgroup: None,
                            ip: Some(f.src.ip()),
                        },
                        false,
                    ),
                };
                let sender = self
                    .subject(clues, None, event.at, now, false)
                    .map(|mut s| {
                        if !verified && s.attribution == Attribution::Ip {
                            s.attribution = Attribution::Unverified;
                        }
                        // The pod is known, not which of its containers sent it.
                        if !one_container {
                            s.container = None;
                        }
                        s
                    });
                let receiver = self.subject(
                    Clues {
                        cgroup: None,
                        ip: Some(f.dst.ip()),
                    },
                    None,
                    event.at,
                    now,
                    false,
                );
                let sender_pod = sender.as_ref().and_then(|s| s.pod.clone());
                let receiver_pod = receiver.as_ref().and_then(|s| s.pod.clone());
                let mut out = Vec::new();
                if let Some(s) = sender.filter(|s| s.pod.is_some()) {
                    let peer = receiver_pod.or_else(|| self.peer(f.dst.ip(), event.at));
                    out.push(occurrence(s, drop(Direction::Outbound, peer)));
                }
                if let Some(r) = receiver.filter(|r| r.pod.is_some()) {
                    out.push(occurrence(r, drop(Direction::Inbound, sender_pod)));
                }
                if !out.is_empty() {
                    return Some(out);
                }
                if !last_chance {
                    return None;
                }
                Some(vec![occurrence(
                    Subject::unattributed(None),
                    drop(Direction::Outbound, None),
                )])
            }
        }
    }

    /// Whose network namespace held these socket cgroups: one running pod's own (not
    /// hostNetwork), and which of its cgroups (`None`: several, so no one container); or not
    /// one pod's (unknown, shared by two pods, a hostNetwork pod's: the node's); or not known
    /// yet. Cgroups that are gone (an init container's, a restarted container's) or of no pod
    /// (a host process that dialled inside the namespace, such as a port-forward) do not decide.
    /// Cgroups of a pod no longer running are skipped: a dead pod's namespace number is reused.
    fn pod_netns(&mut self, cgroups: &[u64], now: Now) -> NetnsOwner {
        let mut found: Option<(Option<u64>, Arc<PodRef>)> = None;
        for &cgroup in cgroups {
            let pod = match self.lookup_cgroup(cgroup, now) {
                CgroupLookup::Pending => return NetnsOwner::Wait,
                CgroupLookup::Pod(identity) => match self.index.by_uid(&identity.pod_uid) {
                    None => return NetnsOwner::Wait,
                    Some(p) if p.host_network => return NetnsOwner::NotOnePod,
                    Some(_) => match self.index.live_by_uid(&identity.pod_uid) {
                        Some(p) => p.pod.clone(),
                        None => continue,
                    },
                },
                CgroupLookup::NotAPod | CgroupLookup::Gone => continue,
            };
            match &mut found {
                Some((_, first)) if first.uid != pod.uid => return NetnsOwner::NotOnePod,
                Some((one, _)) => {
                    if *one != Some(cgroup) {
                        *one = None;
                    }
                }
                None => found = Some((Some(cgroup), pod)),
            }
        }
        match found {
            Some((Some(cgroup), _)) => NetnsOwner::Pod {
                cgroup,
                one_container: true,
            },
            Some((None, _)) => NetnsOwner::Pod {
                cgroup: cgroups.first().copied().unwrap_or_default(),
                one_container: false,
            },
            None => NetnsOwner::NotOnePod,
        }
    }

    /// The pod of this node that held `ip` at `at`.
    pub(super) fn peer(&self, ip: IpAddr, at: SystemTime) -> Option<Arc<PodRef>> {
        self.index.pod_at_ip(ip, at).map(|p| p.pod.clone())
    }

    /// Who refused a connection of this node: an ICMP error is a firewall; a reset from a pod
    /// of this node is its stack only if this node saw the stack send one; a reset from
    /// elsewhere cannot be told apart.
    fn refusal_cause(
        &self,
        f: &Flow,
        destination_is_local: bool,
        now: Now,
    ) -> (Cause, Option<Arc<str>>) {
        if let Some(errno) = f.icmp_errno {
            return (Cause::Rejected, Some(icmp_reject_reason(errno).into()));
        }
        if !destination_is_local || !self.names.sees_stack_refusals {
            return (Cause::Unknown, None);
        }
        let seen = self
            .stack_refusals
            .get(&(f.src.ip(), f.dst))
            .is_some_and(|t| now.mono.saturating_duration_since(*t) < STACK_REFUSAL_TTL);
        if seen {
            (Cause::NoListener, None)
        } else {
            (Cause::Rejected, Some("RST_NOT_FROM_DESTINATION".into()))
        }
    }
}

/// What an ICMP-refused connect() ended with, as a reason name.
fn icmp_reject_reason(e: u32) -> &'static str {
    match e {
        errno::ECONNREFUSED => "ICMP_PORT_UNREACHABLE",
        errno::EHOSTUNREACH => "ICMP_HOST_UNREACHABLE",
        errno::ENETUNREACH => "ICMP_NET_UNREACHABLE",
        errno::EACCES => "ICMP_ADMIN_PROHIBITED",
        _ => "ICMP_ERROR",
    }
}

/// The name of a connect() errno.
fn errno_name(e: u32) -> std::borrow::Cow<'static, str> {
    match e {
        errno::ETIMEDOUT => "ETIMEDOUT".into(),
        errno::ECONNREFUSED => "ECONNREFUSED".into(),
        errno::EHOSTUNREACH => "EHOSTUNREACH".into(),
        errno::ENETUNREACH => "ENETUNREACH".into(),
        errno::EACCES => "EACCES".into(),
        errno::EPERM => "EPERM".into(),
        other => format!("errno {other}").into(),
    }
}

/// How many occurrences a waiting event stands for.
pub(super) fn event_count(e: &TimedEvent) -> u64 {
    e.event.count()
}

/// How long a stack refusal is remembered for judging resets, and how many at most.
pub(super) const STACK_REFUSAL_TTL: Duration = Duration::from_secs(60);
pub(super) const STACK_REFUSALS_CAPACITY: usize = 16_384;

/// The running kernel's names of its enum values, from BTF.
#[derive(Clone, Debug, Default)]
pub struct KernelNames {
    /// `enum sk_rst_reason`.
    pub reset: HashMap<u32, String>,
    /// `enum skb_drop_reason` (the reported ones).
    pub drop: HashMap<u32, String>,
    /// Whether this node sees its own stack's refusals (tcp_send_reset attached): without
    /// them a reset cannot be told from a firewall's.
    pub sees_stack_refusals: bool,
    /// Kernel symbols, to name where a packet was dropped on kernels without drop reasons
    /// (`None` where drops carry reasons).
    pub symbols: Option<Arc<Symbols>>,
}

/// Where TCP frees a segment that found no socket (kernels without drop reasons).
const NO_SOCKET_SITES: [&str; 2] = ["tcp_v4_rcv+", "tcp_v6_rcv+"];

/// [`KernelNames`] as shared strings.
/// Strings many records repeat (process names, drop locations), one shared copy each: a
/// record holds a pointer, not its own copy. Bounded: forgotten all at once when full (records
/// keep the copies they hold).
#[derive(Debug, Default)]
pub(super) struct Interned(std::collections::HashSet<Arc<str>>);

/// Bound on [`Interned`].
const INTERNED_CAPACITY: usize = 4096;

impl Interned {
    pub(super) fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.0.get(s) {
            return shared.clone();
        }
        if self.0.len() >= INTERNED_CAPACITY {
            self.0.clear();
        }
        let shared: Arc<str> = s.into();
        self.0.insert(shared.clone());
        shared
    }
}

pub(super) struct Names {
    /// By the kernel's enum values (looked up for every drop or reset: foldhash).
    reset: foldhash::HashMap<u32, Arc<str>>,
    drop: foldhash::HashMap<u32, Arc<str>>,
    sees_stack_refusals: bool,
    symbols: Option<Arc<Symbols>>,
}

impl From<KernelNames> for Names {
    fn from(n: KernelNames) -> Names {
        let shared = |m: HashMap<u32, String>| -> foldhash::HashMap<u32, Arc<str>> {
            m.into_iter().map(|(k, v)| (k, v.into())).collect()
        };
        Names {
            reset: shared(n.reset),
            drop: shared(n.drop),
            sees_stack_refusals: n.sees_stack_refusals,
            symbols: n.symbols,
        }
    }
}

impl Names {
    fn reset(&self, v: u32) -> Arc<str> {
        self.reset
            .get(&v)
            .cloned()
            .unwrap_or_else(|| format!("reason {v}").into())
    }
    /// Where a packet was freed, `function+0xoffset`; none when the kernel hides its symbols
    /// from the agent (no CAP_SYSLOG): the raw address would undo KASLR for anyone reading
    /// evidence.
    fn location(&self, address: u64) -> Option<String> {
        self.symbols.as_ref().and_then(|s| s.name(address))
    }
    fn drop(&self, v: u32) -> Arc<str> {
        self.drop
            .get(&v)
            .cloned()
            .unwrap_or_else(|| format!("reason {v}").into())
    }
}
