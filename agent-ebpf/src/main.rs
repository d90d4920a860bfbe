//! triage-agent's kernel programs: failed connections ([`conn`]), dropped packets ([`drop`]) and
//! DNS packets ([`dns`], copied to their own ring for userspace to parse), the first two
//! aggregated per flow in the kernel ([`flows`]). One shared ring buffer ([`maps::EVENTS`])
//! carries first occurrences to the node agent; repeats are counted in the flow tables; every
//! loss is counted in [`maps::LOSS`].
//!
//! Layouts of this kernel (tracepoint record offsets, struct member offsets) arrive in the
//! read-only global `OFFSETS`, filled by the loader from tracefs and BTF: nothing here
//! hard-codes an offset.
#![no_std]
#![no_main]
// BPF atomic add for the flow counters (see flows.rs).
#![expect(
    internal_features,
    reason = "core::intrinsics::atomic_xadd is the BPF atomic add"
)]
#![feature(core_intrinsics)]
// An empty asm block: the compiler barrier before a DNS slot's publishing store (dns/held.rs).
#![feature(asm_experimental_arch)]

mod conn;
mod dns;
mod drop;
mod flows;
mod generation;
mod maps;
mod oom;
mod read;
mod share;
mod skb;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this: it is never executed.
    loop {}
}
