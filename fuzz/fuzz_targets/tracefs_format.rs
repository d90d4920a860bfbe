//! tracefs `format` files: parsing never panics.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let f = triage_agent::kernel::tracefs::Format::parse(text);
        let _ = f.offset("t", "saddr", Some(28));
    }
});
