//! Refused and timed-out connections: one shape, two kinds.

use std::{net::SocketAddr, sync::Arc};

use serde_json::{Map, Value};

use super::{Endpoints, KindDetail};
use crate::evidence::{Cause, DetailKey, Direction, Kind, PodRef, Protocol};

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

    fn json_fields(&self, kind: Kind, out: &mut Map<String, Value>) {
        out.insert("protocol".into(), self.protocol.as_str().into());
        if kind == Kind::ConnectionTimeout {
            out.insert("syn_retransmits".into(), self.syn_retransmits.into());
        } else {
            out.insert("reason".into(), self.reason.as_deref().into());
            out.insert("cause".into(), self.cause.map(Cause::as_str).into());
        }
    }
}
