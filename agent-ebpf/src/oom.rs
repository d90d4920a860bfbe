//! OOM kills: the raw tracepoint `mark_victim` fires once per victim the OOM killer chooses,
//! before the kill signal is delivered. It runs in the context of the task that ran out of
//! memory (possibly another process, even another container), so nothing here uses
//! `bpf_get_current_*`: the victim's identity, cgroup, memory cgroup and rss are read from the
//! victim's own `task_struct`, the tracepoint's first argument, while it still exists.
//!
//! Kernel interfaces (offsets from BTF at load time; the loader attaches this only when the
//! tracefs format of oom:mark_victim shows the `(task, uid)` prototype, Linux >= 6.8):
//! - raw tracepoint mark_victim: arguments (struct task_struct *task, uid_t uid)
//! - task_struct.{pid, tgid, comm, real_parent, cgroups, signal, mm}
//! - css_set.dfl_cgrp -> cgroup.kn -> kernfs_node.id: the victim's cgroup2 id
//! - css_set.subsys[memory_cgrp_id] (the memcg's css is its first member) -> mem_cgroup.memory
//!   page_counter.{usage, max, parent}, mem_cgroup.oom_group
//! - signal_struct.oom_score_adj; mm_struct.rss_stat[MM_*] percpu_counter.count (the same
//!   approximate value the tracepoint itself prints)

use aya_ebpf::{
    helpers::bpf_ktime_get_boot_ns, macros::raw_tracepoint, programs::RawTracePointContext,
};
use triage_agent_common::{
    ABSENT, COMM_LEN, EventHeader, LOST_FIELD_READ, LOST_RESERVE, OOM_LIMIT_LEVELS, Offsets,
    OomEvent, UNKNOWN_U8, UNKNOWN_U64, kind,
};

use crate::{
    maps::{EVENTS, count_loss, offsets},
    read::kread,
};

#[raw_tracepoint(tracepoint = "mark_victim")]
pub fn mark_victim(ctx: RawTracePointContext) -> i32 {
    if try_mark_victim(&ctx).is_err() {
        count_loss(LOST_FIELD_READ);
    }
    0
}

/// The cgroup2 id of a task.
#[inline(always)]
fn cgroup2_id(o: &Offsets, task: u64) -> Result<u64, i32> {
    let cset: u64 = kread(task, o.oom.task_cgroups)?;
    let cgrp: u64 = kread(cset, o.oom.css_set_dfl_cgrp)?;
    let kn: u64 = kread(cgrp, o.sock.cgroup_kn)?;
    kread(kn, o.sock.kn_id)
}

/// The victim's memory cgroup page counter and `oom_group` flag.
#[inline(always)]
fn memcg(o: &Offsets, task: u64) -> Result<(u64, u8), i32> {
    let m = &o.oom;
    if m.memory_cgrp_id == ABSENT || m.css_set_subsys == ABSENT || m.memcg_memory == ABSENT {
        return Err(-1);
    }
    let cset: u64 = kread(task, m.task_cgroups)?;
    let slot = m
        .css_set_subsys
        .wrapping_add(m.memory_cgrp_id.wrapping_mul(8));
    let css: u64 = kread(cset, slot)?;
    if css == 0 {
        return Err(-1);
    }
    let group: u8 = kread(css, m.memcg_oom_group).unwrap_or(UNKNOWN_U8);
    Ok((css + m.memcg_memory as u64, group))
}

/// The tightest limit over the counter and its ancestors, in pages.
#[inline(always)]
fn tightest_limit(o: &Offsets, counter: u64) -> Result<u64, i32> {
    let mut limit = u64::MAX;
    let mut c = counter;
    for _ in 0..OOM_LIMIT_LEVELS {
        if c == 0 {
            break;
        }
        let max: u64 = kread(c, o.oom.page_counter_max)?;
        if max < limit {
            limit = max;
        }
        c = kread(c, o.oom.page_counter_parent)?;
    }
    Ok(limit)
}

/// The victim's resident pages: file + anon + shmem.
#[inline(always)]
fn rss_pages(o: &Offsets, task: u64) -> Result<u64, i32> {
    let m = &o.oom;
    if m.mm_rss_stat == ABSENT
        || m.percpu_counter_count == ABSENT
        || m.percpu_counter_size == ABSENT
    {
        return Err(-1);
    }
    let mm: u64 = kread(task, m.task_mm)?;
    let mut total = 0u64;
    for idx in [m.rss_file, m.rss_anon, m.rss_shmem] {
        if idx == ABSENT || idx > 8 {
            return Err(-1);
        }
        let at = m.mm_rss_stat + idx * m.percpu_counter_size + m.percpu_counter_count;
        let v: i64 = kread(mm, at)?;
        if v > 0 {
            total += v as u64;
        }
    }
    Ok(total)
}

fn try_mark_victim(ctx: &RawTracePointContext) -> Result<(), i32> {
    let o = offsets();
    if o.oom.task_pid == ABSENT {
        return Ok(());
    }
    let task: u64 = ctx.arg(0);
    let uid: u64 = ctx.arg(1);
    let pid: u32 = kread(task, o.oom.task_pid)?;
    let tgid: u32 = kread(task, o.oom.task_tgid)?;
    let comm: [u8; COMM_LEN] = kread(task, o.oom.task_comm).unwrap_or([0; COMM_LEN]);
    let cgroup_id = cgroup2_id(o, task).unwrap_or(0);
    let parent: u64 = kread(task, o.oom.task_real_parent).unwrap_or(0);
    let parent_cgroup_id = cgroup2_id(o, parent).unwrap_or(0);
    let signal: u64 = kread(task, o.oom.task_signal).unwrap_or(0);
    let oom_score_adj: i16 = kread(signal, o.oom.signal_oom_score_adj).unwrap_or(0);
    let (usage, limit, group) = match memcg(o, task) {
        Ok((counter, group)) => (
            kread::<u64>(counter, o.oom.page_counter_usage).unwrap_or(UNKNOWN_U64),
            tightest_limit(o, counter).unwrap_or(UNKNOWN_U64),
            group,
        ),
        Err(_) => (UNKNOWN_U64, UNKNOWN_U64, UNKNOWN_U8),
    };
    let rss = rss_pages(o, task).unwrap_or(UNKNOWN_U64);
    let Some(mut entry) = EVENTS.reserve::<OomEvent>(0) else {
        count_loss(LOST_RESERVE);
        return Ok(());
    };
    entry.write(OomEvent {
        header: EventHeader {
            kind: kind::OOM_VICTIM,
            len: size_of::<OomEvent>() as u32,
            // SAFETY: helper without preconditions.
            boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        },
        cgroup_id,
        parent_cgroup_id,
        memcg_usage_pages: usage,
        memcg_limit_pages: limit,
        rss_pages: rss,
        pid,
        tgid,
        uid: uid as u32,
        oom_score_adj,
        oom_group: group,
        _pad0: 0,
        comm,
    });
    entry.submit(0);
    Ok(())
}
