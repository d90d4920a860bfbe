//! cgroupfs file contents (cpu.stat, cpu.max, memory.events, memory.oom_control, pressure
//! files, ...) in both versions: parsing never panics, whatever a file says.
#![no_main]
use triage_agent::samplers::cgroupfs as f;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for v2 in [false, true] {
        let _ = f::cpu_stat(data, v2);
        let _ = f::oom_counts(data, v2);
    }
    let _ = f::cpu_max(data);
    let half = data.len() / 2;
    let _ = f::cfs_quota(&data[..half], &data[half..]);
    let _ = f::bytes_or_max(data);
    let _ = f::flag(data);
    let _ = f::psi_some_avg10(data);
    let _ = f::keyed(data, "nr_throttled");
    let _ = f::keyed(data, "");
});
