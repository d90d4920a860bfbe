//! In-kernel aggregation of hot signals: the first occurrence of a flow goes through the ring
//! buffer at once (detection stays immediate), repeats only add to the flow's entry in the
//! current flow table, which the agent drains periodically. Userspace work scales with flows,
//! not packets.
//!
//! Exact counting: a program counts itself in flight in the generation it writes
//! ([`generation::enter`]); the agent flips [`GENERATION`] and drains the old generation's table
//! only once no program is in flight there, so no increment lands in a table being read, however
//! long a program is preempted. A full table is counted (`LOST_FLOW_TABLE`) and the occurrence
//! still goes through the ring buffer.
//!
//! A flood repeats one flow on one CPU, so each CPU keeps, per generation and recording
//! program ([`site`]), the flow it counted last ([`FLOW_REPEATS`]): a repeat of it is a plain increment there, without
//! the table's hash lookup and atomic add. Another flow from the same program moves the count to the
//! flow's table entry (which exists: a flow enters the slot only after the table), and the
//! agent adds what is left in the slots of a generation when it drains that generation's table,
//! then clears them. Programs of the next generation use the other slots, so nothing is counted
//! into a slot being read. A slot belongs to one program, which the kernel never runs nested
//! on one CPU (a tracepoint program that would interrupt itself is skipped, and counted in its
//! `recursion_misses`), so the plain increments cannot interleave; two programs recording the
//! same kind (a refusal by RST or by ICMP) could, from process context and a softirq.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA},
    helpers::{bpf_jiffies64, bpf_ktime_get_boot_ns},
    maps::HashMap,
};
use triage_agent_common::{
    EVENTS_RING_BYTES, EventHeader, FLOW_REPEAT_SLOTS, FlowEvent, FlowKey, FlowRepeat, FlowStats,
    LOST_FLOW_TABLE, LOST_RESERVE, cgroup_loss, share_class,
};

use crate::{
    generation,
    maps::{CLOCK_CACHE, EEXIST, EVENTS, FLOW_REPEATS, FLOWS0, FLOWS1, GENERATION, count_loss},
    share,
};

/// The programs that record flows, each with its own per-CPU repeat slot.
pub mod site {
    pub const DROP: u32 = 0;
    pub const RESET_RECEIVED: u32 = 1;
    pub const RESET_SENT: u32 = 2;
    pub const STATE_CHANGE: u32 = 3;
}

#[inline(always)]
fn table_of(generation: u32) -> &'static HashMap<FlowKey, FlowStats> {
    if generation == 1 { &FLOWS1 } else { &FLOWS0 }
}

/// Boot time of a repeat, to a jiffy: the precise clock is read once per jiffy per CPU and
/// reused within it. It costs about 40 ns per call on a virtual machine's TSC, a fifth of the
/// drop program's run, and a repeat's time needs no finer resolution (a flow's first
/// occurrence keeps the precise time). Tracing programs may not use the kernel's coarse clock
/// helper, hence the cache.
#[inline(always)]
fn repeat_boot_ns() -> u64 {
    // SAFETY: helpers without preconditions.
    let jiffies = unsafe { bpf_jiffies64() };
    match CLOCK_CACHE.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of the map, valid while the program runs; the program
        // cannot migrate to another CPU meanwhile.
        Some(c) => unsafe {
            if (*c).jiffies != jiffies || (*c).boot_ns == 0 {
                (*c).boot_ns = bpf_ktime_get_boot_ns();
                (*c).jiffies = jiffies;
            }
            (*c).boot_ns
        },
        // SAFETY: helper without preconditions.
        None => unsafe { bpf_ktime_get_boot_ns() },
    }
}

/// Adds to the flow's count; `extra` to its kind-specific sum. `now` only ever moves the
/// latest time forward (a repeat's time can be up to a jiffy behind a precise one).
#[inline(always)]
fn bump(stats: *mut FlowStats, now: u64, sport: u16, extra: u32) {
    // SAFETY: `stats` points into a map value that stays valid while this program runs; the
    // count is shared between CPUs, hence the atomic add; the other fields are best effort.
    unsafe {
        // BPF's atomic add (the target has no compare-and-swap, so no AtomicU64::fetch_add).
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
            core::ptr::addr_of_mut!((*stats).count),
            1,
        );
        if now > (*stats).last_ns {
            (*stats).last_ns = now;
        }
        (*stats).last_sport = sport;
        (*stats).extra = (*stats).extra.wrapping_add(extra);
    }
}

/// Records one occurrence of `key`, from program `site`. `stats` carries what the first
/// occurrence knows (process, source port, kind-specific sum); times are filled in here.
#[inline(always)]
pub fn record(site: u32, key: &FlowKey, stats: FlowStats) {
    let Some(generation) = generation::enter(&GENERATION, LOST_FLOW_TABLE) else {
        return;
    };
    record_in(generation, site, key, stats);
    generation::leave(&GENERATION, generation);
}

#[inline(always)]
fn record_in(generation: u32, site: u32, key: &FlowKey, stats: FlowStats) {
    let table = table_of(generation);
    let slot = generation * FLOW_REPEAT_SLOTS + site % FLOW_REPEAT_SLOTS;
    let Some(repeat) = FLOW_REPEATS.get_ptr_mut(slot) else {
        enter(table, key, stats);
        return;
    };
    // SAFETY: this CPU's slot, valid while the program runs; the program cannot migrate to
    // another CPU meanwhile, and nothing else writes it while its generation is current.
    unsafe {
        if (*repeat).valid != 0 && (*repeat).key == *key {
            (*repeat).count += 1;
            (*repeat).last_ns = repeat_boot_ns();
            (*repeat).last_sport = stats.last_sport;
            (*repeat).extra = (*repeat).extra.wrapping_add(stats.extra);
            return;
        }
        if (*repeat).valid != 0 && (*repeat).count != 0 {
            match table.get_ptr_mut((*repeat).key) {
                Some(entry) => add_repeats(entry, &*repeat),
                // Cannot happen (a flow enters the slot after the table, and the table of this
                // generation is drained only after the slot stops being written), but never
                // silently: counted as a flow the table could not take.
                None => count_loss(LOST_FLOW_TABLE),
            }
        }
        (*repeat).valid = 0;
        if enter(table, key, stats) {
            (*repeat).key = *key;
            (*repeat).count = 0;
            (*repeat).last_ns = 0;
            (*repeat).extra = 0;
            (*repeat).valid = 1;
        }
    }
}

/// Moves a slot's repeats to the flow's table entry.
#[inline(always)]
fn add_repeats(stats: *mut FlowStats, repeat: &FlowRepeat) {
    // SAFETY: as in [`bump`].
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
            core::ptr::addr_of_mut!((*stats).count),
            repeat.count,
        );
        if repeat.last_ns > (*stats).last_ns {
            (*stats).last_ns = repeat.last_ns;
        }
        (*stats).last_sport = repeat.last_sport;
        (*stats).extra = (*stats).extra.wrapping_add(repeat.extra);
    }
}

/// Counts one occurrence in the table; `true` when the flow has an entry there afterwards.
#[inline(always)]
fn enter(table: &'static HashMap<FlowKey, FlowStats>, key: &FlowKey, mut stats: FlowStats) -> bool {
    if let Some(existing) = table.get_ptr_mut(key) {
        bump(existing, repeat_boot_ns(), stats.last_sport, stats.extra);
        return true;
    }
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    stats.count = 0;
    stats.first_ns = now;
    stats.last_ns = now;
    // Past its share of the table a cgroup's new flows go through the ring one by one, as if
    // the table were full: one pod's many flows cannot keep everyone else's out.
    let inserted = if share::within_generation(share::owner(key), generation::epoch(&GENERATION)) {
        table.insert(key, stats, BPF_NOEXIST as u64)
    } else {
        Err(0)
    };
    match inserted {
        Ok(()) => {
            if !emit(key, &stats, now) {
                // Not lost: the drain reports it with the repeats.
                if let Some(entry) = table.get_ptr_mut(key) {
                    bump(entry, now, stats.last_sport, 0);
                }
            }
            true
        }
        // Another CPU entered the same flow first.
        Err(e) if e == -EEXIST => match table.get_ptr_mut(key) {
            Some(existing) => {
                bump(existing, now, stats.last_sport, stats.extra);
                true
            }
            None => false,
        },
        Err(_) => {
            count_loss(LOST_FLOW_TABLE);
            if !emit(key, &stats, now) {
                count_loss(LOST_RESERVE);
                share::lose(key.cgroup_id, cgroup_loss::OCCURRENCES);
            }
            false
        }
    }
}

/// Sends a first occurrence through the ring buffer; `false` when it is full, or when it is
/// half full and the flow's cgroup has used its share of it in this window.
#[inline(always)]
fn emit(key: &FlowKey, stats: &FlowStats, now: u64) -> bool {
    // Shares apply once the ring is half full (the reader is behind).
    if EVENTS.query(BPF_RB_AVAIL_DATA.into()) >= EVENTS_RING_BYTES as u64 / 2 {
        let (id, tag) = share::owner(key);
        if !share::within(id, share_class::EVENTS | tag, now) {
            return false;
        }
    }
    match EVENTS.reserve::<FlowEvent>(0) {
        Some(mut entry) => {
            let mut first = *stats;
            first.count = 1;
            entry.write(FlowEvent {
                header: EventHeader {
                    kind: key.kind,
                    len: size_of::<FlowEvent>() as u32,
                    boot_ns: now,
                },
                key: *key,
                stats: first,
            });
            entry.submit(0);
            true
        }
        None => false,
    }
}
