//! Builders of occurrences and evidence for tests (unit, in-process gRPC, fuzzing): one place,
//! sensible defaults, and a method per thing a test varies.
//!
//! ```
//! use triage_agent::evidence::fixtures::refused;
//! let e = refused().pod("shop", "web").count(7).evidence();
//! assert_eq!(e.count, 7);
//! ```

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use super::{
    Attribution, Cause, Connection, CpuThrottling, Detail, Direction, Drop, Evidence, Occurrence,
    OomKill, OomSource, PodRef, Process, Protocol, Subject,
};

/// A fixed instant `s` seconds after a base time (2023-11-14T22:13:20Z + s).
pub fn t(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
}

/// A pod reference with a UID derived from the name.
pub fn pod_ref(namespace: &str, name: &str) -> Arc<PodRef> {
    Arc::new(PodRef {
        namespace: namespace.into(),
        name: name.into(),
        uid: format!("uid-{name}"),
    })
}

/// Builds one occurrence or record; defaults describe an outbound refusal from
/// `default/client` (container `app`, process `curl[7]`) to 10.0.0.2:8080.
#[derive(Clone, Debug)]
pub struct Builder {
    node: String,
    at: SystemTime,
    first_seen: Option<SystemTime>,
    count: u64,
    subject: Subject,
    detail: Detail,
}

/// An outbound connection refusal.
pub fn refused() -> Builder {
    Builder {
        node: "node-a".into(),
        at: t(0),
        first_seen: None,
        count: 1,
        subject: Subject {
            pod: Some(pod_ref("default", "client")),
            container: Some("app".into()),
            process: Some(Process {
                pid: 7,
                comm: "curl".into(),
            }),
            attribution: Attribution::Cgroup,
        },
        detail: Detail::ConnectionRefused(Connection {
            direction: Direction::Outbound,
            src: addr("10.0.0.1:40000"),
            dst: addr("10.0.0.2:8080"),
            protocol: Protocol::Tcp,
            reason: None,
            peer: None,
            cause: Some(Cause::NoListener),
            syn_retransmits: 0,
        }),
    }
}

/// An outbound connection timeout (SYN never answered, 2 retransmissions).
pub fn timeout() -> Builder {
    let mut b = refused();
    b.detail = Detail::ConnectionTimeout(Connection {
        direction: Direction::Outbound,
        src: addr("10.0.0.1:40000"),
        dst: addr("10.0.0.2:5432"),
        protocol: Protocol::Tcp,
        reason: None,
        peer: None,
        cause: None,
        syn_retransmits: 2,
    });
    b
}

/// An outbound TCP SYN dropped by netfilter, by its socket's cgroup.
pub fn dropped() -> Builder {
    let mut b = refused();
    b.detail = Detail::PacketDrop(Drop {
        direction: Direction::Outbound,
        src: addr("10.0.0.1:40000"),
        dst: addr("10.0.0.2:5432"),
        protocol: Protocol::Tcp,
        reason: "NETFILTER_DROP".into(),
        peer: None,
        tcp_flags: Some(0x02),
        location: None,
    });
    b
}

/// A worker child (`worker[42]`) of container `app` killed at a 64 MiB limit, seen by the
/// kernel event and confirmed by the cgroup counter.
pub fn oom_killed() -> Builder {
    let mut b = refused();
    b.subject.process = Some(Process {
        pid: 42,
        comm: "worker".into(),
    });
    b.detail = Detail::OomKill(OomKill {
        main_process: Some(false),
        memory_limit_bytes: Some(64 << 20),
        memory_usage_bytes: Some(64 << 20),
        victim_rss_bytes: Some(60 << 20),
        oom_score_adj: Some(0),
        group_kill: None,
        source: OomSource::Kernel,
    });
    b
}

/// Container `app` throttled in 40 of 50 periods of a 5 s interval at a 0.1-core limit.
pub fn throttled() -> Builder {
    let mut b = refused();
    b.subject.process = None;
    b.detail = Detail::CpuThrottling(CpuThrottling {
        throttled_periods: 40,
        total_periods: 50,
        throttled_us: 3_600_000,
        limit_millicores: Some(100),
        interval_ms: 5000,
        cpu_pressure_some_avg10: Some(8_512),
    });
    b
}

fn addr(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

impl Builder {
    pub fn node(mut self, node: &str) -> Self {
        self.node = node.into();
        self
    }
    /// Occurrence time (and the record's last_seen), in seconds after [`t`]'s base.
    pub fn at(mut self, s: u64) -> Self {
        self.at = t(s);
        self
    }
    pub fn at_time(mut self, at: SystemTime) -> Self {
        self.at = at;
        self
    }
    pub fn last_seen(self, s: u64) -> Self {
        self.at(s)
    }
    pub fn first_seen(mut self, s: u64) -> Self {
        self.first_seen = Some(t(s));
        self
    }
    pub fn count(mut self, n: u64) -> Self {
        self.count = n;
        self
    }
    pub fn pod(mut self, namespace: &str, name: &str) -> Self {
        self.subject.pod = Some(pod_ref(namespace, name));
        self
    }
    pub fn pod_uid(mut self, namespace: &str, name: &str, uid: &str) -> Self {
        self.subject.pod = Some(Arc::new(PodRef {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
        }));
        self
    }
    pub fn unattributed(mut self) -> Self {
        self.subject.pod = None;
        self.subject.container = None;
        self.subject.attribution = Attribution::None;
        self
    }
    pub fn container(mut self, name: Option<&str>) -> Self {
        self.subject.container = name.map(Into::into);
        self
    }
    pub fn process(mut self, pid: u32, comm: &str) -> Self {
        self.subject.process = Some(Process {
            pid,
            comm: comm.into(),
        });
        self
    }
    pub fn no_process(mut self) -> Self {
        self.subject.process = None;
        self
    }
    pub fn attribution(mut self, a: Attribution) -> Self {
        self.subject.attribution = a;
        self
    }
    pub fn direction(mut self, dir: Direction) -> Self {
        match &mut self.detail {
            Detail::ConnectionRefused(c) | Detail::ConnectionTimeout(c) => c.direction = dir,
            Detail::PacketDrop(d) => d.direction = dir,
            Detail::Dns(_) => {}
            Detail::OomKill(_) | Detail::CpuThrottling(_) => {}
        }
        self
    }
    pub fn src(mut self, s: &str) -> Self {
        match &mut self.detail {
            Detail::ConnectionRefused(c) | Detail::ConnectionTimeout(c) => c.src = addr(s),
            Detail::PacketDrop(d) => d.src = addr(s),
            Detail::Dns(d) => d.client = addr(s),
            Detail::OomKill(_) | Detail::CpuThrottling(_) => {}
        }
        self
    }
    pub fn dst(mut self, s: &str) -> Self {
        match &mut self.detail {
            Detail::ConnectionRefused(c) | Detail::ConnectionTimeout(c) => c.dst = addr(s),
            Detail::PacketDrop(d) => d.dst = addr(s),
            Detail::Dns(d) => d.server = addr(s),
            Detail::OomKill(_) | Detail::CpuThrottling(_) => {}
        }
        self
    }
    pub fn reason(mut self, r: &str) -> Self {
        match &mut self.detail {
            Detail::ConnectionRefused(c) | Detail::ConnectionTimeout(c) => {
                c.reason = Some(r.into());
            }
            Detail::PacketDrop(d) => d.reason = r.into(),
            Detail::Dns(d) => d.query = r.into(),
            Detail::OomKill(_) | Detail::CpuThrottling(_) => {}
        }
        self
    }
    pub fn cause(mut self, cause: Option<Cause>) -> Self {
        if let Detail::ConnectionRefused(c) = &mut self.detail {
            c.cause = cause;
        }
        self
    }
    /// OOM kills: whether the victim was the main process.
    pub fn main_process(mut self, main: Option<bool>) -> Self {
        if let Detail::OomKill(o) = &mut self.detail {
            o.main_process = main;
        }
        self
    }
    /// OOM kills: which source saw it.
    pub fn oom_source(mut self, source: OomSource) -> Self {
        if let Detail::OomKill(o) = &mut self.detail {
            o.source = source;
        }
        self
    }
    pub fn peer(mut self, namespace: &str, name: &str) -> Self {
        let peer = Some(pod_ref(namespace, name));
        match &mut self.detail {
            Detail::ConnectionRefused(c) | Detail::ConnectionTimeout(c) => c.peer = peer,
            Detail::PacketDrop(d) => d.peer = peer,
            Detail::Dns(d) => d.server_pod = peer,
            Detail::OomKill(_) | Detail::CpuThrottling(_) => {}
        }
        self
    }

    /// One sighting at the builder's time (or `count` of them, first seen at `first_seen`).
    pub fn occurrence(self) -> Occurrence {
        Occurrence {
            at: self.at,
            first_at: self.first_seen.unwrap_or(self.at).min(self.at),
            count: self.count,
            subject: self.subject,
            detail: self.detail,
        }
    }

    pub fn evidence(self) -> Evidence {
        Evidence {
            node: self.node.as_str().into(),
            subject: self.subject,
            first_seen: self.first_seen.unwrap_or(self.at).min(self.at),
            last_seen: self.at,
            count: self.count,
            detail: self.detail,
            folded: None,
        }
    }
}
