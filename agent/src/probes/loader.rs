//! Loads the embedded eBPF object with this kernel's layouts and attaches each program of
//! [`super::PROGRAMS`]. A program that fails to attach is reported (Status shows which and why)
//! and the others keep running: partial evidence beats none. Dropping [`Probes`] detaches
//! everything.

use std::{collections::HashMap, fs::File, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues, RingBuf},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, RawTracePoint},
};
use tracing::{info, warn};
use triage_agent_common::{
    CGROUP_LOSSES_MAPS, CgroupLosses, DNS_ANSWERED_MAPS, DNS_ANSWERED_SLOTS_MAPS,
    DNS_GENERATION_MAP, DNS_HELD_MAP, DNS_PORTS_GLOBAL, DNS_PORTS_MAX, DNS_REPEATABLE_MAP,
    DNS_REPEATS_MAPS, DNS_RING_MAP, DNS_STORES_ORDERED_GLOBAL, DNS_TIMING_GLOBAL,
    DROP_REASONS_ENTRIES, DROP_REASONS_MAP, DnsPorts, DnsTiming, EVENTS_MAP, FLOW_REPEAT_SLOTS,
    FLOW_REPEATS_MAP, FLOWS_MAPS, FlowKey, FlowRepeat, FlowStats, GENERATION_MAP, LOSS_MAP,
    LOSS_SLOTS, LOST_CONNECT_TABLE, LOST_DNS_ANSWERED, LOST_DNS_REPEATS, LOST_DNS_RESERVE,
    LOST_FIELD_READ, LOST_FLOW_TABLE, LOST_RESERVE, NETNS_CGROUPS_MAP, OFFSETS_GLOBAL,
    STORES_ORDERED,
};

use super::{
    Degraded, Hook, PROGRAMS, ProbeStatus,
    offsets::{drop_reason_values, kernel_offsets},
    reasons::DropReasons,
};
use crate::{
    evidence::Kind,
    kernel::btf::Btf,
    loss::Loss,
    probes::{
        dns_held::HeldTable,
        dns_maps::{AnsweredSlots, DnsMaps},
    },
};

/// The eBPF object built by build.rs from agent-ebpf.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/triage-agent-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("loading the eBPF object")]
    Load(#[source] aya::EbpfError),
    #[error("eBPF map {name} missing or unusable")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("no program could be attached: {0}")]
    NothingAttached(String),
    #[error("the kernel's table of held DNS queries")]
    DnsHeld(#[source] super::dns_held::HeldError),
    #[error("the kernel's arrays of DNS lookups answered well")]
    DnsAnsweredSlots(#[source] super::dns_held::HeldError),
}

/// The loaded programs. Keep alive while collecting; drop to detach.
pub struct Probes {
    _ebpf: Ebpf,
    pub statuses: Vec<ProbeStatus>,
}

/// The kernel side's per-CPU loss counters, owned by the reader, which adds their growth to
/// the agent's counters; with them, the runs the kernel skipped of the agent's programs.
pub struct LossMap {
    map: PerCpuArray<MapData, u64>,
    /// `/proc/self/fdinfo/N` of each loaded program: its `recursion_misses`.
    programs: Vec<std::path::PathBuf>,
}

/// Why the kernel's loss counters could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LossReadError {
    #[error("loss map: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("{path}: {source}")]
    Fdinfo {
        path: String,
        source: std::io::Error,
    },
}

/// Kernel loss slots and the names they are reported under.
const KERNEL_LOSSES: [(u32, Loss); LOSS_SLOTS as usize] = [
    (LOST_RESERVE, Loss::RingBufferFull),
    (LOST_CONNECT_TABLE, Loss::ConnectTableFull),
    (LOST_FIELD_READ, Loss::KernelReadErrors),
    (LOST_FLOW_TABLE, Loss::FlowTableFull),
    (LOST_DNS_RESERVE, Loss::DnsRingFull),
    (LOST_DNS_ANSWERED, Loss::DnsAnsweredFull),
    (LOST_DNS_REPEATS, Loss::DnsRepeatsLost),
];

/// The two flow tables and the generation switch (see agent-ebpf/src/flows.rs), owned by the
/// reader, which drains them.
pub struct FlowTables {
    tables: [BpfHashMap<MapData, FlowKey, FlowStats>; 2],
    /// Per CPU, generation and recording program: repeats of the flow counted last, not yet in
    /// the table (see agent-ebpf/src/flows.rs).
    repeats: PerCpuArray<MapData, FlowRepeat>,
    /// What each cgroup lost, switched with the tables (see agent-ebpf/src/share.rs).
    losses: [BpfHashMap<MapData, u64, CgroupLosses>; 2],
    /// Which cgroups each network namespace holds, for drops that name where they came from.
    pub netns: super::netns::NetnsIndex,
    generation: Array<MapData, u32>,
    /// The generation word: counts every switch (programs use its lowest bit as the table's
    /// index, and the whole word to tell one generation's shares from the next's).
    epoch: u32,
}

impl FlowTables {
    /// Makes programs count into the other table; returns the index of the one they left,
    /// which can be drained once programs still running on it are done.
    pub fn flip(&mut self) -> Result<usize, aya::maps::MapError> {
        let next = self.epoch.wrapping_add(1);
        self.generation.set(0, next, 0)?;
        let old = self.epoch & 1;
        self.epoch = next;
        Ok(old as usize)
    }

    /// How many programs are writing generation `index` (see agent-ebpf/src/flows.rs).
    pub fn in_flight(&self, index: usize) -> Result<u32, aya::maps::MapError> {
        self.generation.get(&(1 + index as u32), 0)
    }

    /// Reads and empties what each cgroup lost in generation `index`, once no program writes
    /// it (as for [`FlowTables::drain`]).
    pub fn drain_losses(&mut self, index: usize) -> Vec<(u64, CgroupLosses)> {
        match self.losses.get_mut(index) {
            Some(table) => super::ring::take_all(table),
            None => Vec::new(),
        }
    }

    /// Reads and empties a table no program counts into any more, with the repeats its
    /// generation's per-CPU slots hold.
    pub fn drain(&mut self, index: usize) -> Vec<(FlowKey, FlowStats)> {
        let Some(table) = self.tables.get_mut(index) else {
            return Vec::new();
        };
        let mut out = super::ring::take_all(table);
        let first = index as u32 * FLOW_REPEAT_SLOTS;
        for slot in first..first + FLOW_REPEAT_SLOTS {
            let values = match self.repeats.get(&slot, 0) {
                Ok(values) => values,
                Err(error) => {
                    warn!(%error, slot, "reading repeat counts failed");
                    continue;
                }
            };
            let pending: Vec<FlowRepeat> = values
                .iter()
                .filter(|r| r.valid != 0 && r.count != 0)
                .copied()
                .collect();
            merge_repeats(&mut out, &pending);
            let cleared = vec![FlowRepeat::default(); values.len()];
            if let Err(error) = PerCpuValues::try_from(cleared)
                .map_err(aya::maps::MapError::from)
                .and_then(|v| self.repeats.set(slot, v, 0))
            {
                warn!(%error, slot, "clearing repeat counts failed");
            }
        }
        out
    }
}

/// Adds per-CPU repeat counts to the drained entries of their flows (an entry for a flow the
/// table no longer has, which the programs never leave, would be added whole).
fn merge_repeats(drained: &mut Vec<(FlowKey, FlowStats)>, repeats: &[FlowRepeat]) {
    for r in repeats {
        match drained.iter_mut().find(|(key, _)| *key == r.key) {
            Some((_, stats)) => {
                stats.count += r.count;
                if r.last_ns > stats.last_ns {
                    stats.last_ns = r.last_ns;
                    stats.last_sport = r.last_sport;
                }
                stats.extra = stats.extra.wrapping_add(r.extra);
            }
            None => drained.push((
                r.key,
                FlowStats {
                    count: r.count,
                    first_ns: r.last_ns,
                    last_ns: r.last_ns,
                    extra: r.extra,
                    last_sport: r.last_sport,
                    ..FlowStats::default()
                },
            )),
        }
    }
}

impl LossMap {
    /// How many totals [`LossMap::read`] returns: every kernel slot, and skipped runs.
    pub const TOTALS: usize = KERNEL_LOSSES.len() + 1;

    /// Current totals, summed over CPUs, and the programs' skipped runs. A slot or program that
    /// cannot be read is an error (never a zero that would claim nothing was lost).
    pub fn read(&self) -> Result<Vec<(Loss, u64)>, LossReadError> {
        let mut totals = KERNEL_LOSSES
            .iter()
            .map(|(slot, loss)| Ok((*loss, self.map.get(slot, 0)?.iter().sum::<u64>())))
            .collect::<Result<Vec<_>, aya::maps::MapError>>()?;
        let mut skipped = 0u64;
        for path in &self.programs {
            let text = std::fs::read_to_string(path).map_err(|source| LossReadError::Fdinfo {
                path: path.display().to_string(),
                source,
            })?;
            skipped += fdinfo_field(&text, "recursion_misses").unwrap_or(0);
        }
        totals.push((Loss::KernelRunsSkipped, skipped));
        Ok(totals)
    }
}

/// A numeric field of an fdinfo text ("recursion_misses:\t3").
fn fdinfo_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim().parse().ok())?
    })
}

/// Run time and run count of the given programs (name, kernel id), read from this process's
/// own descriptors of them (`/proc/self/fdinfo`: `run_time_ns`, `run_cnt`). Listing the
/// kernel's programs would need CAP_SYS_ADMIN, which the DaemonSet does not grant; the
/// fdinfo of a descriptor the agent holds needs nothing. Both count only while
/// `kernel.bpf_stats_enabled` is 1. A program whose descriptor is not found is left out.
pub fn program_run_stats(ids: &[(String, u32)]) -> Vec<(String, std::time::Duration, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fdinfo") else {
        return Vec::new();
    };
    let mut out: Vec<(String, std::time::Duration, u64)> = Vec::new();
    for entry in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        // Programs only: a link's fdinfo names its program too, but has no run counts.
        let (Some(id), Some(ns), Some(runs)) = (
            fdinfo_field(&text, "prog_id"),
            fdinfo_field(&text, "run_time_ns"),
            fdinfo_field(&text, "run_cnt"),
        ) else {
            continue;
        };
        for (name, _) in ids.iter().filter(|(_, i)| u64::from(*i) == id) {
            if !out.iter().any(|(n, _, _)| n == name) {
                out.push((name.clone(), std::time::Duration::from_nanos(ns), runs));
            }
        }
    }
    out.sort();
    out
}

/// The fdinfo files of this process's descriptors of the given programs.
fn program_fdinfos(ids: &[u32]) -> Vec<std::path::PathBuf> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fdinfo") else {
        return Vec::new();
    };
    dir.flatten()
        .map(|e| e.path())
        .filter(|path| {
            // Programs only: a link's fdinfo names its program too, but has no run counts.
            std::fs::read_to_string(path).is_ok_and(|text| {
                fdinfo_field(&text, "recursion_misses").is_some()
                    && fdinfo_field(&text, "prog_id")
                        .is_some_and(|id| ids.iter().any(|i| u64::from(*i) == id))
            })
        })
        .collect()
}

/// The loaded programs, the ring buffer, the flow tables and the kernel loss counters.
pub struct Loaded {
    pub probes: Probes,
    pub ring: RingBuf<MapData>,
    /// DNS packets (see agent-ebpf/src/dns/).
    pub dns_ring: RingBuf<MapData>,
    /// The kernel's DNS matching tables.
    pub dns_maps: DnsMaps,
    pub flows: FlowTables,
    pub loss: LossMap,
    /// Names of the drop reasons reported, by value.
    pub drop_reasons: HashMap<u32, String>,
    /// Kernel ids of the loaded programs, by name (for their run-time statistics).
    pub program_ids: Vec<(String, u32)>,
}

/// What to load beyond the kernel's own layouts.
#[derive(Clone, Debug)]
pub struct LoadOptions<'a> {
    pub tracefs: &'a Path,
    pub btf: Option<&'a Btf>,
    /// Which drops to report.
    pub drop_reasons: &'a DropReasons,
    /// The cgroup the cgroup_skb (DNS) programs attach to: the pods' cgroup
    /// ([`crate::cgroup::layout::pods_cgroup`]), so node daemons' packets run no program, or
    /// the cgroup2 mount's root when no pod cgroup is found (every socket of the node).
    pub skb_cgroup: &'a Path,
    /// Ports whose traffic is DNS (at most [`DNS_PORTS_MAX`]; empty: no DNS capture).
    pub dns_ports: &'a [u16],
    /// DNS thresholds the kernel applies when it matches answers itself.
    pub dns_timing: DnsTiming,
}

/// Raises RLIMIT_MEMLOCK as far as this process may (unlimited with CAP_SYS_RESOURCE, else
/// to the hard limit): kernels before 5.11 charge every map against it, and the agent's maps
/// take a few MiB. Later kernels charge the memory cgroup instead and ignore it. Returns the
/// limit left when it is not unlimited.
pub fn raise_memlock() -> std::io::Result<Option<u64>> {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit struct for the duration of the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0 {
        return Ok(None);
    }
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid, writable rlimit struct for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut current) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    current.rlim_cur = current.rlim_max;
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &current) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((current.rlim_cur != libc::RLIM_INFINITY).then_some(current.rlim_cur))
}

/// Loads and attaches the programs.
pub fn load(options: &LoadOptions<'_>) -> Result<Loaded, LoadError> {
    let LoadOptions {
        tracefs,
        btf,
        drop_reasons,
        skb_cgroup,
        dns_ports,
        dns_timing,
    } = options.clone();
    let started = std::time::Instant::now();
    match raise_memlock() {
        Ok(None) => {}
        Ok(Some(limit)) => info!(
            limit,
            "RLIMIT_MEMLOCK stays limited (only kernels before 5.11 charge maps to it)"
        ),
        Err(error) => {
            warn!(%error, "RLIMIT_MEMLOCK could not be raised (only kernels before 5.11 charge maps to it)")
        }
    }
    let (offsets, mut problems) = kernel_offsets(tracefs, btf);
    let mut ports = DnsPorts::NONE;
    for (slot, port) in ports
        .ports
        .iter_mut()
        .zip(dns_ports.iter().take(DNS_PORTS_MAX))
    {
        *slot = *port;
    }
    let mut switched_off = Vec::new();
    if dns_ports.is_empty() {
        for program in PROGRAMS
            .iter()
            .filter(|p| p.serves.iter().any(|(k, _)| *k == Kind::Dns))
        {
            switched_off.push(program.name);
            problems.insert(
                program.name,
                "DNS capture switched off (no --dns-port)".to_owned(),
            );
        }
    }
    let mut ebpf = EbpfLoader::new()
        .override_global(OFFSETS_GLOBAL, &offsets, true)
        .override_global(DNS_PORTS_GLOBAL, &ports, true)
        .override_global(DNS_TIMING_GLOBAL, &dns_timing, true)
        .override_global(DNS_STORES_ORDERED_GLOBAL, &u32::from(STORES_ORDERED), true)
        .load(EBPF_OBJECT)
        .map_err(LoadError::Load)?;
    let loaded = started.elapsed();

    // Which drops to report, before the drop program attaches.
    let (chosen, missing) = drop_reasons.resolve(&btf.map(drop_reason_values).unwrap_or_default());
    let mut reasons_map: Array<MapData, u8> =
        take_map(&mut ebpf, DROP_REASONS_MAP, Array::try_from)?;
    for (name, value) in &chosen {
        if *value >= DROP_REASONS_ENTRIES || reasons_map.set(*value, 1, 0).is_err() {
            warn!(reason = %name, value, "drop reason cannot be selected");
        }
    }
    let drops_have_reasons = offsets.kfree_skb.reason != triage_agent_common::ABSENT;
    if drops_have_reasons && chosen.is_empty() && !problems.contains_key("kfree_skb") {
        problems.insert("kfree_skb", "no drop reason selected".to_owned());
    }
    let mut notes: HashMap<&str, String> = HashMap::new();
    if !missing.is_empty() {
        notes.insert(
            "kfree_skb",
            format!(
                "drop reasons this kernel does not have: {}",
                missing.join(", ")
            ),
        );
    }

    let events = available_events(tracefs);
    // Programs with a fallback (the DNS pair) run in the same form or not at all: one matching
    // answers in the kernel while the other sends every packet up would split a lookup between
    // the kernel and the agent. They are loaded first; if the kernel rejects either, both run
    // their fallbacks. Only a rejection at load falls back: an attach failure is an error.
    let grouped: Vec<&str> = PROGRAMS
        .iter()
        .filter(|p| p.fallback.is_some() && !problems.contains_key(p.name))
        .map(|p| p.name)
        .collect();
    let group_rejected = load_group(&mut ebpf, &grouped);
    if let Some(rejected) = &group_rejected {
        warn!(programs = ?grouped, error = %rejected, "rejected by the kernel; loading their fallbacks");
    }
    let mut statuses = Vec::new();
    for program in PROGRAMS {
        let hook = match program.hook {
            Hook::CgroupSkb { .. } => format!("{} on {}", program.hook, skb_cgroup.display()),
            Hook::RawTracePoint { .. } => program.hook.to_string(),
        };
        let mut degraded = None;
        let result = match problems.get(program.name) {
            Some(p) => Err(p.clone()),
            None => match missing_hook(events.as_deref(), program.hook) {
                Some(missing) => Err(missing),
                None => match (program.fallback, &group_rejected) {
                    (Some(fallback), Some(rejected)) => {
                        attach(&mut ebpf, fallback.name, program.hook, skb_cgroup).map(|()| {
                            degraded = Some(Degraded {
                                program: fallback.name.to_owned(),
                                rejected: rejected.clone(),
                                loses: fallback.loses.to_owned(),
                            });
                        })
                    }
                    _ => match attach(&mut ebpf, program.name, program.hook, skb_cgroup) {
                        Ok(()) if program.name == "kfree_skb" && !drops_have_reasons => {
                            degraded = Some(Degraded {
                                program: program.name.to_owned(),
                                rejected: super::offsets::NO_DROP_REASON.to_owned(),
                                loses: super::offsets::DROPS_WITHOUT_REASON.to_owned(),
                            });
                            Ok(())
                        }
                        other => other,
                    },
                },
            },
        };
        match &result {
            Ok(()) => info!(program = program.name, %hook, "attached"),
            Err(error) => warn!(program = program.name, %hook, %error, "not attached"),
        }
        let attached = result.is_ok();
        statuses.push(ProbeStatus {
            name: program.name.to_owned(),
            hook,
            attached,
            error: result.err().or_else(|| notes.remove(program.name)),
            degraded,
            switched_off: !attached && switched_off.contains(&program.name),
        });
    }
    if !statuses.iter().any(|s| s.attached) {
        let why: Vec<String> = statuses.iter().filter_map(|s| s.error.clone()).collect();
        return Err(LoadError::NothingAttached(why.join("; ")));
    }
    // The program that runs on each hook, under the hook's program name.
    let program_ids: Vec<(String, u32)> = statuses
        .iter()
        .filter(|s| s.attached)
        .filter_map(|s| {
            let running = s.degraded.as_ref().map_or(s.name.as_str(), |d| &d.program);
            let info = ebpf.program(running)?.info().ok()?;
            Some((s.name.clone(), info.id()))
        })
        .collect();
    let ring = take_map(&mut ebpf, EVENTS_MAP, RingBuf::try_from)?;
    let dns_ring = take_map(&mut ebpf, DNS_RING_MAP, RingBuf::try_from)?;
    let dns_maps = DnsMaps {
        held: HeldTable::new(take_map(&mut ebpf, DNS_HELD_MAP, Ok)?).map_err(LoadError::DnsHeld)?,
        answered_slots: [
            AnsweredSlots::new(
                DNS_ANSWERED_SLOTS_MAPS[0],
                take_map(&mut ebpf, DNS_ANSWERED_SLOTS_MAPS[0], Ok)?,
            )
            .map_err(LoadError::DnsAnsweredSlots)?,
            AnsweredSlots::new(
                DNS_ANSWERED_SLOTS_MAPS[1],
                take_map(&mut ebpf, DNS_ANSWERED_SLOTS_MAPS[1], Ok)?,
            )
            .map_err(LoadError::DnsAnsweredSlots)?,
        ],
        answered: [
            take_map(&mut ebpf, DNS_ANSWERED_MAPS[0], BpfHashMap::try_from)?,
            take_map(&mut ebpf, DNS_ANSWERED_MAPS[1], BpfHashMap::try_from)?,
        ],
        repeatable: take_map(&mut ebpf, DNS_REPEATABLE_MAP, BpfHashMap::try_from)?,
        repeats: [
            take_map(&mut ebpf, DNS_REPEATS_MAPS[0], BpfHashMap::try_from)?,
            take_map(&mut ebpf, DNS_REPEATS_MAPS[1], BpfHashMap::try_from)?,
        ],
        generation: take_map(&mut ebpf, DNS_GENERATION_MAP, Array::try_from)?,
        current: 0,
    };
    let loss = take_map(&mut ebpf, LOSS_MAP, PerCpuArray::try_from)?;
    let flows = FlowTables {
        tables: [
            take_map(&mut ebpf, FLOWS_MAPS[0], BpfHashMap::try_from)?,
            take_map(&mut ebpf, FLOWS_MAPS[1], BpfHashMap::try_from)?,
        ],
        repeats: take_map(&mut ebpf, FLOW_REPEATS_MAP, PerCpuArray::try_from)?,
        losses: [
            take_map(&mut ebpf, CGROUP_LOSSES_MAPS[0], BpfHashMap::try_from)?,
            take_map(&mut ebpf, CGROUP_LOSSES_MAPS[1], BpfHashMap::try_from)?,
        ],
        netns: super::netns::NetnsIndex::new(take_map(
            &mut ebpf,
            NETNS_CGROUPS_MAP,
            BpfHashMap::try_from,
        )?),
        generation: take_map(&mut ebpf, GENERATION_MAP, Array::try_from)?,
        epoch: 0,
    };
    let fdinfos = program_fdinfos(&program_ids.iter().map(|(_, id)| *id).collect::<Vec<_>>());
    if fdinfos.len() < program_ids.len() {
        warn!(
            found = fdinfos.len(),
            programs = program_ids.len(),
            "some programs' skipped runs cannot be read (no fdinfo with recursion_misses: Linux < 5.12)"
        );
    }
    info!(
        load_ms = loaded.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        "eBPF programs loaded"
    );
    Ok(Loaded {
        probes: Probes {
            _ebpf: ebpf,
            statuses,
        },
        ring,
        dns_ring,
        dns_maps,
        flows,
        loss: LossMap {
            map: loss,
            programs: fdinfos,
        },
        drop_reasons: chosen.into_iter().map(|(n, v)| (v, n)).collect(),
        program_ids,
    })
}

/// An error with its sources ("bpf_link_create failed: Invalid argument").
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Takes a map out of the object and opens it as its typed wrapper.
fn take_map<T>(
    ebpf: &mut Ebpf,
    name: &'static str,
    typed: impl FnOnce(aya::maps::Map) -> Result<T, aya::maps::MapError>,
) -> Result<T, LoadError> {
    let map = ebpf.take_map(name).ok_or_else(|| LoadError::Map {
        name,
        source: aya::maps::MapError::InvalidName { name: name.into() },
    })?;
    typed(map).map_err(|source| LoadError::Map { name, source })
}

/// Loads (without attaching) cgroup_skb programs that must run in the same form; the first
/// rejection, with the others unloaded again (their fallbacks take the hooks).
fn load_group(ebpf: &mut Ebpf, names: &[&str]) -> Option<String> {
    let mut rejected = None;
    for name in names {
        let program: Result<&mut CgroupSkb, String> = ebpf
            .program_mut(name)
            .ok_or_else(|| format!("program {name} not in the object"))
            .and_then(|p| p.try_into().map_err(|e| format!("{e}")));
        match program.and_then(|p| p.load().map_err(load_error)) {
            Ok(()) => {}
            Err(e) => {
                rejected = Some(format!("{name}: {e}"));
                break;
            }
        }
    }
    if rejected.is_some() {
        for name in names {
            if let Some(Ok(p)) = ebpf.program_mut(name).map(<&mut CgroupSkb>::try_from)
                && p.fd().is_ok()
                && let Err(error) = p.unload()
            {
                warn!(program = name, %error, "unloading a rejected group's program");
            }
        }
    }
    rejected
}

/// Every tracepoint this kernel has, `category:name` (tracefs `available_events`); `None` when
/// it cannot be read (then a missing tracepoint shows as an attach error).
fn available_events(tracefs: &Path) -> Option<String> {
    std::fs::read_to_string(tracefs.join("available_events")).ok()
}

/// Why a tracepoint hook cannot be attached on this kernel, when it does not exist here: named,
/// rather than the attach call's bare errno.
fn missing_hook(events: Option<&str>, hook: Hook) -> Option<String> {
    let events = events?;
    let (name, since) = match hook {
        Hook::RawTracePoint { name, since } => (name, since),
        Hook::CgroupSkb { .. } => return None,
    };
    // A raw tracepoint is named without its category.
    let present = events.lines().any(|line| match line.split_once(':') {
        Some((_, n)) => n.trim() == name,
        None => false,
    });
    (!present).then(|| format!("this kernel has no {name} tracepoint (added in Linux {since})"))
}

/// A program the kernel would not load, with the verifier's own reason: the last lines of its
/// log that say what is wrong (not the instruction dump, not its statistics).
fn load_error(e: aya::programs::ProgramError) -> String {
    match &e {
        aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let reason = verifier_reason(&log);
            if reason.is_empty() {
                format!("the kernel would not load it: {io_error}")
            } else {
                let errno = io_error.raw_os_error().unwrap_or_default();
                format!("the verifier rejects it: {reason} (errno {errno})")
            }
        }
        _ => format!("load: {}", chain(&e)),
    }
}

/// The verifier's reason from its log: the last line that is not statistics.
pub fn verifier_reason(log: &str) -> String {
    log.lines()
        .map(str::trim)
        .rfind(|l| {
            !l.is_empty()
                && !l.starts_with("processed ")
                && !l.starts_with("verification time")
                && !l.starts_with("stack depth")
                && !l.starts_with("-- END PROG LOAD LOG --")
        })
        .map(str::to_owned)
        .unwrap_or_default()
}

fn attach(ebpf: &mut Ebpf, name: &str, hook: Hook, skb_cgroup: &Path) -> Result<(), String> {
    match hook {
        Hook::RawTracePoint { name: tp, .. } => {
            let program: &mut RawTracePoint = ebpf
                .program_mut(name)
                .ok_or_else(|| format!("program {name} not in the object"))?
                .try_into()
                .map_err(|e| format!("{e}"))?;
            program.load().map_err(load_error)?;
            program
                .attach(tp)
                .map_err(|e| format!("attach: {}", chain(&e)))?;
        }
        Hook::CgroupSkb { egress } => {
            let program: &mut CgroupSkb = ebpf
                .program_mut(name)
                .ok_or_else(|| format!("program {name} not in the object"))?
                .try_into()
                .map_err(|e| format!("{e}"))?;
            if program.fd().is_err() {
                program.load().map_err(load_error)?;
            }
            let root = File::open(skb_cgroup)
                .map_err(|e| format!("opening {}: {e}", skb_cgroup.display()))?;
            let direction = if egress {
                CgroupSkbAttachType::Egress
            } else {
                CgroupSkbAttachType::Ingress
            };
            // A bpf_link (Linux 5.7+): always runs beside other programs there and below
            // (the kernel takes no mode flags for links; `Single` passes none). Older kernels
            // get a legacy attachment, also without flags.
            program
                .attach(root, direction, CgroupAttachMode::Single)
                .map_err(|e| format!("attach to {}: {}", skb_cgroup.display(), chain(&e)))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use triage_agent_common::{FlowKey, FlowRepeat, FlowStats, kind};

    use super::{merge_repeats, missing_hook};
    use crate::probes::{Hook, PROGRAMS};

    /// The embedded object declares its licence in a `license` section, so the kernel is told
    /// "Dual MIT/GPL" (what the programs' crate says), not aya's default "GPL".
    #[test]
    fn the_programs_declare_their_licence() {
        let has = |needle: &[u8]| {
            super::EBPF_OBJECT
                .windows(needle.len())
                .any(|w| w == needle)
        };
        assert!(has(b"Dual MIT/GPL\0"), "the licence string");
        assert!(has(b"\0license\0"), "the license section's name");
    }

    /// A tracepoint the kernel does not list is named with the release that added it, taken
    /// from the program's own hook; a listed one, or no tracefs, is no finding.
    #[test]
    fn a_missing_tracepoint_is_named_with_its_release() {
        let hook = |name: &str| {
            PROGRAMS
                .iter()
                .find(|p| p.name == name)
                .map(|p| p.hook)
                .unwrap_or_else(|| unreachable!("{name} is a program"))
        };
        let events = "sock:inet_sock_set_state\ntcp:tcp_retransmit_skb\n";
        assert_eq!(
            missing_hook(Some(events), hook("inet_sk_error_report")).as_deref(),
            Some("this kernel has no inet_sk_error_report tracepoint (added in Linux 5.14)")
        );
        assert_eq!(
            missing_hook(Some(events), hook("inet_sock_set_state")),
            None
        );
        assert_eq!(missing_hook(Some(events), hook("tcp_retransmit_skb")), None);
        assert_eq!(missing_hook(None, hook("inet_sk_error_report")), None);
        assert_eq!(
            missing_hook(Some(""), Hook::CgroupSkb { egress: true }),
            None
        );
    }

    fn key(dport: u16) -> FlowKey {
        FlowKey {
            kind: kind::PACKET_DROP,
            dport,
            ..FlowKey::default()
        }
    }

    #[test]
    fn fdinfo_fields_are_read_by_name() {
        let text = "pos:\t0\nflags:\t02000002\nprog_type:\t17\nprog_id:\t42\nrun_time_ns:\t0\nrecursion_misses:\t3\n";
        assert_eq!(super::fdinfo_field(text, "prog_id"), Some(42));
        assert_eq!(super::fdinfo_field(text, "recursion_misses"), Some(3));
        assert_eq!(super::fdinfo_field(text, "verified_insns"), None);
        assert_eq!(super::fdinfo_field("prog_id:\tx\n", "prog_id"), None);
    }

    #[test]
    fn repeats_left_in_cpu_slots_join_their_flows() {
        let mut drained = vec![(
            key(53),
            FlowStats {
                count: 10,
                first_ns: 100,
                last_ns: 200,
                last_sport: 1000,
                extra: 1,
                ..FlowStats::default()
            },
        )];
        let repeats = [
            // Two CPUs counted repeats of the same flow.
            FlowRepeat {
                key: key(53),
                count: 5,
                last_ns: 300,
                last_sport: 2000,
                extra: 2,
                valid: 1,
            },
            FlowRepeat {
                key: key(53),
                count: 7,
                last_ns: 250,
                last_sport: 3000,
                extra: 0,
                valid: 1,
            },
            // A flow the table no longer has is added whole, never dropped.
            FlowRepeat {
                key: key(80),
                count: 4,
                last_ns: 400,
                last_sport: 4000,
                extra: 0,
                valid: 1,
            },
        ];
        merge_repeats(&mut drained, &repeats);
        let [(_, joined), (k, added)] = drained.as_slice() else {
            panic!("two flows expected: {drained:?}");
        };
        assert_eq!(joined.count, 22);
        assert_eq!((joined.first_ns, joined.last_ns), (100, 300));
        assert_eq!(joined.last_sport, 2000, "the latest occurrence's port");
        assert_eq!(joined.extra, 3);
        assert_eq!(*k, key(80));
        assert_eq!((added.count, added.last_ns), (4, 400));
    }
}
