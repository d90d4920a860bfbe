//! The sampling scenario: the cgroupfs sampler on a fixture tree of 1,000 containers (cgroup v2
//! file formats in a temporary directory): CPU time per full sweep, and allocations per sample
//! in steady state (a counting allocator wraps the system one). No root needed.

use std::time::Instant;

use crate::{
    measure::{median, process_cpu, spread},
    results,
};

/// Counts allocations, to show the sampler allocates nothing per sample.
struct Counting;

static ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The sampler on 1,000 fixture containers: CPU per sweep, allocations per sample.
pub fn run() -> anyhow::Result<()> {
    use triage_agent::samplers::sampler::{Sampler, v2_fixture_config, write_v2_fixture};
    const CONTAINERS: usize = 1000;
    const SWEEPS: usize = 50;
    let dir = tempfile::tempdir()?;
    let pods = write_v2_fixture(dir.path(), CONTAINERS)?;
    let mut sampler = Sampler::new(v2_fixture_config(dir.path(), 10));
    let started = Instant::now();
    sampler.set_pods(&pods, Instant::now(), &mut Vec::new());
    let discovery = started.elapsed();
    anyhow::ensure!(
        sampler.containers() == CONTAINERS,
        "found {} containers",
        sampler.containers()
    );
    let mut out = Vec::with_capacity(64);
    // The first sweep opens the files and takes the baseline.
    sampler.sweep(Instant::now(), &mut out);
    let mut per_sweep = Vec::with_capacity(SWEEPS);
    let allocs0 = ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed);
    let mut files = 0;
    for _ in 0..SWEEPS {
        out.clear();
        let cpu0 = process_cpu();
        let stats = sampler.sweep(Instant::now(), &mut out);
        per_sweep.push((process_cpu() - cpu0) * 1000.0);
        files += stats.files_read;
    }
    let allocs = ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed) - allocs0;
    let samples = (SWEEPS * CONTAINERS) as f64;
    let (min, max) = spread(&per_sweep);
    let med = median(&mut per_sweep);
    println!(
        "
sampling: {CONTAINERS} containers (cgroup v2 fixture tree), {SWEEPS} sweeps"
    );
    println!(
        "  CPU per full sweep: median {med:.2} ms (min {min:.2}, max {max:.2}; goal < 5 ms); \
         {:.2} us per container",
        med * 1000.0 / CONTAINERS as f64
    );
    println!(
        "  files read per sweep: {}; allocations per sample in steady state: {:.4} ({allocs} \
         in {SWEEPS} sweeps); discovery of {CONTAINERS} containers: {:.1} ms; open files: {}",
        files / SWEEPS as u64,
        allocs as f64 / samples,
        discovery.as_secs_f64() * 1000.0,
        sampler.open_files()
    );
    results::add(results::Row {
        scenario: format!("sampling: CPU per sweep of {CONTAINERS} containers' cgroup v2 files"),
        ours: format!("{med:.2} ms"),
        peers: "-".to_owned(),
        goal: "< 5 ms".to_owned(),
        spread: format!(
            "{min:.2}-{max:.2} ms over {SWEEPS} sweeps; {:.4} allocations per sample",
            allocs as f64 / samples
        ),
    });
    Ok(())
}
