//! cgroupfs file contents (cpu.stat, cpu.max, memory.events, memory.oom_control, pressure
//! files, ...) in both versions: parsing never panics, whatever a file says.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| triage_agent::fuzzing::cgroup_files(data));
