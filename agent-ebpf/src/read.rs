//! Reads of kernel memory at offsets the loader found for this kernel (tracefs `format` files,
//! BTF): a tracepoint record's field, or a member of a kernel struct. An offset the kernel does
//! not have ([`ABSENT`]) is an error, never a read.

use aya_ebpf::{helpers::bpf_probe_read_kernel, programs::TracePointContext};
use triage_agent_common::ABSENT;

/// Reads a field of the tracepoint record at a load-time offset.
#[inline(always)]
pub fn field<T>(ctx: &TracePointContext, offset: u32) -> Result<T, i32> {
    if offset == ABSENT {
        return Err(-1);
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a bad offset yields an error.
    unsafe { ctx.read_at::<T>(offset as usize) }
}

/// Reads `T` at `base + offset` in kernel memory.
#[inline(always)]
pub fn kread<T>(base: u64, offset: u32) -> Result<T, i32> {
    if offset == ABSENT || base == 0 {
        return Err(-1);
    }
    // SAFETY: probe read of kernel memory; a bad address yields an error, never a fault.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }
}
