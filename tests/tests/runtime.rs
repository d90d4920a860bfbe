//! Privileged end to end: pods made by a real container runtime (a private containerd, runc
//! and the CNI bridge plugin, driven through CRI as kubelet drives it) on the simulated node,
//! and the agent attributing their failures. Needs root; fails (never skips) without.

#![expect(clippy::unwrap_used, reason = "test scenarios panic with context")]

use std::{fs, path::Path, time::Duration};

use triage_agent_tests::{
    agent::{count_of, of_kind, records},
    fixture::NodeFixture,
    simnode::{CriPodSpec, PodRuntime, SimNode},
};

/// The harness's own check: pods from containerd have kubelet's cgroupfs layout (the
/// container's cgroup is `<pod cgroup>/<runtime's container id>` in cgroup2 and in every v1
/// hierarchy), their main process is the runtime's (a child of its shim, not of the test), a
/// restart makes a new container in the same sandbox, and the node's teardown leaves nothing
/// behind (the node panics on drop otherwise).
#[test]
fn pods_from_containerd_have_kubelets_layout_and_a_restart_keeps_the_sandbox() {
    let fixture = NodeFixture::new()
        .runtime(PodRuntime::Containerd)
        .pod("shop", "web")
        .pod("shop", "db");
    let (mut node, [web, db]) = fixture.node().unwrap();
    let (w, d) = (node.pod(web), node.pod(db));
    assert_ne!(w.ip, d.ip);
    assert_eq!(w.container_id.len(), 64, "{}", w.container_id);
    let cgroup = node.container_cgroup_v2(web);
    assert!(
        cgroup.ends_with(format!(
            "kubepods/besteffort/pod{}/{}",
            w.uid, w.container_id
        )),
        "{}",
        cgroup.display()
    );
    // The container's main process: busybox sleep, whose parent is containerd's shim.
    let procs = fs::read_to_string(cgroup.join("cgroup.procs")).unwrap();
    let main: u32 = procs.split_whitespace().next().unwrap().parse().unwrap();
    let stat = fs::read_to_string(format!("/proc/{main}/stat")).unwrap();
    let ppid: u32 = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let parent = fs::read(format!("/proc/{ppid}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&parent).contains("containerd-shim-runc-v2"),
        "parent of {main}: {}",
        String::from_utf8_lossy(&parent)
    );
    // A process of the test joins the container and reaches the other pod over the bridge.
    let out = node
        .run(
            web,
            &["connect", &format!("{}:9", node.pod(db).ip), "1", "0"],
        )
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    eprintln!("probe: {out:?}");
    let before = node.pod(web).container_id.clone();
    node.restart_container(web, false).unwrap();
    let after = node.pod(web);
    assert_ne!(after.container_id, before);
    assert_eq!(after.restart_count, 1);
    assert!(node.container_cgroup_v2(web).is_dir());
    assert!(
        !Path::new(&cgroup).exists(),
        "the old container's cgroup is gone"
    );
}

const WAIT: Duration = Duration::from_secs(20);

fn refusals_from(node: &SimNode, from: usize, to: usize, port: u16, n: usize) {
    let dst = format!("{}:{port}", node.pod(to).ip);
    let out = node
        .run(from, &["connect", &dst, &n.to_string(), "20"])
        .unwrap();
    let seen = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| *l == "refused")
        .count();
    assert_eq!(seen, n, "the workload itself saw {n} refusals");
}

/// A pod the runtime started and the API server has not reported yet: its failure is named
/// by the runtime (pod and container), right away, not held until the watch catches up or
/// stored unattributed; Status says the runtime is read and that one pod is known from it
/// only.
#[test]
fn a_container_the_api_server_does_not_know_yet_is_named_through_cri() {
    let fixture = NodeFixture::new()
        .runtime(PodRuntime::Containerd)
        .pod("shop", "db");
    let (mut node, [db]) = fixture.node().unwrap();
    let agent = fixture.agent(&node).unwrap();
    let late = node.add_pod_unannounced("shop", "late").unwrap();
    refusals_from(&node, late, db, 5433, 3);
    let answer = agent
        .query_until("shop", "late", WAIT, |v| {
            count_of(&records(v, "connection_refused", "outbound")) >= 3
        })
        .unwrap();
    let r = records(&answer, "connection_refused", "outbound")[0];
    assert_eq!(r["container"], "app", "{r}");
    assert_eq!(r["attribution"], "cgroup", "{r}");
    assert_eq!(r["pod"]["uid"], node.pod(late).uid.as_str(), "{r}");
    // Attribution publishes its counts once a second.
    let status = agent
        .status_until(WAIT, |s| s["runtime"]["pods_not_in_api"] == 1)
        .unwrap();
    let runtime = &status["runtime"];
    assert_eq!(runtime["connected"], true, "{status}");
    assert_eq!(runtime["pods"], 2, "{status}");
    assert_eq!(runtime["pods_not_in_api"], 1, "{status}");
    assert!(
        runtime["runtime"]
            .as_str()
            .unwrap()
            .starts_with("containerd "),
        "{status}"
    );
    assert_eq!(
        status["metadata"]["pods"], 1,
        "only the API server's pods are the node's"
    );
    // The API server catches up: the pod is one pod, not two.
    node.announce(late);
    agent
        .status_until(WAIT, |s| {
            s["metadata"]["pods"] == 2 && s["runtime"]["pods_not_in_api"] == 0
        })
        .unwrap();
}

/// kubelet restarts a container: a new container ID in the same sandbox, which the pod's
/// status shows only later. Evidence from before and after the restart is under the same pod
/// and container name, including what happened before the API server reported the new ID.
#[test]
fn a_restarted_container_keeps_its_evidence_under_the_same_pod_and_container() {
    let fixture = NodeFixture::new()
        .runtime(PodRuntime::Containerd)
        .pod("shop", "db")
        .pod("shop", "web");
    let (mut node, [db, web]) = fixture.node().unwrap();
    let agent = fixture.agent(&node).unwrap();
    refusals_from(&node, web, db, 5433, 2);
    agent
        .query_until("shop", "web", WAIT, |v| {
            count_of(&records(v, "connection_refused", "outbound")) >= 2
        })
        .unwrap();
    let old_id = node.pod(web).container_id.clone();
    // Restarted; the API server still shows the old container ID.
    node.restart_container(web, true).unwrap();
    assert_ne!(node.pod(web).container_id, old_id);
    refusals_from(&node, web, db, 5434, 3);
    let answer = agent
        .query_until("shop", "web", WAIT, |v| {
            records(v, "connection_refused", "outbound")
                .iter()
                .any(|r| r["dst"].as_str().is_some_and(|d| d.ends_with(":5434")) && r["count"] == 3)
        })
        .unwrap();
    let recs = records(&answer, "connection_refused", "outbound");
    assert_eq!(recs.len(), 2, "{answer}");
    for r in recs {
        assert_eq!(r["container"], "app", "{r}");
        assert_eq!(r["pod"]["name"], "web", "{r}");
    }
    assert_eq!(node.pod(web).restart_count, 1);
}

/// An agent started while the API server is away (a node reboot during a control-plane
/// outage): the runtime alone names the pods and containers of the failures it sees.
#[test]
fn an_agent_started_while_the_api_server_is_away_names_pods_through_cri() {
    let fixture = NodeFixture::new()
        .runtime(PodRuntime::Containerd)
        .pod("shop", "db")
        .pod("shop", "web");
    let (node, [db, web]) = fixture.node().unwrap();
    node.api.set_available(false);
    let agent = fixture.agent_unsynced(&node).unwrap();
    refusals_from(&node, web, db, 5433, 3);
    let answer = agent
        .query_until("shop", "web", WAIT, |v| {
            count_of(&records(v, "connection_refused", "outbound")) >= 3
        })
        .unwrap();
    let r = records(&answer, "connection_refused", "outbound")[0];
    assert_eq!(r["container"], "app", "{r}");
    assert_eq!(r["pod"]["uid"], node.pod(web).uid.as_str(), "{r}");
    let status = agent.status().unwrap();
    assert_eq!(status["metadata"]["synced"], false, "{status}");
    assert_eq!(status["runtime"]["pods_not_in_api"], 2, "{status}");
}

/// A hostNetwork pod (the node's network namespace, its own cgroup from the runtime) whose
/// lookups fail: the failure is its own, by cgroup, never the node's or another pod's.
#[test]
fn a_host_network_pods_dns_failure_is_its_own() {
    let fixture = NodeFixture::new().runtime(PodRuntime::Containerd);
    let (mut node, []) = fixture.node().unwrap();
    let dns = node
        .add_dns_server("coredns", "10.96.0.10", &["--local=/#/"])
        .unwrap();
    let host = node
        .add_pod_spec(
            "monitoring",
            "node-exporter",
            CriPodSpec {
                host_network: true,
                ..CriPodSpec::default()
            },
        )
        .unwrap();
    assert_eq!(node.pod(host).ip, node.node_ip());
    // kubelet's dnsPolicy Default: the node's resolver, here the DNS pod itself.
    let server = node.pod(dns).ip.to_string();
    node.set_cluster_dns(host, &server, "").unwrap();
    let agent = fixture.agent(&node).unwrap();
    let out = node
        .run(host, &["resolve", "nosuch.example.", "1", "50"])
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("fail"));
    let answer = agent
        .query_until("monitoring", "node-exporter", WAIT, |v| {
            records(v, "dns", "outbound")
                .iter()
                .any(|r| r["outcome"] == "nxdomain")
        })
        .unwrap();
    let r = records(&answer, "dns", "outbound")[0];
    assert_eq!(r["query"], "nosuch.example", "{r}");
    assert_eq!(r["attribution"], "cgroup", "{r}");
    assert_eq!(r["container"], "app", "{r}");
    assert_eq!(r["server"], format!("{server}:53"), "{r}");
}

/// Without a runtime socket (none at the usual paths: no runtime runs on these machines, and
/// hand-made pods have none) the agent says so in one Status line and works from the API
/// server alone.
#[test]
fn without_a_runtime_socket_status_says_so_and_pods_come_from_the_api_server() {
    let fixture = NodeFixture::new()
        .runtime(PodRuntime::HandMade)
        .pod("shop", "db")
        .pod("shop", "web");
    let (node, agent, [db, web]) = fixture.start().unwrap();
    let status = agent
        .status_until(WAIT, |s| s["runtime"]["last_error"].is_string())
        .unwrap();
    assert_eq!(status["runtime"]["connected"], false, "{status}");
    assert!(
        status["runtime"]["last_error"]
            .as_str()
            .unwrap()
            .starts_with("no container runtime socket at /run/containerd/containerd.sock"),
        "{status}"
    );
    refusals_from(&node, web, db, 5433, 1);
    let answer = agent
        .query_until("shop", "web", WAIT, |v| {
            count_of(&records(v, "connection_refused", "outbound")) >= 1
        })
        .unwrap();
    assert_eq!(
        records(&answer, "connection_refused", "outbound")[0]["container"],
        "app"
    );
    let table = agent.cli(&["status", "-o", "wide"]).unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.lines().any(|l| l
            .trim_start()
            .starts_with("runtime: not read: no container runtime socket")),
        "{text}"
    );
}

/// Limits as kubelet sets them, in the container's CreateContainer request (runc writes them
/// when it makes the container's cgroups): a worker child OOM-killed in a container with a
/// memory limit, and a container throttled by its CPU quota, are each named by pod and
/// container.
#[test]
fn limits_set_at_creation_name_the_container_of_an_oom_kill_and_of_throttling() {
    const LIMIT: i64 = 64 << 20;
    let fixture = NodeFixture::new()
        .runtime(PodRuntime::Containerd)
        .kubelet_cgroup_root()
        .agent_flags(["--sample-interval", "1s", "--throttle-threshold", "1"]);
    let (mut node, []) = fixture.node().unwrap();
    let worker = node
        .add_pod_spec(
            "shop",
            "worker",
            CriPodSpec {
                memory_limit: Some(LIMIT),
                ..CriPodSpec::default()
            },
        )
        .unwrap();
    let busy = node
        .add_pod_spec(
            "shop",
            "busy",
            CriPodSpec {
                cpu_quota_us: Some(10_000),
                ..CriPodSpec::default()
            },
        )
        .unwrap();
    let agent = fixture.agent(&node).unwrap();
    agent
        .status_until(WAIT, |s| {
            s["resources"]
                .as_array()
                .is_some_and(|a| a.iter().all(|r| r["containers"] == 2))
        })
        .unwrap();
    let mut main = node.spawn(worker, &["alloc-child", "300"]).unwrap();
    node.start_process(busy, &["spin", "60"]).unwrap();
    let answer = agent
        .query_until("shop", "worker", WAIT, |v| {
            !of_kind(v, "oom_kill").is_empty()
        })
        .unwrap();
    let r = of_kind(&answer, "oom_kill")[0];
    assert_eq!(r["container"], "app", "{r}");
    assert_eq!(r["memory_limit_bytes"], LIMIT, "{r}");
    assert_eq!(r["main_process"], false, "{r}");
    assert_ne!(r["process"]["pid"], u64::from(main.id()), "{r}");
    let answer = agent
        .query_until("shop", "busy", WAIT, |v| {
            !of_kind(v, "cpu_throttling").is_empty()
        })
        .unwrap();
    let r = of_kind(&answer, "cpu_throttling")[0];
    assert_eq!(r["container"], "app", "{r}");
    assert_eq!(r["cpu_limit_cores"], 0.1, "{r}");
    let _ = main.kill();
    let _ = main.wait();
}
