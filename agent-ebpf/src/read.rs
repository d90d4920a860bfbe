//! Reads of kernel memory at offsets the loader found for this kernel (tracefs `format` files,
//! BTF): a member of a kernel struct. An offset the kernel does not have ([`ABSENT`]) is an
//! error, never a read.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use triage_agent_common::ABSENT;

/// Reads `T` at `base + offset` in kernel memory.
#[inline(always)]
pub fn kread<T>(base: u64, offset: u32) -> Result<T, i32> {
    if offset == ABSENT || base == 0 {
        return Err(-1);
    }
    // SAFETY: probe read of kernel memory; a bad address yields an error, never a fault.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }
}
