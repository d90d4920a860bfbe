//! BTF reader tests: blobs built by a fixture builder, truncations and garbage, the live kernel.

use super::*;
use std::time::Instant;

/// Assembles a little-endian BTF blob type by type; ids are handed out from 1 in order.
struct Builder {
    types: Vec<u8>,
    strings: Vec<u8>,
    count: u32,
}

/// (name, type id, bit offset, bitfield size)
type M<'a> = (&'a str, u32, u32, u32);

impl Builder {
    fn new() -> Self {
        Builder {
            types: Vec::new(),
            strings: vec![0],
            count: 0,
        }
    }
    fn name(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let off = u32::try_from(self.strings.len()).unwrap();
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        off
    }
    fn words(&mut self, words: &[u32]) {
        for w in words {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
    }
    fn ty(&mut self, name: &str, kind: u32, kflag: bool, vlen: u32, size_or_type: u32) -> u32 {
        let name = self.name(name);
        let info = (u32::from(kflag) << 31) | (kind << 24) | vlen;
        self.words(&[name, info, size_or_type]);
        self.count += 1;
        self.count
    }
    fn int(&mut self, name: &str, size: u32, bits: u32) -> u32 {
        let id = self.ty(name, KIND_INT, false, 0, size);
        self.words(&[bits]);
        id
    }
    fn composite(&mut self, kind: u32, name: &str, size: u32, members: &[M<'_>]) -> u32 {
        let kflag = members.iter().any(|m| m.3 != 0);
        let vlen = u32::try_from(members.len()).unwrap();
        let id = self.ty(name, kind, kflag, vlen, size);
        for &(name, ty, off, bits) in members {
            let name = self.name(name);
            let off = if kflag { (bits << 24) | off } else { off };
            self.words(&[name, ty, off]);
        }
        id
    }
    fn enum32(&mut self, name: &str, signed: bool, values: &[(&str, i32)]) -> u32 {
        let vlen = u32::try_from(values.len()).unwrap();
        let id = self.ty(name, KIND_ENUM, signed, vlen, 4);
        for &(name, v) in values {
            let name = self.name(name);
            self.words(&[name, v as u32]);
        }
        id
    }
    fn enum64(&mut self, name: &str, signed: bool, values: &[(&str, u64)]) -> u32 {
        let vlen = u32::try_from(values.len()).unwrap();
        let id = self.ty(name, KIND_ENUM64, signed, vlen, 8);
        for &(name, v) in values {
            let name = self.name(name);
            self.words(&[name, v as u32, (v >> 32) as u32]);
        }
        id
    }
    fn build(&self) -> Vec<u8> {
        let type_len = u32::try_from(self.types.len()).unwrap();
        let str_len = u32::try_from(self.strings.len()).unwrap();
        let mut out = vec![0x9f, 0xeb, 1, 0];
        for w in [24, 0, type_len, type_len, str_len] {
            out.extend_from_slice(&u32::to_le_bytes(w));
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

fn fixture() -> Vec<u8> {
    let mut b = Builder::new();
    let int = b.int("int", 4, 32);
    let inner = b.composite(
        KIND_STRUCT,
        "inner",
        8,
        &[("x", int, 0, 0), ("y", int, 32, 0)],
    );
    let inner_t = b.ty("inner_t", KIND_TYPEDEF, false, 0, inner);
    let const_inner_t = b.ty("", KIND_CONST, false, 0, inner_t);
    let volatile = b.ty("", KIND_VOLATILE, false, 0, const_inner_t);
    let anon_union = b.composite(KIND_UNION, "", 8, &[("ua", int, 0, 0), ("ub", inner, 0, 0)]);
    let anon_struct = b.composite(KIND_STRUCT, "", 8, &[("deep", int, 32, 0)]);
    let anon_union2 = b.composite(
        KIND_UNION,
        "",
        8,
        &[("", anon_struct, 0, 0), ("other", int, 0, 0)],
    );
    let ptr = b.ty("", KIND_PTR, false, 0, inner);
    b.composite(
        KIND_STRUCT,
        "outer",
        64,
        &[
            ("first", int, 0, 0),
            ("", anon_union, 64, 0),
            ("nested", inner, 128, 0),
            ("td", inner_t, 192, 0),
            ("cq", volatile, 256, 0),
            ("flags", int, 320, 3),
            ("", anon_union2, 352, 0),
            ("p", ptr, 448, 0),
            ("odd", int, 484, 0),
        ],
    );
    // Old-style bitfield: parent kind_flag clear, width in the INT encoding.
    let u3 = b.int("u3", 4, 3);
    b.composite(KIND_STRUCT, "oldbf", 4, &[("a", u3, 0, 0)]);
    b.enum32("color", true, &[("RED", 0), ("GREEN", 1), ("NEG", -5)]);
    b.enum32("ucolor", false, &[("BIG", -2)]);
    b.enum64("big", false, &[("ONE", 1), ("HUGE", 1 << 40)]);
    b.enum64("sbig", true, &[("MINUS", (-(1i64 << 40)) as u64)]);
    // A forward-declared enum (no values) before its definition.
    b.enum32("fwd", false, &[]);
    b.enum32("fwd", false, &[("LATER", 7)]);
    // Two structs with one name: lookups try both.
    b.composite(KIND_STRUCT, "dup", 4, &[("a", int, 0, 0)]);
    b.composite(
        KIND_STRUCT,
        "dup",
        8,
        &[("a", int, 0, 0), ("z", int, 32, 0)],
    );
    // typedef loop_a -> loop_b -> loop_a.
    let loop_a = b.count + 1;
    b.ty("loop_a", KIND_TYPEDEF, false, 0, loop_a + 1);
    b.ty("loop_b", KIND_TYPEDEF, false, 0, loop_a);
    b.composite(KIND_STRUCT, "looper", 4, &[("l", loop_a, 0, 0)]);
    // A struct whose anonymous member is itself.
    let selfish = b.count + 1;
    b.composite(KIND_STRUCT, "selfish", 4, &[("", selfish, 0, 0)]);
    b.build()
}

fn btf() -> Btf {
    Btf::from_bytes(fixture()).unwrap()
}

/// Runs every kind of lookup; used on mutated blobs where only "no panic, no hang" matters.
fn exercise(btf: &Btf) {
    for (s, p) in [
        ("outer", "first"),
        ("outer", "ub.y"),
        ("outer", "deep"),
        ("outer", "td.y"),
        ("outer", "cq.x"),
        ("outer", "flags"),
        ("outer", "p.x"),
        ("oldbf", "a"),
        ("dup", "z"),
        ("looper", "l.x"),
        ("selfish", "x"),
    ] {
        let _ = btf.member_offset(s, p);
    }
    for e in ["color", "ucolor", "big", "sbig", "fwd"] {
        let _ = btf.enum_values(e);
    }
}

#[test]
fn plain_nested_and_anonymous_members() {
    let btf = btf();
    assert_eq!(btf.member_offset("outer", "first").unwrap(), 0);
    assert_eq!(btf.member_offset("outer", "nested").unwrap(), 16);
    assert_eq!(btf.member_offset("outer", "nested.y").unwrap(), 20);
    assert_eq!(btf.member_offset("outer", "ua").unwrap(), 8);
    assert_eq!(btf.member_offset("outer", "ub.y").unwrap(), 12);
    // Anonymous struct inside an anonymous union: both offsets add up.
    assert_eq!(btf.member_offset("outer", "deep").unwrap(), 48);
    assert_eq!(btf.member_offset("outer", "other").unwrap(), 44);
    assert_eq!(btf.member_offset("inner", "y").unwrap(), 4);
}

#[test]
fn typedef_and_qualifiers_are_followed() {
    let btf = btf();
    assert_eq!(btf.member_offset("outer", "td.y").unwrap(), 28);
    assert_eq!(btf.member_offset("outer", "cq.x").unwrap(), 32);
    assert_eq!(btf.member_offset("outer", "cq.y").unwrap(), 36);
}

#[test]
fn bitfields_and_unaligned_are_errors() {
    let btf = btf();
    let err = btf.member_offset("outer", "flags").unwrap_err();
    assert!(
        matches!(&err, BtfError::Bitfield { ty, member } if ty == "outer" && member == "flags"),
        "{err}"
    );
    let err = btf.member_offset("oldbf", "a").unwrap_err();
    assert!(matches!(err, BtfError::Bitfield { .. }), "{err}");
    let err = btf.member_offset("outer", "odd").unwrap_err();
    assert!(
        matches!(
            err,
            BtfError::Unaligned {
                bit_offset: 484,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn missing_and_bad_paths() {
    let btf = btf();
    let err = btf.member_offset("nope", "x").unwrap_err();
    assert!(
        matches!(&err, BtfError::NotFound { what } if what == "struct nope"),
        "{err}"
    );
    let err = btf.member_offset("outer", "nested.zz").unwrap_err();
    assert!(
        matches!(&err, BtfError::NotFound { what } if what.contains("nested.zz")),
        "{err}"
    );
    let err = btf.member_offset("outer", "p.x").unwrap_err();
    assert!(
        matches!(&err, BtfError::NotComposite { member, .. } if member == "p"),
        "{err}"
    );
    for bad in ["", ".", "a..b", "first."] {
        let err = btf.member_offset("outer", bad).unwrap_err();
        assert!(matches!(err, BtfError::BadPath { .. }), "{bad:?}: {err}");
    }
    // Enums are not structs, structs are not enums.
    assert!(matches!(
        btf.member_offset("color", "RED"),
        Err(BtfError::NotFound { .. })
    ));
    assert!(matches!(
        btf.enum_values("outer"),
        Err(BtfError::NotFound { .. })
    ));
    assert!(matches!(
        btf.enum_values("nope"),
        Err(BtfError::NotFound { .. })
    ));
}

#[test]
fn duplicate_names_try_every_candidate() {
    let btf = btf();
    assert_eq!(btf.member_offset("dup", "a").unwrap(), 0);
    assert_eq!(btf.member_offset("dup", "z").unwrap(), 4);
    assert_eq!(btf.enum_values("fwd").unwrap(), [("LATER".to_owned(), 7)]);
}

#[test]
fn enum_values_signed_and_unsigned() {
    let btf = btf();
    let v = btf.enum_values("color").unwrap();
    let want = [("RED", 0), ("GREEN", 1), ("NEG", -5)].map(|(n, v)| (n.to_owned(), v));
    assert_eq!(v, want);
    assert_eq!(
        btf.enum_values("ucolor").unwrap(),
        [("BIG".to_owned(), 0xffff_fffe)]
    );
}

#[test]
fn enum64_values() {
    let btf = btf();
    let v = btf.enum_values("big").unwrap();
    assert_eq!(v, [("ONE".to_owned(), 1), ("HUGE".to_owned(), 1 << 40)]);
    let v = btf.enum_values("sbig").unwrap();
    assert_eq!(v, [("MINUS".to_owned(), -(1 << 40))]);
}

#[test]
fn loops_are_errors_not_hangs() {
    let btf = btf();
    let err = btf.member_offset("looper", "l.x").unwrap_err();
    assert!(matches!(err, BtfError::TooDeep { .. }), "{err}");
    let err = btf.member_offset("selfish", "x").unwrap_err();
    assert!(matches!(err, BtfError::NotFound { .. }), "{err}");
}

#[test]
fn truncated_blobs_are_errors() {
    let blob = fixture();
    for len in 0..blob.len() {
        assert!(Btf::from_bytes(blob[..len].to_vec()).is_err(), "len {len}");
    }
}

#[test]
fn bad_headers_are_errors() {
    let blob = fixture();
    let patched = |at: usize, bytes: &[u8]| {
        let mut b = blob.clone();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        Btf::from_bytes(b)
    };
    assert!(matches!(
        patched(0, &[0, 0]),
        Err(BtfError::BadMagic { found: 0 })
    ));
    assert!(matches!(
        patched(0, &[0xeb, 0x9f]),
        Err(BtfError::BigEndian)
    ));
    assert!(matches!(
        patched(2, &[2]),
        Err(BtfError::UnsupportedVersion { version: 2 })
    ));
    // hdr_len, type_off, type_len, str_off, str_len: too small, past the end, overflowing.
    for field in [4, 8, 12, 16, 20] {
        for v in [10_000u32, u32::MAX, u32::MAX - 23] {
            let r = patched(field, &v.to_le_bytes());
            assert!(matches!(r, Err(BtfError::Malformed { .. })), "{field} {v}");
        }
    }
    assert!(matches!(
        patched(4, &8u32.to_le_bytes()),
        Err(BtfError::Malformed { .. })
    ));
    // Unknown kind 31 in the first type record.
    assert!(matches!(
        patched(24 + 7, &[31]),
        Err(BtfError::Malformed { .. })
    ));
}

#[test]
fn vlen_larger_than_data_is_an_error() {
    let blob = fixture();
    let btf = Btf::from_bytes(blob.clone()).unwrap();
    let outer = btf.named("outer", &[KIND_STRUCT]).unwrap()[0].pos;
    let mut b = blob;
    b[outer + 4..outer + 6].copy_from_slice(&[0xff, 0xff]);
    let err = Btf::from_bytes(b).unwrap_err();
    assert!(matches!(err, BtfError::Malformed { .. }), "{err}");
}

#[test]
fn mutated_blobs_never_panic() {
    let blob = fixture();
    for at in 0..blob.len() {
        for v in [0x00, 0x01, 0x7f, 0x80, 0xff] {
            let mut b = blob.clone();
            b[at] = v;
            if let Ok(btf) = Btf::from_bytes(b) {
                exercise(&btf);
            }
        }
    }
    // Multi-byte corruption from a fixed xorshift sequence, reproducible across runs.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..3000 {
        let mut b = blob.clone();
        for _ in 0..4 {
            let at = usize::try_from(next() % blob.len() as u64).unwrap();
            b[at] = next() as u8;
        }
        if let Ok(btf) = Btf::from_bytes(b) {
            exercise(&btf);
        }
    }
}

#[test]
fn live_vmlinux() {
    // No skip: this agent targets kernels with BTF, so its absence is a failure.
    let start = Instant::now();
    let btf = Btf::vmlinux().expect("reading /sys/kernel/btf/vmlinux");
    let elapsed = start.elapsed();
    eprintln!("loaded {btf:?} in {elapsed:?}");
    for (s, p) in [
        ("sk_buff", "data"),
        ("sk_buff", "head"),
        ("sk_buff", "network_header"),
        ("sk_buff", "dev"),
        ("sk_buff", "sk"),
        ("sk_buff", "len"),
        ("sock", "__sk_common.skc_net"),
        ("net", "ns.inum"),
    ] {
        let off = btf
            .member_offset(s, p)
            .unwrap_or_else(|e| panic!("{s}.{p}: {e}"));
        eprintln!("{s}.{p} = {off}");
        assert!(off < 4096, "{s}.{p} = {off}");
    }
    // dev sits in the anonymous union after next/prev: the offset must include them.
    assert!(btf.member_offset("sk_buff", "dev").unwrap() >= 16);
    let rst = btf.enum_values("sk_rst_reason").unwrap();
    assert!(
        rst.contains(&("SK_RST_REASON_NO_SOCKET".to_owned(), 1)),
        "{rst:?}"
    );
    let drop = btf.enum_values("skb_drop_reason").unwrap();
    let netfilter = drop
        .iter()
        .find(|(n, _)| n == "SKB_DROP_REASON_NETFILTER_DROP");
    eprintln!("{netfilter:?} of {} drop reasons", drop.len());
    assert!(netfilter.is_some(), "{drop:?}");
    let err = btf.member_offset("sk_buff", "no_such_member").unwrap_err();
    assert!(matches!(err, BtfError::NotFound { .. }), "{err}");
}
