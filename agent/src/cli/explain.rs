//! NetworkPolicy explanations for the drops and timeouts an answer holds: the CLI reads
//! NetworkPolicies, Namespaces and Pods with the user's kubeconfig (so the user's RBAC applies
//! and the agents need no cluster-wide rights), evaluates each flow, and says which policy
//! denies it, or that policy allows it and the drop is elsewhere. Without API access the
//! answer still comes, with explanations marked unavailable and why.

use std::time::Duration;

use crate::{
    evidence::{Detail, Evidence, Protocol},
    policy::{
        EVALUATED_KINDS, Explanation, Flow, OTHER_POLICY_KINDS, Proto, Snapshot, Verdict,
        admin::{Tier, TierPolicy},
        evaluate,
    },
};

pub use crate::cli::cluster::ClusterArgs;

/// How long reading the policies may take before explanations are given up.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads what the evaluator needs from the API server.
pub async fn snapshot(args: &ClusterArgs) -> anyhow::Result<Snapshot> {
    use anyhow::Context as _;
    use k8s_openapi::api::{
        core::v1::{Namespace, Pod},
        networking::v1::NetworkPolicy,
    };
    use kube::{Api, api::ListParams};

    let client = crate::cli::cluster::client(args).await?;
    let client_for_discovery = client.clone();
    let lp = ListParams::default();
    let (policy_api, namespace_api, pod_api) = (
        Api::<NetworkPolicy>::all(client.clone()),
        Api::<Namespace>::all(client.clone()),
        Api::<Pod>::all(client),
    );
    let read = async {
        let (policies, namespaces, pods) = tokio::try_join!(
            policy_api.list(&lp),
            namespace_api.list(&lp),
            pod_api.list(&lp),
        )?;
        Ok::<_, kube::Error>(Snapshot {
            policies: policies.items,
            namespaces: namespaces.items,
            pods: pods.items,
            ..Snapshot::default()
        })
    };
    let (snapshot, others) = tokio::join!(
        tokio::time::timeout(READ_TIMEOUT, read),
        tokio::time::timeout(READ_TIMEOUT, other_kinds(client_for_discovery)),
    );
    let mut snapshot = snapshot.context("reading NetworkPolicies timed out")??;
    match others {
        Ok(others) => {
            snapshot.admin = others.admin;
            snapshot.baseline = others.baseline;
            snapshot.unevaluated = others.unevaluated;
        }
        Err(_) => {
            snapshot.unevaluated = vec![
                "policy kinds beyond NetworkPolicy that could not be looked for (discovery \
                 timed out)"
                    .to_owned(),
            ];
        }
    }
    Ok(snapshot)
}

/// The policy kinds besides NetworkPolicy the cluster has objects of.
#[derive(Default)]
struct OtherKinds {
    /// AdminNetworkPolicies, read whole.
    admin: Vec<TierPolicy>,
    /// The BaselineAdminNetworkPolicy, read whole.
    baseline: Vec<TierPolicy>,
    /// The rest ([`OTHER_POLICY_KINDS`]), named with their group (`CiliumNetworkPolicy
    /// (cilium.io) objects`); one that is served but cannot be read is named too, with why.
    /// When discovery itself fails, that is said instead: the explanation cannot rule them
    /// out.
    unevaluated: Vec<String>,
}

/// Looks the other policy kinds up by discovery: the evaluated ones ([`EVALUATED_KINDS`], at
/// their version) are listed whole and read; of the others, one object is enough to name them.
async fn other_kinds(client: kube::Client) -> OtherKinds {
    use kube::{
        Api,
        api::{DynamicObject, ListParams},
        discovery::Discovery,
    };
    let groups: Vec<&str> = OTHER_POLICY_KINDS.iter().map(|(g, _)| *g).collect();
    let discovery = match Discovery::new(client.clone()).filter(&groups).run().await {
        Ok(d) => d,
        Err(e) => {
            return OtherKinds {
                unevaluated: vec![format!(
                    "policy kinds beyond NetworkPolicy that could not be looked for ({})",
                    crate::cli::cluster::describe(&e)
                )],
                ..OtherKinds::default()
            };
        }
    };
    let mut found = OtherKinds::default();
    for group in discovery.groups() {
        let known = OTHER_POLICY_KINDS
            .iter()
            .find(|(g, _)| *g == group.name())
            .map_or(&[][..], |(_, kinds)| *kinds);
        // The evaluated kinds at the version read, whichever version the group prefers (a
        // group that also serves a newer version, such as v1alpha2's ClusterNetworkPolicy,
        // prefers that one); then the other kinds at the preferred version.
        let mut resources: Vec<(kube::discovery::ApiResource, bool)> = Vec::new();
        for (_, version, kind) in EVALUATED_KINDS
            .iter()
            .filter(|(g, _, _)| *g == group.name())
        {
            if let Some((r, _)) = group
                .versioned_resources(version)
                .into_iter()
                .find(|(r, _)| r.kind == *kind)
            {
                resources.push((r, true));
            }
        }
        for (resource, _) in group.recommended_resources() {
            if known.contains(&resource.kind.as_str())
                && !resources.iter().any(|(r, _)| r.kind == resource.kind)
            {
                resources.push((resource, false));
            }
        }
        for (resource, evaluated) in resources {
            let name = format!("{} ({})", resource.kind, resource.group);
            let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
            let params = if evaluated {
                ListParams::default()
            } else {
                ListParams::default().limit(1)
            };
            let list = match api.list(&params).await {
                Ok(list) => list,
                Err(e) => {
                    found.unevaluated.push(format!(
                        "{name}, whose objects cannot be read ({})",
                        crate::cli::cluster::describe(&e)
                    ));
                    continue;
                }
            };
            if list.items.is_empty() {
                continue;
            }
            if !evaluated {
                found.unevaluated.push(format!("{name} objects"));
                continue;
            }
            let mut read = Vec::new();
            for object in &list.items {
                let value = serde_json::to_value(object).unwrap_or_default();
                let tier = if resource.kind == "AdminNetworkPolicy" {
                    Tier::Admin
                } else {
                    Tier::Baseline
                };
                match TierPolicy::from_object(&value, tier) {
                    Ok(p) => read.push(p),
                    Err(e) => {
                        found.unevaluated.push(format!(
                            "{name} {}, which could not be read as {} ({e})",
                            object.metadata.name.as_deref().unwrap_or_default(),
                            resource.version
                        ));
                    }
                }
            }
            if resource.kind == "AdminNetworkPolicy" {
                found.admin.extend(read);
            } else {
                found.baseline.extend(read);
            }
        }
    }
    found
}

/// The flow a record is about, when NetworkPolicy can say anything about it.
fn flow_of(e: &Evidence) -> Option<Result<Flow, &'static str>> {
    // Each kind says whether policy decides its traffic (refusals and resources are not
    // policy, nor are DNS lookups to a Service VIP).
    if !e.detail.policy_decides() {
        return None;
    }
    let (_, src, dst, _) = e.detail.endpoints()?;
    let proto = match e.detail.protocol()? {
        Protocol::Tcp => Proto::Tcp,
        Protocol::Udp => Proto::Udp,
        _ => return Some(Err("NetworkPolicy filters only TCP, UDP and SCTP")),
    };
    Some(Ok(Flow {
        src: src.ip(),
        dst: dst.ip(),
        port: dst.port(),
        proto,
    }))
}

/// Explanations for the records that have one, by index into `evidence`.
pub fn explain_all(
    evidence: &[Evidence],
    snapshot: Result<&Snapshot, &str>,
) -> Vec<(usize, Explanation)> {
    evidence
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            let flow = flow_of(e)?;
            let mut x = match (flow, snapshot) {
                (Err(why), _) => Explanation::unavailable(why),
                (Ok(_), Err(why)) => Explanation::unavailable(why),
                (Ok(flow), Ok(snapshot)) => evaluate(snapshot, &flow).qualified(snapshot),
            };
            if x.verdict == Verdict::Allowed
                && let Detail::PacketDrop(d) = &e.detail
            {
                x.text = format!("{} (reason {} on node {})", x.text, d.reason, e.node);
            }
            Some((i, x))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::fixtures::{dropped, refused, timeout};

    #[test]
    fn drops_and_timeouts_are_explained_refusals_are_not() {
        let evidence = [
            dropped()
                .src("10.0.0.1:40000")
                .dst("10.0.1.1:5432")
                .evidence(),
            refused().evidence(),
            timeout()
                .src("10.0.0.1:40000")
                .dst("192.0.2.1:443")
                .evidence(),
        ];
        let x = explain_all(&evidence, Err("no kubeconfig"));
        assert_eq!(x.len(), 2);
        assert_eq!(x[0].0, 0);
        assert_eq!(x[1].0, 2);
        assert!(
            x.iter().all(|(_, e)| e.verdict == Verdict::Unknown
                && e.text.contains("unavailable: no kubeconfig"))
        );
        let snapshot = Snapshot::default();
        let x = explain_all(&evidence, Ok(&snapshot));
        assert_eq!(
            x[0].1.verdict,
            Verdict::Unknown,
            "no pods known: {}",
            x[0].1.text
        );
        let icmp = [dropped().evidence()].map(|mut e| {
            if let Detail::PacketDrop(d) = &mut e.detail {
                d.protocol = Protocol::Icmp;
            }
            e
        });
        assert!(
            explain_all(&icmp, Ok(&snapshot))[0]
                .1
                .text
                .contains("only TCP")
        );
    }
}
