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

/// Parses a cgroup path (absolute or relative to any cgroup mount). `None` when the path is not
/// inside a kubelet pod cgroup (host processes, system services).
///
/// The pod segment is taken only at its kubelet position: directly under `kubepods` (or
/// `kubepods.slice`) or under its QoS level. A container that can create sub-cgroups could
/// otherwise name one `pod<victim-uid>` inside its own cgroup and have its events attributed to
/// the victim. The first kubelet-shaped position wins: a container cannot create cgroups above
/// its own, so anything it makes lies below the real pod level.
pub fn parse_cgroup_path(path: &str) -> Option<CgroupIdentity> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    (0..segments.len()).find_map(|i| kubelet_pod_at(&segments, i))
}

/// The pod identity if `segments[root]` is kubelet's `kubepods` level (either driver).
fn kubelet_pod_at(segments: &[&str], root: usize) -> Option<CgroupIdentity> {
    let (pod_index, pod_uid) = match *segments.get(root)? {
        "kubepods" => {
            let mut at = root + 1;
            if matches!(segments.get(at), Some(&("burstable" | "besteffort"))) {
                at += 1;
            }
            let uid = segments.get(at)?.strip_prefix("pod")?.to_owned();
            (at, uid)
        }
        "kubepods.slice" => {
            // kubepods-pod<uid>.slice, or kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice
            let mut at = root + 1;
            let mut prefix = "kubepods-pod".to_owned();
            if let Some(qos) = segments.get(at).and_then(|s| qos_slice(s)) {
                at += 1;
                prefix = format!("kubepods-{qos}-pod");
            }
            let uid = segments
                .get(at)?
                .strip_suffix(".slice")?
                .strip_prefix(prefix.as_str())?
                .replace('_', "-");
            (at, uid)
        }
        _ => return None,
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

/// `kubepods-burstable.slice` -> `burstable` (systemd driver QoS level).
fn qos_slice(segment: &str) -> Option<&'static str> {
    match segment {
        "kubepods-burstable.slice" => Some("burstable"),
        "kubepods-besteffort.slice" => Some("besteffort"),
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
        const VICTIM: &str = "9f2b7a8e-1c3d-4e5f-8a9b-0c1d2e3f4a5b";
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

    #[test]
    fn runtime_schemes() {
        assert_eq!(strip_runtime_scheme("containerd://abc"), "abc");
        assert_eq!(strip_runtime_scheme("cri-o://abc"), "abc");
        assert_eq!(strip_runtime_scheme("abc"), "abc");
    }
}
