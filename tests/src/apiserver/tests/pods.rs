//! The pod protocol as kube-rs uses it: list, get, selectors, watch events, streaming lists,
//! outages and relists after 410, kubeconfig loading.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use super::{
    client, describe, drive, has_gone, is_init_done, names, next_described, next_ok, pod,
    spawn_watcher, wait_until, within,
};
use crate::apiserver::ApiServer;

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
    // Five versions: Namespace default, a, b, Namespace kube-system, c.
    assert_eq!(list.metadata.resource_version.as_deref(), Some("1005"));
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
    assert_eq!(
        next_described(&mut s, 3).await,
        ["Init", "InitApply(a)", "InitDone"]
    );

    server.apply_pod(pod("default", "d", "n2")); // other node: must never appear
    server.apply_pod(pod("default", "c", "n1"));
    let ev = next_ok(&mut s).await;
    assert_eq!(describe(&ev), "Apply(c)");
    let watcher::Event::Apply(c) = ev else {
        unreachable!()
    };
    // Namespace default 1001, a 1002, b 1003, d 1004, c 1005.
    assert_eq!(c.resource_version().as_deref(), Some("1005"));

    let mut changed = pod("default", "c", "n1");
    changed.labels_mut().insert("tier".into(), "x".into());
    server.apply_pod(changed);
    let ev = next_ok(&mut s).await;
    let watcher::Event::Apply(c) = ev else {
        panic!("{}", describe(&ev))
    };
    assert_eq!(c.labels().get("tier").map(String::as_str), Some("x"));
    assert_eq!(c.resource_version().as_deref(), Some("1006"));

    let deleted = server.delete_pod("default", "c").unwrap();
    assert_eq!(deleted.resource_version().as_deref(), Some("1007"));
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
            .any(|l| l.contains("watch=true") && l.contains("resourceVersion=1003"))
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
    assert_eq!(
        next_described(&mut s, 3).await,
        ["Init", "InitApply(a)", "InitDone"]
    );
    server.apply_pod(pod("default", "c", "n1"));
    assert_eq!(describe(&next_ok(&mut s).await), "Apply(c)");
    assert_eq!(server.list_requests(), 0);
    eprintln!("streaming-list URIs: {:#?}", server.request_log());
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
    drive(&mut s, &mut store, is_init_done).await;
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
    drive(&mut s, &mut store, is_init_done).await;
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
    drive(&mut s, &mut store, is_init_done).await;
    let (lists, watches) = (server.list_requests(), server.watch_requests());

    // An outage forces a reconnect; the changes it missed are compacted away.
    server.set_available(false);
    wait_until(|| server.watch_requests() > watches).await;
    server.delete_pod("default", "a");
    server.apply_pod(pod("default", "new", "n1"));
    server.compact();
    server.set_available(true);
    let errors = drive(&mut s, &mut store, is_init_done).await;
    assert!(
        has_gone(&errors),
        "expected a 410 watch error, got {errors:?}"
    );
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
