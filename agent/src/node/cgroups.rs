//! cgroup id -> cgroup path on this node. A cgroup v2 id is the kernfs inode of its directory;
//! the kernel resolves it directly through `open_by_handle_at` (needs CAP_DAC_READ_SEARCH),
//! and a walk of the cgroup2 tree is the fallback when that is not permitted.

use std::{
    collections::HashMap,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tracing::{debug, info};

use crate::attribute::CgroupPaths;

/// `FILEID_KERNFS` from include/linux/exportfs.h: a kernfs handle is the 64-bit node id.
const FILEID_KERNFS: i32 = 0xfe;
/// A fallback walk is not repeated more often than this (a miss on a vanished cgroup must not
/// turn into a walk per event).
const RESCAN_INTERVAL: Duration = Duration::from_secs(1);
/// Bounds of the fallback walk.
const MAX_DEPTH: usize = 16;
const MAX_ENTRIES: usize = 200_000;

#[repr(C)]
struct KernfsHandle {
    handle_bytes: u32,
    handle_type: i32,
    id: u64,
}

/// Where cgroup2 is mounted, from a mountinfo text: `/sys/fs/cgroup` on pure v2 nodes,
/// `/sys/fs/cgroup/unified` on hybrid ones.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// Resolves cgroup ids on the live system.
pub struct CgroupResolver {
    root: PathBuf,
    root_dir: Option<std::fs::File>,
    by_handle: bool,
    walked: HashMap<u64, String>,
    last_walk: Option<Instant>,
}

impl CgroupResolver {
    /// `root`: the cgroup2 mount (see [`cgroup2_mount`]).
    pub fn new(root: PathBuf) -> Self {
        let root_dir = std::fs::File::open(&root).ok();
        let mut r = CgroupResolver {
            root,
            root_dir,
            by_handle: true,
            walked: HashMap::new(),
            last_walk: None,
        };
        // Probe open_by_handle_at once with the root's own id.
        let root_id = std::fs::metadata(&r.root).map(|m| m.ino()).unwrap_or(0);
        r.by_handle = root_id != 0 && r.open_by_handle(root_id).is_some();
        info!(root = %r.root.display(), by_handle = r.by_handle, "cgroup id resolution");
        r
    }

    fn open_by_handle(&self, id: u64) -> Option<String> {
        let dir = self.root_dir.as_ref()?;
        let mut handle = KernfsHandle {
            handle_bytes: 8,
            handle_type: FILEID_KERNFS,
            id,
        };
        // SAFETY: handle is a valid file_handle with 8 bytes of payload; the returned fd is
        // owned and closed below.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                dir.as_raw_fd(),
                &mut handle as *mut KernfsHandle,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return None;
        }
        let fd = i32::try_from(fd).ok()?;
        let path = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok();
        // SAFETY: fd was returned by the kernel above and is closed exactly once.
        unsafe { libc::close(fd) };
        path.map(|p| p.to_string_lossy().into_owned())
    }

    fn walk(&mut self) {
        if self
            .last_walk
            .is_some_and(|t| t.elapsed() < RESCAN_INTERVAL)
        {
            return;
        }
        self.last_walk = Some(Instant::now());
        self.walked.clear();
        let mut stack = vec![(self.root.clone(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            if self.walked.len() >= MAX_ENTRIES {
                break;
            }
            if let Ok(meta) = std::fs::metadata(&dir) {
                self.walked
                    .insert(meta.ino(), dir.to_string_lossy().into_owned());
            }
            if depth >= MAX_DEPTH {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((entry.path(), depth + 1));
                }
            }
        }
        debug!(cgroups = self.walked.len(), "walked cgroup2 tree");
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl CgroupPaths for CgroupResolver {
    fn path(&mut self, id: u64) -> Option<String> {
        if self.by_handle {
            return self.open_by_handle(id);
        }
        if let Some(p) = self.walked.get(&id) {
            return Some(p.clone());
        }
        self.walk();
        self.walked.get(&id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_and_pure_mountinfo() {
        let hybrid = "35 25 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                      36 25 0:31 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure =
            "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup2_mount(pure), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_mount("garbage\n - \n"), None);
    }
}
