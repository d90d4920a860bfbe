//! Privileged end to end: pods made by a real container runtime (a private containerd, runc
//! and the CNI bridge plugin, driven through CRI as kubelet drives it) on the simulated node,
//! and the agent attributing their failures. Needs root; fails (never skips) without.

#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test scenarios panic with context"
)]

use std::{fs, path::Path};

use triage_agent_tests::{fixture::NodeFixture, simnode::PodRuntime};

/// The harness's own check: pods from containerd have kubelet's cgroupfs layout (the
/// container's cgroup is `<pod cgroup>/<runtime's container id>` in cgroup2 and in every v1
/// hierarchy), their main process is the runtime's (a child of its shim, not of the test), a
/// restart makes a new container in the same sandbox, and the node's teardown leaves nothing
/// behind (the node panics on drop otherwise).
#[test]
fn pods_from_containerd_have_kubelets_layout_and_a_restart_keeps_the_sandbox() {
    let fixture = NodeFixture::new()
        .runtime(PodRuntime::Containerd)
        .pod("shop", "web")
        .pod("shop", "db");
    let (mut node, [web, db]) = fixture.node().unwrap();
    let (w, d) = (node.pod(web), node.pod(db));
    assert_ne!(w.ip, d.ip);
    assert_eq!(w.container_id.len(), 64, "{}", w.container_id);
    let cgroup = node.container_cgroup_v2(web);
    assert!(
        cgroup.ends_with(format!("kubepods/besteffort/pod{}/{}", w.uid, w.container_id)),
        "{}",
        cgroup.display()
    );
    // The container's main process: busybox sleep, whose parent is containerd's shim.
    let procs = fs::read_to_string(cgroup.join("cgroup.procs")).unwrap();
    let main: u32 = procs.split_whitespace().next().unwrap().parse().unwrap();
    let stat = fs::read_to_string(format!("/proc/{main}/stat")).unwrap();
    let ppid: u32 = stat.rsplit(')').next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let parent = fs::read(format!("/proc/{ppid}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&parent).contains("containerd-shim-runc-v2"),
        "parent of {main}: {}",
        String::from_utf8_lossy(&parent)
    );
    // A process of the test joins the container and reaches the other pod over the bridge.
    let out = node
        .run(web, &["connect", &format!("{}:9", node.pod(db).ip), "1", "0"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    eprintln!("probe: {out:?}");
    let before = node.pod(web).container_id.clone();
    node.restart_container(web, false).unwrap();
    let after = node.pod(web);
    assert_ne!(after.container_id, before);
    assert_eq!(after.restart_count, 1);
    assert!(node.container_cgroup_v2(web).is_dir());
    assert!(!Path::new(&cgroup).exists(), "the old container's cgroup is gone");
}
