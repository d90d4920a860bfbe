//! The BTF format: header and section layout, type kinds and their trailing data, member
//! records. Bounds-checked readers; nothing here panics on any input.

use super::BtfError;

pub(super) const MAGIC: u16 = 0xeb9f;
/// Size of the version-1 header; `hdr_len` may be larger (future fields) but never smaller.
pub(super) const HEADER_LEN: usize = 24;
/// Size of `struct btf_type`, the fixed part of every type record.
pub(super) const TYPE_LEN: usize = 12;
/// Cap on typedef/qualifier chains and anonymous-member nesting. Real kernels stay in single
/// digits; reaching it means corrupt data with a loop, which must not hang the agent.
pub(super) const MAX_CHAIN: usize = 32;
/// Longest name accepted, well above the kernel's own limit of 512.
pub(super) const MAX_NAME: usize = 4096;

pub(super) const KIND_INT: u32 = 1;
pub(super) const KIND_PTR: u32 = 2;
pub(super) const KIND_ARRAY: u32 = 3;
pub(super) const KIND_STRUCT: u32 = 4;
pub(super) const KIND_UNION: u32 = 5;
pub(super) const KIND_ENUM: u32 = 6;
pub(super) const KIND_FWD: u32 = 7;
pub(super) const KIND_TYPEDEF: u32 = 8;
pub(super) const KIND_VOLATILE: u32 = 9;
pub(super) const KIND_CONST: u32 = 10;
pub(super) const KIND_RESTRICT: u32 = 11;
pub(super) const KIND_FUNC: u32 = 12;
pub(super) const KIND_FUNC_PROTO: u32 = 13;
pub(super) const KIND_VAR: u32 = 14;
pub(super) const KIND_DATASEC: u32 = 15;
pub(super) const KIND_FLOAT: u32 = 16;
pub(super) const KIND_DECL_TAG: u32 = 17;
pub(super) const KIND_TYPE_TAG: u32 = 18;
pub(super) const KIND_ENUM64: u32 = 19;

pub(super) fn malformed(what: &'static str, offset: usize) -> BtfError {
    BtfError::Malformed { what, offset }
}

pub(super) fn read_u32(data: &[u8], pos: usize) -> Option<u32> {
    let bytes = data.get(pos..pos.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// Reads the `idx`-th little-endian u32 after `pos`, as a `Malformed` error if out of bounds.
pub(super) fn field(
    data: &[u8],
    pos: usize,
    idx: usize,
    what: &'static str,
) -> Result<u32, BtfError> {
    idx.checked_mul(4)
        .and_then(|d| pos.checked_add(d))
        .and_then(|p| read_u32(data, p))
        .ok_or_else(|| malformed(what, pos))
}

/// Bytes of kind-specific data after the 12-byte record, or `None` for an unknown kind (its
/// size is unknowable, so parsing cannot continue past it).
pub(super) fn trailing_len(kind: u32, vlen: usize) -> Option<usize> {
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
pub(super) struct Type {
    pub(super) id: u32,
    /// Absolute byte position of the record in the blob.
    pub(super) pos: usize,
    pub(super) name_off: u32,
    pub(super) info: u32,
    pub(super) size_or_type: u32,
}

impl Type {
    pub(super) fn kind(&self) -> u32 {
        (self.info >> 24) & 0x1f
    }
    pub(super) fn vlen(&self) -> usize {
        (self.info & 0xffff) as usize
    }
    pub(super) fn kind_flag(&self) -> bool {
        self.info >> 31 == 1
    }
    pub(super) fn is_composite(&self) -> bool {
        matches!(self.kind(), KIND_STRUCT | KIND_UNION)
    }
    /// Position of the `idx`-th trailing item of `item_len` bytes.
    pub(super) fn item_pos(&self, idx: usize, item_len: usize) -> Result<usize, BtfError> {
        idx.checked_mul(item_len)
            .and_then(|d| d.checked_add(TYPE_LEN))
            .and_then(|d| d.checked_add(self.pos))
            .ok_or_else(|| malformed("trailing data offset overflows", self.pos))
    }
}

/// A struct/union member as found, with its offset already split by the parent's kind_flag.
pub(super) struct Member {
    pub(super) name_off: u32,
    pub(super) type_id: u32,
    pub(super) bit_offset: u32,
    /// Non-zero for a bitfield declared through the parent's kind_flag encoding.
    pub(super) bitfield_size: u32,
    /// Parent had kind_flag clear: a bitfield would then show up in the INT type's encoding.
    pub(super) legacy_encoding: bool,
}
