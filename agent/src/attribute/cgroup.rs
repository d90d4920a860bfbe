//! Pod and container identity from a cgroup path, in every layout kubelet produces: both cgroup
//! drivers (cgroupfs and systemd), both cgroup versions, containerd / CRI-O / docker container
//! scope names. Pure string work; which path a cgroup id has is [`super::cgroup_ids`]'s job.
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
pub fn parse_cgroup_path(path: &str) -> Option<CgroupIdentity> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // The pod segment is the last one that names a pod: kubelet can be configured with a
    // --cgroup-root that itself contains "kubepods", the pod level is always below it.
    let (index, pod_uid) = segments
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, s)| pod_uid_of(s).map(|uid| (i, uid)))?;
    // Only trust it below a kubepods level, so a host cgroup that happens to be named
    // "pod<uuid>" is not taken for a pod.
    if !segments
        .get(..index)?
        .iter()
        .any(|s| s.starts_with("kubepods"))
    {
        return None;
    }
    let container_id = segments.get(index + 1).and_then(|s| container_id_of(s));
    Some(CgroupIdentity {
        pod_uid,
        container_id,
    })
}

/// `pod<uid>` (cgroupfs) or `kubepods[-qos]-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid_of(segment: &str) -> Option<String> {
    let raw = if let Some(rest) = segment.strip_suffix(".slice") {
        let at = rest.rfind("-pod")?;
        if !rest.starts_with("kubepods") {
            return None;
        }
        rest.get(at + 4..)?
    } else {
        segment.strip_prefix("pod")?
    };
    let uid = raw.replace('_', "-");
    is_uid(&uid).then_some(uid)
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
fn container_id_of(segment: &str) -> Option<String> {
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
