//! Protocol edges kube never sends, over raw HTTP, and the discovery documents through
//! kube's discovery clients.

use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Discovery, Scope, verbs};

use super::{client, is_status, names, pod, raw, within};
use crate::apiserver::{ApiServer, namespace_object, network_policy_object};

/// Sync test: the server is usable without any runtime in the caller.
#[test]
fn raw_protocol_edges_and_garbage() {
    let server = ApiServer::start().unwrap();
    server.apply_pod(pod("default", "a", "n1"));
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
        (b"GET /apis/batch/v1/cronjobs HTTP/1.1", 404),
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
    // Namespace default is 1001, pod a 1002.
    assert!(body.contains("too old resource version: 1000 (1002)") && is_status(410, &body));

    // rv unset: synthetic ADDED for current state, bookmarks, ends at timeoutSeconds.
    let (code, body) = raw(
        &server,
        b"GET /api/v1/pods?watch=true&allowWatchBookmarks=true&timeoutSeconds=2 HTTP/1.1",
    );
    assert_eq!(code, 200);
    assert!(body.contains(r#"{"type":"ADDED","object":{"apiVersion":"v1","kind":"Pod""#));
    assert!(body.contains(r#"{"type":"BOOKMARK","object":{"apiVersion":"v1","kind":"Pod","metadata":{"resourceVersion":"1002"}}}"#), "{body}");
    // rv = current: no replay, only live events.
    let (_, body) = raw(
        &server,
        b"GET /api/v1/pods?watch=true&resourceVersion=1002&timeoutSeconds=1 HTTP/1.1",
    );
    assert!(!body.contains("ADDED"), "{body}");

    // Outage: 503 Status for everything; then back to normal.
    server.set_available(false);
    let (code, body) = raw(&server, b"GET /api/v1/pods HTTP/1.1");
    assert!(code == 503 && is_status(503, &body), "{body}");
    server.set_available(true);
    assert_eq!(raw(&server, b"GET /api/v1/pods HTTP/1.1").0, 200);
}

/// The URL layout of every kind, including the paths a real server answers 404.
#[test]
fn raw_paths_of_every_kind() {
    let server = ApiServer::start().unwrap();
    server.apply_pod(pod("default", "a", "n1"));
    server.apply_network_policy(network_policy_object("default", "deny", &[], &[]));
    for (path, want, contains) in [
        ("/api/v1/namespaces", 200, r#""kind":"NamespaceList""#),
        ("/api/v1/namespaces/default", 200, r#""kind":"Namespace""#),
        (
            "/api/v1/namespaces/default/pods",
            200,
            r#""kind":"PodList""#,
        ),
        ("/api/v1/namespaces/default/pods/a", 200, r#""kind":"Pod""#),
        (
            "/apis/networking.k8s.io/v1/networkpolicies",
            200,
            r#""kind":"NetworkPolicyList""#,
        ),
        (
            "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies/deny",
            200,
            r#""apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy""#,
        ),
        (
            "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies/nope",
            404,
            r#"networkpolicies.networking.k8s.io \"nope\" not found"#,
        ),
        (
            "/api/v1/namespaces/nope",
            404,
            r#"namespaces \"nope\" not found"#,
        ),
        // Namespaced kinds have no cluster-wide object path, cluster-scoped ones no
        // namespaced path; unknown versions and trailing slashes are not served.
        ("/api/v1/pods/a", 404, "could not find"),
        (
            "/api/v1/namespaces/default/namespaces",
            404,
            "could not find",
        ),
        ("/api/v1/networkpolicies", 404, "could not find"),
        (
            "/apis/networking.k8s.io/v2/networkpolicies",
            404,
            "could not find",
        ),
        ("/apis/networking.k8s.io/v1/pods", 404, "could not find"),
        ("/apis/example.com", 404, "could not find"),
        ("/api/v1/pods/", 404, "could not find"),
        (
            "/apis/networking.k8s.io/v1/networkpolicies?fieldSelector=spec.podSelector%3Dx",
            400,
            "field label not supported",
        ),
        (
            "/api/v1/namespaces?fieldSelector=status.phase%3DActive",
            200,
            r#""name":"default""#,
        ),
    ] {
        let (code, body) = raw(&server, format!("GET {path} HTTP/1.1").as_bytes());
        assert_eq!(code, want, "{path}: {body}");
        assert!(body.contains(contains), "{path}: {body}");
        if want != 200 {
            assert!(is_status(want, &body), "{path}: {body}");
        }
    }
    // List items carry neither apiVersion nor kind, as on the real server.
    let (_, body) = raw(&server, b"GET /api/v1/namespaces HTTP/1.1");
    assert!(body.contains(r#""items":[{"metadata":"#), "{body}");

    // Watches of other kinds: bookmarks name the watched kind and carry the global
    // resourceVersion; a stale version gets the in-stream 410.
    let rv = server.resource_version();
    let (_, body) = raw(
        &server,
        format!(
            "GET /apis/networking.k8s.io/v1/networkpolicies?watch=1&resourceVersion={rv}\
             &allowWatchBookmarks=true&timeoutSeconds=2 HTTP/1.1"
        )
        .as_bytes(),
    );
    let bookmark = format!(
        r#"{{"type":"BOOKMARK","object":{{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{{"resourceVersion":"{rv}"}}}}}}"#
    );
    assert!(body.contains(&bookmark), "{body}");
    server.compact();
    let (_, body) = raw(
        &server,
        b"GET /api/v1/namespaces?watch=1&resourceVersion=1001 HTTP/1.1",
    );
    assert!(
        body.contains(r#""type":"ERROR""#) && is_status(410, &body),
        "{body}"
    );
}

/// Typed clients never read discovery; dynamic clients do, both the per-group documents
/// and the aggregated ones.
#[tokio::test]
async fn discovery_through_kube() {
    let server = ApiServer::start().unwrap();
    server.apply_namespace(namespace_object("team", &[]));
    server.apply_network_policy(network_policy_object("team", "deny", &[], &[]));
    let client = client(&server);

    let gvk = GroupVersionKind::gvk("networking.k8s.io", "v1", "NetworkPolicy");
    let (ar, caps) = within(discovery::pinned_kind(&client, &gvk)).await.unwrap();
    assert_eq!(ar.plural, "networkpolicies");
    assert_eq!(caps.scope, Scope::Namespaced);
    assert!(caps.supports_operation(verbs::WATCH));
    assert!(!caps.supports_operation(verbs::CREATE));
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let list = within(api.list(&ListParams::default())).await.unwrap();
    assert_eq!(names(&list.items), ["deny"]);

    for aggregated in [false, true] {
        let requests_before = server.request_log().len();
        let discovery = Discovery::new(client.clone());
        let discovery = if aggregated {
            within(discovery.run_aggregated()).await
        } else {
            within(discovery.run()).await
        }
        .unwrap();
        let mut found: Vec<String> = discovery
            .groups()
            .flat_map(|g| g.recommended_resources())
            .map(|(ar, caps)| format!("{}/{} {:?}", ar.api_version, ar.plural, caps.scope))
            .collect();
        found.sort();
        assert_eq!(
            found,
            [
                "apps/v1/daemonsets Namespaced",
                "apps/v1/deployments Namespaced",
                "apps/v1/replicasets Namespaced",
                "apps/v1/statefulsets Namespaced",
                "batch/v1/jobs Namespaced",
                "cilium.io/v2/ciliumnetworkpolicies Namespaced",
                "networking.k8s.io/v1/networkpolicies Namespaced",
                // The group's preferred version only: v1alpha2 (the v1alpha1 kinds are
                // there too, at their version).
                "policy.networking.k8s.io/v1alpha2/clusternetworkpolicies Cluster",
                "v1/events Namespaced",
                "v1/namespaces Cluster",
                "v1/pods Namespaced",
            ],
            "aggregated: {aggregated}"
        );
        // The aggregated documents hold every group's resources: no per-group requests.
        let per_group = server.request_log()[requests_before..]
            .iter()
            .any(|l| l.starts_with("GET /apis/networking.k8s.io"));
        assert_eq!(per_group, !aggregated);
        let (ar, _) = discovery
            .resolve_gvk(&GroupVersionKind::gvk("", "v1", "Namespace"))
            .unwrap();
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let list = within(api.list(&ListParams::default())).await.unwrap();
        assert_eq!(names(&list.items), ["team"]);
    }
    // The typed API needs none of it.
    let typed: Api<NetworkPolicy> = Api::namespaced(client, "team");
    assert_eq!(
        within(typed.get("deny"))
            .await
            .unwrap()
            .metadata
            .name
            .unwrap(),
        "deny"
    );
    let log = server.request_log();
    assert!(log.iter().any(|l| l == "GET /apis"), "{log:#?}");
}
