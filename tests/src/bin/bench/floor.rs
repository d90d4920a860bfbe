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
//!
//! With `--hold-empty-hooks classify` the cgroup_skb programs are not empty but do the least
//! any DNS capture at those hooks must do for every packet: read the IP version, the protocol
//! and both ports from the packet, and compare the ports with 53 ([`CLASSIFY`], 20-odd
//! instructions, nothing kept and nothing sent). A goal above its ratio cannot be met by a
//! DNS capture there, whatever it does with the packets it finds.

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
/// After [`HOLD_ARG`]: [`CLASSIFY`] at the cgroup_skb hooks instead of empty programs.
pub const CLASSIFY_ARG: &str = "classify";

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

/// One instruction: opcode, destination and source registers, offset, immediate.
const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let o = off.to_le_bytes();
    let i = imm.to_le_bytes();
    [
        code,
        (src << 4) | (dst & 0x0f),
        o[0],
        o[1],
        i[0],
        i[1],
        i[2],
        i[3],
    ]
}

// Opcodes (BPF class | size or operation | source).
const LDX_W: u8 = 0x61; // r_dst = *(u32 *)(r_src + off)
const LDX_H: u8 = 0x69; // r_dst = *(u16 *)(r_src + off)
const LDX_B: u8 = 0x71; // r_dst = *(u8 *)(r_src + off)
const MOV_X: u8 = 0xbf; // r_dst = r_src
const MOV_K: u8 = 0xb7; // r_dst = imm
const ADD_K: u8 = 0x07; // r_dst += imm
const RSH_K: u8 = 0x77; // r_dst >>= imm
const JGT_X: u8 = 0x2d; // if r_dst > r_src: pc += off
const JEQ_K: u8 = 0x15; // if r_dst == imm: pc += off
const JNE_K: u8 = 0x55; // if r_dst != imm: pc += off
const JA: u8 = 0x05; // pc += off
const EXIT: u8 = 0x95;

/// `__sk_buff.data` and `__sk_buff.data_end`.
const SKB_DATA: i16 = 76;
const SKB_DATA_END: i16 = 80;
/// Port 53 as a 16-bit load of its network-order bytes reads on this (little-endian) host.
const PORT_53_LOADED: i32 = u16::from_ne_bytes(53u16.to_be_bytes()) as i32;

/// The classifier for `--hold-empty-hooks classify`, as a cgroup_skb program (r1 is the
/// `__sk_buff`, the packet starts at the IP header): IPv4 without options or IPv6, UDP or TCP,
/// either port 53. Jump offsets count from the next instruction.
const CLASSIFY: [[u8; 8]; 27] = [
    insn(LDX_W, 2, 1, SKB_DATA, 0),       // 0: r2 = data
    insn(LDX_W, 3, 1, SKB_DATA_END, 0),   // 1: r3 = data_end
    insn(MOV_X, 4, 2, 0, 0),              // 2
    insn(ADD_K, 4, 0, 0, 24),             // 3: r4 = data + 24 (IPv4 header and both ports)
    insn(JGT_X, 4, 3, 18, 0),             // 4: short packet -> 23 (not DNS)
    insn(LDX_B, 5, 2, 0, 0),              // 5: r5 = version and header length
    insn(JEQ_K, 5, 0, 9, 0x45),           // 6: IPv4 without options -> 16
    insn(RSH_K, 5, 0, 0, 4),              // 7
    insn(JNE_K, 5, 0, 14, 6),             // 8: not IPv6 either -> 23
    insn(MOV_X, 4, 2, 0, 0),              // 9
    insn(ADD_K, 4, 0, 0, 44),             // 10: r4 = data + 44 (IPv6 header and both ports)
    insn(JGT_X, 4, 3, 11, 0),             // 11: short -> 23
    insn(LDX_B, 5, 2, 6, 0),              // 12: r5 = next header
    insn(LDX_H, 6, 2, 40, 0),             // 13: r6 = source port
    insn(LDX_H, 7, 2, 42, 0),             // 14: r7 = destination port
    insn(JA, 0, 0, 3, 0),                 // 15: -> 19
    insn(LDX_B, 5, 2, 9, 0),              // 16: r5 = protocol
    insn(LDX_H, 6, 2, 20, 0),             // 17: r6 = source port
    insn(LDX_H, 7, 2, 22, 0),             // 18: r7 = destination port
    insn(JEQ_K, 5, 0, 1, 17),             // 19: UDP -> 21
    insn(JNE_K, 5, 0, 2, 6),              // 20: nor TCP -> 23
    insn(JEQ_K, 6, 0, 3, PORT_53_LOADED), // 21: -> 25 (DNS)
    insn(JEQ_K, 7, 0, 2, PORT_53_LOADED), // 22: -> 25 (DNS)
    insn(MOV_K, 0, 0, 0, 1),              // 23: not DNS: let it through
    insn(EXIT, 0, 0, 0, 0),               // 24
    insn(MOV_K, 0, 0, 0, 1),              // 25: DNS: let it through too (found, nothing kept)
    insn(EXIT, 0, 0, 0, 0),               // 26
];

/// Loads `r0 = ret; exit` as a program of `prog_type`.
fn load_empty(prog_type: u32, expected_attach: u32, ret: i32) -> anyhow::Result<OwnedFd> {
    load(
        prog_type,
        expected_attach,
        &[insn(MOV_K, 0, 0, 0, ret), insn(EXIT, 0, 0, 0, 0)],
        "loading an empty program",
    )
}

/// Loads `insns` as a program of `prog_type`.
fn load(
    prog_type: u32,
    expected_attach: u32,
    insns: &[[u8; 8]],
    what: &str,
) -> anyhow::Result<OwnedFd> {
    let license = CString::new("GPL")?;
    let mut attr = Attr::default();
    attr.put_u32(0, prog_type);
    attr.put_u32(4, insns.len() as u32);
    attr.put_u64(8, insns.as_ptr() as u64);
    attr.put_u64(16, license.as_ptr() as u64);
    attr.0[48..58].copy_from_slice(b"empty_hook");
    attr.put_u32(68, expected_attach);
    bpf(BPF_PROG_LOAD, &mut attr, what)
}

/// Attaches an empty program to every hook of the agent, or [`CLASSIFY`] to its cgroup_skb
/// hooks with `classify`; the descriptors keep them attached.
pub fn attach_all(classify: bool) -> anyhow::Result<Vec<OwnedFd>> {
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
                let prog = if classify {
                    load(
                        BPF_PROG_TYPE_CGROUP_SKB,
                        attach,
                        &CLASSIFY,
                        "loading the DNS classifier",
                    )?
                } else {
                    load_empty(BPF_PROG_TYPE_CGROUP_SKB, attach, 1)?
                };
                held.extend(link(
                    prog,
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
            held.extend(link(
                load_empty(BPF_PROG_TYPE_SCHED_CLS, attach, TCX_NEXT)?,
                attach,
                ifindex,
                &format!("attaching TCX to {name}"),
            )?);
        }
    }
    Ok(held)
}

/// Links `prog` to `target` (a cgroup's descriptor or an interface index) with
/// `BPF_LINK_CREATE`: the program and its link.
fn link(prog: OwnedFd, attach: u32, target: u32, what: &str) -> anyhow::Result<[OwnedFd; 2]> {
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

/// `bench --hold-empty-hooks`: attaches, says so, and holds until interrupted, or until the
/// bench that started it dies (killed mid-run, it must not leave programs on the hooks to
/// slow down every later measurement).
pub fn hold() -> anyhow::Result<()> {
    // SAFETY: prctl with integer arguments, on this process only.
    let set = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    anyhow::ensure!(
        set == 0,
        "prctl(PR_SET_PDEATHSIG): {}",
        std::io::Error::last_os_error()
    );
    // The bench may have died before the signal was asked for: then this was reparented.
    // SAFETY: no preconditions.
    if unsafe { libc::getppid() } == 1 {
        anyhow::bail!("the bench that started this holder is gone");
    }
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
        None => attach_all(args.iter().any(|a| a == CLASSIFY_ARG))?,
    };
    println!("{READY} ({} descriptors)", held.len());
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs [`CLASSIFY`] over `packet` with the few instructions it uses, as the kernel would
    /// (packet loads little-endian, as on the hosts it runs on): the index of the `exit` it
    /// reached. Out-of-bounds packet loads fail the test, as the verifier would refuse them.
    fn exit_reached(packet: &[u8]) -> usize {
        let mut r = [0u64; 11];
        // r1: the context; its data and data_end are offsets into `packet` here.
        let (data, data_end) = (0u64, packet.len() as u64);
        let mut pc = 0usize;
        for _ in 0..100 {
            let [code, regs, o0, o1, i0, i1, i2, i3] = CLASSIFY[pc];
            let (dst, src) = (usize::from(regs & 0x0f), usize::from(regs >> 4));
            let off = i16::from_le_bytes([o0, o1]);
            let imm = i32::from_le_bytes([i0, i1, i2, i3]);
            let jump = |taken: bool| {
                if taken {
                    (pc as i64 + 1 + i64::from(off)) as usize
                } else {
                    pc + 1
                }
            };
            let at = |base: u64, width: usize| {
                let start = (base as i64 + i64::from(off)) as usize;
                assert!(
                    start + width <= packet.len(),
                    "load past the packet at {pc}"
                );
                let mut v = [0u8; 8];
                v[..width].copy_from_slice(&packet[start..start + width]);
                u64::from_le_bytes(v)
            };
            pc = match code {
                LDX_W if src == 1 => {
                    r[dst] = match off {
                        SKB_DATA => data,
                        SKB_DATA_END => data_end,
                        other => panic!("context offset {other}"),
                    };
                    pc + 1
                }
                LDX_H => {
                    r[dst] = at(r[src], 2);
                    pc + 1
                }
                LDX_B => {
                    r[dst] = at(r[src], 1);
                    pc + 1
                }
                MOV_X => {
                    r[dst] = r[src];
                    pc + 1
                }
                MOV_K => {
                    r[dst] = imm as u64;
                    pc + 1
                }
                ADD_K => {
                    r[dst] = r[dst].wrapping_add(imm as u64);
                    pc + 1
                }
                RSH_K => {
                    r[dst] >>= imm;
                    pc + 1
                }
                JGT_X => jump(r[dst] > r[src]),
                JEQ_K => jump(r[dst] == imm as u64),
                JNE_K => jump(r[dst] != imm as u64),
                JA => jump(true),
                EXIT => return pc,
                other => panic!("opcode {other:#x} at {pc}"),
            };
        }
        panic!("no exit within 100 steps");
    }

    /// An IPv4 (no options) or IPv6 packet with `protocol` and both ports, padded to `len`.
    fn packet(v6: bool, protocol: u8, sport: u16, dport: u16, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len.max(48)];
        let ports = if v6 {
            p[0] = 0x60;
            p[6] = protocol;
            40
        } else {
            p[0] = 0x45;
            p[9] = protocol;
            20
        };
        p[ports..ports + 2].copy_from_slice(&sport.to_be_bytes());
        p[ports + 2..ports + 4].copy_from_slice(&dport.to_be_bytes());
        p.truncate(len);
        p
    }

    const NOT_DNS: usize = 24;
    const DNS: usize = 26;

    #[test]
    fn the_classifier_finds_dns_packets_and_only_them() {
        for v6 in [false, true] {
            for protocol in [17, 6] {
                assert_eq!(exit_reached(&packet(v6, protocol, 40000, 53, 64)), DNS);
                assert_eq!(exit_reached(&packet(v6, protocol, 53, 40000, 64)), DNS);
                assert_eq!(
                    exit_reached(&packet(v6, protocol, 40000, 5353, 64)),
                    NOT_DNS
                );
                assert_eq!(
                    exit_reached(&packet(v6, protocol, 13568, 40000, 64)),
                    NOT_DNS
                );
            }
            // ICMP, whatever sits where ports would be.
            assert_eq!(exit_reached(&packet(v6, 1, 53, 53, 64)), NOT_DNS);
        }
        // Too short to hold both ports: never read past the end.
        assert_eq!(exit_reached(&packet(false, 17, 1, 53, 23)), NOT_DNS);
        assert_eq!(exit_reached(&packet(true, 17, 1, 53, 43)), NOT_DNS);
        assert_eq!(exit_reached(&packet(true, 17, 1, 53, 44)), DNS);
        // IPv4 with options: not followed (as the agent's fast path), not DNS here.
        let mut options = packet(false, 17, 1, 53, 64);
        options[0] = 0x46;
        assert_eq!(exit_reached(&options), NOT_DNS);
    }
}
