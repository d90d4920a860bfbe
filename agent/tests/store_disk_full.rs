//! The evidence store on a disk that fills up, for real: a 256 KiB tmpfs, mounted in a private
//! mount namespace (so the mount never leaks to the host), filled to the last block by another
//! process (`dd`) while the store keeps recording. The backlog of changes waiting for the disk
//! stays within its bound, every record given up is counted (`store_backlog_full`), and once
//! the space is freed the newest state of every record kept is on disk. Needs root (as
//! `cargo xtask test` runs it); without root it fails, never skips.
//!
//! EIO is not covered: a device that starts failing I/O needs device-mapper's `error` target
//! (or a fault-injecting FUSE file system), which the test machines' kernels do not have. The
//! writer treats every failed commit the same way (SQLite's `SQLITE_FULL` and `SQLITE_IOERR`
//! take one path), so ENOSPC exercises it.
#![cfg(feature = "node-agent")]
#![expect(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test scenarios panic with context"
)]

use std::{
    collections::HashMap,
    ffi::CString,
    os::unix::ffi::OsStrExt as _,
    path::Path,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use triage_agent::{
    evidence::fixtures::refused,
    loss::{Counters, Loss},
    store::{
        DEFAULT_MAX_AGE, Store, StoreConfig,
        persist::{self, DEFAULT_MAX_BYTES, PersistConfig},
    },
};

/// The tmpfs's size: a few hundred records fill it.
const TMPFS_BYTES: usize = 256 * 1024;
/// The backlog's bound in this test (the agent's is `DEFAULT_MAX_PENDING`).
const MAX_PENDING: usize = 300;
/// Distinct records changed while the disk is full, each several times.
const RECORDS: u64 = 4000;
const CHANGES_PER_RECORD: u64 = 4;
/// Records written before the disk fills (an older state of theirs is on disk).
const EARLY: u64 = 50;

/// Puts the calling thread (and every thread and process it starts from now on) in a mount
/// namespace of its own, with no propagation back to the host's mounts.
fn private_mount_namespace() {
    // SAFETY: unshare with a flag only; CLONE_NEWNS is allowed in a multithreaded process
    // (it unshares the calling thread's filesystem context).
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNS) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNS): {} (this test needs root)",
        std::io::Error::last_os_error()
    );
    // SAFETY: valid NUL-terminated path; null source, type and data are allowed for a
    // propagation change.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    assert_eq!(
        rc,
        0,
        "making / private: {}",
        std::io::Error::last_os_error()
    );
}

/// A tmpfs of `bytes` on a temporary directory, unmounted when dropped (also when the test
/// fails), before the directory is removed.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(bytes: usize) -> Tmpfs {
        let dir = tempfile::tempdir().expect("temporary directory");
        let target = CString::new(dir.path().as_os_str().as_bytes()).unwrap();
        let options = CString::new(format!("size={bytes},mode=0700")).unwrap();
        // SAFETY: valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                options.as_ptr().cast(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mounting a tmpfs on {}: {}",
            dir.path().display(),
            std::io::Error::last_os_error()
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn free_bytes(&self) -> u64 {
        let path = CString::new(self.path().as_os_str().as_bytes()).unwrap();
        // SAFETY: statvfs fills the struct it is given; the path is NUL-terminated.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
        assert_eq!(rc, 0, "statvfs: {}", std::io::Error::last_os_error());
        st.f_bavail * st.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Ok(target) = CString::new(self.dir.path().as_os_str().as_bytes()) {
            // SAFETY: valid NUL-terminated path.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Fills the file system holding `path` to the last block, from another process.
fn fill(path: &Path) {
    let out = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", path.display()))
        .args(["bs=4096", "status=none"])
        .output()
        .expect("running dd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("No space left on device"),
        "dd should stop at a full disk: {:?} {stderr}",
        out.status
    );
}

fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pod(i: u64) -> String {
    format!("pod-{i}")
}

#[test]
fn a_full_disk_keeps_the_backlog_bounded_and_the_newest_state_reaches_it_after() {
    private_mount_namespace();
    let tmpfs = Tmpfs::mount(TMPFS_BYTES);
    let config = PersistConfig {
        path: tmpfs.path().join("evidence.db"),
        max_bytes: DEFAULT_MAX_BYTES,
        max_pending: MAX_PENDING,
    };
    let counters = Arc::new(Counters::default());
    let opened = persist::open(&config, counters.clone()).expect("opening the store");
    let health = opened.health;
    let mut store = Store::new(
        StoreConfig::new("n1", 100_000, DEFAULT_MAX_AGE),
        counters.clone(),
    );
    store.set_backend(Box::new(opened.backend));
    // The newest count of every record, as memory has it.
    let mut newest: HashMap<String, u64> = HashMap::new();
    let mut at = 1_000u64;
    let mut change = |store: &mut Store, i: u64, newest: &mut HashMap<String, u64>| {
        at += 1;
        store.record(
            refused()
                .pod_uid("shop", &pod(i), &format!("uid-{i}"))
                .at(at)
                .occurrence(),
        );
        *newest.entry(pod(i)).or_default() += 1;
    };

    // Some records reach the disk while it has room.
    for i in 0..EARLY {
        change(&mut store, i, &mut newest);
    }
    store.flush_backend();
    wait_for("the first commit", Duration::from_secs(10), || {
        health.get().pending == 0
    });
    assert_eq!(health.get().commits, 1);

    // Another process takes every block left.
    let filler = tmpfs.path().join("filler");
    fill(&filler);
    assert!(
        tmpfs.free_bytes() < 4096,
        "{} bytes still free",
        tmpfs.free_bytes()
    );

    // Thousands of changes, as the store task makes them (a flush now and then); the early
    // records change again last, so their newest state is among what is kept.
    let order: Vec<u64> = (EARLY..RECORDS).chain(0..EARLY).collect();
    let mut most_pending = 0;
    for (n, i) in order.iter().enumerate() {
        for _ in 0..CHANGES_PER_RECORD {
            change(&mut store, *i, &mut newest);
        }
        most_pending = most_pending.max(health.get().pending);
        assert!(
            health.get().pending <= MAX_PENDING as u64,
            "backlog over its bound: {:?}",
            health.get()
        );
        if n % 500 == 0 {
            store.flush_backend();
        }
    }
    store.flush_backend();
    wait_for("a failed commit", Duration::from_secs(20), || {
        health.get().error.is_some()
    });
    let error = health.get().error.unwrap_or_default();
    assert!(error.contains("full"), "{error}");
    assert_eq!(most_pending, MAX_PENDING as u64, "the bound was reached");
    assert_eq!(health.get().commits, 1, "nothing committed on a full disk");

    // The space comes back: the writer's next retry writes what it kept.
    std::fs::remove_file(&filler).expect("removing the filler");
    store.flush_backend();
    wait_for("the backlog to be written", Duration::from_secs(60), || {
        let s = health.get();
        s.pending == 0 && s.error.is_none()
    });
    let lost = counters.get(Loss::StoreBacklogFull);
    if let Some(b) = store.take_backend() {
        b.close();
    }

    // What is on disk: the newest state of each record kept; every other one counted.
    let rows = persist::read_only(&config.path).expect("reading the store back");
    let on_disk: HashMap<String, u64> = rows
        .iter()
        .map(|(_, e)| (e.pod().expect("a pod's record").name.clone(), e.count))
        .collect();
    let current = newest
        .iter()
        .filter(|(name, count)| on_disk.get(*name) == Some(count))
        .count() as u64;
    assert_eq!(
        lost,
        RECORDS - current,
        "every record whose newest state is not on disk is counted, and only those"
    );
    assert!(
        lost >= RECORDS - EARLY - MAX_PENDING as u64,
        "records were given up"
    );
    // The most recently changed records are never the ones given up.
    for i in order.iter().rev().take(MAX_PENDING) {
        assert_eq!(
            on_disk.get(&pod(*i)),
            newest.get(&pod(*i)),
            "{} lacks its newest state",
            pod(*i)
        );
    }
    drop(tmpfs);
}
