//! What every kind's wire codec shares: the decoding error, enum values by their stable names
//! (`connection_refused` <-> `EVIDENCE_KIND_CONNECTION_REFUSED`, so a name is written once),
//! pods and addresses. Each kind converts its own detail (`KindDetail::to_pb` and `from_pb`);
//! the common fields, loss counters and filters are `crate::codec`'s. Decoding a peer's message
//! never panics: unknown enum values and malformed addresses become [`ConvertError`]s.

use std::{net::SocketAddr, sync::Arc};

use triage_agent_proto::v1 as pb;

use super::{Kind, Named, PodRef};

/// A message from a peer that does not describe valid evidence.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConvertError {
    /// An enum value this version does not know.
    #[error("unknown {field} value {value}")]
    UnknownEnum { field: &'static str, value: i32 },
    /// A name this version does not know.
    #[error("unknown {field} name {value:?}")]
    Unknown { field: &'static str, value: String },
    /// A field that must be set is not.
    #[error("field {field} is missing")]
    Missing { field: &'static str },
    /// An address that is not "ip:port".
    #[error("field {field} is not an \"ip:port\" address: {value:?}")]
    BadAddress { field: &'static str, value: String },
    /// A time before the epoch or past what RFC 3339 can print.
    #[error("field {field} is not a valid timestamp")]
    BadTimestamp { field: &'static str },
    /// No `detail` of the kind's own type (and none of the fields older agents used).
    #[error("evidence of kind {kind} carries no detail this version understands")]
    MissingDetail { kind: Kind },
}

/// A generated proto enum: its value-name prefix and its name lookups.
pub trait PbEnum: Sized + Into<i32> + TryFrom<i32> {
    /// What every value's name starts with ("DIRECTION_").
    const PREFIX: &'static str;
    /// The value's name in the proto ("DIRECTION_OUTBOUND").
    fn pb_name(&self) -> &'static str;
    /// The value with this proto name.
    fn from_pb_name(s: &str) -> Option<Self>;
}

macro_rules! pb_enum {
    ($($t:ty => $prefix:literal),* $(,)?) => {$(
        impl PbEnum for $t {
            const PREFIX: &'static str = $prefix;
            fn pb_name(&self) -> &'static str {
                self.as_str_name()
            }
            fn from_pb_name(s: &str) -> Option<Self> {
                Self::from_str_name(s)
            }
        }
    )*};
}
pb_enum!(
    pb::EvidenceKind => "EVIDENCE_KIND_",
    pb::Attribution => "ATTRIBUTION_",
    pb::Direction => "DIRECTION_",
    pb::Protocol => "PROTOCOL_",
);

/// Domain value -> proto value, through the stable name. 0 (UNSPECIFIED) when the proto lacks
/// the name (a test checks that never happens).
pub fn to_pb<P: PbEnum>(value: impl Named) -> i32 {
    let name = format!("{}{}", P::PREFIX, value.as_str().to_ascii_uppercase());
    P::from_pb_name(&name).map_or(0, Into::into)
}

/// Proto value -> domain value, through the stable name.
pub fn from_pb<P: PbEnum, D: Named>(field: &'static str, value: i32) -> Result<D, ConvertError> {
    let unknown = ConvertError::UnknownEnum { field, value };
    let p = P::try_from(value).map_err(|_| unknown.clone())?;
    let name = p
        .pb_name()
        .strip_prefix(P::PREFIX)
        .ok_or(unknown.clone())?
        .to_ascii_lowercase();
    D::from_name(&name).map_err(|_| unknown)
}

/// A pod for the wire.
pub fn pod_to_pb(p: &PodRef) -> pb::PodRef {
    pb::PodRef {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        uid: p.uid.clone(),
    }
}

/// A pod from the wire.
pub fn pod_from_pb(p: pb::PodRef) -> Arc<PodRef> {
    Arc::new(PodRef {
        namespace: p.namespace,
        name: p.name,
        uid: p.uid,
    })
}

/// An "ip:port" address from the wire.
pub fn addr_from_pb(s: &str, field: &'static str) -> Result<SocketAddr, ConvertError> {
    s.parse().map_err(|_| ConvertError::BadAddress {
        field,
        value: s.to_owned(),
    })
}
