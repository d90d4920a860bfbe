//! One module per kind of evidence: its detail type and what the model does with it (the
//! aggregation key, the merge of a later occurrence, its endpoints, its flat JSON fields), all
//! behind one trait. [`super::Detail`] dispatches to it with [`each_detail!`], so a new kind is
//! a new module here and one arm in that macro.

mod connection;
mod cpu;
mod dns;
mod drop;
mod oom;

use std::{net::SocketAddr, sync::Arc};

use serde_json::{Map, Value};

pub use connection::Connection;
pub use cpu::CpuThrottling;
pub use dns::{Dns, DnsLookups};
pub use drop::Drop;
pub use oom::OomKill;

use super::{DetailKey, Direction, Kind, PodRef};

/// Direction, source, destination and the pod at the other end.
pub type Endpoints<'a> = (Direction, SocketAddr, SocketAddr, Option<&'a Arc<PodRef>>);

/// What the model does with one kind's detail.
pub trait KindDetail {
    /// What makes two occurrences "the same failure" (besides pod and container).
    fn key(&self) -> DetailKey;
    /// Takes in a later occurrence with the same key: the latest values win where they vary.
    fn absorb(&mut self, later: Self);
    /// Direction, endpoints and peer, for the traffic kinds.
    fn endpoints(&self) -> Option<Endpoints<'_>> {
        None
    }
    /// The kind-specific JSON fields, flat beside the common ones (the JSON contract).
    fn json_fields(&self, kind: Kind, out: &mut Map<String, Value>);
}

/// Runs `$body` with `$d` bound to the detail of whichever kind `$detail` is.
macro_rules! each_detail {
    ($detail:expr, $d:ident => $body:expr) => {
        match $detail {
            Detail::ConnectionRefused($d) | Detail::ConnectionTimeout($d) => $body,
            Detail::PacketDrop($d) => $body,
            Detail::Dns($d) => $body,
            Detail::OomKill($d) => $body,
            Detail::CpuThrottling($d) => $body,
        }
    };
}
pub(crate) use each_detail;
