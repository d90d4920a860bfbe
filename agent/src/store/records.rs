//! The records' stored layout: compact, in place, no heap allocation per record.
//!
//! A record is an [`Evidence`] at the store's edges (queries, watchers, the backend) and a
//! fixed-size [`Stored`] inside it, in a slab grown by chunks of [`CHUNK`] records (never
//! doubled, so no record pays for an empty half), found by index:
//! - who and the detail's names (pod, container, process, attribution, reason, drop location,
//!   peer) are one [`Context`], interned: the records of one pod's container share it, so a
//!   record holds its index;
//! - times are nanoseconds since the Unix epoch (before it: the epoch);
//! - the detail of a refusal, timeout or drop between IPv4 addresses is packed in place
//!   ([`V4`], 24 bytes with its tag); other details (DNS, IPv6, OOM kills, throttling) are
//!   boxed whole;
//! - a folded record's tallies ([`Folded`]) live in a side table, as few records fold;
//! - its owner's last-seen order is two links in the record ([`List`]);
//! - the table from a key's hash to the record holds the index alone (4 bytes); the record
//!   keeps its key's hash (the table grows, and a record leaves it, without rebuilding keys),
//!   and its key is rebuilt from the record to compare when the hashes are equal.
//!
//! The store's node name is the store's, not each record's.

use std::{
    hash::BuildHasher as _,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::Arc,
    time::{Duration, SystemTime},
};

use hashbrown::HashTable;

use super::{Buffered, Key, owner_of};
use crate::evidence::{
    Attribution, Cause, Connection, CpuThrottling, Detail, Direction, Drop, Evidence, Folded, Kind,
    PodRef, Process, Protocol, Subject,
};

/// No record: the end of a list, a free slot's context.
pub(super) const NIL: u32 = u32::MAX;
/// Records per chunk of the slab: 80 KiB, allocated when the last one fills.
const CHUNK: usize = 1024;
/// Most records an insertion in last-seen order steps over from its list's newest end. An
/// occurrence is rarely older than more than a few of its pod's records (the flow table's
/// repeats arrive up to a drain interval late); past this, the list is marked unsorted
/// ([`List::sorted`]) rather than walked further, so no sequence of occurrences makes an
/// insertion cost more than this.
const WALK: usize = 64;
/// Most records the store holds: indices are `u32`, [`NIL`] excluded.
pub(super) const MAX_RECORDS: usize = (u32::MAX - 1) as usize;

/// Nanoseconds since the Unix epoch (0 before it, `u64::MAX` past the year 2554).
pub(super) fn stamp(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The time a [`stamp`] stands for.
pub(super) fn time(stamp: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(stamp)
}

fn index(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(NIL)
}

/// Who a record is about and the names its detail shares with its pod's other records.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Context {
    pod: Option<Arc<PodRef>>,
    container: Option<Arc<str>>,
    process: Option<Process>,
    attribution: Attribution,
    /// A packed detail's reason (errno or reset name; a drop's reason).
    reason: Option<Arc<str>>,
    /// A packed drop's location.
    location: Option<Arc<str>>,
    /// A packed detail's peer pod.
    peer: Option<Arc<PodRef>>,
}

/// The contexts records hold, each once, with the number of records holding it.
#[derive(Default)]
struct Contexts {
    /// What the cluster and the kernel name (pods, containers, process names, kernel reasons):
    /// never keys a packet's sender chooses.
    hasher: foldhash::fast::RandomState,
    table: HashTable<u32>,
    slots: Vec<Option<(Context, u32)>>,
    free: Vec<u32>,
}

impl Contexts {
    fn get(&self, i: u32) -> Option<&Context> {
        match self.slots.get(i as usize) {
            Some(Some((c, _))) => Some(c),
            _ => None,
        }
    }

    /// The index of `c`, one more record holding it.
    fn hold(&mut self, c: Context) -> u32 {
        let Contexts {
            hasher,
            table,
            slots,
            free,
        } = self;
        let hash = hasher.hash_one(&c);
        let found = table
            .find(
                hash,
                |&i| matches!(slots.get(i as usize), Some(Some((s, _))) if *s == c),
            )
            .copied();
        if let Some(i) = found {
            if let Some(Some((_, refs))) = slots.get_mut(i as usize) {
                *refs += 1;
            }
            return i;
        }
        let i = match free.pop() {
            Some(i) => {
                if let Some(slot) = slots.get_mut(i as usize) {
                    *slot = Some((c, 1));
                }
                i
            }
            None => {
                slots.push(Some((c, 1)));
                index(slots.len() - 1)
            }
        };
        table.insert_unique(hash, i, |&j| match slots.get(j as usize) {
            Some(Some((s, _))) => hasher.hash_one(s),
            _ => 0,
        });
        i
    }

    /// One record fewer holds context `i`; the last one lets it go.
    fn release(&mut self, i: u32) {
        let Some(Some((c, refs))) = self.slots.get_mut(i as usize) else {
            return;
        };
        *refs -= 1;
        if *refs > 0 {
            return;
        }
        let hash = self.hasher.hash_one(&*c);
        if let Ok(entry) = self.table.find_entry(hash, |&j| j == i) {
            entry.remove();
        }
        if let Some(slot) = self.slots.get_mut(i as usize) {
            *slot = None;
        }
        self.free.push(i);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.len()
    }
}

/// A refusal, timeout or drop between IPv4 addresses, in place; its names are its context's.
#[derive(Clone, Copy, Debug)]
struct V4 {
    kind: Kind,
    direction: Direction,
    protocol: Protocol,
    cause: Option<Cause>,
    tcp_flags: Option<u8>,
    syn_retransmits: u32,
    src: [u8; 4],
    dst: [u8; 4],
    src_port: u16,
    dst_port: u16,
}

/// A record's detail as stored.
#[derive(Debug)]
enum Packed {
    V4(V4),
    Boxed(Box<Detail>),
    /// A free slot's.
    Free,
}

/// The names a packed detail leaves to its context: reason, location, peer.
type Names = (Option<Arc<str>>, Option<Arc<str>>, Option<Arc<PodRef>>);

fn v4(a: SocketAddr) -> Option<SocketAddrV4> {
    match a {
        SocketAddr::V4(a) => Some(a),
        SocketAddr::V6(_) => None,
    }
}

/// `detail` as stored, with the names it leaves to its context; `spare` is a box to reuse for a
/// detail that is not packed.
fn pack(detail: Detail, spare: Option<Box<Detail>>) -> (Packed, Names) {
    let kind = detail.kind();
    let packed = match &detail {
        Detail::ConnectionRefused(c) | Detail::ConnectionTimeout(c) => {
            v4(c.src).zip(v4(c.dst)).map(|(src, dst)| V4 {
                kind,
                direction: c.direction,
                protocol: c.protocol,
                cause: c.cause,
                tcp_flags: None,
                syn_retransmits: c.syn_retransmits,
                src: src.ip().octets(),
                dst: dst.ip().octets(),
                src_port: src.port(),
                dst_port: dst.port(),
            })
        }
        Detail::PacketDrop(d) => v4(d.src).zip(v4(d.dst)).map(|(src, dst)| V4 {
            kind,
            direction: d.direction,
            protocol: d.protocol,
            cause: None,
            tcp_flags: d.tcp_flags,
            syn_retransmits: 0,
            src: src.ip().octets(),
            dst: dst.ip().octets(),
            src_port: src.port(),
            dst_port: dst.port(),
        }),
        _ => None,
    };
    match (packed, detail) {
        (Some(v), Detail::ConnectionRefused(c) | Detail::ConnectionTimeout(c)) => {
            (Packed::V4(v), (c.reason, None, c.peer))
        }
        (Some(v), Detail::PacketDrop(d)) => (Packed::V4(v), (Some(d.reason), d.location, d.peer)),
        (_, detail) => {
            let b = match spare {
                Some(mut b) => {
                    *b = detail;
                    b
                }
                None => Box::new(detail),
            };
            (Packed::Boxed(b), (None, None, None))
        }
    }
}

/// The detail `v` packed, with its context's names.
fn unpack(v: &V4, c: &Context) -> Detail {
    let src = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(v.src), v.src_port));
    let dst = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(v.dst), v.dst_port));
    let connection = || Connection {
        direction: v.direction,
        src,
        dst,
        protocol: v.protocol,
        reason: c.reason.clone(),
        peer: c.peer.clone(),
        cause: v.cause,
        syn_retransmits: v.syn_retransmits,
    };
    match v.kind {
        Kind::ConnectionTimeout => Detail::ConnectionTimeout(connection()),
        Kind::PacketDrop => Detail::PacketDrop(Drop {
            direction: v.direction,
            src,
            dst,
            protocol: v.protocol,
            reason: c.reason.clone().unwrap_or_else(|| "".into()),
            peer: c.peer.clone(),
            tcp_flags: v.tcp_flags,
            location: c.location.clone(),
        }),
        // Only the three traffic kinds are packed.
        _ => Detail::ConnectionRefused(connection()),
    }
}

/// One record in the slab.
#[derive(Debug)]
struct Stored {
    /// Its [`Context`]; [`NIL`] for a free slot.
    context: u32,
    /// Its neighbours in its owner's [`List`] (older, newer); a free slot's `next` is the next
    /// free slot.
    prev: u32,
    next: u32,
    detail: Packed,
    first_seen: u64,
    last_seen: u64,
    count: u64,
    /// Its identity for the backend.
    id: u64,
    /// Its key's hash: the table grows and a record leaves it without its key rebuilt.
    hash: u64,
}

// The layout the memory figures rest on (agent/tests/memory.rs measures it held).
const _: () = assert!(size_of::<Packed>() == 24);
const _: () = assert!(size_of::<Stored>() == 80);

/// One owner's records in last-seen order, oldest first, linked through the records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct List {
    head: u32,
    tail: u32,
    len: u32,
    /// Whether the order is exact. An insertion that would step over more than [`WALK`] newer
    /// records goes where the walk stopped and clears it (set again when the list empties):
    /// eviction for room then takes a record nearly the oldest, and the sweep and queries look
    /// at the whole list instead of stopping at the first record out of their window.
    pub(super) sorted: bool,
}

impl Default for List {
    fn default() -> List {
        List {
            head: NIL,
            tail: NIL,
            len: 0,
            sorted: true,
        }
    }
}

impl List {
    pub(super) fn len(&self) -> usize {
        self.len as usize
    }
}

/// Records by key without storing the key, in a slab of compact records (see the module's
/// documentation).
#[derive(Default)]
pub(super) struct Records {
    /// SipHash with a random key: a packet's sender chooses much of a key.
    hasher: std::hash::RandomState,
    /// Record indices by their key's hash.
    table: HashTable<u32>,
    chunks: Vec<Vec<Stored>>,
    /// The first free slot (a chain through `next`), or [`NIL`].
    free: Option<u32>,
    len: usize,
    contexts: Contexts,
    folded: foldhash::HashMap<u32, Box<Folded>>,
}

/// What a removed record leaves: its id, last sighting, and the record itself when asked.
pub(super) struct Removed {
    pub(super) id: u64,
    pub(super) last_seen: SystemTime,
    pub(super) evidence: Option<Evidence>,
}

impl Records {
    pub(super) fn hash(&self, key: &Key) -> u64 {
        hash_key(&self.hasher, key)
    }

    fn slot(&self, i: u32) -> Option<&Stored> {
        let i = i as usize;
        self.chunks
            .get(i / CHUNK)
            .and_then(|c| c.get(i % CHUNK))
            .filter(|s| s.context != NIL)
    }

    fn slot_mut(&mut self, i: u32) -> Option<&mut Stored> {
        let i = i as usize;
        self.chunks
            .get_mut(i / CHUNK)
            .and_then(|c| c.get_mut(i % CHUNK))
            .filter(|s| s.context != NIL)
    }

    /// The parts a key is rebuilt from.
    fn view(&self) -> View<'_> {
        View {
            chunks: &self.chunks,
            contexts: &self.contexts,
            folded: &self.folded,
        }
    }

    /// Record `i`'s detail.
    fn detail(&self, i: u32) -> Option<Detail> {
        self.view().detail(i)
    }

    /// Record `i`'s key, rebuilt.
    fn key_of(&self, i: u32) -> Option<Key> {
        self.view().key_of(i)
    }

    /// The record under `key` (whose hash is `hash`).
    pub(super) fn find(&self, hash: u64, key: &Key) -> Option<u32> {
        self.table
            .find(hash, |&i| {
                self.slot(i).is_some_and(|s| s.hash == hash)
                    && self.key_of(i).is_some_and(|k| k == *key)
            })
            .copied()
    }

    /// Record `i` as [`Evidence`] of `node`.
    pub(super) fn evidence(&self, i: u32, node: &Arc<str>) -> Option<Evidence> {
        // A live record only (a freed slot has no context).
        self.slot(i)?;
        self.evidence_with(i, node, self.detail(i)?, self.folded.get(&i).cloned())
    }

    /// Record `i`'s kind, last sighting and count (what a query sorts by).
    pub(super) fn summary(&self, i: u32) -> Option<(Kind, u64, u64)> {
        let s = self.slot(i)?;
        let kind = match &s.detail {
            Packed::V4(v) => v.kind,
            Packed::Boxed(d) => d.kind(),
            Packed::Free => return None,
        };
        Some((kind, s.last_seen, s.count))
    }

    /// Record `i`'s last sighting and id: its place in its owner's order.
    pub(super) fn place(&self, i: u32) -> Option<(u64, u64)> {
        self.slot(i).map(|s| (s.last_seen, s.id))
    }

    /// Whether record `i` is peer-driven ([`Detail::folding`]): it goes to its owner's inbound
    /// list.
    pub(super) fn inbound(&self, i: u32) -> bool {
        match self.slot(i).map(|s| &s.detail) {
            Some(Packed::V4(v)) => v.direction == Direction::Inbound,
            Some(Packed::Boxed(d)) => d.folding().is_some(),
            _ => false,
        }
    }

    /// Record `i`'s id.
    pub(super) fn id(&self, i: u32) -> Option<u64> {
        self.slot(i).map(|s| s.id)
    }

    /// Adds `e` under `hash` (its key's), with `id`, in no list yet; returns its index.
    pub(super) fn insert(&mut self, hash: u64, e: Evidence, id: u64) -> u32 {
        let Evidence {
            subject,
            first_seen,
            last_seen,
            count,
            detail,
            folded,
            ..
        } = e;
        let (first_seen, last_seen) = (stamp(first_seen), stamp(last_seen));
        let (packed, (reason, location, peer)) = pack(detail, None);
        let context = self.contexts.hold(Context {
            pod: subject.pod,
            container: subject.container,
            process: subject.process,
            attribution: subject.attribution,
            reason,
            location,
            peer,
        });
        let stored = Stored {
            context,
            prev: NIL,
            next: NIL,
            detail: packed,
            first_seen,
            last_seen,
            count,
            id,
            hash,
        };
        let i = match self.free {
            Some(i) => {
                let next = self.slot_any(i).map_or(NIL, |s| s.next);
                self.free = (next != NIL).then_some(next);
                if let Some(s) = self.slot_any_mut(i) {
                    *s = stored;
                }
                i
            }
            None => {
                if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
                    self.chunks.push(Vec::with_capacity(CHUNK));
                }
                let base = (self.chunks.len() - 1) * CHUNK;
                let Some(chunk) = self.chunks.last_mut() else {
                    return NIL;
                };
                chunk.push(stored);
                index(base + chunk.len() - 1)
            }
        };
        if let Some(f) = folded {
            self.folded.insert(i, f);
        }
        self.len += 1;
        let Records { table, chunks, .. } = self;
        table.insert_unique(hash, i, |&j| {
            let j = j as usize;
            chunks
                .get(j / CHUNK)
                .and_then(|c| c.get(j % CHUNK))
                .map_or(0, |s| s.hash)
        });
        i
    }

    fn slot_any(&self, i: u32) -> Option<&Stored> {
        let i = i as usize;
        self.chunks.get(i / CHUNK).and_then(|c| c.get(i % CHUNK))
    }

    fn slot_any_mut(&mut self, i: u32) -> Option<&mut Stored> {
        let i = i as usize;
        self.chunks
            .get_mut(i / CHUNK)
            .and_then(|c| c.get_mut(i % CHUNK))
    }

    /// Counts `o` in record `i` ([`Evidence::absorb`]); the key stays the same.
    pub(super) fn absorb(&mut self, i: u32, o: crate::evidence::Occurrence, node: &Arc<str>) {
        // A boxed detail is moved out and back, so its box is kept.
        let mut spare = None;
        let Some(mut e) = (match self.slot_mut(i) {
            Some(Stored {
                detail: Packed::Boxed(b),
                ..
            }) => {
                let placeholder = Detail::CpuThrottling(CpuThrottling {
                    throttled_periods: 0,
                    total_periods: 0,
                    throttled_us: 0,
                    limit_millicores: None,
                    interval_ms: 0,
                    cpu_pressure_some_avg10: None,
                });
                let detail = std::mem::replace(&mut **b, placeholder);
                let folded = self.folded.remove(&i);
                let e = self.evidence_with(i, node, detail, folded);
                if let Some(Stored {
                    detail: detail @ Packed::Boxed(_),
                    ..
                }) = self.slot_mut(i)
                    && let Packed::Boxed(b) = std::mem::replace(detail, Packed::Free)
                {
                    spare = Some(b);
                }
                e
            }
            _ => {
                let detail = self.detail(i);
                let folded = self.folded.remove(&i);
                detail.and_then(|d| self.evidence_with(i, node, d, folded))
            }
        }) else {
            return;
        };
        e.absorb(o);
        let (packed, names) = pack(e.detail, spare);
        let (reason, location, peer) = names;
        let context = Context {
            pod: e.subject.pod,
            container: e.subject.container,
            process: e.subject.process,
            attribution: e.subject.attribution,
            reason,
            location,
            peer,
        };
        let Some(old) = self.slot(i).map(|s| s.context) else {
            return;
        };
        let context = if self.contexts.get(old) == Some(&context) {
            old
        } else {
            let new = self.contexts.hold(context);
            self.contexts.release(old);
            new
        };
        match e.folded {
            Some(f) => {
                self.folded.insert(i, f);
            }
            None => {
                self.folded.remove(&i);
            }
        }
        if let Some(s) = self.slot_mut(i) {
            s.context = context;
            s.detail = packed;
            s.first_seen = stamp(e.first_seen);
            s.last_seen = stamp(e.last_seen);
            s.count = e.count;
        }
    }

    /// Record `i` as [`Evidence`], with `detail` as its detail and `folded` as its tallies
    /// (taken out of the side table, not copied).
    fn evidence_with(
        &self,
        i: u32,
        node: &Arc<str>,
        detail: Detail,
        folded: Option<Box<Folded>>,
    ) -> Option<Evidence> {
        let s = self.slot_any(i)?;
        let c = self.contexts.get(s.context)?;
        Some(Evidence {
            node: node.clone(),
            subject: Subject {
                pod: c.pod.clone(),
                container: c.container.clone(),
                process: c.process.clone(),
                attribution: c.attribution,
            },
            first_seen: time(s.first_seen),
            last_seen: time(s.last_seen),
            count: s.count,
            detail,
            folded,
        })
    }

    /// Removes record `i` (whose key's hash is `hash`: [`Records::rehash`]); with `node`, hands
    /// the record back as [`Evidence`].
    pub(super) fn remove(&mut self, hash: u64, i: u32, node: Option<&Arc<str>>) -> Option<Removed> {
        let evidence = node.and_then(|node| self.evidence(i, node));
        let free = self.free.unwrap_or(NIL);
        let s = self.slot_mut(i)?;
        let removed = Removed {
            id: s.id,
            last_seen: time(s.last_seen),
            evidence,
        };
        let context = std::mem::replace(&mut s.context, NIL);
        s.detail = Packed::Free;
        s.prev = NIL;
        s.next = free;
        self.free = Some(i);
        self.contexts.release(context);
        self.folded.remove(&i);
        if let Ok(entry) = self.table.find_entry(hash, |&j| j == i) {
            entry.remove();
        }
        self.len -= 1;
        Some(removed)
    }

    /// The hash record `i` is filed under.
    pub(super) fn hash_of(&self, i: u32) -> u64 {
        self.slot(i).map_or(0, |s| s.hash)
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Distinct contexts held.
    #[cfg(test)]
    pub(super) fn contexts(&self) -> usize {
        self.contexts.len()
    }

    /// The oldest record of `list`: its index and place.
    pub(super) fn first(&self, list: &List) -> Option<(u32, (u64, u64))> {
        let i = list.head;
        Some((i, self.place(i)?))
    }

    /// Puts record `i` into `list` by its last sighting (after records seen at the same time).
    pub(super) fn link(&mut self, list: &mut List, i: u32) {
        let Some(at) = self.slot(i).map(|s| s.last_seen) else {
            return;
        };
        // The record `i` goes after: the newest not seen later than it.
        let mut after = list.tail;
        let mut steps = 0;
        while let Some(s) = self.slot(after)
            && s.last_seen > at
        {
            if steps == WALK {
                list.sorted = false;
                break;
            }
            after = s.prev;
            steps += 1;
        }
        let before = match self.slot(after) {
            Some(s) => s.next,
            None => list.head,
        };
        if let Some(s) = self.slot_mut(i) {
            s.prev = after;
            s.next = before;
        }
        match self.slot_mut(after) {
            Some(s) => s.next = i,
            None => list.head = i,
        }
        match self.slot_mut(before) {
            Some(s) => s.prev = i,
            None => list.tail = i,
        }
        list.len += 1;
    }

    /// Takes record `i` out of `list`.
    pub(super) fn unlink(&mut self, list: &mut List, i: u32) {
        let Some((prev, next)) = self.slot(i).map(|s| (s.prev, s.next)) else {
            return;
        };
        match self.slot_mut(prev) {
            Some(s) => s.next = next,
            None => list.head = next,
        }
        match self.slot_mut(next) {
            Some(s) => s.prev = prev,
            None => list.tail = prev,
        }
        if let Some(s) = self.slot_mut(i) {
            s.prev = NIL;
            s.next = NIL;
        }
        list.len = list.len.saturating_sub(1);
        if list.len == 0 {
            *list = List::default();
        }
    }

    /// The records of `list`, newest first.
    pub(super) fn newest_first<'a>(&'a self, list: &List) -> impl Iterator<Item = u32> + 'a {
        let mut at = list.tail;
        std::iter::from_fn(move || {
            let s = self.slot(at)?;
            let i = at;
            at = s.prev;
            Some(i)
        })
    }
}

/// The records' parts a key is rebuilt from, borrowed apart from the table.
struct View<'a> {
    chunks: &'a [Vec<Stored>],
    contexts: &'a Contexts,
    folded: &'a foldhash::HashMap<u32, Box<Folded>>,
}

impl View<'_> {
    fn detail(&self, i: u32) -> Option<Detail> {
        let u = i as usize;
        let s = self
            .chunks
            .get(u / CHUNK)
            .and_then(|c| c.get(u % CHUNK))
            .filter(|s| s.context != NIL)?;
        match &s.detail {
            Packed::V4(v) => Some(unpack(v, self.contexts.get(s.context)?)),
            Packed::Boxed(d) => Some((**d).clone()),
            Packed::Free => None,
        }
    }

    fn key_of(&self, i: u32) -> Option<Key> {
        let u = i as usize;
        let s = self.chunks.get(u / CHUNK).and_then(|c| c.get(u % CHUNK))?;
        let c = self.contexts.get(s.context)?;
        let detail = self.detail(i)?;
        let folded = self.folded.contains_key(&i);
        let key = detail.key();
        Some(Key {
            kind: detail.kind(),
            owner: owner_of(c.pod.as_ref()),
            container: c.container.clone(),
            detail: if folded { key.folded() } else { key },
            folded,
        })
    }
}

fn hash_key(hasher: &std::hash::RandomState, key: &Key) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = Buffered {
        inner: hasher.build_hasher(),
        buf: [0; 256],
        len: 0,
    };
    key.hash(&mut h);
    h.finish()
}
