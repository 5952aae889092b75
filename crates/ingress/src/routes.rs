//! The routing table: Ingresses + Services + EndpointSlices compiled into a lookup from
//! (host, path) to a backend with its ready endpoints. Pure: no IO, no clock.
//!
//! Semantics (Ingress v1, checked against the upstream examples table and the ingress
//! controller conformance suite in `tests/routes.rs`):
//! - Host: the request's `Host` (or HTTP/2 `:authority`) without port or trailing dot,
//!   compared case-insensitively. An exact rule host beats a wildcard one; a wildcard
//!   `*.foo.com` covers exactly one more label; rules without a host apply to any host. The
//!   most specific host group that has rules owns the request: no fallthrough from a host's
//!   rules to the host-less ones (as ingress-nginx, Contour and Istio do).
//! - Path: `Exact` is a case-sensitive full match; `Prefix` matches element-wise on `/`
//!   (`/foo` matches `/foo`, `/foo/` and `/foo/bar`, not `/foobar`), trailing slashes ignored on
//!   both sides; `ImplementationSpecific` is `Prefix` here. The longest rule path wins (its
//!   length as written, so `/foo/` beats `/foo`); on equal length `Exact` beats `Prefix`; on a
//!   full tie the oldest Ingress wins (creation time, then namespace/name), as with conflicting
//!   rules in ingress-nginx.
//! - No path matches: the `defaultBackend` of the oldest Ingress contributing rules to that
//!   host group, else the oldest `defaultBackend` of any served Ingress, else 404.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use model::{EndpointSlice, Ingress, IngressBackend, Secret, Service};

use crate::tls::{self, CertTable};

/// Label linking an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What the gateway compiles from (namespaces filled in from the store keys).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The Ingresses of every class (the [`ClassFilter`] picks those served).
    pub ingresses: Vec<Ingress>,
    /// Services, to resolve a backend's port name or number to a target port.
    pub services: Vec<Service>,
    /// EndpointSlices, linked to their Service by the `kubernetes.io/service-name` label.
    pub slices: Vec<EndpointSlice>,
    /// `kubernetes.io/tls` Secrets, for the certificates named in `spec.tls`.
    pub secrets: Vec<Secret>,
}

/// Which Ingresses this gateway serves.
#[derive(Debug, Clone)]
pub struct ClassFilter {
    /// The IngressClass name (`flatnet`).
    pub class: String,
    /// Whether Ingresses without any class are ours (we are the cluster's default class).
    pub serve_classless: bool,
}

impl Default for ClassFilter {
    fn default() -> Self {
        ClassFilter {
            class: model::INGRESS_CLASS.to_string(),
            serve_classless: true,
        }
    }
}

/// How a rule path matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// `pathType: Exact`: the request path equals the rule path (case-sensitive).
    Exact,
    /// `pathType: Prefix` (and `ImplementationSpecific`): matches by `/`-separated elements.
    Prefix,
}

/// A Service port as a backend: where its ready endpoints are, and how to pick one.
#[derive(Debug)]
pub struct Backend {
    /// `namespace/service:port` as the Ingress names it.
    pub name: String,
    /// Ready endpoints (pod IP and resolved target port), sorted.
    pub endpoints: Vec<SocketAddr>,
    /// Why there is no endpoint, when `endpoints` is empty.
    pub problem: Option<String>,
    next: AtomicUsize,
}

impl Backend {
    fn new(name: String, endpoints: Vec<SocketAddr>, problem: Option<String>) -> Backend {
        Backend {
            name,
            endpoints,
            problem,
            next: AtomicUsize::new(0),
        }
    }

    /// The next endpoint, round-robin; None without ready endpoints.
    pub fn pick(&self) -> Option<SocketAddr> {
        match self.endpoints.len() {
            0 => None,
            1 => Some(self.endpoints[0]),
            n => Some(self.endpoints[self.next.fetch_add(1, Ordering::Relaxed) % n]),
        }
    }
}

/// One compiled rule path (or a default backend, with `path` None).
#[derive(Debug, Clone)]
pub struct Route {
    /// `namespace/name` of the Ingress it comes from.
    pub ingress: String,
    /// The rule path as written and how it matches; None for a default backend.
    pub path: Option<(PathKind, String)>,
    /// Where matching requests go (shared by every route naming the same Service port).
    pub backend: Arc<Backend>,
    /// For Prefix: the path without trailing slashes (`""` for `/`).
    prefix: String,
}

impl Route {
    fn matches(&self, path: &str) -> bool {
        match &self.path {
            None => true,
            Some((PathKind::Exact, p)) => p == path,
            Some((PathKind::Prefix, _)) => prefix_matches(&self.prefix, path),
        }
    }
}

/// Element-wise prefix match; `prefix` has no trailing slash.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The rules of one host (or wildcard, or of every host).
#[derive(Debug, Default)]
struct HostRoutes {
    /// In precedence order: the first match wins.
    paths: Vec<Route>,
    fallback: Option<Route>,
}

/// The compiled lookup. Cheap to share; swapped whole when the store changes.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<String, HostRoutes>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<String, HostRoutes>,
    any: Option<HostRoutes>,
    default: Option<Route>,
}

impl RouteTable {
    /// The route for a request, by its `Host` value (port allowed) and path (no query).
    /// None: 404.
    pub fn route(&self, host: &str, path: &str) -> Option<&Route> {
        let host = normalize_host(host);
        let group = self.exact.get(host.as_ref()).or_else(|| {
            let (label, rest) = host.split_once('.')?;
            if label.is_empty() {
                return None;
            }
            self.wildcard.get(rest)
        });
        match group.or(self.any.as_ref()) {
            Some(g) => g
                .paths
                .iter()
                .find(|r| r.matches(path))
                .or(g.fallback.as_ref())
                .or(self.default.as_ref()),
            None => self.default.as_ref(),
        }
    }

    /// Number of host groups (exact, wildcard, any-host).
    pub fn hosts(&self) -> usize {
        self.exact.len() + self.wildcard.len() + usize::from(self.any.is_some())
    }
}

/// The host of a `Host` header value: lowercase, no port, no trailing dot.
pub fn normalize_host(raw: &str) -> std::borrow::Cow<'_, str> {
    let mut h = raw.trim();
    if let Some(rest) = h.strip_prefix('[') {
        // An IPv6 literal: never a rule host, but strip its port all the same.
        h = rest.split(']').next().unwrap_or(rest);
    } else if let Some((name, port)) = h.rsplit_once(':')
        && port.bytes().all(|b| b.is_ascii_digit())
    {
        h = name;
    }
    let h = h.strip_suffix('.').unwrap_or(h);
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(h.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(h)
    }
}

/// Everything the gateway runs with, compiled from one snapshot.
#[derive(Debug, Default)]
pub struct Compiled {
    /// Host and path routes to backends.
    pub routes: RouteTable,
    /// Certificates by SNI name.
    pub certs: CertTable,
    /// `namespace/name` of every Ingress served (our class), sorted.
    pub served: Vec<String>,
    /// Problems worth a log line: missing Secrets, bad certificates, unknown ports.
    pub warnings: Vec<String>,
}

/// Ingresses of our class, oldest first (creation time, then namespace/name).
pub fn served_ingresses<'a>(snap: &'a Snapshot, filter: &ClassFilter) -> Vec<&'a Ingress> {
    let mut v: Vec<&Ingress> = snap
        .ingresses
        .iter()
        .filter(|i| i.served_by(&filter.class, filter.serve_classless))
        .collect();
    v.sort_by(|a, b| {
        let ta = a.metadata.creation_timestamp.as_deref();
        let tb = b.metadata.creation_timestamp.as_deref();
        // Missing timestamps last.
        (ta.is_none(), ta, a.key()).cmp(&(tb.is_none(), tb, b.key()))
    });
    v
}

/// Compiles a snapshot. Never fails: what cannot be served is left out with a warning.
pub fn compile(snap: &Snapshot, filter: &ClassFilter) -> Compiled {
    let ingresses = served_ingresses(snap, filter);
    let mut resolver = Resolver::new(snap);
    let mut table = RouteTable::default();
    for ing in &ingresses {
        let key = ing.key();
        let default = ing.spec.default_backend.as_ref().and_then(|b| {
            let backend = resolver.backend(ing.namespace(), b)?;
            Some(Route {
                ingress: key.clone(),
                path: None,
                backend,
                prefix: String::new(),
            })
        });
        if table.default.is_none() {
            table.default = default.clone();
        }
        for rule in &ing.spec.rules {
            let Some(http) = &rule.http else { continue };
            let group = match rule.host.as_deref().map(str::to_ascii_lowercase) {
                None => table.any.get_or_insert_with(HostRoutes::default),
                Some(h) if h.is_empty() => table.any.get_or_insert_with(HostRoutes::default),
                Some(h) => match h.strip_prefix("*.") {
                    Some(rest) => table.wildcard.entry(rest.to_string()).or_default(),
                    None => table.exact.entry(h).or_default(),
                },
            };
            if group.fallback.is_none() {
                group.fallback = default.clone();
            }
            for p in &http.paths {
                let Some(backend) = resolver.backend(ing.namespace(), &p.backend) else {
                    continue;
                };
                let path = p.path.clone().unwrap_or_else(|| "/".to_string());
                let kind = if p.path_type == "Exact" {
                    PathKind::Exact
                } else {
                    PathKind::Prefix
                };
                group.paths.push(Route {
                    ingress: key.clone(),
                    prefix: path.trim_end_matches('/').to_string(),
                    path: Some((kind, path)),
                    backend,
                });
            }
        }
    }
    for g in table
        .exact
        .values_mut()
        .chain(table.wildcard.values_mut())
        .chain(table.any.iter_mut())
    {
        // Stable: ties keep the oldest Ingress first.
        g.paths.sort_by_key(|r| match &r.path {
            Some((kind, p)) => (std::cmp::Reverse(p.len()), *kind != PathKind::Exact),
            None => (std::cmp::Reverse(0), true),
        });
    }
    let (certs, mut cert_warnings) = tls::compile_certs(&ingresses, &snap.secrets);
    let mut warnings = std::mem::take(&mut resolver.warnings);
    warnings.append(&mut cert_warnings);
    let mut served: Vec<String> = ingresses.iter().map(|i| i.key()).collect();
    served.sort();
    Compiled {
        routes: table,
        certs,
        served,
        warnings,
    }
}

/// Why an Ingress backend has no endpoints to resolve; each names the Service
/// (`namespace/name`). Its text is [`Backend::problem`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// No such Service.
    #[error("service {service} not found")]
    NotFound {
        /// The Service, `namespace/name`.
        service: String,
    },
    /// An `ExternalName` Service: a DNS name, no endpoints to forward to.
    #[error("service {service} is of type ExternalName (not supported as a backend)")]
    ExternalName {
        /// The Service, `namespace/name`.
        service: String,
    },
    /// The Service has no TCP port with the number the backend gives.
    #[error("service {service} has no TCP port {port}")]
    NoPort {
        /// The Service, `namespace/name`.
        service: String,
        /// The backend's `port.number`.
        port: u16,
    },
    /// The Service has no TCP port with the name the backend gives.
    #[error("service {service} has no TCP port named {port}")]
    NoPortNamed {
        /// The Service, `namespace/name`.
        service: String,
        /// The backend's `port.name`.
        port: String,
    },
    /// The backend names neither a port number nor a port name.
    #[error("service {service}: no port given")]
    PortNotGiven {
        /// The Service, `namespace/name`.
        service: String,
    },
}

/// Resolves Ingress backends to Service ports and their ready endpoints, sharing one
/// [`Backend`] (and so one round-robin counter) per Service port.
struct Resolver<'a> {
    services: HashMap<(&'a str, &'a str), &'a Service>,
    slices: HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
    done: BTreeMap<(String, String, String), Arc<Backend>>,
    warnings: Vec<String>,
}

impl<'a> Resolver<'a> {
    fn new(snap: &'a Snapshot) -> Self {
        let mut services = HashMap::new();
        for s in &snap.services {
            let ns = s.metadata.namespace.as_deref().unwrap_or("default");
            services.insert((ns, s.metadata.name.as_str()), s);
        }
        let mut slices: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for s in &snap.slices {
            let ns = s.metadata.namespace.as_deref().unwrap_or("default");
            if let Some(svc) = s.metadata.labels.get(SERVICE_NAME_LABEL) {
                slices.entry((ns, svc.as_str())).or_default().push(s);
            }
        }
        Resolver {
            services,
            slices,
            done: BTreeMap::new(),
            warnings: Vec::new(),
        }
    }

    /// None for a backend that is not a Service (validation refuses those).
    fn backend(&mut self, ns: &str, b: &IngressBackend) -> Option<Arc<Backend>> {
        let svc = b.service.as_ref()?;
        let port = match (&svc.port.number, &svc.port.name) {
            (Some(n), _) => n.to_string(),
            (None, Some(name)) => name.clone(),
            (None, None) => return None,
        };
        let id = (ns.to_string(), svc.name.clone(), port);
        if let Some(b) = self.done.get(&id) {
            return Some(b.clone());
        }
        let name = format!("{ns}/{}:{}", svc.name, id.2);
        let backend = match self.endpoints(ns, &svc.name, svc.port.number, &svc.port.name) {
            Ok(eps) if eps.is_empty() => Backend::new(name, eps, Some("no ready endpoints".into())),
            Ok(eps) => Backend::new(name, eps, None),
            Err(problem) => {
                self.warnings.push(format!("backend {name}: {problem}"));
                Backend::new(name, Vec::new(), Some(problem.to_string()))
            }
        };
        let backend = Arc::new(backend);
        self.done.insert(id, backend.clone());
        Some(backend)
    }

    fn endpoints(
        &self,
        ns: &str,
        name: &str,
        number: Option<u16>,
        port_name: &Option<String>,
    ) -> Result<Vec<SocketAddr>, BackendError> {
        let service = || format!("{ns}/{name}");
        let svc = self
            .services
            .get(&(ns, name))
            .ok_or_else(|| BackendError::NotFound { service: service() })?;
        if svc.spec.type_() == "ExternalName" {
            return Err(BackendError::ExternalName { service: service() });
        }
        let sp = svc
            .spec
            .ports
            .iter()
            .find(|p| {
                p.protocol() == "TCP"
                    && match (number, port_name) {
                        (Some(n), _) => p.port == n,
                        (None, Some(pn)) => p.name.as_deref() == Some(pn.as_str()),
                        (None, None) => false,
                    }
            })
            .ok_or_else(|| match (number, port_name) {
                (Some(port), _) => BackendError::NoPort {
                    service: service(),
                    port,
                },
                (None, Some(port)) => BackendError::NoPortNamed {
                    service: service(),
                    port: port.clone(),
                },
                (None, None) => BackendError::PortNotGiven { service: service() },
            })?;
        let want = sp.name.as_deref().unwrap_or("");
        let mut out = Vec::new();
        for slice in self.slices.get(&(ns, name)).into_iter().flatten() {
            if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
                continue;
            }
            let Some(port) = slice
                .ports
                .iter()
                .find(|p| {
                    p.name.as_deref().unwrap_or("") == want
                        && p.protocol.as_deref().unwrap_or("TCP") == "TCP"
                })
                .and_then(|p| p.port)
            else {
                continue;
            };
            for ep in &slice.endpoints {
                if ep.conditions.ready == Some(false) {
                    continue;
                }
                for a in &ep.addresses {
                    if let Ok(ip) = a.parse::<IpAddr>() {
                        out.push(SocketAddr::new(ip, port));
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}
