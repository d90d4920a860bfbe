//! The exporter task: a drain from the store's subscription into a bounded queue, and a
//! batcher that sends the queue to the collector with retries. Both run in one task
//! ([`spawn`] returns it), each never waiting on the other: the drain `try_send`s and counts
//! what does not fit.
//!
//! Retries follow the OTLP exporter specification: the retryable gRPC codes (UNAVAILABLE,
//! RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, ABORTED, CANCELLED, OUT_OF_RANGE, DATA_LOSS) are
//! retried with exponential backoff and jitter until the batch's retry window
//! (`OTEL_BLRP_EXPORT_TIMEOUT`) would pass; any other error gives the batch up at once.
//! <https://opentelemetry.io/docs/specs/otlp/#failures>

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, SystemTime},
};

use tokio::{
    sync::mpsc::{self, error::TrySendError},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tonic::{
    Code,
    codec::CompressionEncoding,
    metadata::{Ascii, MetadataKey, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use tracing::{debug, info, warn};
use triage_agent_proto::opentelemetry::proto::{
    collector::logs::v1::{ExportLogsServiceRequest, logs_service_client::LogsServiceClient},
    resource::v1::Resource,
};

use super::{
    OtlpConfig,
    config::Protocol,
    http::{
        Failure, HttpTransport, Roots, choose_roots, compiled_roots_note, rejected, system_roots,
    },
    record,
};
use crate::{
    evidence::{Evidence, Filter},
    loss::{Counters, Loss},
    store::{Lag, StoreHandle, SubscribeError},
};

/// First wait before a retry; doubled per attempt up to [`MAX_BACKOFF`], each wait jittered
/// to 50-150% so a fleet of agents does not retry in step after a collector restart.
const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long shutdown spends sending what is queued (one attempt per batch): inside the
/// agent's 5 s shutdown grace.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(3);
/// Wait before subscribing again when the store has no room for another watcher.
const RESUBSCRIBE_DELAY: Duration = Duration::from_secs(1);

/// The exporter's own figures, read by `/metrics` (its losses are in [`Counters`]).
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Records the collector accepted.
    pub exported: AtomicU64,
    /// Export attempts that failed with a retryable error and were retried.
    pub retries: AtomicU64,
    /// Record updates waiting in the queue.
    pub queued: AtomicU64,
    /// The queue's bound.
    pub capacity: u64,
}

/// Why the exporter could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("OTLP endpoint {endpoint}")]
    Endpoint {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error(transparent)]
    Http(#[from] super::http::SetupError),
}

/// A record update waiting for export, with when the agent saw it.
struct Queued {
    observed: SystemTime,
    evidence: Evidence,
}

/// Which record an update is about (the store's aggregation key): updates of one record that
/// wait in the same batch are sent once, as the latest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RecordKey {
    kind: crate::evidence::Kind,
    pod: Option<String>,
    container: Option<Arc<str>>,
    detail: crate::evidence::DetailKey,
}

impl RecordKey {
    fn of(e: &Evidence) -> RecordKey {
        RecordKey {
            kind: e.kind(),
            pod: e.pod().map(|p| p.uid.clone()),
            container: e.subject.container.clone(),
            detail: e.detail.key(),
        }
    }
}

/// The batch being filled: distinct records, each at its latest update.
#[derive(Default)]
struct Pending {
    updates: Vec<Queued>,
    index: std::collections::HashMap<RecordKey, usize>,
}

impl Pending {
    fn push(&mut self, q: Queued) {
        let key = RecordKey::of(&q.evidence);
        match self.index.get(&key).and_then(|i| self.updates.get_mut(*i)) {
            Some(slot) => *slot = q,
            None => {
                self.index.insert(key, self.updates.len());
                self.updates.push(q);
            }
        }
    }

    fn len(&self) -> usize {
        self.updates.len()
    }

    fn take(&mut self) -> Vec<Queued> {
        self.index.clear();
        std::mem::take(&mut self.updates)
    }
}

/// The gRPC transport's roots: the system's, or the compiled-in ones when it has none
/// ([`choose_roots`], shared with the HTTP transport).
fn trust_roots(tls: ClientTlsConfig, system_roots: usize) -> ClientTlsConfig {
    match choose_roots(system_roots) {
        Roots::System => tls.with_native_roots(),
        Roots::Compiled => {
            compiled_roots_note();
            tls.with_webpki_roots()
        }
    }
}

fn channel(config: &OtlpConfig) -> Result<Channel, ExportError> {
    let error = |source| ExportError::Endpoint {
        endpoint: super::config::redacted_endpoint(&config.endpoint),
        source,
    };
    let mut endpoint = Endpoint::from_shared(config.endpoint.clone())
        .map_err(error)?
        .connect_timeout(config.timeout)
        .timeout(config.timeout);
    if let Some(tls) = &config.tls {
        let mut tls_config = trust_roots(ClientTlsConfig::new(), system_roots().len());
        if let Some(ca) = &tls.ca {
            tls_config = tls_config.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &tls.identity {
            tls_config = tls_config.identity(Identity::from_pem(cert, key));
        }
        endpoint = endpoint.tls_config(tls_config).map_err(error)?;
    }
    // Lazy: the agent starts (and collects) whether or not the collector is up.
    Ok(endpoint.connect_lazy())
}

/// Sets up the exporter: returns its figures for `/metrics` and the task, which runs until
/// cancelled (then flushes once, within [`SHUTDOWN_FLUSH`]) or until the store is gone.
/// Fails only on settings tonic refuses (the endpoint, TLS).
pub fn spawn(
    config: OtlpConfig,
    node: &str,
    store: StoreHandle,
    counters: Arc<Counters>,
    cancel: CancellationToken,
) -> Result<(Arc<ExportStats>, impl Future<Output = ()> + Send + 'static), ExportError> {
    let transport = match config.protocol {
        Protocol::Grpc => {
            let mut client = LogsServiceClient::new(channel(&config)?);
            if config.gzip {
                client = client.send_compressed(CompressionEncoding::Gzip);
            }
            Transport::Grpc {
                client,
                headers: headers(&config.headers),
            }
        }
        Protocol::HttpProtobuf => Transport::Http(Box::new(HttpTransport::new(&config)?)),
    };
    let stats = Arc::new(ExportStats {
        capacity: config.batch.queue as u64,
        ..ExportStats::default()
    });
    let (tx, rx) = mpsc::channel(config.batch.queue);
    let drain = Drain {
        store,
        queue: tx,
        counters: counters.clone(),
        stats: stats.clone(),
    };
    let sender = Sender {
        transport,
        resource: record::resource(node, &config.resource),
        counters,
        stats: stats.clone(),
        config,
    };
    let task = async move {
        info!(
            endpoint = %super::config::redacted_endpoint(&sender.config.endpoint),
            protocol = sender.config.protocol.as_str(),
            "exporting evidence as OTLP logs"
        );
        tokio::join!(drain.run(cancel.clone()), sender.run(rx, cancel));
    };
    Ok((stats, task))
}

/// Valid metadata only (the configuration checked every entry).
fn headers(pairs: &[(String, String)]) -> Vec<(MetadataKey<Ascii>, MetadataValue<Ascii>)> {
    pairs
        .iter()
        .filter_map(|(k, v)| Some((k.parse().ok()?, v.parse().ok()?)))
        .collect()
}

/// Moves updates from the store's subscription into the queue.
struct Drain {
    store: StoreHandle,
    queue: mpsc::Sender<Queued>,
    counters: Arc<Counters>,
    stats: Arc<ExportStats>,
}

impl Drain {
    /// `false` when the queue is closed (the sender ended).
    fn offer(&self, evidence: Evidence) -> bool {
        let queued = Queued {
            observed: SystemTime::now(),
            evidence,
        };
        match self.queue.try_send(queued) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Relaxed);
                true
            }
            Err(TrySendError::Full(_)) => {
                self.counters.add(Loss::OtlpQueueFull, 1);
                true
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }

    async fn run(self, cancel: CancellationToken) {
        let filter = Filter {
            include_unattributed: true,
            ..Filter::default()
        };
        // The lag of the subscription the store dropped, until a new one is in place.
        let mut behind: Option<Arc<Lag>> = None;
        loop {
            let resume = behind.clone();
            let subscription = tokio::select! {
                () = cancel.cancelled() => return,
                s = async {
                    match resume {
                        Some(lag) => self.store.resubscribe(filter.clone(), lag).await,
                        None => self.store.subscribe_resumable(filter.clone()).await,
                    }
                } => s,
            };
            let mut subscription = match subscription {
                Ok(s) => s,
                Err(SubscribeError::Gone(_)) => return,
                Err(SubscribeError::TooMany) => {
                    warn!("the store has no room for the OTLP exporter's subscription; retrying");
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(RESUBSCRIBE_DELAY) => continue,
                    }
                }
            };
            if let Some(lag) = behind.take() {
                // Final now that the new subscription is in place: every update in between.
                let missed = lag.missed();
                self.counters.add(Loss::OtlpLagged, missed);
                warn!(
                    missed,
                    "the OTLP exporter fell behind the store; subscribed again"
                );
            }
            loop {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => {
                        // What the store published before stopping still goes out.
                        while let Ok(e) = subscription.updates.try_recv() {
                            if !self.offer(e) {
                                return;
                            }
                        }
                        return;
                    }
                    update = subscription.updates.recv() => match update {
                        Some(e) => {
                            if !self.offer(e) {
                                return;
                            }
                        }
                        None => break,
                    },
                }
            }
            if !subscription.lag.is_lagged() {
                // Closed without lagging: the store is gone.
                return;
            }
            // The store counts what this subscription misses until the next one is in place.
            behind = Some(subscription.lag.clone());
        }
    }
}

/// Whether an export that failed with `code` may succeed later (the OTLP specification's list;
/// RESOURCE_EXHAUSTED too: a collector sheds load with it).
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::ResourceExhausted
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Cancelled
            | Code::OutOfRange
            | Code::DataLoss
    )
}

/// `backoff` scaled to 50-150%, from the clock's nanoseconds (no need for a random generator:
/// agents started together still differ by their nanoseconds).
fn jittered(backoff: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let percent = 50 + (nanos % 101);
    backoff * percent / 100
}

/// How one batch ended.
enum Sent {
    /// Accepted, rejected or given up (each counted).
    Done,
    /// Shutdown came first: the request goes into the final flush.
    Cancelled(ExportLogsServiceRequest),
}

/// How requests reach the collector.
enum Transport {
    Grpc {
        client: LogsServiceClient<Channel>,
        headers: Vec<(MetadataKey<Ascii>, MetadataValue<Ascii>)>,
    },
    Http(Box<HttpTransport>),
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Failure {
        Failure {
            retryable: retryable(status.code()),
            code: format!("{:?}", status.code()),
            message: status.message().to_owned(),
            retry_after: None,
        }
    }
}

/// Batches the queue and sends it.
struct Sender {
    transport: Transport,
    resource: Resource,
    counters: Arc<Counters>,
    stats: Arc<ExportStats>,
    config: OtlpConfig,
}

impl Sender {
    fn request(&self, batch: Vec<Queued>) -> (ExportLogsServiceRequest, u64) {
        let records: Vec<_> = batch
            .iter()
            .map(|q| {
                (
                    record::Subject::of(&q.evidence),
                    record::log_record(&q.evidence, q.observed),
                )
            })
            .collect();
        let n = records.len() as u64;
        (record::request(&self.resource, records), n)
    }

    async fn attempt(
        &mut self,
        request: &ExportLogsServiceRequest,
        timeout: Duration,
    ) -> Result<i64, Failure> {
        match &mut self.transport {
            Transport::Grpc { client, headers } => {
                let mut req = tonic::Request::new(request.clone());
                req.set_timeout(timeout);
                for (k, v) in headers.iter() {
                    req.metadata_mut().insert(k.clone(), v.clone());
                }
                let response = client.export(req).await?.into_inner();
                Ok(rejected(response.partial_success))
            }
            Transport::Http(http) => http.export(request, timeout).await,
        }
    }

    fn accepted(&self, n: u64, rejected: i64) {
        let rejected = u64::try_from(rejected).unwrap_or(0).min(n);
        self.counters.add(Loss::OtlpRejected, rejected);
        self.stats.exported.fetch_add(n - rejected, Relaxed);
    }

    /// Sends one batch, retrying what may succeed later, until it is done or shutdown comes.
    async fn send(
        &mut self,
        request: ExportLogsServiceRequest,
        n: u64,
        cancel: &CancellationToken,
    ) -> Sent {
        let started = Instant::now();
        let mut backoff = INITIAL_BACKOFF;
        loop {
            let timeout = self.config.timeout;
            let outcome = tokio::select! {
                () = cancel.cancelled() => return Sent::Cancelled(request),
                outcome = self.attempt(&request, timeout) => outcome,
            };
            let failure = match outcome {
                Ok(rejected) => {
                    self.accepted(n, rejected);
                    return Sent::Done;
                }
                Err(failure) => failure,
            };
            // The receiver's Retry-After, when it asks for longer than the backoff.
            let wait = jittered(backoff).max(failure.retry_after.unwrap_or_default());
            if !failure.retryable || started.elapsed() + wait > self.config.batch.retry_window {
                self.counters.add(Loss::OtlpExportFailed, n);
                warn!(
                    code = %failure.code,
                    message = %failure.message,
                    records = n,
                    "OTLP export failed; records dropped"
                );
                return Sent::Done;
            }
            self.stats.retries.fetch_add(1, Relaxed);
            debug!(code = %failure.code, message = %failure.message, ?wait, "OTLP export failed; retrying");
            tokio::select! {
                () = cancel.cancelled() => return Sent::Cancelled(request),
                () = tokio::time::sleep(wait) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn run(mut self, mut queue: mpsc::Receiver<Queued>, cancel: CancellationToken) {
        let size = self.config.batch.size;
        let mut batch = Pending::default();
        let mut due: Option<Instant> = None;
        let mut pending = None;
        loop {
            let send_now = tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                () = sleep_until(due), if due.is_some() => true,
                q = queue.recv() => match q {
                    Some(q) => {
                        self.stats.queued.fetch_sub(1, Relaxed);
                        batch.push(q);
                        due.get_or_insert_with(|| Instant::now() + self.config.batch.interval);
                        batch.len() >= size
                    }
                    None => break,
                },
            };
            if send_now {
                due = None;
                let (request, n) = self.request(batch.take());
                if let Sent::Cancelled(request) = self.send(request, n, &cancel).await {
                    pending = Some((request, n));
                    break;
                }
            }
        }
        self.flush(pending, batch.take(), queue).await;
    }

    /// Shutdown: what is pending, batched and queued goes out once, within [`SHUTDOWN_FLUSH`];
    /// what does not is counted as failed.
    async fn flush(
        &mut self,
        pending: Option<(ExportLogsServiceRequest, u64)>,
        batch: Vec<Queued>,
        mut queue: mpsc::Receiver<Queued>,
    ) {
        let deadline = Instant::now() + SHUTDOWN_FLUSH;
        // The drain ends at once on cancellation; its last updates are in the queue.
        let mut all = Pending::default();
        for q in batch {
            all.push(q);
        }
        let _ = tokio::time::timeout_at(deadline, async {
            while let Some(q) = queue.recv().await {
                all.push(q);
            }
        })
        .await;
        queue.close();
        while let Ok(q) = queue.try_recv() {
            all.push(q);
        }
        self.stats.queued.store(0, Relaxed);
        let mut requests: Vec<(ExportLogsServiceRequest, u64)> = pending.into_iter().collect();
        let mut rest = all.take();
        while !rest.is_empty() {
            let chunk: Vec<Queued> = rest
                .drain(..rest.len().min(self.config.batch.size))
                .collect();
            requests.push(self.request(chunk));
        }
        let total: u64 = requests.iter().map(|(_, n)| n).sum();
        let mut failed = 0;
        for (request, n) in requests {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                failed += n;
                continue;
            }
            match tokio::time::timeout(left, self.attempt(&request, left.min(self.config.timeout)))
                .await
            {
                Ok(Ok(rejected)) => self.accepted(n, rejected),
                _ => failed += n,
            }
        }
        if failed > 0 {
            self.counters.add(Loss::OtlpExportFailed, failed);
            warn!(
                failed,
                "OTLP export at shutdown incomplete; records dropped"
            );
        } else if total > 0 {
            info!(records = total, "OTLP export flushed at shutdown");
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
