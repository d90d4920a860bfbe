//! cgroup id -> cgroup path on this node. A cgroup v2 id is the kernfs inode of its directory.
//! With CAP_DAC_READ_SEARCH the kernel resolves an id directly (`open_by_handle_at`); the
//! DaemonSet does not grant that capability (it is the one behind a known container-escape
//! technique), so normally a walk of the cgroup2 tree maps ids to paths. The walk runs on its own
//! thread, never on the async runtime: a lookup that misses asks for a walk and answers
//! "pending", and the event waits in attribution until the walk is done. An id that a walk
//! started after the first lookup did not find is gone.

use std::{
    collections::HashMap,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use tracing::{debug, info, warn};

use super::{CgroupPaths, PathLookup};
use crate::loss::{Counters, Loss};

/// `FILEID_KERNFS` from include/linux/exportfs.h: a kernfs handle is the 64-bit node id.
const FILEID_KERNFS: i32 = 0xfe;
/// Walks start at most this often (a miss on a vanished cgroup must not turn into a walk per
/// event).
const RESCAN_INTERVAL: Duration = Duration::from_secs(1);
/// Bounds of the walk: levels below the cgroup2 root (kubelet's containers are 3 to 6 levels
/// down; a cgroup nested deeper than this inside a container is attributed by its IP), and
/// directories in all.
const MAX_DEPTH: usize = 64;
const MAX_ENTRIES: usize = 200_000;
/// Bound on the ids waiting for a walk.
const MAX_ASKED: usize = 8192;

#[repr(C)]
struct KernfsHandle {
    handle_bytes: u32,
    handle_type: i32,
    id: u64,
}

/// Where cgroup2 is mounted, from a mountinfo text: `/sys/fs/cgroup` on pure v2 nodes,
/// `/sys/fs/cgroup/unified` on hybrid ones.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    crate::kernel::mountinfo::mounts(mountinfo)
        .find(|m| m.fstype == "cgroup2")
        .map(|m| PathBuf::from(m.point))
}

/// What the walker thread found.
#[derive(Default)]
struct Walked {
    paths: HashMap<u64, String>,
    /// When the latest completed walk started.
    completed: Option<Instant>,
    running: bool,
}

/// Walks the cgroup2 tree on its own thread, on request.
struct Walker {
    walked: Arc<Mutex<Walked>>,
    requests: mpsc::SyncSender<()>,
    /// When each missing id was first asked about.
    asked: HashMap<u64, Instant>,
}

impl Walker {
    fn start(root: PathBuf, counters: Arc<Counters>) -> std::io::Result<Walker> {
        let walked = Arc::new(Mutex::new(Walked::default()));
        let (requests, rx) = mpsc::sync_channel::<()>(1);
        let shared = walked.clone();
        std::thread::Builder::new()
            .name("cgroup-walk".into())
            .spawn(move || {
                let mut last_start: Option<Instant> = None;
                // Ends when the resolver (the sender) is dropped.
                while rx.recv().is_ok() {
                    if let Some(wait) =
                        last_start.map(|t| RESCAN_INTERVAL.saturating_sub(t.elapsed()))
                    {
                        std::thread::sleep(wait);
                    }
                    let start = Instant::now();
                    last_start = Some(start);
                    let paths = walk(&root, &counters);
                    debug!(cgroups = paths.len(), "walked cgroup2 tree");
                    let mut w = shared
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    w.paths = paths;
                    w.completed = Some(start);
                    w.running = false;
                }
            })?;
        Ok(Walker {
            walked,
            requests,
            asked: HashMap::new(),
        })
    }

    fn lookup(&mut self, id: u64) -> PathLookup {
        let now = Instant::now();
        let mut w = self
            .walked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(path) = w.paths.get(&id) {
            self.asked.remove(&id);
            return PathLookup::Found(path.clone());
        }
        if self.asked.len() >= MAX_ASKED {
            self.asked.clear();
        }
        let first_asked = *self.asked.entry(id).or_insert(now);
        if w.completed.is_some_and(|started| started >= first_asked) {
            self.asked.remove(&id);
            return PathLookup::Missing;
        }
        if !w.running {
            w.running = true;
            if self.requests.try_send(()).is_err() {
                // A request is already queued; the walk it starts serves this id too.
            }
        }
        PathLookup::Pending
    }
}

/// Every cgroup directory under `root` by inode, up to the bounds (hitting the entry cap is
/// counted as [`Loss::CgroupWalkCapped`]).
///
/// A path longer than the kernel's PATH_MAX (4096 bytes: a pod can nest cgroups with long
/// names below its container) cannot be opened by name; such a directory is opened through
/// its parent's descriptor (`/proc/self/fd/N/name`, a short path), so depth, not length, is
/// what bounds the walk. At most [`MAX_DEPTH`] descriptors are held at once.
fn walk(root: &Path, counters: &Counters) -> HashMap<u64, String> {
    /// Paths at least this long are opened through their parent's descriptor.
    const LONG: usize = 3072;
    struct Dir {
        /// The cgroup's path, as attribution parses it.
        path: String,
        /// A path that opens it (its own, or one through its parent's descriptor).
        open: PathBuf,
        /// The parent's descriptor, kept open while `open` goes through it.
        _parent: Option<Arc<std::fs::File>>,
        depth: usize,
    }
    let mut found = HashMap::new();
    let mut stack = vec![Dir {
        path: root.to_string_lossy().into_owned(),
        open: root.to_path_buf(),
        _parent: None,
        depth: 0,
    }];
    while let Some(dir) = stack.pop() {
        if found.len() >= MAX_ENTRIES {
            counters.add(Loss::CgroupWalkCapped, 1);
            warn!(cap = MAX_ENTRIES, "cgroup tree walk stopped at its cap");
            break;
        }
        if let Ok(meta) = std::fs::metadata(&dir.open) {
            found.insert(meta.ino(), dir.path.clone());
        }
        if dir.depth >= MAX_DEPTH {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir.open) else {
            continue;
        };
        // Opened only when a child's path is long.
        let mut held: Option<(Arc<std::fs::File>, PathBuf)> = None;
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name();
            let path = format!("{}/{}", dir.path, name.to_string_lossy());
            let (open, parent) = if path.len() >= LONG {
                if held.is_none() {
                    let Ok(file) = std::fs::File::open(&dir.open) else {
                        continue;
                    };
                    let through = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
                    held = Some((Arc::new(file), through));
                }
                let Some((file, through)) = &held else {
                    continue;
                };
                (through.join(&name), Some(file.clone()))
            } else {
                (PathBuf::from(&path), None)
            };
            stack.push(Dir {
                path,
                open,
                _parent: parent,
                depth: dir.depth + 1,
            });
        }
    }
    found
}

/// Resolves cgroup ids on the live system.
pub struct CgroupResolver {
    root: PathBuf,
    /// The cgroup2 root, when ids resolve through `open_by_handle_at`.
    by_handle: Option<std::fs::File>,
    walker: Option<Walker>,
}

impl CgroupResolver {
    /// `root`: the cgroup2 mount (see [`cgroup2_mount`]).
    pub fn new(root: PathBuf, counters: Arc<Counters>) -> std::io::Result<Self> {
        let root_dir = std::fs::File::open(&root)?;
        // Probe open_by_handle_at once with the root's own id.
        let root_id = std::fs::metadata(&root)?.ino();
        let by_handle = open_by_handle(&root_dir, root_id).is_some();
        info!(root = %root.display(), by_handle, "cgroup id resolution");
        let walker = if by_handle {
            None
        } else {
            Some(Walker::start(root.clone(), counters)?)
        };
        Ok(CgroupResolver {
            root,
            by_handle: by_handle.then_some(root_dir),
            walker,
        })
    }

    /// Resolution by walking only (what the DaemonSet gets without CAP_DAC_READ_SEARCH).
    pub fn walking(root: PathBuf, counters: Arc<Counters>) -> std::io::Result<Self> {
        Ok(CgroupResolver {
            walker: Some(Walker::start(root.clone(), counters)?),
            root,
            by_handle: None,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

fn open_by_handle(dir: &std::fs::File, id: u64) -> Option<String> {
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
    let path = path_of(fd);
    // SAFETY: fd was returned by the kernel above and is closed exactly once.
    unsafe { libc::close(fd) };
    path
}

/// Ancestors climbed at most to name a cgroup whose path is longer than PATH_MAX.
const MAX_CLIMB: usize = 64;

/// The path of the directory `fd`. A path longer than PATH_MAX (a container can nest cgroups
/// that deep below its own) has no name the kernel will print: then the nearest ancestor that
/// has one, with `/...` for the levels below it. Pod and container lie near the root, so the
/// identity is still read from it.
fn path_of(fd: i32) -> Option<String> {
    let read = |fd: i32| std::fs::read_link(format!("/proc/self/fd/{fd}"));
    match read(fd) {
        Ok(p) => return Some(p.to_string_lossy().into_owned()),
        Err(e) if e.raw_os_error() != Some(libc::ENAMETOOLONG) => return None,
        Err(_) => {}
    }
    let mut current = fd;
    let mut found = None;
    for _ in 0..MAX_CLIMB {
        // SAFETY: `current` is an open directory fd; the path is a NUL-terminated literal.
        let parent = unsafe {
            libc::openat(
                current,
                c"..".as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if current != fd {
            // SAFETY: an fd this loop opened, closed once.
            unsafe { libc::close(current) };
        }
        if parent < 0 {
            return None;
        }
        current = parent;
        match read(current) {
            Ok(p) => {
                found = Some(format!("{}/...", p.to_string_lossy()));
                break;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENAMETOOLONG) => {}
            Err(_) => break,
        }
    }
    if current != fd {
        // SAFETY: as above.
        unsafe { libc::close(current) };
    }
    found
}

impl CgroupPaths for CgroupResolver {
    fn path(&mut self, id: u64) -> PathLookup {
        if let Some(dir) = &self.by_handle {
            return open_by_handle(dir, id).map_or(PathLookup::Missing, PathLookup::Found);
        }
        match &mut self.walker {
            Some(w) => w.lookup(id),
            None => PathLookup::Missing,
        }
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

    #[test]
    fn a_path_past_path_max_is_named_by_its_nearest_printable_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        let pod = "kubepods/burstable/pod12345678-1234-1234-1234-123456789abc";
        let container = "a".repeat(64);
        let top = dir.path().join(pod).join(&container);
        std::fs::create_dir_all(&top).unwrap();
        let open = |at: i32, name: &std::ffi::CStr| {
            // SAFETY: `at` is an open directory (or AT_FDCWD); `name` is NUL-terminated.
            unsafe {
                libc::openat(
                    at,
                    name.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                )
            }
        };
        let top_c = std::ffi::CString::new(top.to_string_lossy().as_bytes()).unwrap();
        let mut fd = open(libc::AT_FDCWD, &top_c);
        assert!(fd >= 0);
        // 17 levels of 255-byte names: more than PATH_MAX below the container.
        let name = std::ffi::CString::new("d".repeat(255)).unwrap();
        for _ in 0..17 {
            // SAFETY: fd is an open directory; name is NUL-terminated.
            assert_eq!(unsafe { libc::mkdirat(fd, name.as_ptr(), 0o755) }, 0);
            let next = open(fd, &name);
            // SAFETY: closes the fd opened above, once.
            unsafe { libc::close(fd) };
            assert!(next >= 0);
            fd = next;
        }
        let path = path_of(fd).expect("a name for the deep directory");
        // SAFETY: closes the last fd, once.
        unsafe { libc::close(fd) };
        assert!(path.starts_with(&*top.to_string_lossy()), "{path}");
        assert!(path.ends_with("/..."), "{path}");
        let id = crate::cgroup::path::parse_cgroup_path(&path).unwrap();
        assert_eq!(id.container_id.as_deref(), Some(container.as_str()));
    }

    #[test]
    fn a_walk_finds_directories_past_path_max_and_names_them_in_full() {
        let dir = tempfile::tempdir().unwrap();
        let name = "n".repeat(250);
        // 20 levels of 250-byte names: past PATH_MAX, so each is made through its parent's
        // descriptor, as the walk opens them.
        let mut parent = std::fs::File::open(dir.path()).unwrap();
        for _ in 0..20 {
            let through = format!("/proc/self/fd/{}/{name}", parent.as_raw_fd());
            std::fs::create_dir(&through).unwrap();
            parent = std::fs::File::open(&through).unwrap();
        }
        let deepest = parent.metadata().unwrap().ino();
        let found = walk(dir.path(), &Counters::default());
        let path = found.get(&deepest).expect("the deepest directory is found");
        assert!(path.len() > 4096, "{}", path.len());
        assert!(path.starts_with(&*dir.path().to_string_lossy()));
        assert_eq!(path.matches(&name).count(), 20);
        assert_eq!(found.len(), 21);
    }

    #[test]
    fn walking_resolves_after_a_pending_answer_and_knows_what_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let pod = dir.path().join("kubepods/podx/c1");
        std::fs::create_dir_all(&pod).unwrap();
        let id = std::fs::metadata(&pod).unwrap().ino();
        let counters = Arc::new(Counters::default());
        let mut r = CgroupResolver::walking(dir.path().to_path_buf(), counters).unwrap();
        assert_eq!(r.path(id), PathLookup::Pending, "never blocks on a walk");
        let deadline = Instant::now() + Duration::from_secs(5);
        let found = loop {
            match r.path(id) {
                PathLookup::Pending if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => break other,
            }
        };
        assert_eq!(found, PathLookup::Found(pod.to_string_lossy().into_owned()));
        // An id no walk finds is gone once a walk that started after the question is done.
        let gone = u64::MAX;
        assert_eq!(r.path(gone), PathLookup::Pending);
        let answer = loop {
            match r.path(gone) {
                PathLookup::Pending if Instant::now() < deadline + RESCAN_INTERVAL => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => break other,
            }
        };
        assert_eq!(answer, PathLookup::Missing);
    }
}
