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

mod fixtures;
mod objects;
mod routing;
mod selectors;
mod streams;
#[cfg(test)]
mod tests;

use fixtures::now;
pub use fixtures::{PodFixture, pod_object};
use routing::*;
use selectors::*;
use streams::*;

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
