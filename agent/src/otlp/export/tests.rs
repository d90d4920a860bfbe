//! The exporter against a real OTLP LogsService receiver (the generated server, in process):
//! delivery, retries on UNAVAILABLE, giving up on other errors, partial success, a collector
//! that is not there (loss counted, the store never waits), and the flush at shutdown.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status, codec::CompressionEncoding};
use triage_agent_proto::opentelemetry::proto::{
    collector::logs::v1::{
        ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
        logs_service_server::{LogsService, LogsServiceServer},
    },
    common::v1::any_value,
};

use super::*;
use crate::otlp::http::webpki_roots_len;
use crate::{
    evidence::{Filter, fixtures},
    otlp::config::{Batch, OtlpConfig},
    store::{self, Store, StoreConfig},
};

/// What the receiver answers to one call.
#[derive(Clone, Debug)]
enum Reply {
    Ok,
    Fail(Code),
    Reject(i64),
}

#[derive(Default)]
struct Receiver {
    /// Replies for the next calls, in order; then `Ok`.
    script: Mutex<VecDeque<Reply>>,
    /// Accepted requests with their `x-tenant` header.
    got: Mutex<Vec<(ExportLogsServiceRequest, Option<String>)>>,
    calls: Mutex<u32>,
}

/// The receiver as a gRPC service (the test keeps the other handle).
struct Service(Arc<Receiver>);

#[tonic::async_trait]
impl LogsService for Service {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let this = &self.0;
        this.record(request).await
    }
}

impl Receiver {
    async fn record(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        *self.calls.lock().unwrap() += 1;
        let reply = self.script.lock().unwrap().pop_front().unwrap_or(Reply::Ok);
        let tenant = request
            .metadata()
            .get("x-tenant")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match reply {
            Reply::Fail(code) => Err(Status::new(code, "scripted failure")),
            Reply::Ok => {
                self.got
                    .lock()
                    .unwrap()
                    .push((request.into_inner(), tenant));
                Ok(Response::new(ExportLogsServiceResponse::default()))
            }
            Reply::Reject(n) => {
                self.got
                    .lock()
                    .unwrap()
                    .push((request.into_inner(), tenant));
                Ok(Response::new(ExportLogsServiceResponse {
                    partial_success: Some(ExportLogsPartialSuccess {
                        rejected_log_records: n,
                        error_message: "scripted rejection".into(),
                    }),
                }))
            }
        }
    }
}

impl Receiver {
    fn records(&self) -> usize {
        self.got
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(r, _)| &r.resource_logs)
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len())
            .sum()
    }
}

async fn receiver(script: Vec<Reply>) -> (Arc<Receiver>, SocketAddr) {
    let r = Arc::new(Receiver {
        script: Mutex::new(script.into()),
        ..Receiver::default()
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service =
        LogsServiceServer::new(Service(r.clone())).accept_compressed(CompressionEncoding::Gzip);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (r, addr)
}

fn config(addr: SocketAddr, batch: Batch) -> OtlpConfig {
    OtlpConfig {
        protocol: Protocol::Grpc,
        endpoint: format!("http://{addr}"),
        tls: None,
        headers: vec![("x-tenant".into(), "team-a".into())],
        timeout: Duration::from_secs(2),
        gzip: true,
        resource: vec![("k8s.cluster.name".into(), "test".into())],
        batch,
    }
}

fn fast_batch() -> Batch {
    Batch {
        size: 4,
        interval: Duration::from_millis(20),
        queue: 64,
        retry_window: Duration::from_secs(10),
    }
}

struct Running {
    counters: Arc<Counters>,
    stats: Arc<ExportStats>,
    store: StoreHandle,
    occurrences: mpsc::Sender<crate::attribute::Attributed>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start(config: OtlpConfig) -> Running {
    let counters = Arc::new(Counters::default());
    let cancel = CancellationToken::new();
    let (store, occurrences, store_task) = store::spawn(
        Store::new(
            StoreConfig::new("node-a", 10_000, Duration::from_secs(3600)),
            counters.clone(),
        ),
        cancel.child_token(),
    );
    tokio::spawn(store_task);
    let (stats, task) = spawn(
        config,
        "node-a",
        store.clone(),
        counters.clone(),
        cancel.child_token(),
    )
    .unwrap();
    let task = tokio::spawn(task);
    // The exporter subscribes before anything is recorded.
    wait_for("the exporter's subscription", || {
        let store = store.clone();
        async move { store.stats().await.unwrap().subscribers == 1 }
    })
    .await;
    Running {
        counters,
        stats,
        store,
        occurrences,
        cancel,
        task,
    }
}

impl Running {
    /// `n` distinct records (one pod each), seen now.
    async fn record(&self, n: usize) {
        for i in 0..n {
            let o = fixtures::refused()
                .pod("shop", &format!("web-{i}"))
                .at_time(SystemTime::now())
                .occurrence();
            self.occurrences
                .send(crate::attribute::Attributed::Occurrence(o))
                .await
                .unwrap();
        }
    }

    /// Waits until `loss` has counted `n`.
    async fn wait_loss(&self, what: &str, loss: Loss, n: u64) {
        wait_for(what, || {
            let c = self.counters.clone();
            async move { c.get(loss) == n }
        })
        .await;
    }

    async fn stop(self) -> Arc<Counters> {
        self.cancel.cancel();
        tokio::time::timeout(SHUTDOWN_FLUSH + Duration::from_secs(2), self.task)
            .await
            .expect("the exporter stops within its flush deadline")
            .unwrap();
        self.counters
    }
}

async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn delivers_batches_with_resource_headers_and_gzip() {
    let (receiver, addr) = receiver(vec![]).await;
    let running = start(config(addr, fast_batch())).await;
    running.record(10).await;
    // Received, and the answers read by the exporter (it counts after each response).
    wait_for("10 records", || {
        let (r, stats) = (receiver.clone(), running.stats.clone());
        async move { r.records() == 10 && stats.exported.load(Relaxed) == 10 }
    })
    .await;
    {
        let got = receiver.got.lock().unwrap();
        // Batches of at most 4.
        assert!(got.len() >= 3, "{} requests", got.len());
        let (request, tenant) = &got[0];
        assert_eq!(tenant.as_deref(), Some("team-a"));
        let rl = &request.resource_logs[0];
        let resource = rl.resource.as_ref().unwrap();
        let has = |k: &str, v: &str| {
            resource.attributes.iter().any(|kv| {
                kv.key == k
                    && kv.value.as_ref().and_then(|v| v.value.as_ref())
                        == Some(&any_value::Value::StringValue(v.to_owned()))
            })
        };
        assert!(has("service.name", "triage-agent"));
        assert!(has("k8s.node.name", "node-a"));
        assert!(has("k8s.cluster.name", "test"));
        let record = &rl.scope_logs[0].log_records[0];
        assert!(record.attributes.iter().any(|kv| kv.key == "k8s.pod.name"));
    }
    let counters = running.stop().await;
    for loss in Loss::ALL {
        assert_eq!(counters.get(*loss), 0, "{loss:?}");
    }
}

#[tokio::test]
async fn retries_unavailable_until_the_collector_takes_it() {
    let (receiver, addr) = receiver(vec![
        Reply::Fail(Code::Unavailable),
        Reply::Fail(Code::ResourceExhausted),
    ])
    .await;
    let running = start(config(addr, fast_batch())).await;
    running.record(2).await;
    wait_for("2 records after retries", || {
        let r = receiver.clone();
        async move { r.records() == 2 }
    })
    .await;
    assert_eq!(running.stats.retries.load(Relaxed), 2);
    assert_eq!(*receiver.calls.lock().unwrap(), 3);
    let counters = running.stop().await;
    assert_eq!(counters.get(Loss::OtlpExportFailed), 0);
}

#[tokio::test]
async fn gives_up_on_permanent_errors_and_counts_rejections() {
    let (receiver, addr) =
        receiver(vec![Reply::Fail(Code::InvalidArgument), Reply::Reject(1)]).await;
    let batch = Batch {
        size: 2,
        ..fast_batch()
    };
    let running = start(config(addr, batch)).await;
    running.record(2).await;
    running
        .wait_loss("the first batch given up", Loss::OtlpExportFailed, 2)
        .await;
    running.record(2).await;
    running
        .wait_loss(
            "the second batch, one record rejected",
            Loss::OtlpRejected,
            1,
        )
        .await;
    assert_eq!(running.stats.exported.load(Relaxed), 1);
    assert_eq!(running.stats.retries.load(Relaxed), 0);
    assert_eq!(*receiver.calls.lock().unwrap(), 2);
    running.stop().await;
}

#[tokio::test]
async fn collector_down_counts_every_update_and_never_blocks_the_store() {
    // A port nobody listens on.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let batch = Batch {
        size: 2,
        interval: Duration::from_millis(10),
        queue: 4,
        retry_window: Duration::from_millis(1500),
    };
    let running = start(config(addr, batch)).await;
    let n = 200;
    running.record(n).await;
    wait_for("the store to take every record", || {
        let store = running.store.clone();
        async move { store.stats().await.unwrap().records == n as u64 }
    })
    .await;
    // The store answers while the exporter is stuck retrying.
    let answered = tokio::time::timeout(
        Duration::from_secs(2),
        running.store.query(
            Filter {
                include_unattributed: true,
                ..Filter::default()
            },
            1000,
        ),
    )
    .await
    .expect("the store answers while the collector is down")
    .unwrap();
    assert_eq!(answered.evidence.len(), n);
    // Retries are waited for, not asserted at once: on a loaded machine the first attempt of a
    // batch can outlast the retry window, and that batch fails without a retry.
    wait_for("queue overflow, retries and failed exports", || {
        let c = running.counters.clone();
        let stats = running.stats.clone();
        async move {
            c.get(Loss::OtlpQueueFull) > 0
                && c.get(Loss::OtlpExportFailed) > 0
                && stats.retries.load(Relaxed) > 0
        }
    })
    .await;
    let stats = running.stats.clone();
    let counters = running.stop().await;
    // Every update is accounted for: none was exported, each was dropped at the full queue or
    // given up after retries (or at the shutdown flush).
    assert_eq!(stats.exported.load(Relaxed), 0);
    assert_eq!(
        counters.get(Loss::OtlpQueueFull) + counters.get(Loss::OtlpExportFailed),
        n as u64
    );
    assert_eq!(counters.get(Loss::OtlpLagged), 0);
}

#[tokio::test]
async fn shutdown_flushes_what_is_queued() {
    let (receiver, addr) = receiver(vec![]).await;
    let batch = Batch {
        size: 512,
        interval: Duration::from_secs(3600),
        queue: 64,
        retry_window: Duration::from_secs(10),
    };
    let running = start(config(addr, batch)).await;
    running.record(5).await;
    wait_for("5 queued or batched", || {
        let s = running.stats.clone();
        let r = running.store.clone();
        async move {
            // The store has them all and the exporter took them off its subscription.
            r.stats().await.unwrap().records == 5 && s.queued.load(Relaxed) == 0
        }
    })
    .await;
    assert_eq!(receiver.records(), 0, "nothing sent before the interval");
    let counters = running.stop().await;
    assert_eq!(receiver.records(), 5);
    assert_eq!(counters.get(Loss::OtlpExportFailed), 0);
}

#[tokio::test]
async fn updates_of_one_record_in_a_batch_go_out_once_as_the_latest() {
    let (receiver, addr) = receiver(vec![]).await;
    let batch = Batch {
        interval: Duration::from_millis(500),
        ..fast_batch()
    };
    let running = start(config(addr, batch)).await;
    for _ in 0..5 {
        let o = fixtures::refused()
            .pod("shop", "web")
            .at_time(SystemTime::now())
            .occurrence();
        running
            .occurrences
            .send(crate::attribute::Attributed::Occurrence(o))
            .await
            .unwrap();
    }
    wait_for("the batch", || {
        let r = receiver.clone();
        async move { r.records() > 0 }
    })
    .await;
    let counts: Vec<i64> = receiver
        .got
        .lock()
        .unwrap()
        .iter()
        .flat_map(|(r, _)| &r.resource_logs)
        .flat_map(|r| &r.scope_logs)
        .flat_map(|s| &s.log_records)
        .flat_map(|l| &l.attributes)
        .filter(|kv| kv.key == "triage.count")
        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::IntValue(n) => Some(*n),
            _ => None,
        })
        .collect();
    assert_eq!(counts, vec![5]);
    running.stop().await;
}

/// A CA made for one test, and the certificates it signs.
struct TestCa {
    /// The CA's certificate, PEM.
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    fn new() -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `name` and its key, PEM.
    fn leaf(&self, name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A collector behind TLS with a certificate from a CA made here: the exporter trusts it
/// through `OTEL_EXPORTER_OTLP_CERTIFICATE` (the config's `tls.ca`) and delivers.
#[tokio::test]
async fn delivers_over_tls_to_a_collector_signed_by_the_configured_ca() {
    let ca = TestCa::new();
    let (server_cert, server_key) = ca.leaf("localhost");

    let r = Arc::new(Receiver::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let identity = Identity::from_pem(server_cert, server_key);
    tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .unwrap()
            .add_service(
                LogsServiceServer::new(Service(r.clone()))
                    .accept_compressed(CompressionEncoding::Gzip),
            )
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let mut cfg = config(([127, 0, 0, 1], port).into(), fast_batch());
    cfg.endpoint = format!("https://localhost:{port}");
    cfg.tls = Some(crate::otlp::config::Tls {
        ca: Some(ca.pem.into_bytes()),
        identity: None,
    });
    let running = start(cfg).await;
    running.record(3).await;
    wait_for("3 records over TLS", || {
        let r = r.clone();
        async move { r.records() == 3 }
    })
    .await;
    let counters = running.stop().await;
    assert_eq!(counters.get(Loss::OtlpExportFailed), 0);
}

/// Without roots in the system store (the image is FROM scratch), Mozilla's compiled-in roots
/// are trusted; with some, the system's.
#[test]
fn without_system_roots_the_compiled_in_roots_are_used() {
    assert_eq!(choose_roots(0), Roots::Compiled);
    assert_eq!(choose_roots(140), Roots::System);
    assert!(
        webpki_roots_len() > 100,
        "the compiled-in bundle holds Mozilla's roots: {}",
        webpki_roots_len()
    );
    // Both build a TLS configuration tonic accepts.
    for system in [0, 1] {
        let tls = trust_roots(ClientTlsConfig::new(), system);
        Endpoint::from_static("https://localhost:4317")
            .tls_config(tls)
            .unwrap();
    }
}

/// What the HTTP receiver answers to one POST.
#[derive(Clone, Debug)]
enum HttpReply {
    Ok,
    Status(u16, Option<&'static str>),
    Reject(i64),
    /// 200 with a body that is not an ExportLogsServiceResponse.
    Garbage,
}

/// An OTLP/HTTP receiver: `POST /v1/logs`, protobuf, gzip when the request says so.
#[derive(Default)]
struct HttpReceiver {
    script: Mutex<VecDeque<HttpReply>>,
    /// Accepted requests with their `x-tenant` header.
    got: Mutex<Vec<(ExportLogsServiceRequest, Option<String>)>>,
    /// Every call: (path, content type, content encoding, when).
    calls: Mutex<Vec<(String, String, String, Instant)>>,
}

async fn http_receiver(script: Vec<HttpReply>) -> (Arc<HttpReceiver>, SocketAddr) {
    let (r, app) = http_app(script);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (r, addr)
}

fn http_app(script: Vec<HttpReply>) -> (Arc<HttpReceiver>, axum::Router) {
    use axum::{
        body::Bytes,
        extract::State,
        http::{HeaderMap, StatusCode, Uri},
        response::IntoResponse,
    };
    use prost::Message as _;
    async fn handle(
        State(r): State<Arc<HttpReceiver>>,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> axum::response::Response {
        let header = |k: &str| {
            headers
                .get(k)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        r.calls.lock().unwrap().push((
            uri.path().to_owned(),
            header("content-type"),
            header("content-encoding"),
            Instant::now(),
        ));
        let reply = r
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(HttpReply::Ok);
        let body = if header("content-encoding") == "gzip" {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut out)
                .unwrap();
            out
        } else {
            body.to_vec()
        };
        let request = ExportLogsServiceRequest::decode(&body[..]).unwrap();
        let tenant = Some(header("x-tenant")).filter(|t| !t.is_empty());
        let ok = |response: ExportLogsServiceResponse| {
            (
                StatusCode::OK,
                [("content-type", "application/x-protobuf")],
                response.encode_to_vec(),
            )
                .into_response()
        };
        match reply {
            HttpReply::Status(code, retry_after) => {
                let mut response = StatusCode::from_u16(code).unwrap().into_response();
                if let Some(after) = retry_after {
                    response
                        .headers_mut()
                        .insert("retry-after", after.parse().unwrap());
                }
                response
            }
            HttpReply::Garbage => (StatusCode::OK, "<html>not protobuf</html>").into_response(),
            HttpReply::Ok => {
                r.got.lock().unwrap().push((request, tenant));
                ok(ExportLogsServiceResponse::default())
            }
            HttpReply::Reject(n) => {
                r.got.lock().unwrap().push((request, tenant));
                ok(ExportLogsServiceResponse {
                    partial_success: Some(ExportLogsPartialSuccess {
                        rejected_log_records: n,
                        error_message: "scripted rejection".into(),
                    }),
                })
            }
        }
    }
    let r = Arc::new(HttpReceiver {
        script: Mutex::new(script.into()),
        ..HttpReceiver::default()
    });
    let app = axum::Router::new()
        .route("/v1/logs", axum::routing::post(handle))
        .with_state(r.clone());
    (r, app)
}

impl HttpReceiver {
    fn records(&self) -> usize {
        self.got
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(r, _)| &r.resource_logs)
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len())
            .sum()
    }
}

fn http_config(addr: SocketAddr, batch: Batch) -> OtlpConfig {
    OtlpConfig {
        protocol: Protocol::HttpProtobuf,
        endpoint: format!("http://{addr}/v1/logs"),
        ..config(addr, batch)
    }
}

#[tokio::test]
async fn http_protobuf_delivers_gzip_with_headers_and_retries_what_may_succeed() {
    let (receiver, addr) = http_receiver(vec![
        HttpReply::Status(503, Some("1")),
        HttpReply::Status(429, None),
    ])
    .await;
    let running = start(http_config(addr, fast_batch())).await;
    running.record(3).await;
    // Received, and the answer read by the exporter (it counts after the response).
    wait_for("3 records after a 503 and a 429", || {
        let (r, stats) = (receiver.clone(), running.stats.clone());
        async move { r.records() == 3 && stats.exported.load(Relaxed) == 3 }
    })
    .await;
    assert_eq!(running.stats.retries.load(Relaxed), 2);
    {
        let calls = receiver.calls.lock().unwrap();
        for (path, content_type, encoding, _) in calls.iter() {
            assert_eq!(path, "/v1/logs");
            assert_eq!(content_type, "application/x-protobuf");
            assert_eq!(encoding, "gzip");
        }
        // The 503's Retry-After (1 s) is waited out, longer than the first backoff (<= 0.75 s).
        assert!(
            calls[1].3 - calls[0].3 >= Duration::from_secs(1),
            "{:?}",
            calls[1].3 - calls[0].3
        );
        let got = receiver.got.lock().unwrap();
        assert_eq!(got[0].1.as_deref(), Some("team-a"));
        let resource = got[0].0.resource_logs[0].resource.as_ref().unwrap();
        assert!(
            resource
                .attributes
                .iter()
                .any(|kv| kv.key == "k8s.pod.name")
        );
    }
    let counters = running.stop().await;
    for loss in Loss::ALL {
        assert_eq!(counters.get(*loss), 0, "{loss:?}");
    }
}

#[tokio::test]
async fn http_protobuf_gives_up_on_client_errors_and_bad_bodies_and_counts_rejections() {
    let (receiver, addr) = http_receiver(vec![
        HttpReply::Status(400, None),
        HttpReply::Garbage,
        HttpReply::Reject(1),
    ])
    .await;
    let batch = Batch {
        size: 2,
        ..fast_batch()
    };
    let running = start(http_config(addr, batch)).await;
    running.record(2).await;
    running
        .wait_loss("the 400's batch given up", Loss::OtlpExportFailed, 2)
        .await;
    running.record(2).await;
    running
        .wait_loss(
            "the batch answered with a body that is not a response, given up",
            Loss::OtlpExportFailed,
            4,
        )
        .await;
    running.record(2).await;
    running
        .wait_loss(
            "the third batch, one record rejected",
            Loss::OtlpRejected,
            1,
        )
        .await;
    assert_eq!(running.stats.exported.load(Relaxed), 1);
    assert_eq!(running.stats.retries.load(Relaxed), 0);
    assert_eq!(receiver.calls.lock().unwrap().len(), 3);
    running.stop().await;
}

/// An OTLP/HTTP receiver behind TLS that demands a client certificate, both signed by a CA
/// made here: the exporter trusts the server through the configured CA and presents the
/// configured identity (`OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`/`_KEY`).
#[tokio::test]
async fn http_protobuf_delivers_over_mutual_tls() {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let ca = TestCa::new();
    let (server_cert, server_key) = ca.leaf("localhost");
    let (client_cert, client_key) = ca.leaf("triage-agent");

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
        .unwrap();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .build()
            .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(server_cert.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(server_key.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let (r, app) = http_app(vec![]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let handshakes = Arc::new(Mutex::new(Vec::new()));
    let seen = handshakes.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let app = app.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        seen.lock().unwrap().push(format!("refused: {e}"));
                        return;
                    }
                };
                let client = tls.get_ref().1.peer_certificates().map(<[_]>::len);
                seen.lock()
                    .unwrap()
                    .push(format!("client certificates {client:?}"));
                let service = hyper::service::service_fn(move |req| {
                    tower::ServiceExt::oneshot(app.clone(), req)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });

    let mut cfg = http_config(([127, 0, 0, 1], port).into(), fast_batch());
    cfg.endpoint = format!("https://localhost:{port}/v1/logs");
    cfg.tls = Some(crate::otlp::config::Tls {
        ca: Some(ca.pem.clone().into_bytes()),
        identity: Some((client_cert.into_bytes(), client_key.into_bytes())),
    });
    let running = start(cfg).await;
    running.record(3).await;
    wait_for("3 records over mutual TLS", || {
        let r = r.clone();
        async move { r.records() == 3 }
    })
    .await;
    assert!(
        handshakes
            .lock()
            .unwrap()
            .iter()
            .all(|h| h == "client certificates Some(1)"),
        "{handshakes:?}"
    );
    let counters = running.stop().await;
    assert_eq!(counters.get(Loss::OtlpExportFailed), 0);
}
