//! From evidence to a diagnosis: which layer is failing, what the evidence proves (and rules
//! out), and the safest next step, following the triage method "symptom -> layer -> evidence ->
//! hypothesis -> minimal test -> safe action". Steps are read-only checks first; the text says
//! when a restart would not help.

use serde::Serialize;

use crate::{
    evidence::{
        Cause, Connection, CpuThrottling, Detail, Direction, Dns, DnsOutcome, Drop, Evidence, Kind,
        OomKill, Protocol, tcp_flags_text,
    },
    text::mib,
};

/// One conclusion drawn from one or more records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: Kind,
    pub layer: &'static str,
    pub summary: String,
    pub next_step: String,
}

fn peer_text(c: &Connection) -> String {
    c.peer
        .as_ref()
        .map(|p| format!(" (pod {p})"))
        .unwrap_or_default()
}

/// Findings for a pod's evidence, most frequent first.
pub fn diagnose(evidence: &[Evidence]) -> Vec<Finding> {
    let mut sorted: Vec<&Evidence> = evidence.iter().collect();
    sorted.sort_by(|a, b| b.count.cmp(&a.count).then(b.last_seen.cmp(&a.last_seen)));
    sorted
        .into_iter()
        .filter_map(|e| finding(e, evidence))
        .collect()
}

/// [`diagnose`] with the index (into `evidence`) of the record each finding reads, so a
/// report can cite it.
pub fn diagnose_cited(evidence: &[Evidence]) -> Vec<(usize, Finding)> {
    let mut order: Vec<(usize, &Evidence)> = evidence.iter().enumerate().collect();
    order.sort_by(|(_, a), (_, b)| b.count.cmp(&a.count).then(b.last_seen.cmp(&a.last_seen)));
    order
        .into_iter()
        .filter_map(|(i, e)| finding(e, evidence).map(|f| (i, f)))
        .collect()
}

/// `all`: every record of the answer, for findings that read one record in the light of
/// another (a DNS timeout and the drops of its queries).
fn finding(e: &Evidence, all: &[Evidence]) -> Option<Finding> {
    let pod = e.pod().map_or_else(
        || "a process outside any pod".to_owned(),
        ToString::to_string,
    );
    match &e.detail {
        Detail::ConnectionRefused(c) => Some(match c.cause {
            Some(Cause::Rejected) => rejected(e, c, &pod),
            _ => refused(e, c, &pod),
        }),
        Detail::ConnectionTimeout(c) => Some(timed_out(e, c, &pod)),
        Detail::PacketDrop(d) => Some(dropped(e, d, &pod)),
        Detail::Dns(d) => Some(dns(e, d, &pod, all)),
        Detail::OomKill(o) => Some(oom_killed(e, o, &pod)),
        Detail::CpuThrottling(c) => Some(throttled(e, c, &pod)),
    }
}

/// `kubectl top` and `describe` commands for the record's pod.
fn kubectl_target(e: &Evidence) -> (String, String) {
    let ns = e.pod().map_or("<namespace>", |p| p.namespace.as_str());
    let name = e.pod().map_or("<pod>", |p| p.name.as_str());
    (ns.to_owned(), name.to_owned())
}

/// Processes killed by the OOM killer. A child's death is invisible to Kubernetes: it reports
/// OOMKilled only when the container's main process dies.
fn oom_killed(e: &Evidence, o: &OomKill, pod: &str) -> Finding {
    let kind = e.kind();
    let container = e
        .subject
        .container
        .as_deref()
        .map_or_else(|| "its container".to_owned(), |c| format!("container {c}"));
    let victim = e.subject.process.as_ref().map_or_else(
        || {
            "a process (the cgroup's OOM counter saw it; the kernel event did not name it)"
                .to_owned()
        },
        |p| format!("process {}[{}]", p.comm, p.pid),
    );
    let limit = o.memory_limit_bytes.map_or_else(
        || "no memory limit of its own (the node or pod ran out)".to_owned(),
        |l| format!("its memory limit of {}", mib(l)),
    );
    let rss = o
        .victim_rss_bytes
        .map(|r| format!(" The victim held {} resident.", mib(r)))
        .unwrap_or_default();
    let group = if o.group_kill == Some(true) {
        " memory.oom.group is set: every process of the container was killed with it."
    } else {
        ""
    };
    let reported = match o.main_process {
        Some(false) => format!(
            " It was a child, not the container's main process: Kubernetes did not report it \
             (no OOMKilled status, no restart, no event); {pod} keeps running with one \
             worker fewer."
        ),
        Some(true) => " It was the container's main process: Kubernetes shows the container \
                       as OOMKilled (lastState.terminated.reason) and restarts it."
            .to_owned(),
        None => " Kubernetes reports OOMKilled only if that was the container's main process \
                 (check lastState.terminated.reason); otherwise it reported nothing."
            .to_owned(),
    };
    let (ns, name) = kubectl_target(e);
    Finding {
        kind,
        layer: kind.layer(),
        summary: format!(
            "In {pod}, {container} hit {limit}: the kernel OOM killer killed {victim} \
             ({count} time(s) since {first}).{reported}{rss}{group}",
            count = e.count,
            first = crate::text::rfc3339(e.first_seen),
        ),
        next_step: format!(
            "Compare the container's limit with its working set (kubectl top pod -n {ns} {name} \
             --containers; container_memory_working_set_bytes over time), then review the \
             workload's memory settings: worker count or concurrency, heap/runtime limits \
             (-Xmx, GOMEMLIMIT, pm.max_children), caches. Raise the limit only if the working \
             set is legitimate; a leak will hit any limit. Restarting does not fix it."
        ),
    }
}

/// A container throttled by its CPU limit: latency and probe timeouts, never an event.
fn throttled(e: &Evidence, c: &CpuThrottling, pod: &str) -> Finding {
    let kind = e.kind();
    let container = e
        .subject
        .container
        .as_deref()
        .map_or_else(|| "a container".to_owned(), |c| format!("container {c}"));
    let limit = c.limit_cores().map_or_else(
        || "its CPU limit".to_owned(),
        |l| format!("its CPU limit of {l} cores"),
    );
    let pressure = c
        .pressure_avg10()
        .map(|p| format!(" CPU pressure (PSI some avg10) was {p:.1}%."))
        .unwrap_or_default();
    let (ns, name) = kubectl_target(e);
    Finding {
        kind,
        layer: kind.layer(),
        summary: format!(
            "In {pod}, {container} was throttled by {limit} in {pct:.0}% of its CPU periods \
             ({throttled} of {total}; {secs:.2}s spent throttled over {interval:.0}s sampled).\
             {pressure} Expect higher latency, slow requests and probe timeouts; Kubernetes \
             reports no event for this.",
            pct = c.ratio() * 100.0,
            throttled = c.throttled_periods,
            total = c.total_periods,
            secs = c.throttled_seconds(),
            interval = c.interval_seconds(),
        ),
        next_step: format!(
            "Review the CPU limit against what the container uses (kubectl top pod -n {ns} \
             {name} --containers; kubectl get pod -n {ns} {name} -o \
             jsonpath='{{.spec.containers[*].resources}}'): raise or remove the limit, or reduce \
             the work per container (threads, GC, concurrency). Restarting will not help: \
             the limit applies again to the new container."
        ),
    }
}

/// The drop records that explain a DNS timeout: the same pod's packets to a DNS port over the
/// same protocol, dropped while the lookups went unanswered. (After a Service VIP is translated
/// the dropped packet's destination is the DNS pod, not the VIP: the port and time tie them.)
pub fn dns_drops<'a>(e: &Evidence, d: &Dns, all: &'a [Evidence]) -> Vec<&'a Evidence> {
    all.iter()
        .filter(|x| {
            x.pod() == e.pod()
                && matches!(&x.detail, Detail::PacketDrop(p)
                    if p.direction == Direction::Outbound
                        && p.protocol == d.protocol
                        && p.dst.port() == d.server.port())
                && x.first_seen <= e.last_seen
                && x.last_seen + std::time::Duration::from_secs(30) >= e.first_seen
        })
        .collect()
}

fn dns(e: &Evidence, d: &Dns, pod: &str, all: &[Evidence]) -> Finding {
    let kind = e.kind();
    let name = clean_name(&d.query);
    let server = match &d.server_pod {
        Some(p) => format!("{} (pod {p})", d.server),
        None if d.server.ip().to_string() == "169.254.20.10" => {
            format!("{} (node-local DNS cache)", d.server)
        }
        None => d.server.to_string(),
    };
    let latency = d
        .latency_ms
        .map(|ms| format!("{ms} ms"))
        .unwrap_or_else(|| "?".to_owned());
    let (summary, next_step) = match d.outcome {
        DnsOutcome::Nxdomain => (
            format!(
                "{pod} asked {server} for {name} ({qtype}) {count} time(s): NXDOMAIN, the name \
                 does not exist{expanded}.",
                qtype = d.qtype,
                count = e.count,
                expanded = if d.search_nxdomains > 0 {
                    format!(
                        " (each lookup also tried {} search-path expansion(s), all NXDOMAIN)",
                        d.search_nxdomains
                    )
                } else {
                    String::new()
                },
            ),
            format!(
                "Check the name the application uses (typo, wrong namespace: a Service in \
                 another namespace is <service>.<namespace>), and that the Service exists \
                 (kubectl get svc -A | grep <name>). Restarting {pod} will not fix it."
            ),
        ),
        DnsOutcome::SearchExpansion => (
            format!(
                "{pod}'s lookups of {name} walked the search path: {n} NXDOMAIN answer(s) \
                 (names with the pod's search domains appended, ndots:5) before the real one, \
                 {latency} per lookup, {count} time(s).",
                n = d.search_nxdomains,
                count = e.count,
            ),
            format!(
                "Use the fully qualified name with a trailing dot ({name}.) in the \
                 application's configuration, or lower ndots in the pod's dnsConfig \
                 (options: [{{name: ndots, value: \"2\"}}]). Not a failure: each lookup costs \
                 {} extra round trip(s).",
                d.search_nxdomains
            ),
        ),
        DnsOutcome::Servfail => (
            format!(
                "{pod}'s lookups of {name} ({qtype}) got SERVFAIL from {server} {count} time(s): \
                 the DNS server could not get an answer (usually its upstream resolver is \
                 unreachable or failing).",
                qtype = d.qtype,
                count = e.count,
            ),
            "Check the DNS server's logs and its upstream (kubectl -n kube-system logs -l \
             k8s-app=kube-dns; the forward plugin's target): the fault is upstream of the pod. \
             Restarting the pod will not fix it."
                .to_owned(),
        ),
        DnsOutcome::Refused | DnsOutcome::Error => (
            format!(
                "{pod}'s lookups of {name} ({qtype}) were answered {rcode} by {server} {count} \
                 time(s).",
                qtype = d.qtype,
                rcode = d.rcode.as_deref().map(clean_name).unwrap_or_default(),
                count = e.count,
            ),
            "Check which server the pod asks (its /etc/resolv.conf, dnsPolicy) and that \
             server's configuration for this zone."
                .to_owned(),
        ),
        DnsOutcome::Slow => (
            format!(
                "{pod}'s lookups of {name} ({qtype}) were slow: {latency} from {server} (latest; \
                 {count} slow answer(s)).",
                qtype = d.qtype,
                count = e.count,
            ),
            "Check the DNS server's load and CPU throttling (CoreDNS replicas, its cache) and \
             its upstream latency; a node-local DNS cache helps. Restarting the pod will not \
             help."
                .to_owned(),
        ),
        DnsOutcome::TruncatedRetry => (
            format!(
                "{pod}'s lookups of {name} ({qtype}) got truncated UDP answers from {server} \
                 {count} time(s) and had to ask again over TCP.",
                qtype = d.qtype,
                count = e.count,
            ),
            "The answer is too big for UDP: check that TCP/53 to the DNS server is allowed \
             (NetworkPolicy egress) and consider trimming the record set."
                .to_owned(),
        ),
        DnsOutcome::Timeout => {
            let drops = dns_drops(e, d, all);
            let base = format!(
                "{pod}'s lookups of {name} ({qtype}) to {server} went unanswered {count} \
                 time(s) (waited {latency}): the application sees \"temporary failure in name \
                 resolution\" or a stall.",
                qtype = d.qtype,
                count = e.count,
            );
            let proto = match d.protocol {
                Protocol::Tcp => "tcp",
                _ => "udp",
            };
            if let Some(drop) = drops.first() {
                let reason = match &drop.detail {
                    Detail::PacketDrop(p) => clean_name(&p.reason),
                    _ => String::new(),
                };
                (
                    format!(
                        "{base} The queries were dropped by the kernel ({reason}, {n} \
                         packet(s) to port {port}): see the packet_drop finding.",
                        n = drop.count,
                        port = d.server.port(),
                    ),
                    format!(
                        "A NetworkPolicy or firewall rule drops {pod}'s DNS: allow egress to \
                         the DNS pods on {proto}/53 and tcp/53 (kube-system, k8s-app=kube-dns); \
                         `triage-agent explain` names the policy. Restarting {pod} will not \
                         fix it."
                    ),
                )
            } else if d.reached_server == Some(true) {
                (
                    format!(
                        "{base} The query reached the DNS server on this node but no answer \
                         came back: the server is overloaded or waits on its upstream."
                    ),
                    "Check the DNS server (CoreDNS) load, throttling and its upstream; \
                     look for its own dns timeouts (triage-agent query --pod <coredns pod>)."
                        .to_owned(),
                )
            } else {
                (
                    format!(
                        "{base} No drop of these queries was seen on this node and no DNS \
                         server here received them: the loss is on the way to the server or \
                         at it."
                    ),
                    format!(
                        "Check the DNS Service has ready endpoints (kubectl -n kube-system get \
                         endpointslices -l k8s-app=kube-dns), NetworkPolicy egress to {proto}/53, \
                         and the agent on the DNS pods' nodes."
                    ),
                )
            }
        }
    };
    Finding {
        kind,
        layer: kind.layer(),
        summary,
        next_step,
    }
}

/// A name from the network, safe to print.
fn clean_name(s: &str) -> String {
    crate::text::cleaned(s)
}

/// A connection refused by a firewall rule (REJECT), not by the destination.
fn rejected(e: &Evidence, c: &Connection, pod: &str) -> Finding {
    let kind = e.kind();
    let how = c.reason.as_deref().unwrap_or("a reject");
    Finding {
        kind,
        layer: Kind::PacketDrop.layer(),
        summary: format!(
            "{pod} had {count} connection(s) to {dst}{peer} rejected by a firewall rule ({how}): \
             the destination's TCP stack did not answer, so this is not \"nothing listens\".",
            count = e.count,
            dst = c.dst,
            peer = peer_text(c),
        ),
        next_step: format!(
            "Find the rule that rejects {proto}/{port}: NetworkPolicies that select {pod} \
             (egress) or the destination (ingress), then node firewall rules (nft list ruleset). \
             Restarting {pod} will not fix it.",
            proto = c.protocol.as_str(),
            port = c.dst.port(),
        ),
    }
}

/// SYNs never answered.
fn timed_out(e: &Evidence, c: &Connection, pod: &str) -> Finding {
    let kind = e.kind();
    Finding {
        kind,
        layer: kind.layer(),
        summary: format!(
            "{pod} had {count} connection attempt(s) to {dst}{peer} that were never answered \
             ({retrans} SYN retransmission(s)): the SYNs or the answers are being dropped on \
             the way, or the destination is down. Not a refusal: nothing sent a reset.",
            count = e.count,
            dst = c.dst,
            peer = peer_text(c),
            retrans = c.syn_retransmits,
        ),
        next_step: format!(
            "Look for packet_drop evidence for {dst} (a NetworkPolicy or firewall drop shows \
             there with the kernel's reason), then check that the destination is up and its \
             Service endpoints are ready. Restarting {pod} will not fix it.",
            dst = c.dst,
        ),
    }
}

/// The kernel's reason, or where it dropped the packet on kernels without reasons.
fn drop_reason(d: &Drop) -> String {
    match &d.location {
        Some(location) => format!("{}, at {}", d.reason, crate::text::cleaned(location)),
        None => d.reason.to_string(),
    }
}

/// Packets the kernel dropped.
fn dropped(e: &Evidence, d: &Drop, pod: &str) -> Finding {
    let kind = e.kind();
    let flags = d
        .tcp_flags
        .map(|f| format!(" {}", tcp_flags_text(f)))
        .unwrap_or_default();
    let what = format!("{}{flags}", d.protocol.as_str());
    let (summary, next_step) = match d.direction {
        Direction::Outbound => (
            format!(
                "{pod}'s {what} packets to {dst}{peer} are being dropped by the kernel ({reason}): \
                 {count} since {first}.",
                dst = d.dst,
                peer = peer_of(d),
                reason = drop_reason(d),
                count = e.count,
                first = crate::text::rfc3339(e.first_seen),
            ),
            drop_step(&d.reason, pod, "egress"),
        ),
        Direction::Inbound => (
            format!(
                "{what} packets from {src}{peer} to {pod} on port {port} are being dropped by \
                 the kernel ({reason}): {count} since {first}.",
                src = d.src.ip(),
                peer = peer_of(d),
                port = d.dst.port(),
                reason = drop_reason(d),
                count = e.count,
                first = crate::text::rfc3339(e.first_seen),
            ),
            drop_step(&d.reason, pod, "ingress"),
        ),
    };
    Finding {
        kind,
        layer: kind.layer(),
        summary,
        next_step,
    }
}

fn peer_of(d: &Drop) -> String {
    d.peer
        .as_ref()
        .map(|p| format!(" (pod {p})"))
        .unwrap_or_default()
}

/// The safest next step for a drop reason, read-only checks first.
fn drop_step(reason: &str, pod: &str, direction: &str) -> String {
    match reason {
        "NETFILTER_DROP" => format!(
            "A firewall rule dropped it: on most CNIs that is a NetworkPolicy. List the policies \
             that select {pod} for {direction} (kubectl get networkpolicy -n <namespace>; \
             `triage-agent explain` evaluates them) and the node's rules (nft list ruleset). \
             Restarting {pod} will not fix it."
        ),
        r if r.starts_with("TC_") || r == "BPF_CGROUP_EGRESS" => format!(
            "An eBPF/tc program dropped it: with Cilium or Calico eBPF that is usually a policy \
             verdict; check the CNI's policy view for {pod}."
        ),
        r if r.starts_with("SOCKET_") || r == "TCP_LISTEN_OVERFLOW" => {
            "The receiving application is not keeping up (its socket buffer or accept queue was \
             full): check its CPU throttling and load before scaling."
                .to_owned()
        }
        r if r.starts_with("NEIGH_") || r.starts_with("IP_") => {
            "The node could not route or reach the next hop: check the CNI's routes and the \
             peer's liveness (ip route get <ip> on the node)."
                .to_owned()
        }
        "NO_SOCKET" => "Nothing listens on that UDP port at the destination: check the \
                        container's ports and the Service targetPort."
            .to_owned(),
        _ => "Check the node's packet path for this reason (nstat, ip -s link).".to_owned(),
    }
}

fn refused(e: &Evidence, c: &Connection, pod: &str) -> Finding {
    let kind = e.kind();
    let unknown = c.cause == Some(Cause::Unknown);
    match c.direction {
        Direction::Outbound if unknown => Finding {
            kind,
            layer: kind.layer(),
            summary: format!(
                "{pod} had {count} connection(s) to {dst}{peer} refused with a reset from \
                 another node: either nothing listens on port {port} there or a firewall \
                 rejected it (this node cannot tell which).",
                count = e.count,
                dst = c.dst,
                peer = peer_text(c),
                port = c.dst.port(),
            ),
            next_step: format!(
                "Ask the agent on the destination's node (it sees its own stack's refusals), or \
                 check what listens on {dst} and its Service targetPort. Restarting {pod} will \
                 not fix it.",
                dst = c.dst,
            ),
        },
        Direction::Outbound => {
            let (target, exec) = match &c.peer {
                Some(p) => (
                    format!("pod {p}"),
                    format!("kubectl exec -n {} {} -- ss -ltn", p.namespace, p.name),
                ),
                None => (
                    format!("the process behind {}", c.dst),
                    "ss -ltn where it runs".to_owned(),
                ),
            };
            Finding {
                kind,
                layer: kind.layer(),
                summary: format!(
                    "{pod} had {count} connection(s) to {dst}{peer} refused: the SYN reached the \
                     destination and was answered with RST, so nothing listens on port {port} \
                     there. Routing and NetworkPolicy delivered the packet (a policy drop shows \
                     as a timeout, not a refusal).",
                    count = e.count,
                    dst = c.dst,
                    peer = peer_text(c),
                    port = c.dst.port(),
                ),
                next_step: format!(
                    "Check what {target} listens on ({exec}) and compare it \
                     with the Service targetPort / EndpointSlice port for {dst}: a wrong \
                     targetPort, an app bound to 127.0.0.1, or an app not started yet are the \
                     usual causes. Restarting {pod} will not fix it.",
                    dst = c.dst,
                ),
            }
        }
        Direction::Inbound => Finding {
            kind,
            layer: kind.layer(),
            summary: format!(
                "{pod} refused {count} connection attempt(s) on port {port} from {src}{peer}: no \
                 socket listens on {dst} in this pod.",
                count = e.count,
                port = c.dst.port(),
                src = c.src.ip(),
                peer = peer_text(c),
                dst = c.dst,
            ),
            next_step: format!(
                "Check the container's listening ports (kubectl exec -n {ns} {name} -- ss -ltn) \
                 against its containerPort and the Service targetPort; if the app listens on \
                 127.0.0.1 it must listen on 0.0.0.0. If it is still starting, a readiness probe \
                 on port {port} keeps traffic away until it listens.",
                ns = e.pod().map_or("<namespace>", |p| p.namespace.as_str()),
                name = e.pod().map_or("<pod>", |p| p.name.as_str()),
                port = c.dst.port(),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::fixtures::refused;

    fn refusal(direction: Direction, count: u64) -> Evidence {
        refused()
            .pod("shop", "web")
            .direction(direction)
            .count(count)
            .peer("shop", "db")
            .evidence()
    }

    #[test]
    fn drops_timeouts_and_rejects_point_at_the_path() {
        use crate::evidence::fixtures::{dropped, timeout};
        let f = diagnose(&[
            dropped()
                .pod("shop", "web")
                .peer("data", "db")
                .count(9)
                .evidence(),
            timeout().pod("shop", "web").count(3).evidence(),
            refused()
                .pod("shop", "web")
                .cause(Some(Cause::Rejected))
                .reason("ICMP_ADMIN_PROHIBITED")
                .evidence(),
        ]);
        assert!(
            f[0].summary.contains(
                "shop/web's tcp SYN packets to 10.0.0.2:5432 (pod data/db) are being dropped \
                 by the kernel (NETFILTER_DROP): 9 since"
            ),
            "{}",
            f[0].summary
        );
        assert!(f[0].next_step.contains("NetworkPolicy"));
        assert!(
            f[1].summary
                .contains("never answered (2 SYN retransmission(s))")
        );
        assert!(f[1].summary.contains("Not a refusal"));
        assert!(
            f[2].summary
                .contains("rejected by a firewall rule (ICMP_ADMIN_PROHIBITED)")
        );
        assert!(!f[2].summary.contains("nothing listens on"));
    }

    #[test]
    fn a_child_oom_says_which_process_the_limit_and_that_kubernetes_did_not_report_it() {
        use crate::evidence::fixtures::{oom_killed, throttled};
        let f = diagnose(&[oom_killed().pod("shop", "web").evidence()]);
        let s = &f[0].summary;
        assert!(s.contains("worker[42]"), "{s}");
        assert!(s.contains("64.0MiB"), "{s}");
        assert!(s.contains("Kubernetes did not report it"), "{s}");
        assert!(f[0].next_step.contains("kubectl top pod -n shop web"));
        assert_eq!(f[0].layer, "memory");
        let main = diagnose(&[oom_killed().main_process(Some(true)).evidence()]);
        assert!(main[0].summary.contains("OOMKilled"));
        assert!(!main[0].summary.contains("did not report"));

        let t = diagnose(&[throttled().pod("shop", "web").evidence()]);
        assert!(
            t[0].summary.contains("80% of its CPU periods"),
            "{}",
            t[0].summary
        );
        assert!(t[0].summary.contains("0.1 cores"));
        assert!(t[0].next_step.contains("Review the CPU limit"));
        assert!(t[0].next_step.contains("Restarting will not help"));
    }

    #[test]
    fn refusals_point_at_the_listener_not_the_network() {
        let f = diagnose(&[
            refusal(Direction::Inbound, 1),
            refusal(Direction::Outbound, 5),
        ]);
        assert_eq!(f.len(), 2);
        assert!(
            f[0].summary
                .contains("5 connection(s) to 10.0.0.2:8080 (pod shop/db) refused"),
            "{}",
            f[0].summary
        );
        assert!(f[0].next_step.contains("pod shop/db"));
        assert!(
            f[0].next_step
                .contains("kubectl exec -n shop db -- ss -ltn")
        );
        assert!(f[0].next_step.contains("will not fix"));
        assert_eq!(f[0].layer, "connection");
        assert!(
            f[1].summary
                .contains("shop/web refused 1 connection attempt(s) on port 8080")
        );
        assert!(f[1].next_step.contains("kubectl exec -n shop web"));
    }
}
