//! Cgroup paths (any process can create cgroups below its own): parsing never panics, and a pod
//! identity is only ever taken from text that is in the path.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| triage_agent::fuzzing::cgroup_path(data));
