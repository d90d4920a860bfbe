//! The domain model: what the agent records and the CLI shows. Kind, attribution and direction
//! names are stable snake_case strings shared by the proto enums, the JSON output and metrics.

use std::{fmt, net::SocketAddr, time::SystemTime};

use serde::{Deserialize, Serialize};

/// Which silent failure a record describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    ConnectionRefused,
    ConnectionTimeout,
    PacketDrop,
    Dns,
    OomKill,
    CpuThrottling,
}

impl Kind {
    /// Every kind, in the order the CLI lists them.
    pub const ALL: [Kind; 6] = [
        Kind::ConnectionRefused,
        Kind::ConnectionTimeout,
        Kind::PacketDrop,
        Kind::Dns,
        Kind::OomKill,
        Kind::CpuThrottling,
    ];

    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ConnectionRefused => "connection_refused",
            Kind::ConnectionTimeout => "connection_timeout",
            Kind::PacketDrop => "packet_drop",
            Kind::Dns => "dns",
            Kind::OomKill => "oom_kill",
            Kind::CpuThrottling => "cpu_throttling",
        }
    }

    /// The layer of the stack a kind points at, as the triage method names it.
    pub fn layer(self) -> &'static str {
        match self {
            Kind::ConnectionRefused | Kind::ConnectionTimeout => "connection",
            Kind::PacketDrop => "network policy / packet path",
            Kind::Dns => "DNS",
            Kind::OomKill => "memory",
            Kind::CpuThrottling => "CPU",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Kind::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown kind {s:?} (expected one of: {})", names.join(", "))
            })
    }
}

/// How a record was tied to its pod, strongest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attribution {
    /// The cgroup of the process involved: exact.
    Cgroup,
    /// The socket involved: exact.
    Socket,
    /// The pod IP at the time of the event.
    Ip,
    /// Not tied to a pod of this node.
    None,
}

impl Attribution {
    pub fn as_str(self) -> &'static str {
        match self {
            Attribution::Cgroup => "cgroup",
            Attribution::Socket => "socket",
            Attribution::Ip => "ip",
            Attribution::None => "none",
        }
    }
}

/// Which way the failed traffic went, seen from the record's pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The pod's own attempt failed.
    Outbound,
    /// The pod failed someone else's attempt.
    Inbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// Transport protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A pod by its API identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The process involved, when the kernel knew it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
}

/// One aggregated record: repeats of the same failure counted, with first and last sighting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evidence {
    pub kind: Kind,
    pub node: String,
    /// `None` when [`Attribution::None`].
    pub pod: Option<PodRef>,
    pub container: Option<String>,
    pub process: Option<Process>,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
    pub count: u64,
    pub attribution: Attribution,
    pub direction: Direction,
    /// The side that initiated the traffic.
    pub src: SocketAddr,
    /// The side that received it.
    pub dst: SocketAddr,
    pub protocol: Protocol,
    /// The kernel's reason, when it gave one.
    pub reason: Option<String>,
    /// The pod at the other end, when known.
    pub peer: Option<PodRef>,
}

/// One occurrence of a failure, attributed, on its way to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Occurrence {
    pub kind: Kind,
    pub at: SystemTime,
    pub pod: Option<PodRef>,
    pub container: Option<String>,
    pub process: Option<Process>,
    pub attribution: Attribution,
    pub direction: Direction,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub protocol: Protocol,
    pub reason: Option<String>,
    pub peer: Option<PodRef>,
}

/// What a query or watch asks for. Empty fields match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub since: Option<SystemTime>,
    pub kinds: Vec<Kind>,
    pub include_unattributed: bool,
}

impl Filter {
    /// Whether a record passes this filter.
    pub fn matches(&self, e: &Evidence) -> bool {
        if !self.kinds.is_empty() && !self.kinds.contains(&e.kind) {
            return false;
        }
        if let Some(since) = self.since
            && e.last_seen < since
        {
            return false;
        }
        match &e.pod {
            None => self.include_unattributed && self.namespace.is_none() && self.pod.is_none(),
            Some(pod) => {
                self.namespace
                    .as_ref()
                    .is_none_or(|ns| *ns == pod.namespace)
                    && self.pod.as_ref().is_none_or(|name| *name == pod.name)
            }
        }
    }
}

/// Formats a socket address the way the JSON contract wants: "ip:port", "[ip6]:port".
pub fn endpoint(addr: &SocketAddr) -> String {
    addr.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    pub(crate) fn sample(ns: &str, name: &str) -> Evidence {
        Evidence {
            kind: Kind::ConnectionRefused,
            node: "n1".into(),
            pod: Some(PodRef {
                namespace: ns.into(),
                name: name.into(),
                uid: "u1".into(),
            }),
            container: Some("app".into()),
            process: None,
            first_seen: SystemTime::UNIX_EPOCH + Duration::from_secs(100),
            last_seen: SystemTime::UNIX_EPOCH + Duration::from_secs(200),
            count: 1,
            attribution: Attribution::Cgroup,
            direction: Direction::Outbound,
            src: "10.0.0.1:40000".parse().unwrap(),
            dst: "10.0.0.2:80".parse().unwrap(),
            protocol: Protocol::Tcp,
            reason: None,
            peer: None,
        }
    }

    #[test]
    fn kind_names_round_trip() {
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>().unwrap(), k);
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.as_str())
            );
        }
        assert!(
            "refused"
                .parse::<Kind>()
                .unwrap_err()
                .contains("connection_refused")
        );
    }

    #[test]
    fn filter_by_pod_namespace_since_and_kind() {
        let e = sample("default", "client");
        let mut f = Filter::default();
        assert!(f.matches(&e));
        f.namespace = Some("default".into());
        f.pod = Some("client".into());
        assert!(f.matches(&e));
        f.pod = Some("server".into());
        assert!(!f.matches(&e));
        f.pod = Some("client".into());
        f.namespace = Some("other".into());
        assert!(!f.matches(&e));
        f.namespace = Some("default".into());
        f.since = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(201));
        assert!(!f.matches(&e));
        f.since = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(200));
        assert!(f.matches(&e));
        f.kinds = vec![Kind::Dns];
        assert!(!f.matches(&e));
    }

    #[test]
    fn unattributed_only_when_asked_and_unfiltered_by_pod() {
        let mut e = sample("default", "client");
        e.pod = None;
        let mut f = Filter::default();
        assert!(!f.matches(&e));
        f.include_unattributed = true;
        assert!(f.matches(&e));
        f.namespace = Some("default".into());
        assert!(!f.matches(&e));
    }

    #[test]
    fn ipv6_endpoints_are_bracketed() {
        assert_eq!(endpoint(&"[fd00::1]:80".parse().unwrap()), "[fd00::1]:80");
    }
}
