//! Stand-in API server tests, with kube-rs as the client.

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
    let late =
        |e: &watcher::Event<Pod>| matches!(e, watcher::Event::Apply(p) if p.name_any() == "late");
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
    let late =
        |e: &watcher::Event<Pod>| matches!(e, watcher::Event::Apply(p) if p.name_any() == "late");
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
    let path = std::env::temp_dir().join(format!("apiserver-kubeconfig-{}", server.addr().port()));
    server.write_kubeconfig(&path).unwrap();
    let kubeconfig = Kubeconfig::read_from(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
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
