//! Evidence -> OTLP: one log record per record update, its attributes named after
//! OpenTelemetry's semantic conventions where one exists (`k8s.*`, `process.*`, `network.*`,
//! `source.*`, `destination.*`, `dns.question.name`) and `triage.<json field>` for the rest,
//! so the JSON contract (docs/json.md) is the one place fields are defined.
//! <https://opentelemetry.io/docs/specs/semconv/resource/k8s/>

use std::{net::SocketAddr, time::SystemTime};

use serde_json::{Map, Value};
use triage_agent_proto::opentelemetry::proto::{
    collector::logs::v1::ExportLogsServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber},
    resource::v1::Resource,
};

use super::config::SERVICE_NAME;
use crate::{
    diagnose,
    evidence::{Detail, Evidence, Protocol, Severity, line::watch_line},
    text::rfc3339,
};

/// The instrumentation scope every record is sent under.
const SCOPE: &str = "triage-agent";

fn value(v: any_value::Value) -> Option<AnyValue> {
    Some(AnyValue { value: Some(v) })
}

fn string(key: &str, s: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: value(any_value::Value::StringValue(s.into())),
        ..KeyValue::default()
    }
}

fn int(key: &str, n: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: value(any_value::Value::IntValue(n)),
        ..KeyValue::default()
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The resource all records of this agent share: `service.name` (`triage-agent`),
/// `service.version`, `k8s.node.name`, then `configured` (`OTEL_RESOURCE_ATTRIBUTES`,
/// `OTEL_SERVICE_NAME`), which wins over the defaults.
pub fn resource(node: &str, configured: &[(String, String)]) -> Resource {
    let defaults = [
        ("service.name", SERVICE_NAME),
        ("service.version", env!("CARGO_PKG_VERSION")),
        ("k8s.node.name", node),
    ];
    let mut attributes: Vec<KeyValue> = defaults
        .iter()
        .filter(|(k, _)| !configured.iter().any(|(c, _)| c == k))
        .map(|(k, v)| string(k, *v))
        .collect();
    attributes.extend(configured.iter().map(|(k, v)| string(k, v.as_str())));
    Resource {
        attributes,
        ..Resource::default()
    }
}

/// How serious a record is (each kind says, `KindDetail::severity`): ERROR where something
/// failed outright (a refusal, a timeout, a kill, a failed lookup), WARN where it degraded or
/// may recover (drops that retransmissions can survive, throttling, slow or walked lookups,
/// NXDOMAIN that may be a search-path probe).
pub fn severity(detail: &Detail) -> SeverityNumber {
    match detail.severity() {
        Severity::Error => SeverityNumber::Error,
        Severity::Warn => SeverityNumber::Warn,
    }
}

/// A JSON field's value as an attribute value; `None` for null (absent attributes say
/// "unknown", as the JSON's nulls do).
fn json_value(v: &Value) -> Option<any_value::Value> {
    match v {
        Value::Null | Value::Array(_) | Value::Object(_) => None,
        Value::Bool(b) => Some(any_value::Value::BoolValue(*b)),
        Value::Number(n) => n
            .as_i64()
            .map(any_value::Value::IntValue)
            .or_else(|| n.as_f64().map(any_value::Value::DoubleValue)),
        Value::String(s) => Some(any_value::Value::StringValue(s.clone())),
    }
}

/// `source.*` or `destination.*` for an endpoint; for ICMP the "ports" are the type and code,
/// which are no ports, so they go to `triage.icmp_type` / `triage.icmp_code`.
fn endpoint(out: &mut Vec<KeyValue>, side: &str, addr: SocketAddr, protocol: Protocol) {
    out.push(string(&format!("{side}.address"), addr.ip().to_string()));
    if matches!(protocol, Protocol::Icmp | Protocol::Icmpv6) {
        let field = if side == "source" { "type" } else { "code" };
        out.push(int(&format!("triage.icmp_{field}"), i64::from(addr.port())));
    } else {
        out.push(int(&format!("{side}.port"), i64::from(addr.port())));
    }
}

/// The record's attributes (see the module doc and docs/otlp.md's mapping table).
pub fn attributes(e: &Evidence) -> Vec<KeyValue> {
    let mut out = Vec::with_capacity(24);
    let s = &e.subject;
    out.push(string("triage.kind", e.kind().as_str()));
    out.push(string("k8s.node.name", &*e.node));
    if let Some(pod) = e.pod() {
        out.push(string("k8s.namespace.name", pod.namespace.as_str()));
        out.push(string("k8s.pod.name", pod.name.as_str()));
        out.push(string("k8s.pod.uid", pod.uid.as_str()));
    }
    if let Some(container) = &s.container {
        out.push(string("k8s.container.name", &**container));
    }
    if let Some(p) = &s.process {
        out.push(int("process.pid", i64::from(p.pid)));
        out.push(string("process.executable.name", &*p.comm));
    }
    out.push(string("triage.attribution", s.attribution.as_str()));
    out.push(int(
        "triage.count",
        i64::try_from(e.count).unwrap_or(i64::MAX),
    ));
    out.push(string("triage.first_seen", rfc3339(e.first_seen)));
    out.push(string("triage.last_seen", rfc3339(e.last_seen)));

    if let Some((_, src, dst, peer)) = e.detail.endpoints() {
        let protocol = e.detail.protocol().unwrap_or(Protocol::Other);
        match protocol {
            Protocol::Tcp | Protocol::Udp => {
                out.push(string("network.transport", protocol.as_str()));
            }
            Protocol::Icmp | Protocol::Icmpv6 | Protocol::Other => {
                out.push(string("triage.protocol", protocol.as_str()));
            }
        }
        out.push(string(
            "network.type",
            if dst.is_ipv4() { "ipv4" } else { "ipv6" },
        ));
        endpoint(&mut out, "source", src, protocol);
        endpoint(&mut out, "destination", dst, protocol);
        // A folded record's peer is only its latest sender's pod: not named as the peer.
        if let Some(peer) = peer.filter(|_| e.folded.is_none()) {
            out.push(string("triage.peer.namespace", peer.namespace.as_str()));
            out.push(string("triage.peer.name", peer.name.as_str()));
            out.push(string("triage.peer.uid", peer.uid.as_str()));
        }
    }
    let semantic = e.detail.semantic();
    for (key, v) in &semantic.attributes {
        out.push(string(key, *v));
    }

    // Every other field of the kind, by its JSON name.
    let mut fields = Map::new();
    e.detail.json_fields(&mut fields);
    if let Some(f) = &e.folded {
        // triage.folded, triage.other_senders_count, triage.ports_more, triage.port_min and
        // triage.port_max; the senders, by name and count, in one string.
        f.json_fields(&mut fields);
        out.push(string(
            "triage.senders",
            f.top_text(crate::evidence::folded::SENDERS_NAMED),
        ));
    }
    for (name, v) in &fields {
        let mapped = matches!(name.as_str(), "src" | "dst" | "peer" | "protocol")
            || semantic.carried.contains(&name.as_str());
        if mapped {
            continue;
        }
        if let Some(v) = json_value(v) {
            out.push(KeyValue {
                key: format!("triage.{name}"),
                value: value(v),
                ..KeyValue::default()
            });
        }
    }
    out
}

/// The one-line summary and next step a person reads (the CLI's diagnosis of this record).
fn summary(e: &Evidence) -> (String, Option<String>) {
    let one_line = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    match diagnose::diagnose(std::slice::from_ref(e))
        .into_iter()
        .next()
    {
        Some(f) => (one_line(&f.summary), Some(one_line(&f.next_step))),
        None => (watch_line(e), None),
    }
}

/// A record's id, the same for every update of it (and across restarts of an agent with the
/// same version): SHA-256 over its node, kind, pod, container and key, each field
/// length-prefixed, the first 128 bits as 32 hex digits. A backend keeps the latest update of
/// each record by it. A pod chooses part of the key (the names it looks up, the ports it
/// dials), so the hash is one no pod can steer into another pod's record id: a backend that
/// deduplicates by it cannot be made to hide one pod's evidence behind another's.
pub fn record_id(e: &Evidence) -> String {
    use sha2::{Digest as _, Sha256};
    let key = e.detail.key();
    let key = if e.folded.is_some() {
        key.folded()
    } else {
        key
    };
    let key = format!("{key:?}");
    let container = e.subject.container.as_deref().unwrap_or_default();
    let mut h = Sha256::new();
    for field in [
        &*e.node,
        e.kind().as_str(),
        e.pod().map_or("", |p| p.uid.as_str()),
        container,
        key.as_str(),
    ] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// OpenTelemetry's `error.type`: the class of failure, low-cardinality: a drop's kernel reason,
/// a DNS outcome, else the kind.
fn error_type(e: &Evidence) -> String {
    e.detail
        .failure_counter()
        .and_then(|c| match c.family {
            "packet_drops" | "dns_failures" => c.labels().next().map(|(_, v)| v.to_owned()),
            _ => None,
        })
        .unwrap_or_else(|| e.kind().as_str().to_owned())
}

/// One evidence record update as an OTLP log record, observed at `observed`.
pub fn log_record(e: &Evidence, observed: SystemTime) -> LogRecord {
    let severity = severity(&e.detail);
    let (body, next_step) = summary(e);
    let mut attributes = attributes(e);
    attributes.push(string("triage.record_id", record_id(e)));
    attributes.push(string("error.type", error_type(e)));
    if let Some(step) = next_step {
        attributes.push(string("triage.next_step", step));
    }
    LogRecord {
        time_unix_nano: nanos(e.last_seen),
        observed_time_unix_nano: nanos(observed),
        severity_number: severity as i32,
        severity_text: match severity {
            SeverityNumber::Error => "ERROR",
            _ => "WARN",
        }
        .to_owned(),
        body: value(any_value::Value::StringValue(body)),
        attributes,
        event_name: format!("triage.{}", e.kind().as_str()),
        ..LogRecord::default()
    }
}

/// The pod (and container) a record is about, for its resource.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subject {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub container: Option<String>,
}

impl Subject {
    /// The subject of `e`; None for a record tied to no pod.
    pub fn of(e: &Evidence) -> Option<Subject> {
        e.pod().map(|p| Subject {
            namespace: p.namespace.to_string(),
            pod: p.name.to_string(),
            uid: p.uid.to_string(),
            container: e.subject.container.as_deref().map(str::to_owned),
        })
    }
}

/// One export request: a `ResourceLogs` per subject pod and container, its resource the
/// agent's plus `k8s.namespace.name`, `k8s.pod.name`, `k8s.pod.uid` and `k8s.container.name`
/// (what Loki indexes and the Collector's k8sattributes processor reads, so records are filed
/// under the pod they are about, not under the agent's pod); records tied to no pod under the
/// agent's resource alone. The agent is the instrumentation scope of every one.
pub fn request(
    resource: &Resource,
    records: Vec<(Option<Subject>, LogRecord)>,
) -> ExportLogsServiceRequest {
    let scope = InstrumentationScope {
        name: SCOPE.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..InstrumentationScope::default()
    };
    let mut groups: Vec<(Option<Subject>, Vec<LogRecord>)> = Vec::new();
    for (subject, record) in records {
        match groups.iter_mut().find(|(s, _)| *s == subject) {
            Some((_, rs)) => rs.push(record),
            None => groups.push((subject, vec![record])),
        }
    }
    ExportLogsServiceRequest {
        resource_logs: groups
            .into_iter()
            .map(|(subject, log_records)| {
                let mut resource = resource.clone();
                if let Some(s) = subject {
                    resource.attributes.retain(|kv| {
                        !kv.key.starts_with("k8s.pod.")
                            && kv.key != "k8s.namespace.name"
                            && kv.key != "k8s.container.name"
                    });
                    resource
                        .attributes
                        .push(string("k8s.namespace.name", s.namespace));
                    resource.attributes.push(string("k8s.pod.name", s.pod));
                    resource.attributes.push(string("k8s.pod.uid", s.uid));
                    if let Some(c) = s.container {
                        resource.attributes.push(string("k8s.container.name", c));
                    }
                }
                ResourceLogs {
                    resource: Some(resource),
                    scope_logs: vec![ScopeLogs {
                        scope: Some(scope.clone()),
                        log_records,
                        ..ScopeLogs::default()
                    }],
                    ..ResourceLogs::default()
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, sync::Arc};

    use super::*;
    use crate::evidence::{Attribution, Dns, DnsOutcome, fixtures};

    /// Attributes by key, values as text (the test reads them like a backend's query would).
    fn attrs(kvs: &[KeyValue]) -> HashMap<String, String> {
        let mut out = HashMap::new();
        for kv in kvs {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(n)) => n.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                Some(any_value::Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            assert!(
                out.insert(kv.key.clone(), v).is_none(),
                "duplicate attribute {}",
                kv.key
            );
        }
        out
    }

    /// A ResourceLogs per pod and container, the pod on its resource over the agent's; the
    /// record id the same for every update of a record and different between records.
    #[test]
    fn each_pod_is_its_own_resource_and_records_keep_their_id() {
        let web = fixtures::refused()
            .pod_uid("shop", "web", "u1")
            .dst("10.0.0.2:80")
            .evidence();
        let web2 = fixtures::refused()
            .pod_uid("shop", "web", "u1")
            .dst("10.0.0.3:80")
            .evidence();
        let db = fixtures::refused().pod_uid("shop", "db", "u2").evidence();
        let base = resource("node-a", &[("k8s.cluster.name".into(), "prod".into())]);
        let req = request(
            &base,
            [&web, &db, &web2]
                .into_iter()
                .map(|e| (Subject::of(e), log_record(e, fixtures::t(1))))
                .collect(),
        );
        assert_eq!(req.resource_logs.len(), 2);
        let r = |i: usize| {
            attrs(
                &req.resource_logs[i]
                    .resource
                    .clone()
                    .unwrap_or_default()
                    .attributes,
            )
        };
        assert_eq!(r(0)["k8s.pod.name"], "web");
        assert_eq!(r(0)["k8s.pod.uid"], "u1");
        assert_eq!(r(0)["k8s.namespace.name"], "shop");
        assert_eq!(r(0)["k8s.node.name"], "node-a");
        assert_eq!(r(0)["k8s.cluster.name"], "prod");
        assert_eq!(r(0)["service.name"], "triage-agent");
        assert_eq!(r(1)["k8s.pod.name"], "db");
        assert_eq!(req.resource_logs[0].scope_logs[0].log_records.len(), 2);
        assert_eq!(
            req.resource_logs[0].scope_logs[0]
                .scope
                .as_ref()
                .map(|s| s.name.as_str()),
            Some("triage-agent")
        );
        let mut later = web.clone();
        later.count += 5;
        later.last_seen = fixtures::t(200);
        assert_eq!(record_id(&web), record_id(&later));
        assert_ne!(record_id(&web), record_id(&web2));
        assert_ne!(record_id(&web), record_id(&db));
        let a = attrs(&log_record(&web, fixtures::t(1)).attributes);
        assert_eq!(a["triage.record_id"], record_id(&web));
        // The first 128 bits of SHA-256 over the length-prefixed fields, computed here apart.
        let mut fields = Vec::new();
        for f in [
            &*web.node,
            "connection_refused",
            "u1",
            web.subject.container.as_deref().unwrap_or_default(),
            &format!("{:?}", web.detail.key()),
        ] {
            fields.extend_from_slice(&(f.len() as u64).to_be_bytes());
            fields.extend_from_slice(f.as_bytes());
        }
        let digest = <sha2::Sha256 as sha2::Digest>::digest(&fields);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(record_id(&web), hex[..32]);
        assert_eq!(a["error.type"], "connection_refused");
    }

    #[test]
    fn refusal_follows_kubernetes_conventions() {
        let e = fixtures::refused()
            .node("node-a")
            .pod_uid("shop", "web", "uid-1")
            .container(Some("app"))
            .process(42, "curl")
            .src("10.1.0.5:40000")
            .dst("10.1.0.6:8080")
            .reason("NO_SOCKET")
            .cause(Some(crate::evidence::Cause::NoListener))
            .peer("data", "db")
            .count(3)
            .first_seen(100)
            .last_seen(160)
            .evidence();
        let r = log_record(&e, fixtures::t(170));
        let a = attrs(&r.attributes);
        let expect = [
            ("triage.kind", "connection_refused"),
            ("k8s.node.name", "node-a"),
            ("k8s.namespace.name", "shop"),
            ("k8s.pod.name", "web"),
            ("k8s.pod.uid", "uid-1"),
            ("k8s.container.name", "app"),
            ("process.pid", "42"),
            ("process.executable.name", "curl"),
            ("network.transport", "tcp"),
            ("network.type", "ipv4"),
            ("source.address", "10.1.0.5"),
            ("source.port", "40000"),
            ("destination.address", "10.1.0.6"),
            ("destination.port", "8080"),
            ("triage.direction", "outbound"),
            ("triage.reason", "NO_SOCKET"),
            ("triage.cause", "no_listener"),
            ("triage.peer.namespace", "data"),
            ("triage.peer.name", "db"),
            ("triage.count", "3"),
            ("triage.attribution", "cgroup"),
        ];
        for (k, v) in expect {
            assert_eq!(a.get(k).map(String::as_str), Some(v), "{k} in {a:?}");
        }
        assert!(a["triage.first_seen"].ends_with('Z'));
        assert!(!a.contains_key("triage.src") && !a.contains_key("triage.protocol"));
        assert!(a.contains_key("triage.next_step"));
        assert_eq!(r.severity_number, SeverityNumber::Error as i32);
        assert_eq!(r.severity_text, "ERROR");
        assert_eq!(r.event_name, "triage.connection_refused");
        assert_eq!(r.time_unix_nano, nanos(fixtures::t(160)));
        assert_eq!(r.observed_time_unix_nano, nanos(fixtures::t(170)));
        let Some(any_value::Value::StringValue(body)) = r.body.and_then(|b| b.value) else {
            panic!("body is a string");
        };
        assert!(body.contains("shop/web"), "{body}");
        assert!(!body.contains('\n'));
    }

    #[test]
    fn unattributed_drop_and_icmp() {
        let e = fixtures::dropped()
            .unattributed()
            .no_process()
            .src("10.1.0.5:8")
            .dst("10.1.0.6:0")
            .evidence();
        let mut e = e;
        if let Detail::PacketDrop(d) = &mut e.detail {
            d.protocol = Protocol::Icmp;
            d.tcp_flags = None;
        }
        let r = log_record(&e, fixtures::t(1));
        let a = attrs(&r.attributes);
        assert_eq!(a["triage.kind"], "packet_drop");
        assert_eq!(a["triage.attribution"], Attribution::None.as_str());
        assert_eq!(a["triage.protocol"], "icmp");
        assert_eq!(a["triage.icmp_type"], "8");
        assert_eq!(a["triage.icmp_code"], "0");
        assert!(!a.contains_key("k8s.pod.name") && !a.contains_key("source.port"));
        assert!(!a.contains_key("process.pid") && !a.contains_key("network.transport"));
        assert_eq!(r.severity_text, "WARN");
    }

    #[test]
    fn dns_names_its_question() {
        let mut e = fixtures::refused().pod("shop", "web").evidence();
        e.detail = Detail::Dns(Dns {
            query: Arc::from("db.data.svc.cluster.local"),
            qtype: Arc::from("A"),
            outcome: DnsOutcome::Timeout,
            rcode: None,
            client: "[fd00::5]:5353".parse().unwrap_or_else(|_| unreachable!()),
            server: "[fd00::a]:53".parse().unwrap_or_else(|_| unreachable!()),
            protocol: Protocol::Udp,
            latency_ms: Some(5000),
            server_pod: None,
            reached_server: Some(false),
            search_nxdomains: 0,
        });
        let a = attrs(&log_record(&e, fixtures::t(1)).attributes);
        assert_eq!(a["dns.question.name"], "db.data.svc.cluster.local");
        assert_eq!(a["triage.qtype"], "A");
        assert_eq!(a["triage.outcome"], "timeout");
        assert_eq!(a["triage.latency_ms"], "5000");
        assert_eq!(a["triage.reached_server"], "false");
        assert_eq!(a["network.type"], "ipv6");
        assert_eq!(a["destination.address"], "fd00::a");
        assert_eq!(a["destination.port"], "53");
        assert_eq!(a["network.transport"], "udp");
        assert!(!a.contains_key("triage.rcode") && !a.contains_key("triage.query"));
    }

    #[test]
    fn resource_defaults_and_overrides() {
        let a = attrs(&resource("node-a", &[]).attributes);
        assert_eq!(a["service.name"], "triage-agent");
        assert_eq!(a["service.version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(a["k8s.node.name"], "node-a");
        let configured = [
            ("service.name".to_owned(), "x".to_owned()),
            ("k8s.cluster.name".to_owned(), "prod".to_owned()),
        ];
        let a = attrs(&resource("node-a", &configured).attributes);
        assert_eq!(a["service.name"], "x");
        assert_eq!(a["k8s.cluster.name"], "prod");
        assert_eq!(a.len(), 4);
    }

    #[test]
    fn resource_kinds_map_typed_fields() {
        let e = fixtures::oom_killed().pod("shop", "web").evidence();
        let r = log_record(&e, fixtures::t(1));
        let a = attrs(&r.attributes);
        assert_eq!(a["triage.kind"], "oom_kill");
        assert!(a.contains_key("triage.source"));
        assert_eq!(r.severity_text, "ERROR");
        let e = fixtures::throttled().pod("shop", "web").evidence();
        let a = attrs(&log_record(&e, fixtures::t(1)).attributes);
        assert!(a.contains_key("triage.throttled_periods"));
        assert!(a.contains_key("triage.ratio"));
        assert!(!a.contains_key("source.address"));
    }
}
