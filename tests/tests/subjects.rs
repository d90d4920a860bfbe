//! The subject as kubectl users name it, against the stand-in API server: `deploy/web` is the
//! pods the Deployment's ReplicaSets own now and those they created inside the window and that
//! are gone (a rollout replaced them), on every node they ran on; `sts/db`, `ds/NAME`,
//! `job/NAME`, `pod/NAME`, a bare name and `NAMESPACE/NAME`; the kubeconfig context's
//! namespace without -n; and each bad subject one line with its exit code. The agents are the
//! real gRPC service fed by the real store (no kernel: what is tested is which pods and nodes
//! are asked), each published as the DaemonSet's pod and reached through pods/portforward.

#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test scenarios panic with context"
)]

use std::{
    collections::BTreeSet,
    process::Command,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use k8s_openapi::{
    api::{
        apps::v1::{
            DaemonSet, DaemonSetSpec, Deployment, DeploymentSpec, ReplicaSet, ReplicaSetSpec,
            StatefulSet, StatefulSetSpec,
        },
        batch::v1::{Job, JobSpec},
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
};
use serde_json::Value;
use triage_agent::{
    api::fixtures::{LocalAgent, serve_local},
    attribute::Attributed,
    evidence::fixtures::refused,
    loss::Counters,
};
use triage_agent_tests::{
    agent::{agent_binary, cli_lines_with_kubeconfig, cli_with_kubeconfig},
    apiserver::{
        ApiServer, PodFixture, agent_pod_object, controller_event_object, owned_by,
        pod_event_object, pod_object,
    },
};

const NS: &str = "shop";

fn meta(name: &str, uid: &str, owner: Option<OwnerReference>) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(NS.to_owned()),
        name: Some(name.to_owned()),
        uid: Some(uid.to_owned()),
        labels: Some([("app".to_owned(), name.to_owned())].into()),
        owner_references: owner.map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

fn selector(app: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some([("app".to_owned(), app.to_owned())].into()),
        ..LabelSelector::default()
    }
}

fn controller(kind: &str, name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".to_owned(),
        kind: kind.to_owned(),
        name: name.to_owned(),
        uid: uid.to_owned(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A pod of `app` on `node`, controlled by `owner` (kind, name, uid) when given.
fn pod(api: &ApiServer, name: &str, app: &str, node: &str, owner: Option<(&str, &str, &str)>) {
    let mut p = pod_object(&PodFixture {
        namespace: NS,
        name,
        uid: &format!("uid-{name}"),
        node,
        pod_ip: None,
        host_ip: None,
        host_network: false,
        qos_class: "BestEffort",
        containers: &[("app", &format!("{:0>64}", name.len()))],
    });
    p.metadata.labels = Some([("app".to_owned(), app.to_owned())].into());
    if let Some((kind, owner, uid)) = owner {
        p = owned_by(p, kind, owner, uid);
    }
    api.apply_pod(p);
}

/// A refusal of `pod` stored by `agent`.
fn record(rt: &tokio::runtime::Runtime, agent: &LocalAgent, pod: &str) {
    let occurrence = refused()
        .pod(NS, pod)
        .dst("10.0.0.2:5432")
        .at_time(SystemTime::now())
        .occurrence();
    rt.block_on(agent.occurrences.send(Attributed::Occurrence(occurrence)))
        .unwrap();
}

fn json(out: &std::process::Output) -> Value {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn pods_of(v: &Value) -> BTreeSet<String> {
    v["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pod"]["name"].as_str().unwrap().to_owned())
        .collect()
}

fn nodes_of(v: &Value) -> BTreeSet<String> {
    v["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["node"].as_str().unwrap().to_owned())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// The cluster: two nodes with an agent each; a Deployment whose rollout replaced a pod on
/// node-2 by one on node-1, a pod with the Deployment's labels it does not own, a StatefulSet,
/// a DaemonSet, a Job and a Deployment with no pods.
fn cluster(rt: &tokio::runtime::Runtime) -> (ApiServer, [LocalAgent; 2]) {
    let api = ApiServer::start().unwrap();
    let agents = ["node-1", "node-2"].map(|node| {
        rt.block_on(serve_local(
            node,
            "127.0.0.1:0",
            Arc::new(Counters::default()),
        ))
    });
    for (i, (node, agent)) in ["node-1", "node-2"].iter().zip(&agents).enumerate() {
        let name = format!("triage-agent-{i}");
        api.apply_pod(agent_pod_object(&name, node));
        api.forward_port("triage-agent", &name, 9742, agent.addr.parse().unwrap());
    }
    // deploy/web: revision 1 (web-old) made web-old-x on node-2, gone since; revision 2
    // (web-new) runs web-new-a on node-1.
    api.apply_deployment(Deployment {
        metadata: meta("web", "uid-deploy-web", None),
        spec: Some(DeploymentSpec {
            selector: selector("web"),
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    });
    for rs in ["web-old", "web-new"] {
        let mut m = meta(
            rs,
            &format!("uid-{rs}"),
            Some(controller("Deployment", "web", "uid-deploy-web")),
        );
        m.labels = Some([("app".to_owned(), "web".to_owned())].into());
        api.apply_replica_set(ReplicaSet {
            metadata: m,
            spec: Some(ReplicaSetSpec {
                selector: selector("web"),
                ..ReplicaSetSpec::default()
            }),
            ..ReplicaSet::default()
        });
    }
    pod(
        &api,
        "web-new-a",
        "web",
        "node-1",
        Some(("ReplicaSet", "web-new", "uid-web-new")),
    );
    api.apply_event(controller_event_object(
        NS,
        ("ReplicaSet", "web-old", "uid-web-old"),
        "web-old.1",
        "SuccessfulCreate",
        "Created pod: web-old-x",
    ));
    api.apply_event(pod_event_object(
        NS,
        "web-old-x",
        "web-old-x.1",
        "Normal",
        "Scheduled",
        "Successfully assigned shop/web-old-x to node-2",
    ));
    // Same labels, no owner: not the Deployment's.
    pod(&api, "web-debug", "web", "node-1", None);
    pod(&api, "other", "other", "node-1", None);
    // sts/db: db-0 on node-2.
    api.apply_stateful_set(StatefulSet {
        metadata: meta("db", "uid-sts-db", None),
        spec: Some(StatefulSetSpec {
            selector: selector("db"),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    });
    pod(
        &api,
        "db-0",
        "db",
        "node-2",
        Some(("StatefulSet", "db", "uid-sts-db")),
    );
    // ds/proxy: one pod a node.
    api.apply_daemon_set(DaemonSet {
        metadata: meta("proxy", "uid-ds-proxy", None),
        spec: Some(DaemonSetSpec {
            selector: selector("proxy"),
            ..DaemonSetSpec::default()
        }),
        ..DaemonSet::default()
    });
    pod(
        &api,
        "proxy-aaaaa",
        "proxy",
        "node-1",
        Some(("DaemonSet", "proxy", "uid-ds-proxy")),
    );
    pod(
        &api,
        "proxy-bbbbb",
        "proxy",
        "node-2",
        Some(("DaemonSet", "proxy", "uid-ds-proxy")),
    );
    // job/migrate: its pod on node-2.
    api.apply_job(Job {
        metadata: meta("migrate", "uid-job-migrate", None),
        spec: Some(JobSpec {
            selector: Some(selector("migrate")),
            ..JobSpec::default()
        }),
        ..Job::default()
    });
    pod(
        &api,
        "migrate-zzzzz",
        "migrate",
        "node-2",
        Some(("Job", "migrate", "uid-job-migrate")),
    );
    // deploy/idle: no pods, none created.
    api.apply_deployment(Deployment {
        metadata: meta("idle", "uid-deploy-idle", None),
        spec: Some(DeploymentSpec {
            selector: selector("idle"),
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    });
    for p in ["web-new-a", "web-debug", "other", "proxy-aaaaa"] {
        record(rt, &agents[0], p);
    }
    for p in ["web-old-x", "db-0", "proxy-bbbbb", "migrate-zzzzz"] {
        record(rt, &agents[1], p);
    }
    (api, agents)
}

/// Queries until both agents have stored what they were given.
fn query(kubeconfig: &std::path::Path, args: &[&str]) -> Value {
    let all = [&["query"][..], args, &["-o", "json"]].concat();
    json(&cli_with_kubeconfig(kubeconfig, &all).unwrap())
}

#[test]
fn workloads_and_pods_are_named_as_kubectl_names_them() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (api, agents) = cluster(&rt);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    // The records are stored (the store task takes them asynchronously).
    let deadline = Instant::now() + Duration::from_secs(10);
    while pods_of(&query(&kubeconfig, &["-n", NS])).len() < 8 {
        assert!(Instant::now() < deadline, "records never stored");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The Deployment: its pod now and the one its old ReplicaSet made, on both their nodes;
    // never the pod that only shares its labels.
    let v = query(&kubeconfig, &["deploy/web", "-n", NS]);
    assert_eq!(pods_of(&v), set(&["web-new-a", "web-old-x"]), "{v}");
    assert_eq!(nodes_of(&v), set(&["node-1", "node-2"]), "{v}");
    assert_eq!(v["complete"], true);
    for spelled in ["deployment/web", "deployments.apps/web", "Deployment/web"] {
        assert_eq!(
            pods_of(&query(&kubeconfig, &[spelled, "-n", NS])),
            set(&["web-new-a", "web-old-x"]),
            "{spelled}"
        );
    }
    // A pod of the Deployment by name: only its node.
    let v = query(&kubeconfig, &["pod/web-new-a", "-n", NS]);
    assert_eq!(pods_of(&v), set(&["web-new-a"]), "{v}");
    assert_eq!(nodes_of(&v), set(&["node-1"]), "{v}");
    assert_eq!(
        pods_of(&query(&kubeconfig, &["shop/web-new-a"])),
        set(&["web-new-a"])
    );
    assert_eq!(
        pods_of(&query(&kubeconfig, &["--pod", "web-new-a", "-n", NS])),
        set(&["web-new-a"])
    );
    // The other workload kinds.
    for (subject, pods, nodes) in [
        ("sts/db", &["db-0"][..], &["node-2"][..]),
        (
            "ds/proxy",
            &["proxy-aaaaa", "proxy-bbbbb"],
            &["node-1", "node-2"],
        ),
        ("job/migrate", &["migrate-zzzzz"], &["node-2"]),
        ("rs/web-new", &["web-new-a"], &["node-1"]),
    ] {
        let v = query(&kubeconfig, &[subject, "-n", NS]);
        assert_eq!(pods_of(&v), set(pods), "{subject}: {v}");
        assert_eq!(nodes_of(&v), set(nodes), "{subject}: {v}");
    }

    // The context's namespace without -n, as kubectl.
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    let in_shop = dir.path().join("kubeconfig-shop");
    std::fs::write(
        &in_shop,
        text.replace("namespace: default", "namespace: shop"),
    )
    .unwrap();
    let v = query(&in_shop, &["deploy/web"]);
    assert_eq!(pods_of(&v), set(&["web-new-a", "web-old-x"]), "{v}");

    // The table's header names the subject as given.
    let out = cli_with_kubeconfig(&kubeconfig, &["query", "deploy/web", "-n", NS]).unwrap();
    assert_eq!(out.status.code(), Some(0));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("deploy/web"), "{table}");

    // kubectl's plugin completion: the helper completes the cluster's namespaces, pods and
    // workloads and the kubeconfig's contexts, in the namespace the words name.
    let helper = dir.path().join("kubectl_complete-triage_agent");
    std::os::unix::fs::symlink(agent_binary(), &helper).unwrap();
    let complete = |words: &[&str]| -> Vec<String> {
        let out = Command::new(&helper)
            .args(words)
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split('\t').next().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(
        complete(&["query", "-n", NS, "web-"]),
        ["web-debug", "web-new-a", ":4"]
    );
    assert_eq!(
        complete(&["query", "-n", NS, "deploy/"]),
        ["deploy/idle", "deploy/web", ":4"]
    );
    assert_eq!(
        complete(&["watch", "--namespace=shop", "sts/"]),
        ["sts/db", ":4"]
    );
    assert_eq!(complete(&["query", "shop/db"]), ["shop/db-0", ":4"]);
    assert_eq!(complete(&["query", "-n", "sh"]), ["shop", ":4"]);
    assert_eq!(complete(&["status", "--context", ""]), ["sim", ":4"]);
    assert_eq!(
        complete(&["timeline", "-n", NS, "deploy/"]),
        [":4"],
        "timeline is about pods"
    );
    // Without -n: the context's namespace ("default" here, which has none).
    assert_eq!(complete(&["query", "web"]), [":4"]);
    assert_eq!(
        Command::new(&helper)
            .args(["query", "w"])
            .env("KUBECONFIG", &in_shop)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
            .unwrap(),
        3,
        "web-debug, web-new-a and the directive, in the context's namespace"
    );

    // Bad subjects: one line each, with its code.
    let check = |args: &[&str], code: i32, needle: &str| {
        let out = cli_with_kubeconfig(&kubeconfig, args).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "{args:?}: {err}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    };
    check(
        &["query", "deploy/nope", "-n", NS],
        6,
        "deployment shop/nope not found",
    );
    check(
        &["query", "deploy/idle", "-n", NS],
        6,
        "deployment shop/idle has no pods",
    );
    check(&["query", "svc/web", "-n", NS], 1, "no pods of its own");
    check(&["query", "a/b/c", "-n", NS], 1, "too many '/'");
    check(&["query", "other/web-new-a", "-n", NS], 1, "-n says");
    check(
        &["timeline", "deploy/web", "-n", NS],
        1,
        "timeline is about one pod",
    );
    // A wrong command line is clap's usage error (exit 2), its first line the reason.
    let out = cli_with_kubeconfig(
        &kubeconfig,
        &["query", "web-new-a", "--pod", "web-new-a", "-n", NS],
    )
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("error: ") && first.contains("cannot be used with"),
        "{err}"
    );

    // watch deploy/web: the Deployment's updates only, and a pod a scale-up adds later.
    let (mut watch, lines) = cli_lines_with_kubeconfig(
        &kubeconfig,
        &["watch", "deploy/web", "-n", NS, "-o", "json"],
    )
    .unwrap();
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut scaled = false;
    while !seen.contains("web-new-b") {
        assert!(Instant::now() < deadline, "watch saw only {seen:?}");
        for p in ["other", "web-debug", "web-new-a"] {
            record(&rt, &agents[0], p);
        }
        if seen.contains("web-new-a") && !scaled {
            pod(
                &api,
                "web-new-b",
                "web",
                "node-2",
                Some(("ReplicaSet", "web-new", "uid-web-new")),
            );
            scaled = true;
        }
        if scaled {
            record(&rt, &agents[1], "web-new-b");
        }
        while let Ok(line) = lines.recv_timeout(Duration::from_millis(500)) {
            let v: Value = serde_json::from_str(&line).unwrap();
            seen.insert(v["pod"]["name"].as_str().unwrap().to_owned());
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(
        seen,
        set(&["web-new-a", "web-new-b"]),
        "only the Deployment's pods"
    );
    for agent in &agents {
        agent.cancel.cancel();
    }
}

/// `explain` reads the AdminNetworkPolicy API's two tiers from the API server and evaluates
/// them around NetworkPolicy (an admin Deny, a Pass down to the baseline's Deny); on a
/// cluster that also has policy kinds it does not evaluate (Cilium's), it does not give a
/// verdict as if it knew: the verdict is unknown and names the kinds present; a kind it
/// cannot read or parse is named too; kinds served with no objects change nothing.
#[test]
fn explain_evaluates_the_admin_tiers_and_names_the_policy_kinds_it_does_not_evaluate() {
    use serde_json::json;
    use triage_agent::evidence::fixtures::dropped;
    use triage_agent_tests::apiserver::{
        AdminNetworkPolicy, BaselineAdminNetworkPolicy, CiliumNetworkPolicy,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = ApiServer::start().unwrap();
    let agent = rt.block_on(serve_local(
        "node-1",
        "127.0.0.1:0",
        Arc::new(Counters::default()),
    ));
    api.apply_pod(agent_pod_object("triage-agent-0", "node-1"));
    api.forward_port(
        "triage-agent",
        "triage-agent-0",
        9742,
        agent.addr.parse().unwrap(),
    );
    for (ns, name, ip) in [("shop", "web", "10.0.0.5"), ("data", "pg", "10.0.0.6")] {
        api.apply_pod(pod_object(&PodFixture {
            namespace: ns,
            name,
            uid: &format!("uid-{name}"),
            node: "node-1",
            pod_ip: Some(ip.parse().unwrap()),
            host_ip: None,
            host_network: false,
            qos_class: "BestEffort",
            containers: &[("app", &format!("{:0>64}", name.len()))],
        }));
    }
    let drop = dropped()
        .pod("shop", "web")
        .src("10.0.0.5:40000")
        .dst("10.0.0.6:5432")
        .reason("NETFILTER_DROP")
        .at_time(SystemTime::now())
        .occurrence();
    rt.block_on(agent.occurrences.send(Attributed::Occurrence(drop)))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let explanation = || -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = json(
                &cli_with_kubeconfig(&kubeconfig, &["explain", "web", "-n", "shop", "-o", "json"])
                    .unwrap(),
            );
            if let Some(x) = v["evidence"][0].get("explanation") {
                return x.clone();
            }
            assert!(Instant::now() < deadline, "no explanation: {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // No policy of any kind: NetworkPolicy allows it, and nothing else could say otherwise.
    let x = explanation();
    assert_eq!(x["verdict"], "allowed", "{x}");
    // An AdminNetworkPolicy denying shop's ingress to data, before any NetworkPolicy.
    let by_name = |name: &str| json!({"matchLabels": {"kubernetes.io/metadata.name": name}});
    let admin = |action: &str| {
        let mut anp = AdminNetworkPolicy::default();
        anp.metadata.name = Some("data-from-shop".into());
        anp.spec = json!({
            "priority": 10,
            "subject": {"namespaces": by_name("data")},
            "ingress": [{"name": "shop", "action": action, "from": [{"namespaces": by_name("shop")}],
                         "ports": [{"portNumber": {"protocol": "TCP", "port": 5432}}]}]
        });
        anp
    };
    api.apply_admin_network_policy(admin("Deny"));
    let x = explanation();
    assert_eq!(x["verdict"], "denied", "{x}");
    let text = x["text"].as_str().unwrap();
    assert!(
        text.contains(
            "ingress to data/pg tcp/5432 from shop/web is denied: AdminNetworkPolicy \
             data-from-shop (priority 10) rule \"shop\" denies it, before any NetworkPolicy"
        ),
        "{text}"
    );
    assert!(x.get("fix").is_none(), "no NetworkPolicy allows it: {x}");
    assert!(
        x["policies"]
            .as_array()
            .unwrap()
            .contains(&json!("AdminNetworkPolicy/data-from-shop")),
        "{x}"
    );
    // Pass: no NetworkPolicy selects data/pg, so the baseline's Deny decides, and a
    // NetworkPolicy is the fix to review.
    api.apply_admin_network_policy(admin("Pass"));
    let mut banp = BaselineAdminNetworkPolicy::default();
    banp.metadata.name = Some("default".into());
    banp.spec = json!({
        "subject": {"namespaces": {}},
        "ingress": [{"name": "only-own-namespace", "action": "Deny",
                     "from": [{"namespaces": {"matchExpressions": [
                         {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["data"]}]}}]}]
    });
    api.apply_baseline_admin_network_policy(banp);
    let x = explanation();
    assert_eq!(x["verdict"], "denied", "{x}");
    let text = x["text"].as_str().unwrap();
    assert!(
        text.contains("BaselineAdminNetworkPolicy default rule \"only-own-namespace\" denies it")
            && text.contains("data-from-shop (priority 10) rule \"shop\" passes it on"),
        "{text}"
    );
    assert!(
        x["fix"].as_str().unwrap().contains("kind: NetworkPolicy"),
        "{x}"
    );
    // A CiliumNetworkPolicy in the cluster: the verdict is no longer the evaluated kinds' to give.
    let mut cnp = CiliumNetworkPolicy::default();
    cnp.metadata.namespace = Some("data".into());
    cnp.metadata.name = Some("pg-only-from-api".into());
    api.apply_cilium_network_policy(cnp);
    let x = explanation();
    assert_eq!(x["verdict"], "unknown", "{x}");
    let text = x["text"].as_str().unwrap();
    assert!(
        text.starts_with(
            "by AdminNetworkPolicy, NetworkPolicy and BaselineAdminNetworkPolicy, denied"
        ) && text.contains("CiliumNetworkPolicy (cilium.io) objects")
            && !text.contains("AdminNetworkPolicy (policy.networking.k8s.io)"),
        "{text}"
    );
    // An AdminNetworkPolicy this reader cannot read is named, not passed over.
    let mut broken = AdminNetworkPolicy::default();
    broken.metadata.name = Some("broken".into());
    broken.spec = json!({"priority": "high"});
    api.apply_admin_network_policy(broken);
    let text = explanation()["text"].as_str().unwrap().to_owned();
    assert!(
        text.contains("CiliumNetworkPolicy (cilium.io) objects")
            && text.contains(
                "AdminNetworkPolicy (policy.networking.k8s.io) broken, which could not be read \
                 as v1alpha1"
            ),
        "{text}"
    );
    // RBAC may hide a kind's objects: it is named as unreadable, not passed over.
    api.forbid("adminnetworkpolicies");
    let text = explanation()["text"].as_str().unwrap().to_owned();
    assert!(
        text.contains(
            "AdminNetworkPolicy (policy.networking.k8s.io), whose objects cannot be read"
        ),
        "{text}"
    );
    api.forbid("ciliumnetworkpolicies");
    let text = explanation()["text"].as_str().unwrap().to_owned();
    assert!(
        text.contains("CiliumNetworkPolicy (cilium.io), whose objects cannot be read"),
        "{text}"
    );
    agent.cancel.cancel();
}
