//! Stand-in Kubernetes API server: serves Pods over the real list/watch protocol
//! (resourceVersion, watch streams, bookmarks, 410 Gone, field selectors) on
//! 127.0.0.1 so kube-rs runs unmodified against it.
//!
//! Scope: read-only `v1/pods` (list, get, watch), `v1/namespaces` and
//! `networking.k8s.io/v1` NetworkPolicies (list, get: what the CLI reads to explain drops;
//! see [`objects`]), plus `/version`. Pods are changed
//! through the Rust API ([`ApiServer::apply_pod`], [`ApiServer::delete_pod`]), not
//! over HTTP. Every change is appended to an in-memory history keyed by a global
//! resourceVersion; a watch is just a cursor into that history, which gives resumable
//! watches, and [`ApiServer::compact`] drops the history so old cursors get 410 Gone.
//! History is unbounded until compacted; that is fine for test-sized workloads.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStatus, HostIP, Pod, PodCondition,
    PodIP, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

mod objects;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Real resourceVersions are large opaque numbers; starting well above 0 keeps
/// "0" (which means "any version" in the protocol) distinct from every real one.
const FIRST_RV: u64 = 1000;
/// How often a watch that asked for bookmarks gets one. Real servers use ~1 min;
/// tests want resume points to stay fresh.
const BOOKMARK_EVERY: Duration = Duration::from_secs(1);
/// Used when a watch has no timeoutSeconds (the real default is 30–60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
/// Bound on the request log kept for tests so a long soak cannot grow it forever.
const LOG_CAP: usize = 1000;

/// A running stand-in API server. Dropping it stops the server thread and closes
/// every open connection, including watch streams.
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// State shared between the public handle and the server thread.
struct Shared {
    state: Mutex<State>,
    /// Bumped on every change (pods, availability, shutdown) to wake watch streams
    /// and the accept loop; a `watch` channel never loses a wake-up.
    changed: watch::Sender<()>,
    lists: AtomicU64,
    watches: AtomicU64,
}

struct State {
    pods: BTreeMap<(String, String), Arc<Pod>>,
    /// Namespaces and NetworkPolicies (list and get only).
    objects: objects::Objects,
    /// Every change since the last compaction, in resourceVersion order.
    history: Vec<Change>,
    /// The newest resourceVersion handed out.
    rv: u64,
    /// Watches starting before this version can no longer be served (410 Gone).
    compacted: u64,
    available: bool,
    latency: Duration,
    shutdown: bool,
    log: Vec<String>,
}

/// One change to one pod. `after` is what watchers receive; for a deletion it is the
/// last state of the pod with the deletion's resourceVersion, as the real server sends.
struct Change {
    rv: u64,
    before: Option<Arc<Pod>>,
    after: Arc<Pod>,
    deleted: bool,
}

impl Shared {
    /// A panic while holding the lock cannot leave `State` half-updated in a way that
    /// matters for tests, so a poisoned lock is simply reused.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn notify(&self) {
        self.changed.send_replace(());
    }
}

impl ApiServer {
    /// Binds 127.0.0.1:0 and serves on a dedicated thread with its own tokio runtime
    /// (so it works from sync tests and from inside other runtimes). Drop stops it
    /// (joins the thread, closes watches).
    pub fn start() -> std::io::Result<ApiServer> {
        // Bind and build the runtime here so failures reach the caller, not a thread.
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pods: BTreeMap::new(),
                objects: objects::Objects::default(),
                history: Vec::new(),
                rv: FIRST_RV,
                compacted: FIRST_RV,
                available: true,
                latency: Duration::ZERO,
                shutdown: false,
                log: Vec::new(),
            }),
            changed: watch::channel(()).0,
            lists: AtomicU64::new(0),
            watches: AtomicU64::new(0),
        });
        let server_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("apiserver-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => accept_loop(listener, server_shared).await,
                        Err(e) => eprintln!("apiserver: cannot register listener: {e}"),
                    }
                });
                // Dropping the runtime here cancels every connection task, which is
                // what closes watch streams that are still open at shutdown.
            })?;
        Ok(ApiServer {
            addr,
            shared,
            thread: Some(thread),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL of the server, e.g. `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig with one cluster/user/context pointing at [`Self::url`],
    /// no auth, and current-context set. It is YAML; kube also accepts JSON there.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster:\n    server: {}\n\
             users:\n- name: sim\n  user: {{}}\ncontexts:\n- name: sim\n  context:\n    cluster: sim\n\
             \x20   user: sim\n    namespace: default\ncurrent-context: sim\npreferences: {{}}\n",
            self.url()
        );
        std::fs::write(path, text)
    }

    /// Create or replace a pod (keyed by namespace/name; a missing namespace means
    /// "default"). Sets metadata.resourceVersion from a global monotonically increasing
    /// counter and fills creationTimestamp and uid if absent (kept from the previous
    /// object on replace, as the real server does). Emits ADDED or MODIFIED to matching
    /// watches, and ADDED/DELETED when the change moves the pod into/out of a watch's
    /// field or label selector.
    pub fn apply_pod(&self, mut pod: Pod) {
        let mut st = self.shared.lock();
        st.rv += 1;
        let rv = st.rv;
        let ns = pod
            .metadata
            .namespace
            .get_or_insert_with(|| "default".to_owned())
            .clone();
        if !st.objects.pod_namespaces.contains(&ns) {
            st.objects.pod_namespaces.push(ns.clone());
        }
        let key = (ns, pod.metadata.name.clone().unwrap_or_default());
        let before = st.pods.get(&key).cloned();
        let meta = &mut pod.metadata;
        meta.resource_version = Some(rv.to_string());
        let old_meta = before.as_ref().map(|p| &p.metadata);
        if meta.creation_timestamp.is_none() {
            meta.creation_timestamp = old_meta
                .and_then(|m| m.creation_timestamp.clone())
                .or_else(|| Some(now()));
        }
        if meta.uid.is_none() {
            meta.uid = old_meta
                .and_then(|m| m.uid.clone())
                .or_else(|| Some(format!("00000000-0000-4000-8000-{rv:012x}")));
        }
        let after = Arc::new(pod);
        st.pods.insert(key, Arc::clone(&after));
        self.record(st, before, after, false);
    }

    /// Delete a pod; emits DELETED (object with a new resourceVersion) to matching
    /// watches. Returns the deleted pod as sent to watchers, or None if it did not exist.
    pub fn delete_pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        let mut st = self.shared.lock();
        let before = st.pods.remove(&(namespace.to_owned(), name.to_owned()))?;
        st.rv += 1;
        let mut last = Pod::clone(&before);
        last.metadata.resource_version = Some(st.rv.to_string());
        let after = Arc::new(last);
        self.record(st, Some(before), Arc::clone(&after), true);
        Some(Pod::clone(&after))
    }

    /// Creates or replaces a Namespace (its `kubernetes.io/metadata.name` label is added as
    /// the real API server adds it).
    pub fn apply_namespace(&self, mut namespace: k8s_openapi::api::core::v1::Namespace) {
        let mut st = self.shared.lock();
        st.rv += 1;
        namespace.metadata.resource_version = Some(st.rv.to_string());
        let name = namespace.metadata.name.clone().unwrap_or_default();
        st.objects.namespaces.insert(name, namespace);
    }

    /// Creates or replaces a NetworkPolicy.
    pub fn apply_network_policy(
        &self,
        mut policy: k8s_openapi::api::networking::v1::NetworkPolicy,
    ) {
        let mut st = self.shared.lock();
        st.rv += 1;
        policy.metadata.resource_version = Some(st.rv.to_string());
        let key = (
            policy.metadata.namespace.clone().unwrap_or_default(),
            policy.metadata.name.clone().unwrap_or_default(),
        );
        st.objects.policies.insert(key, policy);
    }

    /// Deletes a NetworkPolicy; returns whether it existed.
    pub fn delete_network_policy(&self, namespace: &str, name: &str) -> bool {
        let mut st = self.shared.lock();
        st.rv += 1;
        st.objects
            .policies
            .remove(&(namespace.to_owned(), name.to_owned()))
            .is_some()
    }

    /// Appends a change (whose rv was just taken) to the history and wakes watchers.
    fn record(
        &self,
        mut st: MutexGuard<'_, State>,
        before: Option<Arc<Pod>>,
        after: Arc<Pod>,
        deleted: bool,
    ) {
        let rv = st.rv;
        st.history.push(Change {
            rv,
            before,
            after,
            deleted,
        });
        drop(st);
        self.shared.notify();
    }

    /// When false: every request gets 503 with a Status body, and open watch streams
    /// are closed. Simulates an API server outage.
    pub fn set_available(&self, available: bool) {
        self.shared.lock().available = available;
        self.shared.notify();
    }

    /// Added delay before every response (simulates a slow API server).
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    /// Number of list requests received so far, including ones refused during an
    /// outage (tests assert the client retried).
    pub fn list_requests(&self) -> u64 {
        self.shared.lists.load(Ordering::Relaxed)
    }

    /// Number of watch requests received so far, including ones refused during an
    /// outage.
    pub fn watch_requests(&self) -> u64 {
        self.shared.watches.load(Ordering::Relaxed)
    }

    /// Forget history up to the current resourceVersion, so a watch from an older
    /// resourceVersion gets 410 Gone (tests relist behaviour). A live watch that has
    /// not yet sent the forgotten events also gets 410, as a slow watcher would on a
    /// real server.
    pub fn compact(&self) {
        let mut st = self.shared.lock();
        st.compacted = st.rv;
        st.history.clear();
        drop(st);
        self.shared.notify();
    }

    /// Request URIs seen so far (bounded), to check what kube-rs actually sends.
    #[cfg(test)]
    fn request_log(&self) -> Vec<String> {
        self.shared.lock().log.clone()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.notify();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            eprintln!("apiserver: server thread panicked");
        }
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let mut changed = shared.changed.subscribe();
    loop {
        if shared.lock().shutdown {
            return;
        }
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(stream, Arc::clone(&shared)));
                }
                Err(e) => {
                    // E.g. EMFILE: back off instead of spinning on the error.
                    eprintln!("apiserver: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            res = changed.changed() => if res.is_err() { return },
        }
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let service = hyper::service::service_fn(move |req| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
    });
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = result {
        // Clients hanging up (often mid-watch) are routine; only log the unexpected.
        let io_kind = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .map(std::io::Error::kind);
        let routine = e.is_incomplete_message()
            || e.is_canceled()
            || e.is_closed()
            || e.is_parse()
            || matches!(
                io_kind,
                Some(std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset)
            );
        if !routine {
            eprintln!("apiserver: connection error: {e}");
        }
    }
}

enum Route<'a> {
    Collection(Option<&'a str>),
    Pod(&'a str, &'a str),
    Object(objects::Route<'a>),
    Version,
    Unknown,
}

fn route(path: &str) -> Route<'_> {
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    match segments.as_slice() {
        ["api", "v1", "pods"] => Route::Collection(None),
        ["api", "v1", "namespaces", ns, "pods"] if !ns.is_empty() => Route::Collection(Some(ns)),
        ["api", "v1", "namespaces", ns, "pods", name] if !ns.is_empty() && !name.is_empty() => {
            Route::Pod(ns, name)
        }
        ["version"] => Route::Version,
        _ => objects::route(&segments).map_or(Route::Unknown, Route::Object),
    }
}

async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let uri = req.uri().clone();
    {
        let mut st = shared.lock();
        if st.log.len() < LOG_CAP {
            st.log.push(format!("{} {uri}", req.method()));
        }
    }
    let route = route(uri.path());
    let params = parse_query(uri.query().unwrap_or("")).and_then(|q| Params::parse(&q));
    if let (Route::Collection(_), Ok(p)) = (&route, &params) {
        let counter = if p.watch {
            &shared.watches
        } else {
            &shared.lists
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    let latency = shared.lock().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if !shared.lock().available {
        let msg = "the server is currently unable to handle the request";
        return status(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", msg);
    }
    if req.method() != Method::GET {
        let msg = format!("the server does not allow this method: {}", req.method());
        return status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", &msg);
    }
    let params = match params {
        Ok(p) => p,
        Err(msg) => return bad_request(&msg),
    };
    match route {
        Route::Collection(ns) => match Selector::parse(ns, &params) {
            Ok(sel) if params.watch => start_watch(shared, sel, &params),
            Ok(sel) => list(shared, &sel),
            Err(msg) => bad_request(&msg),
        },
        Route::Pod(ns, name) => {
            let pod = shared
                .lock()
                .pods
                .get(&(ns.to_owned(), name.to_owned()))
                .cloned();
            match pod.map(|p| serde_json::to_value(&*p)) {
                Some(Ok(v)) => json_response(StatusCode::OK, &v),
                Some(Err(e)) => internal_error(&e),
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("pods \"{name}\" not found"),
                ),
            }
        }
        Route::Object(r) => {
            let st = shared.lock();
            match st.objects.serve(&r, st.rv) {
                Ok(v) => json_response(StatusCode::OK, &v),
                Err(msg) => status(StatusCode::NOT_FOUND, "NotFound", &msg),
            }
        }
        Route::Version => json_response(
            StatusCode::OK,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-sim",
                "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                "buildDate": "2025-04-23T00:00:00Z", "goVersion": "go1.24.0",
                "compiler": "gc", "platform": "linux/amd64"}),
        ),
        Route::Unknown => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        ),
    }
}

fn list(shared: &Shared, sel: &Selector) -> Response<Body> {
    // Every list is served from the current state in one page (limit/continue are
    // accepted and ignored): "at least as new as" any given version is always
    // satisfied, and tests do not need historical snapshots.
    let st = shared.lock();
    let mut items = Vec::new();
    for pod in st.pods.values().filter(|pod| sel.matches(pod)) {
        match serde_json::to_value(&**pod) {
            Ok(mut v) => {
                // The real server omits apiVersion/kind on list items; so do we, so
                // that clients relying on them would break here as they would there.
                if let Value::Object(map) = &mut v {
                    map.remove("apiVersion");
                    map.remove("kind");
                }
                items.push(v);
            }
            Err(e) => return internal_error(&e),
        }
    }
    json_response(
        StatusCode::OK,
        &json!({"apiVersion": "v1", "kind": "PodList",
            "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
    )
}

fn start_watch(shared: &Arc<Shared>, sel: Selector, p: &Params) -> Response<Body> {
    let initial = match p.send_initial_events {
        Some(true) if p.rv_match.as_deref() != Some("NotOlderThan") || !p.bookmarks => {
            // Same rule (and status) as the real server's validation.
            let msg = "sendInitialEvents requires allowWatchBookmarks=true and \
                       resourceVersionMatch=NotOlderThan";
            return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", msg);
        }
        Some(explicit) => explicit,
        // Unset or "0": the watch starts with synthetic ADDED events for current state.
        None => p.rv.is_none(),
    };
    // Subscribe before reading state so no change between the two is missed.
    let changed = shared.changed.subscribe();
    let st = shared.lock();
    let mut w = WatchStream {
        shared: Arc::clone(shared),
        changed,
        sel,
        cursor: st.rv,
        pending: VecDeque::new(),
        finished: false,
        bookmarks: p.bookmarks,
        next_bookmark: Instant::now() + BOOKMARK_EVERY,
        deadline: Instant::now() + p.timeout.unwrap_or(DEFAULT_WATCH_TIMEOUT),
    };
    if initial {
        for pod in st.pods.values() {
            if w.sel.matches(pod) {
                w.push_event("ADDED", pod);
            }
        }
        if p.send_initial_events == Some(true) {
            w.push_bookmark(true);
        }
    } else if let Some(from) = p.rv {
        if from < st.compacted {
            w.push_expired(from, st.compacted);
        } else {
            w.cursor = from;
        }
    }
    drop(st);
    let stream = futures_util::stream::unfold(w, |mut w| async move {
        let chunk = w.next_chunk().await?;
        Some((Ok::<_, Infallible>(Frame::data(chunk)), w))
    });
    let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// One open watch: a cursor into the history plus lines waiting to be written.
struct WatchStream {
    shared: Arc<Shared>,
    changed: watch::Receiver<()>,
    sel: Selector,
    /// Every change with rv <= cursor has been considered for this watch.
    cursor: u64,
    pending: VecDeque<Bytes>,
    /// Write what is pending, then end the stream.
    finished: bool,
    bookmarks: bool,
    next_bookmark: Instant,
    deadline: Instant,
}

impl WatchStream {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                return Some(line);
            }
            if self.finished {
                return None;
            }
            self.changed.borrow_and_update();
            self.collect();
            if !self.pending.is_empty() || self.finished {
                continue;
            }
            tokio::select! {
                res = self.changed.changed() => self.finished |= res.is_err(),
                () = tokio::time::sleep_until(self.next_bookmark), if self.bookmarks => {
                    self.push_bookmark(false);
                    self.next_bookmark = Instant::now() + BOOKMARK_EVERY;
                }
                () = tokio::time::sleep_until(self.deadline) => self.finished = true,
            }
        }
    }

    /// Queues the events for every change after the cursor.
    fn collect(&mut self) {
        let shared = Arc::clone(&self.shared);
        let st = shared.lock();
        if st.shutdown || !st.available {
            self.finished = true;
            return;
        }
        if self.cursor < st.compacted {
            self.push_expired(self.cursor, st.compacted);
            return;
        }
        let start = st.history.partition_point(|c| c.rv <= self.cursor);
        for change in st.history.get(start..).unwrap_or_default() {
            let was = change
                .before
                .as_deref()
                .is_some_and(|p| self.sel.matches(p));
            let is = !change.deleted && self.sel.matches(&change.after);
            // Moving across the selector boundary looks like create/delete to this
            // watch, exactly as on the real server.
            let kind = match (was, is) {
                (false, true) => "ADDED",
                (true, true) => "MODIFIED",
                (true, false) => "DELETED",
                (false, false) => continue,
            };
            self.push_event(kind, &change.after);
        }
        self.cursor = self.cursor.max(st.rv);
    }

    fn push_event(&mut self, kind: &str, pod: &Pod) {
        match serde_json::to_vec(pod) {
            Ok(obj) => self.push_line(kind, &obj),
            Err(e) => eprintln!("apiserver: cannot serialize pod: {e}"),
        }
    }

    fn push_bookmark(&mut self, initial_end: bool) {
        let rv = self.cursor.to_string();
        let meta = if initial_end {
            json!({"resourceVersion": rv, "annotations": {"k8s.io/initial-events-end": "true"}})
        } else {
            json!({"resourceVersion": rv})
        };
        let obj = json!({"kind": "Pod", "apiVersion": "v1", "metadata": meta});
        self.push_line("BOOKMARK", obj.to_string().as_bytes());
    }

    fn push_expired(&mut self, from: u64, oldest: u64) {
        let msg = format!("too old resource version: {from} ({oldest})");
        let obj = status_json(StatusCode::GONE, "Expired", &msg);
        self.push_line("ERROR", obj.to_string().as_bytes());
        self.finished = true;
    }

    fn push_line(&mut self, kind: &str, object: &[u8]) {
        let mut line = Vec::with_capacity(object.len() + 32);
        line.extend_from_slice(b"{\"type\":\"");
        line.extend_from_slice(kind.as_bytes());
        line.extend_from_slice(b"\",\"object\":");
        line.extend_from_slice(object);
        line.extend_from_slice(b"}\n");
        self.pending.push_back(Bytes::from(line));
    }
}

/// Query parameters this server understands; unknown ones are ignored like the real
/// server does.
struct Params {
    watch: bool,
    field_selector: String,
    label_selector: String,
    /// None for unset, "" and "0" (all mean "any/most recent" to the server).
    rv: Option<u64>,
    rv_match: Option<String>,
    timeout: Option<Duration>,
    bookmarks: bool,
    send_initial_events: Option<bool>,
}

impl Params {
    fn parse(query: &[(String, String)]) -> Result<Params, String> {
        let get = |key: &str| {
            query
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let flag = |key: &str| -> Result<Option<bool>, String> {
            match get(key) {
                None | Some("") => Ok(None),
                Some("true" | "1" | "t" | "True" | "TRUE") => Ok(Some(true)),
                Some("false" | "0" | "f" | "False" | "FALSE") => Ok(Some(false)),
                Some(v) => Err(format!("invalid boolean value for {key}: {v:?}")),
            }
        };
        let rv = match get("resourceVersion") {
            None | Some("" | "0") => None,
            Some(v) => Some(
                v.parse::<u64>()
                    .map_err(|_| format!("invalid resource version: {v:?}"))?,
            ),
        };
        let rv_match = get("resourceVersionMatch")
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        match rv_match.as_deref() {
            None | Some("NotOlderThan" | "Exact") => {}
            Some(v) => return Err(format!("invalid resourceVersionMatch: {v:?}")),
        }
        let timeout = match get("timeoutSeconds") {
            None | Some("") => None,
            Some(v) => Some(Duration::from_secs(
                v.parse::<u64>()
                    .map_err(|_| format!("invalid timeoutSeconds: {v:?}"))?,
            )),
        }
        .filter(|t| !t.is_zero()); // 0 means "server default", as in the real server
        Ok(Params {
            watch: flag("watch")?.unwrap_or(false),
            field_selector: get("fieldSelector").unwrap_or_default().to_owned(),
            label_selector: get("labelSelector").unwrap_or_default().to_owned(),
            rv,
            rv_match,
            timeout,
            bookmarks: flag("allowWatchBookmarks")?.unwrap_or(false),
            send_initial_events: flag("sendInitialEvents")?,
        })
    }
}

/// Decodes an `application/x-www-form-urlencoded` query strictly: invalid escapes or
/// non-UTF-8 bytes are an error (→ 400), never replaced or panicked on.
fn parse_query(query: &str) -> Result<Vec<(String, String)>, String> {
    fn decode(s: &str) -> Result<String, String> {
        let hex = |c: Option<&u8>| c.and_then(|c| (*c as char).to_digit(16));
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            match b {
                b'+' => out.push(b' '),
                b'%' => {
                    let (Some(hi), Some(lo)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2)))
                    else {
                        return Err("invalid percent-encoding in query".to_owned());
                    };
                    out.extend(u8::try_from(hi * 16 + lo).ok());
                    i += 2;
                }
                _ => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).map_err(|_| "query is not valid UTF-8".to_owned())
    }
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// Namespace (from the path) plus field and label selector requirements, all ANDed.
struct Selector {
    namespace: Option<String>,
    /// (field path, wanted equal?, value)
    fields: Vec<(String, bool, String)>,
    labels: Vec<LabelReq>,
}

enum LabelReq {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    NotExists(String),
}

impl Selector {
    fn parse(namespace: Option<&str>, p: &Params) -> Result<Selector, String> {
        let mut fields = Vec::new();
        for term in terms(&p.field_selector) {
            let (field, eq, value) = split_op(term)
                .ok_or_else(|| format!("invalid field selector: {:?}", p.field_selector))?;
            // A field is supported iff we can extract it; probe with an empty pod.
            if field_value(&Pod::default(), field).is_none() {
                return Err(format!(
                    "field label not supported: {field}: \"{field}\" is not a known field selector"
                ));
            }
            fields.push((field.to_owned(), eq, value.to_owned()));
        }
        let mut labels = Vec::new();
        for term in terms(&p.label_selector) {
            let bad = || format!("unable to parse requirement: invalid label selector {term:?}");
            let req = match split_op(term) {
                Some((k, eq, v)) if valid_label(k, false) && valid_label(v, true) => {
                    let (k, v) = (k.to_owned(), v.to_owned());
                    if eq {
                        LabelReq::Eq(k, v)
                    } else {
                        LabelReq::Ne(k, v)
                    }
                }
                Some(_) => return Err(bad()),
                None => match term.strip_prefix('!').map(str::trim) {
                    Some(k) if valid_label(k, false) => LabelReq::NotExists(k.to_owned()),
                    None if valid_label(term, false) => LabelReq::Exists(term.to_owned()),
                    _ => return Err(bad()),
                },
            };
            labels.push(req);
        }
        Ok(Selector {
            namespace: namespace.map(str::to_owned),
            fields,
            labels,
        })
    }

    fn matches(&self, pod: &Pod) -> bool {
        let meta = &pod.metadata;
        if self.namespace.is_some() && meta.namespace != self.namespace {
            return false;
        }
        let fields_ok = self
            .fields
            .iter()
            .all(|(f, eq, v)| (field_value(pod, f).as_deref() == Some(v.as_str())) == *eq);
        let label = |k: &str| meta.labels.as_ref().and_then(|l| l.get(k));
        fields_ok
            && self.labels.iter().all(|req| match req {
                LabelReq::Eq(k, v) => label(k) == Some(v),
                // Like the real server, `k!=v` also matches objects without label k.
                LabelReq::Ne(k, v) => label(k) != Some(v),
                LabelReq::Exists(k) => label(k).is_some(),
                LabelReq::NotExists(k) => label(k).is_none(),
            })
    }
}

/// Splits a selector on commas; an empty selector has no terms.
fn terms(selector: &str) -> impl Iterator<Item = &str> {
    let selector = selector.trim();
    selector
        .split(',')
        .filter(move |_| !selector.is_empty())
        .map(str::trim)
}

/// `k!=v` → (k, false, v); `k==v` / `k=v` → (k, true, v); otherwise None.
fn split_op(term: &str) -> Option<(&str, bool, &str)> {
    let (k, eq, v) = if let Some((k, v)) = term.split_once("!=") {
        (k, false, v)
    } else if let Some((k, v)) = term.split_once("==") {
        (k, true, v)
    } else {
        let (k, v) = term.split_once('=')?;
        (k, true, v)
    };
    Some((k.trim(), eq, v.trim()))
}

/// Accepts only the equality-based label grammar's keys and values, so unsupported
/// syntax (e.g. set-based `k in (a,b)`) fails loudly instead of matching wrongly.
fn valid_label(s: &str, is_value: bool) -> bool {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/');
    (is_value || !s.is_empty()) && s.chars().all(ok_char)
}

/// The string value of a supported pod field selector, or None if unsupported.
fn field_value(pod: &Pod, field: &str) -> Option<String> {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let text = |v: Option<&String>| v.cloned().unwrap_or_default();
    Some(match field {
        "metadata.name" => text(pod.metadata.name.as_ref()),
        "metadata.namespace" => text(pod.metadata.namespace.as_ref()),
        "spec.nodeName" => text(spec.and_then(|s| s.node_name.as_ref())),
        "spec.restartPolicy" => text(spec.and_then(|s| s.restart_policy.as_ref())),
        "spec.schedulerName" => text(spec.and_then(|s| s.scheduler_name.as_ref())),
        "spec.serviceAccountName" => text(spec.and_then(|s| s.service_account_name.as_ref())),
        "spec.hostNetwork" => spec
            .and_then(|s| s.host_network)
            .unwrap_or(false)
            .to_string(),
        "status.phase" => text(status.and_then(|s| s.phase.as_ref())),
        "status.podIP" => text(status.and_then(|s| s.pod_ip.as_ref())),
        "status.nominatedNodeName" => text(status.and_then(|s| s.nominated_node_name.as_ref())),
        _ => return None,
    })
}

/// The real server's error body: a `v1.Status` with status Failure.
fn status_json(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16()})
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(code, &status_json(code, reason, message))
}

fn bad_request(message: &str) -> Response<Body> {
    status(StatusCode::BAD_REQUEST, "BadRequest", message)
}

fn internal_error(e: &serde_json::Error) -> Response<Body> {
    let msg = format!("serialization failed: {e}");
    status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", &msg)
}

fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed_unsync());
    *resp.status_mut() = code;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Current time at second precision, which is all Kubernetes timestamps carry.
fn now() -> Time {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let ts = i64::try_from(secs)
        .ok()
        .and_then(|s| k8s_openapi::jiff::Timestamp::from_second(s).ok())
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    Time(ts)
}

/// Inputs for [`pod_object`].
pub struct PodFixture<'a> {
    /// metadata.namespace
    pub namespace: &'a str,
    /// metadata.name; also the value of the `app` label.
    pub name: &'a str,
    /// metadata.uid
    pub uid: &'a str,
    /// spec.nodeName
    pub node: &'a str,
    /// status.podIP / podIPs; None for a pod whose sandbox has no IP yet.
    pub pod_ip: Option<IpAddr>,
    /// status.hostIP / hostIPs
    pub host_ip: Option<IpAddr>,
    /// spec.hostNetwork
    pub host_network: bool,
    /// status.qosClass, e.g. "BestEffort", "Burstable", "Guaranteed".
    pub qos_class: &'a str,
    /// (container name, container id without the `containerd://` prefix)
    pub containers: &'a [(&'a str, &'a str)],
}

/// Builds a realistic Running Pod object: metadata {namespace, name, uid,
/// creationTimestamp, labels}, spec {nodeName, hostNetwork, containers[{name,
/// image:"sim"}]}, status {phase:"Running", conditions, podIP, podIPs, hostIP, hostIPs,
/// qosClass, startTime, containerStatuses[{name, containerID:"containerd://<id>",
/// ready:true, restartCount:0, image, imageID, state running}]}.
pub fn pod_object(f: &PodFixture<'_>) -> Pod {
    let started = now();
    let containers = f
        .containers
        .iter()
        .map(|(name, _)| Container {
            name: (*name).to_owned(),
            image: Some("sim".to_owned()),
            ..Container::default()
        })
        .collect();
    let container_statuses = f
        .containers
        .iter()
        .map(|(name, id)| ContainerStatus {
            name: (*name).to_owned(),
            container_id: Some(format!("containerd://{id}")),
            ready: true,
            started: Some(true),
            restart_count: 0,
            image: "docker.io/library/sim:latest".to_owned(),
            image_id: format!("docker.io/library/sim@sha256:{}", "0".repeat(64)),
            state: Some(ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(started.clone()),
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        })
        .collect();
    let conditions = [
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
    ]
    .into_iter()
    .map(|kind| PodCondition {
        type_: kind.to_owned(),
        status: "True".to_owned(),
        last_transition_time: Some(started.clone()),
        ..PodCondition::default()
    })
    .collect();
    let pod_ip = f.pod_ip.map(|ip| ip.to_string());
    let host_ip = f.host_ip.map(|ip| ip.to_string());
    Pod {
        metadata: ObjectMeta {
            namespace: Some(f.namespace.to_owned()),
            name: Some(f.name.to_owned()),
            uid: Some(f.uid.to_owned()),
            creation_timestamp: Some(started.clone()),
            labels: Some(BTreeMap::from([("app".to_owned(), f.name.to_owned())])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(f.node.to_owned()),
            host_network: Some(f.host_network),
            containers,
            restart_policy: Some("Always".to_owned()),
            scheduler_name: Some("default-scheduler".to_owned()),
            service_account_name: Some("default".to_owned()),
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".to_owned()),
            conditions: Some(conditions),
            pod_ips: pod_ip.clone().map(|ip| vec![PodIP { ip }]),
            pod_ip,
            host_ips: host_ip.clone().map(|ip| vec![HostIP { ip }]),
            host_ip,
            qos_class: Some(f.qos_class.to_owned()),
            start_time: Some(started),
            container_statuses: Some(container_statuses),
            ..PodStatus::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{Stream, StreamExt};
    use kube::api::{Api, ListParams};
    use kube::config::{KubeConfigOptions, Kubeconfig};
    use kube::runtime::{WatchStreamExt, watcher};
    use kube::{Client, ResourceExt};
    use std::collections::BTreeSet;
    use std::io::{Read, Write};

    /// Every await is bounded so a hang fails the test instead of blocking CI.
    const STEP: Duration = Duration::from_secs(10);

    async fn within<F: Future>(f: F) -> F::Output {
        tokio::time::timeout(STEP, f).await.expect("timed out")
    }

    fn pod(ns: &str, name: &str, node: &str) -> Pod {
        pod_object(&PodFixture {
            namespace: ns,
            name,
            uid: &format!("uid-{ns}-{name}"),
            node,
            pod_ip: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))),
            host_ip: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
            host_network: false,
            qos_class: "BestEffort",
            containers: &[("main", "abc123")],
        })
    }

    fn client(server: &ApiServer) -> Client {
        let config = kube::Config::new(server.url().parse().expect("url"));
        Client::try_from(config).expect("client")
    }

    fn names<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> Vec<String> {
        let mut v: Vec<String> = pods.into_iter().map(ResourceExt::name_any).collect();
        v.sort();
        v
    }

    type Events = tokio::sync::mpsc::UnboundedReceiver<watcher::Result<watcher::Event<Pod>>>;

    /// Drives a watcher stream on its own task, as the agent does, so it keeps
    /// reconnecting even while the test is not reading events.
    fn spawn_watcher<S>(stream: S) -> Events
    where
        S: Stream<Item = watcher::Result<watcher::Event<Pod>>> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(item) = stream.next().await {
                if tx.send(item).is_err() {
                    break;
                }
            }
        });
        rx
    }

    /// Next successful watcher event, failing on errors or timeout.
    async fn next_ok(s: &mut Events) -> watcher::Event<Pod> {
        within(s.recv())
            .await
            .expect("stream ended")
            .expect("watch error")
    }

    fn describe(ev: &watcher::Event<Pod>) -> String {
        match ev {
            watcher::Event::Init => "Init".into(),
            watcher::Event::InitApply(p) => format!("InitApply({})", p.name_any()),
            watcher::Event::InitDone => "InitDone".into(),
            watcher::Event::Apply(p) => format!("Apply({})", p.name_any()),
            watcher::Event::Delete(p) => format!("Delete({})", p.name_any()),
        }
    }

    /// Minimal blocking HTTP/1.1 client, so protocol edge cases (and sync use of the
    /// server) are tested without kube. Returns (status code, raw body text).
    fn raw(server: &ApiServer, request_line: &[u8]) -> (u16, String) {
        let mut conn = std::net::TcpStream::connect(server.addr()).expect("connect");
        conn.set_read_timeout(Some(STEP)).expect("timeout");
        conn.write_all(request_line).expect("write");
        conn.write_all(b"\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("write");
        let mut buf = Vec::new();
        conn.read_to_end(&mut buf).expect("read");
        let text = String::from_utf8_lossy(&buf).into_owned();
        let code = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        (code, text)
    }

    #[tokio::test]
    async fn list_get_and_selectors_through_kube() {
        let server = ApiServer::start().unwrap();
        server.apply_pod(pod("default", "a", "n1"));
        server.apply_pod(pod("default", "b", "n2"));
        server.apply_pod(pod("kube-system", "c", "n1"));
        let api: Api<Pod> = Api::all(client(&server));

        let list = within(api.list(&ListParams::default().fields("spec.nodeName=n1")))
            .await
            .unwrap();
        assert_eq!(names(&list.items), ["a", "c"]);
        assert_eq!(list.metadata.resource_version.as_deref(), Some("1003"));
        assert!(list.items.iter().all(|p| p.resource_version().is_some()));
        let c = list.items.iter().find(|p| p.name_any() == "c").unwrap();
        assert_eq!(c.metadata.uid.as_deref(), Some("uid-kube-system-c"));
        assert_eq!(c.status.as_ref().unwrap().phase.as_deref(), Some("Running"));

        let lp = ListParams::default().fields("spec.nodeName!=n1,metadata.namespace==default");
        assert_eq!(names(&within(api.list(&lp)).await.unwrap().items), ["b"]);
        let lp = ListParams::default().labels("app!=a");
        assert_eq!(
            names(&within(api.list(&lp)).await.unwrap().items),
            ["b", "c"]
        );
        let lp = ListParams::default().labels("app=a,!missing");
        assert_eq!(names(&within(api.list(&lp)).await.unwrap().items), ["a"]);

        let ns: Api<Pod> = Api::namespaced(client(&server), "kube-system");
        assert_eq!(
            names(&within(ns.list(&ListParams::default())).await.unwrap().items),
            ["c"]
        );
        assert_eq!(within(ns.get("c")).await.unwrap().name_any(), "c");
        match within(ns.get("a")).await {
            Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (404, "NotFound")),
            other => panic!("expected 404, got {other:?}"),
        }
        let version = within(client(&server).apiserver_version()).await.unwrap();
        assert_eq!(version.minor, "33");

        // Latency applies to every response.
        server.set_latency(Duration::from_millis(300));
        let t = std::time::Instant::now();
        within(api.list(&ListParams::default())).await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(300));
        assert_eq!(server.list_requests(), 6);
        eprintln!("list URIs: {:#?}", server.request_log());
    }

    #[tokio::test]
    async fn watcher_sees_init_apply_modify_delete_and_selector_moves() {
        let server = ApiServer::start().unwrap();
        server.apply_pod(pod("default", "a", "n1"));
        server.apply_pod(pod("default", "b", "n2"));
        let api: Api<Pod> = Api::all(client(&server));
        let cfg = watcher::Config::default().fields("spec.nodeName=n1");
        let mut s = spawn_watcher(watcher(api, cfg));
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(describe(&next_ok(&mut s).await));
        }
        assert_eq!(seen, ["Init", "InitApply(a)", "InitDone"]);

        server.apply_pod(pod("default", "d", "n2")); // other node: must never appear
        server.apply_pod(pod("default", "c", "n1"));
        let ev = next_ok(&mut s).await;
        assert_eq!(describe(&ev), "Apply(c)");
        let watcher::Event::Apply(c) = ev else {
            unreachable!()
        };
        assert_eq!(c.resource_version().as_deref(), Some("1004"));

        let mut changed = pod("default", "c", "n1");
        changed.labels_mut().insert("tier".into(), "x".into());
        server.apply_pod(changed);
        let ev = next_ok(&mut s).await;
        let watcher::Event::Apply(c) = ev else {
            panic!("{}", describe(&ev))
        };
        assert_eq!(c.labels().get("tier").map(String::as_str), Some("x"));
        assert_eq!(c.resource_version().as_deref(), Some("1005"));

        let deleted = server.delete_pod("default", "c").unwrap();
        assert_eq!(deleted.resource_version().as_deref(), Some("1006"));
        assert_eq!(describe(&next_ok(&mut s).await), "Delete(c)");
        assert!(server.delete_pod("default", "c").is_none());

        // Moving pods across the field selector looks like add/delete to the watch.
        server.apply_pod(pod("default", "b", "n1"));
        assert_eq!(describe(&next_ok(&mut s).await), "Apply(b)");
        server.apply_pod(pod("default", "a", "n2"));
        assert_eq!(describe(&next_ok(&mut s).await), "Delete(a)");
        eprintln!("watch URIs: {:#?}", server.request_log());
        let log = server.request_log();
        assert!(
            log.iter()
                .any(|l| l.contains("watch=true") && l.contains("resourceVersion=1002"))
        );

        // Dropping the server closes the open watch and does not hang.
        within(tokio::task::spawn_blocking(move || drop(server)))
            .await
            .unwrap();
        match within(s.recv()).await {
            Some(Err(_)) => {}
            other => panic!(
                "expected an error after shutdown, got {:?}",
                other.map(|r| r.map(|e| describe(&e)))
            ),
        }
    }

    #[tokio::test]
    async fn streaming_list_uses_send_initial_events() {
        let server = ApiServer::start().unwrap();
        server.apply_pod(pod("default", "a", "n1"));
        server.apply_pod(pod("default", "b", "n2"));
        let api: Api<Pod> = Api::all(client(&server));
        let cfg = watcher::Config::default()
            .fields("spec.nodeName=n1")
            .streaming_lists();
        let mut s = spawn_watcher(watcher(api, cfg));
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(describe(&next_ok(&mut s).await));
        }
        assert_eq!(seen, ["Init", "InitApply(a)", "InitDone"]);
        server.apply_pod(pod("default", "c", "n1"));
        assert_eq!(describe(&next_ok(&mut s).await), "Apply(c)");
        assert_eq!(server.list_requests(), 0);
        eprintln!("streaming-list URIs: {:#?}", server.request_log());
    }

    /// Drives the watcher until `done` holds for the events seen, tolerating errors;
    /// returns the errors seen and keeps `store` as the client's view of the world.
    async fn drive(
        s: &mut Events,
        store: &mut BTreeSet<String>,
        mut done: impl FnMut(&watcher::Event<Pod>) -> bool,
    ) -> Vec<watcher::Error> {
        let mut errors = Vec::new();
        let mut staging = BTreeSet::new();
        loop {
            match within(s.recv()).await.expect("stream ended") {
                Err(e) => errors.push(e),
                Ok(ev) => {
                    match &ev {
                        watcher::Event::Init => staging.clear(),
                        watcher::Event::InitApply(p) => drop(staging.insert(p.name_any())),
                        watcher::Event::InitDone => *store = std::mem::take(&mut staging),
                        watcher::Event::Apply(p) => drop(store.insert(p.name_any())),
                        watcher::Event::Delete(p) => drop(store.remove(&p.name_any())),
                    }
                    if done(&ev) {
                        return errors;
                    }
                }
            }
        }
    }

    /// Polls (bounded) until `cond` holds.
    async fn wait_until(mut cond: impl FnMut() -> bool) {
        within(async {
            while !cond() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// With kube's default config (as the agent builds it), the client's built-in retry
    /// layer absorbs 503s: the watcher sees no error, but the requests are retried.
    #[tokio::test]
    async fn outage_is_retried_inside_default_kube_client() {
        let server = ApiServer::start().unwrap();
        server.apply_pod(pod("default", "a", "n1"));
        let api: Api<Pod> = Api::all(client(&server));
        let cfg = watcher::Config::default().fields("spec.nodeName=n1");
        let mut s = spawn_watcher(watcher(api, cfg).default_backoff());
        let mut store = BTreeSet::new();
        drive(&mut s, &mut store, |e| {
            matches!(e, watcher::Event::InitDone)
        })
        .await;
        let (lists, watches) = (server.list_requests(), server.watch_requests());

        server.set_available(false);
        wait_until(|| server.watch_requests() >= watches + 3).await;
        server.apply_pod(pod("default", "late", "n1"));
        server.set_available(true);
        let late = |e: &watcher::Event<Pod>| matches!(e, watcher::Event::Apply(p) if p.name_any() == "late");
        let errors = drive(&mut s, &mut store, late).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(store, BTreeSet::from(["a".to_owned(), "late".to_owned()]));
        assert_eq!(
            server.list_requests(),
            lists,
            "resumed from its resourceVersion, no relist"
        );
    }

    /// Without the client retry layer the watcher surfaces the outage as errors, backs
    /// off, and resumes once the server is back.
    #[tokio::test]
    async fn outage_surfaces_errors_without_client_retry() {
        let server = ApiServer::start().unwrap();
        server.apply_pod(pod("default", "a", "n1"));
        let mut config = kube::Config::new(server.url().parse().unwrap());
        config.default_retry = false;
        let api: Api<Pod> = Api::all(Client::try_from(config).unwrap());
        let cfg = watcher::Config::default().fields("spec.nodeName=n1");
        let mut s = spawn_watcher(watcher(api, cfg).default_backoff());
        let mut store = BTreeSet::new();
        drive(&mut s, &mut store, |e| {
            matches!(e, watcher::Event::InitDone)
        })
        .await;
        let watches = server.watch_requests();

        server.set_available(false);
        match within(s.recv()).await {
            Some(Err(e)) => eprintln!("during outage: {e}"),
            other => panic!(
                "expected an error, got {:?}",
                other.map(|r| r.map(|e| describe(&e)))
            ),
        }
        server.apply_pod(pod("default", "late", "n1"));
        server.set_available(true);
        let late = |e: &watcher::Event<Pod>| matches!(e, watcher::Event::Apply(p) if p.name_any() == "late");
        drive(&mut s, &mut store, late).await;
        assert_eq!(store, BTreeSet::from(["a".to_owned(), "late".to_owned()]));
        assert!(server.watch_requests() >= watches + 2);
    }

    #[tokio::test]
    async fn compaction_forces_relist_via_410() {
        let server = ApiServer::start().unwrap();
        server.apply_pod(pod("default", "a", "n1"));
        server.apply_pod(pod("default", "b", "n1"));
        let api: Api<Pod> = Api::all(client(&server));
        let cfg = watcher::Config::default().fields("spec.nodeName=n1");
        let mut s = spawn_watcher(watcher(api, cfg).default_backoff());
        let mut store = BTreeSet::new();
        drive(&mut s, &mut store, |e| {
            matches!(e, watcher::Event::InitDone)
        })
        .await;
        let (lists, watches) = (server.list_requests(), server.watch_requests());

        // An outage forces a reconnect; the changes it missed are compacted away.
        server.set_available(false);
        wait_until(|| server.watch_requests() > watches).await;
        server.delete_pod("default", "a");
        server.apply_pod(pod("default", "new", "n1"));
        server.compact();
        server.set_available(true);
        let errors = drive(&mut s, &mut store, |e| {
            matches!(e, watcher::Event::InitDone)
        })
        .await;
        let gone = errors
            .iter()
            .any(|e| matches!(e, watcher::Error::WatchError(s) if s.code == 410));
        assert!(gone, "expected a 410 watch error, got {errors:?}");
        assert_eq!(store, BTreeSet::from(["b".to_owned(), "new".to_owned()]));
        assert!(server.list_requests() > lists);

        // Watching from the compaction point onwards is fine again.
        server.apply_pod(pod("default", "after", "n1"));
        drive(&mut s, &mut store, |e| {
            matches!(e, watcher::Event::Apply(_))
        })
        .await;
        assert!(store.contains("after"));
        eprintln!("410 URIs: {:#?}", server.request_log());
    }

    /// Sync test: the server is usable without any runtime in the caller.
    #[test]
    fn raw_protocol_edges_and_garbage() {
        let server = ApiServer::start().unwrap();
        server.apply_pod(pod("default", "a", "n1"));
        let is_status = |code: u16, body: &str| {
            body.contains("\"kind\":\"Status\"") && body.contains(&format!("\"code\":{code}"))
        };
        for (req, want) in [
            (
                &b"GET /api/v1/pods?fieldSelector=spec.bogus%3D1 HTTP/1.1"[..],
                400,
            ),
            (
                b"GET /api/v1/pods?labelSelector=env%20in%20(a,b) HTTP/1.1",
                400,
            ),
            (b"GET /api/v1/pods?labelSelector=%FF HTTP/1.1", 400),
            (b"GET /api/v1/pods?labelSelector=%zz HTTP/1.1", 400),
            (b"GET /api/v1/pods?watch=maybe HTTP/1.1", 400),
            (b"GET /api/v1/pods?resourceVersion=abc HTTP/1.1", 400),
            (
                b"GET /api/v1/pods?watch=1&sendInitialEvents=true HTTP/1.1",
                422,
            ),
            (b"GET /apis/apps/v1/deployments HTTP/1.1", 404),
            (b"GET /api/v1/namespaces/default/pods/missing HTTP/1.1", 404),
            (b"POST /api/v1/pods HTTP/1.1", 405),
        ] {
            let (code, body) = raw(&server, req);
            assert_eq!(code, want, "{}: {body}", String::from_utf8_lossy(req));
            assert!(is_status(want, &body), "{body}");
        }
        // Raw non-ASCII in the request line is rejected by hyper itself (400, no body).
        assert_eq!(raw(&server, b"GET /api/v1/pods?x=\xff HTTP/1.1").0, 400);

        // A stale resourceVersion gets an in-stream 410 ERROR event, then the end.
        server.compact();
        let (code, body) = raw(
            &server,
            b"GET /api/v1/pods?watch=true&resourceVersion=1000 HTTP/1.1",
        );
        assert_eq!(code, 200);
        assert!(body.contains(r#"{"type":"ERROR","object":{"#), "{body}");
        assert!(body.contains("too old resource version: 1000 (1001)") && is_status(410, &body));

        // rv unset: synthetic ADDED for current state, bookmarks, ends at timeoutSeconds.
        let (code, body) = raw(
            &server,
            b"GET /api/v1/pods?watch=true&allowWatchBookmarks=true&timeoutSeconds=2 HTTP/1.1",
        );
        assert_eq!(code, 200);
        assert!(body.contains(r#"{"type":"ADDED","object":{"apiVersion":"v1","kind":"Pod""#));
        assert!(body.contains(r#"{"type":"BOOKMARK","object":{"apiVersion":"v1","kind":"Pod","metadata":{"resourceVersion":"1001"}}}"#), "{body}");
        // rv = current: no replay, only live events.
        let (_, body) = raw(
            &server,
            b"GET /api/v1/pods?watch=true&resourceVersion=1001&timeoutSeconds=1 HTTP/1.1",
        );
        assert!(!body.contains("ADDED"), "{body}");

        // Outage: 503 Status for everything; then back to normal.
        server.set_available(false);
        let (code, body) = raw(&server, b"GET /api/v1/pods HTTP/1.1");
        assert!(code == 503 && is_status(503, &body), "{body}");
        server.set_available(true);
        assert_eq!(raw(&server, b"GET /api/v1/pods HTTP/1.1").0, 200);
    }

    #[tokio::test]
    async fn kube_reports_bad_selectors_as_api_errors() {
        let server = ApiServer::start().unwrap();
        let api: Api<Pod> = Api::all(client(&server));
        for lp in [
            ListParams::default().fields("spec.bogus=1"),
            ListParams::default().labels("env in (a,b)"),
        ] {
            match within(api.list(&lp)).await {
                Err(kube::Error::Api(s)) => {
                    assert_eq!((s.code, s.reason.as_str()), (400, "BadRequest"), "{s:?}")
                }
                other => panic!("expected 400, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn kubeconfig_loads_in_kube() {
        let server = ApiServer::start().unwrap();
        server.apply_pod(pod("default", "a", "n1"));
        let path =
            std::env::temp_dir().join(format!("apiserver-kubeconfig-{}", server.addr().port()));
        server.write_kubeconfig(&path).unwrap();
        let kubeconfig = Kubeconfig::read_from(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .unwrap();
        assert_eq!(
            config.cluster_url.to_string().trim_end_matches('/'),
            server.url()
        );
        assert_eq!(config.default_namespace, "default");
        let api: Api<Pod> = Api::default_namespaced(Client::try_from(config).unwrap());
        assert_eq!(
            names(
                &within(api.list(&ListParams::default()))
                    .await
                    .unwrap()
                    .items
            ),
            ["a"]
        );

        // JSON is valid YAML, so kube reads a JSON kubeconfig as well.
        let json = format!(
            r#"{{"apiVersion":"v1","kind":"Config","clusters":[{{"name":"j","cluster":{{"server":"{}"}}}}],
            "users":[{{"name":"j","user":{{}}}}],"contexts":[{{"name":"j","context":{{"cluster":"j","user":"j"}}}}],
            "current-context":"j"}}"#,
            server.url()
        );
        let kubeconfig = Kubeconfig::from_yaml(&json).unwrap();
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .unwrap();
    }
}
