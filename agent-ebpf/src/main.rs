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

/// The programs' licence, read by the loader from the object's `license` section and given to
/// the kernel with each program: GPL-compatible, as the GPL-only helpers they call
/// (`bpf_probe_read_kernel`, ...) require; dual MIT/GPL, as aya's templates declare it (without
/// it aya would say "GPL", which the crate's metadata does not).
#[cfg(not(test))]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this: it is never executed.
    loop {}
}
