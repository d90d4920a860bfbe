//! Loads the embedded eBPF object with this kernel's layouts and attaches each program of
//! [`super::PROGRAMS`]. A program that fails to attach is reported (Status shows which and why)
//! and the others keep running: partial evidence beats none. Dropping [`Probes`] detaches
//! everything.

use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use tracing::{info, warn};
use triage_agent_common::{
    EVENTS_MAP, LOSS_MAP, LOST_CONNECT_TABLE, LOST_FIELD_READ, LOST_RESERVE, OFFSETS_GLOBAL,
};

use super::{Hook, PROGRAMS, ProbeStatus, offsets::kernel_offsets};
use crate::{kernel::btf::Btf, loss::Loss};

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
}

/// The loaded programs. Keep alive while collecting; drop to detach.
pub struct Probes {
    _ebpf: Ebpf,
    pub statuses: Vec<ProbeStatus>,
}

/// The kernel side's per-CPU loss counters, owned by the reader, which adds their growth to
/// the agent's counters.
pub struct LossMap(PerCpuArray<MapData, u64>);

/// Kernel loss slots and the names they are reported under.
const KERNEL_LOSSES: [(u32, Loss); 3] = [
    (LOST_RESERVE, Loss::RingBufferFull),
    (LOST_CONNECT_TABLE, Loss::ConnectTableFull),
    (LOST_FIELD_READ, Loss::KernelReadErrors),
];

impl LossMap {
    /// Current totals, summed over CPUs. A slot that cannot be read is an error (never a zero
    /// that would claim nothing was lost).
    pub fn read(&self) -> Result<Vec<(Loss, u64)>, aya::maps::MapError> {
        KERNEL_LOSSES
            .iter()
            .map(|(slot, loss)| Ok((*loss, self.0.get(slot, 0)?.iter().sum::<u64>())))
            .collect()
    }
}

/// The loaded programs, the ring buffer and the kernel loss counters.
pub struct Loaded {
    pub probes: Probes,
    pub ring: RingBuf<MapData>,
    pub loss: LossMap,
}

/// Loads and attaches the programs.
pub fn load(tracefs: &Path, btf: Option<&Btf>) -> Result<Loaded, LoadError> {
    let started = std::time::Instant::now();
    let (offsets, problems) = kernel_offsets(tracefs, btf);
    let mut ebpf = EbpfLoader::new()
        .override_global(OFFSETS_GLOBAL, &offsets, true)
        .load(EBPF_OBJECT)
        .map_err(LoadError::Load)?;
    let loaded = started.elapsed();

    let mut statuses = Vec::new();
    for program in PROGRAMS {
        let hook = program.hook.to_string();
        let result = match problems.get(program.name) {
            Some(p) => Err(p.clone()),
            None => attach(&mut ebpf, program.name, program.hook),
        };
        match &result {
            Ok(()) => info!(program = program.name, %hook, "attached"),
            Err(error) => warn!(program = program.name, %hook, %error, "not attached"),
        }
        statuses.push(ProbeStatus {
            name: program.name.to_owned(),
            hook,
            attached: result.is_ok(),
            error: result.err(),
        });
    }
    if !statuses.iter().any(|s| s.attached) {
        let why: Vec<String> = statuses.iter().filter_map(|s| s.error.clone()).collect();
        return Err(LoadError::NothingAttached(why.join("; ")));
    }
    let ring = take_map(&mut ebpf, EVENTS_MAP, RingBuf::try_from)?;
    let loss = take_map(&mut ebpf, LOSS_MAP, PerCpuArray::try_from)?;
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
        loss: LossMap(loss),
    })
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

fn attach(ebpf: &mut Ebpf, name: &str, hook: Hook) -> Result<(), String> {
    match hook {
        Hook::TracePoint { category, name: tp } => {
            let program: &mut TracePoint = ebpf
                .program_mut(name)
                .ok_or_else(|| format!("program {name} not in the object"))?
                .try_into()
                .map_err(|e| format!("{e}"))?;
            program.load().map_err(|e| format!("verifier/load: {e}"))?;
            program
                .attach(category, tp)
                .map_err(|e| format!("attach: {e}"))?;
        }
    }
    Ok(())
}
