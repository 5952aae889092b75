//! The API-server and scheduler part of the lab: defaulting and storing objects (`apply`,
//! `delete`, `label`, `get`), binding pods to nodes and expanding Deployments into pods.
//! Validation happens before anything is written (all-or-nothing per `apply`).

use std::collections::{BTreeMap, HashMap};

use model::{Kind, Object};
use serde_json::{Value, json};
use store::{EtcdStore, Store, StoreError};

use crate::allocator;
use crate::kubelet::update;

/// Why an API request (`apply`, `delete`, `label`, `get`) failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The store (etcd) failed or refused a write.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The named object does not exist.
    #[error("{kind} {name} not found{ns}", ns = namespace.as_ref().map(|n| format!(" in namespace {n}")).unwrap_or_default())]
    NotFound {
        /// The kind as written (`Pod`, `Service`, ...).
        kind: String,
        /// Its namespace (`default` when none was given); None for cluster-scoped kinds.
        namespace: Option<String>,
        /// `metadata.name`.
        name: String,
    },
    /// A create found the object already there (`kubectl create`, POST).
    #[error("{kind} {name} already exists{ns}", ns = namespace.as_ref().map(|n| format!(" in namespace {n}")).unwrap_or_default())]
    AlreadyExists {
        /// The kind as written (`Pod`, `Service`, ...).
        kind: String,
        /// Its namespace; None for cluster-scoped kinds.
        namespace: Option<String>,
        /// `metadata.name`.
        name: String,
    },
    /// The request cannot be carried out as given (an invalid object, a missing namespace, a taken
    /// or out-of-range clusterIP or nodePort, ...); the message says why.
    #[error("{0}")]
    Invalid(String),
}

impl ApiError {
    fn already_exists(obj: &Object) -> Self {
        ApiError::AlreadyExists {
            kind: obj.kind.as_str().into(),
            namespace: obj.namespace().map(str::to_string),
            name: obj.name().into(),
        }
    }

    fn not_found(kind: Kind, namespace: Option<&str>, name: &str) -> Self {
        ApiError::NotFound {
            kind: kind.as_str().into(),
            namespace: kind
                .namespaced()
                .then(|| namespace.unwrap_or("default").to_string()),
            name: name.into(),
        }
    }
}

/// What `apply` did to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The object's kind.
    pub kind: Kind,
    /// Its namespace (`default` when the manifest names none); None for cluster-scoped kinds.
    pub namespace: Option<String>,
    /// `metadata.name`.
    pub name: String,
    /// "created", "configured" or "unchanged", as kubectl says.
    pub action: &'static str,
}

/// Namespaces every cluster has.
pub const BUILTIN_NAMESPACES: [&str; 2] = ["default", "kube-system"];

/// A new object uid (the kernel's random UUID).
pub(crate) fn new_uid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| {
            format!(
                "{:032x}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0)
            )
        })
}

/// Store key of an object (relative to the store prefix); a namespaced kind without a namespace
/// is in `default`.
pub fn kind_key(kind: Kind, namespace: Option<&str>, name: &str) -> String {
    model::object_key(
        kind,
        if kind.namespaced() {
            namespace.or(Some("default"))
        } else {
            None
        },
        name,
    )
}

/// Creates the built-in namespaces if they are missing.
pub async fn ensure_builtin_namespaces(store: &EtcdStore) -> Result<(), ApiError> {
    for ns in BUILTIN_NAMESPACES {
        let obj = model::parse_manifests(
            &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"),
            "builtin",
        )
        .map_err(|e| ApiError::Invalid(e.to_string()))?;
        apply(store, obj).await?;
    }
    Ok(())
}

/// Whether a write may replace a stored object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `apply`: create what is new, update what exists.
    CreateOrUpdate,
    /// `create` (POST): an existing object is [`ApiError::AlreadyExists`], left untouched.
    CreateOnly,
}

/// Stores validated objects: creates what is new, updates what exists, keeping the fields the
/// cluster owns (uid, creation time, pod binding and status).
pub async fn apply(store: &EtcdStore, objects: Vec<Object>) -> Result<Vec<Applied>, ApiError> {
    write(store, objects, Mode::CreateOrUpdate).await
}

/// [`apply`] for objects that must not exist yet (the API's create): the same defaulting,
/// validation and allocation; an object already stored fails with
/// [`ApiError::AlreadyExists`] and is not changed (decided by the same compare-and-swap that
/// writes, so two creates cannot both succeed).
pub async fn create(store: &EtcdStore, objects: Vec<Object>) -> Result<Vec<Applied>, ApiError> {
    write(store, objects, Mode::CreateOnly).await
}

async fn write(
    store: &EtcdStore,
    objects: Vec<Object>,
    mode: Mode,
) -> Result<Vec<Applied>, ApiError> {
    // Every namespace referenced must exist or be created by this same apply.
    let mut namespaces: Vec<String> = objects
        .iter()
        .filter(|o| o.kind == Kind::Namespace)
        .map(|o| o.name().to_string())
        .collect();
    for o in &objects {
        if let Some(ns) = o.namespace() {
            if namespaces.iter().any(|n| n == ns) {
                continue;
            }
            if store
                .get(&kind_key(Kind::Namespace, None, ns))
                .await?
                .is_none()
            {
                return Err(ApiError::Invalid(format!(
                    "{} {}/{}: namespace {ns} does not exist (nothing was applied)",
                    o.kind.as_str(),
                    ns,
                    o.name()
                )));
            }
            namespaces.push(ns.to_string());
        }
    }
    // Service allocations for the whole apply, before anything is written: a taken or
    // out-of-range clusterIP or nodePort fails the apply with nothing applied.
    let services: Vec<&Object> = objects.iter().filter(|o| o.kind == Kind::Service).collect();
    let mut prepared = prepare_services(store, &services).await?;
    let mut out = Vec::new();
    for obj in objects {
        let action = if obj.kind == Kind::Service {
            apply_service(store, &obj, &mut prepared, mode).await?
        } else {
            apply_one(store, &obj, mode).await?
        };
        // Deployments are expanded into pods by the controller (one writer, no races).
        out.push(Applied {
            kind: obj.kind,
            namespace: obj.namespace().map(str::to_string),
            name: obj.name().to_string(),
            action,
        });
    }
    Ok(out)
}

async fn apply_one(store: &EtcdStore, obj: &Object, mode: Mode) -> Result<&'static str, ApiError> {
    let key = obj.key();
    let mut action = "created";
    let mut exists = false;
    let mut new = obj.value.clone();
    // Bind only what needs binding: a new pod without `spec.nodeName`.
    let unbound = obj.kind == Kind::Pod
        && obj
            .value
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_none()
        && store.get(&key).await?.is_none();
    let pod_node = if unbound {
        Some(schedule(store).await?)
    } else {
        None
    };
    let changed = update(store, &key, |cur| {
        new = obj.value.clone();
        if cur.is_null() {
            action = "created";
            new["metadata"]["uid"] = json!(new_uid());
            new["metadata"]["creationTimestamp"] = json!(crate::now_rfc3339());
            if obj.kind == Kind::Pod {
                if let Some(node) = &pod_node {
                    new["spec"]["nodeName"] = json!(node);
                }
                new["status"] = json!({"phase": "Pending"});
            }
        } else if mode == Mode::CreateOnly {
            exists = true;
            return false;
        } else {
            action = "configured";
            for f in ["uid", "creationTimestamp"] {
                new["metadata"][f] = cur["metadata"][f].clone();
            }
            if obj.kind == Kind::Pod {
                // Pods are immutable but for their metadata: keep the running spec and status.
                let (labels, annotations) = (
                    new["metadata"]["labels"].clone(),
                    new["metadata"]["annotations"].clone(),
                );
                new = cur.clone();
                new["metadata"]["labels"] = labels;
                new["metadata"]["annotations"] = annotations;
            } else if let Some(status) = cur.get("status") {
                new["status"] = status.clone();
            }
            if strip_nulls(new.clone()) == strip_nulls(cur.clone()) {
                action = "unchanged";
                return false;
            }
        }
        *cur = strip_nulls(new.clone());
        true
    })
    .await?;
    if exists {
        return Err(ApiError::already_exists(obj));
    }
    Ok(if changed { action } else { "unchanged" })
}

/// A Service ready to be written: defaults applied, allocations made and recorded in the
/// index; `cur` is the stored object it was computed from (written only if still that one).
struct Prepared {
    svc: model::Service,
    cur: Option<(Value, i64)>,
}

/// The cluster's service CIDR, from `/flatnet/config` (design.md default when absent).
async fn service_ranges(store: &EtcdStore) -> Result<allocator::Ranges, ApiError> {
    let cidr = match store.get(store::keys::CONFIG).await? {
        Some(kv) => {
            let cfg: Value = kv.decode()?;
            match cfg.get("serviceCIDR").and_then(Value::as_str) {
                Some(c) => c.parse().map_err(|_| {
                    ApiError::Invalid(format!("config: serviceCIDR {c:?} is not an IPv4 CIDR"))
                })?,
                None => crate::names::Addressing::default().service_cidr,
            }
        }
        None => crate::names::Addressing::default().service_cidr,
    };
    Ok(allocator::Ranges::new(cidr))
}

/// The stored Services by `namespace/name`: (typed, raw, mod revision).
async fn stored_services(
    store: &EtcdStore,
) -> Result<BTreeMap<String, (model::Service, Value, i64)>, ApiError> {
    let (kvs, _) = store.list(&store::keys::kind_prefix(Kind::Service)).await?;
    let mut out = BTreeMap::new();
    for kv in kvs {
        let Ok(v) = kv.decode::<Value>() else {
            continue;
        };
        let Ok(svc) = serde_json::from_value::<model::Service>(v.clone()) else {
            continue;
        };
        out.insert(svc.key(), (svc, v, kv.mod_revision));
    }
    Ok(out)
}

async fn read_index(store: &EtcdStore) -> Result<(allocator::Index, i64), ApiError> {
    Ok(match store.get(allocator::INDEX_KEY).await? {
        Some(kv) => (kv.decode()?, kv.mod_revision),
        None => (allocator::Index::default(), 0),
    })
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Allocates for every Service of an apply and records the allocations in the index with one
/// compare-and-swap (retried when another apply wrote it meanwhile). Nothing is written when
/// any Service is refused.
async fn prepare_services(
    store: &EtcdStore,
    services: &[&Object],
) -> Result<BTreeMap<String, Prepared>, ApiError> {
    let mut out = BTreeMap::new();
    if services.is_empty() {
        return Ok(out);
    }
    let ranges = service_ranges(store).await?;
    for _ in 0..50 {
        out.clear();
        let stored = stored_services(store).await?;
        let (index, index_rev) = read_index(store).await?;
        let mut held: BTreeMap<String, allocator::Held> = stored
            .iter()
            .map(|(k, (svc, _, _))| (k.clone(), allocator::held(svc)))
            .collect();
        let mut in_use = allocator::InUse::new(&index, &held);
        let mut new_index = index.clone();
        let now = unix_now();
        for obj in services {
            let owner = obj.display_name();
            let manifest: model::Service =
                obj.typed().map_err(|e| ApiError::Invalid(e.to_string()))?;
            let cur = stored.get(&owner);
            let svc =
                allocator::prepare(&manifest, cur.map(|(s, _, _)| s), &owner, &in_use, &ranges)
                    .map_err(|errs| {
                        ApiError::Invalid(format!(
                            "Service {owner:?} is invalid: {} (nothing was applied)",
                            errs.join("; ")
                        ))
                    })?;
            let h = allocator::held(&svc);
            in_use.claim(&owner, &h);
            new_index.set_holder(&owner, &h, now);
            held.insert(owner.clone(), h);
            out.insert(
                owner,
                Prepared {
                    svc,
                    cur: cur.map(|(_, v, rev)| (v.clone(), *rev)),
                },
            );
        }
        new_index.gc(&held, now);
        if new_index == index {
            return Ok(out);
        }
        match store
            .put_if(
                allocator::INDEX_KEY,
                store::encode(allocator::INDEX_KEY, &new_index)?,
                index_rev,
            )
            .await
        {
            Ok(_) => return Ok(out),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Conflict {
        key: allocator::INDEX_KEY.into(),
    }
    .into())
}

/// Writes one prepared Service, only over the stored object it was prepared from; when that
/// changed meanwhile (a concurrent apply or the controller's status write), prepares it again.
async fn apply_service(
    store: &EtcdStore,
    obj: &Object,
    prepared: &mut BTreeMap<String, Prepared>,
    mode: Mode,
) -> Result<&'static str, ApiError> {
    let owner = obj.display_name();
    let key = obj.key();
    for _ in 0..50 {
        let p = match prepared.remove(&owner) {
            Some(p) => p,
            None => {
                let mut again = prepare_services(store, &[obj]).await?;
                match again.remove(&owner) {
                    Some(p) => p,
                    None => continue,
                }
            }
        };
        let mut new = serde_json::to_value(&p.svc)
            .map_err(|e| ApiError::Invalid(format!("Service {owner}: {e}")))?;
        new["apiVersion"] = json!("v1");
        new["kind"] = json!("Service");
        new["metadata"]["namespace"] = json!(obj.namespace().unwrap_or("default"));
        let (action, rev) = match &p.cur {
            None => {
                new["metadata"]["uid"] = json!(new_uid());
                new["metadata"]["creationTimestamp"] = json!(crate::now_rfc3339());
                new["status"] = json!({"loadBalancer": {}});
                ("created", 0)
            }
            Some(_) if mode == Mode::CreateOnly => return Err(ApiError::already_exists(obj)),
            Some((cur, rev)) => {
                for f in ["uid", "creationTimestamp"] {
                    new["metadata"][f] = cur["metadata"][f].clone();
                }
                new["status"] = cur
                    .get("status")
                    .cloned()
                    .unwrap_or(json!({"loadBalancer": {}}));
                if strip_nulls(new.clone()) == strip_nulls(cur.clone()) {
                    return Ok("unchanged");
                }
                ("configured", *rev)
            }
        };
        let new = strip_nulls(new);
        match store.put_if(&key, store::encode(&key, &new)?, rev).await {
            Ok(_) => return Ok(action),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Conflict { key }.into())
}

/// Drops the index entries of the Services `gone` names that their stored object (if any)
/// does not hold, after a delete. A failure leaves the entries to the index's own cleanup
/// ([`allocator::GRACE_SECS`]).
async fn release_allocations(
    store: &EtcdStore,
    gone: impl Fn(&str) -> bool,
) -> Result<(), ApiError> {
    for _ in 0..50 {
        let (index, rev) = read_index(store).await?;
        let held: BTreeMap<String, allocator::Held> = stored_services(store)
            .await?
            .iter()
            .map(|(k, (svc, _, _))| (k.clone(), allocator::held(svc)))
            .collect();
        let mut new_index = index.clone();
        new_index.release(&gone, &held);
        if new_index == index {
            return Ok(());
        }
        match store
            .put_if(
                allocator::INDEX_KEY,
                store::encode(allocator::INDEX_KEY, &new_index)?,
                rev,
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Conflict {
        key: allocator::INDEX_KEY.into(),
    }
    .into())
}

fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_nulls).collect()),
        v => v,
    }
}

/// The Ready node with the fewest pods (ties: by name).
async fn schedule(store: &EtcdStore) -> Result<String, ApiError> {
    let (nodes, _) = store.list(&store::keys::kind_prefix(Kind::Node)).await?;
    let (pods, _) = store.list(&store::keys::kind_prefix(Kind::Pod)).await?;
    let mut load: BTreeMap<String, usize> = nodes
        .iter()
        .filter_map(|kv| kv.decode::<Value>().ok())
        .filter(is_ready)
        .filter_map(|n| {
            n.pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(|s| (s.to_string(), 0))
        })
        .collect();
    for p in pods.iter().filter_map(|kv| kv.decode::<Value>().ok()) {
        if let Some(n) = p.pointer("/spec/nodeName").and_then(Value::as_str)
            && let Some(c) = load.get_mut(n)
        {
            *c += 1;
        }
    }
    load.into_iter()
        .min_by_key(|(name, c)| (*c, name.clone()))
        .map(|(n, _)| n)
        .ok_or_else(|| ApiError::Invalid("no Ready node to schedule the pod on".into()))
}

/// Makes the pods of a Deployment match its replicas: adds pods (named
/// `<deployment>-<suffix>`, with the template's labels) or removes the newest ones.
pub async fn reconcile_deployment(store: &EtcdStore, ns: &str, name: &str) -> Result<(), ApiError> {
    let Some(kv) = store
        .get(&kind_key(Kind::Deployment, Some(ns), name))
        .await?
    else {
        // Gone: its pods go too (the garbage collector's part), also those a reconcile that
        // raced with the deletion made.
        for (pod, _) in owned_pods(store, ns, name).await? {
            delete_pod_ignoring_missing(store, ns, &pod).await?;
        }
        return Ok(());
    };
    let dep: Value = kv.decode()?;
    let replicas = dep
        .pointer("/spec/replicas")
        .and_then(Value::as_u64)
        .unwrap_or(1) as usize;
    let owned = owned_pods(store, ns, name).await?;
    if owned.len() < replicas {
        let template = dep.pointer("/spec/template").cloned().unwrap_or(json!({}));
        for _ in owned.len()..replicas {
            let suffix: String = new_uid()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .take(5)
                .collect();
            let mut pod = json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": format!("{name}-{suffix}"),
                    "namespace": ns,
                    "labels": template.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": dep.pointer("/metadata/uid").cloned().unwrap_or(Value::Null), "controller": true}],
                },
                "spec": template.get("spec").cloned().unwrap_or(json!({})),
            });
            if let Some(a) = template.pointer("/metadata/annotations") {
                pod["metadata"]["annotations"] = a.clone();
            }
            let obj = Object {
                kind: Kind::Pod,
                value: pod,
            };
            apply_one(store, &obj, Mode::CreateOrUpdate).await?;
        }
    } else if owned.len() > replicas {
        let mut owned = owned;
        let excess = owned.len() - replicas;
        // Newest first, as the ReplicaSet controller prefers to remove young pods.
        owned.sort_by(|a, b| b.1.cmp(&a.1));
        for (pod, _) in owned.into_iter().take(excess) {
            delete_pod_ignoring_missing(store, ns, &pod).await?;
        }
    }
    Ok(())
}

/// (name, creationTimestamp) of the pods a Deployment owns, those being deleted left out
/// (the ReplicaSet controller replaces a terminating pod at once).
async fn owned_pods(
    store: &EtcdStore,
    ns: &str,
    deployment: &str,
) -> Result<Vec<(String, String)>, ApiError> {
    let (pods, _) = store
        .list(&format!("{}{ns}/", store::keys::kind_prefix(Kind::Pod)))
        .await?;
    Ok(pods
        .iter()
        .filter_map(|kv| kv.decode::<Value>().ok())
        .filter(|p| owned_by_deployment(p, deployment) && !is_terminating(p))
        .map(|p| {
            (
                p.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                p.pointer("/metadata/creationTimestamp")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect())
}

/// How to delete (`DeleteOptions` of the Kubernetes API).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    /// Seconds a pod gets between SIGTERM and SIGKILL; `None`: its
    /// `terminationGracePeriodSeconds` (default 30); 0 removes the object at once, without
    /// waiting for its kubelet (kubectl's `--force`). Only pods use it.
    pub grace_period: Option<i64>,
}

/// Deletes one object; a Namespace takes everything in it along at once, a Deployment its
/// pods gracefully. A bound Pod is deleted gracefully as the API server does: it gets
/// `deletionTimestamp` (now + grace period) and `deletionGracePeriodSeconds`, its kubelet runs
/// the preStop hooks, sends SIGTERM, SIGKILL at the deadline, and removes the object when the
/// pod is gone. Grace period 0, or a pod no node runs, removes it at once.
pub async fn delete(
    store: &EtcdStore,
    kind: Kind,
    namespace: Option<&str>,
    name: &str,
    opts: DeleteOptions,
) -> Result<(), ApiError> {
    let ns = if kind.namespaced() {
        Some(namespace.unwrap_or("default"))
    } else {
        None
    };
    if kind == Kind::Pod {
        return delete_pod(store, ns.unwrap_or("default"), name, opts).await;
    }
    let key = kind_key(kind, ns, name);
    if !store.delete(&key).await? {
        return Err(ApiError::not_found(kind, namespace, name));
    }
    match kind {
        Kind::Namespace => {
            for k in NAMESPACED_KINDS {
                store
                    .delete_prefix(&format!("{}{name}/", store::keys::kind_prefix(k)))
                    .await?;
            }
            let prefix = format!("{name}/");
            release_allocations(store, |owner| owner.starts_with(&prefix)).await?;
        }
        Kind::Service => {
            let owner = format!("{}/{name}", ns.unwrap_or("default"));
            release_allocations(store, |o| o == owner).await?;
        }
        Kind::Deployment => {
            // The garbage collector's part: the pods go gracefully.
            for (pod, _) in owned_pods(store, ns.unwrap_or("default"), name).await? {
                delete_pod_ignoring_missing(store, ns.unwrap_or("default"), &pod).await?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// A graceful pod delete (see [`delete`]). A second delete may shorten the grace period,
/// never lengthen it.
async fn delete_pod(
    store: &EtcdStore,
    ns: &str,
    name: &str,
    opts: DeleteOptions,
) -> Result<(), ApiError> {
    let key = kind_key(Kind::Pod, Some(ns), name);
    let mut found = false;
    let mut at_once = false;
    update(store, &key, |cur| {
        found = !cur.is_null();
        if !found {
            return false;
        }
        let bound = cur
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some();
        let grace = opts
            .grace_period
            .unwrap_or_else(|| {
                cur.pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
                    .unwrap_or(model::PodSpec::DEFAULT_GRACE_PERIOD_SECONDS)
            })
            .max(0);
        at_once = !bound || grace == 0;
        if at_once {
            return false;
        }
        let deadline = unix_now().saturating_add(grace);
        let current = cur
            .pointer("/metadata/deletionTimestamp")
            .and_then(Value::as_str)
            .and_then(crate::parse_rfc3339);
        if current.is_some_and(|c| c <= deadline) {
            return false;
        }
        cur["metadata"]["deletionTimestamp"] = json!(crate::rfc3339(deadline));
        cur["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        true
    })
    .await?;
    if !found {
        return Err(ApiError::not_found(Kind::Pod, Some(ns), name));
    }
    if at_once {
        store.delete(&key).await?;
    }
    Ok(())
}

async fn delete_pod_ignoring_missing(
    store: &EtcdStore,
    ns: &str,
    name: &str,
) -> Result<(), ApiError> {
    match delete_pod(store, ns, name, DeleteOptions::default()).await {
        Err(ApiError::NotFound { .. }) | Ok(()) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether the object is being deleted gracefully (has a `deletionTimestamp`).
pub fn is_terminating(v: &Value) -> bool {
    v.pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
}

/// Owners first, so the controller does not replace the pods of a Deployment being deleted.
const NAMESPACED_KINDS: [Kind; 7] = [
    Kind::Deployment,
    Kind::Pod,
    Kind::Service,
    Kind::NetworkPolicy,
    Kind::Ingress,
    Kind::Secret,
    Kind::EndpointSlice,
];

/// `kubectl label --overwrite`: `Some(v)` sets, `None` removes.
pub async fn label(
    store: &EtcdStore,
    kind: Kind,
    namespace: Option<&str>,
    name: &str,
    changes: &[(String, Option<String>)],
) -> Result<(), ApiError> {
    let key = kind_key(kind, namespace, name);
    let mut missing = false;
    update(store, &key, |v| {
        if v.is_null() {
            missing = true;
            return false;
        }
        if !v["metadata"].get("labels").is_some_and(Value::is_object) {
            v["metadata"]["labels"] = json!({});
        }
        for (k, val) in changes {
            match val {
                Some(val) => v["metadata"]["labels"][k] = json!(val),
                None => {
                    if let Some(m) = v["metadata"]["labels"].as_object_mut() {
                        m.remove(k);
                    }
                }
            }
        }
        true
    })
    .await?;
    if missing {
        return Err(ApiError::not_found(kind, namespace, name));
    }
    Ok(())
}

/// Objects of one kind: one by name, all in a namespace, or all (`namespace` None).
pub async fn get(
    store: &EtcdStore,
    kind: Kind,
    namespace: Option<&str>,
    name: Option<&str>,
) -> Result<Vec<Value>, ApiError> {
    Ok(list(store, kind, namespace, name)
        .await?
        .items
        .into_iter()
        .map(|(v, _)| v)
        .collect())
}

/// Objects as read from the store, each with the revision of its last write (its
/// `resourceVersion`), and the revision the read was made at.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Listed {
    /// The objects, sorted by store key, each with its mod revision.
    pub items: Vec<(Value, i64)>,
    /// The store revision of the read (for one object by name: its mod revision).
    pub revision: i64,
}

/// The store prefix holding the objects of `kind` in `namespace` (None: all namespaces; for a
/// cluster-scoped kind the namespace does not matter): what a list reads and a watch follows.
pub fn list_prefix(kind: Kind, namespace: Option<&str>) -> String {
    match (kind.namespaced(), namespace) {
        (true, Some(ns)) => format!("{}{ns}/", store::keys::kind_prefix(kind)),
        _ => store::keys::kind_prefix(kind),
    }
}

/// [`get`] with revisions: what `flatnet get` and the API server read.
pub async fn list(
    store: &EtcdStore,
    kind: Kind,
    namespace: Option<&str>,
    name: Option<&str>,
) -> Result<Listed, ApiError> {
    if let Some(name) = name {
        let key = kind_key(kind, namespace, name);
        let Some(kv) = store.get(&key).await? else {
            return Err(ApiError::not_found(kind, namespace, name));
        };
        return Ok(Listed {
            items: vec![(kv.decode()?, kv.mod_revision)],
            revision: kv.mod_revision,
        });
    }
    let (kvs, revision) = store.list(&list_prefix(kind, namespace)).await?;
    Ok(Listed {
        items: kvs
            .iter()
            .filter_map(|kv| kv.decode::<Value>().ok().map(|v| (v, kv.mod_revision)))
            .collect(),
        revision,
    })
}

/// Adds what the network knows about each node, as annotations (as flannel annotates nodes
/// with its backend and public IP): `flatnet.io/backend-type`, `flatnet.io/public-ip`,
/// `flatnet.io/agent-health` (healthy, unhealthy, stale, unreadable, none) and
/// `flatnet.io/applied-revision`; `spec.podCIDR` comes from the node's subnet lease.
pub async fn annotate_nodes(store: &EtcdStore, nodes: &mut [Value]) -> Result<(), ApiError> {
    let (subnets, _) = store.list(store::keys::SUBNETS).await?;
    let leases = store::contract::decode_leases(&subnets);
    let (statuses, _) = store::contract::read_statuses(store).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for n in nodes.iter_mut() {
        let name = n
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if !n["metadata"]
            .get("annotations")
            .is_some_and(Value::is_object)
        {
            n["metadata"]["annotations"] = json!({});
        }
        if let Some((_, lease)) = leases.iter().find(|(_, l)| l.attrs.node == name) {
            let cidr = lease.cidr.to_string();
            n["spec"]["podCIDR"] = json!(cidr);
            n["spec"]["podCIDRs"] = json!([cidr]);
            n["metadata"]["annotations"]["flatnet.io/backend-type"] =
                json!(lease.attrs.backend.to_string());
            n["metadata"]["annotations"]["flatnet.io/public-ip"] =
                json!(lease.attrs.underlay_ip.to_string());
        }
        let health = match statuses.get(&name) {
            None => "none".to_string(),
            Some(Err(e)) => {
                tracing::warn!(node = %name, error = %e, "agent status unreadable");
                "unreadable".to_string()
            }
            Some(Ok(a)) => {
                n["metadata"]["annotations"]["flatnet.io/applied-revision"] =
                    json!(a.routes.applied_revision.to_string());
                let age = now.saturating_sub(a.routes.heartbeat);
                if i64::try_from(age).unwrap_or(i64::MAX) > store::contract::AGENT_STALE_SECS {
                    "stale".into()
                } else if a.routes.healthy {
                    "healthy".into()
                } else {
                    "unhealthy".into()
                }
            }
        };
        n["metadata"]["annotations"]["flatnet.io/agent-health"] = json!(health);
    }
    Ok(())
}

/// Whether an object (Node or Pod, as JSON) has the condition `Ready` = `True`.
pub fn is_ready(v: &Value) -> bool {
    v.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// Whether a pod (as JSON) is owned by the Deployment `name` (of its own namespace).
pub fn owned_by_deployment(pod: &Value, name: &str) -> bool {
    pod.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|o| {
            o.iter()
                .any(|r| r["kind"] == "Deployment" && r["name"] == name)
        })
}

/// Label selector helper for callers that only have JSON.
pub fn labels_of(v: &Value) -> HashMap<String, String> {
    v.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
