//! The kernel side, seen from userspace: which program goes on which hook and which signals it
//! serves ([`PROGRAMS`]), loading and attaching them with this kernel's layouts (`loader`,
//! `offsets`), reading rings and draining tables (`ring`, used by the flow `reader` and the DNS
//! task; the DNS maps in `dns_maps` and `dns_held`) and decoding records ([`decode`]).
//!
//! Adding a signal on the kernel side: the program in agent-ebpf (one file per hook family),
//! its event layout and kind id in agent-ebpf/common, a [`Program`] entry here, its offsets
//! family in `offsets` when it reads kernel structs or tracepoint records, and a
//! [`crate::event::RawEvent`] variant decoded in [`decode`].

pub mod decode;
#[cfg(feature = "node-agent")]
pub mod dns_held;
#[cfg(feature = "node-agent")]
pub mod dns_maps;
pub mod dns_repeats;
#[cfg(feature = "node-agent")]
pub mod loader;
#[cfg(feature = "node-agent")]
pub mod netns;
#[cfg(feature = "node-agent")]
pub mod offsets;
#[cfg(feature = "node-agent")]
pub mod reader;
pub mod reasons;
#[cfg(feature = "node-agent")]
pub mod ring;

use std::fmt;

use crate::evidence::Kind;

/// Where a program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// A raw tracepoint: the tracepoint's arguments without the trace record (cheaper per
    /// hit), attached with bpf(2). Classic tracepoints are not used: attaching one takes
    /// perf_event_open, which kernels with `perf_event_paranoid` 3 (Debian's default) refuse
    /// to anything short of CAP_SYS_ADMIN, which the DaemonSet does not have.
    RawTracePoint {
        name: &'static str,
        /// The Linux release that added it, for naming what a kernel lacks (the check itself
        /// is whether the running kernel lists the tracepoint, never its version).
        since: &'static str,
    },
    /// A cgroup_skb program on the pods' cgroup (the cgroup2 root when none is found): every
    /// packet every pod's sockets send (`egress`) or receive (`egress: false`), with the
    /// socket's cgroup.
    CgroupSkb { egress: bool },
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hook::RawTracePoint { name, .. } => write!(f, "raw_tracepoint/{name}"),
            Hook::CgroupSkb { egress: true } => f.write_str("cgroup_skb/egress"),
            Hook::CgroupSkb { egress: false } => f.write_str("cgroup_skb/ingress"),
        }
    }
}

/// One program of the eBPF object and its hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Program {
    /// The program's name in the object (its function name in agent-ebpf).
    pub name: &'static str,
    pub hook: Hook,
    /// A simpler program for the same hook, loaded when this kernel's verifier rejects this
    /// one: the signal then works in a documented degraded form.
    pub fallback: Option<Fallback>,
    /// The signals it serves, and what it is to each: [`crate::signals`] judges every
    /// signal's mode from this.
    pub serves: &'static [(Kind, Role)],
}

/// What a program is to a signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Without it the signal is off.
    Needed,
    /// Without it the signal is degraded: it loses this.
    Wanted { loses: &'static str },
}

/// A program loaded in place of another that the kernel rejects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fallback {
    /// Its name in the object.
    pub name: &'static str,
    /// What the degraded form loses, for Status and `doctor`.
    pub loses: &'static str,
}

/// What the DNS capture loses without BPF atomics.
const DNS_WITHOUT_ATOMICS: &str = "the kernel rejects the in-kernel matching of answers to \
     queries (BPF atomics, Linux 5.12+): every DNS packet goes to the agent, which matches them \
     itself; the evidence is the same, the CPU cost per lookup is higher";

/// Every program the agent loads.
pub const PROGRAMS: &[Program] = &[
    Program {
        name: "inet_sock_set_state",
        hook: Hook::RawTracePoint {
            name: "inet_sock_set_state",
            since: "4.16",
        },
        fallback: None,
        serves: &[
            (Kind::ConnectionRefused, Role::Needed),
            (Kind::ConnectionTimeout, Role::Needed),
        ],
    },
    Program {
        name: "tcp_receive_reset",
        hook: Hook::RawTracePoint {
            name: "tcp_receive_reset",
            since: "4.16",
        },
        fallback: None,
        serves: &[(Kind::ConnectionRefused, Role::Needed)],
    },
    Program {
        name: "tcp_send_reset",
        hook: Hook::RawTracePoint {
            name: "tcp_send_reset",
            since: "4.16",
        },
        fallback: None,
        serves: &[(
            Kind::ConnectionRefused,
            Role::Wanted {
                loses: "refusals are seen from the connecting side only: a destination pod is not \
                        told that its own stack refused (nothing listening)",
            },
        )],
    },
    Program {
        name: "inet_sk_error_report",
        hook: Hook::RawTracePoint {
            name: "inet_sk_error_report",
            since: "5.14",
        },
        fallback: None,
        serves: &[(
            Kind::ConnectionRefused,
            Role::Wanted {
                loses: "connections refused by ICMP (a firewall's reject rule) are not seen",
            },
        )],
    },
    Program {
        name: "tcp_retransmit_skb",
        hook: Hook::RawTracePoint {
            name: "tcp_retransmit_skb",
            since: "4.15",
        },
        fallback: None,
        serves: &[(
            Kind::ConnectionTimeout,
            Role::Wanted {
                loses: "timeouts carry no count of SYN retransmissions",
            },
        )],
    },
    Program {
        name: "kfree_skb",
        hook: Hook::RawTracePoint {
            name: "kfree_skb",
            since: "2.6.32",
        },
        fallback: None,
        serves: &[(Kind::PacketDrop, Role::Needed)],
    },
    Program {
        name: "dns_egress",
        hook: Hook::CgroupSkb { egress: true },
        fallback: Some(Fallback {
            name: "dns_egress_all",
            loses: DNS_WITHOUT_ATOMICS,
        }),
        serves: &[(Kind::Dns, Role::Needed)],
    },
    Program {
        name: "dns_ingress",
        hook: Hook::CgroupSkb { egress: false },
        fallback: Some(Fallback {
            name: "dns_ingress_all",
            loses: DNS_WITHOUT_ATOMICS,
        }),
        serves: &[(Kind::Dns, Role::Needed)],
    },
    Program {
        name: "mark_victim",
        hook: Hook::RawTracePoint {
            name: "mark_victim",
            since: "4.3",
        },
        fallback: None,
        serves: &[(
            Kind::OomKill,
            Role::Wanted {
                loses: "kills are counted from memory.events only: the killed process is not named",
            },
        )],
    },
];

/// A fallback program running in place of the one the kernel rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Degraded {
    /// The program that runs.
    pub program: String,
    /// Why the first choice did not load (the verifier's reason).
    pub rejected: String,
    /// What the signal loses.
    pub loses: String,
}

/// A kernel program and whether it runs (for Status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeStatus {
    pub name: String,
    pub hook: String,
    pub attached: bool,
    pub error: Option<String>,
    /// The program that runs when it is a fallback (see [`Program::fallback`]), with what the
    /// signal loses.
    pub degraded: Option<Degraded>,
    /// Not attached because the configuration switched it off (e.g. `--dns-ports none`): not
    /// a fault for readiness.
    pub switched_off: bool,
}
