//! Refused and timed-out connections: one shape, two kinds.

use std::{net::SocketAddr, sync::Arc};

use serde_json::{Map, Value};
use triage_agent_proto::v1 as pb;

use super::{Endpoints, FailureCounter, Finding, KindDetail, Label, Semantic, Severity, peer_text};
use crate::{
    evidence::{
        Cause, Detail, DetailKey, Direction, Evidence, Kind, Named as _, PodRef, Protocol,
        wire::{ConvertError, addr_from_pb, from_pb, pod_from_pb, pod_to_pb, to_pb},
    },
    text::{clean, cleaned},
};

/// A connection between two endpoints, seen from the record's pod (refusals; timeouts next).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    pub direction: Direction,
    /// The side that initiated the traffic.
    pub src: SocketAddr,
    /// The side that received it.
    pub dst: SocketAddr,
    pub protocol: Protocol,
    /// The kernel's reason, when it gave one.
    pub reason: Option<Arc<str>>,
    /// The pod at the other end, when known.
    pub peer: Option<Arc<PodRef>>,
    /// Refusals: who answered.
    pub cause: Option<Cause>,
    /// Timeouts: SYN retransmissions the kernel made before giving up.
    pub syn_retransmits: u32,
}

impl KindDetail for Connection {
    fn key(&self) -> DetailKey {
        DetailKey::Connection {
            direction: self.direction,
            protocol: self.protocol,
            src_ip: self.src.ip(),
            dst: self.dst,
            reason: self.reason.clone(),
            cause: self.cause,
        }
    }

    fn absorb(&mut self, later: Self) {
        self.src = later.src;
        self.peer = later.peer.or(self.peer.take());
        self.syn_retransmits = self.syn_retransmits.saturating_add(later.syn_retransmits);
    }

    fn endpoints(&self) -> Option<Endpoints<'_>> {
        Some((self.direction, self.src, self.dst, self.peer.as_ref()))
    }

    fn protocol(&self) -> Option<Protocol> {
        Some(self.protocol)
    }

    fn json_fields(&self, kind: Kind, out: &mut Map<String, Value>) {
        out.insert("protocol".into(), self.protocol.as_str().into());
        if kind == Kind::ConnectionTimeout {
            out.insert("syn_retransmits".into(), self.syn_retransmits.into());
        } else {
            out.insert("reason".into(), self.reason.as_deref().into());
            out.insert("cause".into(), self.cause.map(Cause::as_str).into());
        }
    }

    fn cell(&self, kind: Kind) -> String {
        if kind == Kind::ConnectionTimeout {
            return format!("{} SYN retransmits", self.syn_retransmits);
        }
        match (&self.cause, &self.reason) {
            (Some(cause), Some(reason)) => format!("{}: {}", cause.as_str(), clean(reason)),
            (Some(cause), None) => cause.as_str().to_owned(),
            (None, Some(reason)) => cleaned(reason),
            (None, None) => "-".to_owned(),
        }
    }

    fn diagnose(&self, record: &Evidence, pod: &str, _: &[Evidence]) -> Finding {
        match (record.kind(), self.cause) {
            (Kind::ConnectionTimeout, _) => timed_out(record, self, pod),
            (_, Some(Cause::Rejected)) => rejected(record, self, pod),
            _ => refused(record, self, pod),
        }
    }

    fn severity(&self) -> Severity {
        Severity::Error
    }

    fn semantic(&self) -> Semantic<'_> {
        Semantic::default()
    }

    fn policy_decides(&self, kind: Kind) -> bool {
        // A refusal is an answer: the packet was delivered (a policy drop shows as a timeout).
        kind == Kind::ConnectionTimeout
    }

    fn needs_other_side(&self, kind: Kind) -> bool {
        self.direction == Direction::Outbound
            && (kind == Kind::ConnectionTimeout
                || matches!(self.cause, Some(Cause::Unknown) | None))
    }

    /// `connection_failures_total{kind, cause}` (a timeout's cause is "").
    fn failure_counter(&self, kind: Kind) -> Option<FailureCounter> {
        Some(FailureCounter {
            family: "connection_failures",
            labels: [
                Some(("kind", Label::Static(kind.as_str()))),
                Some(("cause", Label::Static(self.cause.map_or("", Cause::as_str)))),
            ],
        })
    }

    fn to_pb(&self, m: &mut pb::Evidence) {
        let d = pb::ConnectionDetail {
            direction: to_pb::<pb::Direction>(self.direction),
            src: self.src.to_string(),
            dst: self.dst.to_string(),
            protocol: to_pb::<pb::Protocol>(self.protocol),
            reason: self.reason.as_deref().unwrap_or_default().to_owned(),
            peer: self.peer.as_deref().map(pod_to_pb),
            cause: self.cause.map(Cause::as_str).unwrap_or_default().to_owned(),
            syn_retransmits: self.syn_retransmits,
        };
        m.protocol = d.protocol;
        m.reason.clone_from(&d.reason);
        m.detail = Some(pb::evidence::Detail::Connection(d));
    }

    fn from_pb(kind: Kind, m: &mut pb::Evidence) -> Result<Detail, ConvertError> {
        match (kind, m.detail.take()) {
            (Kind::ConnectionRefused, Some(pb::evidence::Detail::Connection(c))) => {
                Ok(Detail::ConnectionRefused(connection_from_pb(c)?))
            }
            (Kind::ConnectionTimeout, Some(pb::evidence::Detail::Connection(c))) => {
                Ok(Detail::ConnectionTimeout(connection_from_pb(c)?))
            }
            // An agent that predates `detail`: its refusals are in fields 10-15.
            (Kind::ConnectionRefused, None) => Ok(Detail::ConnectionRefused(connection_from_pb(
                pb::ConnectionDetail {
                    direction: m.direction,
                    src: std::mem::take(&mut m.src),
                    dst: std::mem::take(&mut m.dst),
                    protocol: m.protocol,
                    reason: std::mem::take(&mut m.reason),
                    peer: m.peer.take(),
                    cause: String::new(),
                    syn_retransmits: 0,
                },
            )?)),
            _ => Err(ConvertError::MissingDetail { kind }),
        }
    }
}

fn connection_from_pb(c: pb::ConnectionDetail) -> Result<Connection, ConvertError> {
    Ok(Connection {
        direction: from_pb::<pb::Direction, _>("direction", c.direction)?,
        src: addr_from_pb(&c.src, "src")?,
        dst: addr_from_pb(&c.dst, "dst")?,
        protocol: from_pb::<pb::Protocol, _>("protocol", c.protocol)?,
        reason: Some(c.reason).filter(|r| !r.is_empty()).map(Into::into),
        peer: c.peer.map(pod_from_pb),
        // A cause this version does not know is one it cannot explain.
        cause: (!c.cause.is_empty()).then(|| Cause::from_name(&c.cause).unwrap_or(Cause::Unknown)),
        syn_retransmits: c.syn_retransmits,
    })
}

/// A connection refused by a firewall rule (REJECT), not by the destination.
fn rejected(e: &Evidence, c: &Connection, pod: &str) -> Finding {
    let kind = e.kind();
    let how = c.reason.as_deref().unwrap_or("a reject");
    Finding {
        kind,
        layer: Kind::PacketDrop.layer(),
        summary: format!(
            "{pod} had {count} connection(s) to {dst}{peer} rejected by a firewall rule ({how}): \
             the destination's TCP stack did not answer, so this is not \"nothing listens\".",
            count = e.count,
            dst = c.dst,
            peer = peer_text(c.peer.as_ref()),
        ),
        next_step: format!(
            "Find the rule that rejects {proto}/{port}: NetworkPolicies that select {pod} \
             (egress) or the destination (ingress), then node firewall rules (nft list ruleset). \
             Restarting {pod} will not fix it.",
            proto = c.protocol.as_str(),
            port = c.dst.port(),
        ),
    }
}

/// SYNs never answered.
fn timed_out(e: &Evidence, c: &Connection, pod: &str) -> Finding {
    let kind = e.kind();
    Finding {
        kind,
        layer: kind.layer(),
        summary: format!(
            "{pod} had {count} connection attempt(s) to {dst}{peer} that were never answered \
             ({retrans} SYN retransmission(s)): the SYNs or the answers are being dropped on \
             the way, or the destination is down. Not a refusal: nothing sent a reset.",
            count = e.count,
            dst = c.dst,
            peer = peer_text(c.peer.as_ref()),
            retrans = c.syn_retransmits,
        ),
        next_step: format!(
            "Look for packet_drop evidence for {dst} (a NetworkPolicy or firewall drop shows \
             there with the kernel's reason), then check that the destination is up and its \
             Service endpoints are ready. Restarting {pod} will not fix it.",
            dst = c.dst,
        ),
    }
}

fn refused(e: &Evidence, c: &Connection, pod: &str) -> Finding {
    let kind = e.kind();
    let unknown = c.cause == Some(Cause::Unknown);
    match c.direction {
        Direction::Outbound if unknown => Finding {
            kind,
            layer: kind.layer(),
            summary: format!(
                "{pod} had {count} connection(s) to {dst}{peer} refused with a reset from \
                 another node: either nothing listens on port {port} there or a firewall \
                 rejected it (this node cannot tell which).",
                count = e.count,
                dst = c.dst,
                peer = peer_text(c.peer.as_ref()),
                port = c.dst.port(),
            ),
            next_step: format!(
                "Ask the agent on the destination's node (it sees its own stack's refusals), or \
                 check what listens on {dst} and its Service targetPort. Restarting {pod} will \
                 not fix it.",
                dst = c.dst,
            ),
        },
        Direction::Outbound => {
            let (target, exec) = match &c.peer {
                Some(p) => (
                    format!("pod {p}"),
                    format!("kubectl exec -n {} {} -- ss -ltn", p.namespace, p.name),
                ),
                None => (
                    format!("the process behind {}", c.dst),
                    "ss -ltn where it runs".to_owned(),
                ),
            };
            Finding {
                kind,
                layer: kind.layer(),
                summary: format!(
                    "{pod} had {count} connection(s) to {dst}{peer} refused: the SYN reached the \
                     destination and was answered with RST, so nothing listens on port {port} \
                     there. Routing and NetworkPolicy delivered the packet (a policy drop shows \
                     as a timeout, not a refusal).",
                    count = e.count,
                    dst = c.dst,
                    peer = peer_text(c.peer.as_ref()),
                    port = c.dst.port(),
                ),
                next_step: format!(
                    "Check what {target} listens on ({exec}) and compare it \
                     with the Service targetPort / EndpointSlice port for {dst}: a wrong \
                     targetPort, an app bound to 127.0.0.1, or an app not started yet are the \
                     usual causes. Restarting {pod} will not fix it.",
                    dst = c.dst,
                ),
            }
        }
        Direction::Inbound if e.folded.is_some() => {
            let f = e.folded.as_deref().unwrap_or_else(|| unreachable!());
            Finding {
                kind,
                layer: kind.layer(),
                summary: format!(
                    "{pod} refused {count} connection attempt(s) on {ports} from {senders} \
                     (most: {top}): nothing listens there. Many ports from few senders is a \
                     port scan or a client sweeping ports; they are counted in one record so \
                     they cannot crowd out {pod}'s own evidence.",
                    count = e.count,
                    ports = f.ports_text(),
                    senders = f.senders_text(),
                    top = f.top_text(3),
                ),
                next_step: format!(
                    "If the senders are not expected, find them (kubectl get pods -A -o wide | \
                     grep <ip>) and restrict ingress to {pod} with a NetworkPolicy; if they are, \
                     compare the ports they try with what the container listens on \
                     (kubectl exec -n {ns} {name} -- ss -ltn).",
                    ns = e.pod().map_or("<namespace>", |p| p.namespace.as_str()),
                    name = e.pod().map_or("<pod>", |p| p.name.as_str()),
                ),
            }
        }
        Direction::Inbound => Finding {
            kind,
            layer: kind.layer(),
            summary: format!(
                "{pod} refused {count} connection attempt(s) on port {port} from {src}{peer}: no \
                 socket listens on {dst} in this pod.",
                count = e.count,
                port = c.dst.port(),
                src = c.src.ip(),
                peer = peer_text(c.peer.as_ref()),
                dst = c.dst,
            ),
            next_step: format!(
                "Check the container's listening ports (kubectl exec -n {ns} {name} -- ss -ltn) \
                 against its containerPort and the Service targetPort; if the app listens on \
                 127.0.0.1 it must listen on 0.0.0.0. If it is still starting, a readiness probe \
                 on port {port} keeps traffic away until it listens.",
                ns = e.pod().map_or("<namespace>", |p| p.namespace.as_str()),
                name = e.pod().map_or("<pod>", |p| p.name.as_str()),
                port = c.dst.port(),
            ),
        },
    }
}
