//! The controller-manager part of the lab, one process per lab:
//! - keeps every Deployment's pods at its replica count, replacing pods that are deleted;
//! - writes each Service's EndpointSlices (from its selector and the pods' readiness) and
//!   deletes the ones no longer wanted;
//! - gives every LoadBalancer Service an address from the config's `loadBalancerPool`.
//!
//! It lists `objects/`, keeps what the endpoints and LoadBalancer work need in memory
//! ([`Endpoints`]), follows the watch (both through [`store::reflector`]), and after each
//! batch of events reconciles what the batch touched (work that met a store error again after
//! [`store::reflector::RETRY`]). The decisions are the pure functions of `endpoints`; this module only
//! writes their difference to the store, each write conditional on the revision it read.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ipnet::Ipv4Net;
use model::{EndpointSlice, Kind, Pod, Service};
use serde_json::Value;
use store::contract::ConfigError;
use store::reflector::{Batch, Event, Reflector};
use store::{KeyValue, Store, StoreError, WatchEvent, keys};

use crate::api;
use crate::endpoints;
use crate::names::Lab;
use crate::topology::LabError;
use services::lb::{self, LbState};

/// The namespace/name of the Deployment an object key concerns: the Deployment itself, or
/// the owner of a pod.
fn deployment_of(key: &str, value: Option<&Value>) -> Option<(String, String)> {
    let (kind, ns, name) = split_key(key)?;
    match kind {
        Kind::Deployment => Some((ns.to_string(), name.to_string())),
        Kind::Pod => {
            let owner = value?
                .pointer("/metadata/ownerReferences")?
                .as_array()?
                .iter()
                .find(|o| o["kind"] == "Deployment")?;
            Some((ns.to_string(), owner["name"].as_str()?.to_string()))
        }
        _ => None,
    }
}

/// (kind, namespace, name) of an object key.
fn split_key(key: &str) -> Option<(Kind, &str, &str)> {
    keys::parse_object(key).map(|k| (k.kind, k.namespace, k.name))
}

/// The store key of the object of `kind` named `id` (`namespace/name`).
fn key_of(kind: Kind, id: &str) -> String {
    let (ns, name) = id.split_once('/').unwrap_or(("default", id));
    keys::object(kind, Some(ns), name)
}

/// The LoadBalancer pool of the network config (`loadBalancerPool`), if any.
pub async fn lb_pool(store: &impl Store) -> Result<Option<Ipv4Net>, StoreError> {
    match store::contract::read_config(store).await {
        Ok(cfg) => Ok(cfg.load_balancer_pool),
        Err(ConfigError::Missing) => Ok(None),
        Err(ConfigError::Store(e)) => Err(e),
        Err(ConfigError::Invalid(e)) => Err(StoreError::Invalid(format!(
            "network config (store key {}): {e}",
            keys::CONFIG
        ))),
    }
}

/// The endpoints and LoadBalancer part of the controller: a cache of Services, pods,
/// EndpointSlices and node zones, and the writes that bring the store to what
/// [`endpoints::desired_slices`] and [`services::lb::allocate_lb`] decide.
pub struct Endpoints<S: Store> {
    store: S,
    pool: Option<Ipv4Net>,
    /// By `namespace/name`: typed, as stored, mod revision.
    services: BTreeMap<String, (Service, Value, i64)>,
    pods: BTreeMap<String, Pod>,
    /// By `namespace/name`: typed, mod revision.
    slices: BTreeMap<String, (EndpointSlice, i64)>,
    /// Node name -> `topology.kubernetes.io/zone`.
    zones: BTreeMap<String, String>,
    /// Namespaces whose slices must be reconciled.
    dirty: BTreeSet<String>,
    /// Whether LoadBalancer addresses must be reconciled.
    lb_dirty: bool,
}

impl<S: Store> Endpoints<S> {
    /// An empty cache writing through `store`; LoadBalancer addresses come from `pool` (none
    /// without a pool).
    pub fn new(store: S, pool: Option<Ipv4Net>) -> Self {
        Endpoints {
            store,
            pool,
            services: BTreeMap::new(),
            pods: BTreeMap::new(),
            slices: BTreeMap::new(),
            zones: BTreeMap::new(),
            dirty: BTreeSet::new(),
            lb_dirty: false,
        }
    }

    /// Forgets everything and takes a full listing of `objects/` (after a relist).
    pub fn reset(&mut self, kvs: &[KeyValue]) {
        self.services.clear();
        self.pods.clear();
        self.slices.clear();
        self.zones.clear();
        for kv in kvs {
            self.put(kv);
        }
        self.dirty = self
            .services
            .keys()
            .chain(self.slices.keys())
            .filter_map(|k| k.split_once('/').map(|(ns, _)| ns.to_string()))
            .collect();
        self.lb_dirty = true;
    }

    /// Takes one watch event.
    pub fn event(&mut self, ev: &WatchEvent) {
        match ev {
            WatchEvent::Put(kv) => self.put(kv),
            WatchEvent::Delete { key, .. } => self.delete(key),
        }
    }

    fn put(&mut self, kv: &KeyValue) {
        let Some((kind, ns, name)) = split_key(&kv.key) else {
            return;
        };
        let id = format!("{ns}/{name}");
        let value: Value = match kv.decode() {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(key = %kv.key, "{e}");
                return;
            }
        };
        match kind {
            Kind::Service => match serde_json::from_value::<Service>(value.clone()) {
                Ok(s) => {
                    self.services.insert(id, (s, value, kv.mod_revision));
                    self.dirty.insert(ns.to_string());
                    self.lb_dirty = true;
                }
                Err(e) => tracing::warn!(key = %kv.key, "not a Service: {e}"),
            },
            Kind::Pod => match serde_json::from_value::<Pod>(value) {
                Ok(p) => {
                    self.pods.insert(id, p);
                    self.dirty.insert(ns.to_string());
                }
                Err(e) => tracing::warn!(key = %kv.key, "not a Pod: {e}"),
            },
            Kind::EndpointSlice => match serde_json::from_value::<EndpointSlice>(value) {
                Ok(s) => {
                    self.slices.insert(id, (s, kv.mod_revision));
                    self.dirty.insert(ns.to_string());
                }
                Err(e) => tracing::warn!(key = %kv.key, "not an EndpointSlice: {e}"),
            },
            Kind::Node => {
                let zone = value
                    .pointer("/metadata/labels")
                    .and_then(|l| l.get(endpoints::LABEL_ZONE))
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let old = match zone {
                    Some(z) => self.zones.insert(name.to_string(), z.clone()) != Some(z),
                    None => self.zones.remove(name).is_some(),
                };
                if old {
                    self.all_dirty();
                }
            }
            _ => {}
        }
    }

    fn delete(&mut self, key: &str) {
        let Some((kind, ns, name)) = split_key(key) else {
            return;
        };
        let id = format!("{ns}/{name}");
        let hit = match kind {
            Kind::Service => {
                self.lb_dirty = true;
                self.services.remove(&id).is_some()
            }
            Kind::Pod => self.pods.remove(&id).is_some(),
            Kind::EndpointSlice => self.slices.remove(&id).is_some(),
            Kind::Node => {
                if self.zones.remove(name).is_some() {
                    self.all_dirty();
                }
                false
            }
            _ => false,
        };
        if hit {
            self.dirty.insert(ns.to_string());
        }
    }

    fn all_dirty(&mut self) {
        let all: Vec<String> = self
            .services
            .keys()
            .filter_map(|k| k.split_once('/').map(|(ns, _)| ns.to_string()))
            .collect();
        self.dirty.extend(all);
    }

    /// Whether some work is left (a write failed and must be retried).
    pub fn has_work(&self) -> bool {
        !self.dirty.is_empty() || self.lb_dirty
    }

    /// Brings the store to the desired slices and LoadBalancer addresses for what changed.
    /// Work that met a store error stays marked for the next call.
    pub async fn reconcile(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for ns in dirty {
            if let Err(e) = self.reconcile_namespace(&ns).await {
                tracing::warn!(namespace = %ns, "endpointslices: {e}; retrying");
                self.dirty.insert(ns);
            }
        }
        if std::mem::take(&mut self.lb_dirty)
            && let Err(e) = self.reconcile_lb().await
        {
            tracing::warn!("loadbalancer addresses: {e}; retrying");
            self.lb_dirty = true;
        }
    }

    async fn reconcile_namespace(&mut self, ns: &str) -> Result<(), StoreError> {
        let prefix = format!("{ns}/");
        let in_ns = |k: &String| k.starts_with(&prefix);
        let services: Vec<Service> = self
            .services
            .iter()
            .filter(|(k, _)| in_ns(k))
            .map(|(_, (s, _, _))| s.clone())
            .collect();
        let pods: Vec<Pod> = self
            .pods
            .iter()
            .filter(|(k, _)| in_ns(k))
            .map(|(_, p)| p.clone())
            .collect();
        let desired = endpoints::desired_slices(&services, &pods, &self.zones);
        let wanted: BTreeSet<String> = desired
            .iter()
            .map(|d| format!("{ns}/{}", d.metadata.name))
            .collect();
        let mut result = Ok(());
        for d in &desired {
            let id = format!("{ns}/{}", d.metadata.name);
            let stored = self.slices.get(&id);
            if stored.is_some_and(|(s, _)| endpoints::same_content(s, d)) {
                continue;
            }
            let rev = stored.map_or(0, |(_, r)| *r);
            let value = endpoints::to_stored(
                d,
                stored.map(|(s, _)| s),
                &api::new_uid(),
                &crate::now_rfc3339(),
            );
            let key = key_of(Kind::EndpointSlice, &id);
            match self
                .store
                .put_if(&key, store::encode(&key, &value)?, rev)
                .await
            {
                Ok(new_rev) => {
                    tracing::info!(slice = %id, endpoints = d.endpoints.len(), "endpointslice written");
                    if let Ok(s) = serde_json::from_value(value) {
                        self.slices.insert(id, (s, new_rev));
                    }
                }
                Err(StoreError::Conflict { .. }) => {
                    // Someone else wrote it: read it back and decide again.
                    match self.store.get(&key).await? {
                        Some(kv) => self.put(&kv),
                        None => {
                            self.slices.remove(&id);
                        }
                    }
                    self.dirty.insert(ns.to_string());
                }
                Err(e) => result = Err(e),
            }
        }
        let stale: Vec<String> = self
            .slices
            .iter()
            .filter(|(k, (s, _))| in_ns(k) && endpoints::is_managed(s) && !wanted.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for id in stale {
            match self.store.delete(&key_of(Kind::EndpointSlice, &id)).await {
                Ok(_) => {
                    tracing::info!(slice = %id, "endpointslice deleted");
                    self.slices.remove(&id);
                }
                Err(e) => result = Err(e),
            }
        }
        result
    }

    async fn reconcile_lb(&mut self) -> Result<(), StoreError> {
        let services: Vec<Service> = self.services.values().map(|(s, _, _)| s.clone()).collect();
        let decisions = lb::allocate_lb(&services, self.pool);
        let now = crate::now_rfc3339();
        let mut result = Ok(());
        for (id, state) in decisions {
            let Some((_, raw, rev)) = self.services.get(&id) else {
                continue;
            };
            let cur = raw.get("status");
            let want = lb::lb_status(cur, &state, &now);
            let cur_norm = cur.cloned().unwrap_or_else(|| serde_json::json!({}));
            if want == cur_norm {
                continue;
            }
            let mut new = raw.clone();
            new["status"] = want;
            let key = key_of(Kind::Service, &id);
            match self
                .store
                .put_if(&key, store::encode(&key, &new)?, *rev)
                .await
            {
                Ok(new_rev) => {
                    match &state {
                        LbState::Assigned(ip) => {
                            tracing::info!(service = %id, %ip, "loadbalancer address assigned")
                        }
                        LbState::Pending(why) => {
                            tracing::warn!(service = %id, "loadbalancer address pending: {why}")
                        }
                        LbState::None => {
                            tracing::info!(service = %id, "loadbalancer address released")
                        }
                    }
                    if let Ok(s) = serde_json::from_value(new.clone()) {
                        self.services.insert(id, (s, new, new_rev));
                    }
                }
                // The Service changed meanwhile: its event is on the way and decides again.
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => result = Err(e),
            }
        }
        result
    }
}

/// The controller process: connects to the lab's store (retrying until etcd answers), then
/// reconciles Deployments, EndpointSlices and LoadBalancer IPs after each batch of events.
/// Runs until the process is stopped.
pub async fn run(lab: Lab) -> Result<(), LabError> {
    let store = loop {
        match crate::client::connect(&lab).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!("store not reachable yet: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let mut reflector = Reflector::new(store.clone(), &[keys::OBJECTS]);
    let mut batch = Batch::new();
    // Owners of deleted pods are remembered from the last value seen.
    let mut owners: std::collections::HashMap<String, (String, String)> = Default::default();
    // The listing under way, taken as a whole by `Endpoints::reset` once complete.
    let mut listing: Vec<KeyValue> = Vec::new();
    let mut eps: Option<Endpoints<store::EtcdStore>> = None;
    // Deployments the events since the last reconcile touched.
    let mut todo = BTreeSet::new();
    loop {
        tokio::select! {
            ev = reflector.next() => {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) => {
                        tracing::warn!("store: {e}; retrying in {:?}", reflector.retry_in());
                        continue;
                    }
                };
                match ev {
                    Event::InitDone { revision } => {
                        let pool = match lb_pool(&store).await {
                            Ok(p) => p,
                            Err(e) => {
                                let wait = reflector.relist_after_error();
                                tracing::warn!("config: {e}; relisting in {wait:?}");
                                continue;
                            }
                        };
                        let mut fresh = Endpoints::new(store.clone(), pool);
                        fresh.reset(&std::mem::take(&mut listing));
                        eps = Some(fresh);
                        batch.saw(&Event::InitDone { revision });
                    }
                    ev => {
                        batch.saw(&ev);
                        take_event(ev, &mut listing, &mut owners, &mut todo, eps.as_mut());
                    }
                }
            }
            () = batch.ready() => {
                reconcile_deployments(&store, &std::mem::take(&mut todo)).await;
                let ok = match eps.as_mut() {
                    Some(eps) => {
                        eps.reconcile().await;
                        // Work left over from a failed write is tried again after a while.
                        !eps.has_work()
                    }
                    None => true,
                };
                batch.applied(ok);
            }
        }
    }
}

/// One event of the reflector other than the end of a listing: a listed key joins the
/// listing, a change goes to `eps`; both note the Deployment they concern in `todo`.
fn take_event<S: Store>(
    ev: Event,
    listing: &mut Vec<KeyValue>,
    owners: &mut std::collections::HashMap<String, (String, String)>,
    todo: &mut BTreeSet<(String, String)>,
    eps: Option<&mut Endpoints<S>>,
) {
    let deployment = |kv: &KeyValue, owners: &mut std::collections::HashMap<_, _>| {
        let v: Option<Value> = kv.decode().ok();
        let d = deployment_of(&kv.key, v.as_ref());
        if let (Some(d), true) = (
            &d,
            split_key(&kv.key).is_some_and(|(k, _, _)| k == Kind::Pod),
        ) {
            owners.insert(kv.key.clone(), d.clone());
        }
        d
    };
    match ev {
        Event::Init => listing.clear(),
        Event::InitApply(kv) => {
            todo.extend(deployment(&kv, owners));
            listing.push(kv);
        }
        Event::InitDone { .. } => {}
        Event::Apply(kv) => {
            todo.extend(deployment(&kv, owners));
            if let Some(eps) = eps {
                eps.event(&WatchEvent::Put(kv));
            }
        }
        Event::Delete { key, revision } => {
            todo.extend(owners.remove(&key).or_else(|| deployment_of(&key, None)));
            if let Some(eps) = eps {
                eps.event(&WatchEvent::Delete {
                    key,
                    mod_revision: revision,
                });
            }
        }
    }
}

async fn reconcile_deployments(store: &store::EtcdStore, todo: &BTreeSet<(String, String)>) {
    for (ns, name) in todo {
        if let Err(e) = api::reconcile_deployment(store, ns, name).await {
            tracing::warn!(deployment = %format!("{ns}/{name}"), "reconcile: {e}");
        }
    }
}

#[cfg(test)]
mod tests;
