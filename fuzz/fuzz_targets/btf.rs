//! Kernel BTF blobs: parsing and lookups never panic or hang.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(btf) = triage_agent::kernel::btf::Btf::from_bytes(data.to_vec()) {
        let _ = btf.member_offset("sk_buff", "data");
        let _ = btf.member_offset("a", "b.c.d");
        let _ = btf.enum_values("sk_rst_reason");
    }
});
