//! The synchronous sampler: follows the pods it is given, finds their containers' cgroups
//! once, and on every sweep reads each container's CPU and OOM counters, reporting deltas.
//! Driven by [`super::task`] on a thread; benchmarked and unit-tested on fixture trees.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tracing::{debug, warn};

use super::cgroupfs::{self, CgroupFile, CpuStat, READ_BUF};
use crate::{
    cgroup::{
        ContainerRef, PodContainers,
        layout::{Hierarchies, Version, find_containers},
    },
    event::{OomCounts, Sample},
    evidence::CpuThrottling,
};

/// Sweeps between retries of pods whose containers were not all found (a container that has
/// not started yet, or one that exited).
const REDISCOVER_EVERY: u64 = 10;

/// Settings of the sampler.
#[derive(Clone, Debug)]
pub struct SamplerConfig {
    pub hierarchies: Hierarchies,
    /// kubelet's `--cgroup-root` (the parent of `kubepods`), relative to each mount; the same
    /// root attribution reads cgroup paths under.
    pub kubelet_root: crate::cgroup::path::KubeletRoot,
    /// Throttled periods per interval from which a container is reported.
    pub throttle_threshold: u64,
}

/// One controller's files of a container.
#[derive(Debug)]
struct Files {
    /// The container's cgroup directory in the controller's hierarchy, one copy for all its
    /// files (and for every controller on cgroup v2).
    dir: Arc<Path>,
    counter: CgroupFile,
}

#[derive(Debug)]
struct Tracked {
    cpu: Option<Files>,
    memory: Option<Files>,
    /// The container's cgroup2 directory when it has `cpu.pressure` (PSI).
    psi: Option<CgroupFile>,
    prev_cpu: Option<(CpuStat, Instant)>,
    prev_oom: Option<(u64, u64)>,
    /// A read failed for a reason other than the cgroup being gone: logged once.
    warned: bool,
}

/// What a sweep did (for Status and the benchmark).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepStats {
    pub containers: usize,
    pub files_read: u64,
    /// Containers whose cgroup disappeared (pod deleted mid-sampling): dropped quietly.
    pub gone: u64,
    /// Reads that failed or did not parse (not a loss: the next sweep tries again).
    pub read_errors: u64,
}

/// Follows containers and samples them.
#[derive(Debug)]
pub struct Sampler {
    config: SamplerConfig,
    tracked: HashMap<ContainerRef, Tracked>,
    /// Pods with containers not found yet.
    incomplete: HashSet<Arc<str>>,
    pods: Vec<PodContainers>,
    sweeps: u64,
    buf: Vec<u8>,
    known: Option<crate::cgroup::KnownCgroups>,
    /// When this sampler started: a container whose cgroup was made later has its whole
    /// history inside the agent's life, so its first reading reports what its counters
    /// already hold (since container start) instead of being a silent baseline.
    started: SystemTime,
    /// Cumulative totals.
    pub totals: SweepStats,
}

impl Sampler {
    pub fn new(config: SamplerConfig) -> Sampler {
        Sampler {
            config,
            tracked: HashMap::new(),
            incomplete: HashSet::new(),
            pods: Vec::new(),
            sweeps: 0,
            buf: vec![0; READ_BUF],
            known: None,
            started: SystemTime::now(),
            totals: SweepStats::default(),
        }
    }

    /// Also records the cgroup2 id of every container found into `known`.
    pub fn with_known(mut self, known: crate::cgroup::KnownCgroups) -> Sampler {
        self.known = Some(known);
        self
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// Containers being sampled.
    pub fn containers(&self) -> usize {
        self.tracked.len()
    }

    /// Open file descriptors held (two or three per container at most).
    pub fn open_files(&self) -> usize {
        self.tracked
            .values()
            .map(|t| {
                usize::from(t.cpu.as_ref().is_some_and(|f| f.counter.is_open()))
                    + usize::from(t.memory.as_ref().is_some_and(|f| f.counter.is_open()))
                    + usize::from(t.psi.as_ref().is_some_and(CgroupFile::is_open))
            })
            .sum()
    }

    /// The live pods changed: stops following containers that are gone from metadata, finds
    /// the new ones and takes their first reading at once (into `out` when it is evidence).
    pub fn set_pods(&mut self, pods: &[PodContainers], now: Instant, out: &mut Vec<Sample>) {
        let wanted: HashSet<ContainerRef> = pods
            .iter()
            .flat_map(|p| {
                p.container_ids.iter().map(|c| ContainerRef {
                    pod_uid: p.uid.clone(),
                    container_id: c.clone(),
                })
            })
            .collect();
        self.tracked.retain(|k, _| wanted.contains(k));
        self.pods = pods.to_vec();
        self.incomplete = pods
            .iter()
            .filter(|p| {
                p.container_ids.iter().any(|c| {
                    !self.tracked.contains_key(&ContainerRef {
                        pod_uid: p.uid.clone(),
                        container_id: c.clone(),
                    })
                })
            })
            .map(|p| p.uid.clone())
            .collect();
        self.discover(now, out);
    }

    /// Looks for the cgroups of pods with containers not followed yet and takes the first
    /// reading of each one found.
    fn discover(&mut self, now: Instant, out: &mut Vec<Sample>) {
        let base = self
            .config
            .hierarchies
            .memory
            .as_ref()
            .or(self.config.hierarchies.cpu.as_ref())
            .map(|h| h.mount.clone());
        let Some(base) = base else { return };
        let mut still = HashSet::new();
        for pod in &self.pods {
            if !self.incomplete.contains(&pod.uid) {
                continue;
            }
            let missing: Vec<&str> = pod
                .container_ids
                .iter()
                .filter(|c| {
                    !self.tracked.contains_key(&ContainerRef {
                        pod_uid: pod.uid.clone(),
                        container_id: (*c).clone(),
                    })
                })
                .map(|c| &**c)
                .collect();
            let found = find_containers(&base, &self.config.kubelet_root, &pod.uid, &missing);
            if found.len() < missing.len() {
                still.insert(pod.uid.clone());
            }
            for (id, rel) in found {
                let key = ContainerRef {
                    pod_uid: pod.uid.clone(),
                    container_id: id.into(),
                };
                debug!(pod_uid = %key.pod_uid, container = %key.container_id, path = %rel.display(), "sampling container");
                let mut t = self.track(&rel, now);
                let mut stats = SweepStats::default();
                let ctx = self.context();
                if !read_container(&key, &mut t, now, &ctx, &mut self.buf, out, &mut stats) {
                    self.tracked.insert(key, t);
                }
                self.totals.files_read += stats.files_read;
                self.totals.read_errors += stats.read_errors;
            }
        }
        self.incomplete = still;
    }

    fn context(&self) -> Context {
        Context {
            cpu_v2: self.config.hierarchies.cpu.as_ref().map(|h| h.version) == Some(Version::V2),
            mem_v2: self.config.hierarchies.memory.as_ref().map(|h| h.version) == Some(Version::V2),
            threshold: self.config.throttle_threshold.max(1),
        }
    }

    /// Opens a container's files. A container whose cgroup was made after this sampler
    /// started gets a zero baseline at its creation, so its first reading reports what
    /// happened since it started; an older one's first reading is its baseline.
    fn track(&self, rel: &Path, now: Instant) -> Tracked {
        let h = &self.config.hierarchies;
        // The container's directories, one copy each (on cgroup v2, one for all).
        let mut dirs: Vec<Arc<Path>> = Vec::new();
        let mut dir_in = |mount: &Path| -> Arc<Path> {
            let dir = mount.join(rel);
            if let Some(d) = dirs.iter().find(|d| ***d == *dir) {
                return d.clone();
            }
            let d: Arc<Path> = dir.into();
            dirs.push(d.clone());
            d
        };
        if let (Some(known), Some(unified)) = (&self.known, &h.unified) {
            use std::os::unix::fs::MetadataExt as _;
            let dir = unified.join(rel);
            if let Ok(meta) = std::fs::metadata(&dir) {
                known.insert(meta.ino(), dir.display().to_string());
            }
        }
        let psi = h
            .unified
            .as_ref()
            .map(|m| dir_in(m))
            .filter(|d| d.join("cpu.pressure").exists())
            .map(|d| CgroupFile::new(d, "cpu.pressure"));
        let cpu = h.cpu.as_ref().map(|hier| {
            let dir = dir_in(&hier.mount);
            Files {
                counter: CgroupFile::new(dir.clone(), "cpu.stat"),
                dir,
            }
        });
        let memory = h.memory.as_ref().map(|hier| {
            let dir = dir_in(&hier.mount);
            let name = if hier.version == Version::V2 {
                "memory.events"
            } else {
                "memory.oom_control"
            };
            Files {
                counter: CgroupFile::new(dir.clone(), name),
                dir,
            }
        });
        let born = cpu
            .as_ref()
            .or(memory.as_ref())
            .and_then(|f| std::fs::metadata(&f.dir).ok()?.modified().ok())
            .filter(|made| *made >= self.started)
            .and_then(|made| {
                let age = SystemTime::now().duration_since(made).unwrap_or_default();
                now.checked_sub(age)
            });
        Tracked {
            cpu,
            memory,
            psi,
            prev_cpu: born.map(|at| (CpuStat::default(), at)),
            prev_oom: born.map(|_| (0, 0)),
            warned: false,
        }
    }

    /// Reads every followed container once; appends what it found to `out`.
    pub fn sweep(&mut self, now: Instant, out: &mut Vec<Sample>) -> SweepStats {
        self.sweeps += 1;
        if !self.incomplete.is_empty() && self.sweeps.is_multiple_of(REDISCOVER_EVERY) {
            self.discover(now, out);
        }
        let mut stats = SweepStats {
            containers: self.tracked.len(),
            ..SweepStats::default()
        };
        let ctx = self.context();
        let buf = &mut self.buf;
        let mut gone = Vec::new();
        for (key, t) in &mut self.tracked {
            if read_container(key, t, now, &ctx, buf, out, &mut stats) {
                gone.push(key.clone());
            }
        }
        stats.gone = gone.len() as u64;
        for key in gone {
            debug!(pod_uid = %key.pod_uid, container = %key.container_id, "container cgroup gone; no longer sampled");
            self.tracked.remove(&key);
        }
        self.totals.files_read += stats.files_read;
        self.totals.gone += stats.gone;
        self.totals.read_errors += stats.read_errors;
        self.totals.containers = self.tracked.len();
        stats
    }
}

/// What every container's reading needs to know about the node.
struct Context {
    cpu_v2: bool,
    mem_v2: bool,
    threshold: u64,
}

/// Reads one container's counters, appends what changed past the thresholds to `out` and
/// keeps the reading as the next baseline. `true` when its cgroup is gone.
fn read_container(
    key: &ContainerRef,
    t: &mut Tracked,
    now: Instant,
    ctx: &Context,
    buf: &mut [u8],
    out: &mut Vec<Sample>,
    stats: &mut SweepStats,
) -> bool {
    let Context {
        cpu_v2,
        mem_v2,
        threshold,
    } = *ctx;
    if let Some(cpu) = t.cpu.as_mut() {
        stats.files_read += 1;
        let read = cpu.counter.read(buf);
        match read.map(|b| cgroupfs::cpu_stat(b, cpu_v2)) {
            Ok(Some(stat)) => {
                if let Some((prev, at)) = t.prev_cpu
                    && stat.periods >= prev.periods
                    && stat.throttled >= prev.throttled
                {
                    let throttled = stat.throttled - prev.throttled;
                    if throttled >= threshold {
                        let interval = now.saturating_duration_since(at);
                        let limit = cpu_limit(&cpu.dir, cpu_v2, buf);
                        stats.files_read += 1 + u64::from(!cpu_v2);
                        let pressure = t.psi.as_mut().and_then(|p| {
                            stats.files_read += 1;
                            p.read(buf).ok().and_then(cgroupfs::psi_some_avg10)
                        });
                        out.push(Sample::Throttled {
                            container: key.clone(),
                            throttling: CpuThrottling {
                                throttled_periods: throttled,
                                total_periods: stat.periods - prev.periods,
                                throttled_us: stat.throttled_us.saturating_sub(prev.throttled_us),
                                limit_millicores: limit,
                                interval_ms: u64::try_from(interval.as_millis())
                                    .unwrap_or(u64::MAX),
                                cpu_pressure_some_avg10: pressure,
                            },
                        });
                    }
                }
                t.prev_cpu = Some((stat, now));
            }
            Ok(None) => {
                let path = cpu.counter.path();
                stats.read_errors += 1;
                failed(t, &path, None);
            }
            Err(e) => {
                let path = cpu.counter.path();
                if failed(t, &path, Some(e)) {
                    return true;
                }
                stats.read_errors += 1;
            }
        }
    }
    if let Some(mem) = t.memory.as_mut() {
        stats.files_read += 1;
        let read = mem.counter.read(buf);
        match read.map(|b| cgroupfs::oom_counts(b, mem_v2)) {
            Ok(Some((kills, group))) => {
                if let Some((pk, pg)) = t.prev_oom
                    && kills > pk
                {
                    let (limit, usage, group_flag) = memory_state(&mem.dir, mem_v2, buf);
                    stats.files_read += 3;
                    out.push(Sample::OomKills(OomCounts {
                        container: key.clone(),
                        kills: kills - pk,
                        group_kills: group.saturating_sub(pg),
                        limit_bytes: limit,
                        usage_bytes: usage,
                        group: group_flag,
                    }));
                }
                t.prev_oom = Some((kills, group));
            }
            Ok(None) => {
                let path = mem.counter.path();
                stats.read_errors += 1;
                failed(t, &path, None);
            }
            Err(e) => {
                let path = mem.counter.path();
                if failed(t, &path, Some(e)) {
                    return true;
                }
                stats.read_errors += 1;
            }
        }
    }
    false
}

/// Notes a failed read; `true` when the cgroup is gone (the container is dropped quietly),
/// otherwise it is logged once per container and retried next sweep.
fn failed(t: &mut Tracked, path: &Path, e: Option<std::io::Error>) -> bool {
    match e {
        Some(e) if cgroupfs::is_gone(&e) => return true,
        Some(e) if !t.warned => {
            warn!(path = %path.display(), error = %e, "cannot read cgroup file; will retry");
        }
        None if !t.warned => {
            warn!(path = %path.display(), "cgroup file not understood; will retry");
        }
        _ => {}
    }
    t.warned = true;
    false
}

/// Reads a small file by path into `buf` (only when evidence is being made, not per sample).
fn read_small<'b>(path: &Path, buf: &'b mut [u8]) -> Option<&'b [u8]> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path).ok()?;
    let n = f.read(buf).ok()?;
    buf.get(..n)
}

/// The CPU limit of a container, thousandths of a core.
fn cpu_limit(dir: &Path, v2: bool, buf: &mut [u8]) -> Option<u64> {
    if v2 {
        read_small(&dir.join("cpu.max"), buf).and_then(cgroupfs::cpu_max)?
    } else {
        let quota = read_small(&dir.join("cpu.cfs_quota_us"), buf)?.to_vec();
        let period = read_small(&dir.join("cpu.cfs_period_us"), buf)?;
        cgroupfs::cfs_quota(&quota, period)?
    }
}

/// Limit, peak (else current) usage and `memory.oom.group` of a memory cgroup.
fn memory_state(dir: &Path, v2: bool, buf: &mut [u8]) -> (Option<u64>, Option<u64>, Option<bool>) {
    let (limit, peak, current) = if v2 {
        ("memory.max", "memory.peak", "memory.current")
    } else {
        (
            "memory.limit_in_bytes",
            "memory.max_usage_in_bytes",
            "memory.usage_in_bytes",
        )
    };
    let limit = read_small(&dir.join(limit), buf)
        .and_then(cgroupfs::bytes_or_max)
        .flatten();
    let usage = match read_small(&dir.join(peak), buf).and_then(cgroupfs::bytes_or_max) {
        Some(v) => v,
        None => read_small(&dir.join(current), buf)
            .and_then(cgroupfs::bytes_or_max)
            .flatten(),
    };
    let group = if v2 {
        read_small(&dir.join("memory.oom.group"), buf).and_then(cgroupfs::flag)
    } else {
        None
    };
    (limit, usage, group)
}

/// Writes a v2 fixture tree of `n` containers (cgroupfs driver, burstable) under `root`, in
/// the kernel's formats: for tests and the sampling benchmark. Returns the pods.
pub fn write_v2_fixture(root: &Path, n: usize) -> std::io::Result<Vec<PodContainers>> {
    let mut pods = Vec::with_capacity(n);
    for i in 0..n {
        let uid = format!("{i:08x}-0000-4000-8000-{i:012x}");
        let cid = format!("{i:064x}");
        let dir = root
            .join("kubepods/burstable")
            .join(format!("pod{uid}"))
            .join(&cid);
        std::fs::create_dir_all(&dir)?;
        write_v2_counters(&dir, 0, 0, 0)?;
        std::fs::write(dir.join("cpu.max"), "10000 100000\n")?;
        std::fs::write(dir.join("memory.max"), "67108864\n")?;
        std::fs::write(dir.join("memory.peak"), "67100000\n")?;
        std::fs::write(dir.join("memory.current"), "1048576\n")?;
        std::fs::write(dir.join("memory.oom.group"), "0\n")?;
        std::fs::write(
            dir.join("cpu.pressure"),
            "some avg10=12.50 avg60=3.00 avg300=1.00 total=1000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        )?;
        pods.push(PodContainers {
            uid: uid.into(),
            container_ids: vec![cid.into()],
        });
    }
    Ok(pods)
}

/// Rewrites a fixture container's counters (v2 formats).
pub fn write_v2_counters(
    dir: &Path,
    periods: u64,
    throttled: u64,
    kills: u64,
) -> std::io::Result<()> {
    std::fs::write(
        dir.join("cpu.stat"),
        format!(
            "usage_usec 912345\nuser_usec 812345\nsystem_usec 100000\nnr_periods {periods}\nnr_throttled {throttled}\nthrottled_usec {}\nnr_bursts 0\nburst_usec 0\n",
            throttled * 90_000
        ),
    )?;
    std::fs::write(
        dir.join("memory.events"),
        format!("low 0\nhigh 0\nmax 0\noom {kills}\noom_kill {kills}\noom_group_kill 0\n"),
    )
}

/// A sampler config for a fixture tree: pure v2 at `root`.
pub fn v2_fixture_config(root: &Path, threshold: u64) -> SamplerConfig {
    let h = crate::cgroup::layout::Hierarchy {
        mount: root.to_owned(),
        version: Version::V2,
    };
    SamplerConfig {
        hierarchies: Hierarchies {
            cpu: Some(h.clone()),
            memory: Some(h),
            unified: Some(root.to_owned()),
        },
        kubelet_root: crate::cgroup::path::KubeletRoot::new(Path::new("/")),
        throttle_threshold: threshold,
    }
}

/// Milliseconds as a duration (tests).
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn container_dir(root: &Path, pods: &[PodContainers], i: usize) -> PathBuf {
        root.join("kubepods/burstable")
            .join(format!("pod{}", pods[i].uid))
            .join(&*pods[i].container_ids[0])
    }

    #[test]
    fn v2_fixture_throttling_and_oom_deltas() {
        let dir = tempfile::tempdir().unwrap();
        let pods = write_v2_fixture(dir.path(), 3).unwrap();
        let mut s = Sampler::new(v2_fixture_config(dir.path(), 5));
        s.set_pods(&pods, Instant::now(), &mut Vec::new());
        assert_eq!(s.containers(), 3);
        let t0 = Instant::now();
        let mut out = Vec::new();
        s.sweep(t0, &mut out);
        assert!(out.is_empty(), "the first sweep is a baseline: {out:?}");

        let c0 = container_dir(dir.path(), &pods, 0);
        let c1 = container_dir(dir.path(), &pods, 1);
        write_v2_counters(&c0, 50, 40, 0).unwrap();
        write_v2_counters(&c1, 50, 4, 2).unwrap();
        s.sweep(t0 + ms(5000), &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
        let throttled = out
            .iter()
            .find_map(|o| match o {
                Sample::Throttled {
                    container,
                    throttling,
                } => Some((container.clone(), throttling.clone())),
                Sample::OomKills(_) => None,
            })
            .unwrap();
        assert_eq!(&*throttled.0.pod_uid, &*pods[0].uid);
        assert_eq!(throttled.1.throttled_periods, 40);
        assert_eq!(throttled.1.total_periods, 50);
        assert_eq!(throttled.1.throttled_us, 3_600_000);
        assert_eq!(throttled.1.limit_millicores, Some(100));
        assert_eq!(throttled.1.interval_ms, 5000);
        assert_eq!(throttled.1.cpu_pressure_some_avg10, Some(1250));
        let oom = out
            .iter()
            .find_map(|o| match o {
                Sample::OomKills(k) => Some(k.clone()),
                Sample::Throttled { .. } => None,
            })
            .unwrap();
        assert_eq!(&*oom.container.pod_uid, &*pods[1].uid);
        assert_eq!(oom.kills, 2);
        assert_eq!(oom.limit_bytes, Some(64 << 20));
        assert_eq!(oom.usage_bytes, Some(67_100_000));
        assert_eq!(oom.group, Some(false));

        // Below the threshold (4 < 5) nothing; an idle container nothing.
        out.clear();
        s.sweep(t0 + ms(10_000), &mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn a_pod_deleted_mid_sampling_is_dropped_quietly_and_leaks_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let pods = write_v2_fixture(dir.path(), 2).unwrap();
        let mut s = Sampler::new(v2_fixture_config(dir.path(), 1));
        s.set_pods(&pods, Instant::now(), &mut Vec::new());
        let mut out = Vec::new();
        s.sweep(Instant::now(), &mut out);
        assert_eq!(
            s.open_files(),
            4,
            "cpu.stat and memory.events per container"
        );
        // The cgroup goes before the metadata says so.
        std::fs::remove_dir_all(container_dir(dir.path(), &pods, 0).parent().unwrap()).unwrap();
        let stats = s.sweep(Instant::now(), &mut out);
        // A regular file that was removed still reads through its open descriptor; on
        // cgroupfs the read fails with ENODEV. Either way, metadata removal ends it.
        assert_eq!(stats.read_errors, 0, "{stats:?}");
        s.set_pods(&pods[1..], Instant::now(), &mut Vec::new());
        assert_eq!(s.containers(), 1);
        assert_eq!(s.open_files(), 2);
        s.set_pods(&[], Instant::now(), &mut Vec::new());
        assert_eq!((s.containers(), s.open_files()), (0, 0));
    }

    #[test]
    fn found_containers_are_known_by_cgroup_id() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let pods = write_v2_fixture(dir.path(), 2).unwrap();
        let known = crate::cgroup::KnownCgroups::default();
        let mut s = Sampler::new(v2_fixture_config(dir.path(), 1)).with_known(known.clone());
        s.set_pods(&pods, Instant::now(), &mut Vec::new());
        let c = container_dir(dir.path(), &pods, 1);
        let ino = std::fs::metadata(&c).unwrap().ino();
        let path = known.get(ino).unwrap();
        assert_eq!(
            crate::cgroup::path::parse_cgroup_path(&path)
                .unwrap()
                .pod_uid,
            &*pods[1].uid
        );
    }

    #[test]
    fn a_container_made_after_the_agent_started_reports_what_its_counters_hold_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let pods = write_v2_fixture(dir.path(), 2).unwrap();
        let c = container_dir(dir.path(), &pods, 0);
        // Throttled and OOM-killed before the agent first read it.
        write_v2_counters(&c, 43, 41, 1).unwrap();
        let mut s = Sampler::new(v2_fixture_config(dir.path(), 5));
        // As if both containers' cgroups were made after the sampler started.
        s.started = SystemTime::UNIX_EPOCH;
        let mut out = Vec::new();
        s.set_pods(&pods, Instant::now(), &mut out);
        // Reported when first seen, not one interval later; the idle one says nothing.
        assert_eq!(out.len(), 2, "{out:?}");
        for sample in &out {
            match sample {
                Sample::Throttled {
                    container,
                    throttling,
                } => {
                    assert_eq!(&*container.pod_uid, &*pods[0].uid);
                    assert_eq!(
                        (throttling.throttled_periods, throttling.total_periods),
                        (41, 43)
                    );
                }
                Sample::OomKills(k) => {
                    assert_eq!((&*k.container.pod_uid, k.kills), (&*pods[0].uid, 1));
                }
            }
        }
        // And once only: the next sweep has nothing new.
        out.clear();
        s.sweep(Instant::now(), &mut out);
        assert!(out.is_empty(), "{out:?}");
        // A container older than the sampler: its first reading is a silent baseline (an
        // agent restarted; what came before was the earlier agent's to report).
        let mut s = Sampler::new(v2_fixture_config(dir.path(), 5));
        s.started = SystemTime::now() + Duration::from_secs(3600);
        s.set_pods(&pods, Instant::now(), &mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn counters_going_backwards_are_a_new_baseline() {
        let dir = tempfile::tempdir().unwrap();
        let pods = write_v2_fixture(dir.path(), 1).unwrap();
        let c = container_dir(dir.path(), &pods, 0);
        write_v2_counters(&c, 100, 90, 3).unwrap();
        let mut s = Sampler::new(v2_fixture_config(dir.path(), 1));
        s.set_pods(&pods, Instant::now(), &mut Vec::new());
        let mut out = Vec::new();
        s.sweep(Instant::now(), &mut out);
        write_v2_counters(&c, 10, 1, 0).unwrap();
        s.sweep(Instant::now(), &mut out);
        assert!(out.is_empty(), "{out:?}");
    }
}
