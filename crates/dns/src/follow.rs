//! Keeping the zone equal to the store: list Namespaces, Services, EndpointSlices and Pods,
//! load them, then follow their watches and re-index only the owner an event touches (a
//! Service with its slices, one Pod, one Namespace). Listing, watching and retrying are
//! [`store::reflector`]'s; store outages keep the zone as it is.

use std::collections::{BTreeSet, HashMap};

use model::{EndpointSlice, Kind, Pod, Service};
use store::keys;
use store::reflector::{Event, Reflector};
use store::{KeyValue, Store};
use tokio::sync::watch;

use crate::records::{self, ZoneConfig, slice_service};
use crate::server::SharedZone;
use crate::zone::{Owner, Zone};

/// The kinds the zone is built from.
pub const KINDS: [Kind; 4] = [
    Kind::Namespace,
    Kind::Service,
    Kind::EndpointSlice,
    Kind::Pod,
];

/// The objects the zone is built from, by store key.
#[derive(Default, Debug)]
pub struct Objects {
    namespaces: HashMap<String, ()>,
    services: HashMap<String, Service>,
    slices: HashMap<String, EndpointSlice>,
    /// `ns/service` -> store keys of its slices.
    slices_of: HashMap<String, BTreeSet<String>>,
    pods: HashMap<String, Pod>,
}

/// `(namespace, name)` of an object key of `kind`.
fn split_key(key: &str, kind: Kind) -> Option<(&str, &str)> {
    keys::parse_object(key)
        .filter(|k| k.kind == kind)
        .map(|k| (k.namespace, k.name))
}

impl Objects {
    /// Takes one stored object (or its deletion: `value` None); returns the owners whose
    /// records must be recomputed.
    pub fn apply(&mut self, key: &str, value: Option<&KeyValue>) -> Vec<Owner> {
        if let Some((_, name)) = split_key(key, Kind::Namespace) {
            match value {
                Some(_) => self.namespaces.insert(name.to_string(), ()),
                None => self.namespaces.remove(name),
            };
            return vec![Owner::Namespace(name.to_string())];
        }
        if let Some((ns, name)) = split_key(key, Kind::Service) {
            let id = format!("{ns}/{name}");
            match value.map(KeyValue::decode::<Service>) {
                Some(Ok(mut s)) => {
                    s.metadata.namespace = Some(ns.to_string());
                    s.metadata.name = name.to_string();
                    self.services.insert(id.clone(), s);
                }
                Some(Err(e)) => {
                    tracing::warn!(key, error = %e, "service ignored");
                    self.services.remove(&id);
                }
                None => {
                    self.services.remove(&id);
                }
            }
            return vec![Owner::Service(id)];
        }
        if let Some((ns, _)) = split_key(key, Kind::EndpointSlice) {
            let mut touched = Vec::new();
            if let Some(old) = self.slices.remove(key)
                && let Some(svc) = slice_service(&old)
            {
                if let Some(set) = self.slices_of.get_mut(&svc) {
                    set.remove(key);
                    if set.is_empty() {
                        self.slices_of.remove(&svc);
                    }
                }
                touched.push(Owner::Service(svc));
            }
            match value.map(KeyValue::decode::<EndpointSlice>) {
                Some(Ok(mut s)) => {
                    s.metadata.namespace = Some(ns.to_string());
                    if let Some(svc) = slice_service(&s) {
                        self.slices_of
                            .entry(svc.clone())
                            .or_default()
                            .insert(key.to_string());
                        if !touched.contains(&Owner::Service(svc.clone())) {
                            touched.push(Owner::Service(svc));
                        }
                    }
                    self.slices.insert(key.to_string(), s);
                }
                Some(Err(e)) => tracing::warn!(key, error = %e, "endpointslice ignored"),
                None => {}
            }
            return touched;
        }
        if let Some((ns, name)) = split_key(key, Kind::Pod) {
            let id = format!("{ns}/{name}");
            match value.map(KeyValue::decode::<Pod>) {
                Some(Ok(mut p)) => {
                    p.metadata.namespace = Some(ns.to_string());
                    self.pods.insert(id.clone(), p);
                }
                Some(Err(e)) => {
                    tracing::warn!(key, error = %e, "pod ignored");
                    self.pods.remove(&id);
                }
                None => {
                    self.pods.remove(&id);
                }
            }
            return vec![Owner::Pod(id)];
        }
        Vec::new()
    }

    /// The records `owner` contributes now (empty when it is gone).
    pub fn records(&self, cfg: &ZoneConfig, owner: &Owner) -> Vec<records::Rr> {
        match owner {
            Owner::Static => records::static_records(cfg),
            Owner::Namespace(ns) => {
                if self.namespaces.contains_key(ns) {
                    records::namespace_records(cfg, ns)
                } else {
                    Vec::new()
                }
            }
            Owner::Service(id) => {
                let Some(svc) = self.services.get(id) else {
                    return Vec::new();
                };
                let slices: Vec<&EndpointSlice> = self
                    .slices_of
                    .get(id)
                    .into_iter()
                    .flatten()
                    .filter_map(|k| self.slices.get(k))
                    .collect();
                records::service_records(cfg, svc, &slices)
            }
            Owner::Pod(id) => self
                .pods
                .get(id)
                .map(|p| records::pod_records(cfg, p))
                .unwrap_or_default(),
        }
    }

    /// Every owner these objects hold.
    pub fn owners(&self) -> Vec<Owner> {
        let mut out: Vec<Owner> = self
            .namespaces
            .keys()
            .map(|n| Owner::Namespace(n.clone()))
            .collect();
        out.extend(self.services.keys().map(|k| Owner::Service(k.clone())));
        out.extend(self.pods.keys().map(|k| Owner::Pod(k.clone())));
        out
    }

    /// Makes `zone` hold exactly these objects' records (after a listing).
    pub fn load_into(&self, zone: &mut Zone) {
        let cfg = zone.config().clone();
        let want: BTreeSet<Owner> = self.owners().into_iter().collect();
        for o in zone.owners() {
            if o != Owner::Static && !want.contains(&o) {
                zone.remove(&o);
            }
        }
        for o in want {
            let rrs = self.records(&cfg, &o);
            zone.set(o, rrs);
        }
    }

    /// Re-indexes `owners` in `zone`.
    pub fn update(&self, zone: &mut Zone, owners: &[Owner]) {
        let cfg = zone.config().clone();
        for o in owners {
            let rrs = self.records(&cfg, o);
            if rrs.is_empty() {
                zone.remove(o);
            } else {
                zone.set(o.clone(), rrs);
            }
        }
    }

    /// How many Services the index holds.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }
}

/// Why a static object list cannot be served; names the item by its index.
#[derive(Debug, thiserror::Error)]
pub enum StaticError {
    /// An item has no `metadata.name`.
    #[error("items[{0}]: metadata.name missing")]
    NoName(usize),
    /// An item's kind is not one DNS serves (Namespace, Service, EndpointSlice, Pod).
    #[error("items[{index}]: kind {kind:?} is not served by DNS")]
    Kind {
        /// The item's index.
        index: usize,
        /// Its `kind`.
        kind: String,
    },
    /// An item does not serialize back (not expected of parsed JSON).
    #[error("items[{index}]: {source}")]
    Json {
        /// The item's index.
        index: usize,
        /// What serde said.
        source: serde_json::Error,
    },
}

/// Loads objects from JSON values (Kubernetes-shaped, as `get -o json` prints them) into a
/// synced zone, for serving a fixed set of records without a store (benchmarks, tests).
pub fn load_static(zone: &mut Zone, items: &[serde_json::Value]) -> Result<usize, StaticError> {
    let mut objects = Objects::default();
    for (i, item) in items.iter().enumerate() {
        let kind = item["kind"].as_str().unwrap_or_default();
        let ns = item["metadata"]["namespace"].as_str().unwrap_or("default");
        let name = item["metadata"]["name"]
            .as_str()
            .ok_or(StaticError::NoName(i))?;
        let kind = Kind::from_kind_field(kind)
            .filter(|k| KINDS.contains(k))
            .ok_or_else(|| StaticError::Kind {
                index: i,
                kind: kind.to_string(),
            })?;
        let key = keys::object(kind, Some(ns), name);
        let kv = KeyValue {
            key: key.clone(),
            value: serde_json::to_vec(item)
                .map_err(|source| StaticError::Json { index: i, source })?,
            mod_revision: 1,
            create_revision: 1,
            lease: 0,
        };
        objects.apply(&key, Some(&kv));
    }
    objects.load_into(zone);
    zone.set_synced();
    Ok(items.len())
}

/// Follows the store for as long as the future runs. `synced` turns true after the first
/// complete load (the server starts answering, and listening on TCP, from then on).
pub async fn follow<S: Store>(store: S, zone: SharedZone, synced: watch::Sender<bool>) {
    let prefixes = keys::prefixes(&KINDS);
    let mut reflector = Reflector::new(store, &keys::as_strs(&prefixes));
    let mut objects = Objects::default();
    loop {
        let ev = match reflector.next().await {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?reflector.retry_in(), "cannot follow the store; answering from what is loaded");
                continue;
            }
        };
        // The zone changes only at the end of a listing and on a change: a listing is
        // collected into `objects` alone (the zone answers from the last one meanwhile).
        let (key, revision, owners) = match ev {
            Event::Init => {
                objects = Objects::default();
                continue;
            }
            Event::InitApply(kv) => {
                objects.apply(&kv.key, Some(&kv));
                continue;
            }
            Event::InitDone { revision } => {
                {
                    let mut z = zone.write().unwrap_or_else(|p| p.into_inner());
                    objects.load_into(&mut z);
                    z.set_synced();
                    tracing::info!(
                        revision,
                        services = objects.service_count(),
                        names = z.name_count(),
                        "zone loaded"
                    );
                }
                let _ = synced.send(true);
                continue;
            }
            Event::Apply(kv) => {
                let owners = objects.apply(&kv.key, Some(&kv));
                (kv.key, kv.mod_revision, owners)
            }
            Event::Delete { key, revision } => {
                let owners = objects.apply(&key, None);
                (key, revision, owners)
            }
        };
        if owners.is_empty() {
            continue;
        }
        let mut z = zone.write().unwrap_or_else(|p| p.into_inner());
        objects.update(&mut z, &owners);
        tracing::debug!(key, revision, "zone updated");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use std::sync::{Arc, RwLock};
    use std::time::Duration;

    use serde_json::json;
    use store::MemStore;

    use super::*;

    async fn put_service(s: &MemStore, ns: &str, name: &str, ip: &str) {
        let v = json!({"kind": "Service", "apiVersion": "v1",
                       "metadata": {"namespace": ns, "name": name},
                       "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                                "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}});
        let key = keys::object(Kind::Service, Some(ns), name);
        s.put(&key, serde_json::to_vec(&v).unwrap()).await.unwrap();
    }

    fn services(zone: &SharedZone) -> Vec<String> {
        let z = zone.read().unwrap();
        let mut out: Vec<String> = z
            .owners()
            .into_iter()
            .filter_map(|o| match o {
                Owner::Service(id) => Some(id),
                _ => None,
            })
            .collect();
        out.sort();
        out
    }

    /// Waits (5 s at most) until the zone's services are `want`.
    async fn wait_services(zone: &SharedZone, want: &[&str]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while services(zone) != want {
            assert!(
                tokio::time::Instant::now() < deadline,
                "zone services {:?}, want {want:?}",
                services(zone)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn follow_loads_the_listing_then_changes_and_recovers_from_an_outage_and_compaction() {
        let s = MemStore::new();
        let ns = json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": "web"}});
        s.put(
            &keys::object(Kind::Namespace, None, "web"),
            serde_json::to_vec(&ns).unwrap(),
        )
        .await
        .unwrap();
        put_service(&s, "web", "api", "10.96.0.20").await;
        put_service(&s, "web", "db", "10.96.0.21").await;
        let zone: SharedZone = Arc::new(RwLock::new(Zone::new(
            ZoneConfig::new("cluster.local").unwrap(),
        )));
        let (synced_tx, mut synced) = watch::channel(false);
        let task = tokio::spawn(follow(s.clone(), zone.clone(), synced_tx));
        tokio::time::timeout(Duration::from_secs(5), synced.wait_for(|s| *s))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(services(&zone), ["web/api", "web/db"]);

        s.delete(&keys::object(Kind::Service, Some("web"), "db"))
            .await
            .unwrap();
        wait_services(&zone, &["web/api"]).await;

        // An outage, and history compacted past the watch while the store was away: the zone
        // keeps answering, then follows again without what was deleted meanwhile.
        s.set_available(false);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(services(&zone), ["web/api"], "kept during the outage");
        s.set_available(true);
        s.delete(&keys::object(Kind::Service, Some("web"), "api"))
            .await
            .unwrap();
        put_service(&s, "web", "new", "10.96.0.22").await;
        s.compact(s.revision().await.unwrap()).unwrap();
        wait_services(&zone, &["web/new"]).await;
        task.abort();
    }
}
