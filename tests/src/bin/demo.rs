//! `cargo xtask demo`: a simulated node with pods, a NetworkPolicy its nftables rules enforce,
//! the real agent, real failures (a policy drop that shows as a timeout, a firewall REJECT,
//! refused connections, a worker child OOM-killed while its container lives on, a container
//! throttled by its CPU limit, DNS lookups that fail, walk the search path, or are dropped by a
//! policy), what `triage-agent query` and `explain` say about them, and what `doctor` says
//! works on this kernel. Cleans up
//! on exit.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use triage_agent_tests::{
    agent::{AgentProcess, agent_binary, records},
    simnode::{CgroupDriver, PodRuntime, SimConfig, SimNode},
};

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.parent().context("exe has no directory")?.join(name))
}

fn show(agent: &AgentProcess, args: &[&str]) -> anyhow::Result<String> {
    println!("\n$ triage-agent {} --agent {}", args.join(" "), agent.addr);
    let out = agent.cli(args)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{text}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    Ok(text)
}

/// The README's example block `name` (between `<!-- example:NAME -->` and its end marker).
fn readme_example(name: &str) -> anyhow::Result<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let readme = std::fs::read_to_string(path).context("reading README.md")?;
    let begin = format!("<!-- example:{name} -->\n```\n");
    let end = format!("```\n<!-- /example:{name} -->");
    let start = readme
        .find(&begin)
        .with_context(|| format!("README.md has no {name} example"))?
        + begin.len();
    let stop = readme[start..]
        .find(&end)
        .with_context(|| format!("README.md's {name} example has no end"))?;
    Ok(readme[start..start + stop].to_owned())
}

/// The README shows what the demo prints: its `explain` example verbatim, and its `query`
/// example's columns (the rest of that example is the renderer's golden output, whose
/// addresses and times a live run cannot repeat).
fn readme_matches(query: &str, explain: &str) -> anyhow::Result<()> {
    let example = readme_example("explain")?;
    anyhow::ensure!(
        explain.contains(example.trim_end()),
        "README.md's explain example is not what `explain` printed:\n{example}"
    );
    let header = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("KIND "))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
    };
    let example = readme_example("query")?;
    anyhow::ensure!(
        header(query).is_some() && header(query) == header(&example),
        "README.md's query example has columns {:?}; `query` printed {:?}",
        header(&example),
        header(query)
    );
    Ok(())
}

fn demo() -> anyhow::Result<()> {
    println!(
        "Starting a simulated node: pods from a private containerd (runc, CNI bridge), a stand-in API server."
    );
    let mut node = SimNode::start(SimConfig {
        workload: sibling("sim-workload")?,
        driver: CgroupDriver::Cgroupfs,
        runtime: PodRuntime::Containerd,
    })?;
    let db = node.add_pod("shop", "db")?;
    let cache = node.add_pod("shop", "cache")?;
    let web = node.add_pod("shop", "web")?;
    let pg = node.add_pod("data", "pg")?;
    let jobs = node.add_pod("shop", "jobs")?;
    let api = node.add_pod("shop", "api")?;
    // shop/jobs: 64 MiB limit; shop/api: 0.1 core (v1 files on a hybrid host, memory.max and
    // cpu.max on cgroup v2).
    node.set_memory_limit(jobs, 64 << 20)?;
    node.set_cpu_quota(api, 10_000, 100_000)?;
    node.start_process(db, &["listen", "5432"])?;
    node.start_process(pg, &["listen", "5432"])?;
    // Cluster DNS: dnsmasq behind the Service VIP 10.96.0.10 (translated in the node's
    // namespace, as kube-proxy does), authoritative for cluster.local and example.test.
    const DNS_VIP: &str = "10.96.0.10";
    let db_record = format!(
        "--host-record=db.shop.svc.cluster.local,{}",
        node.pod(db).ip
    );
    let coredns = node.add_dns_server(
        "coredns",
        DNS_VIP,
        &[
            "--local=/#/",
            &db_record,
            "--host-record=api.example.test,10.96.0.20",
        ],
    )?;
    let batch = node.add_pod("jobs", "batch")?;
    node.set_cluster_dns(web, DNS_VIP, "")?;
    node.set_cluster_dns(batch, DNS_VIP, "timeout:2 attempts:1")?;
    for i in [db, cache, web, pg, jobs, api, coredns, batch] {
        let p = node.pod(i);
        println!("  pod {}/{} ip {} uid {}", p.namespace, p.name, p.ip, p.uid);
    }
    // A NetworkPolicy: data/pg takes 5432 only from pods labelled app=api. The simulated CNI
    // enforces it with an nftables rule on the node's bridge, as policy-enforcing CNIs do.
    let (pg_ip, web_ip) = (node.pod(pg).ip, node.pod(web).ip);
    node.api.apply_network_policy(serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": "data", "name": "pg-ingress"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "pg"}},
            "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "api"}}}],
                         "ports": [{"port": 5432}]}]
        }
    }))?);
    node.nft_node(&format!(
        "table bridge sim_policy {{\n chain forward {{\n  type filter hook forward priority 0; policy accept;\n  ip daddr {pg_ip} tcp dport 5432 drop\n }}\n}}\n"
    ))?;
    // jobs/default-deny-egress: jobs/batch may send nothing, DNS included.
    node.api
        .apply_network_policy(serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "jobs", "name": "default-deny-egress"},
            "spec": {"podSelector": {}, "policyTypes": ["Egress"]}
        }))?);
    let batch_ip = node.pod(batch).ip;
    node.nft_node(&format!(
        "table ip sim_egress {{\n chain forward {{\n  type filter hook forward priority 0; policy accept;\n  ip saddr {batch_ip} drop\n }}\n}}\n"
    ))?;
    println!(
        "  NetworkPolicy jobs/default-deny-egress: jobs/batch may send nothing (DNS included)"
    );
    println!(
        "  NetworkPolicy data/pg-ingress: pg:5432 only from app=api (enforced by nftables on the node bridge)"
    );
    println!("Starting the node agent ({})", agent_binary().display());
    let root = format!("/{}", node.cgroup_base().display());
    let socket = node
        .cri_socket()
        .map(|s| s.display().to_string())
        .unwrap_or_else(|| "none".to_owned());
    let mut agent = AgentProcess::start_with(
        &node,
        &[
            "--kubelet-cgroup-root",
            &root,
            "--sample-interval",
            "2s",
            "--cri-socket",
            &socket,
        ],
    )?;
    agent.wait_ready(true, Duration::from_secs(20))?;
    agent.status_until(Duration::from_secs(20), |s| {
        s.pointer("/resources/0/containers")
            .and_then(serde_json::Value::as_u64)
            == Some(8)
    })?;

    let (db_ip, cache_ip) = (node.pod(db).ip, node.pod(cache).ip);
    println!(
        "\nshop/web connects to db:5432 (listening), db:5433 (wrong port, x5) and cache:6379 (nothing listens, x3)."
    );
    node.run(web, &["connect", &format!("{db_ip}:5432"), "2", "20"])?;
    node.run(web, &["connect", &format!("{db_ip}:5433"), "5", "20"])?;
    node.run(web, &["connect", &format!("{cache_ip}:6379"), "3", "20"])?;
    agent.query_until("shop", "web", Duration::from_secs(20), |v| {
        records(v, "connection_refused", "outbound")
            .iter()
            .map(|r| r["count"].as_u64().unwrap_or(0))
            .sum::<u64>()
            >= 8
    })?;
    agent.query_until("shop", "db", Duration::from_secs(20), |v| {
        !records(v, "connection_refused", "inbound").is_empty()
    })?;
    println!(
        "shop/web connects to data/pg:5432 twice (the policy drops its SYNs: the client only sees timeouts)."
    );
    node.run(
        web,
        &["connect", &format!("{pg_ip}:5432"), "2", "10", "1200"],
    )?;
    agent.query_until("shop", "web", Duration::from_secs(20), |v| {
        !records(v, "packet_drop", "outbound").is_empty()
            && !records(v, "connection_timeout", "outbound").is_empty()
    })?;
    let _ = web_ip;
    println!(
        "shop/jobs starts a worker child that allocates 300 MiB against its 64 MiB limit; shop/api \
         busy-loops under a 0.1-core limit."
    );
    node.start_process(jobs, &["alloc-child", "300"])?;
    node.start_process(api, &["spin", "30"])?;
    agent.query_until("shop", "jobs", Duration::from_secs(30), |v| {
        v["evidence"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["kind"] == "oom_kill"))
    })?;
    agent.query_until("shop", "api", Duration::from_secs(30), |v| {
        v["evidence"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["kind"] == "cpu_throttling"))
    })?;

    println!(
        "shop/web resolves db (found at once), nosuch-svc (does not exist) and api.example.test \
         (found after its search-path expansions); jobs/batch resolves db.shop.svc.cluster.local \
         (its queries are dropped)."
    );
    for name in ["db", "nosuch-svc", "api.example.test"] {
        node.run(web, &["resolve", name, "2", "50"])?;
    }
    node.run(batch, &["resolve", "db.shop.svc.cluster.local.", "1", "0"])?;
    agent.query_until("shop", "web", Duration::from_secs(20), |v| {
        records(v, "dns", "outbound").len() >= 2
    })?;
    agent.query_until("jobs", "batch", Duration::from_secs(20), |v| {
        records(v, "dns", "outbound")
            .iter()
            .any(|r| r["outcome"] == "timeout")
    })?;

    let kubeconfig = node.kubeconfig();
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    let query = show(
        &agent,
        &["query", "web", "-n", "shop", "--kubeconfig", &kubeconfig],
    )?;
    let explain = show(
        &agent,
        &["explain", "web", "-n", "shop", "--kubeconfig", &kubeconfig],
    )?;
    readme_matches(&query, &explain)?;
    show(
        &agent,
        &[
            "query",
            "--pod",
            "batch",
            "-n",
            "jobs",
            "--kubeconfig",
            &kubeconfig,
        ],
    )?;
    show(&agent, &["query", "--pod", "db", "-n", "shop"])?;
    show(
        &agent,
        &["query", "--pod", "db", "-n", "shop", "-o", "json"],
    )?;
    show(&agent, &["query", "--pod", "jobs", "-n", "shop"])?;
    show(&agent, &["query", "--pod", "api", "-n", "shop"])?;
    show(
        &agent,
        &["query", "--pod", "jobs", "-n", "shop", "-o", "json"],
    )?;
    show(&agent, &["status"])?;
    // What works on this node's kernel, as an operator checks it (on a node, or `kubectl exec`
    // in the agent's pod).
    println!("\n$ triage-agent doctor");
    let doctor = std::process::Command::new(agent_binary())
        .arg("doctor")
        .output()
        .context("running triage-agent doctor")?;
    print!("{}", String::from_utf8_lossy(&doctor.stdout));
    eprint!("{}", String::from_utf8_lossy(&doctor.stderr));
    agent.stop()?;
    println!("\nAgent stopped (programs detached); removing the simulated node.");
    Ok(())
}

fn main() -> ExitCode {
    match demo() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
