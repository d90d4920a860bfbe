//! Packets as the kernel holds them (`struct sk_buff`): where a packet's headers are, and the
//! header values the programs compare against. Read through BTF offsets by the tracepoint
//! programs that see a packet (drops, resets sent).
//!
//! Kernel interfaces: struct sk_buff.protocol (__be16 ETH_P_*), head (ptr), network_header /
//! transport_header (u16 offsets from head, 0xffff when unset).

use crate::{maps::offsets, read::kread};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
/// `skb->*_header` value meaning "not set".
pub const HEADER_UNSET: u16 = 0xffff;

/// The packet's ETH_P_* protocol, transport and network header offsets, and head pointer. In
/// every kernel since 4.x these four sit in one 24-byte stretch of `struct sk_buff`
/// (protocol, transport_header, network_header, ..., head): one read then, else four.
#[inline(always)]
pub fn skb_headers(skb: u64) -> Result<(u16, u16, u16, u64), i32> {
    let o = offsets();
    let base = o.skb.protocol;
    if o.skb.transport_header == base + 2
        && o.skb.network_header == base + 4
        && o.skb.head == base + 16
    {
        let w: [u8; 24] = kread(skb, base)?;
        return Ok((
            u16::from_be_bytes([w[0], w[1]]),
            u16::from_ne_bytes([w[2], w[3]]),
            u16::from_ne_bytes([w[4], w[5]]),
            u64::from_ne_bytes([w[16], w[17], w[18], w[19], w[20], w[21], w[22], w[23]]),
        ));
    }
    Ok((
        u16::from_be(kread::<u16>(skb, o.skb.protocol)?),
        kread(skb, o.skb.transport_header).unwrap_or(HEADER_UNSET),
        kread(skb, o.skb.network_header)?,
        kread(skb, o.skb.head)?,
    ))
}
