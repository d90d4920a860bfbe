//! Conversions between the domain model ([`crate::evidence`]) and the gRPC types (`agent.v1`).
//! The only place that knows both; decoding a peer's message never panics, unknown enum values
//! and malformed addresses become [`ConvertError`]s.

use std::{
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use triage_agent_proto::v1 as pb;

use crate::evidence::{Attribution, Direction, Evidence, Filter, Kind, PodRef, Process, Protocol};

/// A message from a peer that does not describe valid evidence.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConvertError {
    #[error("unknown {field} value {value}")]
    UnknownEnum { field: &'static str, value: i32 },
    #[error("field {field} is missing")]
    Missing { field: &'static str },
    #[error("field {field} is not an \"ip:port\" address: {value:?}")]
    BadAddress { field: &'static str, value: String },
    #[error("field {field} is not a valid timestamp")]
    BadTimestamp { field: &'static str },
}

pub fn kind_to_pb(k: Kind) -> pb::EvidenceKind {
    match k {
        Kind::ConnectionRefused => pb::EvidenceKind::ConnectionRefused,
        Kind::ConnectionTimeout => pb::EvidenceKind::ConnectionTimeout,
        Kind::PacketDrop => pb::EvidenceKind::PacketDrop,
        Kind::Dns => pb::EvidenceKind::Dns,
        Kind::OomKill => pb::EvidenceKind::OomKill,
        Kind::CpuThrottling => pb::EvidenceKind::CpuThrottling,
    }
}

pub fn kind_from_pb(v: i32) -> Result<Kind, ConvertError> {
    let unknown = ConvertError::UnknownEnum {
        field: "kind",
        value: v,
    };
    Ok(
        match pb::EvidenceKind::try_from(v).map_err(|_| unknown.clone())? {
            pb::EvidenceKind::ConnectionRefused => Kind::ConnectionRefused,
            pb::EvidenceKind::ConnectionTimeout => Kind::ConnectionTimeout,
            pb::EvidenceKind::PacketDrop => Kind::PacketDrop,
            pb::EvidenceKind::Dns => Kind::Dns,
            pb::EvidenceKind::OomKill => Kind::OomKill,
            pb::EvidenceKind::CpuThrottling => Kind::CpuThrottling,
            pb::EvidenceKind::Unspecified => return Err(unknown),
        },
    )
}

fn attribution_to_pb(a: Attribution) -> pb::Attribution {
    match a {
        Attribution::Cgroup => pb::Attribution::Cgroup,
        Attribution::Socket => pb::Attribution::Socket,
        Attribution::Ip => pb::Attribution::Ip,
        Attribution::None => pb::Attribution::None,
    }
}

fn attribution_from_pb(v: i32) -> Result<Attribution, ConvertError> {
    let unknown = ConvertError::UnknownEnum {
        field: "attribution",
        value: v,
    };
    Ok(
        match pb::Attribution::try_from(v).map_err(|_| unknown.clone())? {
            pb::Attribution::Cgroup => Attribution::Cgroup,
            pb::Attribution::Socket => Attribution::Socket,
            pb::Attribution::Ip => Attribution::Ip,
            pb::Attribution::None => Attribution::None,
            pb::Attribution::Unspecified => return Err(unknown),
        },
    )
}

fn direction_from_pb(v: i32) -> Result<Direction, ConvertError> {
    let unknown = ConvertError::UnknownEnum {
        field: "direction",
        value: v,
    };
    Ok(
        match pb::Direction::try_from(v).map_err(|_| unknown.clone())? {
            pb::Direction::Outbound => Direction::Outbound,
            pb::Direction::Inbound => Direction::Inbound,
            pb::Direction::Unspecified => return Err(unknown),
        },
    )
}

fn protocol_from_pb(v: i32) -> Result<Protocol, ConvertError> {
    let unknown = ConvertError::UnknownEnum {
        field: "protocol",
        value: v,
    };
    Ok(
        match pb::Protocol::try_from(v).map_err(|_| unknown.clone())? {
            pb::Protocol::Tcp => Protocol::Tcp,
            pb::Protocol::Udp => Protocol::Udp,
            pb::Protocol::Unspecified => return Err(unknown),
        },
    )
}

pub fn time_to_pb(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

pub fn time_from_pb(
    t: Option<&prost_types::Timestamp>,
    field: &'static str,
) -> Result<SystemTime, ConvertError> {
    let t = t.ok_or(ConvertError::Missing { field })?;
    let secs = u64::try_from(t.seconds).map_err(|_| ConvertError::BadTimestamp { field })?;
    let nanos = u32::try_from(t.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .ok_or(ConvertError::BadTimestamp { field })?;
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::new(secs, nanos))
        .ok_or(ConvertError::BadTimestamp { field })
}

fn pod_to_pb(p: &PodRef) -> pb::PodRef {
    pb::PodRef {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        uid: p.uid.clone(),
    }
}

fn pod_from_pb(p: pb::PodRef) -> PodRef {
    PodRef {
        namespace: p.namespace,
        name: p.name,
        uid: p.uid,
    }
}

fn addr_from_pb(s: &str, field: &'static str) -> Result<SocketAddr, ConvertError> {
    s.parse().map_err(|_| ConvertError::BadAddress {
        field,
        value: s.to_owned(),
    })
}

pub fn evidence_to_pb(e: &Evidence) -> pb::Evidence {
    pb::Evidence {
        kind: kind_to_pb(e.kind).into(),
        node: e.node.clone(),
        pod: e.pod.as_ref().map(pod_to_pb),
        container: e.container.clone().unwrap_or_default(),
        process: e.process.as_ref().map(|p| pb::Process {
            pid: p.pid,
            comm: p.comm.clone(),
        }),
        first_seen: Some(time_to_pb(e.first_seen)),
        last_seen: Some(time_to_pb(e.last_seen)),
        count: e.count,
        attribution: attribution_to_pb(e.attribution).into(),
        direction: match e.direction {
            Direction::Outbound => pb::Direction::Outbound,
            Direction::Inbound => pb::Direction::Inbound,
        }
        .into(),
        src: e.src.to_string(),
        dst: e.dst.to_string(),
        protocol: match e.protocol {
            Protocol::Tcp => pb::Protocol::Tcp,
            Protocol::Udp => pb::Protocol::Udp,
        }
        .into(),
        reason: e.reason.clone().unwrap_or_default(),
        peer: e.peer.as_ref().map(pod_to_pb),
    }
}

pub fn evidence_from_pb(e: pb::Evidence) -> Result<Evidence, ConvertError> {
    Ok(Evidence {
        kind: kind_from_pb(e.kind)?,
        node: e.node,
        pod: e.pod.map(pod_from_pb),
        container: Some(e.container).filter(|c| !c.is_empty()),
        process: e.process.map(|p| Process {
            pid: p.pid,
            comm: p.comm,
        }),
        first_seen: time_from_pb(e.first_seen.as_ref(), "first_seen")?,
        last_seen: time_from_pb(e.last_seen.as_ref(), "last_seen")?,
        count: e.count,
        attribution: attribution_from_pb(e.attribution)?,
        direction: direction_from_pb(e.direction)?,
        src: addr_from_pb(&e.src, "src")?,
        dst: addr_from_pb(&e.dst, "dst")?,
        protocol: protocol_from_pb(e.protocol)?,
        reason: Some(e.reason).filter(|r| !r.is_empty()),
        peer: e.peer.map(pod_from_pb),
    })
}

pub fn filter_to_pb(f: &Filter) -> pb::EvidenceFilter {
    pb::EvidenceFilter {
        namespace: f.namespace.clone().unwrap_or_default(),
        pod: f.pod.clone().unwrap_or_default(),
        since: f.since.map(time_to_pb),
        kinds: f.kinds.iter().map(|k| kind_to_pb(*k).into()).collect(),
        include_unattributed: f.include_unattributed,
    }
}

pub fn filter_from_pb(f: Option<pb::EvidenceFilter>) -> Result<Filter, ConvertError> {
    let f = f.unwrap_or_default();
    Ok(Filter {
        namespace: Some(f.namespace).filter(|s| !s.is_empty()),
        pod: Some(f.pod).filter(|s| !s.is_empty()),
        since: f
            .since
            .as_ref()
            .map(|t| time_from_pb(Some(t), "since"))
            .transpose()?,
        kinds: f
            .kinds
            .into_iter()
            .map(kind_from_pb)
            .collect::<Result<_, _>>()?,
        include_unattributed: f.include_unattributed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Evidence {
        Evidence {
            kind: Kind::ConnectionRefused,
            node: "n1".into(),
            pod: Some(PodRef {
                namespace: "ns".into(),
                name: "p".into(),
                uid: "u".into(),
            }),
            container: Some("c".into()),
            process: Some(Process {
                pid: 7,
                comm: "curl".into(),
            }),
            first_seen: SystemTime::UNIX_EPOCH + Duration::new(10, 5),
            last_seen: SystemTime::UNIX_EPOCH + Duration::new(20, 999_999_999),
            count: 3,
            attribution: Attribution::Ip,
            direction: Direction::Inbound,
            src: "[fd00::2]:5000".parse().unwrap(),
            dst: "10.0.0.1:80".parse().unwrap(),
            protocol: Protocol::Tcp,
            reason: Some("NO_SOCKET".into()),
            peer: None,
        }
    }

    #[test]
    fn evidence_round_trips() {
        let e = sample();
        assert_eq!(evidence_from_pb(evidence_to_pb(&e)).unwrap(), e);
        let mut bare = sample();
        bare.pod = None;
        bare.container = None;
        bare.process = None;
        bare.reason = None;
        bare.attribution = Attribution::None;
        assert_eq!(evidence_from_pb(evidence_to_pb(&bare)).unwrap(), bare);
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        let mut m = evidence_to_pb(&sample());
        m.kind = 99;
        assert!(matches!(
            evidence_from_pb(m),
            Err(ConvertError::UnknownEnum { field: "kind", .. })
        ));
        let mut m = evidence_to_pb(&sample());
        m.kind = 0;
        assert!(evidence_from_pb(m).is_err());
        let mut m = evidence_to_pb(&sample());
        m.src = "nonsense".into();
        assert!(matches!(
            evidence_from_pb(m),
            Err(ConvertError::BadAddress { field: "src", .. })
        ));
        let mut m = evidence_to_pb(&sample());
        m.last_seen = Some(prost_types::Timestamp {
            seconds: -1,
            nanos: 0,
        });
        assert!(evidence_from_pb(m).is_err());
        let mut m = evidence_to_pb(&sample());
        m.first_seen = Some(prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 2_000_000_000,
        });
        assert!(evidence_from_pb(m).is_err());
        let mut m = evidence_to_pb(&sample());
        m.first_seen = None;
        assert!(matches!(
            evidence_from_pb(m),
            Err(ConvertError::Missing { .. })
        ));
        let mut m = evidence_to_pb(&sample());
        m.direction = -3;
        assert!(evidence_from_pb(m).is_err());
    }

    #[test]
    fn filter_round_trips() {
        let f = Filter {
            namespace: Some("ns".into()),
            pod: Some("p".into()),
            since: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(5)),
            kinds: vec![Kind::Dns, Kind::OomKill],
            include_unattributed: true,
        };
        assert_eq!(filter_from_pb(Some(filter_to_pb(&f))).unwrap(), f);
        assert_eq!(filter_from_pb(None).unwrap(), Filter::default());
    }
}
