//! What the kernel remembers of a connect() in flight, between the call and the answer to its
//! SYN (the values of the connects table).

use core::mem::size_of;

use crate::kernel::COMM_LEN;

/// What the kernel side remembers between connect() and the answer to the SYN.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingConnect {
    pub cgroup_id: u64,
    pub pid: u32,
    pub tgid: u32,
    pub comm: [u8; COMM_LEN],
    /// SYN retransmissions so far.
    pub syn_retransmits: u32,
    /// An error was reported on the socket while it waited (0: none; [`ERROR_UNKNOWN`]: one
    /// whose errno the woken application had already taken; else the errno).
    pub error: u32,
}

/// [`PendingConnect::error`]: an error was reported but its errno was already consumed.
pub const ERROR_UNKNOWN: u32 = u32::MAX;
const _: () = assert!(size_of::<PendingConnect>() == 40);
