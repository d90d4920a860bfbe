//! Invariants of the Kubernetes manifests in `deploy/` (ARCHITECTURE.md, Deployment): the
//! kustomization lists every manifest, the DaemonSet is not privileged and has exactly the
//! capabilities the agent needs, gRPC stays on the pod's loopback, host paths are read-only
//! where they should be (the store's directory is the one writable host path), the probes ask
//! the agent's own health, the Prometheus Operator overlay scrapes the metrics port, RBAC grants
//! get/list/watch on pods and nothing else, the NetworkPolicy admits only the declared metrics
//! port and only from a chosen namespace, and every manifest validates strictly against the
//! Kubernetes OpenAPI schemas (`kubernetes-validate`, installed by `cargo xtask setup`).
//!
//! Parses the YAML (serde-saphyr, as kube does) into `serde_json::Value`, not k8s-openapi types, so it also runs with
//! `--no-default-features` (the CLI-only build).

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::{
    CAPABILITIES, GRPC_PORT, Manifests, WRITABLE_HOST_PATHS, seq, string_set, walk,
};

/// Loading and navigation helpers. In `#[cfg(test)]` so clippy's test exemptions (expect, panic,
/// indexing) cover them too: in an integration test only `#[test]` functions get them otherwise.
#[cfg(test)]
mod support {
    use std::{
        collections::BTreeSet,
        path::{Path, PathBuf},
    };

    use serde_json::Value;

    /// The capabilities the agent may add: what its code uses. Adding one is a decision an
    /// issue makes with its reason in daemonset.yaml; DAC_READ_SEARCH (open_by_handle_at
    /// escapes) and SYS_ADMIN are never in it.
    pub const CAPABILITIES: [&str; 4] = ["BPF", "PERFMON", "NET_ADMIN", "SYS_RESOURCE"];
    /// The agent's gRPC port.
    pub const GRPC_PORT: u64 = 9742;
    /// Host paths the agent may write to: the evidence store's directory.
    pub const WRITABLE_HOST_PATHS: [&str; 1] = ["/var/lib/triage-agent"];

    pub fn deploy_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("deploy")
    }

    /// Every YAML document of `deploy/`, with the file it came from.
    pub struct Manifests {
        pub kustomization: Value,
        /// Every `*.yaml` file except `kustomization.yaml`.
        pub files: BTreeSet<String>,
        pub objects: Vec<(String, Value)>,
    }

    impl Manifests {
        pub fn load() -> Manifests {
            let dir = deploy_dir();
            let mut kustomization = None;
            let mut files = BTreeSet::new();
            let mut objects = Vec::new();
            let entries = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
            for entry in entries {
                let path = entry.expect("reading a deploy/ entry").path();
                let is_yaml = path
                    .extension()
                    .is_some_and(|ext| ext == "yaml" || ext == "yml");
                if !is_yaml {
                    continue;
                }
                let name = path
                    .file_name()
                    .expect("a file name")
                    .to_string_lossy()
                    .into_owned();
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("reading {name}: {e}"));
                let mut docs = Vec::new();
                for value in serde_saphyr::from_str_multiple::<Value, Vec<Value>>(&text)
                    .unwrap_or_else(|e| panic!("{name} is not valid YAML: {e}"))
                {
                    // An empty document (a stray `---`) is not an object.
                    if !value.is_null() {
                        docs.push(value);
                    }
                }
                assert!(!docs.is_empty(), "{name} holds no YAML document");
                if name == "kustomization.yaml" {
                    assert_eq!(
                        docs.len(),
                        1,
                        "kustomization.yaml must hold exactly one document"
                    );
                    kustomization = docs.pop();
                } else {
                    for doc in docs {
                        assert!(
                            doc["apiVersion"].as_str().is_some_and(|s| !s.is_empty()),
                            "an object in {name} has no apiVersion"
                        );
                        assert!(
                            doc["kind"].as_str().is_some_and(|s| !s.is_empty()),
                            "an object in {name} has no kind"
                        );
                        assert!(
                            doc["metadata"]["name"]
                                .as_str()
                                .is_some_and(|s| !s.is_empty()),
                            "an object in {name} has no metadata.name"
                        );
                        objects.push((name.clone(), doc));
                    }
                    files.insert(name);
                }
            }
            let kustomization = kustomization.expect("deploy/kustomization.yaml is missing");
            Manifests {
                kustomization,
                files,
                objects,
            }
        }

        /// The one object of this kind.
        pub fn one(&self, kind: &str) -> &Value {
            let found: Vec<&Value> = self
                .objects
                .iter()
                .filter(|(_, o)| o["kind"] == kind)
                .map(|(_, o)| o)
                .collect();
            assert_eq!(
                found.len(),
                1,
                "deploy/ must hold exactly one {kind}, found {}",
                found.len()
            );
            found[0]
        }

        /// The namespace kustomize puts every namespaced object in.
        pub fn namespace(&self) -> &str {
            self.kustomization["namespace"]
                .as_str()
                .expect("kustomization.yaml sets no namespace")
        }

        pub fn daemonset_pod(&self) -> &Value {
            let pod = &self.one("DaemonSet")["spec"]["template"]["spec"];
            assert!(pod.is_object(), "the DaemonSet has no spec.template.spec");
            pod
        }

        /// The DaemonSet's containers, init containers included.
        pub fn daemonset_pod_metadata(&self) -> &Value {
            &self.one("DaemonSet")["spec"]["template"]["metadata"]
        }

        pub fn containers(&self) -> Vec<&Value> {
            let pod = self.daemonset_pod();
            let containers = seq(&pod["containers"]);
            assert!(!containers.is_empty(), "the DaemonSet has no containers");
            containers
                .into_iter()
                .chain(seq(&pod["initContainers"]))
                .collect()
        }

        /// The agent container: the one that runs `triage-agent agent`.
        pub fn agent_container(&self) -> &Value {
            let agents: Vec<&Value> = self
                .containers()
                .into_iter()
                .filter(|c| seq(&c["args"]).first().and_then(|a| a.as_str()) == Some("agent"))
                .collect();
            assert_eq!(
                agents.len(),
                1,
                "exactly one container must run `triage-agent agent` (args starting with \"agent\")"
            );
            agents[0]
        }
    }

    /// The items of a sequence; empty when the value is absent.
    pub fn seq(value: &Value) -> Vec<&Value> {
        match value {
            Value::Null => Vec::new(),
            Value::Array(items) => items.iter().collect(),
            other => panic!("expected a list, found {other:?}"),
        }
    }

    /// The strings of a sequence of strings, as a set.
    pub fn string_set(value: &Value, what: &str) -> BTreeSet<String> {
        seq(value)
            .into_iter()
            .map(|v| {
                v.as_str()
                    .unwrap_or_else(|| panic!("{what}: {v:?} is not a string"))
                    .to_owned()
            })
            .collect()
    }

    /// Every value under `value`, recursively, with the key it is stored under.
    pub fn walk<'a>(value: &'a Value, key: &str, out: &mut Vec<(String, &'a Value)>) {
        out.push((key.to_owned(), value));
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    walk(v, k, out);
                }
            }
            Value::Array(items) => {
                for v in items {
                    walk(v, key, out);
                }
            }
            _ => {}
        }
    }
}

#[test]
fn kustomization_lists_every_manifest() {
    let m = Manifests::load();
    assert_eq!(
        m.kustomization["kind"], "Kustomization",
        "kustomization.yaml must be a kustomize.config.k8s.io Kustomization"
    );
    let listed: Vec<String> = seq(&m.kustomization["resources"])
        .into_iter()
        .map(|r| {
            r.as_str()
                .expect("kustomization resources must be file names")
                .to_owned()
        })
        .collect();
    let listed_set: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(
        listed.len(),
        listed_set.len(),
        "kustomization.yaml lists a resource twice: {listed:?}"
    );
    let missing: Vec<&String> = m.files.difference(&listed_set).collect();
    assert!(
        missing.is_empty(),
        "deploy/ files not listed in kustomization.yaml resources: {missing:?}"
    );
    let dangling: Vec<&String> = listed_set.difference(&m.files).collect();
    assert!(
        dangling.is_empty(),
        "kustomization.yaml lists resources that are not files in deploy/: {dangling:?}"
    );
}

#[test]
fn kustomization_sets_namespace_and_name_label() {
    let m = Manifests::load();
    assert_eq!(
        m.namespace(),
        "triage-agent",
        "kustomization.yaml must put everything in namespace triage-agent"
    );
    let ns = m.one("Namespace");
    assert_eq!(
        ns["metadata"]["name"],
        m.namespace(),
        "namespace.yaml must create the kustomization's namespace"
    );

    let mut labels = Vec::new();
    if let Some(common) = m.kustomization["commonLabels"].as_object() {
        labels.push(common);
    }
    labels.extend(
        seq(&m.kustomization["labels"])
            .into_iter()
            .filter_map(|l| l["pairs"].as_object()),
    );
    assert!(
        labels.iter().any(
            |pairs| pairs.get("app.kubernetes.io/name").and_then(Value::as_str)
                == Some("triage-agent")
        ),
        "kustomization.yaml must label everything app.kubernetes.io/name: triage-agent (labels or commonLabels)"
    );

    for (file, object) in &m.objects {
        if let Some(namespace) = object["metadata"]["namespace"].as_str() {
            assert_eq!(
                namespace,
                m.namespace(),
                "{file}: {} {} is in namespace {namespace}, not the kustomization's",
                object["kind"].as_str().unwrap_or_default(),
                object["metadata"]["name"].as_str().unwrap_or_default(),
            );
        }
    }
}

#[test]
fn daemonset_is_not_privileged_and_adds_exactly_the_needed_capabilities() {
    let m = Manifests::load();
    for container in m.containers() {
        let name = container["name"].as_str().unwrap_or("?");
        let sc = &container["securityContext"];
        assert_eq!(
            sc["privileged"],
            Value::Bool(false),
            "container {name}: securityContext.privileged must be false"
        );
        assert_eq!(
            sc["allowPrivilegeEscalation"],
            Value::Bool(false),
            "container {name}: securityContext.allowPrivilegeEscalation must be false"
        );
        assert_eq!(
            sc["readOnlyRootFilesystem"],
            Value::Bool(true),
            "container {name}: securityContext.readOnlyRootFilesystem must be true"
        );
        let drop = string_set(&sc["capabilities"]["drop"], "capabilities.drop");
        assert_eq!(
            drop,
            BTreeSet::from(["ALL".to_owned()]),
            "container {name}: capabilities must drop exactly ALL"
        );
        let add = string_set(&sc["capabilities"]["add"], "capabilities.add");
        let allowed: BTreeSet<String> = CAPABILITIES.iter().map(|c| (*c).to_owned()).collect();
        assert!(
            add.is_subset(&allowed),
            "container {name}: capabilities {:?} are not used by the agent (allowed: {CAPABILITIES:?})",
            add.difference(&allowed).collect::<Vec<_>>()
        );
        for forbidden in [
            "DAC_READ_SEARCH",
            "SYS_ADMIN",
            "ALL",
            "SYS_PTRACE",
            "SYS_MODULE",
        ] {
            assert!(
                !add.contains(forbidden),
                "container {name}: {forbidden} must never be added"
            );
        }
    }
}

#[test]
fn daemonset_shares_no_host_namespace() {
    let m = Manifests::load();
    let pod = m.daemonset_pod();
    assert!(
        pod["hostPID"].is_null() || pod["hostPID"] == Value::Bool(false),
        "the DaemonSet must not use hostPID: nothing reads the host's /proc"
    );
    assert!(
        pod["hostNetwork"].is_null() || pod["hostNetwork"] == Value::Bool(false),
        "the DaemonSet must not use hostNetwork: the loopback-only gRPC port would be the node's loopback"
    );
    assert!(
        pod["hostIPC"].is_null() || pod["hostIPC"] == Value::Bool(false),
        "the DaemonSet must not use hostIPC"
    );
    let tolerations = seq(&pod["tolerations"]);
    assert!(
        tolerations
            .iter()
            .any(|t| t["operator"] == "Exists" && t["key"].is_null() && t["effect"].is_null()),
        "the DaemonSet must tolerate every taint (a toleration with only operator: Exists) to run on every node"
    );
}

#[test]
fn node_name_comes_from_the_downward_api() {
    let m = Manifests::load();
    let agent = m.agent_container();
    let node_name: Vec<&Value> = seq(&agent["env"])
        .into_iter()
        .filter(|e| e["name"] == "NODE_NAME")
        .collect();
    assert_eq!(
        node_name.len(),
        1,
        "the agent container must set NODE_NAME exactly once"
    );
    assert_eq!(
        node_name[0]["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName",
        "NODE_NAME must come from the downward API (valueFrom.fieldRef.fieldPath: spec.nodeName)"
    );
    assert!(
        node_name[0]["value"].is_null(),
        "NODE_NAME must not also have a literal value"
    );
}

#[test]
fn grpc_listens_on_loopback_only() {
    let m = Manifests::load();
    let agent = m.agent_container();
    let args: Vec<&str> = seq(&agent["args"])
        .into_iter()
        .map(|a| a.as_str().expect("container args must be strings"))
        .collect();
    let listen: Vec<&str> = args
        .iter()
        .enumerate()
        .filter_map(|(i, a)| match a.strip_prefix("--listen") {
            Some("") => Some(*args.get(i + 1).expect("--listen has no value")),
            Some(rest) => rest.strip_prefix('='),
            None => None,
        })
        .collect();
    assert_eq!(
        listen.len(),
        1,
        "the agent args must pass --listen exactly once, got {args:?}"
    );
    let addr: std::net::SocketAddr = listen[0]
        .parse()
        .unwrap_or_else(|e| panic!("--listen {} is not HOST:PORT: {e}", listen[0]));
    assert_eq!(
        addr.ip(),
        std::net::Ipv4Addr::LOCALHOST,
        "--listen {addr} must be on 127.0.0.1: the gRPC port is reached only through port-forward"
    );
    assert!(
        !args.iter().any(|a| a.starts_with("--cgroup-root")),
        "do not pass --cgroup-root: the agent finds cgroup2 in mountinfo (hybrid hosts have it at /sys/fs/cgroup/unified)"
    );

    // No port of the DaemonSet is published on the host, and the gRPC port is not declared.
    let mut all = Vec::new();
    walk(m.one("DaemonSet"), "", &mut all);
    let host_ports: Vec<&Value> = all
        .iter()
        .filter(|(k, _)| k == "hostPort")
        .map(|(_, v)| *v)
        .collect();
    assert!(
        host_ports.is_empty(),
        "the DaemonSet must not publish hostPorts: {host_ports:?}"
    );
    for container in m.containers() {
        for port in seq(&container["ports"]) {
            assert_ne!(
                port["containerPort"].as_u64(),
                Some(GRPC_PORT),
                "container {}: do not declare the loopback-only gRPC port {GRPC_PORT}",
                container["name"].as_str().unwrap_or("?")
            );
        }
    }
}

#[test]
fn metrics_are_served_on_the_pod_ip_and_declared() {
    let m = Manifests::load();
    let agent = m.agent_container();
    let args: Vec<&str> = seq(&agent["args"])
        .into_iter()
        .filter_map(Value::as_str)
        .collect();
    let at = args
        .iter()
        .position(|a| *a == "--metrics-listen")
        .expect("the agent args pass --metrics-listen");
    assert_eq!(args.get(at + 1), Some(&"$(POD_IP):9743"));
    let pod_ip = seq(&agent["env"])
        .into_iter()
        .find(|e| e["name"] == "POD_IP")
        .expect("POD_IP in env");
    assert_eq!(
        pod_ip["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP",
        "POD_IP comes from the downward API"
    );
    let ports = seq(&agent["ports"]);
    assert_eq!(
        ports.len(),
        1,
        "only the metrics port is declared: {ports:?}"
    );
    assert_eq!(ports[0]["containerPort"].as_u64(), Some(9743));
    assert_eq!(ports[0]["name"], "metrics");
    let annotations = &m.daemonset_pod_metadata()["annotations"];
    assert_eq!(annotations["prometheus.io/port"], "9743");
}

/// The NetworkPolicy selects the agents' pods, governs their ingress only, and admits exactly
/// the ports the DaemonSet declares (the metrics port), each from a namespace selector (never
/// from everywhere), and never the loopback-only gRPC port.
#[test]
fn network_policy_admits_only_the_declared_ports_from_a_chosen_namespace() {
    let m = Manifests::load();
    let policy = m.one("NetworkPolicy");
    assert_eq!(policy["apiVersion"], "networking.k8s.io/v1");
    let template_labels = m.daemonset_pod_metadata()["labels"]
        .as_object()
        .expect("pod template labels")
        .clone();
    let selector = policy["spec"]["podSelector"]["matchLabels"]
        .as_object()
        .expect("the policy selects pods by labels");
    assert!(
        !selector.is_empty(),
        "an empty podSelector is every pod of the namespace"
    );
    for (key, value) in selector {
        assert_eq!(
            template_labels.get(key),
            Some(value),
            "the NetworkPolicy selects {key:?}={value:?}, which the agent pods do not carry"
        );
    }
    let types = string_set(&policy["spec"]["policyTypes"], "policyTypes");
    assert_eq!(
        types,
        BTreeSet::from(["Ingress".to_owned()]),
        "ingress only: the agent reaches the API server and the OTLP collector"
    );

    let agent = m.agent_container();
    let declared: BTreeSet<(u64, String)> = seq(&agent["ports"])
        .into_iter()
        .map(|p| {
            (
                p["containerPort"]
                    .as_u64()
                    .expect("a numeric containerPort"),
                p["protocol"].as_str().unwrap_or("TCP").to_owned(),
            )
        })
        .collect();
    let mut admitted = BTreeSet::new();
    let rules = seq(&policy["spec"]["ingress"]);
    assert!(
        !rules.is_empty(),
        "no rule: the metrics port would be closed to Prometheus"
    );
    for rule in rules {
        let from = seq(&rule["from"]);
        assert!(
            !from.is_empty(),
            "a rule without `from` admits every source: {rule:?}"
        );
        for peer in from {
            let labels = peer["namespaceSelector"]["matchLabels"]
                .as_object()
                .unwrap_or_else(|| panic!("each source is a namespace chosen by label: {peer:?}"));
            assert!(
                !labels.is_empty(),
                "an empty namespaceSelector is every namespace"
            );
            assert!(
                peer.get("ipBlock").is_none(),
                "no ipBlock: pod addresses are not identities"
            );
        }
        let ports = seq(&rule["ports"]);
        assert!(
            !ports.is_empty(),
            "a rule without ports admits every port: {rule:?}"
        );
        for port in ports {
            let number = port["port"].as_u64().unwrap_or_else(|| {
                panic!("ports by number (every plugin supports them): {port:?}")
            });
            assert_ne!(
                number, GRPC_PORT,
                "gRPC is reached through port-forward, never the pod network"
            );
            admitted.insert((
                number,
                port["protocol"].as_str().unwrap_or("TCP").to_owned(),
            ));
        }
    }
    assert_eq!(
        admitted, declared,
        "the policy admits exactly the ports the DaemonSet declares"
    );
}

#[test]
fn service_account_is_the_one_deployed() {
    let m = Manifests::load();
    let sa = m.one("ServiceAccount")["metadata"]["name"]
        .as_str()
        .expect("the ServiceAccount has no name");
    assert_eq!(
        m.daemonset_pod()["serviceAccountName"].as_str(),
        Some(sa),
        "the DaemonSet's serviceAccountName must be the ServiceAccount {sa}"
    );
}

#[test]
fn host_paths_are_read_only() {
    let m = Manifests::load();
    let pod = m.daemonset_pod();
    let host_paths: Vec<(String, String)> = seq(&pod["volumes"])
        .into_iter()
        .filter(|v| !v["hostPath"].is_null())
        .map(|v| {
            let name = v["name"].as_str().expect("a volume has no name").to_owned();
            let path = v["hostPath"]["path"]
                .as_str()
                .expect("a hostPath volume has no path")
                .to_owned();
            (name, path)
        })
        .collect();
    let cgroup: Vec<&String> = host_paths
        .iter()
        .filter(|(_, p)| p == "/sys/fs/cgroup")
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        cgroup.len(),
        1,
        "the DaemonSet must have one hostPath volume for /sys/fs/cgroup"
    );
    let mut cgroup_mounted = false;
    for container in m.containers() {
        let cname = container["name"].as_str().unwrap_or("?");
        for mount in seq(&container["volumeMounts"]) {
            let vname = mount["name"].as_str().expect("a volumeMount has no name");
            let Some((_, path)) = host_paths.iter().find(|(n, _)| n == vname) else {
                continue;
            };
            let read_only = mount["readOnly"] == Value::Bool(true);
            if path == "/sys/fs/cgroup" {
                cgroup_mounted = true;
                assert!(
                    read_only,
                    "container {cname}: the host's /sys/fs/cgroup must be mounted readOnly: true"
                );
            } else if !WRITABLE_HOST_PATHS.contains(&path.as_str()) {
                assert!(
                    read_only,
                    "container {cname}: host path {path} must be mounted readOnly: true"
                );
            }
            assert_ne!(
                mount["mountPropagation"], "Bidirectional",
                "container {cname}: mounts made in the pod must not propagate to the host ({path})"
            );
        }
    }
    assert!(
        cgroup_mounted,
        "the agent container must mount the host's /sys/fs/cgroup"
    );
}

#[test]
fn cluster_role_reads_pods_and_nothing_else() {
    let m = Manifests::load();
    let role = m.one("ClusterRole");
    let rules = seq(&role["rules"]);
    assert_eq!(
        rules.len(),
        1,
        "the ClusterRole must have exactly one rule (list/watch pods)"
    );
    let rule = rules[0];
    assert_eq!(
        string_set(&rule["apiGroups"], "apiGroups"),
        BTreeSet::from([String::new()]),
        "the ClusterRole rule must be on the core API group (\"\") only"
    );
    assert_eq!(
        string_set(&rule["resources"], "resources"),
        BTreeSet::from(["pods".to_owned()]),
        "the ClusterRole rule must be on pods only (no subresources)"
    );
    let verbs = string_set(&rule["verbs"], "verbs");
    let read_only: BTreeSet<String> = ["list", "watch"].iter().map(|v| (*v).to_owned()).collect();
    assert!(
        verbs.is_subset(&read_only),
        "the ClusterRole may only list and watch (the agent uses nothing else): {verbs:?}"
    );
    assert!(
        rule["resourceNames"].is_null(),
        "the ClusterRole rule must not restrict resourceNames"
    );
    assert!(
        rule["nonResourceURLs"].is_null(),
        "the ClusterRole must not grant nonResourceURLs"
    );
    assert!(
        role["aggregationRule"].is_null(),
        "the ClusterRole must not aggregate other roles"
    );

    // No wildcard anywhere in any RBAC object.
    for (file, object) in &m.objects {
        let kind = object["kind"].as_str().unwrap_or_default();
        if !matches!(kind, "ClusterRole" | "Role") {
            continue;
        }
        let mut all = Vec::new();
        walk(object, "", &mut all);
        for (key, value) in all {
            assert_ne!(
                value.as_str(),
                Some("*"),
                "{file}: {kind} has a wildcard under {key}"
            );
        }
    }
    let namespaced_roles = m
        .objects
        .iter()
        .filter(|(_, o)| matches!(o["kind"].as_str(), Some("Role" | "RoleBinding")));
    assert_eq!(
        namespaced_roles.count(),
        0,
        "deploy/ grants nothing beyond the ClusterRole"
    );
}

#[test]
fn cluster_role_binding_binds_the_role_to_the_service_account() {
    let m = Manifests::load();
    let role = m.one("ClusterRole")["metadata"]["name"]
        .as_str()
        .expect("the ClusterRole has no name");
    let sa = m.one("ServiceAccount")["metadata"]["name"]
        .as_str()
        .expect("the ServiceAccount has no name");
    let binding = m.one("ClusterRoleBinding");
    let role_ref = &binding["roleRef"];
    assert_eq!(
        role_ref["apiGroup"], "rbac.authorization.k8s.io",
        "roleRef.apiGroup must be rbac.authorization.k8s.io"
    );
    assert_eq!(
        role_ref["kind"], "ClusterRole",
        "the ClusterRoleBinding must reference a ClusterRole"
    );
    assert_eq!(
        role_ref["name"].as_str(),
        Some(role),
        "the ClusterRoleBinding must reference the ClusterRole {role}"
    );
    let subjects = seq(&binding["subjects"]);
    assert_eq!(
        subjects.len(),
        1,
        "the ClusterRoleBinding must have exactly one subject, the ServiceAccount"
    );
    let subject = subjects[0];
    assert_eq!(
        subject["kind"], "ServiceAccount",
        "the ClusterRoleBinding subject must be a ServiceAccount"
    );
    assert_eq!(
        subject["name"].as_str(),
        Some(sa),
        "the ClusterRoleBinding subject must be the ServiceAccount {sa}"
    );
    assert_eq!(
        subject["namespace"].as_str(),
        Some(m.namespace()),
        "the ClusterRoleBinding subject must be in the kustomization's namespace {}",
        m.namespace()
    );
}

#[test]
fn seccomp_and_apparmor_are_the_runtime_default() {
    let m = Manifests::load();
    for container in m.containers() {
        let name = container["name"].as_str().unwrap_or("?");
        let sc = &container["securityContext"];
        let seccomp = sc["seccompProfile"]["type"].as_str();
        assert!(
            matches!(seccomp, Some("RuntimeDefault" | "Localhost")),
            "container {name}: seccompProfile must be RuntimeDefault or Localhost, not {seccomp:?}"
        );
        assert_ne!(
            sc["appArmorProfile"]["type"].as_str(),
            Some("Unconfined"),
            "container {name}: AppArmor must not be unconfined"
        );
    }
}

#[test]
fn probes_ask_the_agents_own_health_on_the_metrics_port() {
    let m = Manifests::load();
    let agent = m.agent_container();
    let declared: Vec<&str> = seq(&agent["ports"])
        .into_iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        let get = &agent[probe]["httpGet"];
        assert_eq!(
            get["path"], path,
            "{probe} must ask the agent's {path} (its own health, not process liveness)"
        );
        let port = get["port"].as_str().unwrap_or_default();
        assert!(
            declared.contains(&port),
            "{probe} must use the declared metrics port by name, not {:?}",
            get["port"]
        );
        let timeout = agent[probe]["timeoutSeconds"].as_u64().unwrap_or(1);
        assert!(
            timeout >= 5,
            "{probe}: a timeout under 5 s flaps under load"
        );
    }
}

#[test]
fn the_evidence_store_lives_on_the_one_writable_host_path() {
    let m = Manifests::load();
    let agent = m.agent_container();
    let args: Vec<&str> = seq(&agent["args"])
        .into_iter()
        .filter_map(Value::as_str)
        .collect();
    let store = args
        .iter()
        .position(|a| *a == "--store-path")
        .and_then(|i| args.get(i + 1))
        .expect("the DaemonSet keeps evidence across restarts (--store-path)");
    let pod = m.daemonset_pod();
    let volume = seq(&pod["volumes"])
        .into_iter()
        .find(|v| v["hostPath"]["path"] == WRITABLE_HOST_PATHS[0])
        .expect("a hostPath volume for the store");
    assert_eq!(
        volume["hostPath"]["type"], "DirectoryOrCreate",
        "the store's directory is created on first start"
    );
    let mount = seq(&agent["volumeMounts"])
        .into_iter()
        .find(|vm| vm["name"] == volume["name"])
        .expect("the store's volume is mounted");
    let mount_path = mount["mountPath"].as_str().expect("a mountPath");
    assert!(
        store.starts_with(&format!("{mount_path}/")),
        "--store-path {store} must be inside the mounted host path {mount_path} (else it is lost with the container)"
    );
    assert_ne!(mount["readOnly"], Value::Bool(true));
    assert_eq!(
        agent["securityContext"]["readOnlyRootFilesystem"],
        Value::Bool(true),
        "the root filesystem stays read-only; the store is the one writable place"
    );
}

#[test]
fn the_prometheus_operator_overlay_scrapes_the_agents_metrics_port() {
    let m = Manifests::load();
    let dir = support::deploy_dir().join("overlays/prometheus-operator");
    let read = |name: &str| -> Value {
        let text = std::fs::read_to_string(dir.join(name))
            .unwrap_or_else(|e| panic!("overlays/prometheus-operator/{name}: {e}"));
        serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let k = read("kustomization.yaml");
    let resources: Vec<&str> = seq(&k["resources"])
        .into_iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        resources.contains(&"../.."),
        "the overlay builds on the base: {resources:?}"
    );
    assert_eq!(k["namespace"], m.namespace());
    let monitor = read("podmonitor.yaml");
    assert_eq!(monitor["kind"], "PodMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert!(resources.contains(&"podmonitor.yaml"));
    let template_labels = m.daemonset_pod_metadata()["labels"]
        .as_object()
        .expect("pod template labels")
        .clone();
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("the PodMonitor selects by labels")
    {
        assert_eq!(
            template_labels.get(key),
            Some(value),
            "the PodMonitor selects {key:?}={value:?}, which the agent pods do not carry"
        );
    }
    let endpoints = seq(&monitor["spec"]["podMetricsEndpoints"]);
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0]["port"], "metrics");
    assert_eq!(endpoints[0]["path"], "/metrics");
    let names: Vec<&str> = seq(&monitor["spec"]["namespaceSelector"]["matchNames"])
        .into_iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(names, [m.namespace()]);
}

/// The DaemonSet is scheduled only where its image runs (Linux, on the image's two platforms,
/// amd64 and arm64, which `cargo xtask image` writes and the kernel matrix tests on kernels of
/// each), and a start-up failure shows in `kubectl describe pod` (the log's tail as the
/// termination message).
#[test]
fn the_daemonset_lands_only_where_it_can_run() {
    let m = Manifests::load();
    let spec = m.daemonset_pod();
    assert_eq!(spec["nodeSelector"]["kubernetes.io/os"], "linux");
    assert!(spec["nodeSelector"].get("kubernetes.io/arch").is_none());
    let terms = seq(
        &spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"],
    );
    assert_eq!(terms.len(), 1, "one term: every node must match it");
    let arch: Vec<&Value> = terms
        .iter()
        .flat_map(|t| seq(&t["matchExpressions"]))
        .filter(|e| e["key"] == "kubernetes.io/arch")
        .collect();
    assert_eq!(arch.len(), 1);
    assert_eq!(
        arch.first().map(|e| &e["operator"]),
        Some(&Value::from("In"))
    );
    assert_eq!(
        arch.first().map(|e| &e["values"]),
        Some(&serde_json::json!(["amd64", "arm64"]))
    );
    assert_eq!(
        m.agent_container()["terminationMessagePolicy"],
        "FallbackToLogsOnError"
    );
}

/// The settings operators change are one generated ConfigMap (its name carries its content's
/// hash, so an edit rolls the DaemonSet) read whole with envFrom, plus an optional Secret for
/// the OTLP headers; every key is a variable the agent reads.
#[test]
fn settings_are_one_generated_config_map_of_variables_the_agent_reads() {
    use clap::CommandFactory as _;
    let m = Manifests::load();
    let generators = seq(&m.kustomization["configMapGenerator"]);
    assert_eq!(generators.len(), 1, "{generators:?}");
    assert_eq!(generators[0]["name"], "triage-agent-config");
    let envs: Vec<&str> = seq(&generators[0]["envs"])
        .into_iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(envs, ["config.env"]);
    let from = seq(&m.agent_container()["envFrom"]);
    assert_eq!(from[0]["configMapRef"]["name"], "triage-agent-config");
    assert_eq!(from[1]["secretRef"]["name"], "triage-agent-otlp");
    assert_eq!(from[1]["secretRef"]["optional"], true);
    // Every key: an agent flag's variable, a global flag's, or the OTLP exporter's.
    let cli = triage_agent::app::args::Cli::command();
    let agent = cli.find_subcommand("agent").expect("the agent command");
    let known: BTreeSet<String> = agent
        .get_arguments()
        .chain(cli.get_arguments())
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    let text = std::fs::read_to_string(support::deploy_dir().join("config.env"))
        .expect("deploy/config.env");
    let mut keys = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, _) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("config.env: {line:?} is not KEY=value"));
        assert!(
            known.contains(key) || key.starts_with("OTEL_"),
            "config.env: {key} is no variable the agent reads"
        );
        keys.push(key.to_owned());
    }
    for key in [
        "TRIAGE_LOG_FORMAT",
        "TRIAGE_DNS_PORTS",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ] {
        assert!(keys.iter().any(|k| k == key), "config.env lacks {key}");
    }
}

/// The SELinux overlay builds on the base and runs the agent as spc_t, nothing else.
#[test]
fn the_selinux_overlay_runs_the_agent_as_spc_t() {
    let text =
        std::fs::read_to_string(support::deploy_dir().join("overlays/selinux/kustomization.yaml"))
            .expect("the selinux overlay");
    let k: Value = serde_saphyr::from_str(&text).expect("YAML");
    assert_eq!(seq(&k["resources"]), [&Value::from("../..")]);
    let patches = seq(&k["patches"]);
    assert_eq!(patches.len(), 1);
    assert_eq!(patches[0]["target"]["kind"], "DaemonSet");
    let ops: Value =
        serde_saphyr::from_str(patches[0]["patch"].as_str().expect("a JSON patch")).expect("YAML");
    assert_eq!(
        ops,
        serde_saphyr::from_str::<Value>(
            "- op: add\n  path: /spec/template/spec/containers/0/securityContext/seLinuxOptions\n  value: {type: spc_t}\n"
        )
        .expect("YAML")
    );
}

/// The CLI user's role: port-forward only to the agents' pods, read-only everywhere else.
#[test]
fn the_cli_role_reads_and_port_forwards_only_to_the_agents() {
    let text = std::fs::read_to_string(support::deploy_dir().join("cli/rbac.yaml"))
        .expect("cli/rbac.yaml");
    let docs: Vec<Value> = serde_saphyr::from_str_multiple(&text).expect("YAML");
    let role = docs.iter().find(|d| d["kind"] == "Role").expect("a Role");
    assert_eq!(role["metadata"]["namespace"], "triage-agent");
    let cluster = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole")
        .expect("a ClusterRole");
    let mut forward = false;
    for rule in seq(&role["rules"]) {
        let resources = string_set(&rule["resources"], "resources");
        let verbs = string_set(&rule["verbs"], "verbs");
        if resources.contains("pods/portforward") {
            assert_eq!(verbs, BTreeSet::from(["create".to_owned()]));
            forward = true;
        } else {
            assert!(verbs.iter().all(|v| v == "get" || v == "list"), "{verbs:?}");
        }
    }
    assert!(forward, "the Role grants pods/portforward");
    for rule in seq(&cluster["rules"]) {
        let verbs = string_set(&rule["verbs"], "verbs");
        assert!(
            verbs.iter().all(|v| v == "get" || v == "list"),
            "the ClusterRole only reads: {verbs:?}"
        );
        assert!(!string_set(&rule["resources"], "resources").contains("pods/portforward"));
        assert!(!string_set(&rule["resources"], "resources").contains("secrets"));
    }
}

/// The alert rules pass `promtool check rules`, and `promtool test rules` shows each alert
/// firing on what it is about and only then. promtool comes from Debian's `prometheus`
/// package (`cargo xtask setup`); without it this test fails, it never skips.
#[test]
fn the_alert_rules_pass_promtool() {
    let dir = support::deploy_dir().join("prometheus");
    for args in [
        &["check", "rules", "rules.yaml"][..],
        &["test", "rules", "rules.test.yaml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| panic!("promtool (Debian's prometheus; cargo xtask setup): {e}"));
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The Prometheus Operator overlay ships the rules file's groups, unchanged.
#[test]
fn the_prometheus_rule_is_the_rules_file() {
    let read = |path: &str| -> Value {
        let text = std::fs::read_to_string(support::deploy_dir().join(path))
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let rules = read("prometheus/rules.yaml");
    let rule = read("overlays/prometheus-operator/prometheusrule.yaml");
    assert_eq!(rule["kind"], "PrometheusRule");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["spec"]["groups"], rules["groups"]);
    let k = read("overlays/prometheus-operator/kustomization.yaml");
    assert!(
        seq(&k["resources"])
            .into_iter()
            .any(|r| r == "prometheusrule.yaml"),
        "the overlay lists the PrometheusRule"
    );
}

/// Every manifest (base and overlays) against the Kubernetes OpenAPI schemas, strictly
/// (unknown fields are errors), for the oldest release the manifests support (1.30: the
/// `appArmorProfile` field) and the newest the validator knows. `kubernetes-validate` is
/// installed by `cargo xtask setup`; without it this test fails, it never skips.
#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let root = support::deploy_dir().join("..");
    let validator = std::env::var_os("KUBERNETES_VALIDATE").map_or_else(
        || root.join("target/tools/kubernetes-validate/bin/kubernetes-validate"),
        std::path::PathBuf::from,
    );
    assert!(
        validator.exists(),
        "{} is missing: run `cargo xtask setup`",
        validator.display()
    );
    let mut files = Vec::new();
    let mut dirs = vec![support::deploy_dir()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("reading deploy/") {
            let path = entry.expect("a deploy/ entry").path();
            if path.is_dir() {
                // Prometheus's own files (rules, their tests), not Kubernetes objects.
                if path.file_name().is_none_or(|n| n != "prometheus") {
                    dirs.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "yaml")
                && path.file_name().is_some_and(|n| n != "kustomization.yaml")
            {
                files.push(path);
            }
        }
    }
    files.sort();
    for version in ["1.30.0", "1.37.0"] {
        let out = std::process::Command::new(&validator)
            .args(["--strict", "--kubernetes-version", version])
            .args(&files)
            .output()
            .expect("running kubernetes-validate");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && !text.contains("ERROR"),
            "deploy/ does not validate against Kubernetes {version}:\n{text}"
        );
        for object in [
            "daemonset/triage-agent",
            "clusterrole/triage-agent",
            "namespace/triage-agent",
            "networkpolicy/triage-agent",
        ] {
            assert!(
                text.contains(&format!("passed for resource {object}")),
                "{object} was not validated against {version}:\n{text}"
            );
        }
    }
}

#[test]
fn image_is_pinned_and_memory_is_bounded_and_no_host_port() {
    let m = Manifests::load();
    for container in m.containers() {
        let name = container["name"].as_str().unwrap_or("?");
        let image = container["image"].as_str().expect("an image");
        let tag = image.rsplit_once(':').map(|(_, t)| t);
        assert!(
            tag.is_some_and(|t| t != "latest" && !t.contains('/')),
            "container {name}: image {image} must have a pinned tag"
        );
        assert!(
            container["resources"]["limits"]["memory"].is_string(),
            "container {name}: a memory limit bounds what the agent can take from the node"
        );
        for port in seq(&container["ports"]) {
            assert!(
                port["hostPort"].is_null(),
                "container {name}: no hostPort (the gRPC port is loopback-only)"
            );
        }
    }
}
