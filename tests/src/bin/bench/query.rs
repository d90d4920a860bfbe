//! The query scenario: `Query` latency (p50, p99) for one pod's evidence against a store of
//! 1,000,000 records, through the real gRPC server and the CLI's client (a connection per
//! query, as a CLI run makes). No root needed.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::{
    measure::{percentile, quick},
    results,
};

/// `Query` latency for one pod against a store of a million records, through the real gRPC
/// server and the CLI's client.
pub fn run() -> anyhow::Result<()> {
    use std::sync::Arc;

    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;
    use triage_agent::{
        api::{self, AgentApi, AgentInfo, AgentState},
        attribute::{AttributorStats, MetaHealth},
        cli::client,
        evidence::{Filter, fixtures::refused},
        loss::Counters,
        store::{Store, StoreConfig},
    };

    let (pods, per_pod) = if quick() { (100, 100) } else { (1000, 1000) };
    let records = pods * per_pod;
    let mut config = StoreConfig::new("bench", records, Duration::from_secs(24 * 3600));
    config.pod_quota = per_pod;
    config.namespace_quota = records;
    let counters = Arc::new(Counters::default());
    let mut store = Store::new(config, counters.clone());
    let fill = Instant::now();
    // Recent, so the store task's retention sweep keeps them.
    let base = std::time::SystemTime::now() - Duration::from_secs(3600);
    for pod in 0..pods {
        let name = format!("pod-{pod}");
        let uid = format!("uid-{pod}");
        for r in 0..per_pod {
            store.record(
                refused()
                    .pod_uid("bench", &name, &uid)
                    .dst(&format!(
                        "10.{}.{}.{}:{}",
                        pod / 256,
                        pod % 256,
                        r % 250,
                        1000 + r
                    ))
                    .at_time(base + Duration::from_millis(r as u64))
                    .occurrence(),
            );
        }
    }
    let stats = store.stats();
    anyhow::ensure!(
        stats.records as usize == records,
        "store holds {}",
        stats.records
    );
    let fill = fill.elapsed();
    let direct = store
        .query(
            &Filter {
                namespace: Some("bench".into()),
                pod: Some(format!("pod-{}", pods / 2)),
                ..Filter::default()
            },
            usize::MAX,
        )
        .evidence
        .len();
    anyhow::ensure!(direct == per_pod, "the pod has {direct} records");
    let rt = tokio::runtime::Runtime::new()?;
    let (p50, p99, n, answer) = rt.block_on(async {
        let cancel = CancellationToken::new();
        let (handle, _occurrences, task) = triage_agent::store::spawn(store, cancel.clone());
        tokio::spawn(task);
        let state = AgentState {
            info: AgentInfo {
                node: "bench".into(),
                kernel: String::new(),
                started: std::time::SystemTime::now(),
            },
            store: handle,
            counters,
            probes: Arc::new(vec![]),
            runtime: None,
            meta: watch::channel(MetaHealth::default()).1,
            attribution: watch::channel(AttributorStats::default()).1,
            resources: None,
            persistence: None,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(api::serve(AgentApi::new(state), listener, cancel.clone()));
        let filter = Filter {
            namespace: Some("bench".into()),
            pod: Some(format!("pod-{}", pods / 2)),
            ..Filter::default()
        };
        let agents = [client::Target::Direct(url)];
        let mut times = Vec::new();
        let mut answer = 0;
        let queries = if quick() { 20 } else { 300 };
        for _ in 0..queries {
            let started = Instant::now();
            let mut out =
                client::query_each(&agents, &filter, Duration::from_secs(10), |_, _| {}).await;
            let a = out
                .pop()
                .context("no answer")?
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            answer = a.evidence.len();
        }
        cancel.cancel();
        times.sort_by(f64::total_cmp);
        anyhow::Ok((
            percentile(&times, 50.0),
            percentile(&times, 99.0),
            times.len(),
            answer,
        ))
    })?;
    println!(
        "\n| query: one pod's evidence, store of {records} records ({pods} pods), real gRPC server + CLI client | p50 | p99 | goal |\n| --- | --- | --- | --- |\n| {n} queries, {answer} records per answer (store filled in {:.1} s) | {p50:.1} ms | {p99:.1} ms | p99 < 50 ms |",
        fill.as_secs_f64()
    );
    results::add(results::Row {
        scenario: format!(
            "query: one pod's evidence from a store of {} records, real gRPC server",
            results::thousands(records as f64)
        ),
        ours: format!("p99 {p99:.1} ms"),
        peers: "-".to_owned(),
        goal: "p99 < 50 ms".to_owned(),
        spread: format!("p50 {p50:.1} ms over {n} queries of {answer} records"),
    });
    Ok(())
}
