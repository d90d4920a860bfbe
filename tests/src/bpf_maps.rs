//! The agent's eBPF maps, read and written from outside with bpf(2) (the map ids in the
//! agent's fdinfo, fds by id, lookups and updates), for tests that put the kernel side into a
//! state only a race or a run the kernel skipped can make: what the agent then does with it is
//! the real code's. Needs CAP_SYS_ADMIN (root).

use std::os::fd::{FromRawFd as _, OwnedFd, RawFd};

use anyhow::{Context as _, bail};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// `union bpf_attr`, large enough for every command the tests and the bench use (unused bytes
/// zero).
#[repr(C, align(8))]
pub struct Attr([u8; 128]);

impl Default for Attr {
    fn default() -> Attr {
        Attr([0; 128])
    }
}

impl Attr {
    pub fn new() -> Attr {
        Attr::default()
    }

    pub fn put_u32(&mut self, at: usize, v: u32) {
        if let Some(b) = self.0.get_mut(at..at + 4) {
            b.copy_from_slice(&v.to_ne_bytes());
        }
    }

    pub fn put_bytes(&mut self, at: usize, v: &[u8]) {
        if let Some(b) = self.0.get_mut(at..at + v.len()) {
            b.copy_from_slice(v);
        }
    }

    pub fn put_u64(&mut self, at: usize, v: u64) {
        if let Some(b) = self.0.get_mut(at..at + 8) {
            b.copy_from_slice(&v.to_ne_bytes());
        }
    }
}

/// bpf(2): `cmd` with `attr`; the kernel's return value (a new fd for the commands that make
/// one).
pub fn bpf(cmd: libc::c_long, attr: &mut Attr) -> std::io::Result<libc::c_long> {
    // SAFETY: bpf(2) reads and writes at most `size` bytes of `attr`, which is that large;
    // pointers inside it point to buffers the callers keep alive for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            attr.0.len() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A map of the running kernel, opened by id.
pub struct Map {
    fd: OwnedFd,
    pub name: String,
    pub key_size: usize,
    pub value_size: usize,
}

impl Map {
    fn open(id: u32) -> anyhow::Result<Map> {
        let mut attr = Attr::new();
        attr.put_u32(0, id);
        let fd = bpf(BPF_MAP_GET_FD_BY_ID, &mut attr).context("BPF_MAP_GET_FD_BY_ID")?;
        // SAFETY: a new fd the kernel just returned, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        // struct bpf_map_info: type, id, key_size, value_size, max_entries, map_flags, name[16]
        let mut info = [0u8; 88];
        let mut attr = Attr::new();
        attr.put_u32(0, std::os::fd::AsRawFd::as_raw_fd(&fd) as u32);
        attr.put_u32(4, info.len() as u32);
        attr.put_u64(8, info.as_mut_ptr() as u64);
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).context("BPF_OBJ_GET_INFO_BY_FD")?;
        let word = |at: usize| {
            let mut b = [0; 4];
            b.copy_from_slice(&info[at..at + 4]);
            u32::from_ne_bytes(b) as usize
        };
        let name = &info[24..40];
        let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
        Ok(Map {
            name: String::from_utf8_lossy(&name[..end]).into_owned(),
            key_size: word(8),
            value_size: word(12),
            fd,
        })
    }

    /// The map named `name` that process `pid` holds open (an agent's own map: every agent
    /// running on the node has one of that name, and each sees every socket).
    pub fn of_process(pid: u32, name: &str) -> anyhow::Result<Map> {
        let dir = format!("/proc/{pid}/fdinfo");
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
            let Ok(info) = std::fs::read_to_string(entry?.path()) else {
                continue;
            };
            let id = info
                .lines()
                .find_map(|l| l.strip_prefix("map_id:"))
                .and_then(|v| v.trim().parse::<u32>().ok());
            if let Some(id) = id
                && let Ok(map) = Map::open(id)
                && map.name == name
            {
                return Ok(map);
            }
        }
        bail!("process {pid} holds no map named {name}")
    }

    fn raw_fd(&self) -> u32 {
        std::os::fd::AsRawFd::as_raw_fd(&self.fd) as u32
    }

    /// Every (key, value) of a hash map.
    pub fn entries(&self) -> anyhow::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut key: Option<Vec<u8>> = None;
        loop {
            let mut next = vec![0u8; self.key_size];
            let mut attr = Attr::new();
            attr.put_u32(0, self.raw_fd());
            attr.put_u64(8, key.as_ref().map_or(0, |k| k.as_ptr() as u64));
            attr.put_u64(16, next.as_mut_ptr() as u64);
            match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
                Err(e) => return Err(e).context("BPF_MAP_GET_NEXT_KEY"),
            }
            if let Some(value) = self.get(&next)? {
                out.push((next.clone(), value));
            }
            key = Some(next);
        }
    }

    /// The value at `key`, if any.
    pub fn get(&self, key: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        if key.len() != self.key_size {
            bail!(
                "{}: key of {} bytes, not {}",
                self.name,
                key.len(),
                self.key_size
            );
        }
        let mut value = vec![0u8; self.value_size];
        let mut attr = Attr::new();
        attr.put_u32(0, self.raw_fd());
        attr.put_u64(8, key.as_ptr() as u64);
        attr.put_u64(16, value.as_mut_ptr() as u64);
        match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
            Ok(_) => Ok(Some(value)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e).context("BPF_MAP_LOOKUP_ELEM"),
        }
    }

    /// Writes `value` at `key` (created or replaced).
    pub fn put(&self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        if key.len() != self.key_size || value.len() != self.value_size {
            bail!("{}: key or value of the wrong size", self.name);
        }
        let mut attr = Attr::new();
        attr.put_u32(0, self.raw_fd());
        attr.put_u64(8, key.as_ptr() as u64);
        attr.put_u64(16, value.as_ptr() as u64);
        attr.put_u64(24, 0); // BPF_ANY
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).context("BPF_MAP_UPDATE_ELEM")?;
        Ok(())
    }
}
