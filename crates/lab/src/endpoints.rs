//! The endpoints controller's decisions, as pure functions: the EndpointSlices every Service
//! should have ([`desired_slices`]). The controller writes the difference; `converge` compares
//! the store against the same function. (LoadBalancer addresses are `services::lb`'s.)
//!
//! Slices follow kube-controller-manager's EndpointSlice controller (`discovery.k8s.io/v1`):
//! - only Services with a non-empty selector and a type other than ExternalName get slices
//!   (headless ones too); slices of Services without a selector are not ours to touch;
//! - endpoints are the pods of the Service's namespace whose labels match, that have an IPv4
//!   `status.podIP` and are not Succeeded or Failed;
//! - `ready` = pod Ready and not terminating, `serving` = pod Ready, `terminating` = the pod
//!   has a `deletionTimestamp`; with `publishNotReadyAddresses` ready and serving are true;
//! - each Service port's targetPort is resolved per pod (a name through the containers'
//!   and sidecars' `ports[].name` with the same protocol); pods whose resolution differs go to
//!   different slices, a pod lacking a named port is left out of that port;
//! - at most [`MAX_ENDPOINTS_PER_SLICE`] endpoints per slice; a Service with no endpoints
//!   gets one empty slice (kube's placeholder);
//! - slice names are `<service>-<5 chars>`, the 5 chars derived from namespace, service,
//!   port set and chunk number, so a slice keeps its name while its port set does.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use model::{
    Container, Endpoint, EndpointConditions, EndpointPort, EndpointSlice, IntOrString, ObjectMeta,
    ObjectReference, Pod, Service, ServicePort,
};
use serde_json::{Value, json};

/// Label naming the Service a slice belongs to.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Label naming the controller that manages a slice.
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Our value of [`LABEL_MANAGED_BY`] (the same as kube-controller-manager's).
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
/// Label set on the slices of headless Services.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// The node label giving an endpoint's `zone`.
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
/// kube-controller-manager's default `--max-endpoints-per-slice`.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// The characters Kubernetes uses for generated name suffixes (no vowels, no look-alikes).
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Whether a stored slice is managed by this controller.
pub fn is_managed(slice: &EndpointSlice) -> bool {
    slice
        .metadata
        .labels
        .get(LABEL_MANAGED_BY)
        .map(String::as_str)
        == Some(CONTROLLER_NAME)
}

/// Whether a Service gets slices from this controller.
pub fn wants_slices(svc: &Service) -> bool {
    svc.spec.type_() != "ExternalName" && svc.spec.endpoint_selector().is_some()
}

/// The EndpointSlices every Service should have, sorted by namespace and name. `zones` maps
/// node names to their `topology.kubernetes.io/zone`. The slices carry no uid,
/// creationTimestamp or resourceVersion: [`same_content`] ignores those.
pub fn desired_slices(
    services: &[Service],
    pods: &[Pod],
    zones: &BTreeMap<String, String>,
) -> Vec<EndpointSlice> {
    let mut by_ns: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
    for p in pods {
        by_ns
            .entry(p.metadata.namespace.as_deref().unwrap_or("default"))
            .or_default()
            .push(p);
    }
    let mut out = Vec::new();
    for svc in services.iter().filter(|s| wants_slices(s)) {
        let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
        let pods = by_ns.get(ns).map(Vec::as_slice).unwrap_or_default();
        out.extend(slices_of(svc, pods, zones));
    }
    out.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    out
}

/// The slices of one Service, from the pods of its namespace.
fn slices_of(svc: &Service, pods: &[&Pod], zones: &BTreeMap<String, String>) -> Vec<EndpointSlice> {
    let Some(selector) = svc.spec.endpoint_selector() else {
        return Vec::new();
    };
    let mut pods: Vec<&&Pod> = pods
        .iter()
        .filter(|p| {
            selector
                .iter()
                .all(|(k, v)| p.metadata.labels.get(k) == Some(v))
        })
        .filter(|p| in_endpoints(p))
        .collect();
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    // Pods grouped by their resolved port list (in the Service's port order).
    let mut groups: BTreeMap<String, (Vec<EndpointPort>, Vec<Endpoint>)> = BTreeMap::new();
    for p in pods {
        let ports: Vec<EndpointPort> = svc
            .spec
            .ports
            .iter()
            .filter_map(|sp| resolve_port(sp, p))
            .collect();
        let entry = groups
            .entry(ports_key(&ports))
            .or_insert_with(|| (ports, Vec::new()));
        entry.1.push(endpoint_of(svc, p, zones));
    }
    if groups.is_empty() {
        // kube's placeholder: one slice without endpoints or ports.
        groups.insert(ports_key(&[]), (Vec::new(), Vec::new()));
    }
    let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
    let mut names = BTreeSet::new();
    let mut out = Vec::new();
    for (key, (ports, endpoints)) in groups {
        let chunks: Vec<Vec<Endpoint>> = if endpoints.is_empty() {
            vec![Vec::new()]
        } else {
            endpoints
                .chunks(MAX_ENDPOINTS_PER_SLICE)
                .map(<[Endpoint]>::to_vec)
                .collect()
        };
        for (i, chunk) in chunks.into_iter().enumerate() {
            let name = unique_name(&svc.metadata.name, ns, &key, i, &mut names);
            out.push(EndpointSlice {
                metadata: slice_meta(svc, name),
                address_type: "IPv4".into(),
                endpoints: chunk,
                ports: ports.clone(),
                ..EndpointSlice::default()
            });
        }
    }
    out
}

/// kube's `ShouldPodBeInEndpoints` (terminating pods included): an IPv4 pod IP, not done.
fn in_endpoints(p: &Pod) -> bool {
    let Some(status) = &p.status else {
        return false;
    };
    let phase = status.phase.as_deref().unwrap_or("Pending");
    if matches!(phase, "Succeeded" | "Failed") {
        return false;
    }
    pod_ipv4(p).is_some()
}

fn pod_ipv4(p: &Pod) -> Option<Ipv4Addr> {
    let status = p.status.as_ref()?;
    status
        .pod_ip
        .iter()
        .chain(status.pod_ips.iter().map(|i| &i.ip))
        .find_map(|s| s.parse::<Ipv4Addr>().ok())
}

/// Whether the pod's `Ready` condition is `True`.
pub fn pod_ready(p: &Pod) -> bool {
    p.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

fn endpoint_of(svc: &Service, p: &Pod, zones: &BTreeMap<String, String>) -> Endpoint {
    let publish = svc.spec.publish_not_ready_addresses == Some(true);
    let ready = pod_ready(p);
    let term = p.metadata.is_being_deleted();
    let node = p.spec.node_name.clone();
    let hostname = p
        .spec
        .hostname
        .clone()
        .filter(|h| !h.is_empty() && p.spec.subdomain.as_deref() == Some(&svc.metadata.name));
    Endpoint {
        addresses: pod_ipv4(p)
            .map(|ip| vec![ip.to_string()])
            .unwrap_or_default(),
        conditions: EndpointConditions {
            ready: Some(publish || (ready && !term)),
            serving: Some(publish || ready),
            terminating: Some(term),
            ..EndpointConditions::default()
        },
        hostname,
        zone: node.as_ref().and_then(|n| zones.get(n)).cloned(),
        node_name: node,
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: Some(
                p.metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
            ),
            name: Some(p.metadata.name.clone()),
            uid: p.metadata.uid.clone(),
            ..ObjectReference::default()
        }),
        ..Endpoint::default()
    }
}

/// The containers whose ports a named targetPort may refer to: the containers and the
/// restartable init containers (sidecars), as kube's `FindPort`.
fn port_containers(p: &Pod) -> Vec<Container> {
    let mut out = p.spec.containers.clone();
    if let Some(Value::Array(init)) = p.spec.extra.get("initContainers") {
        out.extend(
            init.iter()
                .filter(|c| c.get("restartPolicy").and_then(Value::as_str) == Some("Always"))
                .filter_map(|c| serde_json::from_value::<Container>(c.clone()).ok()),
        );
    }
    out
}

/// One Service port as an EndpointSlice port for pod `p`; None when its named targetPort is
/// not declared by the pod with the port's protocol.
pub fn resolve_port(sp: &ServicePort, p: &Pod) -> Option<EndpointPort> {
    let proto = sp.protocol();
    let port = match sp.target_port() {
        IntOrString::Int(n) => u16::try_from(n).ok().filter(|n| *n != 0)?,
        IntOrString::String(name) => port_containers(p)
            .iter()
            .flat_map(|c| c.ports.iter())
            .find(|cp| cp.name.as_deref() == Some(name.as_str()) && cp.protocol() == proto)
            .map(|cp| cp.container_port)?,
    };
    Some(EndpointPort {
        name: Some(sp.name.clone().unwrap_or_default()),
        protocol: Some(proto.to_string()),
        port: Some(port),
        app_protocol: sp.app_protocol.clone(),
        ..EndpointPort::default()
    })
}

fn ports_key(ports: &[EndpointPort]) -> String {
    ports
        .iter()
        .map(|p| {
            format!(
                "{}/{}/{}",
                p.name.as_deref().unwrap_or(""),
                p.protocol.as_deref().unwrap_or("TCP"),
                p.port.unwrap_or(0)
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `<service>-<5 chars>`, unique among `taken`.
fn unique_name(
    svc: &str,
    ns: &str,
    key: &str,
    chunk: usize,
    taken: &mut BTreeSet<String>,
) -> String {
    for salt in 0u32.. {
        let mut h = crate::names::fnv64(&format!("{ns}/{svc}|{key}|{chunk}|{salt}"));
        let suffix: String = (0..5)
            .map(|_| {
                let c = SUFFIX_ALPHABET[(h % SUFFIX_ALPHABET.len() as u64) as usize];
                h /= SUFFIX_ALPHABET.len() as u64;
                char::from(c)
            })
            .collect();
        let name = format!("{svc}-{suffix}");
        if taken.insert(name.clone()) {
            return name;
        }
    }
    // 27^5 names per service; the loop returns long before the salt wraps.
    format!("{svc}-{chunk}")
}

fn slice_meta(svc: &Service, name: String) -> ObjectMeta {
    let mut labels: BTreeMap<String, String> = svc
        .metadata
        .labels
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                LABEL_SERVICE_NAME | LABEL_MANAGED_BY | LABEL_HEADLESS
            )
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(LABEL_SERVICE_NAME.into(), svc.metadata.name.clone());
    labels.insert(LABEL_MANAGED_BY.into(), CONTROLLER_NAME.into());
    if svc.spec.is_headless() {
        labels.insert(LABEL_HEADLESS.into(), String::new());
    }
    let mut meta = ObjectMeta {
        name,
        namespace: Some(
            svc.metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
        ),
        labels,
        ..ObjectMeta::default()
    };
    meta.extra.insert(
        "ownerReferences".into(),
        json!([{
            "apiVersion": "v1",
            "kind": "Service",
            "name": svc.metadata.name,
            "uid": svc.metadata.uid.clone().unwrap_or_default(),
            "controller": true,
            "blockOwnerDeletion": true,
        }]),
    );
    meta
}

/// Whether a stored slice says what a desired one says: labels, owner, address type,
/// endpoints and ports (uid, timestamps, resourceVersion and annotations aside).
pub fn same_content(stored: &EndpointSlice, desired: &EndpointSlice) -> bool {
    stored.metadata.name == desired.metadata.name
        && stored.metadata.namespace == desired.metadata.namespace
        && stored.metadata.labels == desired.metadata.labels
        && stored.metadata.extra.get("ownerReferences")
            == desired.metadata.extra.get("ownerReferences")
        && stored.address_type == desired.address_type
        && stored.endpoints == desired.endpoints
        && stored.ports == desired.ports
}

/// The slice as stored: `apiVersion`, `kind`, and the identity fields of `stored` (uid,
/// creationTimestamp) or new ones.
pub fn to_stored(
    desired: &EndpointSlice,
    stored: Option<&EndpointSlice>,
    uid: &str,
    now: &str,
) -> Value {
    let mut s = desired.clone();
    s.metadata.uid = stored
        .and_then(|x| x.metadata.uid.clone())
        .or_else(|| Some(uid.to_string()));
    s.metadata.creation_timestamp = stored
        .and_then(|x| x.metadata.creation_timestamp.clone())
        .or_else(|| Some(now.to_string()));
    let mut v = serde_json::to_value(&s).unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        m.insert("apiVersion".into(), json!("discovery.k8s.io/v1"));
        m.insert("kind".into(), json!("EndpointSlice"));
        // kube writes the field even when empty: consumers may rely on it being a list.
        m.insert("endpoints".into(), json!(s.endpoints));
    }
    v
}

#[cfg(test)]
mod tests;
