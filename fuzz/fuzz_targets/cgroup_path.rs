//! Cgroup paths (any process can create cgroups below its own): parsing never panics, and a pod
//! identity is only ever taken from text that is in the path.
#![no_main]
use triage_agent::cgroup::path::{container_id_of, parse_cgroup_path, strip_runtime_scheme};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(id) = parse_cgroup_path(path) {
        assert!(!id.pod_uid.is_empty());
        // Container ids are normalised to lower case.
        if let Some(c) = &id.container_id {
            assert!(
                path.to_ascii_lowercase().contains(&c.to_ascii_lowercase()),
                "container id {c} not in {path}"
            );
        }
    }
    for segment in path.split('/') {
        let _ = container_id_of(segment);
    }
    let _ = strip_runtime_scheme(path);
});
