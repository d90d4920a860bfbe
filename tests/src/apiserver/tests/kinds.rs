//! Namespaces and NetworkPolicies through kube-rs with the pod protocol (list, get, label and
//! field selectors, watch events, deletes), one resourceVersion across kinds, and the forced
//! ends of running watches: 410 with a relist, a clean close with a resume, an outage.

use std::collections::BTreeSet;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};

use super::{
    client, describe, drive, has_gone, is_init_done, names, next_described, next_ok, pod, rv,
    spawn_watcher, wait_until, within,
};
use crate::apiserver::{ApiServer, namespace_object, network_policy_object};

fn phase(ns: &Namespace) -> Option<&str> {
    ns.status.as_ref()?.phase.as_deref()
}

#[tokio::test]
async fn namespaces_list_get_watch_and_delete_through_kube() {
    let server = ApiServer::start().unwrap();
    // Never applied: exists because a pod lives there, labelled as the API server labels it.
    server.apply_pod(pod("team-a", "web", "n1"));
    server.apply_namespace(namespace_object("team-b", &[("env", "prod")]));
    let api: Api<Namespace> = Api::all(client(&server));

    let list = within(api.list(&ListParams::default())).await.unwrap();
    assert_eq!(names(&list.items), ["team-a", "team-b"]);
    let a = within(api.get("team-a")).await.unwrap();
    assert_eq!(a.labels()["kubernetes.io/metadata.name"], "team-a");
    assert_eq!(phase(&a), Some("Active"));
    let b = within(api.get("team-b")).await.unwrap();
    assert_eq!(b.labels()["kubernetes.io/metadata.name"], "team-b");
    assert_eq!(b.labels()["env"], "prod");
    for (lp, want) in [
        (ListParams::default().labels("env=prod"), vec!["team-b"]),
        (
            ListParams::default().labels("kubernetes.io/metadata.name=team-a"),
            vec!["team-a"],
        ),
        (
            ListParams::default().fields("metadata.name=team-a"),
            vec!["team-a"],
        ),
        (
            ListParams::default().fields("status.phase=Active"),
            vec!["team-a", "team-b"],
        ),
    ] {
        assert_eq!(names(&within(api.list(&lp)).await.unwrap().items), want);
    }

    let mut s = spawn_watcher(watcher(api.clone(), watcher::Config::default()));
    assert_eq!(
        next_described(&mut s, 4).await,
        ["Init", "InitApply(team-a)", "InitApply(team-b)", "InitDone"]
    );
    let mut pods = spawn_watcher(watcher(
        Api::<Pod>::all(client(&server)),
        watcher::Config::default(),
    ));
    assert_eq!(
        next_described(&mut pods, 3).await,
        ["Init", "InitApply(web)", "InitDone"]
    );

    // Relabelling keeps the name label: the server sets it on every write.
    server.apply_namespace(namespace_object("team-b", &[("env", "dev")]));
    let watcher::Event::Apply(b) = next_ok(&mut s).await else {
        panic!("expected Apply(team-b)")
    };
    assert_eq!(b.labels()["env"], "dev");
    assert_eq!(b.labels()["kubernetes.io/metadata.name"], "team-b");
    server.apply_pod(pod("team-c", "db", "n1"));
    assert_eq!(describe(&next_ok(&mut s).await), "Apply(team-c)");

    // Deletion: Terminating, then the contents, then the namespace itself.
    let deleted = server.delete_namespace("team-a").unwrap();
    assert_eq!(deleted.name_any(), "team-a");
    let watcher::Event::Apply(terminating) = next_ok(&mut s).await else {
        panic!("expected Apply(team-a) while terminating")
    };
    assert_eq!(phase(&terminating), Some("Terminating"));
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert_eq!(describe(&next_ok(&mut s).await), "Delete(team-a)");
    assert_eq!(
        next_described(&mut pods, 2).await,
        ["Apply(db)", "Delete(web)"]
    );
    let web_gone = rv(&deleted) - 1;
    assert!(
        rv(&terminating) < web_gone,
        "the pod goes after Terminating"
    );
    match within(api.get("team-a")).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 404),
        other => panic!("expected 404, got {other:?}"),
    }
    assert!(server.delete_namespace("team-a").is_none());
    let list = within(api.list(&ListParams::default())).await.unwrap();
    assert_eq!(names(&list.items), ["team-b", "team-c"]);
}

#[tokio::test]
async fn network_policies_list_get_selectors_watch_and_delete_through_kube() {
    let server = ApiServer::start().unwrap();
    let base = [("tier", "base")];
    server.apply_network_policy(network_policy_object("a", "deny-a", &base, &[]));
    server.apply_network_policy(network_policy_object("a", "web", &[("tier", "app")], &[]));
    server.apply_network_policy(network_policy_object("b", "deny-b", &base, &[]));
    let all: Api<NetworkPolicy> = Api::all(client(&server));
    let in_a: Api<NetworkPolicy> = Api::namespaced(client(&server), "a");

    let list = within(all.list(&ListParams::default())).await.unwrap();
    assert_eq!(names(&list.items), ["deny-a", "deny-b", "web"]);
    assert_eq!(
        list.metadata.resource_version,
        Some(server.resource_version().to_string())
    );
    for (api, lp, want) in [
        (
            &all,
            ListParams::default().labels("tier=base"),
            vec!["deny-a", "deny-b"],
        ),
        (
            &all,
            ListParams::default().labels("tier!=base"),
            vec!["web"],
        ),
        (
            &all,
            ListParams::default().labels("tier,!other"),
            vec!["deny-a", "deny-b", "web"],
        ),
        (&all, ListParams::default().labels("missing"), vec![]),
        (
            &all,
            ListParams::default().fields("metadata.namespace=b"),
            vec!["deny-b"],
        ),
        (&in_a, ListParams::default(), vec!["deny-a", "web"]),
        (
            &in_a,
            ListParams::default().labels("tier=base"),
            vec!["deny-a"],
        ),
    ] {
        assert_eq!(names(&within(api.list(&lp)).await.unwrap().items), want);
    }
    let web = within(in_a.get("web")).await.unwrap();
    assert_eq!(web.namespace().as_deref(), Some("a"));
    assert!(web.uid().is_some() && web.creation_timestamp().is_some());
    match within(in_a.get("deny-b")).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (404, "NotFound"));
            assert_eq!(
                s.message,
                r#"networkpolicies.networking.k8s.io "deny-b" not found"#
            );
        }
        other => panic!("expected 404, got {other:?}"),
    }
    match within(all.list(&ListParams::default().fields("spec.podSelector=x"))).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 400),
        other => panic!("expected 400, got {other:?}"),
    }

    let cfg = watcher::Config::default().labels("tier=base");
    let mut s = spawn_watcher(watcher(all.clone(), cfg));
    assert_eq!(
        next_described(&mut s, 4).await,
        ["Init", "InitApply(deny-a)", "InitApply(deny-b)", "InitDone"]
    );
    let mut in_a_events = spawn_watcher(watcher(in_a.clone(), watcher::Config::default()));
    assert_eq!(
        next_described(&mut in_a_events, 4).await,
        ["Init", "InitApply(deny-a)", "InitApply(web)", "InitDone"]
    );
    // Relabelling moves a policy into and out of the selector: add and delete to the watch.
    server.apply_network_policy(network_policy_object("a", "web", &base, &[]));
    let watcher::Event::Apply(moved_in) = next_ok(&mut s).await else {
        panic!("expected Apply(web)")
    };
    assert_eq!(moved_in.uid(), web.uid(), "replace keeps the uid");
    assert_eq!(describe(&next_ok(&mut in_a_events).await), "Apply(web)");
    server.apply_network_policy(network_policy_object("a", "web", &[("tier", "app")], &[]));
    assert_eq!(describe(&next_ok(&mut s).await), "Delete(web)");

    let deleted = server.delete_network_policy("b", "deny-b").unwrap();
    assert_eq!(rv(&deleted), server.resource_version());
    let watcher::Event::Delete(gone) = next_ok(&mut s).await else {
        panic!("expected Delete(deny-b)")
    };
    assert_eq!(
        (gone.name_any(), rv(&gone)),
        ("deny-b".to_owned(), rv(&deleted))
    );
    assert!(server.delete_network_policy("b", "deny-b").is_none());
    // The namespaced watch saw only namespace a: web moved in, then its relabel.
    assert_eq!(describe(&next_ok(&mut in_a_events).await), "Apply(web)");
    server.delete_network_policy("a", "deny-a");
    assert_eq!(describe(&next_ok(&mut in_a_events).await), "Delete(deny-a)");
    assert_eq!(describe(&next_ok(&mut s).await), "Delete(deny-a)");
}

/// What a change of any kind looks like in a raw watch: (resourceVersion, kind, name).
async fn changes<K>(api: &Api<K>, from: u64, n: usize) -> Vec<(u64, String, String)>
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + k8s_openapi::serde::de::DeserializeOwned,
    K: Send + 'static,
{
    let wp = WatchParams::default().disable_bookmarks().timeout(10);
    let stream = within(api.watch(&wp, &from.to_string())).await.unwrap();
    let mut stream = std::pin::pin!(stream);
    let mut out = Vec::new();
    while out.len() < n {
        let event = within(stream.try_next())
            .await
            .unwrap()
            .expect("stream ended");
        let object = match event {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => o,
            other => panic!("unexpected {other:?}"),
        };
        out.push((rv(&object), K::kind(&()).into_owned(), object.name_any()));
    }
    out
}

#[tokio::test]
async fn one_resource_version_orders_changes_across_kinds() {
    let server = ApiServer::start().unwrap();
    let c = client(&server);
    let (pods, namespaces, policies) = (
        Api::<Pod>::all(c.clone()),
        Api::<Namespace>::all(c.clone()),
        Api::<NetworkPolicy>::all(c),
    );
    let start = server.resource_version();
    server.apply_namespace(namespace_object("a", &[]));
    server.apply_pod(pod("a", "p1", "n1"));
    server.apply_network_policy(network_policy_object("a", "np", &[], &[]));
    server.apply_pod(pod("b", "p2", "n1")); // creates Namespace b first
    server.delete_network_policy("a", "np");
    server.apply_namespace(namespace_object("a", &[("team", "x")]));

    // Each kind's watch from the same version sees its own changes; merged by
    // resourceVersion they are exactly the order of the calls above, one version each.
    let mut all = changes(&namespaces, start, 3).await;
    all.extend(changes(&pods, start, 2).await);
    all.extend(changes(&policies, start, 2).await);
    all.sort();
    let got: Vec<(u64, &str, &str)> = all
        .iter()
        .map(|(v, k, n)| (*v - start, k.as_str(), n.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (1, "Namespace", "a"),
            (2, "Pod", "p1"),
            (3, "NetworkPolicy", "np"),
            (4, "Namespace", "b"),
            (5, "Pod", "p2"),
            (6, "NetworkPolicy", "np"),
            (7, "Namespace", "a"),
        ]
    );
    assert_eq!(server.resource_version(), start + 7);

    // Lists of every kind report the newest version overall.
    let lp = ListParams::default();
    let newest = Some(server.resource_version().to_string());
    assert_eq!(
        within(pods.list(&lp))
            .await
            .unwrap()
            .metadata
            .resource_version,
        newest
    );
    assert_eq!(
        within(namespaces.list(&lp))
            .await
            .unwrap()
            .metadata
            .resource_version,
        newest
    );
    assert_eq!(
        within(policies.list(&lp))
            .await
            .unwrap()
            .metadata
            .resource_version,
        newest
    );

    // A watch of one kind resumes from a version another kind produced.
    assert_eq!(
        changes(&namespaces, start + 5, 1).await,
        [(start + 7, "Namespace".to_owned(), "a".to_owned())]
    );

    // Bookmarks carry the global version: pod changes move a policy watch's resume point.
    let wp = WatchParams::default().timeout(10);
    let stream = within(policies.watch(&wp, &newest.clone().unwrap()))
        .await
        .unwrap();
    let mut stream = std::pin::pin!(stream);
    server.apply_pod(pod("a", "p3", "n1"));
    let event = within(stream.next()).await.expect("stream ended").unwrap();
    let WatchEvent::Bookmark(bookmark) = event else {
        panic!("expected a bookmark, got {event:?}")
    };
    assert_eq!(bookmark.types.kind, "NetworkPolicy");
    assert_eq!(bookmark.metadata.resource_version, (start + 8).to_string());
}

/// `expire_watches` answers every running watch with an in-stream 410, as a real server
/// does to a watch behind an etcd compaction: kube's watcher reports it and relists.
#[tokio::test]
async fn expired_running_watchers_get_410_and_relist() {
    let server = ApiServer::start().unwrap();
    server.apply_network_policy(network_policy_object("a", "p1", &[], &[]));
    server.apply_pod(pod("a", "web", "n1"));
    let c = client(&server);
    let cfg = watcher::Config::default();
    let mut policies =
        spawn_watcher(watcher(Api::<NetworkPolicy>::all(c.clone()), cfg.clone()).default_backoff());
    let mut pods = spawn_watcher(watcher(Api::<Pod>::all(c), cfg).default_backoff());
    let (mut policy_store, mut pod_store) = (BTreeSet::new(), BTreeSet::new());
    drive(&mut policies, &mut policy_store, is_init_done).await;
    drive(&mut pods, &mut pod_store, is_init_done).await;
    server.apply_network_policy(network_policy_object("a", "p2", &[], &[]));
    drive(&mut policies, &mut policy_store, |e| {
        matches!(e, watcher::Event::Apply(_))
    })
    .await;
    let lists = server.list_requests();

    // Deleted just before the expiry: whether the running watch delivers it or not, the
    // relist must not show p1.
    server.delete_network_policy("a", "p1");
    server.expire_watches();
    let errors = drive(&mut policies, &mut policy_store, is_init_done).await;
    assert!(
        has_gone(&errors),
        "expected a 410 watch error, got {errors:?}"
    );
    assert_eq!(policy_store, BTreeSet::from(["p2".to_owned()]));
    let errors = drive(&mut pods, &mut pod_store, is_init_done).await;
    assert!(
        has_gone(&errors),
        "expected a 410 watch error, got {errors:?}"
    );
    assert_eq!(pod_store, BTreeSet::from(["web".to_owned()]));
    assert!(
        server.list_requests() >= lists + 2,
        "both watchers relisted"
    );

    // Watches started after the expiry run normally.
    server.apply_network_policy(network_policy_object("b", "p3", &[], &[]));
    let errors = drive(&mut policies, &mut policy_store, |e| {
        matches!(e, watcher::Event::Apply(_))
    })
    .await;
    assert!(errors.is_empty(), "{errors:?}");
    assert!(policy_store.contains("p3"));
    eprintln!("expire URIs: {:#?}", server.request_log());
}

/// `close_watches` ends streams the way a watch timeout does: the watcher resumes from its
/// resourceVersion (no relist) and misses nothing.
#[tokio::test]
async fn closed_watches_resume_without_relist() {
    let server = ApiServer::start().unwrap();
    server.apply_namespace(namespace_object("a", &[]));
    let api: Api<Namespace> = Api::all(client(&server));
    let mut s = spawn_watcher(watcher(api, watcher::Config::default()).default_backoff());
    let mut store = BTreeSet::new();
    drive(&mut s, &mut store, is_init_done).await;
    let (lists, watches) = (server.list_requests(), server.watch_requests());

    server.close_watches();
    wait_until(|| server.watch_requests() > watches).await;
    server.apply_namespace(namespace_object("b", &[]));
    let errors = drive(&mut s, &mut store, |e| {
        matches!(e, watcher::Event::Apply(_))
    })
    .await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(store, BTreeSet::from(["a".to_owned(), "b".to_owned()]));
    assert_eq!(server.list_requests(), lists, "resumed, no relist");
}

/// A NetworkPolicy deleted while the server is down reaches the watcher as a delete once
/// the server is back: the watcher resumes from its version and the history has it.
#[tokio::test]
async fn policy_deleted_during_outage_arrives_after_it() {
    let server = ApiServer::start().unwrap();
    server.apply_network_policy(network_policy_object("a", "p1", &[], &[]));
    server.apply_network_policy(network_policy_object("a", "p2", &[], &[]));
    let api: Api<NetworkPolicy> = Api::all(client(&server));
    let mut s = spawn_watcher(watcher(api, watcher::Config::default()).default_backoff());
    let mut store = BTreeSet::new();
    drive(&mut s, &mut store, is_init_done).await;
    let (lists, watches) = (server.list_requests(), server.watch_requests());

    server.set_available(false);
    wait_until(|| server.watch_requests() > watches).await;
    server.delete_network_policy("a", "p1");
    server.set_available(true);
    drive(&mut s, &mut store, |e| {
        matches!(e, watcher::Event::Delete(_))
    })
    .await;
    assert_eq!(store, BTreeSet::from(["p2".to_owned()]));
    assert_eq!(server.list_requests(), lists, "resumed, no relist");
}
