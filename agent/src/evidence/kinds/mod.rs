//! One module per kind of evidence: its detail type and everything the agent does with it,
//! behind one trait ([`KindDetail`]): the aggregation key, the merge of a later occurrence, its
//! endpoints and protocol, its flat JSON fields, its text cell, its diagnosis, its
//! OpenTelemetry severity and semantic attributes, whether NetworkPolicy decides its traffic,
//! and its wire codec. The trait has no default methods: a new kind decides each of them, and
//! the compiler names what it forgot.
//!
//! [`super::Detail`] dispatches to the kinds through one table, [`kinds!`]: a new kind is a new
//! module here, its [`Kind`] name and [`super::Detail`] variant, and one line in that table.

mod connection;
mod cpu;
mod dns;
mod drop;
mod oom;

use std::{net::SocketAddr, sync::Arc};

use serde::Serialize;
use serde_json::{Map, Value};
use triage_agent_proto::v1 as pb;

pub use connection::Connection;
pub use cpu::CpuThrottling;
pub use dns::{Dns, DnsLookups};
pub use drop::Drop;
pub use oom::OomKill;

use super::{Detail, DetailKey, Direction, Evidence, Kind, PodRef, Protocol, wire::ConvertError};

/// Direction, source, destination and the pod at the other end.
pub type Endpoints<'a> = (Direction, SocketAddr, SocketAddr, Option<&'a Arc<PodRef>>);

/// How serious a record is: `Error` where something failed outright (a refusal, a timeout, a
/// kill, a failed lookup), `Warn` where it degraded or may recover (drops that retransmissions
/// can survive, throttling, slow lookups).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Degraded, or may recover.
    Warn,
    /// Failed outright.
    Error,
}

/// Attributes named by OpenTelemetry's semantic conventions that a kind carries beyond its
/// endpoints (`source.*`, `destination.*`, `network.*` are the export's), and the kind's JSON
/// fields that these or the endpoints already carry, which the export does not repeat as
/// `triage.<field>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Semantic<'a> {
    /// (attribute key, value), in the order they are sent.
    pub attributes: Vec<(&'static str, &'a str)>,
    /// JSON field names already carried.
    pub carried: &'static [&'static str],
}

/// One conclusion drawn from one or more records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The kind of the record read.
    pub kind: Kind,
    /// The layer of the stack at fault ([`Kind::layer`], unless the record says otherwise).
    pub layer: &'static str,
    /// What the evidence proves (and rules out).
    pub summary: String,
    /// The safest next step, read-only checks first.
    pub next_step: String,
}

/// A node-level failure counter's family (`triage_agent_<family>_total`) and its (at most two)
/// labels. Made for every occurrence the store counts, so it allocates nothing: values are
/// static names or the record's own shared strings.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FailureCounter {
    pub family: &'static str,
    pub labels: [Option<(&'static str, Label)>; 2],
}

impl FailureCounter {
    /// The labels present, as (name, value).
    pub fn labels(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.labels.iter().flatten().map(|(k, v)| (*k, v.as_str()))
    }
}

/// A label value: a static name, or a string the record already shares (a kernel reason).
#[derive(Clone, Debug)]
pub enum Label {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Label {
    pub fn as_str(&self) -> &str {
        match self {
            Label::Static(s) => s,
            Label::Shared(s) => s,
        }
    }
}

impl PartialEq for Label {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Label {}

impl std::hash::Hash for Label {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.as_str().hash(h);
    }
}

impl PartialOrd for Label {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Label {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

/// Everything the agent does with one kind's detail. `kind` arguments are the record's kind,
/// for types that serve more than one ([`Connection`]: refused and timed out).
pub trait KindDetail: Sized {
    /// What makes two occurrences "the same failure" (besides pod and container).
    fn key(&self) -> DetailKey;
    /// Takes in a later occurrence with the same key: the latest values win where they vary.
    fn absorb(&mut self, later: Self);
    /// Direction, endpoints and peer, for the traffic kinds; `None` for resource kinds.
    fn endpoints(&self) -> Option<Endpoints<'_>>;
    /// The transport protocol, for the traffic kinds; `None` for resource kinds.
    fn protocol(&self) -> Option<Protocol>;
    /// The kind-specific JSON fields, flat beside the common ones (the JSON contract).
    fn json_fields(&self, kind: Kind, out: &mut Map<String, Value>);
    /// The detail cell of the table and of a watch line (names from pods and the network
    /// escaped with [`crate::text::clean`]).
    fn cell(&self, kind: Kind) -> String;
    /// What `record` (whose detail this is) says is wrong and the safest next step. `pod` names
    /// its pod for people; `all` is every record of the answer, for findings that read one
    /// record in the light of another (a DNS timeout and the drops of its queries).
    fn diagnose(&self, record: &Evidence, pod: &str, all: &[Evidence]) -> Finding;
    /// The OpenTelemetry log record's severity.
    fn severity(&self) -> Severity;
    /// The OpenTelemetry semantic-convention attributes beyond the endpoints.
    fn semantic(&self) -> Semantic<'_>;
    /// Whether NetworkPolicy decides the fate of this record's traffic, so `explain` evaluates
    /// its flow (its endpoints and protocol).
    fn policy_decides(&self, kind: Kind) -> bool;
    /// Whether only the other end's node can explain this record (a refusal whose cause this
    /// node could not see, a timeout), so the CLI asks the agent there about the same flow.
    fn needs_other_side(&self, kind: Kind) -> bool;
    /// The node-level failure counter of `/metrics` an occurrence counts in, with its labels,
    /// every value from a small fixed set (a kernel drop reason, an outcome, a cause, a
    /// direction: never a pod, an address or a name); None for kinds without one.
    fn failure_counter(&self, kind: Kind) -> Option<FailureCounter>;
    /// Fills the message's `detail` (and the fields 10-15 that clients older than `detail`
    /// read, where the kind had them); the common fields are `crate::codec`'s.
    fn to_pb(&self, m: &mut pb::Evidence);
    /// The detail of a record of `kind` from the wire, taken out of `m`'s `detail` (or the
    /// fields older agents sent); a `detail` of another kind's type is
    /// [`ConvertError::MissingDetail`].
    fn from_pb(kind: Kind, m: &mut pb::Evidence) -> Result<Detail, ConvertError>;
}

/// Every kind, once: its [`Kind`] name, which is also its [`Detail`] variant, and the type that
/// implements [`KindDetail`] for it. `kinds!(then! { args })` hands `then!` the table after
/// `[args]`; the dispatch is generated from it, as exhaustive matches, so a kind missing here
/// fails to compile.
macro_rules! kinds {
    ($then:ident! { $($args:tt)* }) => {
        $crate::evidence::kinds::$then! { [$($args)*]
            ConnectionRefused(Connection),
            ConnectionTimeout(Connection),
            PacketDrop(Drop),
            Dns(Dns),
            OomKill(OomKill),
            CpuThrottling(CpuThrottling),
        }
    };
}

/// Runs `$body` with `$d` bound to the detail of whichever kind `$detail` is.
macro_rules! each_detail {
    ($detail:expr, $d:ident => $body:expr) => {
        $crate::evidence::kinds::kinds!(by_value! { $detail, $d => $body })
    };
}

/// Runs `$body` with `$t` naming the detail type of the kind `$kind`.
macro_rules! each_kind {
    ($kind:expr, $t:ident => $body:expr) => {
        $crate::evidence::kinds::kinds!(by_kind! { $kind, $t => $body })
    };
}

/// Runs `$body` with `$a` and `$b` bound to the details of `$first` and `$second` when both
/// are of one kind; does nothing otherwise.
macro_rules! same_kind {
    ($first:expr, $second:expr, $a:ident, $b:ident => $body:expr) => {
        $crate::evidence::kinds::kinds!(by_pair! { $first, $second, $a, $b => $body })
    };
}

/// The [`Kind`] of a [`Detail`].
macro_rules! kind_of {
    ($detail:expr) => {
        $crate::evidence::kinds::kinds!(by_name! { $detail })
    };
}

/// Declares [`Detail`](crate::evidence::Detail), one variant per row of the table.
macro_rules! detail_enum {
    ([] $($variant:ident($ty:ident),)*) => {
        /// What happened, one variant per kind (from the `kinds!` table).
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Detail {
            $($variant($ty),)*
        }
    };
}

macro_rules! by_value {
    ([$detail:expr, $d:ident => $body:expr] $($variant:ident($ty:ident),)*) => {
        match $detail {
            $($crate::evidence::Detail::$variant($d) => $body,)*
        }
    };
}

macro_rules! by_kind {
    ([$kind:expr, $t:ident => $body:expr] $($variant:ident($ty:ident),)*) => {
        match $kind {
            $($crate::evidence::Kind::$variant => {
                type $t = $crate::evidence::$ty;
                $body
            })*
        }
    };
}

macro_rules! by_pair {
    ([$first:expr, $second:expr, $a:ident, $b:ident => $body:expr]
     $($variant:ident($ty:ident),)*) => {
        match ($first, $second) {
            $((
                $crate::evidence::Detail::$variant($a),
                $crate::evidence::Detail::$variant($b),
            ) => $body,)*
            _ => {}
        }
    };
}

macro_rules! by_name {
    ([$detail:expr] $($variant:ident($ty:ident),)*) => {
        match $detail {
            $($crate::evidence::Detail::$variant(_) => $crate::evidence::Kind::$variant,)*
        }
    };
}

pub(crate) use {
    by_kind, by_name, by_pair, by_value, detail_enum, each_detail, each_kind, kind_of, kinds,
    same_kind,
};

/// `kubectl` targets (namespace, pod) for a record's pod, placeholders when it has none.
fn kubectl_target(e: &Evidence) -> (String, String) {
    let ns = e.pod().map_or("<namespace>", |p| p.namespace.as_str());
    let name = e.pod().map_or("<pod>", |p| p.name.as_str());
    (ns.to_owned(), name.to_owned())
}

/// " (pod ns/name)" for the pod at the other end, when known.
fn peer_text(peer: Option<&Arc<PodRef>>) -> String {
    peer.map(|p| format!(" (pod {p})")).unwrap_or_default()
}
