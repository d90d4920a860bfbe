//! The parts of a rule: peers (podSelector, namespaceSelector, ipBlock with except) and ports
//! (numeric or named, protocol, endPort).

use std::net::IpAddr;

use k8s_openapi::{
    api::networking::v1::{IPBlock, NetworkPolicyPeer, NetworkPolicyPort},
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::{Proto, Snapshot, WorkloadRef, select};

/// An IPv4 or IPv6 CIDR; `None` for text that is not one (the rule then matches nothing).
pub fn parse_cidr(text: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = text.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((addr, len))
}

/// Whether `ip` is inside `cidr` (a malformed CIDR contains nothing).
pub fn cidr_contains(cidr: &str, ip: IpAddr) -> bool {
    let Some((net, len)) = parse_cidr(cidr) else {
        return false;
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

fn ip_block_matches(block: &IPBlock, ip: IpAddr) -> bool {
    cidr_contains(&block.cidr, ip)
        && !block
            .except
            .iter()
            .flatten()
            .any(|except| cidr_contains(except, ip))
}

/// Whether a peer of a policy in `policy_namespace` matches the other end of the flow: `ip`,
/// and the pod at it when it is one we know.
pub fn peer_matches(
    peer: &NetworkPolicyPeer,
    policy_namespace: &str,
    ip: IpAddr,
    pod: Option<&WorkloadRef>,
    snapshot: &Snapshot,
) -> bool {
    if let Some(block) = &peer.ip_block {
        return ip_block_matches(block, ip);
    }
    let Some(pod) = pod else {
        // Selectors select pods; an address that is no pod we know matches none.
        return false;
    };
    let namespace_ok = match &peer.namespace_selector {
        None => pod.namespace == policy_namespace,
        Some(sel) => select::matches(sel, &snapshot.namespace_labels(&pod.namespace)),
    };
    let pod_ok = peer
        .pod_selector
        .as_ref()
        .is_none_or(|sel| select::matches(sel, &pod.labels));
    namespace_ok && pod_ok
}

/// Whether a port entry allows `port`/`proto` on the destination pod `dst` (named ports resolve
/// against its container ports).
pub fn port_matches(
    entry: &NetworkPolicyPort,
    port: u16,
    proto: Proto,
    dst: Option<&WorkloadRef>,
) -> bool {
    let entry_proto = entry.protocol.as_deref().unwrap_or("TCP");
    if !entry_proto.eq_ignore_ascii_case(proto.as_k8s()) {
        return false;
    }
    match &entry.port {
        None => true,
        Some(IntOrString::Int(first)) => {
            let first = i64::from(*first);
            let last = entry.end_port.map_or(first, i64::from);
            (first..=last).contains(&i64::from(port))
        }
        Some(IntOrString::String(name)) => dst.is_some_and(|d| {
            d.ports
                .iter()
                .any(|(n, p, pr)| n == name && *p == port && *pr == proto)
        }),
    }
}

/// Whether `ports` (absent or empty: every port) allow the flow.
pub fn ports_match(
    ports: Option<&Vec<NetworkPolicyPort>>,
    port: u16,
    proto: Proto,
    dst: Option<&WorkloadRef>,
) -> bool {
    match ports {
        None => true,
        Some(p) if p.is_empty() => true,
        Some(p) => p.iter().any(|e| port_matches(e, port, proto, dst)),
    }
}
