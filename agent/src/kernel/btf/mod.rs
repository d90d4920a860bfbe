//! Reader for the running kernel's BTF (/sys/kernel/btf/vmlinux): struct member offsets and enum
//! values, so eBPF programs get layouts of this kernel at load time instead of numbers compiled in.
//!
//! Only the raw little-endian format the kernel exports is supported (see
//! <https://docs.kernel.org/bpf/btf.html>). The blob is validated once on load (header, section
//! bounds, every type record's trailing data); lookups then read the bytes on demand. Every read
//! is bounds-checked and every chain that corrupt data could turn into a loop is capped, so any
//! input yields a value or a [`BtfError`], never a panic or a hang.
//!
//! Why our own reader: aya-obj keeps its BTF lookups private, and the crate that exposes
//! member offsets and enum values (btf-rs) is LGPL-licensed, which this project does not take
//! on. A differential test (`probes::offsets`) asks Trail of Bits' btfparse (Apache-2.0, a
//! test dependency) every layout the loader reads from the running kernel's BTF and requires
//! the same answer; btfparse itself is not used at run time because it indexes one type per
//! name (the kernel has same-named types) and resolves no enumerator by its own name, which
//! the loader needs (`MM_ANONPAGES`). Its public surface is the lookups,
//! [`Btf::member_offset`], [`Btf::struct_size`], [`Btf::enum_values`] and
//! [`Btf::enumerator`]; the format parsing is in [`format`].

mod format;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use format::*;

/// Where the running kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

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
    /// Tests: every layout lookup asked of this BTF, for the differential test against a
    /// second reader.
    #[cfg(test)]
    asked: std::sync::Mutex<Vec<Lookup>>,
}

/// A layout lookup, as the differential test replays it.
#[cfg(test)]
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lookup {
    /// [`Btf::member_offset`].
    Member(String, String),
    /// [`Btf::struct_size`].
    Size(String),
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
            #[cfg(test)]
            asked: std::sync::Mutex::default(),
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

    #[cfg(test)]
    fn record(&self, lookup: Lookup) {
        if let Ok(mut asked) = self.asked.lock() {
            asked.push(lookup);
        }
    }

    /// Tests: the lookups asked so far, each once, sorted.
    #[cfg(test)]
    pub fn asked(&self) -> Vec<Lookup> {
        let mut asked = self.asked.lock().map(|a| a.clone()).unwrap_or_default();
        asked.sort();
        asked.dedup();
        asked
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
        #[cfg(test)]
        self.record(Lookup::Member(struct_name.to_owned(), path.to_owned()));
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

    /// Size in bytes of a named struct or union (its full definition, not a forward one).
    pub fn struct_size(&self, name: &str) -> Result<u32, BtfError> {
        #[cfg(test)]
        self.record(Lookup::Size(name.to_owned()));
        self.named(name, &[KIND_STRUCT, KIND_UNION])?
            .into_iter()
            .find(|t| t.vlen() > 0)
            .map(|t| t.size_or_type)
            .ok_or_else(|| BtfError::NotFound {
                what: format!("struct {name}"),
            })
    }

    /// The value of an enumerator found by its own name in any enum, anonymous ones included
    /// (the kernel's `MM_ANONPAGES` belongs to an unnamed enum). Scans every enum: meant for a
    /// few lookups at load time.
    pub fn enumerator(&self, name: &str) -> Result<i64, BtfError> {
        for id in 1..=self.types.len() {
            let ty = self.ty(u32::try_from(id).map_err(|_| malformed("too many types", 0))?)?;
            let is64 = match ty.kind() {
                KIND_ENUM => false,
                KIND_ENUM64 => true,
                _ => continue,
            };
            for idx in 0..ty.vlen() {
                let pos = ty.item_pos(idx, if is64 { 12 } else { 8 })?;
                let word = |i| field(&self.data, pos, i, "enum value truncated");
                if self.str_at(word(0)?)? != name {
                    continue;
                }
                return Ok(match (is64, ty.kind_flag()) {
                    (true, _) => ((u64::from(word(2)?) << 32) | u64::from(word(1)?)) as i64,
                    (false, true) => i64::from(word(1)? as i32),
                    (false, false) => i64::from(word(1)?),
                });
            }
        }
        Err(BtfError::NotFound {
            what: format!("enumerator {name}"),
        })
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
