//! A DNS packet from the kernel's ring: the record's fixed fields checked, never trusted, and
//! the payload's header and first question parsed with the `domain` library (lazily, without
//! copying: answer records are never looked at). Nothing here panics on any bytes; every
//! failure is a [`PacketError`] the caller counts.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use crate::probes::decode::{encode as record_bytes, read_record};
use domain::base::Message as DnsMessage;
use triage_agent_common::{
    AF_INET, AF_INET6, DNS_PAYLOAD_CAP, DnsEvent, DnsHeld, EventHeader, IPPROTO_TCP, IPPROTO_UDP,
    dns_flags, kind,
};

use crate::evidence::Protocol;

/// Why a record or its payload could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("record of {0} bytes is not a DNS event")]
    Record(usize),
    #[error("unknown address family {0}")]
    Family(u16),
    #[error("not UDP or TCP: protocol {0}")]
    Protocol(u8),
    #[error("captured length {0} exceeds the payload")]
    Captured(u16),
    /// A TCP segment carrying only the 2-byte length prefix (the message follows in the next
    /// segment): nothing to parse, not malformed.
    #[error("TCP segment without a DNS message")]
    NoMessage,
    #[error("DNS header or question unreadable")]
    Malformed,
}

/// Which socket saw the packet: the asking side or the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The packet went out of a socket (a query sent, or an answer sent by a server).
    Egress,
    /// The packet arrived at a socket.
    Ingress,
}

/// What a DNS server socket of this host did with a query the kernel held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerSide {
    /// The server socket's cgroup, when one of this host received the query.
    pub cgroup: Option<u64>,
    /// Whether that server sent its answer.
    pub answered: bool,
}

/// The fixed fields of a DNS ring record and its payload prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Captured<'a> {
    pub boot_ns: u64,
    pub cgroup_id: u64,
    pub side: Side,
    pub protocol: Protocol,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// Payload bytes on the wire.
    pub wire_len: u32,
    /// The copied prefix.
    pub payload: &'a [u8],
    /// A query the kernel held ([`DnsHeld`]): what a server of this host did with it.
    pub server: Option<ServerSide>,
}

impl Captured<'_> {
    /// Whether the wire payload was longer than the copy.
    pub fn truncated(&self) -> bool {
        self.wire_len as usize > self.payload.len()
    }
}

/// Reads a ring record (a [`DnsEvent`], or a [`DnsHeld`] when flagged held).
pub fn decode(record: &[u8]) -> Result<Captured<'_>, PacketError> {
    let e: DnsEvent = read_record(record).ok_or(PacketError::Record(record.len()))?;
    if e.header.kind != kind::DNS {
        return Err(PacketError::Record(record.len()));
    }
    let protocol = match e.protocol {
        p if u16::from(p) == IPPROTO_TCP => Protocol::Tcp,
        IPPROTO_UDP => Protocol::Udp,
        other => return Err(PacketError::Protocol(other)),
    };
    let server = if e.flags & dns_flags::HELD != 0 {
        let held: DnsHeld = read_record(record).ok_or(PacketError::Record(record.len()))?;
        Some(ServerSide {
            cgroup: (held.reached != 0).then_some(held.server_cgroup),
            answered: held.answered != 0,
        })
    } else {
        None
    };
    if usize::from(e.captured) > DNS_PAYLOAD_CAP || u32::from(e.captured) > e.wire_len {
        return Err(PacketError::Captured(e.captured));
    }
    let ip = |a: [u8; 16]| -> Result<IpAddr, PacketError> {
        match e.family {
            AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))),
            AF_INET6 => Ok(IpAddr::V6(Ipv6Addr::from(a)).to_canonical()),
            other => Err(PacketError::Family(other)),
        }
    };
    let payload_at = std::mem::offset_of!(DnsEvent, payload);
    Ok(Captured {
        boot_ns: e.header.boot_ns,
        cgroup_id: e.cgroup_id,
        side: if e.flags & dns_flags::EGRESS != 0 {
            Side::Egress
        } else {
            Side::Ingress
        },
        protocol,
        src: SocketAddr::new(ip(e.saddr)?, e.sport),
        dst: SocketAddr::new(ip(e.daddr)?, e.dport),
        wire_len: e.wire_len,
        payload: record
            .get(payload_at..payload_at + usize::from(e.captured))
            .ok_or(PacketError::Captured(e.captured))?,
        server,
    })
}

/// What the agent reads of a DNS message: its header and first question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub id: u16,
    /// An answer (QR set).
    pub response: bool,
    /// Truncated (TC set).
    pub truncated: bool,
    /// The header's rcode (0 = NOERROR).
    pub rcode: u8,
    /// The question's name as asked, without the trailing dot ("." for the root).
    pub qname: Arc<str>,
    pub qtype: u16,
}

/// Parses a DNS payload (TCP: behind its 2-byte length prefix).
pub fn parse(protocol: Protocol, payload: &[u8]) -> Result<Message, PacketError> {
    let message = match protocol {
        Protocol::Tcp => match payload.get(2..) {
            Some([]) | None => return Err(PacketError::NoMessage),
            Some(rest) => rest,
        },
        _ => payload,
    };
    let msg = DnsMessage::from_octets(message).map_err(|_| PacketError::Malformed)?;
    let header = msg.header();
    let question = match msg.question().next() {
        Some(Ok(q)) => q,
        _ => return Err(PacketError::Malformed),
    };
    let mut qname = question.qname().to_string();
    if qname.len() > 1 && qname.ends_with('.') {
        qname.pop();
    }
    Ok(Message {
        id: header.id(),
        response: header.qr(),
        truncated: header.tc(),
        rcode: header.rcode().to_int(),
        qname: qname.into(),
        qtype: question.qtype().to_int(),
    })
}

/// The name of an rcode ("NXDOMAIN").
pub fn rcode_name(rcode: u8) -> String {
    match domain::base::iana::Rcode::checked_from_int(rcode) {
        Some(r) => r.to_string(),
        None => format!("RCODE{rcode}"),
    }
}

/// The name of a query type ("AAAA", or "TYPE65" for types without a mnemonic).
pub fn qtype_name(qtype: u16) -> String {
    domain::base::iana::Rtype::from_int(qtype).to_string()
}

/// A DNS ring record for tests and fuzzing: the kernel's layout, built in userspace.
pub fn encode(c: &Captured<'_>) -> Vec<u8> {
    let (family, saddr, daddr) = match (c.src.ip(), c.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut sa = [0u8; 16];
            let mut da = [0u8; 16];
            sa[..4].copy_from_slice(&s.octets());
            da[..4].copy_from_slice(&d.octets());
            (AF_INET, sa, da)
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            };
            (AF_INET6, v6(s), v6(d))
        }
    };
    let n = c.payload.len().min(DNS_PAYLOAD_CAP);
    let mut payload = [0u8; DNS_PAYLOAD_CAP];
    for (to, from) in payload.iter_mut().zip(c.payload) {
        *to = *from;
    }
    let mut flags = if c.side == Side::Egress {
        dns_flags::EGRESS
    } else {
        0
    };
    if c.server.is_some() {
        flags |= dns_flags::HELD;
    }
    let event = DnsEvent {
        header: EventHeader {
            kind: kind::DNS,
            len: size_of::<DnsEvent>() as u32,
            boot_ns: c.boot_ns,
        },
        cgroup_id: c.cgroup_id,
        family,
        protocol: match c.protocol {
            Protocol::Tcp => u8::try_from(IPPROTO_TCP).unwrap_or_default(),
            _ => IPPROTO_UDP,
        },
        flags,
        sport: c.src.port(),
        dport: c.dst.port(),
        wire_len: c.wire_len,
        captured: n as u16,
        _pad0: 0,
        saddr,
        daddr,
        payload,
    };
    match c.server {
        Some(server) => record_bytes(&DnsHeld {
            query: event,
            server_cgroup: server.cgroup.unwrap_or(0),
            reached: u32::from(server.cgroup.is_some()),
            answered: u32::from(server.answered),
        }),
        None => record_bytes(&event),
    }
}

/// A DNS message for tests: header and one question (IN class), no records.
pub fn message(
    id: u16,
    response: bool,
    rcode: u8,
    truncated: bool,
    qname: &str,
    qtype: u16,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(32 + qname.len());
    m.extend_from_slice(&id.to_be_bytes());
    let mut flags: u16 = 0x0100; // RD
    if response {
        flags |= 0x8080; // QR, RA
    }
    if truncated {
        flags |= 0x0200;
    }
    flags |= u16::from(rcode & 0x0f);
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    for label in qname.split('.').filter(|l| !l.is_empty()) {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captured(payload: &[u8]) -> Captured<'_> {
        Captured {
            boot_ns: 5,
            cgroup_id: 77,
            side: Side::Egress,
            protocol: Protocol::Udp,
            src: "10.0.0.1:40000".parse().unwrap(),
            dst: "10.96.0.10:53".parse().unwrap(),
            wire_len: payload.len() as u32,
            payload,
            server: None,
        }
    }

    #[test]
    fn held_queries_carry_what_the_server_did() {
        let m = message(7, false, 0, false, "db", 1);
        for server in [
            ServerSide {
                cgroup: Some(42),
                answered: true,
            },
            ServerSide {
                cgroup: Some(42),
                answered: false,
            },
            ServerSide {
                cgroup: None,
                answered: false,
            },
        ] {
            let held = Captured {
                server: Some(server),
                ..captured(&m)
            };
            let record = encode(&held);
            assert_eq!(record.len(), size_of::<DnsHeld>());
            assert_eq!(decode(&record).unwrap(), held);
            // Cut to a plain event's size, the held flag's promise is broken: an error.
            assert_eq!(
                decode(&record[..size_of::<DnsEvent>()]),
                Err(PacketError::Record(size_of::<DnsEvent>()))
            );
        }
    }

    #[test]
    fn record_round_trips_and_parses() {
        let m = message(0xbeef, false, 0, false, "db.shop.svc.cluster.local", 28);
        let record = encode(&captured(&m));
        let c = decode(&record).unwrap();
        assert_eq!(c, captured(&m));
        let parsed = parse(c.protocol, c.payload).unwrap();
        assert_eq!(parsed.id, 0xbeef);
        assert!(!parsed.response);
        assert_eq!(&*parsed.qname, "db.shop.svc.cluster.local");
        assert_eq!(qtype_name(parsed.qtype), "AAAA");
    }

    #[test]
    fn answers_give_rcode_and_tc() {
        let m = message(1, true, 3, true, "nosuch", 1);
        let p = parse(Protocol::Udp, &m).unwrap();
        assert!(p.response && p.truncated);
        assert_eq!(rcode_name(p.rcode), "NXDOMAIN");
        assert_eq!(rcode_name(2), "SERVFAIL");
        assert_eq!(qtype_name(1), "A");
    }

    #[test]
    fn tcp_skips_the_length_prefix() {
        let m = message(9, false, 0, false, "a.b", 1);
        let mut tcp = (m.len() as u16).to_be_bytes().to_vec();
        tcp.extend_from_slice(&m);
        assert_eq!(&*parse(Protocol::Tcp, &tcp).unwrap().qname, "a.b");
        assert_eq!(parse(Protocol::Tcp, &tcp[..2]), Err(PacketError::NoMessage));
    }

    #[test]
    fn garbage_and_truncation_are_errors_never_panics() {
        let m = message(9, false, 0, false, "a-long-name.example.org", 1);
        for cut in 0..m.len() - 4 {
            assert!(parse(Protocol::Udp, &m[..cut]).is_err(), "cut at {cut}");
        }
        for seed in 0u32..2000 {
            let bytes: Vec<u8> = (0..(seed % 64))
                .map(|i| (seed.wrapping_mul(2_654_435_761).wrapping_add(i * 40_503) >> 7) as u8)
                .collect();
            let _ = parse(Protocol::Udp, &bytes);
            let _ = parse(Protocol::Tcp, &bytes);
            let _ = decode(&bytes);
        }
        // A record whose captured length lies.
        let mut record = encode(&captured(&m));
        let at = size_of::<EventHeader>() + 20;
        record[at..at + 2].copy_from_slice(&1000u16.to_ne_bytes());
        assert_eq!(decode(&record), Err(PacketError::Captured(1000)));
        assert!(decode(&record[..100]).is_err());
    }
}
