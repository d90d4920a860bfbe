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
//! - raw tracepoints: `BPF_RAW_TRACEPOINT_OPEN`, as the agent's;
//! - cgroup_skb egress and ingress where the agent's DNS programs hang (`--at-cgroup`: the
//!   pods' cgroup; the cgroup2 root without it), through `BPF_LINK_CREATE` (Linux 5.7+), which
//!   runs beside any other program there.
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
//!
//! With `--hold-empty-hooks match` they do the least any exact matching of answers to queries
//! at those hooks must do on top ([`matcher`]): a query leaving its socket stores its key
//! (client port and DNS id) in a slot of an array, one cache line per slot, the slot chosen by
//! a multiplicative hash of the key; an answer arriving loads the slot of its key and, when the
//! key is there, clears it. No clock, no counter, no cgroup, no address compared and nothing
//! sent: whatever an exact matcher keeps about a lookup, it must at least carry something
//! from the query's packet to the answer's, and the answer is often handled on another CPU (in
//! the server's send). IPv4 UDP without options (the DNS floods' packets); every other packet
//! gets the classifier's header checks and goes through. A goal above its ratio cannot be met
//! by exact matching at those hooks.

use std::{
    ffi::CString,
    os::fd::{FromRawFd as _, OwnedFd},
};

use anyhow::Context as _;
use triage_agent::probes::{Hook, PROGRAMS};
use triage_agent_tests::bpf_maps::{self, Attr};

/// The argument that makes the bench binary hold the empty programs.
pub const HOLD_ARG: &str = "--hold-empty-hooks";
/// What the holder prints once every program is attached.
pub const READY: &str = "empty programs attached";
/// After [`HOLD_ARG`]: TCX programs on the comma-separated interfaces that follow.
pub const TCX_ARG: &str = "tcx";
/// After [`HOLD_ARG`]: [`CLASSIFY`] at the cgroup_skb hooks instead of empty programs.
pub const CLASSIFY_ARG: &str = "classify";
/// After [`HOLD_ARG`]: [`matcher`] at the cgroup_skb hooks instead of empty programs.
pub const MATCH_ARG: &str = "match";
/// After [`HOLD_ARG`]: the cgroup the cgroup_skb programs hang on (the next argument; default
/// the cgroup2 root), the one the agent hangs its own on.
pub const AT_CGROUP_ARG: &str = "--at-cgroup";

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
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

/// bpf(2) for a command that makes a descriptor (`triage_agent_tests::bpf_maps::bpf`).
fn bpf(cmd: libc::c_long, attr: &mut Attr, what: &str) -> anyhow::Result<OwnedFd> {
    let fd = bpf_maps::bpf(cmd, attr).context(what.to_owned())?;
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
const LDX_DW: u8 = 0x79; // r_dst = *(u64 *)(r_src + off)
const STX_DW: u8 = 0x7b; // *(u64 *)(r_dst + off) = r_src
const ST_DW: u8 = 0x7a; // *(u64 *)(r_dst + off) = imm
const LD_IMM64: u8 = 0x18; // r_dst = a 64-bit value over two instructions (here: a map value)
const ADD_X: u8 = 0x0f; // r_dst += r_src
const OR_X: u8 = 0x4f; // r_dst |= r_src
const LSH_K: u8 = 0x67; // r_dst <<= imm
const MOV32_X: u8 = 0xbc; // w_dst = w_src (upper half zeroed)
const MUL32_K: u8 = 0x24; // w_dst *= imm
const RSH32_K: u8 = 0x74; // w_dst >>= imm
const JSET_K: u8 = 0x45; // if r_dst & imm: pc += off
const JNE_X: u8 = 0x5d; // if r_dst != r_src: pc += off
/// `src_reg` of an `LD_IMM64` whose immediates are a map's descriptor and an offset into its
/// one value: the address of that value.
const PSEUDO_MAP_VALUE: u8 = 2;

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

/// Slots of the [`matcher`]'s array: one 64-byte line each (256 KiB, as one value).
const MATCH_SLOTS_LOG2: i32 = 12;
const MATCH_SLOT_BYTES_LOG2: i32 = 6;
const MATCH_VALUE_BYTES: u32 = 1 << (MATCH_SLOTS_LOG2 + MATCH_SLOT_BYTES_LOG2);
/// Multiplier of the slot hash (2^32 / golden ratio): the slot is the product's top bits.
const MATCH_HASH: i32 = 0x9e37_79b1_u32 as i32;
/// A jump to the program's end (let the packet through), resolved by [`matcher`].
const TO_PASS: i16 = i16::MIN;

/// The least exact matcher, as a cgroup_skb program for `egress` (queries leaving) or
/// ingress (answers arriving), with the slots in the one value of the array map `map_fd`.
/// The key is the client's port and the DNS id as loaded from the packet (the same 32 bits
/// either way round); r6..r9 hold source port, destination port, id and the flags' first byte.
fn matcher(egress: bool, map_fd: i32) -> Vec<[u8; 8]> {
    let mut p = vec![
        insn(LDX_W, 2, 1, SKB_DATA, 0),     // r2 = data
        insn(LDX_W, 3, 1, SKB_DATA_END, 0), // r3 = data_end
        insn(MOV_X, 4, 2, 0, 0),            //
        insn(ADD_K, 4, 0, 0, 32),           // r4 = data + 32 (through the DNS flags)
        insn(JGT_X, 4, 3, TO_PASS, 0),      // short
        insn(LDX_B, 5, 2, 0, 0),            //
        insn(JNE_K, 5, 0, TO_PASS, 0x45),   // not IPv4 without options
        insn(LDX_B, 5, 2, 9, 0),            //
        insn(JNE_K, 5, 0, TO_PASS, 17),     // not UDP
        insn(LDX_H, 6, 2, 20, 0),           // r6 = source port
        insn(LDX_H, 7, 2, 22, 0),           // r7 = destination port
        insn(LDX_H, 8, 2, 28, 0),           // r8 = DNS id
        insn(LDX_B, 9, 2, 30, 0),           // r9 = DNS flags, first byte (QR is 0x80)
    ];
    // (the client's port register) for the key.
    let client = if egress {
        p.extend([
            insn(JNE_K, 7, 0, TO_PASS, PORT_53_LOADED), // not to a DNS port: an answer sent
            insn(JSET_K, 9, 0, TO_PASS, 0x80),          // an answer
        ]);
        6
    } else {
        p.extend([
            insn(JNE_K, 6, 0, TO_PASS, PORT_53_LOADED), // not from a DNS port: a query received
            insn(JSET_K, 9, 0, 1, 0x80),                // an answer -> over the next
            insn(JA, 0, 0, TO_PASS, 0),                 // a query
        ]);
        7
    };
    p.extend([
        insn(LSH_K, client, 0, 0, 16),
        insn(OR_X, client, 8, 0, 0),    // key = client port << 16 | id
        insn(MOV32_X, 0, client, 0, 0), //
        insn(MUL32_K, 0, 0, 0, MATCH_HASH), //
        insn(RSH32_K, 0, 0, 0, 32 - MATCH_SLOTS_LOG2), // slot
        insn(LSH_K, 0, 0, 0, MATCH_SLOT_BYTES_LOG2), // its offset
        insn(LD_IMM64, 1, PSEUDO_MAP_VALUE, 0, map_fd), // r1 = the array's value
        insn(0, 0, 0, 0, 0),            // (offset 0 into it)
        insn(ADD_X, 1, 0, 0, 0),        // r1 = the slot
    ]);
    if egress {
        p.push(insn(STX_DW, 1, client, 0, 0)); // held
    } else {
        p.extend([
            insn(LDX_DW, 4, 1, 0, 0),           // what the slot holds
            insn(JNE_X, 4, client, TO_PASS, 0), // not this answer's query
            insn(ST_DW, 1, 0, 0, 0),            // matched: the slot is free again
        ]);
    }
    let pass = p.len();
    p.extend([insn(MOV_K, 0, 0, 0, 1), insn(EXIT, 0, 0, 0, 0)]);
    for (at, i) in p.iter_mut().enumerate() {
        if i16::from_le_bytes([i[2], i[3]]) == TO_PASS && i[0] != LD_IMM64 {
            let off = (pass - at - 1) as i16;
            i[2..4].copy_from_slice(&off.to_le_bytes());
        }
    }
    p
}

/// The [`matcher`]'s array: one value of [`MATCH_VALUE_BYTES`].
fn match_slots() -> anyhow::Result<OwnedFd> {
    let mut attr = Attr::default();
    attr.put_u32(0, BPF_MAP_TYPE_ARRAY);
    attr.put_u32(4, 4);
    attr.put_u32(8, MATCH_VALUE_BYTES);
    attr.put_u32(12, 1);
    bpf(BPF_MAP_CREATE, &mut attr, "creating the matcher's array")
}

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
    attr.put_bytes(48, b"empty_hook");
    attr.put_u32(68, expected_attach);
    bpf(BPF_PROG_LOAD, &mut attr, what)
}

/// What [`attach_all`] puts at the cgroup_skb hooks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum AtCgroupHooks {
    Empty,
    Classify,
    Match,
}

/// Attaches an empty program to every hook of the agent, with `at_cgroup` at its cgroup_skb
/// hooks, which hang on `cgroup` (where the agent hangs its own: the pods' cgroup) or on the
/// cgroup2 root; the descriptors keep them attached.
pub fn attach_all(at_cgroup: AtCgroupHooks, cgroup: Option<&str>) -> anyhow::Result<Vec<OwnedFd>> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let cgroup_root = match cgroup {
        Some(c) => c.to_owned(),
        None => triage_agent::kernel::mountinfo::mounts(&mountinfo)
            .find(|m| m.fstype == "cgroup2")
            .map(|m| m.point.to_owned())
            .context("no cgroup2 mount")?,
    };
    let mut held = Vec::new();
    let slots = match at_cgroup {
        AtCgroupHooks::Match => Some(match_slots()?),
        _ => None,
    };
    for program in PROGRAMS {
        match program.hook {
            Hook::RawTracePoint { name, .. } => {
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
                let prog = match (at_cgroup, &slots) {
                    (AtCgroupHooks::Classify, _) => load(
                        BPF_PROG_TYPE_CGROUP_SKB,
                        attach,
                        &CLASSIFY,
                        "loading the DNS classifier",
                    )?,
                    (AtCgroupHooks::Match, Some(slots)) => load(
                        BPF_PROG_TYPE_CGROUP_SKB,
                        attach,
                        &matcher(egress, raw_fd(slots) as i32),
                        "loading the DNS matcher",
                    )?,
                    _ => load_empty(BPF_PROG_TYPE_CGROUP_SKB, attach, 1)?,
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
    held.extend(slots);
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
    // The bench stops its peers with SIGINT, and a bench started with SIGINT ignored (a
    // background job of a non-interactive shell, `cargo xtask test &` in a script) hands that
    // on to this holder, which then outlives every stop's 30 s deadline: take the default back.
    // SAFETY: sets one signal's disposition to the default, no handler involved.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
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
    let at = args
        .iter()
        .position(|a| a == AT_CGROUP_ARG)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str);
    let held = match tcx {
        Some(list) => attach_tcx(
            &list
                .split(',')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>(),
        )?,
        None if args.iter().any(|a| a == CLASSIFY_ARG) => attach_all(AtCgroupHooks::Classify, at)?,
        None if args.iter().any(|a| a == MATCH_ARG) => attach_all(AtCgroupHooks::Match, at)?,
        None => attach_all(AtCgroupHooks::Empty, at)?,
    };
    println!("{READY} ({} descriptors)", held.len());
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the map value lives in [`run`]'s address space (the packet starts at 0).
    const VALUE_BASE: u64 = 1 << 40;

    /// Runs `prog` over `packet` with the few instructions the floor's programs use, as the
    /// kernel would (loads and stores little-endian, as on the hosts they run on), with `value`
    /// as the one map value an `LD_IMM64` names: the index of the `exit` it reached. A load or
    /// store outside the packet or the value fails the test, as the verifier would refuse it.
    fn run(prog: &[[u8; 8]], packet: &[u8], value: &mut [u8]) -> usize {
        let mut r = [0u64; 11];
        // r1: the context; its data and data_end are offsets into `packet` here.
        let (data, data_end) = (0u64, packet.len() as u64);
        let mut pc = 0usize;
        for _ in 0..100 {
            let [code, regs, o0, o1, i0, i1, i2, i3] = prog[pc];
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
            let address = |base: u64| (base as i64 + i64::from(off)) as u64;
            let load = |value: &[u8], base: u64, width: usize| {
                let at = address(base);
                let bytes = if at >= VALUE_BASE {
                    let start = (at - VALUE_BASE) as usize;
                    assert!(start + width <= value.len(), "load past the value at {pc}");
                    &value[start..start + width]
                } else {
                    let start = at as usize;
                    assert!(
                        start + width <= packet.len(),
                        "load past the packet at {pc}"
                    );
                    &packet[start..start + width]
                };
                let mut v = [0u8; 8];
                v[..width].copy_from_slice(bytes);
                u64::from_le_bytes(v)
            };
            let mut store = |base: u64, v: u64| {
                let at = address(base);
                assert!(at >= VALUE_BASE, "store outside the map value at {pc}");
                let start = (at - VALUE_BASE) as usize;
                assert!(start + 8 <= value.len(), "store past the value at {pc}");
                value[start..start + 8].copy_from_slice(&v.to_le_bytes());
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
                LDX_DW => {
                    r[dst] = load(value, r[src], 8);
                    pc + 1
                }
                LDX_H => {
                    r[dst] = load(value, r[src], 2);
                    pc + 1
                }
                LDX_B => {
                    r[dst] = load(value, r[src], 1);
                    pc + 1
                }
                STX_DW => {
                    store(r[dst], r[src]);
                    pc + 1
                }
                ST_DW => {
                    store(r[dst], imm as i64 as u64);
                    pc + 1
                }
                LD_IMM64 => {
                    assert_eq!(src, usize::from(PSEUDO_MAP_VALUE), "LD_IMM64 at {pc}");
                    let offset = i32::from_le_bytes(prog[pc + 1][4..8].try_into().unwrap());
                    r[dst] = VALUE_BASE + offset as u64;
                    pc + 2
                }
                MOV_X => {
                    r[dst] = r[src];
                    pc + 1
                }
                MOV32_X => {
                    r[dst] = r[src] & 0xffff_ffff;
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
                ADD_X => {
                    r[dst] = r[dst].wrapping_add(r[src]);
                    pc + 1
                }
                OR_X => {
                    r[dst] |= r[src];
                    pc + 1
                }
                LSH_K => {
                    r[dst] <<= imm;
                    pc + 1
                }
                RSH_K => {
                    r[dst] >>= imm;
                    pc + 1
                }
                MUL32_K => {
                    r[dst] = u64::from((r[dst] as u32).wrapping_mul(imm as u32));
                    pc + 1
                }
                RSH32_K => {
                    r[dst] = u64::from((r[dst] as u32) >> imm);
                    pc + 1
                }
                JGT_X => jump(r[dst] > r[src]),
                JNE_X => jump(r[dst] != r[src]),
                JEQ_K => jump(r[dst] == imm as u64),
                JNE_K => jump(r[dst] != imm as u64),
                JSET_K => jump(r[dst] & imm as u64 != 0),
                JA => jump(true),
                EXIT => return pc,
                other => panic!("opcode {other:#x} at {pc}"),
            };
        }
        panic!("no exit within 100 steps");
    }

    /// [`CLASSIFY`] over `packet`: the index of the `exit` it reached.
    fn exit_reached(packet: &[u8]) -> usize {
        run(&CLASSIFY, packet, &mut [])
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

    /// A UDP DNS packet over IPv4: `sport` to `dport`, the DNS `id`, a query or an answer.
    fn dns(sport: u16, dport: u16, id: u16, answer: bool) -> Vec<u8> {
        let mut p = packet(false, 17, sport, dport, 60);
        p[28..30].copy_from_slice(&id.to_be_bytes());
        p[30] = if answer { 0x81 } else { 0x01 };
        p
    }

    /// The non-zero slots of the matcher's value.
    fn held(value: &[u8]) -> usize {
        value
            .chunks(1 << MATCH_SLOT_BYTES_LOG2)
            .filter(|slot| slot.iter().any(|b| *b != 0))
            .count()
    }

    #[test]
    fn the_matcher_holds_a_query_until_its_answer_and_only_its_answer() {
        let (egress, ingress) = (matcher(true, 7), matcher(false, 7));
        let mut value = vec![0u8; MATCH_VALUE_BYTES as usize];
        // Two queries from one socket, with different ids: two slots.
        run(&egress, &dns(40000, 53, 1, false), &mut value);
        run(&egress, &dns(40000, 53, 2, false), &mut value);
        assert_eq!(held(&value), 2);
        // What the server sees and sends is only classified.
        run(&ingress, &dns(40000, 53, 1, false), &mut value);
        run(&egress, &dns(53, 40000, 1, true), &mut value);
        assert_eq!(held(&value), 2);
        // An answer with another id, or to another port, or a query arriving: nothing freed.
        run(&ingress, &dns(53, 40000, 3, true), &mut value);
        run(&ingress, &dns(53, 40001, 1, true), &mut value);
        run(&ingress, &dns(53, 40000, 1, false), &mut value);
        assert_eq!(held(&value), 2);
        // The answers free their queries' slots.
        run(&ingress, &dns(53, 40000, 1, true), &mut value);
        assert_eq!(held(&value), 1);
        run(&ingress, &dns(53, 40000, 2, true), &mut value);
        assert_eq!(held(&value), 0);
        // Not DNS, not UDP, IPv6, or short: nothing kept, nothing read past the end.
        for p in [
            packet(false, 17, 40000, 5353, 60),
            packet(false, 6, 40000, 53, 60),
            packet(true, 17, 40000, 53, 60),
            dns(40000, 53, 1, false)[..31].to_vec(),
        ] {
            for prog in [&egress, &ingress] {
                assert_eq!(run(prog, &p, &mut value), prog.len() - 1);
            }
        }
        assert_eq!(held(&value), 0);
    }
}
