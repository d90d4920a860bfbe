//! DNS ring records and payloads: decoding, parsing and matching never panic, whatever the
//! bytes (the kernel copies them from any socket on a DNS port).
#![no_main]
use std::sync::Arc;

use triage_agent::{
    dns::{RepeatChange, Repeated, Tracker, TrackConfig, handle, packet},
    evidence::Protocol,
    loss::Counters,
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = packet::parse(Protocol::Udp, data);
    let _ = packet::parse(Protocol::Tcp, data);
    let counters = Arc::new(Counters::default());
    let mut tracker = Tracker::new(TrackConfig::default(), counters.clone());
    // As a whole record, then as the payload of well-formed records from both sides.
    let _ = handle(data, &mut tracker, &counters, &|p| p == 53);
    for (side, src, dst) in [
        (packet::Side::Egress, "10.0.0.1:40000", "10.96.0.10:53"),
        (packet::Side::Ingress, "10.96.0.10:53", "10.0.0.1:40000"),
    ] {
        let record = packet::encode(&packet::Captured {
            boot_ns: data.len() as u64,
            cgroup_id: 7,
            side,
            protocol: Protocol::Udp,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            wire_len: data.len() as u32,
            payload: data,
            // Some as a query the kernel held, with what a server did with it.
            server: data
                .first()
                .filter(|b| *b & 1 == 1)
                .map(|b| packet::ServerSide {
                    cgroup: (b & 2 != 0).then_some(9),
                    answered: b & 4 != 0,
                }),
        });
        let _ = handle(&record, &mut tracker, &counters, &|p| p == 53);
    }
    // Failures the tracker hands to the kernel, repeated as the kernel would count them.
    for change in tracker.take_repeat_changes() {
        if let RepeatChange::Count(key) = change {
            let n = data.len() as u64;
            let _ = tracker.repeated_in_kernel(Repeated {
                key,
                count: n,
                latency_sum: std::time::Duration::from_nanos(n.wrapping_mul(1_000_003)),
                latency_max: std::time::Duration::from_nanos(n),
                first_ns: n,
                last_ns: n / 2,
            });
        }
    }
    tracker.age_repeats();
    let _ = tracker.tick(u64::MAX / 2);
    let _ = tracker.take_tallies();
});
