//! OOM kills: the victim the OOM killer chose, as read from its own task in the kernel.

use core::mem::size_of;

use crate::{event::EventHeader, kernel::COMM_LEN};

/// [`OomEvent`] fields the kernel could not read.
pub const UNKNOWN_U64: u64 = u64::MAX;
/// [`OomEvent::oom_group`] when unknown.
pub const UNKNOWN_U8: u8 = u8::MAX;

/// A process the OOM killer chose (raw tracepoint `mark_victim`), read from the victim's own
/// task in the kernel: the victim exits right after, and the program runs in the context of the
/// task that ran out of memory, which may be another process (or another container).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OomEvent {
    pub header: EventHeader,
    /// cgroup v2 id of the victim (`task->cgroups->dfl_cgrp`), 0 when unreadable.
    pub cgroup_id: u64,
    /// cgroup v2 id of the victim's parent process: a parent outside the victim's cgroup makes
    /// the victim the container's first process. 0 when unreadable.
    pub parent_cgroup_id: u64,
    /// Pages charged to the victim's memory cgroup, [`UNKNOWN_U64`] when unreadable.
    pub memcg_usage_pages: u64,
    /// The tightest page limit of the victim's memory cgroup and its ancestors (at most
    /// [`OOM_LIMIT_LEVELS`] levels), [`UNKNOWN_U64`] when unreadable.
    pub memcg_limit_pages: u64,
    /// The victim's resident pages (file + anon + shmem), [`UNKNOWN_U64`] when unreadable.
    pub rss_pages: u64,
    /// Thread id and process id of the victim.
    pub pid: u32,
    pub tgid: u32,
    /// The tracepoint's uid argument (the victim's uid).
    pub uid: u32,
    pub oom_score_adj: i16,
    /// `mem_cgroup.oom_group` (v2 `memory.oom.group`): 0/1, [`UNKNOWN_U8`] when unreadable.
    pub oom_group: u8,
    pub _pad0: u8,
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(size_of::<OomEvent>() == 88);

/// Memory cgroup levels walked up for the limit that applies (container, pod, QoS, kubepods).
pub const OOM_LIMIT_LEVELS: usize = 5;
