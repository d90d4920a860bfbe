//! The evidence store driven by arbitrary sequences of occurrences, restores, sweeps and
//! queries: it never panics and its bounds always hold (total capacity, each pod's quota, each
//! namespace's quota), with every removal counted.
#![no_main]
use std::{sync::Arc, time::Duration};

use triage_agent::{
    evidence::{
        Filter,
        fixtures::{dropped, oom_killed, refused, t, throttled, timeout},
    },
    loss::{Counters, Loss},
    store::{Store, StoreConfig},
};

const CAPACITY: usize = 40;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let counters = Arc::new(Counters::default());
    let mut config = StoreConfig::new("n1", CAPACITY, Duration::from_secs(600));
    config.pod_quota = 6;
    config.namespace_quota = 15;
    config.unattributed_quota = 5;
    let quotas = config.clone();
    let mut store = Store::new(config, counters.clone());
    let mut restored_id = 1_000_000u64;
    for op in data.chunks(4) {
        let [a, b, c, d] = [0, 1, 2, 3].map(|i| op.get(i).copied().unwrap_or(0));
        let pod = format!("p{}", a % 10);
        let ns = format!("ns{}", (a / 10) % 3);
        let at = u64::from(c) * 10;
        let port = u16::from(b) + 1;
        let builder = match d % 6 {
            0 => refused(),
            1 => timeout(),
            2 => dropped(),
            3 => oom_killed(),
            4 => throttled(),
            _ => refused().unattributed(),
        };
        let builder = if d % 6 == 5 {
            builder
        } else {
            builder.pod_uid(&ns, &pod, &format!("{ns}-{pod}"))
        };
        let builder = builder.dst(&format!("10.0.0.9:{port}")).at(at);
        match d / 64 {
            0 | 1 => store.record(builder.occurrence()),
            2 => {
                restored_id += 1;
                store.restore(restored_id, builder.evidence());
            }
            _ => {
                if b % 2 == 0 {
                    store.sweep(t(at) + Duration::from_secs(u64::from(b) * 10));
                } else {
                    let filter = Filter {
                        namespace: Some(ns.clone()),
                        pod: Some(pod.clone()),
                        since: Some(t(at)),
                        ..Filter::default()
                    };
                    let r = store.query(&filter, usize::from(b));
                    assert!(r.evidence.len() <= usize::from(b));
                }
            }
        }
        let stats = store.stats();
        assert!(stats.records as usize <= CAPACITY, "over capacity");
        let all = store.query(
            &Filter {
                include_unattributed: true,
                ..Filter::default()
            },
            usize::MAX,
        );
        assert_eq!(all.evidence.len() as u64, stats.records);
        let mut per_pod = std::collections::HashMap::new();
        let mut per_ns = std::collections::HashMap::new();
        let mut unattributed = 0;
        for e in &all.evidence {
            match e.pod() {
                Some(p) => {
                    *per_pod.entry(p.uid.clone()).or_insert(0usize) += 1;
                    *per_ns.entry(p.namespace.clone()).or_insert(0usize) += 1;
                }
                None => unattributed += 1,
            }
        }
        assert!(per_pod.values().all(|n| *n <= quotas.pod_quota), "pod over quota");
        assert!(per_ns.values().all(|n| *n <= quotas.namespace_quota), "namespace over quota");
        assert!(unattributed <= quotas.unattributed_quota, "unattributed over quota");
        let _ = counters.snapshot().get(Loss::StoreEvicted);
    }
});
