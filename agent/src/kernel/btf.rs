//! Reader for the running kernel's BTF (/sys/kernel/btf/vmlinux): struct member offsets and enum
//! values, so eBPF programs get layouts of this kernel at load time instead of numbers compiled in.
//!
//! Only the raw little-endian format the kernel exports is supported (see
//! <https://docs.kernel.org/bpf/btf.html>). The blob is validated once on load (header, section
//! bounds, every type record's trailing data); lookups then read the bytes on demand. Every read
//! is bounds-checked and every chain that corrupt data could turn into a loop is capped, so any
//! input yields a value or a [`BtfError`], never a panic or a hang.

// No unsafe code: this module stays compatible with #![forbid(unsafe_code)] at the crate root.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// Where the running kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
/// Size of the version-1 header; `hdr_len` may be larger (future fields) but never smaller.
const HEADER_LEN: usize = 24;
/// Size of `struct btf_type`, the fixed part of every type record.
const TYPE_LEN: usize = 12;
/// Cap on typedef/qualifier chains and anonymous-member nesting. Real kernels stay in single
/// digits; reaching it means corrupt data with a loop, which must not hang the agent.
const MAX_CHAIN: usize = 32;
/// Longest name accepted, well above the kernel's own limit of 512.
const MAX_NAME: usize = 4096;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Why BTF could not be loaded or a lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The BTF file could not be read.
    #[error("cannot read BTF from {}", path.display())]
    Io {
        /// File that was being read.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The magic is byte-swapped: BTF of a big-endian machine, which this reader does not support.
    #[error("BTF is big-endian; only little-endian BTF is supported")]
    BigEndian,
    /// The data does not start with the BTF magic 0xeb9f.
    #[error("not BTF: magic is {found:#06x}, expected 0xeb9f")]
    BadMagic {
        /// The first two bytes, read little-endian.
        found: u16,
    },
    /// A BTF version other than 1.
    #[error("unsupported BTF version {version} (only version 1 is known)")]
    UnsupportedVersion {
        /// Version byte from the header.
        version: u8,
    },
    /// The data is inconsistent: truncated, out-of-range offsets or ids, unknown kinds, bad names.
    #[error("malformed BTF: {what} (at byte {offset})")]
    Malformed {
        /// What is wrong.
        what: &'static str,
        /// Byte position in the blob where it was noticed.
        offset: usize,
    },
    /// No struct/union/enum with that name, or no member with that name.
    #[error("{what} not found in BTF")]
    NotFound {
        /// What was looked for, e.g. "struct sk_buff" or "member `foo` of struct sk_buff".
        what: String,
    },
    /// The member path is empty or has an empty component ("a..b", ".a").
    #[error("invalid member path {path:?}: empty component")]
    BadPath {
        /// The path as given.
        path: String,
    },
    /// A path descends into a member that is not a struct or union (e.g. a pointer).
    #[error("{ty}.{member} is not a struct or union, cannot look inside it")]
    NotComposite {
        /// Struct the lookup started from.
        ty: String,
        /// Path up to the offending member.
        member: String,
    },
    /// The member is a bitfield, which has no byte offset.
    #[error("{ty}.{member} is a bitfield, it has no byte offset")]
    Bitfield {
        /// Struct the lookup started from.
        ty: String,
        /// Path up to the bitfield member.
        member: String,
    },
    /// The member does not start on a byte boundary.
    #[error("{ty}.{member} starts at bit {bit_offset}, not on a byte boundary")]
    Unaligned {
        /// Struct the lookup started from.
        ty: String,
        /// The member path.
        member: String,
        /// Its offset in bits from the start of the struct.
        bit_offset: u64,
    },
    /// A typedef/qualifier chain or anonymous nesting deeper than 32 steps: a loop in corrupt BTF.
    #[error("type chain at type id {type_id} is deeper than {MAX_CHAIN} steps (loop in BTF?)")]
    TooDeep {
        /// Type id where the walk gave up.
        type_id: u32,
    },
}

fn malformed(what: &'static str, offset: usize) -> BtfError {
    BtfError::Malformed { what, offset }
}

fn read_u32(data: &[u8], pos: usize) -> Option<u32> {
    let bytes = data.get(pos..pos.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// Reads the `idx`-th little-endian u32 after `pos`, as a `Malformed` error if out of bounds.
fn field(data: &[u8], pos: usize, idx: usize, what: &'static str) -> Result<u32, BtfError> {
    idx.checked_mul(4)
        .and_then(|d| pos.checked_add(d))
        .and_then(|p| read_u32(data, p))
        .ok_or_else(|| malformed(what, pos))
}

/// Bytes of kind-specific data after the 12-byte record, or `None` for an unknown kind (its
/// size is unknowable, so parsing cannot continue past it).
fn trailing_len(kind: u32, vlen: usize) -> Option<usize> {
    let per_item = match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => return Some(4),
        KIND_ARRAY => return Some(12),
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12,
        KIND_ENUM | KIND_FUNC_PROTO => 8,
        KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
        | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
        _ => return None,
    };
    vlen.checked_mul(per_item)
}

/// One decoded `struct btf_type` record. Id 0 (void) is the default: kind 0, no data.
#[derive(Clone, Copy, Default)]
struct Type {
    id: u32,
    /// Absolute byte position of the record in the blob.
    pos: usize,
    name_off: u32,
    info: u32,
    size_or_type: u32,
}

impl Type {
    fn kind(&self) -> u32 {
        (self.info >> 24) & 0x1f
    }
    fn vlen(&self) -> usize {
        (self.info & 0xffff) as usize
    }
    fn kind_flag(&self) -> bool {
        self.info >> 31 == 1
    }
    fn is_composite(&self) -> bool {
        matches!(self.kind(), KIND_STRUCT | KIND_UNION)
    }
    /// Position of the `idx`-th trailing item of `item_len` bytes.
    fn item_pos(&self, idx: usize, item_len: usize) -> Result<usize, BtfError> {
        idx.checked_mul(item_len)
            .and_then(|d| d.checked_add(TYPE_LEN))
            .and_then(|d| d.checked_add(self.pos))
            .ok_or_else(|| malformed("trailing data offset overflows", self.pos))
    }
}

/// A struct/union member as found, with its offset already split by the parent's kind_flag.
struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
    /// Non-zero for a bitfield declared through the parent's kind_flag encoding.
    bitfield_size: u32,
    /// Parent had kind_flag clear: a bitfield would then show up in the INT type's encoding.
    legacy_encoding: bool,
}

/// Parsed kernel BTF: the raw bytes plus an index of type records and named types.
pub struct Btf {
    data: Vec<u8>,
    /// Absolute position of each type record; element `i` is type id `i + 1`.
    types: Vec<usize>,
    str_start: usize,
    str_end: usize,
    /// Ids of named struct/union/enum/enum64 types, built on load so that repeated lookups do
    /// not rescan ~150k records. A name can map to several ids: forward-declared enums and
    /// same-named types from different parts of the kernel survive deduplication.
    by_name: HashMap<String, Vec<u32>>,
}

impl fmt::Debug for Btf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Btf")
            .field("bytes", &self.data.len())
            .field("types", &self.types.len())
            .field("named", &self.by_name.len())
            .finish()
    }
}

impl Btf {
    /// Parses raw BTF, validating the header, section bounds and every type record.
    pub fn from_bytes(data: Vec<u8>) -> Result<Self, BtfError> {
        let magic = data
            .get(..2)
            .and_then(|b| b.try_into().ok())
            .map(u16::from_le_bytes);
        let magic = magic.ok_or_else(|| malformed("header truncated", 0))?;
        if magic == MAGIC.swap_bytes() {
            return Err(BtfError::BigEndian);
        }
        if magic != MAGIC {
            return Err(BtfError::BadMagic { found: magic });
        }
        let version = *data
            .get(2)
            .ok_or_else(|| malformed("header truncated", 2))?;
        if version != 1 {
            return Err(BtfError::UnsupportedVersion { version });
        }
        let hdr = |idx| field(&data, 4, idx, "header truncated");
        let hdr_len = hdr(0)? as usize;
        if hdr_len < HEADER_LEN {
            return Err(malformed("hdr_len is smaller than 24", 4));
        }
        if hdr_len > data.len() {
            return Err(malformed("hdr_len points past the end", 4));
        }
        // Section offsets are relative to the end of the header.
        let section = |off: u32, len: u32, what| {
            let start = hdr_len.checked_add(off as usize);
            let end = start.and_then(|s| s.checked_add(len as usize));
            match (start, end) {
                (Some(s), Some(e)) if e <= data.len() => Ok((s, e)),
                _ => Err(malformed(what, hdr_len)),
            }
        };
        let (type_start, type_end) = section(hdr(1)?, hdr(2)?, "type section past the end")?;
        let (str_start, str_end) = section(hdr(3)?, hdr(4)?, "string section past the end")?;

        // Each iteration consumes at least 12 bytes, so the loop is bounded by the section size.
        let mut types = Vec::new();
        let mut pos = type_start;
        while pos < type_end {
            let body = pos
                .checked_add(TYPE_LEN)
                .filter(|&b| b <= type_end)
                .ok_or_else(|| malformed("type record truncated", pos))?;
            let info = field(&data, pos, 1, "type record truncated")?;
            let kind = (info >> 24) & 0x1f;
            let extra = trailing_len(kind, (info & 0xffff) as usize)
                .ok_or_else(|| malformed("unknown type kind", pos))?;
            let next = body
                .checked_add(extra)
                .filter(|&n| n <= type_end)
                .ok_or_else(|| malformed("type data runs past the type section", pos))?;
            types.push(pos);
            pos = next;
        }

        let mut btf = Btf {
            data,
            types,
            str_start,
            str_end,
            by_name: HashMap::new(),
        };
        btf.by_name = btf.build_index()?;
        Ok(btf)
    }

    /// Reads and parses a BTF file.
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(data)
    }

    /// Loads the running kernel's BTF from [`VMLINUX_BTF`].
    pub fn vmlinux() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    /// Byte offset of a (possibly nested) member of a named struct, e.g. ("sk_buff", "data"),
    /// ("sock", "__sk_common.skc_net"), ("net", "ns.inum").
    ///
    /// Members of anonymous unions/structs inside the struct are searched through
    /// transparently, and their own offsets are added (the kernel's sk_buff puts `dev`, `sk`
    /// etc. inside anonymous unions). Typedefs/const/volatile/restrict/type tags are followed
    /// when descending into a member's type. A union name works too. If several types share the
    /// name, the first one in which the path resolves wins.
    ///
    /// Errors: [`BtfError::Bitfield`] for bitfields, [`BtfError::Unaligned`] for members not on
    /// a byte boundary, [`BtfError::NotFound`] for a missing struct or member,
    /// [`BtfError::NotComposite`] when the path goes through a pointer or scalar.
    pub fn member_offset(&self, struct_name: &str, path: &str) -> Result<u32, BtfError> {
        if path.split('.').any(str::is_empty) {
            return Err(BtfError::BadPath {
                path: path.to_owned(),
            });
        }
        let mut first_err = None;
        for ty in self.named(struct_name, &[KIND_STRUCT, KIND_UNION])? {
            match self.offset_in(ty, struct_name, path) {
                Ok(off) => return Ok(off),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.unwrap_or_else(|| BtfError::NotFound {
            what: format!("struct {struct_name}"),
        }))
    }

    /// All (name, value) pairs of a named enum (ENUM or ENUM64), e.g. "skb_drop_reason".
    ///
    /// Signedness follows the type's kind_flag as the BTF spec says (set = signed). Unsigned
    /// 64-bit values above `i64::MAX` are returned as their two's-complement bit pattern.
    pub fn enum_values(&self, enum_name: &str) -> Result<Vec<(String, i64)>, BtfError> {
        let candidates = self.named(enum_name, &[KIND_ENUM, KIND_ENUM64])?;
        // An enum forward declaration is an ENUM with no values; prefer the full definition.
        let ty = candidates
            .iter()
            .find(|t| t.vlen() > 0)
            .or(candidates.first())
            .ok_or_else(|| BtfError::NotFound {
                what: format!("enum {enum_name}"),
            })?;
        let is64 = ty.kind() == KIND_ENUM64;
        let mut out = Vec::with_capacity(ty.vlen());
        for idx in 0..ty.vlen() {
            // ENUM items are {name_off, val}; ENUM64 items are {name_off, val_lo32, val_hi32}.
            let pos = ty.item_pos(idx, if is64 { 12 } else { 8 })?;
            let word = |i| field(&self.data, pos, i, "enum value truncated");
            let value = match (is64, ty.kind_flag()) {
                (true, _) => ((u64::from(word(2)?) << 32) | u64::from(word(1)?)) as i64,
                (false, true) => i64::from(word(1)? as i32),
                (false, false) => i64::from(word(1)?),
            };
            out.push((self.str_at(word(0)?)?.to_owned(), value));
        }
        Ok(out)
    }

    fn build_index(&self) -> Result<HashMap<String, Vec<u32>>, BtfError> {
        let mut index: HashMap<String, Vec<u32>> = HashMap::new();
        for id in 1..=self.types.len() {
            let ty = self.ty(u32::try_from(id).map_err(|_| malformed("too many types", 0))?)?;
            if !matches!(
                ty.kind(),
                KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64
            ) {
                continue;
            }
            let name = self.str_at(ty.name_off)?;
            if name.is_empty() {
                continue;
            }
            index.entry(name.to_owned()).or_default().push(ty.id);
        }
        Ok(index)
    }

    /// Named types of the given kinds, in id order.
    fn named(&self, name: &str, kinds: &[u32]) -> Result<Vec<Type>, BtfError> {
        let ids = self
            .by_name
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let types = ids.iter().map(|&id| self.ty(id));
        let types = types.collect::<Result<Vec<_>, _>>()?;
        Ok(types
            .into_iter()
            .filter(|t| kinds.contains(&t.kind()))
            .collect())
    }

    /// NUL-terminated string at `off` in the string section.
    fn str_at(&self, off: u32) -> Result<&str, BtfError> {
        let start = self.str_start.saturating_add(off as usize);
        let rest = self
            .data
            .get(start..self.str_end)
            .ok_or_else(|| malformed("name offset past the string section", start))?;
        // The kernel caps names at KSYM_NAME_LEN (512); the cap keeps crafted data with huge
        // strings from making every comparison scan megabytes.
        let len = rest
            .iter()
            .take(MAX_NAME)
            .position(|&b| b == 0)
            .ok_or_else(|| malformed("unterminated or overlong string", start))?;
        let bytes = rest.get(..len).unwrap_or_default();
        std::str::from_utf8(bytes).map_err(|_| malformed("name is not UTF-8", start))
    }

    fn ty(&self, id: u32) -> Result<Type, BtfError> {
        let Some(idx) = (id as usize).checked_sub(1) else {
            return Ok(Type::default());
        };
        let pos = *self
            .types
            .get(idx)
            .ok_or_else(|| malformed("type id out of range", 0))?;
        let get = |i| field(&self.data, pos, i, "type record truncated");
        Ok(Type {
            id,
            pos,
            name_off: get(0)?,
            info: get(1)?,
            size_or_type: get(2)?,
        })
    }

    /// Follows typedefs and qualifiers to the underlying type, at most [`MAX_CHAIN`] steps.
    fn resolve(&self, mut id: u32) -> Result<Type, BtfError> {
        for _ in 0..MAX_CHAIN {
            let ty = self.ty(id)?;
            match ty.kind() {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.size_or_type;
                }
                _ => return Ok(ty),
            }
        }
        Err(BtfError::TooDeep { type_id: id })
    }

    fn member(&self, parent: &Type, idx: usize) -> Result<Member, BtfError> {
        let pos = parent.item_pos(idx, 12)?;
        let raw = field(&self.data, pos, 2, "member truncated")?;
        let (bit_offset, bitfield_size) = if parent.kind_flag() {
            (raw & 0x00ff_ffff, raw >> 24)
        } else {
            (raw, 0)
        };
        Ok(Member {
            name_off: field(&self.data, pos, 0, "member truncated")?,
            type_id: field(&self.data, pos, 1, "member truncated")?,
            bit_offset,
            bitfield_size,
            legacy_encoding: !parent.kind_flag(),
        })
    }

    /// Finds member `name` in `parent` or, recursively, in its anonymous struct/union members.
    /// Returns the member and its bit offset from the start of `parent`. `visited` holds the
    /// anonymous types already searched: one that lacked the name lacks it everywhere, and
    /// skipping it keeps crafted data (many members sharing a type, cycles) from blowing up.
    fn find_member(
        &self,
        parent: &Type,
        name: &str,
        depth: usize,
        visited: &mut HashSet<u32>,
    ) -> Result<Option<(u64, Member)>, BtfError> {
        if depth >= MAX_CHAIN {
            return Err(BtfError::TooDeep { type_id: parent.id });
        }
        for idx in 0..parent.vlen() {
            let m = self.member(parent, idx)?;
            let member_name = self.str_at(m.name_off)?;
            if !member_name.is_empty() {
                if member_name == name {
                    return Ok(Some((u64::from(m.bit_offset), m)));
                }
                continue;
            }
            let inner = self.resolve(m.type_id)?;
            if !inner.is_composite() || !visited.insert(inner.id) {
                continue;
            }
            if let Some((off, found)) = self.find_member(&inner, name, depth + 1, visited)? {
                return Ok(Some((off.saturating_add(u64::from(m.bit_offset)), found)));
            }
        }
        Ok(None)
    }

    fn offset_in(&self, mut cur: Type, struct_name: &str, path: &str) -> Result<u32, BtfError> {
        let prefix = |end: usize| path.get(..end).unwrap_or(path).to_owned();
        let mut bits: u64 = 0;
        let mut end: usize = 0;
        for component in path.split('.') {
            if !cur.is_composite() {
                return Err(BtfError::NotComposite {
                    ty: struct_name.to_owned(),
                    member: prefix(end.saturating_sub(1)),
                });
            }
            end += component.len() + 1;
            let mut visited = HashSet::new();
            let Some((off, m)) = self.find_member(&cur, component, 0, &mut visited)? else {
                return Err(BtfError::NotFound {
                    what: format!("member `{}` of struct {struct_name}", prefix(end - 1)),
                });
            };
            bits = bits.saturating_add(off);
            let member_ty = self.resolve(m.type_id)?;
            // With kind_flag clear, bitfields are encoded in the INT type itself: bits in the
            // low byte, bit offset in the third byte.
            let int_bitfield = m.legacy_encoding && member_ty.kind() == KIND_INT && {
                let enc = field(&self.data, member_ty.pos, 3, "int encoding truncated")?;
                (enc >> 16) & 0xff != 0
                    || u64::from(enc & 0xff) != u64::from(member_ty.size_or_type) * 8
            };
            if m.bitfield_size != 0 || int_bitfield {
                return Err(BtfError::Bitfield {
                    ty: struct_name.to_owned(),
                    member: prefix(end - 1),
                });
            }
            cur = member_ty;
        }
        if !bits.is_multiple_of(8) {
            return Err(BtfError::Unaligned {
                ty: struct_name.to_owned(),
                member: path.to_owned(),
                bit_offset: bits,
            });
        }
        u32::try_from(bits / 8).map_err(|_| malformed("member offset overflows u32", cur.pos))
    }
}

#[cfg(test)]
mod tests {
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
}
