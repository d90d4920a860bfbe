//! Ring buffer records from the kernel: decoding never panics, whatever the bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = triage_agent::probes::decode::decode(data);
});
