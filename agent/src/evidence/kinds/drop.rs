//! Packets the kernel dropped.

use std::{net::SocketAddr, sync::Arc};

use serde_json::{Map, Value};

use super::{Endpoints, KindDetail};
use crate::evidence::{DetailKey, Direction, Kind, PodRef, Protocol, tcp_flags_text};

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
}
