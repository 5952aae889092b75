//! The store side: list + watch Ingresses, Services, EndpointSlices, Secrets and Nodes
//! (through [`store::reflector`]), compile after each batch of events, publish the result to
//! the proxy, and keep the `status.loadBalancer` of every served Ingress pointing at the
//! gateway.
//!
//! Status address: the LoadBalancer IPs of the gateway's own Service (`--publish-service`)
//! when it has any, else the InternalIP of every node (the gateway's NodePorts answer on
//! each). An Ingress that stops being ours loses the address list we wrote, if it still shows
//! exactly that list (an address another controller wrote is left alone).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use model::{EndpointSlice, Ingress, IngressClass, Kind, Node, Secret, Service};
use serde_json::{Value, json};
use store::reflector::{Batch, Event, Reflector};
use store::{KeyValue, Store, StoreError, WatchEvent, keys};

use crate::proxy::Shared;
use crate::routes::{ClassFilter, Snapshot, compile};

/// The kinds the gateway follows.
pub const KINDS: [Kind; 6] = [
    Kind::Ingress,
    Kind::Service,
    Kind::EndpointSlice,
    Kind::Secret,
    Kind::Node,
    Kind::IngressClass,
];

/// What the store side needs to know.
#[derive(Debug, Clone, Default)]
pub struct WatchConfig {
    /// Which Ingresses are ours, unless a stored IngressClass says otherwise
    /// ([`View::class_filter`]).
    pub filter: ClassFilter,
    /// `namespace/name` of the gateway's Service, whose LoadBalancer IPs are published.
    pub publish_service: Option<String>,
}

/// A stored Ingress as read: typed, raw (for lossless status writes) and its revision.
#[derive(Debug, Clone)]
pub struct StoredIngress {
    /// The Ingress as read, `metadata.namespace` filled in from the key.
    pub ingress: Ingress,
    /// The object as stored, so a status write keeps fields the typed model drops.
    pub raw: Value,
    /// The etcd revision it was last written at; a status write is conditional on it.
    pub mod_revision: i64,
}

/// The objects the gateway compiles from, by store key.
#[derive(Debug, Default)]
pub struct View {
    /// Ingresses by store key.
    pub ingresses: BTreeMap<String, StoredIngress>,
    /// Services by store key.
    pub services: BTreeMap<String, Service>,
    /// EndpointSlices by store key.
    pub slices: BTreeMap<String, EndpointSlice>,
    /// `kubernetes.io/tls` (and other) Secrets by store key.
    pub secrets: BTreeMap<String, Secret>,
    /// Nodes by store key (their InternalIPs are the fallback status address).
    pub nodes: BTreeMap<String, Node>,
    /// IngressClasses by store key (which class is the cluster's default).
    pub classes: BTreeMap<String, IngressClass>,
}

/// The namespace of an object key (None for cluster-scoped kinds).
fn namespace_of(key: &keys::ObjectKey<'_>) -> Option<String> {
    (key.namespace != keys::CLUSTER_SCOPE).then(|| key.namespace.to_string())
}

fn decode<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Option<T> {
    match kv.decode::<T>() {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!(key = %kv.key, error = %e, "object ignored");
            None
        }
    }
}

impl View {
    /// Takes one stored object (or forgets it, if it does not decode).
    pub fn take(&mut self, kv: &KeyValue) {
        let key = kv.key.clone();
        let Some(ok) = keys::parse_object(&kv.key) else {
            return;
        };
        if ok.kind == Kind::Ingress {
            let raw: Option<Value> = decode(kv);
            let typed = raw
                .clone()
                .and_then(|r| serde_json::from_value::<Ingress>(r).ok());
            match (raw, typed) {
                (Some(raw), Some(mut ingress)) => {
                    ingress.metadata.namespace = namespace_of(&ok);
                    self.ingresses.insert(
                        key,
                        StoredIngress {
                            ingress,
                            raw,
                            mod_revision: kv.mod_revision,
                        },
                    );
                }
                _ => {
                    self.ingresses.remove(&key);
                }
            }
        } else if ok.kind == Kind::Service {
            match decode::<Service>(kv) {
                Some(mut s) => {
                    s.metadata.namespace = namespace_of(&ok);
                    self.services.insert(key, s);
                }
                None => {
                    self.services.remove(&key);
                }
            }
        } else if ok.kind == Kind::EndpointSlice {
            match decode::<EndpointSlice>(kv) {
                Some(mut s) => {
                    s.metadata.namespace = namespace_of(&ok);
                    self.slices.insert(key, s);
                }
                None => {
                    self.slices.remove(&key);
                }
            }
        } else if ok.kind == Kind::Secret {
            match decode::<Secret>(kv) {
                Some(mut s) => {
                    s.metadata.namespace = namespace_of(&ok);
                    self.secrets.insert(key, s);
                }
                None => {
                    self.secrets.remove(&key);
                }
            }
        } else if ok.kind == Kind::IngressClass {
            match decode::<IngressClass>(kv) {
                Some(c) => {
                    self.classes.insert(key, c);
                }
                None => {
                    self.classes.remove(&key);
                }
            }
        } else if ok.kind == Kind::Node {
            match decode::<Node>(kv) {
                Some(n) => {
                    self.nodes.insert(key, n);
                }
                None => {
                    self.nodes.remove(&key);
                }
            }
        }
    }

    /// Applies one watch event: a put is taken as [`View::take`] does, a delete forgets the key.
    pub fn take_event(&mut self, ev: &WatchEvent) {
        match ev {
            WatchEvent::Put(kv) => self.take(kv),
            WatchEvent::Delete { key, .. } => {
                self.ingresses.remove(key);
                self.services.remove(key);
                self.slices.remove(key);
                self.secrets.remove(key);
                self.classes.remove(key);
                self.nodes.remove(key);
            }
        }
    }

    /// The current objects as a [`Snapshot`] to compile.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            ingresses: self.ingresses.values().map(|s| s.ingress.clone()).collect(),
            services: self.services.values().cloned().collect(),
            slices: self.slices.values().cloned().collect(),
            secrets: self.secrets.values().cloned().collect(),
        }
    }

    /// The Ingresses to serve: those of our class, and those without a class when the stored
    /// IngressClass of that name is the cluster's default (annotation
    /// `ingressclass.kubernetes.io/is-default-class: "true"`). Without a stored IngressClass of
    /// that name, `configured` says (`flatnet ingress --ignore-classless` turns it off).
    pub fn class_filter(&self, configured: &ClassFilter) -> ClassFilter {
        let stored = self
            .classes
            .values()
            .find(|c| c.metadata.name == configured.class);
        ClassFilter {
            class: configured.class.clone(),
            serve_classless: IngressClass::serves_classless(stored, configured.serve_classless),
        }
    }

    /// The gateway's own Service, if configured and present.
    fn publish_service(&self, name: Option<&str>) -> Option<&Service> {
        let (ns, svc) = name?.split_once('/')?;
        self.services
            .get(&store::keys::object(model::Kind::Service, Some(ns), svc))
    }
}

/// The addresses to publish ([`model::published_addresses`]).
pub fn desired_addresses(publish: Option<&Service>, nodes: &[&Node]) -> Vec<String> {
    model::published_addresses(publish, nodes)
}

/// One status write: the Ingress's key, its new JSON, and the revision it was computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusWrite {
    /// Store key of the Ingress.
    pub key: String,
    /// The whole object with its new `status.loadBalancer.ingress`.
    pub value: Value,
    /// The etcd revision the write is conditional on (the Ingress as it was read).
    pub mod_revision: i64,
}

/// The status writes that make every served Ingress show `desired`, and every other one not
/// show it. Pure; an empty `desired` writes nothing (nothing to publish yet).
pub fn status_writes(
    ingresses: &BTreeMap<String, StoredIngress>,
    served: &BTreeSet<String>,
    desired: &[String],
) -> Vec<StatusWrite> {
    if desired.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (key, s) in ingresses {
        let shows: Vec<&str> = s.ingress.status_ips();
        let ours = served.contains(&s.ingress.key());
        let want: Option<Value> = if ours && shows != desired {
            let list: Vec<Value> = desired.iter().map(|ip| json!({"ip": ip})).collect();
            Some(json!(list))
        } else if !ours && !shows.is_empty() && shows == desired {
            Some(json!([]))
        } else {
            None
        };
        let Some(list) = want else { continue };
        let mut value = s.raw.clone();
        if !value["status"].is_object() {
            value["status"] = json!({});
        }
        if !value["status"]["loadBalancer"].is_object() {
            value["status"]["loadBalancer"] = json!({});
        }
        if list.as_array().is_some_and(Vec::is_empty) {
            if let Some(lb) = value["status"]["loadBalancer"].as_object_mut() {
                lb.remove("ingress");
            }
        } else {
            value["status"]["loadBalancer"]["ingress"] = list;
        }
        out.push(StatusWrite {
            key: key.clone(),
            value,
            mod_revision: s.mod_revision,
        });
    }
    out
}

/// What one pass did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// `namespace/name` of every Ingress served, sorted.
    pub served: Vec<String>,
    /// Number of host groups in the route table.
    pub hosts: usize,
    /// Number of SNI names with a certificate.
    pub certs: usize,
    /// Status writes that succeeded.
    pub status_written: usize,
    /// What was skipped while compiling (missing Service, Secret, port, ...).
    pub warnings: Vec<String>,
}

/// Compiles the view, publishes it, and writes statuses. Conflicting status writes are left
/// to the next pass (the watch brings the newer object).
pub async fn pass<S: Store>(
    store: &S,
    view: &View,
    shared: &Shared,
    cfg: &WatchConfig,
) -> PassReport {
    let compiled = compile(&view.snapshot(), &view.class_filter(&cfg.filter));
    let served: BTreeSet<String> = compiled.served.iter().cloned().collect();
    let mut report = PassReport {
        served: compiled.served.clone(),
        hosts: compiled.routes.hosts(),
        certs: compiled.certs.names(),
        status_written: 0,
        warnings: compiled.warnings.clone(),
    };
    shared.publish(compiled);
    let nodes: Vec<&Node> = view.nodes.values().collect();
    let desired = desired_addresses(view.publish_service(cfg.publish_service.as_deref()), &nodes);
    for w in status_writes(&view.ingresses, &served, &desired) {
        let bytes = match store::encode(&w.key, &w.value) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(key = %w.key, error = %e, "status not written");
                continue;
            }
        };
        match store.put_if(&w.key, bytes, w.mod_revision).await {
            Ok(_) => report.status_written += 1,
            Err(StoreError::Conflict { .. }) => {
                tracing::debug!(key = %w.key, "ingress changed meanwhile; status next pass")
            }
            Err(e) => tracing::warn!(key = %w.key, error = %e, "status not written"),
        }
    }
    report
}

/// Runs until the future is dropped: list, publish, follow the watches, publishing after each
/// batch of changes ([`Batch`]); on a store error, keep serving the last table (the
/// reflector retries).
pub async fn run<S: Store>(store: S, shared: Arc<Shared>, cfg: WatchConfig) {
    let prefixes = keys::prefixes(&KINDS);
    let mut reflector = Reflector::new(store.clone(), &keys::as_strs(&prefixes));
    let mut batch = Batch::new();
    let mut view = View::default();
    let mut last_warnings: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            ev = reflector.next() => match ev {
                Ok(ev) => {
                    batch.saw(&ev);
                    match ev {
                        // A listing is taken into a fresh view; nothing is compiled from it
                        // before it is complete.
                        Event::Init => view = View::default(),
                        ev => {
                            if let Some(change) = ev.into_change() {
                                view.take_event(&change);
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?reflector.retry_in(), "cannot follow the store; serving the last routes");
                }
            },
            () = batch.ready() => {
                let r = pass(&store, &view, &shared, &cfg).await;
                log_pass(&r, &mut last_warnings);
                // A status write that failed waits for the next change, as a conflict does.
                batch.applied(true);
            }
        }
    }
}

fn log_pass(r: &PassReport, last: &mut Vec<String>) {
    tracing::debug!(
        served = r.served.len(),
        hosts = r.hosts,
        certs = r.certs,
        status_written = r.status_written,
        "routes published"
    );
    for w in &r.warnings {
        if !last.contains(w) {
            tracing::warn!("{w}");
        }
    }
    *last = r.warnings.clone();
}
