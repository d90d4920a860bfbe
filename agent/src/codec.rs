//! Conversions between the domain model ([`crate::evidence`], [`crate::loss`]) and the gRPC
//! types (`agent.v1`). The only place that knows both. Enum values convert through their stable
//! names (`connection_refused` <-> `EVIDENCE_KIND_CONNECTION_REFUSED`), so a name is written
//! once. Decoding a peer's message never panics: unknown enum values, malformed addresses and
//! out-of-range timestamps become [`ConvertError`]s.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use triage_agent_proto::v1 as pb;

use crate::{
    evidence::{
        Attribution, Cause, Connection, CpuThrottling, Detail, Dns, DnsLookups, DnsOutcome, Drop,
        Evidence, Filter, Kind, Named, OomKill, OomSource, PodRef, Process, Protocol, Subject,
        TCP_FLAGS, tcp_flags_text,
    },
    loss::{Loss, LossCounts},
};

/// The latest time the CLI accepts from a peer: 9999-12-31T23:59:59Z, the last instant RFC 3339
/// (and chrono) can print. Later values are rejected, not rendered.
pub const MAX_TIMESTAMP_SECS: u64 = 253_402_300_799;

/// A message from a peer that does not describe valid evidence.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConvertError {
    #[error("unknown {field} value {value}")]
    UnknownEnum { field: &'static str, value: i32 },
    #[error("unknown {field} name {value:?}")]
    Unknown { field: &'static str, value: String },
    #[error("field {field} is missing")]
    Missing { field: &'static str },
    #[error("field {field} is not an \"ip:port\" address: {value:?}")]
    BadAddress { field: &'static str, value: String },
    #[error("field {field} is not a valid timestamp")]
    BadTimestamp { field: &'static str },
    #[error("evidence of kind {kind} carries no detail this version understands")]
    MissingDetail { kind: Kind },
}

/// A generated proto enum: its value-name prefix and its name lookups.
trait PbEnum: Sized + Into<i32> + TryFrom<i32> {
    const PREFIX: &'static str;
    fn pb_name(&self) -> &'static str;
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
fn to_pb<P: PbEnum>(value: impl Named) -> i32 {
    let name = format!("{}{}", P::PREFIX, value.as_str().to_ascii_uppercase());
    P::from_pb_name(&name).map_or(0, Into::into)
}

/// Proto value -> domain value, through the stable name.
fn from_pb<P: PbEnum, D: Named>(field: &'static str, value: i32) -> Result<D, ConvertError> {
    let unknown = ConvertError::UnknownEnum { field, value };
    let p = P::try_from(value).map_err(|_| unknown.clone())?;
    let name = p
        .pb_name()
        .strip_prefix(P::PREFIX)
        .ok_or(unknown.clone())?
        .to_ascii_lowercase();
    D::from_name(&name).map_err(|_| unknown)
}

pub fn kind_to_pb(k: Kind) -> i32 {
    to_pb::<pb::EvidenceKind>(k)
}

pub fn kind_from_pb(v: i32) -> Result<Kind, ConvertError> {
    from_pb::<pb::EvidenceKind, _>("kind", v)
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
    let secs = u64::try_from(t.seconds)
        .ok()
        .filter(|s| *s <= MAX_TIMESTAMP_SECS)
        .ok_or(ConvertError::BadTimestamp { field })?;
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

fn pod_from_pb(p: pb::PodRef) -> Arc<PodRef> {
    Arc::new(PodRef {
        namespace: p.namespace,
        name: p.name,
        uid: p.uid,
    })
}

fn addr_from_pb(s: &str, field: &'static str) -> Result<SocketAddr, ConvertError> {
    s.parse().map_err(|_| ConvertError::BadAddress {
        field,
        value: s.to_owned(),
    })
}

fn connection_to_pb(c: &Connection) -> pb::ConnectionDetail {
    pb::ConnectionDetail {
        direction: to_pb::<pb::Direction>(c.direction),
        src: c.src.to_string(),
        dst: c.dst.to_string(),
        protocol: to_pb::<pb::Protocol>(c.protocol),
        reason: c.reason.as_deref().unwrap_or_default().to_owned(),
        peer: c.peer.as_deref().map(pod_to_pb),
        cause: c.cause.map(Cause::as_str).unwrap_or_default().to_owned(),
        syn_retransmits: c.syn_retransmits,
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

fn drop_to_pb(d: &Drop) -> pb::DropDetail {
    pb::DropDetail {
        direction: to_pb::<pb::Direction>(d.direction),
        src: d.src.to_string(),
        dst: d.dst.to_string(),
        protocol: to_pb::<pb::Protocol>(d.protocol),
        reason: d.reason.to_string(),
        peer: d.peer.as_deref().map(pod_to_pb),
        tcp_flags: d.tcp_flags.map(tcp_flags_text).unwrap_or_default(),
        location: d.location.as_deref().unwrap_or_default().to_owned(),
    }
}

fn drop_from_pb(d: pb::DropDetail) -> Result<Drop, ConvertError> {
    let protocol = from_pb::<pb::Protocol, _>("protocol", d.protocol)?;
    Ok(Drop {
        direction: from_pb::<pb::Direction, _>("direction", d.direction)?,
        src: addr_from_pb(&d.src, "src")?,
        dst: addr_from_pb(&d.dst, "dst")?,
        protocol,
        reason: d.reason.into(),
        peer: d.peer.map(pod_from_pb),
        tcp_flags: (protocol == Protocol::Tcp).then(|| tcp_flags_from_text(&d.tcp_flags)),
        location: (!d.location.is_empty()).then(|| d.location.into()),
    })
}

fn dns_to_pb(d: &Dns) -> pb::DnsDetail {
    pb::DnsDetail {
        query: d.query.to_string(),
        qtype: d.qtype.to_string(),
        outcome: d.outcome.as_str().to_owned(),
        rcode: d.rcode.as_deref().unwrap_or_default().to_owned(),
        client: d.client.to_string(),
        server: d.server.to_string(),
        protocol: to_pb::<pb::Protocol>(d.protocol),
        latency_ms: d.latency_ms,
        server_pod: d.server_pod.as_deref().map(pod_to_pb),
        reached_server: d.reached_server,
        search_nxdomains: d.search_nxdomains,
    }
}

fn dns_from_pb(d: pb::DnsDetail) -> Result<Dns, ConvertError> {
    Ok(Dns {
        query: d.query.into(),
        qtype: d.qtype.into(),
        outcome: d
            .outcome
            .parse::<DnsOutcome>()
            .map_err(|_| ConvertError::Unknown {
                field: "outcome",
                value: d.outcome.clone(),
            })?,
        rcode: Some(d.rcode).filter(|r| !r.is_empty()).map(Into::into),
        client: addr_from_pb(&d.client, "client")?,
        server: addr_from_pb(&d.server, "server")?,
        protocol: from_pb::<pb::Protocol, _>("protocol", d.protocol)?,
        latency_ms: d.latency_ms,
        server_pod: d.server_pod.map(pod_from_pb),
        reached_server: d.reached_server,
        search_nxdomains: d.search_nxdomains,
    })
}

/// A pod's DNS lookup counters for the wire.
pub fn dns_lookups_to_pb(pod: &PodRef, l: &DnsLookups) -> pb::DnsLookups {
    pb::DnsLookups {
        pod: Some(pod_to_pb(pod)),
        lookups: l.lookups,
        succeeded: l.succeeded,
        failed: l.failed,
        timeouts: l.timeouts,
        slow: l.slow,
        latency_sum_us: l.latency_sum_us,
        latency_max_us: l.latency_max_us,
    }
}

/// A pod's DNS lookup counters from the wire (`None` without a pod).
pub fn dns_lookups_from_pb(l: pb::DnsLookups) -> Option<(Arc<PodRef>, DnsLookups)> {
    Some((
        pod_from_pb(l.pod?),
        DnsLookups {
            lookups: l.lookups,
            succeeded: l.succeeded,
            failed: l.failed,
            timeouts: l.timeouts,
            slow: l.slow,
            latency_sum_us: l.latency_sum_us,
            latency_max_us: l.latency_max_us,
        },
    ))
}

/// "SYN|ACK" -> bits; unknown names are ignored.
fn tcp_flags_from_text(text: &str) -> u8 {
    text.split('|')
        .filter_map(|f| TCP_FLAGS.iter().find(|(_, name)| *name == f))
        .fold(0, |a, (bit, _)| a | bit)
}

pub fn evidence_to_pb(e: &Evidence) -> pb::Evidence {
    let s = &e.subject;
    let mut m = pb::Evidence {
        kind: kind_to_pb(e.kind()),
        node: e.node.to_string(),
        pod: s.pod.as_deref().map(pod_to_pb),
        container: s.container.as_deref().unwrap_or_default().to_owned(),
        process: s.process.as_ref().map(|p| pb::Process {
            pid: p.pid,
            comm: p.comm.to_string(),
        }),
        first_seen: Some(time_to_pb(e.first_seen)),
        last_seen: Some(time_to_pb(e.last_seen)),
        count: e.count,
        attribution: to_pb::<pb::Attribution>(s.attribution),
        ..Default::default()
    };
    // Fields 10-15 for clients that predate `detail`: the traffic kinds have them.
    if let Some((direction, src, dst, peer)) = e.detail.endpoints() {
        m.direction = to_pb::<pb::Direction>(direction);
        m.src = src.to_string();
        m.dst = dst.to_string();
        m.peer = peer.map(|p| pod_to_pb(p));
    }
    match &e.detail {
        Detail::ConnectionRefused(c) | Detail::ConnectionTimeout(c) => {
            let d = connection_to_pb(c);
            m.protocol = d.protocol;
            m.reason.clone_from(&d.reason);
            m.detail = Some(pb::evidence::Detail::Connection(d));
        }
        Detail::PacketDrop(d) => {
            let d = drop_to_pb(d);
            m.protocol = d.protocol;
            m.reason.clone_from(&d.reason);
            m.detail = Some(pb::evidence::Detail::Drop(d));
        }
        Detail::Dns(d) => {
            let d = dns_to_pb(d);
            m.protocol = d.protocol;
            m.reason.clone_from(&d.rcode);
            m.detail = Some(pb::evidence::Detail::Dns(d));
        }
        Detail::OomKill(o) => {
            m.detail = Some(pb::evidence::Detail::OomKill(pb::OomKillDetail {
                main_process: o.main_process,
                memory_limit_bytes: o.memory_limit_bytes,
                memory_usage_bytes: o.memory_usage_bytes,
                victim_rss_bytes: o.victim_rss_bytes,
                oom_score_adj: o.oom_score_adj.map(i32::from),
                group_kill: o.group_kill,
                source: o.source.as_str().to_owned(),
            }));
        }
        Detail::CpuThrottling(c) => {
            m.detail = Some(pb::evidence::Detail::CpuThrottling(
                pb::CpuThrottlingDetail {
                    throttled_periods: c.throttled_periods,
                    total_periods: c.total_periods,
                    throttled_us: c.throttled_us,
                    limit_millicores: c.limit_millicores,
                    interval_ms: c.interval_ms,
                    cpu_pressure_some_avg10: c.cpu_pressure_some_avg10,
                },
            ));
        }
    }
    m
}

pub fn evidence_from_pb(e: pb::Evidence) -> Result<Evidence, ConvertError> {
    let kind = kind_from_pb(e.kind)?;
    let detail = match (kind, e.detail) {
        (Kind::ConnectionRefused, Some(pb::evidence::Detail::Connection(c))) => {
            Detail::ConnectionRefused(connection_from_pb(c)?)
        }
        (Kind::ConnectionTimeout, Some(pb::evidence::Detail::Connection(c))) => {
            Detail::ConnectionTimeout(connection_from_pb(c)?)
        }
        (Kind::PacketDrop, Some(pb::evidence::Detail::Drop(d))) => {
            Detail::PacketDrop(drop_from_pb(d)?)
        }
        (Kind::Dns, Some(pb::evidence::Detail::Dns(d))) => Detail::Dns(dns_from_pb(d)?),
        (Kind::OomKill, Some(pb::evidence::Detail::OomKill(o))) => Detail::OomKill(OomKill {
            main_process: o.main_process,
            memory_limit_bytes: o.memory_limit_bytes,
            memory_usage_bytes: o.memory_usage_bytes,
            victim_rss_bytes: o.victim_rss_bytes,
            oom_score_adj: o.oom_score_adj.and_then(|v| i16::try_from(v).ok()),
            group_kill: o.group_kill,
            // A source this version does not know: the kernel saw it at least.
            source: OomSource::from_name(&o.source).unwrap_or(OomSource::Kernel),
        }),
        (Kind::CpuThrottling, Some(pb::evidence::Detail::CpuThrottling(c))) => {
            Detail::CpuThrottling(CpuThrottling {
                throttled_periods: c.throttled_periods,
                total_periods: c.total_periods,
                throttled_us: c.throttled_us,
                limit_millicores: c.limit_millicores,
                interval_ms: c.interval_ms,
                cpu_pressure_some_avg10: c.cpu_pressure_some_avg10,
            })
        }
        // An agent that predates `detail`: its refusals are in fields 10-15.
        (Kind::ConnectionRefused, None) => {
            Detail::ConnectionRefused(connection_from_pb(pb::ConnectionDetail {
                direction: e.direction,
                src: e.src,
                dst: e.dst,
                protocol: e.protocol,
                reason: e.reason,
                peer: e.peer,
                cause: String::new(),
                syn_retransmits: 0,
            })?)
        }
        _ => return Err(ConvertError::MissingDetail { kind }),
    };
    Ok(Evidence {
        node: e.node.into(),
        subject: Subject {
            pod: e.pod.map(pod_from_pb),
            container: Some(e.container).filter(|c| !c.is_empty()).map(Into::into),
            process: e.process.map(|p| Process {
                pid: p.pid,
                comm: p.comm.into(),
            }),
            attribution: from_pb::<pb::Attribution, Attribution>("attribution", e.attribution)?,
        },
        first_seen: time_from_pb(e.first_seen.as_ref(), "first_seen")?,
        last_seen: time_from_pb(e.last_seen.as_ref(), "last_seen")?,
        count: e.count,
        detail,
    })
}

/// Loss counters for the wire: every counter by name, plus fields 1-7 for older clients.
pub fn loss_to_pb(l: &LossCounts) -> pb::LossCounters {
    pb::LossCounters {
        ring_buffer_full: l.get(Loss::RingBufferFull),
        connect_table_full: l.get(Loss::ConnectTableFull),
        decode_errors: l.get(Loss::DecodeErrors),
        // Older clients had one pipeline counter for both channels.
        pipeline_full: l
            .get(Loss::PipelineFull)
            .saturating_add(l.get(Loss::StoreChannelFull)),
        store_evicted: l.get(Loss::StoreEvicted),
        attribution_expired: l.get(Loss::AttributionExpired),
        watch_lagged: l.get(Loss::WatchLagged),
        counts: l
            .iter()
            .map(|(loss, count)| pb::LossCount {
                name: loss.as_str().to_owned(),
                count,
                last: l.last(loss).map(time_to_pb),
            })
            .collect(),
    }
}

/// One loss counter as a peer reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerLoss {
    pub name: String,
    pub count: u64,
    /// When it last grew, if the peer says.
    pub last: Option<SystemTime>,
}

/// A peer's loss counters by name. Names this version does not know are kept (a newer agent's
/// counters are shown, never hidden); an agent that predates `counts` reports fields 1-7.
pub fn loss_from_pb(l: &pb::LossCounters) -> Vec<PeerLoss> {
    if !l.counts.is_empty() {
        return l
            .counts
            .iter()
            .map(|c| PeerLoss {
                name: c.name.clone(),
                count: c.count,
                last: c
                    .last
                    .as_ref()
                    .and_then(|t| time_from_pb(Some(t), "last").ok()),
            })
            .collect();
    }
    [
        (Loss::RingBufferFull, l.ring_buffer_full),
        (Loss::ConnectTableFull, l.connect_table_full),
        (Loss::DecodeErrors, l.decode_errors),
        (Loss::PipelineFull, l.pipeline_full),
        (Loss::StoreEvicted, l.store_evicted),
        (Loss::AttributionExpired, l.attribution_expired),
        (Loss::WatchLagged, l.watch_lagged),
    ]
    .into_iter()
    .map(|(loss, count)| PeerLoss {
        name: loss.as_str().to_owned(),
        count,
        last: None,
    })
    .collect()
}

pub fn filter_to_pb(f: &Filter) -> pb::EvidenceFilter {
    pb::EvidenceFilter {
        namespace: f.namespace.clone().unwrap_or_default(),
        pod: f.pod.clone().unwrap_or_default(),
        since: f.since.map(time_to_pb),
        kinds: f.kinds.iter().map(|k| kind_to_pb(*k)).collect(),
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
    use crate::evidence::{Direction, Protocol, fixtures::refused};

    fn sample() -> Evidence {
        refused()
            .cause(Some(Cause::NoListener))
            .attribution(Attribution::Ip)
            .direction(Direction::Inbound)
            .src("[fd00::2]:5000")
            .dst("10.0.0.1:80")
            .reason("NO_SOCKET")
            .first_seen(10)
            .at(20)
            .count(3)
            .evidence()
    }

    #[test]
    fn every_name_has_a_proto_value() {
        for k in Kind::ALL {
            assert_eq!(kind_from_pb(kind_to_pb(*k)).unwrap(), *k);
        }
        for a in Attribution::ALL {
            let v = to_pb::<pb::Attribution>(*a);
            assert_eq!(from_pb::<pb::Attribution, Attribution>("a", v).unwrap(), *a);
        }
        for d in Direction::ALL {
            let v = to_pb::<pb::Direction>(*d);
            assert_eq!(from_pb::<pb::Direction, Direction>("d", v).unwrap(), *d);
        }
        for p in Protocol::ALL {
            let v = to_pb::<pb::Protocol>(*p);
            assert_eq!(from_pb::<pb::Protocol, Protocol>("p", v).unwrap(), *p);
        }
    }

    #[test]
    fn evidence_round_trips() {
        let e = sample();
        assert_eq!(evidence_from_pb(evidence_to_pb(&e)).unwrap(), e);
        let bare = refused().unattributed().no_process().evidence();
        assert_eq!(evidence_from_pb(evidence_to_pb(&bare)).unwrap(), bare);
    }

    #[test]
    fn every_kind_round_trips() {
        use crate::evidence::fixtures::{dropped, oom_killed, throttled, timeout};
        for e in [
            oom_killed().evidence(),
            oom_killed()
                .no_process()
                .main_process(None)
                .oom_source(OomSource::Counter)
                .evidence(),
            throttled().evidence(),
            timeout().evidence(),
            dropped().peer("data", "db").evidence(),
            dropped().reason("NO_SOCKET").evidence(),
            refused().cause(Some(Cause::Rejected)).evidence(),
            refused().cause(None).evidence(),
        ] {
            assert_eq!(evidence_from_pb(evidence_to_pb(&e)).unwrap(), e);
        }
        let mut m = evidence_to_pb(&dropped().evidence());
        assert_eq!(
            (m.dst.as_str(), m.reason.as_str()),
            ("10.0.0.2:5432", "NETFILTER_DROP")
        );
        m.detail = None;
        assert!(matches!(
            evidence_from_pb(m),
            Err(ConvertError::MissingDetail {
                kind: Kind::PacketDrop
            })
        ));
    }

    #[test]
    fn old_agents_without_detail_still_decode_and_old_clients_see_fields() {
        let e = refused()
            .attribution(Attribution::Ip)
            .direction(Direction::Inbound)
            .src("[fd00::2]:5000")
            .dst("10.0.0.1:80")
            .reason("NO_SOCKET")
            .cause(None)
            .first_seen(10)
            .at(20)
            .count(3)
            .evidence();
        let mut m = evidence_to_pb(&e);
        assert_eq!(m.dst, "10.0.0.1:80", "legacy field filled for old clients");
        assert_eq!(m.reason, "NO_SOCKET");
        m.detail = None;
        assert_eq!(evidence_from_pb(m).unwrap(), e);
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        let with = |f: &dyn Fn(&mut pb::Evidence)| {
            let mut m = evidence_to_pb(&sample());
            f(&mut m);
            evidence_from_pb(m)
        };
        assert!(matches!(
            with(&|m| m.kind = 99),
            Err(ConvertError::UnknownEnum { field: "kind", .. })
        ));
        assert!(with(&|m| m.kind = 0).is_err());
        assert!(matches!(
            with(&|m| {
                m.detail = None;
                m.src = "nonsense".into();
            }),
            Err(ConvertError::BadAddress { field: "src", .. })
        ));
        assert!(
            with(&|m| m.last_seen = Some(prost_types::Timestamp {
                seconds: -1,
                nanos: 0
            }))
            .is_err()
        );
        assert!(
            with(&|m| m.first_seen = Some(prost_types::Timestamp {
                seconds: i64::MAX,
                nanos: 0
            }))
            .is_err(),
            "past year 9999 is rejected, never rendered"
        );
        assert!(
            with(&|m| m.first_seen = Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 2_000_000_000
            }))
            .is_err()
        );
        assert!(matches!(
            with(&|m| m.first_seen = None),
            Err(ConvertError::Missing { .. })
        ));
        assert!(
            with(&|m| {
                m.detail = None;
                m.direction = -3;
            })
            .is_err()
        );
        assert!(matches!(
            with(&|m| {
                m.kind = kind_to_pb(Kind::Dns);
                m.detail = None;
            }),
            Err(ConvertError::MissingDetail { kind: Kind::Dns })
        ));
    }

    #[test]
    fn loss_counters_by_name_and_legacy() {
        let mut l = LossCounts::default();
        l.set(Loss::PipelineFull, 2);
        l.set(Loss::StoreChannelFull, 3);
        let m = loss_to_pb(&l);
        assert_eq!(m.pipeline_full, 5);
        let named = loss_from_pb(&m);
        assert!(
            named
                .iter()
                .any(|l| l.name == "store_channel_full" && l.count == 3)
        );
        let legacy = pb::LossCounters {
            ring_buffer_full: 4,
            ..Default::default()
        };
        assert!(
            loss_from_pb(&legacy)
                .iter()
                .any(|l| l.name == "ring_buffer_full" && l.count == 4 && l.last.is_none())
        );
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
