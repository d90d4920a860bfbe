//! Conversions between the domain model ([`crate::evidence`], [`crate::loss`]) and the gRPC
//! types (`agent.v1`): the fields every record has, times, loss counters, filters and DNS
//! lookup counters. Each kind converts its own detail (`KindDetail::to_pb` and `from_pb`, in
//! `evidence/kinds/`) with the helpers of [`crate::evidence::wire`]. Enum values convert through
//! their stable names (`connection_refused` <-> `EVIDENCE_KIND_CONNECTION_REFUSED`), so a name
//! is written once. Decoding a peer's message never panics: unknown enum values, malformed
//! addresses and out-of-range timestamps become [`ConvertError`]s.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use triage_agent_proto::v1 as pb;

pub use crate::evidence::wire::ConvertError;
use crate::{
    evidence::{
        Attribution, Detail, DnsLookups, Evidence, Filter, Folded, Kind, PodLosses, PodRef,
        Process, Subject,
        wire::{from_pb, pod_from_pb, pod_to_pb, to_pb},
    },
    loss::{Loss, LossCounts},
};

/// The latest time the CLI accepts from a peer: 9999-12-31T23:59:59Z, the last instant RFC 3339
/// (and chrono) can print. Later values are rejected, not rendered.
pub const MAX_TIMESTAMP_SECS: u64 = 253_402_300_799;

/// A kind for the wire.
pub fn kind_to_pb(k: Kind) -> i32 {
    to_pb::<pb::EvidenceKind>(k)
}

/// A kind from the wire.
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

/// A pod's kernel losses for the wire.
pub fn pod_losses_to_pb(pod: &PodRef, l: &PodLosses, last: SystemTime) -> pb::PodLosses {
    pb::PodLosses {
        pod: Some(pod_to_pb(pod)),
        connects: l.connects,
        occurrences: l.occurrences,
        dns_packets: l.dns_packets,
        last_lost: Some(time_to_pb(last)),
    }
}

/// A pod's kernel losses from the wire (`None` without a pod or a valid time).
pub fn pod_losses_from_pb(l: pb::PodLosses) -> Option<(Arc<PodRef>, PodLosses, SystemTime)> {
    let last = time_from_pb(l.last_lost.as_ref(), "last_lost").ok()?;
    Some((
        pod_from_pb(l.pod?),
        PodLosses {
            connects: l.connects,
            occurrences: l.occurrences,
            dns_packets: l.dns_packets,
        },
        last,
    ))
}

/// A record for the wire.
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
    e.detail.to_pb(&mut m);
    m.folded = e.folded.as_deref().map(Folded::to_pb);
    m
}

/// A record from the wire.
pub fn evidence_from_pb(mut e: pb::Evidence) -> Result<Evidence, ConvertError> {
    let kind = kind_from_pb(e.kind)?;
    let detail = Detail::from_pb(kind, &mut e)?;
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
        folded: match e.folded {
            Some(f) if detail.folding().is_some() => Some(Box::new(Folded::from_pb(f)?)),
            // Only inbound refusals and drops fold.
            _ => None,
        },
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
        since: l.since().map(time_to_pb),
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
    use crate::evidence::{Cause, Direction, OomSource, Protocol, fixtures::refused};

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
