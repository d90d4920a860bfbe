//! The identity of a query, computed the same way by the kernel and the agent.

use super::event::DNS_PAYLOAD_CAP;

/// The multiplier of [`dns_question_hash`] (2^64 divided by the golden ratio, odd).
pub const DNS_HASH_MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;
/// The starting value of [`dns_question_hash`].
pub const DNS_HASH_SEED: u64 = 0xcbf2_9ce4_8422_2325;

/// One step of [`dns_question_hash`]: the word mixed in by a multiplication (which carries
/// each bit to the higher ones) and a shift back down (so a difference in a word's high bytes
/// reaches every bit after the next step, not only the top ones).
#[inline(always)]
pub const fn dns_hash_step(h: u64, word: u64) -> u64 {
    let x = (h ^ word).wrapping_mul(DNS_HASH_MULTIPLIER);
    x ^ (x >> 32)
}

/// The identity of a query as the kernel and the agent both compute it: its payload as sent
/// (`payload`: the captured bytes, at most [`DNS_PAYLOAD_CAP`]) read as little-endian 64-bit
/// words, the last one zero-padded, with the id (bytes 0 and 1) left out; then the server's
/// address (16 bytes, IPv4 in the first 4), its port and the family. The kernel computes the
/// same steps over the held query in agent-ebpf/src/dns/repeats.rs.
pub fn dns_question_hash(payload: &[u8], server: &[u8; 16], server_port: u16, family: u16) -> u64 {
    let mut h = DNS_HASH_SEED;
    let payload = payload.get(..DNS_PAYLOAD_CAP).unwrap_or(payload);
    for (i, chunk) in payload.chunks(8).enumerate() {
        let mut word = [0u8; 8];
        for (to, from) in word.iter_mut().zip(chunk) {
            *to = *from;
        }
        let mut w = u64::from_le_bytes(word);
        if i == 0 {
            w &= !0xffff;
        }
        h = dns_hash_step(h, w);
    }
    let (mut lo, mut hi) = ([0u8; 8], [0u8; 8]);
    for (i, b) in server.iter().enumerate() {
        if let Some(to) = if i < 8 {
            lo.get_mut(i)
        } else {
            hi.get_mut(i - 8)
        } {
            *to = *b;
        }
    }
    h = dns_hash_step(h, u64::from_le_bytes(lo));
    h = dns_hash_step(h, u64::from_le_bytes(hi));
    dns_hash_step(
        h,
        u64::from(server_port) | u64::from(family) << 16 | (payload.len() as u64) << 32,
    )
}
