//! /proc/self/mountinfo lines: parsing never panics and every mount it yields is made of the
//! input's own text.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for m in triage_agent::kernel::mountinfo::mounts(text) {
        assert!(text.contains(m.point) && text.contains(m.fstype));
        let _ = m.has_option("memory");
        let _ = m.has_option("");
    }
});
