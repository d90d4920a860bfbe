//! Pod and container identity from a cgroup path, in every layout kubelet produces: both cgroup
//! drivers (cgroupfs and systemd), both cgroup versions, containerd / CRI-O / docker container
//! scope names. Pure string work; which path a cgroup id has is `cgroup::ids`'s job.
//!
//! - cgroupfs: `.../kubepods[/burstable|/besteffort]/pod<uid>/<container-id>`
//! - systemd:  `.../kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope`
//!   (also `crio-<id>.scope`, `docker-<id>.scope`; `crio-conmon-<id>.scope` is CRI-O's monitor,
//!   not the container)

/// What a cgroup path says about the pod it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupIdentity {
    /// Pod UID with dashes, as in metadata.uid.
    pub pod_uid: String,
    /// Container ID without runtime prefix; `None` for the pod-level cgroup (sandbox/pause).
    pub container_id: Option<String>,
}

/// Parses a cgroup path (absolute or relative to any cgroup mount) without knowing kubelet's
/// `--cgroup-root`: the pod is looked for at the first kubelet-shaped position anywhere in the
/// path. `None` when the path is not inside a kubelet pod cgroup (host processes, system
/// services).
///
/// The pod segment is taken only at its kubelet position: directly under `kubepods` (or
/// `kubepods.slice`, or `<root>-kubepods.slice` under a systemd root) or under its QoS level. A
/// container that can create sub-cgroups could otherwise name one `pod<victim-uid>` inside its
/// own cgroup and have its events attributed to the victim. The first kubelet-shaped position
/// wins: a container cannot create cgroups above its own, so anything it makes lies below the
/// real pod level. With the root known, [`KubeletLayout::parse`] needs no such rule: the pod
/// level is at one place only.
pub fn parse_cgroup_path(path: &str) -> Option<CgroupIdentity> {
    let segments = segments_of(path);
    segments.iter().enumerate().find_map(|(i, &segment)| {
        let prefix = segment
            .strip_suffix("kubepods.slice")
            .filter(|p| p.is_empty() || p.ends_with('-'));
        match (segment, prefix) {
            ("kubepods", _) => kubelet_pod_at(&segments, i, ""),
            (_, Some(prefix)) => kubelet_pod_at(&segments, i, prefix),
            _ => None,
        }
    })
}

fn segments_of(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

/// kubelet's `--cgroup-root` (the agent's `--kubelet-cgroup-root`), in cgroupfs notation
/// (`/`, `/kubelet`, `/a/b`) or as the systemd directory it names (`/kubelet.slice`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeletRoot {
    segments: Vec<String>,
}

/// One place the `kubepods` level can be under a [`KubeletRoot`]: the directory that holds it
/// (relative to a mount) and the systemd name prefix of its slices (`kubelet-` for
/// `kubelet-kubepods.slice`; empty for `kubepods` and `kubepods.slice`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anchor {
    pub dir: Vec<String>,
    pub prefix: String,
}

impl KubeletRoot {
    pub fn new(root: &std::path::Path) -> Self {
        KubeletRoot {
            segments: segments_of(&root.to_string_lossy())
                .into_iter()
                .map(str::to_owned)
                .collect(),
        }
    }

    /// Where kubelet puts `kubepods` under this root, either driver:
    /// - the root as directories: `<root>/kubepods/...` (cgroupfs) or `<root>/kubepods.slice/...`;
    /// - a root given as its systemd slice (`/kubelet.slice`):
    ///   `kubelet.slice/kubelet-kubepods.slice/...`;
    /// - a root given in cgroupfs notation that the systemd driver expands (kubelet's
    ///   `ConvertCgroupNameToSystemd`: `-` escaped to `_`, each level a slice named after all
    ///   above it), as kind's `/kubelet`: `kubelet.slice/kubelet-kubepods.slice/...`.
    pub fn anchors(&self) -> Vec<Anchor> {
        let mut out = vec![Anchor {
            dir: self.segments.clone(),
            prefix: String::new(),
        }];
        match self.segments.last() {
            None => {}
            Some(last) if last.ends_with(".slice") => {
                if let Some(stem) = last.strip_suffix(".slice").filter(|s| !s.is_empty()) {
                    out.push(Anchor {
                        dir: self.segments.clone(),
                        prefix: format!("{stem}-"),
                    });
                }
            }
            Some(_) if self.segments.iter().all(|s| !s.ends_with(".slice")) => {
                let mut dir = Vec::new();
                let mut name = String::new();
                for s in &self.segments {
                    if !name.is_empty() {
                        name.push('-');
                    }
                    name.push_str(&s.replace('-', "_"));
                    dir.push(format!("{name}.slice"));
                }
                out.push(Anchor {
                    dir,
                    prefix: format!("{name}-"),
                });
            }
            Some(_) => {}
        }
        out
    }
}

/// How to read a cgroup path: with kubelet's root known, the pod level is looked for only right
/// under it, in a path under one of the cgroup mounts; without it, [`parse_cgroup_path`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubeletLayout {
    /// `None`: the root is not known (`--kubelet-cgroup-root` not given).
    anchors: Option<Vec<Anchor>>,
    /// The mounts paths may start with (the cgroup2 mount); a path under none of them is
    /// taken as relative to a mount.
    mounts: Vec<Vec<String>>,
}

impl KubeletLayout {
    /// Pods anywhere (the root is not known).
    pub fn anywhere() -> Self {
        Self::default()
    }

    /// Pods under `root` only, in paths under one of `mounts`.
    pub fn under<P: AsRef<std::path::Path>>(
        root: &KubeletRoot,
        mounts: impl IntoIterator<Item = P>,
    ) -> Self {
        KubeletLayout {
            anchors: Some(root.anchors()),
            mounts: mounts
                .into_iter()
                .map(|m| {
                    segments_of(&m.as_ref().to_string_lossy())
                        .into_iter()
                        .map(str::to_owned)
                        .collect()
                })
                .filter(|m: &Vec<String>| !m.is_empty())
                .collect(),
        }
    }

    /// The pod a cgroup path belongs to. With the root known, a path outside it is no pod, and
    /// a pod level a container forged inside its own cgroup is below the real one, which is
    /// the one read.
    pub fn parse(&self, path: &str) -> Option<CgroupIdentity> {
        let Some(anchors) = &self.anchors else {
            return parse_cgroup_path(path);
        };
        let segments = segments_of(path);
        let rest = self
            .mounts
            .iter()
            .filter(|m| starts_with(&segments, m))
            .filter_map(|m| segments.get(m.len()..))
            .min_by_key(|rest| rest.len())
            .unwrap_or(&segments);
        anchors
            .iter()
            .filter(|a| starts_with(rest, &a.dir))
            .find_map(|a| kubelet_pod_at(rest, a.dir.len(), &a.prefix))
    }
}

fn starts_with(segments: &[&str], prefix: &[String]) -> bool {
    segments.len() >= prefix.len() && segments.iter().zip(prefix).all(|(s, p)| *s == p)
}

/// The pod identity if `segments[root]` is kubelet's `kubepods` level: `kubepods` (cgroupfs,
/// only with no `prefix`) or `<prefix>kubepods.slice` (systemd).
fn kubelet_pod_at(segments: &[&str], root: usize, prefix: &str) -> Option<CgroupIdentity> {
    let level = *segments.get(root)?;
    let (pod_index, pod_uid) = if prefix.is_empty() && level == "kubepods" {
        let mut at = root + 1;
        if matches!(segments.get(at), Some(&("burstable" | "besteffort"))) {
            at += 1;
        }
        let uid = segments.get(at)?.strip_prefix("pod")?.to_owned();
        (at, uid)
    } else if level.strip_prefix(prefix) == Some("kubepods.slice") {
        // <p>kubepods-pod<uid>.slice, or <p>kubepods-<qos>.slice/<p>kubepods-<qos>-pod<uid>.slice
        let base = format!("{prefix}kubepods");
        let mut at = root + 1;
        let mut pod = format!("{base}-pod");
        if let Some(qos) = segments.get(at).and_then(|s| qos_slice(s, &base)) {
            at += 1;
            pod = format!("{base}-{qos}-pod");
        }
        let uid = segments
            .get(at)?
            .strip_suffix(".slice")?
            .strip_prefix(pod.as_str())?
            .replace('_', "-");
        (at, uid)
    } else {
        return None;
    };
    if !is_uid(&pod_uid) {
        return None;
    }
    let container_id = segments.get(pod_index + 1).and_then(|s| container_id_of(s));
    Some(CgroupIdentity {
        pod_uid,
        container_id,
    })
}

/// `<base>-burstable.slice` -> `burstable` (systemd driver QoS level).
fn qos_slice(segment: &str, base: &str) -> Option<&'static str> {
    match segment.strip_prefix(base)?.strip_suffix(".slice")? {
        "-burstable" => Some("burstable"),
        "-besteffort" => Some("besteffort"),
        _ => None,
    }
}

/// Kubernetes UIDs are RFC 4122 UUIDs: 8-4-4-4-12 hex digits.
fn is_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A container's cgroup directory name to its ID: `<id>`, `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `docker-<id>.scope`, `cri-o-<id>`... `None` for anything else.
pub fn container_id_of(segment: &str) -> Option<String> {
    let base = segment.strip_suffix(".scope").unwrap_or(segment);
    if base.starts_with("crio-conmon-") {
        return None;
    }
    let id = [
        "cri-containerd-",
        "crio-",
        "cri-o-",
        "docker-",
        "containerd-",
    ]
    .iter()
    .find_map(|p| base.strip_prefix(p))
    .unwrap_or(base);
    // Runtimes use 64 hex digits; accept any reasonably long hex id.
    (id.len() >= 12 && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| id.to_ascii_lowercase())
}

/// Strips a runtime scheme from a container ID as pod status reports it
/// (`containerd://<id>`, `cri-o://<id>`, `docker://<id>`).
pub fn strip_runtime_scheme(id: &str) -> &str {
    id.split_once("://").map_or(id, |(_, rest)| rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f2b7a8e-1c3d-4e5f-8a9b-0c1d2e3f4a5b";
    const CID: &str = "3c5f9a1b2d4e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";

    fn id(container: Option<&str>) -> Option<CgroupIdentity> {
        Some(CgroupIdentity {
            pod_uid: UID.into(),
            container_id: container.map(Into::into),
        })
    }

    #[test]
    fn cgroupfs_driver_every_qos_v1_and_v2() {
        for qos in ["", "burstable/", "besteffort/"] {
            for root in [
                "/sys/fs/cgroup/",
                "/sys/fs/cgroup/memory/",
                "/sys/fs/cgroup/unified/",
                "/",
            ] {
                let path = format!("{root}kubepods/{qos}pod{UID}/{CID}");
                assert_eq!(parse_cgroup_path(&path), id(Some(CID)), "{path}");
                let pod_level = format!("{root}kubepods/{qos}pod{UID}");
                assert_eq!(parse_cgroup_path(&pod_level), id(None), "{pod_level}");
            }
        }
    }

    #[test]
    fn systemd_driver_every_runtime() {
        let uid_ = UID.replace('-', "_");
        for (qos_slice, pod_slice) in [
            ("", format!("kubepods-pod{uid_}.slice")),
            (
                "kubepods-burstable.slice/",
                format!("kubepods-burstable-pod{uid_}.slice"),
            ),
            (
                "kubepods-besteffort.slice/",
                format!("kubepods-besteffort-pod{uid_}.slice"),
            ),
        ] {
            for scope in [
                format!("cri-containerd-{CID}.scope"),
                format!("crio-{CID}.scope"),
                format!("docker-{CID}.scope"),
            ] {
                let path = format!("/sys/fs/cgroup/kubepods.slice/{qos_slice}{pod_slice}/{scope}");
                assert_eq!(parse_cgroup_path(&path), id(Some(CID)), "{path}");
            }
            let conmon = format!("/kubepods.slice/{qos_slice}{pod_slice}/crio-conmon-{CID}.scope");
            assert_eq!(
                parse_cgroup_path(&conmon),
                id(None),
                "conmon is not the container"
            );
        }
    }

    #[test]
    fn a_container_cannot_claim_another_pod_by_naming_a_sub_cgroup() {
        let victim_ = VICTIM.replace('-', "_");
        let uid_ = UID.replace('-', "_");
        for path in [
            format!("/kubepods/burstable/pod{UID}/{CID}/pod{VICTIM}/{CID}"),
            format!("/kubepods/pod{UID}/{CID}/kubepods/pod{VICTIM}/{CID}"),
            format!("/kubepods/pod{UID}/{CID}/kubepods/besteffort/pod{VICTIM}"),
            format!(
                "/kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{CID}.scope/kubepods-pod{victim_}.slice/x"
            ),
            format!(
                "/kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{CID}.scope/kubepods.slice/kubepods-pod{victim_}.slice"
            ),
        ] {
            assert_eq!(parse_cgroup_path(&path), id(Some(CID)), "{path}");
        }
        // A pod segment not at the kubelet position is no pod at all.
        assert_eq!(
            parse_cgroup_path(&format!("/kubepods/burstable/extra/pod{VICTIM}/{CID}")),
            None
        );
        assert_eq!(
            parse_cgroup_path(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-besteffort-pod{victim_}.slice"
            )),
            None,
            "systemd pod slice must match its QoS parent"
        );
    }

    #[test]
    fn nested_cgroups_inside_a_container_belong_to_it() {
        let path = format!("/kubepods/burstable/pod{UID}/{CID}/init.scope");
        assert_eq!(parse_cgroup_path(&path), id(Some(CID)));
    }

    #[test]
    fn custom_cgroup_root_prefix() {
        let path = format!("/sys/fs/cgroup/unified/sim-node-1/kubepods/pod{UID}/{CID}");
        assert_eq!(parse_cgroup_path(&path), id(Some(CID)));
    }

    #[test]
    fn not_pods() {
        for path in [
            "/",
            "",
            "/system.slice/containerd.service",
            "/user.slice/user-0.slice/session-1.scope",
            "/kubepods/burstable",
            "/kubepods.slice/kubepods-burstable.slice",
            &format!("/system.slice/pod{UID}"),
            "/kubepods/podnot-a-uid/abc",
            "/kubepods/pod0f2b7a8e-1c3d-4e5f-8a9b-0c1d2e3f4a5bX",
            "//kubepods//pod//",
        ] {
            assert_eq!(parse_cgroup_path(path), None, "{path}");
        }
    }

    #[test]
    fn non_container_child_is_pod_level() {
        let path = format!("/kubepods/pod{UID}/not-hex");
        assert_eq!(parse_cgroup_path(&path), id(None));
    }

    const VICTIM: &str = "9f2b7a8e-1c3d-4e5f-8a9b-0c1d2e3f4a5b";

    fn under(root: &str) -> KubeletLayout {
        KubeletLayout::under(
            &KubeletRoot::new(std::path::Path::new(root)),
            ["/sys/fs/cgroup"],
        )
    }

    /// kind's node: kubelet's `--cgroup-root=/kubelet` with the systemd driver.
    fn kind_path(qos: &str, uid: &str) -> String {
        let u = uid.replace('-', "_");
        match qos {
            "" => format!(
                "/sys/fs/cgroup/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{u}.slice/cri-containerd-{CID}.scope"
            ),
            qos => format!(
                "/sys/fs/cgroup/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-{qos}.slice/kubelet-kubepods-{qos}-pod{u}.slice/cri-containerd-{CID}.scope"
            ),
        }
    }

    #[test]
    fn systemd_driver_under_kinds_root() {
        for root in ["/kubelet", "kubelet/", "/kubelet.slice"] {
            let layout = under(root);
            for qos in ["", "burstable", "besteffort"] {
                let path = kind_path(qos, UID);
                assert_eq!(layout.parse(&path), id(Some(CID)), "{root} {path}");
            }
        }
        // Without the root, the `<root>-kubepods.slice` level is recognised too.
        assert_eq!(
            parse_cgroup_path(&kind_path("burstable", UID)),
            id(Some(CID))
        );
        // A deeper root, escaped as kubelet does.
        let path = format!(
            "/sys/fs/cgroup/a_b.slice/a_b-c.slice/a_b-c-kubepods.slice/a_b-c-kubepods-besteffort.slice/a_b-c-kubepods-besteffort-pod{}.slice/crio-{CID}.scope",
            UID.replace('-', "_")
        );
        assert_eq!(under("/a-b/c").parse(&path), id(Some(CID)));
        // The root as directories with kubelet's default slices below it.
        let path = format!(
            "/sys/fs/cgroup/kubelet/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{CID}.scope",
            UID.replace('-', "_")
        );
        assert_eq!(under("/kubelet").parse(&path), id(Some(CID)));
    }

    #[test]
    fn cgroupfs_driver_under_a_nested_root() {
        for (root, dir) in [("/kubelet", "kubelet"), ("/a/b", "a/b"), ("/", "")] {
            let layout = under(root);
            for qos in ["", "burstable/", "besteffort/"] {
                for mount in ["/sys/fs/cgroup/", "/"] {
                    let path = format!("{mount}{dir}/kubepods/{qos}pod{UID}/{CID}");
                    assert_eq!(layout.parse(&path), id(Some(CID)), "{root} {path}");
                    let pod_level = format!("{mount}{dir}/kubepods/{qos}pod{UID}");
                    assert_eq!(layout.parse(&pod_level), id(None), "{root} {pod_level}");
                }
            }
        }
    }

    #[test]
    fn under_a_root_a_forged_nested_pod_is_the_real_containers() {
        let victim_ = VICTIM.replace('-', "_");
        let cgroupfs = format!("/sys/fs/cgroup/kubelet/kubepods/burstable/pod{UID}/{CID}");
        for forged in [
            format!("{cgroupfs}/kubepods/besteffort/pod{VICTIM}/{CID}"),
            format!("{cgroupfs}/kubelet/kubepods/pod{VICTIM}/{CID}"),
            format!(
                "{cgroupfs}/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{victim_}.slice"
            ),
        ] {
            assert_eq!(under("/kubelet").parse(&forged), id(Some(CID)), "{forged}");
        }
        let systemd = kind_path("burstable", UID);
        for forged in [
            format!(
                "{systemd}/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{victim_}.slice/cri-containerd-{CID}.scope"
            ),
            format!("{systemd}/kubelet-kubepods.slice/kubelet-kubepods-pod{victim_}.slice/x"),
            format!("{systemd}/kubepods/besteffort/pod{VICTIM}/{CID}"),
            format!("{systemd}/kubepods.slice/kubepods-pod{victim_}.slice"),
        ] {
            assert_eq!(under("/kubelet").parse(&forged), id(Some(CID)), "{forged}");
            assert_eq!(parse_cgroup_path(&forged), id(Some(CID)), "{forged}");
        }
        // A container outside the root (kubelet runs with another root than the agent was
        // told) forging the root inside itself is no pod at all, never the victim.
        let misrooted =
            format!("/sys/fs/cgroup/kubepods/pod{UID}/{CID}/kubelet/kubepods/pod{VICTIM}/{CID}");
        assert_eq!(under("/kubelet").parse(&misrooted), None);
    }

    #[test]
    fn under_a_root_a_path_outside_it_is_not_a_pod() {
        let layout = under("/kubelet");
        for path in [
            format!("/sys/fs/cgroup/kubepods/burstable/pod{UID}/{CID}"),
            format!("/sys/fs/cgroup/system.slice/kubelet/kubepods/pod{UID}/{CID}"),
            format!("/sys/fs/cgroup/other/kubelet/kubepods/pod{UID}/{CID}"),
            format!(
                "/sys/fs/cgroup/kubepods.slice/kubepods-pod{}.slice/x",
                UID.replace('-', "_")
            ),
            "/sys/fs/cgroup/system.slice/containerd.service".to_owned(),
            "/sys/fs/cgroup/kubelet".to_owned(),
            "/sys/fs/cgroup/kubelet/kubepods/burstable".to_owned(),
            "/sys/fs/cgroup/kubelet.slice/kubelet-kubepods.slice".to_owned(),
        ] {
            assert_eq!(layout.parse(&path), None, "{path}");
        }
        // A systemd slice of another prefix is not kubelet's under this root.
        let other = kind_path("", UID).replace("kubelet", "other");
        assert_eq!(layout.parse(&other), None, "{other}");
    }

    #[test]
    fn anchors_of_roots() {
        let dirs = |root: &str| -> Vec<(String, String)> {
            KubeletRoot::new(std::path::Path::new(root))
                .anchors()
                .into_iter()
                .map(|a| (a.dir.join("/"), a.prefix))
                .collect()
        };
        assert_eq!(dirs("/"), [(String::new(), String::new())]);
        assert_eq!(
            dirs("/kubelet"),
            [
                ("kubelet".into(), String::new()),
                ("kubelet.slice".into(), "kubelet-".into())
            ]
        );
        assert_eq!(
            dirs("/kubelet.slice"),
            [
                ("kubelet.slice".into(), String::new()),
                ("kubelet.slice".into(), "kubelet-".into())
            ]
        );
    }

    #[test]
    fn runtime_schemes() {
        assert_eq!(strip_runtime_scheme("containerd://abc"), "abc");
        assert_eq!(strip_runtime_scheme("cri-o://abc"), "abc");
        assert_eq!(strip_runtime_scheme("abc"), "abc");
    }
}
