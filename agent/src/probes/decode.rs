//! Decoding of ring buffer records into [`RawEvent`]s. Bytes from the kernel are checked, never
//! trusted: a short, oversized or unknown record is a [`DecodeError`] (counted by the reader),
//! never a panic. Layouts are the #[repr(C)] types of triage-agent-common, read field by field.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use triage_agent_common::{AF_INET, AF_INET6, COMM_LEN, ConnEvent, EventHeader, conn_flags, kind};

/// A decoded kernel event, before attribution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawEvent {
    ConnRefused(ConnRefused),
}

impl RawEvent {
    /// CLOCK_BOOTTIME nanoseconds at which the kernel saw the event.
    pub fn boot_ns(&self) -> u64 {
        match self {
            RawEvent::ConnRefused(e) => e.boot_ns,
        }
    }
}

/// Which end of a refused connection the kernel saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusedSide {
    /// A local connect() got RST in SYN_SENT.
    Connector,
    /// A local port with no listener answered a SYN with RST.
    Refuser,
}

/// The process that called connect().
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskInfo {
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
    /// cgroup v2 id of the task.
    pub cgroup_id: u64,
}

/// A refused TCP connection; `src` sent the SYN, `dst` answered with RST.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnRefused {
    pub side: RefusedSide,
    pub boot_ns: u64,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub task: Option<TaskInfo>,
    /// Raw `enum sk_rst_reason` value.
    pub reason: Option<u32>,
    pub sock_cookie: Option<u64>,
}

/// Why a record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than the {need}-byte {what}")]
    Short {
        what: &'static str,
        len: usize,
        need: usize,
    },
    #[error("unknown event kind {kind}")]
    UnknownKind { kind: u32 },
    #[error("event kind {kind} says {declared} bytes, record has {len}")]
    LengthMismatch {
        kind: u32,
        declared: u32,
        len: usize,
    },
    #[error("unknown address family {family}")]
    UnknownFamily { family: u16 },
}

/// Little cursor over a record: every read is bounds-checked.
struct Fields<'a> {
    bytes: &'a [u8],
    what: &'static str,
    need: usize,
}

impl Fields<'_> {
    fn array<const N: usize>(&self, offset: usize) -> Result<[u8; N], DecodeError> {
        offset
            .checked_add(N)
            .and_then(|end| self.bytes.get(offset..end))
            .and_then(|s| s.try_into().ok())
            .ok_or(DecodeError::Short {
                what: self.what,
                len: self.bytes.len(),
                need: self.need,
            })
    }
    fn u16(&self, offset: usize) -> Result<u16, DecodeError> {
        self.array(offset).map(u16::from_ne_bytes)
    }
    fn u32(&self, offset: usize) -> Result<u32, DecodeError> {
        self.array(offset).map(u32::from_ne_bytes)
    }
    fn u64(&self, offset: usize) -> Result<u64, DecodeError> {
        self.array(offset).map(u64::from_ne_bytes)
    }
}

/// Decodes one ring buffer record.
pub fn decode(bytes: &[u8]) -> Result<RawEvent, DecodeError> {
    let header_len = size_of::<EventHeader>();
    let f = Fields {
        bytes,
        what: "event header",
        need: header_len,
    };
    let event_kind = f.u32(std::mem::offset_of!(EventHeader, kind))?;
    let declared = f.u32(std::mem::offset_of!(EventHeader, len))?;
    let boot_ns = f.u64(std::mem::offset_of!(EventHeader, boot_ns))?;
    match event_kind {
        kind::CONNECT_REFUSED | kind::SYN_REFUSED => {
            let need = size_of::<ConnEvent>();
            if declared as usize != need || bytes.len() < need {
                return Err(DecodeError::LengthMismatch {
                    kind: event_kind,
                    declared,
                    len: bytes.len(),
                });
            }
            let side = if event_kind == kind::CONNECT_REFUSED {
                RefusedSide::Connector
            } else {
                RefusedSide::Refuser
            };
            decode_conn(
                &Fields {
                    bytes,
                    what: "connection event",
                    need,
                },
                side,
                boot_ns,
            )
            .map(RawEvent::ConnRefused)
        }
        other => Err(DecodeError::UnknownKind { kind: other }),
    }
}

fn decode_conn(
    f: &Fields<'_>,
    side: RefusedSide,
    boot_ns: u64,
) -> Result<ConnRefused, DecodeError> {
    use std::mem::offset_of;
    let family = f.u16(offset_of!(ConnEvent, family))?;
    let saddr: [u8; 16] = f.array(offset_of!(ConnEvent, saddr))?;
    let daddr: [u8; 16] = f.array(offset_of!(ConnEvent, daddr))?;
    let (src_ip, dst_ip) = match family {
        AF_INET => (ipv4(&saddr), ipv4(&daddr)),
        AF_INET6 => (ipv6(saddr), ipv6(daddr)),
        other => return Err(DecodeError::UnknownFamily { family: other }),
    };
    let flags = f.u32(offset_of!(ConnEvent, flags))?;
    let task = if flags & conn_flags::HAS_PROCESS != 0 {
        let comm: [u8; COMM_LEN] = f.array(offset_of!(ConnEvent, comm))?;
        Some(TaskInfo {
            pid: f.u32(offset_of!(ConnEvent, pid))?,
            tgid: f.u32(offset_of!(ConnEvent, tgid))?,
            comm: comm_string(&comm),
            cgroup_id: f.u64(offset_of!(ConnEvent, cgroup_id))?,
        })
    } else {
        None
    };
    let reason = if flags & conn_flags::HAS_REASON != 0 {
        Some(f.u32(offset_of!(ConnEvent, reason))?)
    } else {
        None
    };
    let cookie = f.u64(offset_of!(ConnEvent, sock_cookie))?;
    Ok(ConnRefused {
        side,
        boot_ns,
        src: SocketAddr::new(src_ip, f.u16(offset_of!(ConnEvent, sport))?),
        dst: SocketAddr::new(dst_ip, f.u16(offset_of!(ConnEvent, dport))?),
        task,
        reason,
        sock_cookie: Some(cookie).filter(|c| *c != 0),
    })
}

fn ipv4(a: &[u8; 16]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
}

fn ipv6(a: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(a);
    // A v4 peer of a dual-stack socket: report it as the IPv4 address pods are known by.
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The kernel's comm: up to 16 bytes, NUL-terminated when shorter; any bytes allowed.
fn comm_string(raw: &[u8]) -> String {
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(raw.get(..end).unwrap_or_default()).into_owned()
}

/// Encodes an event the way the kernel programs lay it out (tests, fuzzing, benchmarks).
pub fn encode_conn(e: &ConnEvent) -> Vec<u8> {
    use std::mem::offset_of;
    let mut out = vec![0u8; size_of::<ConnEvent>()];
    let mut put = |offset: usize, bytes: &[u8]| {
        if let Some(dst) = out.get_mut(offset..offset + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    };
    put(
        offset_of!(ConnEvent, header) + offset_of!(EventHeader, kind),
        &e.header.kind.to_ne_bytes(),
    );
    put(
        offset_of!(ConnEvent, header) + offset_of!(EventHeader, len),
        &e.header.len.to_ne_bytes(),
    );
    put(
        offset_of!(ConnEvent, header) + offset_of!(EventHeader, boot_ns),
        &e.header.boot_ns.to_ne_bytes(),
    );
    put(offset_of!(ConnEvent, cgroup_id), &e.cgroup_id.to_ne_bytes());
    put(
        offset_of!(ConnEvent, sock_cookie),
        &e.sock_cookie.to_ne_bytes(),
    );
    put(offset_of!(ConnEvent, pid), &e.pid.to_ne_bytes());
    put(offset_of!(ConnEvent, tgid), &e.tgid.to_ne_bytes());
    put(offset_of!(ConnEvent, flags), &e.flags.to_ne_bytes());
    put(offset_of!(ConnEvent, reason), &e.reason.to_ne_bytes());
    put(offset_of!(ConnEvent, family), &e.family.to_ne_bytes());
    put(offset_of!(ConnEvent, sport), &e.sport.to_ne_bytes());
    put(offset_of!(ConnEvent, dport), &e.dport.to_ne_bytes());
    put(offset_of!(ConnEvent, saddr), &e.saddr);
    put(offset_of!(ConnEvent, daddr), &e.daddr);
    put(offset_of!(ConnEvent, comm), &e.comm);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u32, family: u16) -> ConnEvent {
        let mut comm = [0u8; COMM_LEN];
        comm[..4].copy_from_slice(b"curl");
        let mut saddr = [0u8; 16];
        saddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        let mut daddr = [0u8; 16];
        daddr[..4].copy_from_slice(&[10, 0, 0, 3]);
        ConnEvent {
            header: EventHeader {
                kind,
                len: size_of::<ConnEvent>() as u32,
                boot_ns: 42,
            },
            cgroup_id: 1234,
            sock_cookie: 99,
            pid: 11,
            tgid: 10,
            flags: conn_flags::HAS_PROCESS,
            reason: 0,
            family,
            sport: 40000,
            dport: 8080,
            _pad0: 0,
            saddr,
            daddr,
            comm,
        }
    }

    #[test]
    fn decodes_connector_side() {
        let raw = encode_conn(&event(kind::CONNECT_REFUSED, AF_INET));
        let RawEvent::ConnRefused(e) = decode(&raw).unwrap();
        assert_eq!(e.side, RefusedSide::Connector);
        assert_eq!(e.boot_ns, 42);
        assert_eq!(e.src, "10.0.0.2:40000".parse().unwrap());
        assert_eq!(e.dst, "10.0.0.3:8080".parse().unwrap());
        let task = e.task.unwrap();
        assert_eq!((task.pid, task.tgid, task.cgroup_id), (11, 10, 1234));
        assert_eq!(task.comm, "curl");
        assert_eq!(e.sock_cookie, Some(99));
        assert_eq!(e.reason, None);
    }

    #[test]
    fn decodes_refuser_side_with_reason_and_v6() {
        let mut ev = event(kind::SYN_REFUSED, AF_INET6);
        ev.flags = conn_flags::HAS_REASON;
        ev.reason = 1;
        ev.saddr = "fd00::2".parse::<Ipv6Addr>().unwrap().octets();
        ev.daddr = "::ffff:10.0.0.3".parse::<Ipv6Addr>().unwrap().octets();
        let RawEvent::ConnRefused(e) = decode(&encode_conn(&ev)).unwrap();
        assert_eq!(e.side, RefusedSide::Refuser);
        assert_eq!(e.task, None);
        assert_eq!(e.reason, Some(1));
        assert_eq!(e.src, "[fd00::2]:40000".parse().unwrap());
        assert_eq!(
            e.dst,
            "10.0.0.3:8080".parse().unwrap(),
            "v4-mapped shown as v4"
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        let raw = encode_conn(&event(kind::CONNECT_REFUSED, AF_INET));
        for len in 0..raw.len() {
            assert!(decode(&raw[..len]).is_err(), "len {len}");
        }
    }

    #[test]
    fn garbage_is_an_error() {
        let mut raw = encode_conn(&event(kind::CONNECT_REFUSED, AF_INET));
        raw[0] = 0xff;
        assert!(matches!(decode(&raw), Err(DecodeError::UnknownKind { .. })));
        let mut ev = event(kind::CONNECT_REFUSED, 77);
        assert!(matches!(
            decode(&encode_conn(&ev)),
            Err(DecodeError::UnknownFamily { family: 77 })
        ));
        ev.family = AF_INET;
        ev.header.len = 8;
        assert!(matches!(
            decode(&encode_conn(&ev)),
            Err(DecodeError::LengthMismatch { .. })
        ));
        // Arbitrary bytes of every length never panic.
        let mut seed = 0x9e37_79b9_u32;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed as u8
                })
                .collect();
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn comm_without_nul_and_invalid_utf8() {
        assert_eq!(comm_string(b"abcdefghijklmnop"), "abcdefghijklmnop");
        assert_eq!(comm_string(&[0xff, b'a', 0, b'b']), "\u{fffd}a");
    }
}
