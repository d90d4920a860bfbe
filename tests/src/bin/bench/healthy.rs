//! The healthy-traffic scenario: TCP throughput (iperf3) and connection rate between two pods,
//! attached vs detached (every packet of every socket passes the DNS programs' port check).

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use triage_agent_tests::{agent::AgentProcess, simnode::SimNode};

use crate::{
    measure::{IPERF3, flood, median, rounds, spread},
    results,
};

/// Healthy traffic: TCP throughput (iperf3) and TCP connection rate between two pods.
pub fn run(node: &mut SimNode) -> anyhow::Result<()> {
    let server = node.add_pod("bench", "iperf-server")?;
    let client = node.add_pod("bench", "iperf-client")?;
    let server_ip = node.pod(server).ip.to_string();
    let iperf3 = Path::new(IPERF3);
    node.start_program(server, iperf3, &["-s", "-p", "5201"])?;
    node.start_process(server, &["listen", "7100"])?;
    std::thread::sleep(Duration::from_millis(300));
    let throughput = |node: &SimNode| -> anyhow::Result<f64> {
        let out = node.run_program(
            client,
            iperf3,
            &["-c", &server_ip, "-p", "5201", "-t", "2", "-J"],
        )?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .context("iperf3 reported no throughput")
    };
    let connections =
        |node: &SimNode| flood(node, client, "connect-rate", &format!("{server_ip}:7100"));
    let mut rows: Vec<(&str, Vec<f64>, Vec<f64>)> = vec![
        ("TCP throughput (iperf3, bits/s)", Vec::new(), Vec::new()),
        (
            "TCP connections/s (connect, server closes, close)",
            Vec::new(),
            Vec::new(),
        ),
    ];
    for _ in 0..rounds() {
        if let Some(r) = rows.get_mut(0) {
            r.1.push(throughput(node)?);
        }
        if let Some(r) = rows.get_mut(1) {
            r.1.push(connections(node)?);
        }
        let mut agent = AgentProcess::start(node)?;
        agent.wait_ready(true, Duration::from_secs(20))?;
        if let Some(r) = rows.get_mut(0) {
            r.2.push(throughput(node)?);
        }
        if let Some(r) = rows.get_mut(1) {
            r.2.push(connections(node)?);
        }
        agent.stop()?;
    }
    println!(
        "\nhealthy traffic between two pods ({} rounds, interleaved)",
        rounds()
    );
    for (name, detached, attached) in &mut rows {
        let (d, a) = (median(&mut detached.clone()), median(&mut attached.clone()));
        let (dmin, dmax) = spread(detached);
        let (amin, amax) = spread(attached);
        println!(
            "  {name}: detached {d:.0} ({dmin:.0}-{dmax:.0}), attached {a:.0} ({amin:.0}-{amax:.0}); ratio {:.3} (goal >= 0.99){}",
            a / d,
            if a / d >= 0.99 { "" } else { "  BELOW GOAL" }
        );
        results::add(results::Row {
            scenario: format!("healthy traffic between two pods: {name}"),
            ours: results::against(a / d, 0.99),
            peers: "-".to_owned(),
            goal: ">= 0.99".to_owned(),
            spread: format!(
                "detached {} ({}-{}), attached {} ({}-{})",
                results::thousands(d),
                results::thousands(dmin),
                results::thousands(dmax),
                results::thousands(a),
                results::thousands(amin),
                results::thousands(amax)
            ),
        });
    }
    Ok(())
}
