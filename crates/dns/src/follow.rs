//! Keeping the zone equal to the store: list Namespaces, Services, EndpointSlices and Pods,
//! load them, then follow their watches and re-index only the owner an event touches (a
//! Service with its slices, one Pod, one Namespace). Store outages keep the zone as it is.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use model::{EndpointSlice, Pod, Service};
use store::{KeyValue, Store, StoreError, WatchEvent, WatchReceiver};
use tokio::sync::watch;

use crate::records::{self, ZoneConfig, slice_service};
use crate::server::SharedZone;
use crate::zone::{Owner, Zone};

pub const NAMESPACES_PREFIX: &str = "objects/namespaces/";
pub const SERVICES_PREFIX: &str = "objects/services/";
pub const SLICES_PREFIX: &str = "objects/endpointslices/";
pub const PODS_PREFIX: &str = "objects/pods/";
const PREFIXES: [&str; 4] = [
    NAMESPACES_PREFIX,
    SERVICES_PREFIX,
    SLICES_PREFIX,
    PODS_PREFIX,
];

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

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

/// `(namespace, name)` from `objects/<kind>/<namespace>/<name>`.
fn split_key<'a>(key: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    key.strip_prefix(prefix)?.split_once('/')
}

impl Objects {
    /// Takes one stored object (or its deletion: `value` None); returns the owners whose
    /// records must be recomputed.
    pub fn apply(&mut self, key: &str, value: Option<&KeyValue>) -> Vec<Owner> {
        if let Some((_, name)) = split_key(key, NAMESPACES_PREFIX) {
            match value {
                Some(_) => self.namespaces.insert(name.to_string(), ()),
                None => self.namespaces.remove(name),
            };
            return vec![Owner::Namespace(name.to_string())];
        }
        if let Some((ns, name)) = split_key(key, SERVICES_PREFIX) {
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
        if let Some((ns, _)) = split_key(key, SLICES_PREFIX) {
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
        if let Some((ns, name)) = split_key(key, PODS_PREFIX) {
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

    pub fn service_count(&self) -> usize {
        self.services.len()
    }
}

/// Loads objects from JSON values (Kubernetes-shaped, as `get -o json` prints them) into a
/// synced zone, for serving a fixed set of records without a store (benchmarks, tests).
pub fn load_static(zone: &mut Zone, items: &[serde_json::Value]) -> Result<usize, String> {
    let mut objects = Objects::default();
    for (i, item) in items.iter().enumerate() {
        let kind = item["kind"].as_str().unwrap_or_default();
        let ns = item["metadata"]["namespace"].as_str().unwrap_or("default");
        let name = item["metadata"]["name"]
            .as_str()
            .ok_or_else(|| format!("items[{i}]: metadata.name missing"))?;
        let prefix = match kind {
            "Namespace" => NAMESPACES_PREFIX,
            "Service" => SERVICES_PREFIX,
            "EndpointSlice" => SLICES_PREFIX,
            "Pod" => PODS_PREFIX,
            other => return Err(format!("items[{i}]: kind {other:?} is not served by DNS")),
        };
        let ns = if kind == "Namespace" { "_" } else { ns };
        let key = format!("{prefix}{ns}/{name}");
        let kv = KeyValue {
            key: key.clone(),
            value: serde_json::to_vec(item).map_err(|e| format!("items[{i}]: {e}"))?,
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

async fn list_all<S: Store>(store: &S) -> Result<(Objects, i64), StoreError> {
    let mut objects = Objects::default();
    let mut first = None;
    for prefix in PREFIXES {
        let (kvs, rev) = store.list(prefix).await?;
        first.get_or_insert(rev);
        for kv in &kvs {
            objects.apply(&kv.key, Some(kv));
        }
    }
    Ok((objects, first.unwrap_or(0)))
}

/// Follows the store for as long as the future runs. `synced` turns true after the first
/// complete load (the server starts answering, and listening on TCP, from then on).
pub async fn follow<S: Store>(store: S, zone: SharedZone, synced: watch::Sender<bool>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let (mut objects, rev) = match list_all(&store).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot list the store; answering from what is loaded");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let mut watches = Vec::new();
        for prefix in PREFIXES {
            // Watched from the first listing's revision: events between the listings are
            // seen twice, which changes nothing.
            match store.watch(prefix, rev + 1).await {
                Ok(w) => watches.push(w),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch {prefix}");
                    break;
                }
            }
        }
        if watches.len() != PREFIXES.len() {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            continue;
        }
        {
            let mut z = zone.write().unwrap_or_else(|p| p.into_inner());
            objects.load_into(&mut z);
            z.set_synced();
            tracing::info!(
                revision = rev,
                services = objects.service_count(),
                names = z.name_count(),
                "zone loaded"
            );
        }
        let _ = synced.send(true);
        backoff = BACKOFF_MIN;
        let err = follow_events(&mut objects, &zone, &mut watches).await;
        match err {
            StoreError::Compacted { revision } => {
                tracing::info!(revision, "watch fell behind compaction, re-listing");
            }
            e => {
                tracing::warn!(error = %e, retry_in = ?backoff, "watch broke; answering from what is loaded");
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

async fn follow_events(
    objects: &mut Objects,
    zone: &SharedZone,
    watches: &mut [WatchReceiver],
) -> StoreError {
    let [w0, w1, w2, w3] = watches else {
        return StoreError::Unavailable("watches missing".into());
    };
    loop {
        let ev = tokio::select! {
            ev = w0.recv() => ev,
            ev = w1.recv() => ev,
            ev = w2.recv() => ev,
            ev = w3.recv() => ev,
        };
        let ev = match ev {
            Some(Ok(ev)) => ev,
            Some(Err(e)) => return e,
            None => return StoreError::Unavailable("watch closed".into()),
        };
        let owners = match &ev {
            WatchEvent::Put(kv) => objects.apply(&kv.key, Some(kv)),
            WatchEvent::Delete { key, .. } => objects.apply(key, None),
        };
        if owners.is_empty() {
            continue;
        }
        let mut z = zone.write().unwrap_or_else(|p| p.into_inner());
        objects.update(&mut z, &owners);
        tracing::debug!(key = ev.key(), revision = ev.mod_revision(), "zone updated");
    }
}
