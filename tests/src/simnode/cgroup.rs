//! The simulated node's cgroups on either layout: a hybrid host (v1 memory, cpu and pids
//! hierarchies beside a controller-less cgroup2) or pure cgroup2, where the controllers pods
//! need are enabled down to them.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use super::note;

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
pub(super) fn enable_v2_controllers(root: &Path, dir: &Path) {
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
pub(super) fn write_existing(
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
