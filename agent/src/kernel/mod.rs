//! Readers of what the running kernel says about itself: BTF (struct member offsets, enum
//! values), tracefs `format` files (tracepoint record layouts) and its clocks. Nothing here
//! needs the eBPF toolchain; mounting tracefs and the clocks need the node agent's libc.

pub mod btf;
#[cfg(feature = "node-agent")]
pub mod clock;
pub mod kallsyms;
pub mod mountinfo;
pub mod tracefs;

/// A duration in nanoseconds, as the kernel's clocks count (saturating).
pub fn ns(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
