//! The floor of the agent's design: a program that does nothing, attached to every hook the
//! agent uses ([`triage_agent::probes::PROGRAMS`]). Whatever the agent's programs do, a flood
//! cannot keep more of its rate than with these, so a goal above the floor's ratio cannot be
//! met by any work done at those hooks, only by hooking fewer or other places.
//!
//! The bench runs this as a peer: itself, with `--hold-empty-hooks`, in a child process that
//! loads the empty programs with the bpf(2) syscall (two instructions each, no toolchain),
//! attaches them, says so, and holds them until it is interrupted (closing its descriptors
//! detaches everything).
//!
//! - raw tracepoints: `BPF_RAW_TRACEPOINT_OPEN`, for the agent's raw tracepoints and also for
//!   its classic one (a raw tracepoint costs less than a classic one, so the floor stays a
//!   lower bound);
//! - cgroup_skb egress and ingress on the cgroup2 root, as the agent's DNS programs, through
//!   `BPF_LINK_CREATE` (Linux 5.7+), which runs beside any other program there.
//!
//! With `--hold-empty-hooks tcx IFACE,...` it holds empty TCX programs (Linux 6.6+) on both
//! directions of those interfaces instead: the floor of the other way to capture DNS, tc on
//! the pods' interfaces, for the DNS scenario to measure beside the cgroup hooks.

use std::{
    ffi::CString,
    os::fd::{FromRawFd as _, OwnedFd},
};

use anyhow::Context as _;
use triage_agent::probes::{Hook, PROGRAMS};

/// The argument that makes the bench binary hold the empty programs.
pub const HOLD_ARG: &str = "--hold-empty-hooks";
/// What the holder prints once every program is attached.
pub const READY: &str = "empty programs attached";
/// After [`HOLD_ARG`]: TCX programs on the comma-separated interfaces that follow.
pub const TCX_ARG: &str = "tcx";

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_CGROUP_SKB: u32 = 8;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
const BPF_CGROUP_INET_INGRESS: u32 = 0;
const BPF_CGROUP_INET_EGRESS: u32 = 1;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
/// A TCX program's "carry on as if I were not here".
const TCX_NEXT: i32 = -1;

/// `union bpf_attr`, as zeroed 8-byte words wide enough for the three commands used.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Default for Attr {
    fn default() -> Self {
        Attr([0; 128])
    }
}

impl Attr {
    fn put_u32(&mut self, offset: usize, value: u32) {
        self.0[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
    }

    fn put_u64(&mut self, offset: usize, value: u64) {
        self.0[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr, what: &str) -> anyhow::Result<OwnedFd> {
    // SAFETY: attr is a valid, initialized bpf_attr of the size passed; the kernel reads it
    // and any pointers inside it, which point to live buffers of the caller.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            attr.0.len() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context(what.to_owned());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Loads `r0 = ret; exit` as a program of `prog_type`.
fn load_empty(prog_type: u32, expected_attach: u32, ret: i32) -> anyhow::Result<OwnedFd> {
    // BPF_ALU64 | BPF_MOV | BPF_K to r0, then BPF_JMP | BPF_EXIT.
    let mut mov = [0u8; 8];
    mov[0] = 0xb7;
    mov[4..].copy_from_slice(&ret.to_ne_bytes());
    let exit = [0x95u8, 0, 0, 0, 0, 0, 0, 0];
    let insns = [mov, exit];
    let license = CString::new("GPL")?;
    let mut attr = Attr::default();
    attr.put_u32(0, prog_type);
    attr.put_u32(4, 2);
    attr.put_u64(8, insns.as_ptr() as u64);
    attr.put_u64(16, license.as_ptr() as u64);
    attr.0[48..58].copy_from_slice(b"empty_hook");
    attr.put_u32(68, expected_attach);
    bpf(BPF_PROG_LOAD, &mut attr, "loading an empty program")
}

/// Attaches an empty program to every hook of the agent; the descriptors keep them attached.
pub fn attach_all() -> anyhow::Result<Vec<OwnedFd>> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let cgroup_root = triage_agent::kernel::mountinfo::mounts(&mountinfo)
        .find(|m| m.fstype == "cgroup2")
        .map(|m| m.point.to_owned())
        .context("no cgroup2 mount")?;
    let mut held = Vec::new();
    for program in PROGRAMS {
        match program.hook {
            Hook::RawTracePoint { name } | Hook::TracePoint { name, .. } => {
                let prog = load_empty(BPF_PROG_TYPE_RAW_TRACEPOINT, 0, 0)?;
                let name_c = CString::new(name)?;
                let mut attr = Attr::default();
                attr.put_u64(0, name_c.as_ptr() as u64);
                attr.put_u32(8, raw_fd(&prog));
                let link = bpf(
                    BPF_RAW_TRACEPOINT_OPEN,
                    &mut attr,
                    &format!("attaching to raw tracepoint {name}"),
                )?;
                held.extend([prog, link]);
            }
            Hook::CgroupSkb { egress } => {
                let attach = if egress {
                    BPF_CGROUP_INET_EGRESS
                } else {
                    BPF_CGROUP_INET_INGRESS
                };
                let root = std::fs::File::open(&cgroup_root)
                    .with_context(|| format!("opening {cgroup_root}"))?;
                // cgroup_skb programs return 1: let the packet through.
                held.extend(link_empty(
                    BPF_PROG_TYPE_CGROUP_SKB,
                    1,
                    attach,
                    std::os::fd::AsRawFd::as_raw_fd(&root) as u32,
                    &format!("attaching cgroup_skb to {cgroup_root}"),
                )?);
            }
        }
    }
    Ok(held)
}

/// Attaches an empty TCX program to both directions of each interface (names in this network
/// namespace).
pub fn attach_tcx(interfaces: &[&str]) -> anyhow::Result<Vec<OwnedFd>> {
    let mut held = Vec::new();
    for name in interfaces {
        let name_c = CString::new(*name)?;
        // SAFETY: a NUL-terminated name that outlives the call.
        let ifindex = unsafe { libc::if_nametoindex(name_c.as_ptr()) };
        if ifindex == 0 {
            anyhow::bail!("no interface {name} here");
        }
        for attach in [BPF_TCX_INGRESS, BPF_TCX_EGRESS] {
            held.extend(link_empty(
                BPF_PROG_TYPE_SCHED_CLS,
                TCX_NEXT,
                attach,
                ifindex,
                &format!("attaching TCX to {name}"),
            )?);
        }
    }
    Ok(held)
}

/// Loads an empty program returning `ret` and links it to `target` (a cgroup's descriptor or
/// an interface index) with `BPF_LINK_CREATE`: the program and its link.
fn link_empty(
    prog_type: u32,
    ret: i32,
    attach: u32,
    target: u32,
    what: &str,
) -> anyhow::Result<[OwnedFd; 2]> {
    let prog = load_empty(prog_type, attach, ret)?;
    let mut attr = Attr::default();
    attr.put_u32(0, raw_fd(&prog));
    attr.put_u32(4, target);
    attr.put_u32(8, attach);
    let link = bpf(BPF_LINK_CREATE, &mut attr, what)?;
    Ok([prog, link])
}

fn raw_fd(fd: &OwnedFd) -> u32 {
    std::os::fd::AsRawFd::as_raw_fd(fd) as u32
}

/// `bench --hold-empty-hooks`: attaches, says so, and holds until interrupted.
pub fn hold() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let tcx = args
        .iter()
        .position(|a| a == TCX_ARG)
        .map(|i| args.get(i + 1).map(String::as_str).unwrap_or_default());
    let held = match tcx {
        Some(list) => attach_tcx(
            &list
                .split(',')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>(),
        )?,
        None => attach_all()?,
    };
    println!("{READY} ({} descriptors)", held.len());
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
