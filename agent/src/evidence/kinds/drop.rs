//! Packets the kernel dropped.

use std::{net::SocketAddr, sync::Arc};

use serde_json::{Map, Value};
use triage_agent_proto::v1 as pb;

use super::{Endpoints, FailureCounter, Finding, KindDetail, Label, Semantic, Severity, peer_text};
use crate::{
    evidence::{
        Detail, DetailKey, Direction, Evidence, Kind, PodRef, Protocol, tcp_flags_from_text,
        tcp_flags_text,
        wire::{ConvertError, addr_from_pb, from_pb, pod_from_pb, pod_to_pb, to_pb},
    },
    text::{clean, cleaned, rfc3339},
};

/// A dropped packet, seen from the record's pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drop {
    /// `outbound`: this pod's packet was dropped; `inbound`: a packet to this pod was.
    pub direction: Direction,
    /// The packet's source; its port is the latest occurrence's. ICMP: type and code as ports.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub protocol: Protocol,
    /// The kernel's `skb_drop_reason` name (e.g. NETFILTER_DROP).
    pub reason: Arc<str>,
    /// The pod at the other end, when known.
    pub peer: Option<Arc<PodRef>>,
    /// TCP flags of the dropped segment (FIN, SYN, RST, ACK bits).
    pub tcp_flags: Option<u8>,
    /// Where the kernel freed the packet (`nf_hook_slow+0x8c`), on kernels without drop
    /// reasons (before Linux 5.17; reason UNKNOWN) that show the agent their symbols.
    pub location: Option<Arc<str>>,
}

impl KindDetail for Drop {
    fn key(&self) -> DetailKey {
        DetailKey::Drop {
            direction: self.direction,
            protocol: self.protocol,
            src_ip: self.src.ip(),
            dst: self.dst,
            reason: self.reason.clone(),
            tcp_flags: self.tcp_flags,
            location: self.location.clone(),
        }
    }

    fn absorb(&mut self, later: Self) {
        self.src = later.src;
        self.peer = later.peer.or(self.peer.take());
    }

    fn endpoints(&self) -> Option<Endpoints<'_>> {
        Some((self.direction, self.src, self.dst, self.peer.as_ref()))
    }

    fn protocol(&self) -> Option<Protocol> {
        Some(self.protocol)
    }

    fn json_fields(&self, _: Kind, out: &mut Map<String, Value>) {
        out.insert("protocol".into(), self.protocol.as_str().into());
        out.insert("reason".into(), (*self.reason).into());
        if let Some(flags) = self.tcp_flags {
            out.insert("tcp_flags".into(), tcp_flags_text(flags).into());
        }
        if let Some(location) = &self.location {
            out.insert("location".into(), (**location).into());
        }
    }

    fn cell(&self, _: Kind) -> String {
        let mut text = match self.tcp_flags {
            Some(flags) => format!(
                "{} {} {}",
                clean(&self.reason),
                self.protocol.as_str(),
                tcp_flags_text(flags)
            ),
            None => format!("{} {}", clean(&self.reason), self.protocol.as_str()),
        };
        if let Some(location) = &self.location {
            text.push_str(&format!(" at {}", clean(location)));
        }
        text
    }

    fn diagnose(&self, record: &Evidence, pod: &str, _: &[Evidence]) -> Finding {
        dropped(record, self, pod)
    }

    /// Retransmissions may survive a drop.
    fn severity(&self) -> Severity {
        Severity::Warn
    }

    fn semantic(&self) -> Semantic<'_> {
        Semantic::default()
    }

    fn policy_decides(&self, _: Kind) -> bool {
        true
    }

    fn needs_other_side(&self, _: Kind) -> bool {
        false
    }

    /// `packet_drops_total{reason, direction}`: the kernel's reason names are a fixed set.
    fn failure_counter(&self, _: Kind) -> Option<FailureCounter> {
        Some(FailureCounter {
            family: "packet_drops",
            labels: [
                Some(("reason", Label::Shared(self.reason.clone()))),
                Some(("direction", Label::Static(self.direction.as_str()))),
            ],
        })
    }

    fn to_pb(&self, m: &mut pb::Evidence) {
        let d = pb::DropDetail {
            direction: to_pb::<pb::Direction>(self.direction),
            src: self.src.to_string(),
            dst: self.dst.to_string(),
            protocol: to_pb::<pb::Protocol>(self.protocol),
            reason: self.reason.to_string(),
            peer: self.peer.as_deref().map(pod_to_pb),
            tcp_flags: self.tcp_flags.map(tcp_flags_text).unwrap_or_default(),
            location: self.location.as_deref().unwrap_or_default().to_owned(),
        };
        m.protocol = d.protocol;
        m.reason.clone_from(&d.reason);
        m.detail = Some(pb::evidence::Detail::Drop(d));
    }

    fn from_pb(kind: Kind, m: &mut pb::Evidence) -> Result<Detail, ConvertError> {
        let Some(pb::evidence::Detail::Drop(d)) = m.detail.take() else {
            return Err(ConvertError::MissingDetail { kind });
        };
        let protocol = from_pb::<pb::Protocol, _>("protocol", d.protocol)?;
        Ok(Detail::PacketDrop(Drop {
            direction: from_pb::<pb::Direction, _>("direction", d.direction)?,
            src: addr_from_pb(&d.src, "src")?,
            dst: addr_from_pb(&d.dst, "dst")?,
            protocol,
            reason: d.reason.into(),
            peer: d.peer.map(pod_from_pb),
            tcp_flags: (protocol == Protocol::Tcp).then(|| tcp_flags_from_text(&d.tcp_flags)),
            location: (!d.location.is_empty()).then(|| d.location.into()),
        }))
    }
}

/// The kernel's reason, or where it dropped the packet on kernels without reasons.
fn drop_reason(d: &Drop) -> String {
    match &d.location {
        Some(location) => format!("{}, at {}", d.reason, cleaned(location)),
        None => d.reason.to_string(),
    }
}

/// Packets the kernel dropped.
fn dropped(e: &Evidence, d: &Drop, pod: &str) -> Finding {
    let kind = e.kind();
    let flags = d
        .tcp_flags
        .map(|f| format!(" {}", tcp_flags_text(f)))
        .unwrap_or_default();
    let what = format!("{}{flags}", d.protocol.as_str());
    let (summary, next_step) = match d.direction {
        Direction::Outbound => (
            format!(
                "{pod}'s {what} packets to {dst}{peer} are being dropped by the kernel ({reason}): \
                 {count} since {first}.",
                dst = d.dst,
                peer = peer_text(d.peer.as_ref()),
                reason = drop_reason(d),
                count = e.count,
                first = rfc3339(e.first_seen),
            ),
            drop_step(&d.reason, pod, "egress"),
        ),
        Direction::Inbound if e.folded.is_some() => {
            let f = e.folded.as_deref().unwrap_or_else(|| unreachable!());
            (
                format!(
                    "{what} packets from {senders} (most: {top}) to {pod} on {ports} are being \
                     dropped by the kernel ({reason}): {count} since {first}, counted in one \
                     record so they cannot crowd out {pod}'s own evidence.",
                    senders = f.senders_text(),
                    top = f.top_text(3),
                    ports = f.ports_text(),
                    reason = drop_reason(d),
                    count = e.count,
                    first = rfc3339(e.first_seen),
                ),
                drop_step(&d.reason, pod, "ingress"),
            )
        }
        Direction::Inbound => (
            format!(
                "{what} packets from {src}{peer} to {pod} on port {port} are being dropped by \
                 the kernel ({reason}): {count} since {first}.",
                src = d.src.ip(),
                peer = peer_text(d.peer.as_ref()),
                port = d.dst.port(),
                reason = drop_reason(d),
                count = e.count,
                first = rfc3339(e.first_seen),
            ),
            drop_step(&d.reason, pod, "ingress"),
        ),
    };
    Finding {
        kind,
        layer: kind.layer(),
        summary,
        next_step,
    }
}

/// The safest next step for a drop reason, read-only checks first.
fn drop_step(reason: &str, pod: &str, direction: &str) -> String {
    match reason {
        "NETFILTER_DROP" => format!(
            "A firewall rule dropped it: on most CNIs that is a NetworkPolicy. List the policies \
             that select {pod} for {direction} (kubectl get networkpolicy -n <namespace>; \
             `triage-agent explain` evaluates them) and the node's rules (nft list ruleset). \
             Restarting {pod} will not fix it."
        ),
        r if r.starts_with("TC_") || r == "BPF_CGROUP_EGRESS" => format!(
            "An eBPF/tc program dropped it: with Cilium or Calico eBPF that is usually a policy \
             verdict; check the CNI's policy view for {pod}."
        ),
        r if r.starts_with("SOCKET_") || r == "TCP_LISTEN_OVERFLOW" => {
            "The receiving application is not keeping up (its socket buffer or accept queue was \
             full): check its CPU throttling and load before scaling."
                .to_owned()
        }
        r if r.starts_with("NEIGH_") || r.starts_with("IP_") => {
            "The node could not route or reach the next hop: check the CNI's routes and the \
             peer's liveness (ip route get <ip> on the node)."
                .to_owned()
        }
        "NO_SOCKET" => "Nothing listens on that UDP port at the destination: check the \
                        container's ports and the Service targetPort."
            .to_owned(),
        _ => "Check the node's packet path for this reason (nstat, ip -s link).".to_owned(),
    }
}
