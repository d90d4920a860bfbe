//! Stand-in API server tests, with kube-rs as the client (raw HTTP only for protocol edges
//! kube never sends). Helpers here; tests by concern: [`pods`] (the original pod protocol),
//! [`kinds`] (namespaces, NetworkPolicies, one resourceVersion across kinds, forced 410),
//! [`protocol`] (raw HTTP edges and discovery), [`portforward`] (pods/portforward, RBAC 403).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use super::{ApiServer, PodFixture, pod_object};

mod kinds;
mod pods;
mod portforward;
mod protocol;

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

/// Sorted names.
fn names<'a, K: ResourceExt + 'a>(objects: impl IntoIterator<Item = &'a K>) -> Vec<String> {
    let mut v: Vec<String> = objects.into_iter().map(ResourceExt::name_any).collect();
    v.sort();
    v
}

fn rv<K: ResourceExt>(object: &K) -> u64 {
    object
        .resource_version()
        .and_then(|v| v.parse().ok())
        .expect("numeric resourceVersion")
}

type Events<K> = tokio::sync::mpsc::UnboundedReceiver<watcher::Result<watcher::Event<K>>>;

/// Drives a watcher stream on its own task, as the agent does, so it keeps
/// reconnecting even while the test is not reading events.
fn spawn_watcher<K, S>(stream: S) -> Events<K>
where
    K: Send + 'static,
    S: Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
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
async fn next_ok<K>(s: &mut Events<K>) -> watcher::Event<K> {
    within(s.recv())
        .await
        .expect("stream ended")
        .expect("watch error")
}

fn describe<K: ResourceExt>(ev: &watcher::Event<K>) -> String {
    match ev {
        watcher::Event::Init => "Init".into(),
        watcher::Event::InitApply(o) => format!("InitApply({})", o.name_any()),
        watcher::Event::InitDone => "InitDone".into(),
        watcher::Event::Apply(o) => format!("Apply({})", o.name_any()),
        watcher::Event::Delete(o) => format!("Delete({})", o.name_any()),
    }
}

/// The next `n` events, described.
async fn next_described<K: ResourceExt>(s: &mut Events<K>, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..n {
        seen.push(describe(&next_ok(s).await));
    }
    seen
}

/// Drives the watcher until `done` holds for the events seen, tolerating errors;
/// returns the errors seen and keeps `store` as the client's view of the world.
async fn drive<K: ResourceExt>(
    s: &mut Events<K>,
    store: &mut BTreeSet<String>,
    mut done: impl FnMut(&watcher::Event<K>) -> bool,
) -> Vec<watcher::Error> {
    let mut errors = Vec::new();
    let mut staging = BTreeSet::new();
    loop {
        match within(s.recv()).await.expect("stream ended") {
            Err(e) => errors.push(e),
            Ok(ev) => {
                match &ev {
                    watcher::Event::Init => staging.clear(),
                    watcher::Event::InitApply(o) => drop(staging.insert(o.name_any())),
                    watcher::Event::InitDone => *store = std::mem::take(&mut staging),
                    watcher::Event::Apply(o) => drop(store.insert(o.name_any())),
                    watcher::Event::Delete(o) => drop(store.remove(&o.name_any())),
                }
                if done(&ev) {
                    return errors;
                }
            }
        }
    }
}

fn is_init_done<K>(ev: &watcher::Event<K>) -> bool {
    matches!(ev, watcher::Event::InitDone)
}

/// Whether the errors include a 410 Gone sent in the watch stream.
fn has_gone(errors: &[watcher::Error]) -> bool {
    errors
        .iter()
        .any(|e| matches!(e, watcher::Error::WatchError(s) if s.code == 410))
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

/// Whether a body is a `v1.Status` with this code.
fn is_status(code: u16, body: &str) -> bool {
    body.contains("\"kind\":\"Status\"") && body.contains(&format!("\"code\":{code}"))
}
