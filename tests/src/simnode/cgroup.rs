//! The simulated node's cgroups on either layout: a hybrid host (v1 memory, cpu and pids
//! hierarchies beside a controller-less cgroup2) or pure cgroup2, where the controllers pods
//! need are enabled down to them. Pods' directories follow kubelet's layout for either cgroup
//! driver; their limits are written in whichever of the v1 and v2 files exist.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, ensure};

use super::{NodeNet, SimNode, SimPod, note};

/// Which kubelet cgroup driver the simulated pods' cgroups imitate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupDriver {
    /// `kubepods/besteffort/pod<uid>/<container-id>`
    Cgroupfs,
    /// `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice/cri-containerd-<id>.scope`
    Systemd,
}

/// The cgroup2 mount and the v1 hierarchies (hybrid hosts) that pods get a cgroup in.
pub(super) fn cgroup_mounts() -> anyhow::Result<(PathBuf, Vec<PathBuf>)> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    let mut v2 = None;
    let mut v1 = Vec::new();
    for m in triage_agent::kernel::mountinfo::mounts(&mountinfo) {
        if m.fstype == "cgroup2" && v2.is_none() {
            v2 = Some(PathBuf::from(m.point));
        } else if m.fstype == "cgroup" && ["memory", "cpu", "pids"].iter().any(|c| m.has_option(c))
        {
            v1.push(PathBuf::from(m.point));
        }
    }
    Ok((v2.context("no cgroup2 mount")?, v1))
}

/// The cgroup2 controllers pods use: their limits (memory, cpu) and process counts (pids).
const V2_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// Enables in `cgroup.subtree_control` of `root` and of each directory on the way down to
/// `dir` (relative to `root`; `dir` included) the [`V2_CONTROLLERS`] its own `cgroup.controllers`
/// offers and its subtree does not have yet, so `dir`'s children get their files (`memory.max`,
/// `cpu.max`). On a hybrid host cgroup2 offers none (they are bound to v1): nothing is
/// written. A controller that cannot be enabled is reported, not fatal: the pods work without
/// it and a limit written later says which file is missing.
fn enable_v2_controllers(root: &Path, dir: &Path) {
    let mut at = root.to_path_buf();
    let mut steps = vec![at.clone()];
    for part in dir.components() {
        at.push(part);
        steps.push(at.clone());
    }
    for cgroup in steps {
        let offered = fs::read_to_string(cgroup.join("cgroup.controllers")).unwrap_or_default();
        let enabled = fs::read_to_string(cgroup.join("cgroup.subtree_control")).unwrap_or_default();
        for c in V2_CONTROLLERS {
            let has = |list: &str| list.split_whitespace().any(|w| w == c);
            if has(&offered) && !has(&enabled) {
                let file = cgroup.join("cgroup.subtree_control");
                if let Err(e) = fs::write(&file, format!("+{c}")) {
                    note(&format!("cannot enable {c} in {}: {e}", file.display()));
                }
            }
        }
    }
}

/// Kills the processes still in the cgroup `rel` below `root` and waits (up to 2 s) until they
/// are gone, so it can be removed. Never touches `root` itself (an empty `rel`, a pod whose
/// creation failed before its cgroup was named).
pub(super) fn empty_cgroup(root: &Path, rel: &Path) {
    if rel.as_os_str().is_empty() || rel.is_absolute() {
        return;
    }
    let procs = root.join(rel).join("cgroup.procs");
    let me = std::process::id();
    for _ in 0..40 {
        let pids: Vec<i32> = fs::read_to_string(&procs)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|&p: &i32| p > 1 && u32::try_from(p) != Ok(me))
            .collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            // SAFETY: kill(2) has no memory preconditions; the pid is in the pod's own cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Whether a pod's cgroup is left below the node's cgroup root `base` (a directory below a
/// QoS class's, `kubepods/<qos>/pod<uid>`, or a guaranteed pod's `kubepods/pod<uid>`).
pub(super) fn has_pod_cgroups(base: &Path) -> bool {
    let dirs = |p: &Path| -> Vec<PathBuf> {
        fs::read_dir(p)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    };
    dirs(&base.join("kubepods")).iter().any(|d| {
        d.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("pod"))
            || !dirs(d).is_empty()
    })
}

/// Kills every process in the cgroup tree at `dir` (never this process), and waits a moment.
pub(super) fn kill_tree(dir: &Path) {
    let me = std::process::id();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for pid in fs::read_to_string(d.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .filter(|&p| p > 1 && u32::try_from(p) != Ok(me))
        {
            // SAFETY: kill(2); the pid is in the node's own cgroup tree.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Ok(entries) = fs::read_dir(&d) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
}

/// Removes a cgroup directory tree bottom-up (cgroup directories are removed with rmdir).
pub(super) fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Writes each `(file, value)` that exists in the cgroup `rel` of any of `roots`, in order;
/// returns the files written.
fn write_existing(
    roots: &[PathBuf],
    rel: &Path,
    files: &[(&str, &str)],
) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for root in roots {
        for (file, value) in files {
            let path = root.join(rel).join(file);
            if path.exists() {
                fs::write(&path, value)
                    .with_context(|| format!("writing {value} to {}", path.display()))?;
                written.push(path);
            }
        }
    }
    Ok(written)
}

/// The pod's cgroup and its container's, in kubelet's layout for the node's driver, in every
/// hierarchy; cgroup2's controllers are enabled down to the pod, so its container has limit
/// files. The directories (relative to each hierarchy root) are the pod's once all exist.
pub(super) fn create_pod_cgroups(node: &NodeNet<'_>, pod: &mut SimPod) -> anyhow::Result<()> {
    let uid_ = pod.uid.replace('-', "_");
    let (pod_dir, container_dir) = match node.driver {
        CgroupDriver::Cgroupfs => {
            let p = node
                .cgroup_base
                .join("kubepods/besteffort")
                .join(format!("pod{}", pod.uid));
            let c = p.join(&pod.container_id);
            (p, c)
        }
        CgroupDriver::Systemd => {
            let p = node
                .cgroup_base
                .join("kubepods.slice/kubepods-besteffort.slice")
                .join(format!("kubepods-besteffort-pod{uid_}.slice"));
            let c = p.join(format!("cri-containerd-{}.scope", pod.container_id));
            (p, c)
        }
    };
    for (i, root) in node.hierarchies.iter().enumerate() {
        fs::create_dir_all(root.join(&container_dir))
            .with_context(|| format!("creating cgroup {}", root.join(&container_dir).display()))?;
        if i == 0 {
            // cgroup2: controllers down to the pod, so its container has limit files.
            enable_v2_controllers(root, &pod_dir);
        }
    }
    pod.pod_cgroup = pod_dir;
    pod.container_cgroup = container_dir;
    Ok(())
}

/// Removes the pod's cgroups from every hierarchy, after killing what its processes left
/// behind there (a worker child of a killed parent).
pub(super) fn remove_pod_cgroups(node: &NodeNet<'_>, pod: &SimPod) {
    for root in node.hierarchies {
        empty_cgroup(root, &pod.container_cgroup);
        let _ = fs::remove_dir(root.join(&pod.container_cgroup));
        let _ = fs::remove_dir(root.join(&pod.pod_cgroup));
    }
}

impl SimNode {
    /// kubelet's cgroup root of this node (the parent of `kubepods`), for `--kubelet-cgroup-root`.
    pub fn cgroup_base(&self) -> &Path {
        &self.cgroup_base
    }

    /// The cgroup that holds every pod of this node in the cgroup v2 hierarchy (`kubepods`, or
    /// `kubepods.slice` for the systemd driver), where the agent hangs its cgroup_skb programs.
    pub fn pods_cgroup_v2(&self) -> PathBuf {
        let base = self.hierarchies[0].join(&self.cgroup_base);
        match self.driver {
            CgroupDriver::Cgroupfs => base.join("kubepods"),
            CgroupDriver::Systemd => base.join("kubepods.slice"),
        }
    }

    /// The directory of a pod's container cgroup in the cgroup v2 hierarchy (the one whose ids
    /// the kernel's programs report).
    pub fn container_cgroup_v2(&self, index: usize) -> PathBuf {
        self.hierarchies[0].join(&self.pods[index].container_cgroup)
    }

    /// Writes a cgroup file of a pod's container in every hierarchy that has it (e.g.
    /// `memory.limit_in_bytes` on v1, `memory.max` on v2); fails when none has it.
    pub fn cgroup_write(&self, index: usize, file: &str, value: &str) -> anyhow::Result<()> {
        let pod = &self.pods[index];
        let mut written = 0;
        for root in &self.hierarchies {
            let path = root.join(&pod.container_cgroup).join(file);
            if path.exists() {
                fs::write(&path, value).with_context(|| format!("writing {}", path.display()))?;
                written += 1;
            }
        }
        ensure!(written > 0, "no hierarchy has {file}");
        Ok(())
    }

    /// Limits the memory of a pod's container: v2 `memory.max` and v1
    /// `memory.limit_in_bytes`, whichever exist. Returns the files written.
    pub fn set_memory_limit(&self, index: usize, bytes: u64) -> anyhow::Result<Vec<PathBuf>> {
        let value = bytes.to_string();
        if let Some(cri) = self.backend.cri() {
            // Through the runtime, as kubelet resizes a container: runc writes the files.
            cri.update_resources(
                &self.pods[index],
                triage_agent_proto::cri::v1::LinuxContainerResources {
                    memory_limit_in_bytes: i64::try_from(bytes)?,
                    ..Default::default()
                },
            )?;
            return self.limit_files(index, &["memory.max", "memory.limit_in_bytes"]);
        }
        self.write_limit(
            index,
            &[("memory.max", &value), ("memory.limit_in_bytes", &value)],
        )
    }

    /// Limits the CPU of a pod's container to `quota_us` per `period_us`: v2 `cpu.max`, v1
    /// `cpu.cfs_period_us` and `cpu.cfs_quota_us`, whichever exist. Returns the files written.
    pub fn set_cpu_quota(
        &self,
        index: usize,
        quota_us: u64,
        period_us: u64,
    ) -> anyhow::Result<Vec<PathBuf>> {
        if let Some(cri) = self.backend.cri() {
            cri.update_resources(
                &self.pods[index],
                triage_agent_proto::cri::v1::LinuxContainerResources {
                    cpu_quota: i64::try_from(quota_us)?,
                    cpu_period: i64::try_from(period_us)?,
                    ..Default::default()
                },
            )?;
            return self.limit_files(index, &["cpu.max", "cpu.cfs_quota_us"]);
        }
        let (quota, period) = (quota_us.to_string(), period_us.to_string());
        let max = format!("{quota} {period}");
        self.write_limit(
            index,
            &[
                ("cpu.max", &max),
                // The period first: a quota is checked against the period in place.
                ("cpu.cfs_period_us", &period),
                ("cpu.cfs_quota_us", &quota),
            ],
        )
    }

    /// Which of `files` the container's cgroup has in any hierarchy (written by the runtime);
    /// fails when none.
    fn limit_files(&self, index: usize, files: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
        let pod = &self.pods[index];
        let found: Vec<PathBuf> = self
            .hierarchies
            .iter()
            .flat_map(|root| {
                files
                    .iter()
                    .map(move |f| root.join(&pod.container_cgroup).join(f))
            })
            .filter(|p| p.exists())
            .collect();
        ensure!(
            !found.is_empty(),
            "no cgroup of {}/{} has any of {}",
            pod.namespace,
            pod.name,
            files.join(", ")
        );
        Ok(found)
    }

    /// Writes each `(file, value)` that exists in the container's cgroup of any hierarchy, in
    /// order; fails when none exists (the controller is enabled nowhere for this cgroup).
    fn write_limit(&self, index: usize, files: &[(&str, &str)]) -> anyhow::Result<Vec<PathBuf>> {
        let pod = &self.pods[index];
        ensure!(!pod.netns.is_empty(), "pod was deleted");
        let written = write_existing(&self.hierarchies, &pod.container_cgroup, files)?;
        ensure!(
            !written.is_empty(),
            "no cgroup of {}/{} has any of {} (controller not enabled for it)",
            pod.namespace,
            pod.name,
            files.iter().map(|(f, _)| *f).collect::<Vec<_>>().join(", ")
        );
        Ok(written)
    }
}
