//! The stored objects of every kind and the history of their changes, under one global
//! resourceVersion as etcd keeps it: a change to a pod and a change to a NetworkPolicy are
//! ordered against each other, and a list of any kind reports the newest version overall.
//! Fed by the [`super::ApiServer`] handle; read by lists, gets and watch streams.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde_json::Value;

use super::kinds::{Kind, Scope, Stored, selectable};

/// Real resourceVersions are large opaque numbers; starting well above 0 keeps
/// "0" (which means "any version" in the protocol) distinct from every real one.
pub(super) const FIRST_RV: u64 = 1000;

/// Current time at second precision, which is all Kubernetes timestamps carry.
pub(super) fn now() -> Time {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let ts = i64::try_from(secs)
        .ok()
        .and_then(|s| k8s_openapi::jiff::Timestamp::from_second(s).ok())
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    Time(ts)
}

/// One stored object: its JSON as served, plus what selectors read, extracted once.
pub(super) struct Object {
    pub(super) kind: Kind,
    pub(super) meta: ObjectMeta,
    fields: Vec<(&'static str, String)>,
    /// With apiVersion and kind, as GET and watch events carry it.
    json: Value,
}

impl Object {
    fn new<K: Stored>(object: &K) -> serde_json::Result<Object> {
        Ok(Object {
            kind: K::STORED,
            meta: object.metadata().clone(),
            fields: selectable(object),
            json: serde_json::to_value(object)?,
        })
    }

    /// "" for cluster-scoped objects.
    pub(super) fn namespace(&self) -> &str {
        self.meta.namespace.as_deref().unwrap_or_default()
    }

    pub(super) fn name(&self) -> &str {
        self.meta.name.as_deref().unwrap_or_default()
    }

    /// The value of a field selector's field; None if the kind has no such field.
    pub(super) fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(field, _)| *field == name)
            .map(|(_, value)| value.as_str())
    }

    pub(super) fn label(&self, key: &str) -> Option<&str> {
        self.meta.labels.as_ref()?.get(key).map(String::as_str)
    }

    /// The object as GET and watch events serve it.
    pub(super) fn json(&self) -> &Value {
        &self.json
    }

    /// The object as a list item: the real server omits apiVersion and kind there, so
    /// clients relying on them would break here as they would there.
    pub(super) fn list_item(&self) -> Value {
        let mut item = self.json.clone();
        if let Value::Object(map) = &mut item {
            map.remove("apiVersion");
            map.remove("kind");
        }
        item
    }

    /// The typed object (what the Rust API hands back); None only if our own JSON does
    /// not read back, which would be a bug in k8s-openapi.
    pub(super) fn decode<K: Stored>(&self) -> Option<K> {
        serde_json::from_value(self.json.clone()).ok()
    }

    fn key(&self) -> Key {
        (
            self.kind,
            self.namespace().to_owned(),
            self.name().to_owned(),
        )
    }

    /// The same object under a new resourceVersion (what a deletion sends watchers).
    fn at_version(&self, rv: u64) -> Object {
        let mut meta = self.meta.clone();
        meta.resource_version = Some(rv.to_string());
        let mut json = self.json.clone();
        if let Some(Value::Object(m)) = json.get_mut("metadata") {
            m.insert("resourceVersion".to_owned(), Value::String(rv.to_string()));
        }
        Object {
            kind: self.kind,
            meta,
            fields: self.fields.clone(),
            json,
        }
    }
}

/// One change to one object. `after` is what watchers receive; for a deletion it is the
/// last state of the object with the deletion's resourceVersion, as the real server sends.
pub(super) struct Change {
    pub(super) rv: u64,
    pub(super) before: Option<Arc<Object>>,
    pub(super) after: Arc<Object>,
    pub(super) deleted: bool,
}

/// (kind, namespace or "", name)
type Key = (Kind, String, String);

/// Objects plus the change history. History is unbounded until compacted; that is fine
/// for test-sized workloads.
pub(super) struct Store {
    objects: BTreeMap<Key, Arc<Object>>,
    /// Every change since the last compaction, in resourceVersion order.
    history: Vec<Change>,
    /// The newest resourceVersion handed out.
    rv: u64,
    /// Watches starting before this version can no longer be served (410 Gone).
    compacted: u64,
}

impl Store {
    pub(super) fn new() -> Store {
        Store {
            objects: BTreeMap::new(),
            history: Vec::new(),
            rv: FIRST_RV,
            compacted: FIRST_RV,
        }
    }

    pub(super) fn resource_version(&self) -> u64 {
        self.rv
    }

    pub(super) fn compacted(&self) -> u64 {
        self.compacted
    }

    /// `namespace` is "" for cluster-scoped kinds.
    pub(super) fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<&Arc<Object>> {
        self.objects
            .get(&(kind, namespace.to_owned(), name.to_owned()))
    }

    /// Every object of a kind, by namespace and name.
    pub(super) fn list(&self, kind: Kind) -> impl Iterator<Item = &Arc<Object>> {
        self.objects
            .range((kind, String::new(), String::new())..)
            .take_while(move |((k, _, _), _)| *k == kind)
            .map(|(_, object)| object)
    }

    /// The changes after `cursor`, oldest first.
    pub(super) fn changes_after(&self, cursor: u64) -> &[Change] {
        let start = self.history.partition_point(|c| c.rv <= cursor);
        self.history.get(start..).unwrap_or_default()
    }

    /// Forgets the history up to the current resourceVersion.
    pub(super) fn compact(&mut self) {
        self.compacted = self.rv;
        self.history.clear();
    }

    /// Creates or replaces an object (keyed by kind, namespace and name; a namespaced object
    /// without a namespace goes to "default"). Sets a new resourceVersion, keeps uid and
    /// creationTimestamp from the object it replaces (or makes them up), and creates the
    /// object's Namespace first if it does not exist yet.
    pub(super) fn apply<K: Stored>(&mut self, mut object: K) -> serde_json::Result<Arc<Object>> {
        let meta = object.metadata_mut();
        let namespace = if <K::Scope as Scope>::NAMESPACED {
            meta.namespace
                .get_or_insert_with(|| "default".to_owned())
                .clone()
        } else {
            meta.namespace = None;
            String::new()
        };
        let key = (K::STORED, namespace, meta.name.clone().unwrap_or_default());
        if !key.1.is_empty() && self.get(Kind::Namespace, "", &key.1).is_none() {
            // A real cluster refuses objects in a missing namespace; tests would rather not
            // have to create each one, so it appears as if someone had.
            let mut namespace = Namespace::default();
            namespace.metadata.name = Some(key.1.clone());
            self.apply(namespace)?;
        }
        let before = self.objects.get(&key).cloned();
        let rv = self.rv + 1;
        let meta = object.metadata_mut();
        meta.resource_version = Some(rv.to_string());
        let old = before.as_ref().map(|b| &b.meta);
        if meta.creation_timestamp.is_none() {
            meta.creation_timestamp = old
                .and_then(|m| m.creation_timestamp.clone())
                .or_else(|| Some(now()));
        }
        if meta.uid.is_none() {
            meta.uid = old
                .and_then(|m| m.uid.clone())
                .or_else(|| Some(format!("00000000-0000-4000-8000-{rv:012x}")));
        }
        object.on_write();
        let after = Object::new(&object)?;
        self.rv = rv;
        Ok(self.record(before, after, false))
    }

    /// Deletes an object; returns its last state as sent to watchers, or None if it did not
    /// exist. Deleting a Namespace goes as on a real cluster: it turns Terminating (with a
    /// deletionTimestamp), everything in it is deleted, then the Namespace itself.
    pub(super) fn delete(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<Object>> {
        let current = self.get(kind, namespace, name)?;
        if kind == Kind::Namespace {
            if let Some(mut terminating) = current.decode::<Namespace>() {
                terminating.metadata.deletion_timestamp = Some(now());
                if let Some(status) = &mut terminating.status {
                    status.phase = Some("Terminating".to_owned());
                }
                if let Err(e) = self.apply(terminating) {
                    eprintln!("apiserver: cannot mark namespace {name} terminating: {e}");
                }
            }
            let contents: Vec<Key> = self
                .objects
                .keys()
                .filter(|(k, ns, _)| *k != Kind::Namespace && ns == name)
                .cloned()
                .collect();
            for (k, ns, n) in contents {
                self.delete(k, &ns, &n);
            }
        }
        let before = self
            .objects
            .get(&(kind, namespace.to_owned(), name.to_owned()))
            .cloned()?;
        self.rv += 1;
        let after = before.at_version(self.rv);
        Some(self.record(Some(before), after, true))
    }

    /// Stores a change whose resourceVersion was just taken and appends it to the history.
    fn record(&mut self, before: Option<Arc<Object>>, after: Object, deleted: bool) -> Arc<Object> {
        let after = Arc::new(after);
        if deleted {
            self.objects.remove(&after.key());
        } else {
            self.objects.insert(after.key(), Arc::clone(&after));
        }
        self.history.push(Change {
            rv: self.rv,
            before,
            after: Arc::clone(&after),
            deleted,
        });
        after
    }
}
