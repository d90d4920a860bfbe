//! Where a container's cgroup files are on this node: which hierarchy each controller is on
//! (pure v2, or a v1/v2 hybrid whose memory and cpu controllers are on v1), and where kubelet
//! puts a pod's cgroup (either driver, every QoS class) under its cgroup root.

use std::path::{Path, PathBuf};

use crate::cgroup::path::{KubeletRoot, container_id_of};

/// The cgroup version a controller is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    pub fn name(self) -> &'static str {
        match self {
            Version::V1 => "cgroup v1",
            Version::V2 => "cgroup v2",
        }
    }
}

/// A controller's hierarchy: its mount and version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    pub mount: PathBuf,
    pub version: Version,
}

/// The hierarchies the samplers read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hierarchies {
    /// The cpu controller (throttling counters and limits).
    pub cpu: Option<Hierarchy>,
    /// The memory controller (OOM counters, limits).
    pub memory: Option<Hierarchy>,
    /// The cgroup2 mount, for PSI (`cpu.pressure`), which works there even when the
    /// controllers are bound to v1.
    pub unified: Option<PathBuf>,
}

impl Hierarchies {
    /// From a mountinfo text and the controllers the cgroup2 root offers
    /// (`cgroup.controllers`): a v1 hierarchy with the controller wins (on a hybrid host the
    /// controller is bound there); else v2 when it offers the controller.
    pub fn from_mountinfo(mountinfo: &str, v2_controllers: impl Fn(&Path) -> String) -> Self {
        let mut out = Hierarchies::default();
        let mut v1_cpu = None;
        let mut v1_memory = None;
        for m in crate::kernel::mountinfo::mounts(mountinfo) {
            let mount = m.point;
            match m.fstype {
                "cgroup2" if out.unified.is_none() => out.unified = Some(PathBuf::from(mount)),
                "cgroup" if m.has_option("cpu") && v1_cpu.is_none() => {
                    v1_cpu = Some(PathBuf::from(mount));
                }
                "cgroup" if m.has_option("memory") && v1_memory.is_none() => {
                    v1_memory = Some(PathBuf::from(mount));
                }
                _ => {}
            }
        }
        let v2_has = |c: &str| {
            out.unified
                .as_deref()
                .is_some_and(|m| v2_controllers(m).split_whitespace().any(|x| x == c))
        };
        let pick = |v1: Option<PathBuf>, c: &str| match v1 {
            Some(mount) => Some(Hierarchy {
                mount,
                version: Version::V1,
            }),
            None if v2_has(c) => out.unified.clone().map(|mount| Hierarchy {
                mount,
                version: Version::V2,
            }),
            None => None,
        };
        out.cpu = pick(v1_cpu, "cpu");
        out.memory = pick(v1_memory, "memory");
        out
    }

    /// This node's, from /proc/self/mountinfo.
    pub fn detect() -> Hierarchies {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Self::from_mountinfo(&mountinfo, |m| {
            std::fs::read_to_string(m.join("cgroup.controllers")).unwrap_or_default()
        })
    }
}

/// Where kubelet may have put a pod's cgroup, relative to a hierarchy's mount, under kubelet's
/// `--cgroup-root` (each of the root's [`KubeletRoot::anchors`]): cgroupfs driver
/// `kubepods[/burstable|/besteffort]/pod<uid>`, systemd driver
/// `<p>kubepods.slice[/<p>kubepods-<qos>.slice]/<p>kubepods[-<qos>]-pod<uid_>.slice`.
pub fn pod_dir_candidates(root: &KubeletRoot, uid: &str) -> Vec<PathBuf> {
    let u = uid.replace('-', "_");
    let mut out = Vec::new();
    for anchor in root.anchors() {
        let dir: PathBuf = anchor.dir.iter().collect();
        if anchor.prefix.is_empty() {
            let k = dir.join("kubepods");
            out.push(k.join(format!("pod{uid}")));
            out.push(k.join("burstable").join(format!("pod{uid}")));
            out.push(k.join("besteffort").join(format!("pod{uid}")));
        }
        let base = format!("{}kubepods", anchor.prefix);
        let s = dir.join(format!("{base}.slice"));
        out.push(s.join(format!("{base}-pod{u}.slice")));
        for qos in ["burstable", "besteffort"] {
            out.push(
                s.join(format!("{base}-{qos}.slice"))
                    .join(format!("{base}-{qos}-pod{u}.slice")),
            );
        }
    }
    out
}

/// The cgroup that holds every pod of this kubelet under `mount` (a cgroup2 mount), either
/// driver: `<root>/kubepods`, `<root>/kubepods.slice`, or a systemd root's
/// `<p>kubepods.slice` (each of the root's [`KubeletRoot::anchors`]); the first that exists.
/// Programs attached there run for the sockets of every pod, hostNetwork pods included (their
/// processes live in pod cgroups too), and of no node daemon.
pub fn pods_cgroup(mount: &Path, root: &KubeletRoot) -> Option<PathBuf> {
    root.anchors().into_iter().find_map(|anchor| {
        let dir: PathBuf = anchor.dir.iter().collect();
        let mut names = Vec::new();
        if anchor.prefix.is_empty() {
            names.push("kubepods".to_owned());
        }
        names.push(format!("{}kubepods.slice", anchor.prefix));
        names
            .into_iter()
            .map(|n| mount.join(&dir).join(n))
            .find(|p| p.is_dir())
    })
}

/// Finds a pod's cgroup under `mount` and its containers' directories (relative to `mount`),
/// for the container IDs asked for. One `stat` per candidate and one directory listing.
pub fn find_containers(
    mount: &Path,
    root: &KubeletRoot,
    uid: &str,
    ids: &[&str],
) -> Vec<(String, PathBuf)> {
    let Some(pod) = pod_dir_candidates(root, uid)
        .into_iter()
        .find(|c| mount.join(c).is_dir())
    else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(mount.join(&pod)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let id = container_id_of(name.to_str()?)?;
            ids.contains(&id.as_str()).then(|| (id, pod.join(&name)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
30 1 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
33 30 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
    const PURE_V2: &str = "30 1 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";

    #[test]
    fn hybrid_and_pure_v2() {
        let h = Hierarchies::from_mountinfo(HYBRID, |_| String::new());
        assert_eq!(h.cpu.as_ref().map(|h| h.version), Some(Version::V1));
        assert_eq!(
            h.memory.as_ref().map(|h| h.mount.clone()),
            Some("/sys/fs/cgroup/memory".into())
        );
        assert_eq!(h.unified, Some("/sys/fs/cgroup/unified".into()));
        let v2 = Hierarchies::from_mountinfo(PURE_V2, |_| "cpuset cpu io memory pids".into());
        assert_eq!(v2.cpu.as_ref().map(|h| h.version), Some(Version::V2));
        assert_eq!(
            v2.memory.map(|h| h.mount),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let none = Hierarchies::from_mountinfo(PURE_V2, |_| "pids".into());
        assert!(none.cpu.is_none() && none.memory.is_none());
    }

    #[test]
    fn both_drivers_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let uid = "0f2b7a8e-1c3d-4e5f-8a9b-0c1d2e3f4a5b";
        let cid = "ab".repeat(32);
        let systemd = dir.path().join(format!(
            "sim/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{cid}.scope",
            uid.replace('-', "_")
        ));
        std::fs::create_dir_all(&systemd).unwrap();
        let found = find_containers(dir.path(), &root("/sim"), uid, &[&cid]);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, cid);
        assert!(dir.path().join(&found[0].1).is_dir());
        let other = find_containers(dir.path(), &root("/"), uid, &[&cid]);
        assert!(other.is_empty(), "another kubelet root");
    }

    #[test]
    fn the_pods_cgroup_is_found_for_either_driver() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(pods_cgroup(dir.path(), &root("/")), None, "no kubelet here");
        std::fs::create_dir_all(dir.path().join("sim/kubepods/besteffort")).unwrap();
        assert_eq!(
            pods_cgroup(dir.path(), &root("/sim")),
            Some(dir.path().join("sim/kubepods"))
        );
        assert_eq!(pods_cgroup(dir.path(), &root("/")), None, "another root");
        std::fs::create_dir_all(dir.path().join("kubepods.slice")).unwrap();
        assert_eq!(
            pods_cgroup(dir.path(), &root("/")),
            Some(dir.path().join("kubepods.slice"))
        );
        // kind's `--cgroup-root=/kubelet` under the systemd driver.
        std::fs::create_dir_all(dir.path().join("kubelet.slice/kubelet-kubepods.slice")).unwrap();
        assert_eq!(
            pods_cgroup(dir.path(), &root("/kubelet")),
            Some(dir.path().join("kubelet.slice/kubelet-kubepods.slice"))
        );
        // A file of that name is not a cgroup.
        let file = tempfile::tempdir().unwrap();
        std::fs::write(file.path().join("kubepods"), "").unwrap();
        assert_eq!(pods_cgroup(file.path(), &root("/")), None);
    }

    fn root(r: &str) -> KubeletRoot {
        KubeletRoot::new(Path::new(r))
    }

    #[test]
    fn kinds_systemd_root_and_a_nested_cgroupfs_root_are_found() {
        let uid = "0f2b7a8e-1c3d-4e5f-8a9b-0c1d2e3f4a5b";
        let u = uid.replace('-', "_");
        let cid = "cd".repeat(32);
        for (kubelet_root, dir) in [
            (
                "/kubelet",
                format!(
                    "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{u}.slice/cri-containerd-{cid}.scope"
                ),
            ),
            (
                "/kubelet.slice",
                format!(
                    "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{u}.slice/cri-containerd-{cid}.scope"
                ),
            ),
            ("/a/b", format!("a/b/kubepods/burstable/pod{uid}/{cid}")),
        ] {
            let mount = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(mount.path().join(&dir)).unwrap();
            let found = find_containers(mount.path(), &root(kubelet_root), uid, &[&cid]);
            assert_eq!(
                found,
                [(cid.clone(), PathBuf::from(&dir))],
                "{kubelet_root}"
            );
            // What the samplers find, attribution reads as the same pod under the same root.
            let path = mount.path().join(&found[0].1);
            let layout =
                crate::cgroup::path::KubeletLayout::under(&root(kubelet_root), [mount.path()]);
            let id = layout.parse(&path.to_string_lossy()).unwrap();
            assert_eq!(
                (id.pod_uid.as_str(), id.container_id.as_deref()),
                (uid, Some(cid.as_str()))
            );
        }
    }
}
