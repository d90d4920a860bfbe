//! Stand-in Kubernetes API server: serves Pods, Namespaces and NetworkPolicies over the real
//! list/watch protocol (resourceVersion, watch streams, bookmarks, 410 Gone, label and field
//! selectors) plus discovery and `/version`, on 127.0.0.1, so kube-rs runs unmodified
//! against it.
//!
//! Scope: read-only over HTTP (get, list, watch) for `v1/pods`, `v1/namespaces`, `v1/events`,
//! `networking.k8s.io/v1/networkpolicies`, `apps/v1/replicasets` and `apps/v1/deployments`
//! (the table is `kinds`). Objects change through
//! the Rust API ([`ApiServer::apply_pod`], [`ApiServer::delete_network_policy`], ...). Every
//! change of every kind is appended to one in-memory history under one global
//! resourceVersion, as etcd orders them (`store`); a watch is a cursor into that history,
//! which gives resumable watches, and compaction drops the history so old cursors get
//! 410 Gone.
//!
//! `pods/{name}/portforward` speaks the real WebSocket protocol (`portforward`) and connects
//! to the address [`ApiServer::forward_port`] gave for that pod and port.
//!
//! Failure injection for tests: [`ApiServer::forbid`] (RBAC: 403 for a resource), [`ApiServer::set_available`] (outage: 503 for everything,
//! open watches closed), [`ApiServer::set_latency`], [`ApiServer::close_watches`] (watches
//! end, clients resume from their resourceVersion), [`ApiServer::compact`] (resuming from
//! before now gets 410) and [`ApiServer::expire_watches`] (every open watch gets 410 now, so
//! clients relist).
//!
//! Layout: `routing` (HTTP, paths, list and get), `watch` (watch streams), `portforward`,
//! `selectors`, `discovery`, `kinds`, `store`, `fixtures` (object builders).

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;

mod crd;
mod discovery;
mod fixtures;
mod kinds;
mod portforward;
mod routing;
mod selectors;
mod store;
#[cfg(test)]
mod tests;
mod watch;

pub use crd::{
    AdminNetworkPolicy, BaselineAdminNetworkPolicy, CiliumNetworkPolicy, ClusterNetworkPolicy,
};
pub use fixtures::{
    PodFixture, agent_pod_object, controller_event_object, deployment_objects, namespace_object,
    network_policy_object, owned_by, owned_by_replica_set, pod_event_object, pod_object,
};
use kinds::Stored;
use store::Store;

/// How often a watch that asked for bookmarks gets one. Real servers use ~1 min;
/// tests want resume points to stay fresh.
const BOOKMARK_EVERY: Duration = Duration::from_secs(1);
/// Used when a watch has no timeoutSeconds (the real default is 30–60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
/// The user the written kubeconfig authenticates as (RBAC messages name it).
const SIM_USER: &str = "sim";
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
    /// Where the server listens (discovery documents name it).
    addr: SocketAddr,
    /// Bumped on every change (objects, availability, shutdown) to wake watch streams
    /// and the accept loop; a `watch` channel never loses a wake-up.
    changed: tokio::sync::watch::Sender<()>,
    lists: AtomicU64,
    watches: AtomicU64,
}

struct State {
    store: Store,
    available: bool,
    latency: Duration,
    shutdown: bool,
    /// Bumped by [`ApiServer::close_watches`] and [`ApiServer::expire_watches`]; a watch
    /// that started under an older value ends.
    closes: u64,
    expiries: u64,
    log: Vec<String>,
    /// Where `pods/portforward` connects: (namespace, pod, port) -> a loopback address.
    forwards: HashMap<(String, String, u16), SocketAddr>,
    /// Resources RBAC denies ("pods", "pods/portforward", "events", ...): 403 for every verb.
    forbidden: BTreeSet<String>,
    /// Every request's `Impersonate-User` and `Impersonate-Group` headers, when it had one.
    impersonations: Vec<(String, Vec<String>)>,
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
                store: Store::new(),
                available: true,
                latency: Duration::ZERO,
                shutdown: false,
                closes: 0,
                expiries: 0,
                log: Vec::new(),
                forwards: HashMap::new(),
                forbidden: BTreeSet::new(),
                impersonations: Vec::new(),
            }),
            addr,
            changed: tokio::sync::watch::channel(()).0,
            lists: AtomicU64::new(0),
            watches: AtomicU64::new(0),
        });
        let server_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("apiserver-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => routing::accept_loop(listener, server_shared).await,
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
             users:\n- name: {SIM_USER}\n  user: {{}}\ncontexts:\n- name: sim\n  context:\n    cluster: sim\n\
             \x20   user: sim\n    namespace: default\ncurrent-context: sim\npreferences: {{}}\n",
            self.url()
        );
        std::fs::write(path, text)
    }

    /// Create or replace a pod (keyed by namespace/name; a missing namespace means
    /// "default"). Sets metadata.resourceVersion from the global counter and fills
    /// creationTimestamp and uid if absent (kept from the previous object on replace, as
    /// the real server does). Creates the pod's Namespace first if it does not exist.
    /// Emits ADDED or MODIFIED to matching watches, and ADDED/DELETED when the change moves
    /// the pod into/out of a watch's field or label selector.
    pub fn apply_pod(&self, pod: Pod) {
        self.apply(pod);
    }

    /// Delete a pod; emits DELETED (object with a new resourceVersion) to matching
    /// watches. Returns the deleted pod as sent to watchers, or None if it did not exist.
    pub fn delete_pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        self.delete(namespace, name)
    }

    /// Create or replace a Namespace, as [`Self::apply_pod`] does for pods. The server sets
    /// the `kubernetes.io/metadata.name` label (NetworkPolicy namespaceSelectors match on
    /// it), and `status.phase: Active` if unset. Namespaces holding objects exist without
    /// this call; use it to label them.
    pub fn apply_namespace(&self, namespace: Namespace) {
        self.apply(namespace);
    }

    /// Delete a Namespace as a real cluster does: it turns Terminating (MODIFIED), every
    /// pod and NetworkPolicy in it is deleted (DELETED each), then the Namespace (DELETED).
    /// Returns its last state, or None if it did not exist. Applying an object into it
    /// later creates it afresh.
    pub fn delete_namespace(&self, name: &str) -> Option<Namespace> {
        self.delete("", name)
    }

    /// Create or replace an Event (namespaced; field selectors on `involvedObject.*`,
    /// `reason`, `type`), as [`Self::apply_pod`] does for pods.
    pub fn apply_event(&self, event: k8s_openapi::api::core::v1::Event) {
        self.apply(event);
    }

    /// Create or replace a ReplicaSet (apps/v1).
    pub fn apply_replica_set(&self, rs: k8s_openapi::api::apps::v1::ReplicaSet) {
        self.apply(rs);
    }

    /// Create or replace a Deployment (apps/v1).
    pub fn apply_deployment(&self, deployment: k8s_openapi::api::apps::v1::Deployment) {
        self.apply(deployment);
    }

    /// Create or replace a StatefulSet (apps/v1).
    pub fn apply_stateful_set(&self, sts: k8s_openapi::api::apps::v1::StatefulSet) {
        self.apply(sts);
    }

    /// Create or replace a DaemonSet (apps/v1).
    pub fn apply_daemon_set(&self, ds: k8s_openapi::api::apps::v1::DaemonSet) {
        self.apply(ds);
    }

    /// Create or replace a Job (batch/v1).
    pub fn apply_job(&self, job: k8s_openapi::api::batch::v1::Job) {
        self.apply(job);
    }

    /// Create or replace a CiliumNetworkPolicy (cilium.io/v2), as a cluster running Cilium
    /// serves them.
    pub fn apply_cilium_network_policy(&self, policy: CiliumNetworkPolicy) {
        self.apply(policy);
    }

    /// Create or replace an AdminNetworkPolicy (policy.networking.k8s.io/v1alpha1,
    /// cluster-scoped).
    pub fn apply_admin_network_policy(&self, policy: AdminNetworkPolicy) {
        self.apply(policy);
    }

    /// Create or replace the BaselineAdminNetworkPolicy (policy.networking.k8s.io/v1alpha1,
    /// cluster-scoped, named `default`).
    pub fn apply_baseline_admin_network_policy(&self, policy: BaselineAdminNetworkPolicy) {
        self.apply(policy);
    }

    /// Create or replace a NetworkPolicy, as [`Self::apply_pod`] does for pods.
    pub fn apply_network_policy(&self, policy: NetworkPolicy) {
        self.apply(policy);
    }

    /// Delete a NetworkPolicy; returns its last state as sent to watchers, or None if it
    /// did not exist.
    pub fn delete_network_policy(&self, namespace: &str, name: &str) -> Option<NetworkPolicy> {
        self.delete(namespace, name)
    }

    /// The newest resourceVersion handed out, over every kind.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().store.resource_version()
    }

    fn apply<K: Stored>(&self, object: K) {
        let result = self.shared.lock().store.apply(object);
        match result {
            Ok(_) => self.shared.notify(),
            Err(e) => eprintln!("apiserver: cannot store {}: {e}", K::KIND),
        }
    }

    /// `namespace` is ignored for cluster-scoped kinds.
    fn delete<K: Stored>(&self, namespace: &str, name: &str) -> Option<K> {
        let namespace = if K::STORED.info().namespaced {
            namespace
        } else {
            ""
        };
        let deleted = self.shared.lock().store.delete(K::STORED, namespace, name);
        self.shared.notify();
        deleted?.decode()
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

    /// Number of list requests received so far (every kind), including ones refused
    /// during an outage (tests assert the client retried or relisted).
    pub fn list_requests(&self) -> u64 {
        self.shared.lists.load(Ordering::Relaxed)
    }

    /// Number of watch requests received so far (every kind), including ones refused
    /// during an outage.
    pub fn watch_requests(&self) -> u64 {
        self.shared.watches.load(Ordering::Relaxed)
    }

    /// Forget history up to the current resourceVersion, so a watch from an older
    /// resourceVersion gets 410 Gone. A live watch that has kept up is unaffected (as on a
    /// real server); one that has not yet sent the forgotten events gets 410. To make a
    /// running client resume from before this point, end its watch while it is behind: an
    /// outage ([`Self::set_available`]) across the changes, or use [`Self::expire_watches`].
    pub fn compact(&self) {
        self.shared.lock().store.compact();
        self.shared.notify();
    }

    /// Compact (see [`Self::compact`]) and send every open watch an ERROR event with a
    /// 410 Expired Status, then end it: what a real server does to a watch that fell behind
    /// an etcd compaction. kube-rs watchers then relist. Watches started afterwards are
    /// unaffected.
    pub fn expire_watches(&self) {
        let mut st = self.shared.lock();
        st.store.compact();
        st.expiries += 1;
        drop(st);
        self.shared.notify();
    }

    /// End every open watch stream cleanly, as a real server does at a watch's
    /// timeoutSeconds or when a load balancer drops connections; clients resume from their
    /// last resourceVersion without relisting.
    pub fn close_watches(&self) {
        self.shared.lock().closes += 1;
        self.shared.notify();
    }

    /// Serves `pods/portforward` of `namespace/pod`, `port`, by connecting to `target` (the
    /// process that plays the pod; its loopback port stands for the pod's).
    pub fn forward_port(&self, namespace: &str, pod: &str, port: u16, target: SocketAddr) {
        self.shared
            .lock()
            .forwards
            .insert((namespace.to_owned(), pod.to_owned(), port), target);
    }

    /// RBAC denies `resource` ("pods", "pods/portforward", "events", ...) from now on: every
    /// request for it gets the real server's 403 Forbidden Status. `allow` undoes it.
    /// The users (with their groups) requests impersonated, in order (kubectl's `--as`,
    /// `--as-group`).
    pub fn impersonations(&self) -> Vec<(String, Vec<String>)> {
        self.shared.lock().impersonations.clone()
    }

    pub fn forbid(&self, resource: &str) {
        self.shared.lock().forbidden.insert(resource.to_owned());
    }

    /// Undoes [`Self::forbid`].
    pub fn allow(&self, resource: &str) {
        self.shared.lock().forbidden.remove(resource);
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
