//! The detection scenario: a refusal provoked in a pod -> its line on `triage-agent watch`,
//! p50/p99.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use triage_agent_tests::simnode::SimNode;

use crate::{
    measure::{percentile, quick},
    results,
};

/// Detection latency: a refusal provoked in a pod -> its record on `triage-agent watch`'s
/// output. Each round connects to a new port (a new flow: its first occurrence is reported at
/// once, not at the next drain of the kernel's counts).
pub fn run(node: &SimNode, source: usize, sink: usize) -> anyhow::Result<()> {
    use std::io::BufRead as _;

    let mut agent = crate::measure::start_agent(node, &[])?;
    // Synced: the pods added before (by other scenarios too) are known.
    agent.wait_ready(true, Duration::from_secs(20))?;
    let mut watch = std::process::Command::new(triage_agent_tests::agent::agent_binary())
        .args([
            "watch",
            "--pod",
            "source",
            "-n",
            "bench",
            "-o",
            "json",
            "--agent",
            &agent.addr,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let stdout = watch.stdout.take().context("watch stdout")?;
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, String)>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    // Time for the stream to open.
    std::thread::sleep(Duration::from_millis(500));
    let sink_ip = node.pod(sink).ip;
    let samples = if quick() { 3 } else { 30 };
    let mut latencies = Vec::new();
    for i in 0..samples {
        let port = 20_000 + i;
        let dst = format!("{sink_ip}:{port}");
        while rx.try_recv().is_ok() {}
        let provoked = Instant::now();
        node.run(source, &["connect", &dst, "1", "0"])?;
        let deadline = provoked + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (at, line) = rx
                .recv_timeout(left)
                .with_context(|| format!("the refusal to {dst} never reached watch"))?;
            if line.contains(&format!("\"{dst}\"")) && line.contains("connection_refused") {
                latencies.push((at - provoked).as_secs_f64() * 1000.0);
                break;
            }
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    agent.stop()?;
    latencies.sort_by(f64::total_cmp);
    println!(
        "\n| detection: refusal provoked -> on `triage-agent watch` ({} samples, a new flow each) | p50 | p99 | max | goal |\n| --- | --- | --- | --- | --- |\n| connect() in a pod (process start included) to the watch line | {:.0} ms | {:.0} ms | {:.0} ms | p99 < 1 s |",
        latencies.len(),
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    results::add(results::Row {
        scenario: "detection: a refusal provoked in a pod -> its line on `watch`".to_owned(),
        ours: format!("p99 {:.0} ms", percentile(&latencies, 99.0)),
        peers: "-".to_owned(),
        goal: "p99 < 1 s".to_owned(),
        spread: format!(
            "p50 {:.0} ms, max {:.0} ms over {} samples",
            percentile(&latencies, 50.0),
            latencies.last().copied().unwrap_or(f64::NAN),
            latencies.len()
        ),
    });
    Ok(())
}
