//! Privileged end to end: the agent exports evidence as OpenTelemetry logs. The test runs a
//! real OTLP LogsService receiver (the collector's gRPC service, generated from the official
//! opentelemetry-proto definitions), points the agent at it with the standard
//! `OTEL_EXPORTER_OTLP_*` variables, provokes a real refusal between two simulated pods, and
//! checks the records follow OpenTelemetry's Kubernetes semantic conventions. Also: a wrong
//! OTLP setting stops the agent at startup with an error naming the variable.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test scenarios panic with context; helpers shared by tests are not #[test] fns"
)]

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tonic::{Request, Response, Status};
use triage_agent_proto::opentelemetry::proto::{
    collector::logs::v1::{
        ExportLogsServiceRequest, ExportLogsServiceResponse,
        logs_service_server::{LogsService, LogsServiceServer},
    },
    common::v1::{KeyValue, any_value},
    logs::v1::LogRecord,
};
use triage_agent_tests::{
    agent::{AgentProcess, agent_binary, free_port, records},
    fixture::NodeFixture,
    simnode::{CgroupDriver, SimNode},
};

const WAIT: Duration = Duration::from_secs(20);

/// Every request the receiver accepted, with its `x-tenant` header.
type Requests = Arc<Mutex<Vec<(ExportLogsServiceRequest, Option<String>)>>>;

/// The collector's LogsService, keeping what it receives.
#[derive(Clone, Default)]
struct Receiver {
    got: Requests,
}

#[tonic::async_trait]
impl LogsService for Receiver {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let tenant = request
            .metadata()
            .get("x-tenant")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.got
            .lock()
            .unwrap()
            .push((request.into_inner(), tenant));
        Ok(Response::new(ExportLogsServiceResponse::default()))
    }
}

/// Starts the receiver on `bind` (loopback); returns it, its address and the runtime serving it.
fn start_receiver(bind: &str) -> (Receiver, String, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let receiver = Receiver::default();
    let listener = rt.block_on(tokio::net::TcpListener::bind(bind)).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let service = LogsServiceServer::new(receiver.clone());
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (receiver, addr, rt)
}

/// Every HTTP request the receiver saw: path, content type, content encoding.
type HttpCalls = Arc<Mutex<Vec<(String, String, String)>>>;

/// An OTLP/HTTP receiver (`POST /v1/logs`, protobuf, gzip when the request says so), as the
/// specification's OTLP/HTTP section describes it: the first request gets a 503 with
/// `Retry-After: 1`, the rest are accepted into a [`Receiver`].
fn start_http_receiver() -> (Receiver, HttpCalls, String, tokio::runtime::Runtime) {
    use http_body_util::BodyExt as _;
    use prost::Message as _;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let receiver = Receiver::default();
    let calls = HttpCalls::default();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (got, seen) = (receiver.got.clone(), calls.clone());
    rt.spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (got, seen) = (got.clone(), seen.clone());
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (got, seen) = (got.clone(), seen.clone());
                    async move {
                        let header = |k: &str| {
                            req.headers()
                                .get(k)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned()
                        };
                        let (encoding, tenant) = (header("content-encoding"), header("x-tenant"));
                        let first = {
                            let mut seen = seen.lock().unwrap();
                            seen.push((
                                req.uri().path().to_owned(),
                                header("content-type"),
                                encoding.clone(),
                            ));
                            seen.len() == 1
                        };
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let body = if encoding == "gzip" {
                            let mut out = Vec::new();
                            flate2::read::GzDecoder::new(&body[..])
                                .read_to_end(&mut out)
                                .unwrap();
                            out
                        } else {
                            body.to_vec()
                        };
                        let response = hyper::Response::builder();
                        let response = if first {
                            response
                                .status(503)
                                .header("retry-after", "1")
                                .body(String::new().into())
                        } else {
                            let request = ExportLogsServiceRequest::decode(&body[..]).unwrap();
                            got.lock()
                                .unwrap()
                                .push((request, Some(tenant).filter(|t| !t.is_empty())));
                            response
                                .header("content-type", "application/x-protobuf")
                                .body(ExportLogsServiceResponse::default().encode_to_vec().into())
                        };
                        Ok::<
                            hyper::Response<http_body_util::Full<bytes::Bytes>>,
                            std::convert::Infallible,
                        >(response.unwrap())
                    }
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service),
            );
        }
    });
    (receiver, calls, addr, rt)
}

/// Attribute values as text, by key.
fn attrs(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(n)) => n.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                Some(any_value::Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

/// (resource attributes, record attributes, record, tenant header) of every record received.
type Received = (
    HashMap<String, String>,
    HashMap<String, String>,
    LogRecord,
    Option<String>,
);

fn received(r: &Receiver) -> Vec<Received> {
    let got = r.got.lock().unwrap();
    let mut out = Vec::new();
    for (request, tenant) in got.iter() {
        for rl in &request.resource_logs {
            let resource = attrs(&rl.resource.clone().unwrap_or_default().attributes);
            for sl in &rl.scope_logs {
                for record in &sl.log_records {
                    out.push((
                        resource.clone(),
                        attrs(&record.attributes),
                        record.clone(),
                        tenant.clone(),
                    ));
                }
            }
        }
    }
    out
}

/// Waits for a record about `pod` of `kind` in `direction` with a count of at least `count`.
fn wait_record(
    r: &Receiver,
    pod: &str,
    kind: &str,
    direction: &str,
    count: u64,
    agent: &AgentProcess,
) -> Received {
    let deadline = Instant::now() + WAIT;
    loop {
        let found = received(r).into_iter().find(|(_, a, _, _)| {
            a.get("k8s.pod.name").map(String::as_str) == Some(pod)
                && a.get("triage.kind").map(String::as_str) == Some(kind)
                && a.get("triage.direction").map(String::as_str) == Some(direction)
                && a.get("triage.count")
                    .and_then(|c| c.parse::<u64>().ok())
                    .is_some_and(|c| c >= count)
        });
        if let Some(found) = found {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} {direction} record of {pod} with count >= {count} received; got {:?}\nagent log:\n{}",
            received(r)
                .iter()
                .map(|(_, a, _, _)| a.clone())
                .collect::<Vec<_>>(),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("metrics listener");
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    response
}

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
}

/// A simulated node whose agent runs with `env`, shop/db listening on 5432 and shop/web
/// refused three times on 5433: the node, the agent, and (db, web).
fn web_refused_three_times(env: &[(&str, &str)]) -> (SimNode, AgentProcess, [usize; 2]) {
    let fixture = NodeFixture::new()
        .pod("shop", "db")
        .pod("shop", "web")
        .agent_env(env.iter().copied());
    let (mut node, [server, client]) = fixture.node().unwrap();
    node.start_process(server, &["listen", "5432"]).unwrap();
    let agent = fixture.agent(&node).unwrap();
    let dst = format!("{}:5433", node.pod(server).ip);
    node.run(client, &["connect", &dst, "3", "50"]).unwrap();
    (node, agent, [server, client])
}

#[test]
fn refusals_are_exported_as_otlp_logs_with_kubernetes_attributes() {
    let (receiver, addr, _rt) = start_receiver("127.0.0.1:0");
    let endpoint = format!("http://{addr}");
    let (node, mut agent, [server, client]) = web_refused_three_times(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=team%20a"),
        ("OTEL_RESOURCE_ATTRIBUTES", "k8s.cluster.name=sim"),
        ("OTEL_BLRP_SCHEDULE_DELAY", "200"),
    ]);

    let (resource, a, record, tenant) = wait_record(
        &receiver,
        "web",
        "connection_refused",
        "outbound",
        3,
        &agent,
    );
    assert_eq!(
        tenant.as_deref(),
        Some("team a"),
        "OTEL_EXPORTER_OTLP_HEADERS"
    );
    assert_eq!(resource["service.name"], "triage-agent");
    assert!(!resource["service.version"].is_empty());
    assert_eq!(resource["k8s.node.name"], node.name);
    assert_eq!(resource["k8s.cluster.name"], "sim");
    // The pod the record is about is on its resource, where Loki and the Collector look.
    assert_eq!(resource["k8s.namespace.name"], "shop");
    assert_eq!(resource["k8s.pod.name"], "web");
    assert_eq!(resource["k8s.pod.uid"], node.pod(client).uid);
    assert_eq!(resource["k8s.container.name"], "app");
    assert_eq!(a["error.type"], "connection_refused");
    let id = &a["triage.record_id"];
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "triage.record_id is 128 bits of SHA-256 in hex: {a:?}"
    );
    let expect = [
        ("k8s.node.name", node.name.as_str()),
        ("k8s.namespace.name", "shop"),
        ("k8s.pod.name", "web"),
        ("k8s.pod.uid", node.pod(client).uid.as_str()),
        ("k8s.container.name", "app"),
        ("process.executable.name", "sim-workload"),
        ("network.transport", "tcp"),
        ("network.type", "ipv4"),
        ("destination.port", "5433"),
        ("triage.kind", "connection_refused"),
        ("triage.direction", "outbound"),
        ("triage.attribution", "cgroup"),
        ("triage.peer.namespace", "shop"),
        ("triage.peer.name", "db"),
    ];
    for (k, v) in expect {
        assert_eq!(a.get(k).map(String::as_str), Some(v), "{k} in {a:?}");
    }
    assert_eq!(a["destination.address"], node.pod(server).ip.to_string());
    assert_eq!(a["source.address"], node.pod(client).ip.to_string());
    assert!(a["process.pid"].parse::<u32>().unwrap() > 0);
    assert!(a["triage.first_seen"].ends_with('Z'));
    assert_eq!(record.severity_text, "ERROR");
    assert_eq!(record.event_name, "triage.connection_refused");
    // Seen (kernel clock, converted) before the agent queued it; a millisecond of conversion
    // slack at most.
    assert!(
        record.time_unix_nano > 0
            && record.observed_time_unix_nano + 1_000_000 >= record.time_unix_nano,
        "{record:?}"
    );
    let Some(any_value::Value::StringValue(body)) =
        record.body.as_ref().and_then(|b| b.value.clone())
    else {
        panic!("the body is the summary text: {record:?}");
    };
    assert!(body.contains("shop/web") && body.contains("5433"), "{body}");

    // The refusing side, attributed by IP.
    let (_, a, _, _) = wait_record(&receiver, "db", "connection_refused", "inbound", 3, &agent);
    assert_eq!(a["k8s.namespace.name"], "shop");
    assert_eq!(a["triage.attribution"], "ip");
    assert_eq!(a["triage.reason"], "NO_SOCKET");
    assert_eq!(a["triage.peer.name"], "web");

    // Metrics: exported, nothing lost on the way.
    let text = scrape(&agent.metrics);
    assert!(metric(&text, "triage_agent_otlp_exported_records_total ") >= 2.0);
    assert_eq!(metric(&text, "triage_agent_otlp_queue_capacity "), 8192.0);
    for point in [
        "otlp_queue_full",
        "otlp_export_failed",
        "otlp_rejected",
        "otlp_lagged",
    ] {
        assert_eq!(
            metric(
                &text,
                &format!("triage_agent_loss_total{{point=\"{point}\"}} ")
            ),
            0.0,
            "{point}"
        );
    }

    let exit = agent.stop().unwrap();
    assert!(
        exit.success(),
        "agent exits cleanly: {exit}\n{}",
        agent.log()
    );
}

/// `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`: the records go as protobuf POSTs to the
/// endpoint's `/v1/logs`, gzip-compressed, with the operator's headers and the pod on the
/// resource; a 503 with `Retry-After` is retried, nothing lost.
#[test]
fn refusals_are_exported_over_otlp_http() {
    let (receiver, calls, addr, _rt) = start_http_receiver();
    let endpoint = format!("http://{addr}");
    let (node, mut agent, [_, client]) = web_refused_three_times(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=team%20b"),
        ("OTEL_BLRP_SCHEDULE_DELAY", "200"),
    ]);

    let (resource, a, record, tenant) = wait_record(
        &receiver,
        "web",
        "connection_refused",
        "outbound",
        3,
        &agent,
    );
    assert_eq!(tenant.as_deref(), Some("team b"));
    assert_eq!(resource["k8s.namespace.name"], "shop");
    assert_eq!(resource["k8s.pod.name"], "web");
    assert_eq!(resource["k8s.pod.uid"], node.pod(client).uid);
    assert_eq!(resource["k8s.node.name"], node.name);
    assert_eq!(a["destination.port"], "5433");
    assert_eq!(record.event_name, "triage.connection_refused");
    {
        let calls = calls.lock().unwrap();
        assert!(calls.len() >= 2, "the 503 and the retry: {calls:?}");
        for (path, content_type, encoding) in calls.iter() {
            assert_eq!(
                (path.as_str(), content_type.as_str(), encoding.as_str()),
                ("/v1/logs", "application/x-protobuf", "gzip")
            );
        }
    }
    let text = scrape(&agent.metrics);
    assert!(metric(&text, "triage_agent_otlp_export_retries_total ") >= 1.0);
    for point in ["otlp_queue_full", "otlp_export_failed", "otlp_rejected"] {
        assert_eq!(
            metric(
                &text,
                &format!("triage_agent_loss_total{{point=\"{point}\"}} ")
            ),
            0.0,
            "{point}"
        );
    }
    let exit = agent.stop().unwrap();
    assert!(
        exit.success(),
        "agent exits cleanly: {exit}\n{}",
        agent.log()
    );
}

/// The collector is down when the agent starts: the store keeps answering, the exporter
/// retries (counted), and once the collector is up the records arrive, nothing lost.
#[test]
fn collector_down_at_start_then_up_gets_the_records() {
    let addr = format!("127.0.0.1:{}", free_port().unwrap());
    let endpoint = format!("http://{addr}");
    let fixture = NodeFixture::new()
        .driver(CgroupDriver::Systemd)
        .pod("data", "db")
        .pod("data", "api")
        .agent_env([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
            ("OTEL_BLRP_SCHEDULE_DELAY", "100"),
            // Retried for a minute: longer than the test keeps the collector down.
            ("OTEL_BLRP_EXPORT_TIMEOUT", "60000"),
        ]);
    let (mut node, [server, client]) = fixture.node().unwrap();
    node.start_process(server, &["listen", "5432"]).unwrap();
    let mut agent = fixture.agent(&node).unwrap();
    let dst = format!("{}:5433", node.pod(server).ip);
    node.run(client, &["connect", &dst, "3", "50"]).unwrap();

    // The store is not held up by the exporter.
    agent
        .query_until("data", "api", WAIT, |v| {
            records(v, "connection_refused", "outbound")
                .iter()
                .any(|r| r["count"].as_u64() >= Some(3))
        })
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while metric(
        &scrape(&agent.metrics),
        "triage_agent_otlp_export_retries_total ",
    ) < 2.0
    {
        assert!(Instant::now() < deadline, "no retries:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }

    let (receiver, _, _rt) = start_receiver(&addr);
    let (_, a, _, _) = wait_record(
        &receiver,
        "api",
        "connection_refused",
        "outbound",
        3,
        &agent,
    );
    assert_eq!(a["k8s.namespace.name"], "data");
    assert_eq!(a["k8s.container.name"], "app");
    let text = scrape(&agent.metrics);
    for point in ["otlp_queue_full", "otlp_export_failed"] {
        assert_eq!(
            metric(
                &text,
                &format!("triage_agent_loss_total{{point=\"{point}\"}} ")
            ),
            0.0,
            "{point}"
        );
    }
    let exit = agent.stop().unwrap();
    assert!(
        exit.success(),
        "agent exits cleanly: {exit}\n{}",
        agent.log()
    );
}

#[test]
fn unsupported_otlp_settings_stop_the_agent_at_startup() {
    for (var, value, says) in [
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "http/json",
            "grpc (the collector's port 4317) or http/protobuf",
        ),
        (
            "OTEL_EXPORTER_OTLP_TIMEOUT",
            "ten",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd", "gzip or none"),
    ] {
        let out = Command::new(agent_binary())
            .args(["agent", "--node-name", "otlp-config-test"])
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
            .env(var, value)
            .env("KUBECONFIG", "/nonexistent")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}={value} must stop the agent");
        assert!(
            stderr.contains("OTLP export configuration") && stderr.contains(says),
            "{var}={value}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
