//! triage-agent's kernel programs. One shared ring buffer ([`maps::EVENTS`]) carries every event
//! to the node agent; every event that could not be reserved is counted in [`maps::LOSS`].
//!
//! Layouts of this kernel (tracepoint record offsets, struct member offsets) arrive in the
//! read-only global `OFFSETS`, filled by the loader from tracefs and BTF: nothing here
//! hard-codes an offset.
#![no_std]
#![no_main]

mod conn;
mod maps;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this: it is never executed.
    loop {}
}
