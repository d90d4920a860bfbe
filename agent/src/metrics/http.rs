//! The metrics listener's HTTP server, bounded for a port any pod can reach: at most
//! [`MAX_CONNECTIONS`] connections, [`MAX_CONNECTIONS_PER_PEER`] from one address (excess ones
//! are reset at once and counted), request headers read within [`HEADER_READ_TIMEOUT`] and at
//! most [`MAX_REQUEST_BUFFER`] bytes, a connection closed after [`CONNECTION_MAX_AGE`].
//!
//! What a request costs is bounded too: `/healthz` and `/readyz` read the state the components
//! publish (the store task's heartbeat, never a store command), and `/metrics` is served from a
//! snapshot computed at most once per [`SCRAPE_CACHE`] and shared by every scraper, as is a
//! failure to compute one (one store command per interval however many scrape, also while the
//! store is too slow to answer). `/readyz` explains itself only to a loopback peer;
//! others get the status line.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::{Request, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt as _;
use tracing::debug;

use super::MetricsState;
use crate::api::{ConnectionLimit, limit};

/// Most connections open at once. Who scrapes or probes holds one or two each (a Prometheus
/// replica, kubelet's three probes, a person's curl).
pub const MAX_CONNECTIONS: usize = 128;
/// Most connections open from one address: one flooding pod holds at most these, so kubelet's
/// probes and the scrapers, each from their own address, keep getting a slot until
/// `MAX_CONNECTIONS / MAX_CONNECTIONS_PER_PEER` (16) addresses flood at once (the
/// NetworkPolicy in deploy/ admits only the monitoring namespace).
pub const MAX_CONNECTIONS_PER_PEER: usize = 8;
/// A client must send a request's headers within this, and an idle kept-alive connection is
/// closed after it: a slow-loris client holds a slot at most this long.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed after this, after the request in flight (hyper's graceful shutdown),
/// then cut [`CLOSE_GRACE`] later whatever it is doing: a client that reads its answer slowly
/// cannot keep its slot either. Scrapes take milliseconds; a scraper reconnects.
pub const CONNECTION_MAX_AGE: Duration = Duration::from_secs(30);
/// How long a closing connection may finish its request.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Most bytes of a request buffered (request line and headers; the endpoints read no body).
/// hyper's minimum is 8 KiB; a scraper's request is a few hundred bytes.
pub const MAX_REQUEST_BUFFER: usize = 16 * 1024;
/// Most request headers.
pub const MAX_HEADERS: usize = 32;
/// How long a `/metrics` snapshot is served before a new one is computed. Prometheus scrapes
/// every 15 s or more; one second keeps values current for anyone and makes a flood of scrapes
/// cost the store one command a second.
pub const SCRAPE_CACHE: Duration = Duration::from_secs(1);
/// Connections the kernel queues until the server accepts them (Linux caps it at
/// `net.core.somaxconn`, 4096 by default). During a flood of connections the accept loop
/// refuses in bursts; a queue this deep keeps kubelet's connection from being dropped meanwhile
/// (a dropped SYN is retried only after a second).
pub const LISTEN_BACKLOG: u32 = 4096;
/// How long a scrape waits for the store's statistics (behind queries in its queue).
const SCRAPE_STORE_DEADLINE: Duration = Duration::from_secs(5);
/// After an accept error (out of file descriptors, most likely), wait before the next accept
/// rather than spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

const TEXT: &str = "text/plain; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Prometheus's text format, for scrapers that do not ask for OpenMetrics.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether the scrape's `Accept` asks for OpenMetrics (Prometheus 2.5 and later do, first);
/// anything else (curl, older scrapers, `promtool check metrics`) gets the text format 0.0.4.
fn wants_openmetrics(request: &Request) -> bool {
    request
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|part| {
            let mut params = part.split(';');
            params.next().map(str::trim) == Some("application/openmetrics-text")
                && !params.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"))
        })
}

/// The peer of the connection a request came on.
#[derive(Clone, Copy, Debug)]
struct Peer(SocketAddr);

/// When the connection a request came on was last answered a `/metrics`: one asking again
/// within [`SCRAPE_CACHE`] waits for the next snapshot (there is nothing new before it), so a
/// client scraping in a loop gets one answer a second per connection instead of the bandwidth
/// and CPU of a loop.
#[derive(Clone, Debug, Default)]
struct LastScrape(Arc<std::sync::Mutex<Option<Instant>>>);

impl LastScrape {
    /// Waits until a scrape on this connection is due, and marks it done.
    async fn pace(&self) {
        let last = *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(last) = last {
            tokio::time::sleep_until((last + SCRAPE_CACHE).into()).await;
        }
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
    }
}

/// What the handlers share.
#[derive(Clone)]
struct Server {
    state: MetricsState,
    cache: Arc<ScrapeCache>,
    connections: Arc<ConnectionLimit>,
}

/// The last `/metrics` answer and when it was computed: computed by one scraper at a time (the
/// others wait on the lock and then take it), at most once per [`SCRAPE_CACHE`]. A failure
/// (the store did not answer within [`SCRAPE_STORE_DEADLINE`], or is gone) is the answer for
/// the interval too: the scrapes that queued while the store was slow take it instead of each
/// sending the store another command.
#[derive(Default)]
struct ScrapeCache {
    last: tokio::sync::Mutex<Option<(Instant, Result<Bytes, &'static str>)>>,
    /// Snapshots computed since start (each is one store command).
    computed: AtomicU64,
}

impl ScrapeCache {
    async fn body(&self, server: &Server) -> Result<Bytes, &'static str> {
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = &*last
            && at.elapsed() < SCRAPE_CACHE
        {
            return answer.clone();
        }
        self.computed.fetch_add(1, Ordering::Relaxed);
        let answer = Self::compute(server).await;
        *last = Some((Instant::now(), answer.clone()));
        answer
    }

    /// One snapshot (one store command), rendered.
    async fn compute(server: &Server) -> Result<Bytes, &'static str> {
        let snapshot =
            match tokio::time::timeout(SCRAPE_STORE_DEADLINE, server.state.snapshot()).await {
                Ok(Some(mut snapshot)) => {
                    snapshot.connections = [
                        Some(&server.connections),
                        server.state.grpc_connections.as_ref(),
                    ]
                    .into_iter()
                    .flatten()
                    .map(|c| super::ListenerSnapshot {
                        listener: c.name(),
                        open: c.open() as u64,
                        refused: c.refused(),
                    })
                    .collect();
                    snapshot
                }
                Ok(None) => return Err("the agent is shutting down\n"),
                Err(_) => return Err("the evidence store did not answer in time\n"),
            };
        let text = super::render(snapshot).map_err(|_| "encoding the metrics failed\n")?;
        Ok(Bytes::from(text))
    }
}

/// `/healthz`: 200 while the agent's core loop turns (kubelet's liveness probe).
async fn healthz(State(server): State<Server>) -> Response {
    let health = server.state.agent.health();
    if health.live {
        (StatusCode::OK, [(header::CONTENT_TYPE, TEXT)], "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, TEXT)],
            "not live\n",
        )
            .into_response()
    }
}

/// `/readyz`: 200 when the agent's answers can be trusted (programs attached, pod list read,
/// store on disk writable), 503 otherwise (kubelet's readiness probe). A loopback peer (a
/// person on the node or in the pod) is told each problem, one per line; anyone else only the
/// status, since the reasons name the node's kernel, files and API server errors.
async fn readyz(State(server): State<Server>, request: Request) -> Response {
    let health = server.state.agent.health();
    let local = request
        .extensions()
        .get::<Peer>()
        .is_some_and(|p| p.0.ip().is_loopback());
    let (code, body) = match (health.problems.is_empty(), local) {
        (true, _) => (StatusCode::OK, "ok\n".to_owned()),
        (false, true) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", health.problems.join("\n")),
        ),
        (false, false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready (the reasons: `triage-agent status`, or /readyz from loopback)\n".to_owned(),
        ),
    };
    (code, [(header::CONTENT_TYPE, TEXT)], body).into_response()
}

async fn metrics(State(server): State<Server>, request: Request) -> Response {
    if let Some(last) = request.extensions().get::<LastScrape>() {
        last.pace().await;
    }
    let openmetrics = wants_openmetrics(&request);
    match server.cache.body(&server).await {
        Ok(body) if openmetrics => {
            (StatusCode::OK, [(header::CONTENT_TYPE, OPENMETRICS)], body).into_response()
        }
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
            super::openmetrics_to_text(&String::from_utf8_lossy(&body)),
        )
            .into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, TEXT)],
            why,
        )
            .into_response(),
    }
}

fn router(server: Server) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(server)
}

/// Binds the metrics listener with a backlog of [`LISTEN_BACKLOG`].
pub fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As std and tokio's own bind: a restarted agent rebinds at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves `/metrics`, `/healthz` and `/readyz` until cancelled, with the bounds above.
pub async fn serve(
    state: MetricsState,
    listener: tokio::net::TcpListener,
    cancel: CancellationToken,
) -> Result<(), std::io::Error> {
    let connections = ConnectionLimit::new("metrics", MAX_CONNECTIONS, MAX_CONNECTIONS_PER_PEER);
    serve_with(state, listener, connections, cancel).await
}

/// [`serve`] with its own connection bounds.
pub async fn serve_with(
    state: MetricsState,
    listener: tokio::net::TcpListener,
    connections: Arc<ConnectionLimit>,
    cancel: CancellationToken,
) -> Result<(), std::io::Error> {
    let app = router(Server {
        state,
        cache: Arc::default(),
        connections: connections.clone(),
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_REQUEST_BUFFER)
        .max_headers(MAX_HEADERS);
    let tracker = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    debug!(%error, "metrics: accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let Some(permit) = connections.admit(peer.ip()) else {
            limit::refuse(stream);
            continue;
        };
        let app = app.clone();
        let last_scrape = LastScrape::default();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
            request.extensions_mut().insert(Peer(peer));
            request.extensions_mut().insert(last_scrape.clone());
            app.clone().oneshot(request)
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                () = tokio::time::sleep(CONNECTION_MAX_AGE) => {}
                () = cancel.cancelled() => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(CLOSE_GRACE, tracker.wait()).await;
    Ok(())
}

#[cfg(test)]
mod tests;
