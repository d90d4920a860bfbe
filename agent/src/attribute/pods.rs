//! What this node's agent knows about its pods: identity by UID, container names by container
//! ID, and a time-aware history of which pod held which IP, so an event on a reused IP goes to
//! the pod that held it at the time of the event, not to whoever holds it now.
//!
//! Fed by the metadata watcher (`attribute::metadata`) and by the container runtime
//! (`attribute::runtime`, CRI): the runtime names a pod and its containers before the API
//! server reports them, and a restarted container's new ID before the pod's status has it.
//! Only the API server's pods hold IPs or count as the node's pods. Read by the attributor. hostNetwork
//! pods share the node's IP and are never entered in the IP history: they are attributed by
//! cgroup only.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use crate::evidence::PodRef;

/// How long a deleted pod stays known, so events still waiting for metadata (or delayed in the
/// pipeline) can be attributed to it. Ten minutes covers any pipeline delay by far.
pub const DELETED_RETENTION: Duration = Duration::from_secs(600);

/// A pod as the attributor needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    /// Shared with every record about the pod.
    pub pod: Arc<PodRef>,
    pub ips: Vec<IpAddr>,
    pub host_network: bool,
    /// Container ID (no runtime prefix) -> container name (shared with records).
    pub containers: HashMap<String, Arc<str>>,
    /// When the pod started to hold its IPs (status.startTime, else creation), if known.
    pub started: Option<SystemTime>,
    /// The pod finished (Succeeded/Failed): its IPs are released although the object remains.
    pub finished: bool,
}

/// A pod's hold on an IP. `from` is when the agent knows the pod had it: when it first saw the
/// pod with the IP while watching (not `status.startTime`, which is before CNI gave it the IP,
/// while the previous holder may still be terminating), or its start when the agent was not
/// watching (the first list, a re-list after an outage). `since` (at most `from`) is how early
/// it may have had it: its start, but never before a previous holder let the IP go; the hold
/// counts from there only where no other hold covers the time.
#[derive(Clone, Debug)]
struct Hold {
    /// The pod (shared with its [`PodInfo`]).
    pod: Arc<PodRef>,
    from: SystemTime,
    since: SystemTime,
    to: Option<SystemTime>,
}

/// How a pod update reached the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// A watch event while in sync: the time it arrived bounds when the pod got its IPs.
    Watching,
    /// A (re-)list: the agent was not watching before, so its start is the best bound.
    Listed,
}

#[derive(Debug)]
struct Known {
    info: PodInfo,
    deleted_at: Option<SystemTime>,
    /// Only the container runtime knows this pod (the API server has not reported it).
    runtime_only: bool,
}

/// A pod as the container runtime reports it (CRI `ListPodSandbox` and `ListContainers`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimePod {
    pub pod: PodRef,
    pub containers: Vec<RuntimeContainer>,
}

/// A container as the runtime reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeContainer {
    /// The runtime's container ID (no scheme).
    pub id: String,
    /// The container's name in the pod spec.
    pub name: String,
    /// The image it runs, as the pod spec names it.
    pub image: String,
    /// How many times kubelet restarted it (its CRI `attempt`).
    pub restart_count: u32,
    /// Its cgroup directory relative to the cgroup root (the runtime's `cgroupsPath`, the
    /// systemd driver's form expanded), when the runtime said.
    pub cgroup: Option<String>,
}

/// Pods of this node by UID and by IP over time.
#[derive(Debug, Default)]
pub struct PodIndex {
    /// By uid and by pod IP (what the API server names; a packet's addresses only look up):
    /// foldhash, as these are read for every event.
    pods: foldhash::HashMap<String, Known>,
    holds: foldhash::HashMap<IpAddr, Vec<Hold>>,
    /// The runtime's last report: pod UID -> container ID -> name.
    runtime: HashMap<String, HashMap<String, Arc<str>>>,
    /// The runtime's cgroup directories (no leading `/`) -> (pod UID, container ID).
    runtime_cgroups: HashMap<String, (String, String)>,
}

impl PodIndex {
    /// Adds or updates a pod listed at `now` (see [`PodIndex::observe`]).
    pub fn apply(&mut self, info: PodInfo, now: SystemTime) {
        self.observe(info, now, Seen::Listed);
    }

    /// Adds or updates a pod observed at `now`. Watching, a new hold starts at `now` and an
    /// earlier holder still open keeps the IP until its own hold ends (it is terminating:
    /// inbound failures are still about it); listed, a new hold starts at the pod's start and
    /// ends any earlier one still open there (its end was not seen).
    pub fn observe(&mut self, mut info: PodInfo, now: SystemTime, seen: Seen) {
        let uid = info.pod.uid.clone();
        // One copy of an unchanged identity, shared by the index, its holds and the records.
        if let Some(known) = self.pods.get(&uid)
            && *known.info.pod == *info.pod
        {
            info.pod = known.info.pod.clone();
        }
        // Containers the runtime has and the pod's status does not show yet (a restart).
        if let Some(containers) = self.runtime.get(&uid) {
            for (id, name) in containers {
                info.containers
                    .entry(id.clone())
                    .or_insert_with(|| name.clone());
            }
        }
        let held: HashSet<IpAddr> = if info.host_network || info.finished {
            HashSet::new()
        } else {
            info.ips.iter().copied().collect()
        };
        // Close this pod's holds on IPs it no longer has.
        for (ip, holds) in &mut self.holds {
            if held.contains(ip) {
                continue;
            }
            for h in holds
                .iter_mut()
                .filter(|h| h.pod.uid == uid && h.to.is_none())
            {
                h.to = Some(now.max(h.from));
            }
        }
        for ip in held {
            // Most addresses are held by one pod in their life here: room for one hold.
            let holds = self
                .holds
                .entry(ip)
                .or_insert_with(|| Vec::with_capacity(1));
            if holds.iter().any(|h| h.pod.uid == uid && h.to.is_none()) {
                continue;
            }
            // The IP went to this pod when it started, but never before the previous holder
            // let it go.
            let mut since = info.started.unwrap_or(now).min(now);
            let from = match seen {
                Seen::Watching => {
                    for h in holds.iter().filter(|h| h.pod.uid != uid) {
                        since = since.max(h.to.unwrap_or(now));
                    }
                    now
                }
                // A previous holder still open lost it by the time this pod has it.
                Seen::Listed => {
                    for h in holds.iter_mut().filter(|h| h.pod.uid != uid) {
                        match h.to {
                            Some(to) => since = since.max(to),
                            None => {
                                let cut = since.max(h.from);
                                h.to = Some(cut);
                                since = cut;
                            }
                        }
                    }
                    since
                }
            };
            holds.push(Hold {
                pod: info.pod.clone(),
                from,
                since: since.min(from),
                to: None,
            });
        }
        self.pods.insert(
            uid,
            Known {
                info,
                deleted_at: None,
                runtime_only: false,
            },
        );
    }

    /// Takes the runtime's report at `now`: its containers join the pods the API server
    /// reported; a pod only the runtime knows is known by its identity (no IP: the IP history
    /// is the API server's); a runtime-only pod the runtime no longer reports is deleted.
    /// Never revives a pod the API server deleted.
    pub fn apply_runtime(&mut self, pods: &[RuntimePod], now: SystemTime) {
        self.runtime.clear();
        self.runtime_cgroups.clear();
        for rp in pods {
            let containers: HashMap<String, Arc<str>> = rp
                .containers
                .iter()
                .map(|c| (c.id.clone(), Arc::from(c.name.as_str())))
                .collect();
            for c in &rp.containers {
                if let Some(dir) = &c.cgroup {
                    self.runtime_cgroups.insert(
                        dir.trim_start_matches('/').to_owned(),
                        (rp.pod.uid.clone(), c.id.clone()),
                    );
                }
            }
            match self.pods.get_mut(&rp.pod.uid) {
                Some(known) => {
                    for (id, name) in &containers {
                        known
                            .info
                            .containers
                            .entry(id.clone())
                            .or_insert_with(|| name.clone());
                    }
                }
                None => {
                    self.pods.insert(
                        rp.pod.uid.clone(),
                        Known {
                            info: PodInfo {
                                pod: Arc::new(rp.pod.clone()),
                                ips: Vec::new(),
                                host_network: false,
                                containers: containers.clone(),
                                started: None,
                                finished: false,
                            },
                            deleted_at: None,
                            runtime_only: true,
                        },
                    );
                }
            }
            self.runtime.insert(rp.pod.uid.clone(), containers);
        }
        for (uid, known) in &mut self.pods {
            if known.runtime_only && known.deleted_at.is_none() && !self.runtime.contains_key(uid) {
                known.deleted_at = Some(now);
            }
        }
    }

    /// The pod and container whose cgroup directory the runtime reported as `path` (relative to
    /// the cgroup root, with or without a leading `/`).
    pub fn runtime_cgroup(&self, path: &str) -> Option<(&str, &str)> {
        self.runtime_cgroups
            .get(path.trim_start_matches('/'))
            .map(|(uid, id)| (uid.as_str(), id.as_str()))
    }

    /// Marks a pod deleted at `at`: its IPs are released, its identity kept for a while.
    pub fn delete(&mut self, uid: &str, at: SystemTime) {
        if let Some(known) = self.pods.get_mut(uid) {
            known.deleted_at.get_or_insert(at);
        }
        for holds in self.holds.values_mut() {
            for h in holds
                .iter_mut()
                .filter(|h| h.pod.uid == uid && h.to.is_none())
            {
                h.to = Some(at.max(h.from));
            }
        }
    }

    /// After a full re-list: every known pod not in `live` was deleted while we were not
    /// watching.
    pub fn retain_live(&mut self, live: &HashSet<String>, now: SystemTime) {
        let gone: Vec<String> = self
            .pods
            .iter()
            .filter(|(uid, k)| k.deleted_at.is_none() && !k.runtime_only && !live.contains(*uid))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in gone {
            self.delete(&uid, now);
        }
    }

    /// Forgets pods deleted longer than [`DELETED_RETENTION`] ago and their IP holds.
    pub fn prune(&mut self, now: SystemTime) {
        let horizon = now
            .checked_sub(DELETED_RETENTION)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        self.pods
            .retain(|_, k| k.deleted_at.is_none_or(|at| at >= horizon));
        for holds in self.holds.values_mut() {
            holds.retain(|h| h.to.is_none_or(|to| to >= horizon));
        }
        self.holds.retain(|_, holds| !holds.is_empty());
    }

    /// A pod that is running now: known, not deleted, not finished.
    pub fn live_by_uid(&self, uid: &str) -> Option<&PodInfo> {
        self.pods
            .get(uid)
            .filter(|k| k.deleted_at.is_none() && !k.info.finished)
            .map(|k| &k.info)
    }

    pub fn by_uid(&self, uid: &str) -> Option<&PodInfo> {
        self.pods.get(uid).map(|k| &k.info)
    }

    /// The pod that held `ip` at time `at`: of the holds known to cover `at`, the latest to
    /// begin (a pod seen with the IP has it from then: the network plugin gave it the address,
    /// so a pod still terminating, even one stuck there, no longer has it); else the hold that
    /// may have (a pod between its start and the agent seeing it with the IP, when no one else
    /// had it).
    pub fn pod_at_ip(&self, ip: IpAddr, at: SystemTime) -> Option<&PodInfo> {
        let holds = self.holds.get(&ip)?;
        let until = |h: &&Hold| h.to.is_none_or(|to| at < to);
        let hold = holds
            .iter()
            .filter(|h| h.from <= at)
            .filter(until)
            .max_by_key(|h| h.from)
            .or_else(|| {
                holds
                    .iter()
                    .filter(|h| h.since <= at)
                    .filter(until)
                    .max_by_key(|h| h.since)
            })?;
        self.by_uid(&hold.pod.uid)
    }

    /// Live pods (not deleted, not finished) and their container IDs.
    pub fn pod_containers(&self) -> Vec<crate::cgroup::PodContainers> {
        let mut out: Vec<_> = self
            .pods
            .values()
            .filter(|k| k.deleted_at.is_none() && !k.info.finished)
            .map(|k| crate::cgroup::PodContainers {
                uid: k.info.pod.uid.as_str().into(),
                container_ids: k
                    .info
                    .containers
                    .keys()
                    .map(|c| c.as_str().into())
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| a.uid.cmp(&b.uid));
        out
    }

    /// Pods the API server reported and did not delete.
    pub fn live_pods(&self) -> usize {
        self.pods
            .values()
            .filter(|k| k.deleted_at.is_none() && !k.runtime_only)
            .count()
    }

    /// Pods only the container runtime knows (not reported by the API server yet).
    pub fn runtime_only_pods(&self) -> usize {
        self.pods
            .values()
            .filter(|k| k.deleted_at.is_none() && k.runtime_only)
            .count()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    pub fn info(name: &str, uid: &str, ip: &str, started: u64) -> PodInfo {
        PodInfo {
            pod: Arc::new(PodRef {
                namespace: "default".into(),
                name: name.into(),
                uid: uid.into(),
            }),
            ips: vec![ip.parse().unwrap()],
            host_network: false,
            containers: HashMap::from([("c0ffee".repeat(2), "app".into())]),
            started: Some(t(started)),
            finished: false,
        }
    }

    fn name_at(index: &PodIndex, ip: &str, at: u64) -> Option<String> {
        index
            .pod_at_ip(ip.parse().unwrap(), t(at))
            .map(|p| p.pod.name.clone())
    }

    #[test]
    fn reused_ip_maps_to_the_pod_that_held_it_then() {
        let mut idx = PodIndex::default();
        idx.apply(info("old", "u1", "10.0.0.5", 10), t(11));
        assert_eq!(name_at(&idx, "10.0.0.5", 15).as_deref(), Some("old"));
        idx.delete("u1", t(20));
        // The new pod was created before the old one's deletion was observed.
        idx.apply(info("new", "u2", "10.0.0.5", 18), t(25));
        assert_eq!(name_at(&idx, "10.0.0.5", 15).as_deref(), Some("old"));
        assert_eq!(name_at(&idx, "10.0.0.5", 19).as_deref(), Some("old"));
        assert_eq!(name_at(&idx, "10.0.0.5", 21).as_deref(), Some("new"));
        assert_eq!(name_at(&idx, "10.0.0.5", 500).as_deref(), Some("new"));
        assert_eq!(name_at(&idx, "10.0.0.5", 5), None, "before anyone held it");
        assert_eq!(
            idx.by_uid("u1").unwrap().pod.name,
            "old",
            "deleted pods stay known"
        );
        assert_eq!(idx.live_pods(), 1);
    }

    #[test]
    fn new_holder_seen_before_old_deletion_cuts_the_old_hold() {
        let mut idx = PodIndex::default();
        idx.apply(info("old", "u1", "10.0.0.5", 10), t(10));
        idx.apply(info("new", "u2", "10.0.0.5", 30), t(31));
        assert_eq!(name_at(&idx, "10.0.0.5", 29).as_deref(), Some("old"));
        assert_eq!(name_at(&idx, "10.0.0.5", 30).as_deref(), Some("new"));
        idx.delete("u1", t(40));
        assert_eq!(name_at(&idx, "10.0.0.5", 35).as_deref(), Some("new"));
    }

    #[test]
    fn a_pod_seen_watching_holds_its_ip_from_then_not_from_its_start() {
        let mut idx = PodIndex::default();
        idx.apply(info("old", "u1", "10.0.0.5", 10), t(11));
        // Created (startTime 50) while the old pod terminates; seen with the IP at 100.
        idx.observe(info("new", "u2", "10.0.0.5", 50), t(100), Seen::Watching);
        idx.delete("u1", t(105));
        assert_eq!(
            name_at(&idx, "10.0.0.5", 60).as_deref(),
            Some("old"),
            "not its startTime"
        );
        // Seen with the address: it has it, though the old pod's object still lists it (a
        // pod stuck terminating keeps no address it lost).
        assert_eq!(name_at(&idx, "10.0.0.5", 102).as_deref(), Some("new"));
        assert_eq!(name_at(&idx, "10.0.0.5", 106).as_deref(), Some("new"));
        // Had the new pod been listed rather than seen, its start would have cut the old.
        let mut listed = PodIndex::default();
        listed.apply(info("old", "u1", "10.0.0.5", 10), t(11));
        listed.apply(info("new", "u2", "10.0.0.5", 50), t(100));
        assert_eq!(name_at(&listed, "10.0.0.5", 60).as_deref(), Some("new"));
    }

    #[test]
    fn a_pod_seen_watching_on_a_free_ip_may_have_had_it_since_the_last_holder_left() {
        let mut idx = PodIndex::default();
        idx.observe(info("first", "u0", "10.0.0.6", 10), t(12), Seen::Watching);
        // No one had it before: from its start.
        assert_eq!(name_at(&idx, "10.0.0.6", 11).as_deref(), Some("first"));
        idx.delete("u0", t(40));
        idx.observe(info("next", "u1", "10.0.0.6", 30), t(45), Seen::Watching);
        assert_eq!(name_at(&idx, "10.0.0.6", 35).as_deref(), Some("first"));
        assert_eq!(name_at(&idx, "10.0.0.6", 42).as_deref(), Some("next"));
        assert_eq!(name_at(&idx, "10.0.0.6", 50).as_deref(), Some("next"));
    }

    #[test]
    fn host_network_and_finished_pods_hold_no_ip() {
        let mut idx = PodIndex::default();
        let mut host = info("host", "u1", "192.168.0.1", 1);
        host.host_network = true;
        idx.apply(host, t(1));
        assert_eq!(name_at(&idx, "192.168.0.1", 5), None);
        idx.apply(info("job", "u2", "10.0.0.9", 1), t(1));
        let mut done = info("job", "u2", "10.0.0.9", 1);
        done.finished = true;
        idx.apply(done, t(50));
        assert_eq!(name_at(&idx, "10.0.0.9", 49).as_deref(), Some("job"));
        assert_eq!(name_at(&idx, "10.0.0.9", 51), None);
    }

    #[test]
    fn relist_deletes_missing_and_prune_forgets_old() {
        let mut idx = PodIndex::default();
        idx.apply(info("a", "u1", "10.0.0.1", 1), t(1));
        idx.apply(info("b", "u2", "10.0.0.2", 1), t(1));
        idx.retain_live(&HashSet::from(["u2".to_owned()]), t(100));
        assert_eq!(idx.live_pods(), 1);
        assert_eq!(name_at(&idx, "10.0.0.1", 99).as_deref(), Some("a"));
        assert_eq!(name_at(&idx, "10.0.0.1", 101), None);
        idx.prune(t(100) + DELETED_RETENTION + Duration::from_secs(1));
        assert!(idx.by_uid("u1").is_none());
        assert!(idx.by_uid("u2").is_some());
        assert_eq!(name_at(&idx, "10.0.0.1", 99), None);
    }

    #[test]
    fn ip_change_closes_the_old_hold() {
        let mut idx = PodIndex::default();
        idx.apply(info("a", "u1", "10.0.0.1", 1), t(1));
        idx.apply(info("a", "u1", "10.0.0.2", 1), t(10));
        assert_eq!(name_at(&idx, "10.0.0.1", 5).as_deref(), Some("a"));
        assert_eq!(name_at(&idx, "10.0.0.1", 11), None);
        assert_eq!(name_at(&idx, "10.0.0.2", 11).as_deref(), Some("a"));
    }
}
