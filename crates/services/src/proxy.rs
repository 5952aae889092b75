//! The service proxy loop (design.md §6): lists and watches Services and EndpointSlices,
//! compiles them ([`crate::plan`]) into the elements of the node's `inet flatnet` maps, and
//! applies the difference to the previous plan as one element transaction per batch of store
//! events. The first apply after a listing (a start, or a relist after compaction) flushes and
//! reloads the maps in one transaction (packets see the old or the new elements, never none);
//! after that only changed elements are touched. Listing, watching and retrying are
//! [`store::reflector`]'s.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, LazyLock, Mutex};

use ipnet::Ipv4Net;
use model::{EndpointSlice, Kind, Service};
use store::contract::{ProxyStatus, Report, keys};
use store::reflector::{Batch, Event, Reflector};
use store::{KeyValue, Store, WatchEvent};

use crate::health_server::ProxyHealth;
use crate::plan::{self as svc, Backend, Compiler, DynChain, ElemOp, Frontend, NodeView};

/// Store prefixes the proxy follows, listed in this order: Services, EndpointSlices, and the
/// subnet leases (the nodes that share the LoadBalancer announcements).
static SERVICES_PREFIX: LazyLock<String> = LazyLock::new(|| keys::kind_prefix(Kind::Service));
static SLICES_PREFIX: LazyLock<String> = LazyLock::new(|| keys::kind_prefix(Kind::EndpointSlice));
const LEASES_PREFIX: &str = keys::SUBNETS;

/// Why the kernel (or its fake) did not take a change of the proxy's table.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// nftables refused or failed (`nft -f`, an element batch, a listing); names the table.
    #[cfg(feature = "kernel")]
    #[error(transparent)]
    Nft(#[from] datapath::nft::NftError),
    /// `conntrack` or `nft -j list` failed; names the tool and its arguments.
    #[cfg(feature = "kernel")]
    #[error(transparent)]
    Tool(#[from] datapath::tools::ToolError),
    /// An address change on the underlay device failed.
    #[cfg(feature = "kernel")]
    #[error("{op}: {source}")]
    Netlink {
        /// What was asked (`add LoadBalancer address 172.20.0.240 on eth0`).
        op: String,
        /// What netlink said.
        source: datapath::NetlinkError,
    },
    /// The device the LoadBalancer addresses go on is missing.
    #[error("underlay device {0} not found")]
    NoDevice(String),
    /// An address outside the LoadBalancer pool was asked for.
    #[error("{ip} is outside the pool {pool}")]
    OutsidePool {
        /// The address.
        ip: Ipv4Addr,
        /// The pool.
        pool: Ipv4Net,
    },
    /// The blocking task that ran the apply panicked or was cancelled.
    #[error("proxy worker: {0}")]
    Worker(tokio::task::JoinError),
    /// The fake's refusal, worded as the kernel's (`map services: add element ...: File exists`).
    #[error("{0}")]
    Refused(String),
}

/// The kernel side of the proxy, implemented by `NetnsProxy` and by [`crate::MemNft`].
pub trait ProxyDataplane: Send + 'static {
    /// Runs an `nft -f` script as one transaction (table, maps, chains and their rules).
    fn nft_script(&mut self, script: &str) -> Result<(), KernelError>;
    /// Applies element changes as one transaction; with `flush`, the maps in
    /// [`svc::STATIC_MAPS`] are emptied first inside the same transaction.
    fn nft_elements(&mut self, ops: &[ElemOp], flush: bool) -> Result<(), KernelError>;
    /// Names of the chains of the proxy's table that the kernel holds now.
    fn nft_chains(&mut self) -> Result<Vec<String>, KernelError>;
    /// Forgets UDP conntrack entries addressed to `fe` (only those whose reply comes from
    /// `endpoint`, if given).
    fn forget_udp(&mut self, fe: &Frontend, endpoint: Option<Ipv4Addr>) -> Result<(), KernelError>;
    /// Forgets the clients the affinity map pins to any of `gone` under affinity mark `mark`.
    fn forget_affinity(&mut self, mark: u32, gone: &[Backend]) -> Result<(), KernelError>;
    /// Makes `dev` hold exactly `ips` (as /32) of the addresses inside `pool`, so the node
    /// answers ARP for the LoadBalancer IPs it announces; announces new ones with a
    /// gratuitous ARP.
    fn announce(
        &mut self,
        dev: &str,
        pool: Ipv4Net,
        ips: &BTreeSet<Ipv4Addr>,
    ) -> Result<(), KernelError>;
}

/// What the proxy reports in the agent's status (`proxy`).
pub type ProxyReport = Report<ProxyStatus>;

/// What the proxy compiles from: the incremental compiler (which keeps Services and
/// EndpointSlices in compact form) and the nodes holding leases.
struct View {
    compiler: Compiler,
    /// Lease key -> node name.
    nodes: BTreeMap<String, String>,
    /// Newest revision seen in a listing or an event.
    revision: i64,
    /// Told of every event (kube-proxy's `QueuedUpdate`) and of every apply.
    health: ProxyHealth,
}

impl View {
    fn new(node: &NodeView, health: &ProxyHealth) -> View {
        View {
            compiler: Compiler::new(node.clone()),
            nodes: BTreeMap::new(),
            revision: 0,
            health: health.clone(),
        }
    }

    fn take(&mut self, kv: &KeyValue) {
        if let Some(id) = kv.key.strip_prefix(SERVICES_PREFIX.as_str()) {
            match kv.decode::<Service>() {
                Ok(mut s) => {
                    fill_namespace(&kv.key, &SERVICES_PREFIX, &mut s.metadata);
                    self.compiler.upsert_service(&s);
                }
                Err(e) => {
                    tracing::warn!(key = %kv.key, error = %e, "service ignored");
                    if let Some((ns, name)) = id.split_once('/') {
                        self.compiler.remove_service(ns, name);
                    }
                }
            }
        } else if kv.key.starts_with(LEASES_PREFIX) {
            let node = kv
                .decode::<serde_json::Value>()
                .ok()
                .and_then(|v| v.get("node")?.as_str().map(str::to_string));
            match node {
                Some(n) => {
                    self.nodes.insert(kv.key.clone(), n);
                }
                None => {
                    self.nodes.remove(&kv.key);
                }
            }
            self.compiler.set_nodes(self.nodes.values().cloned());
        } else if let Some(id) = kv.key.strip_prefix(SLICES_PREFIX.as_str()) {
            match kv.decode::<EndpointSlice>() {
                Ok(mut s) => {
                    fill_namespace(&kv.key, &SLICES_PREFIX, &mut s.metadata);
                    self.compiler.upsert_slice(&s);
                }
                Err(e) => {
                    tracing::warn!(key = %kv.key, error = %e, "endpointslice ignored");
                    if let Some((ns, name)) = id.split_once('/') {
                        self.compiler.remove_slice(ns, name);
                    }
                }
            }
        }
    }

    fn take_event(&mut self, ev: &WatchEvent) {
        self.revision = self.revision.max(ev.mod_revision());
        self.health.queued();
        match ev {
            WatchEvent::Put(kv) => self.take(kv),
            WatchEvent::Delete { key, .. } => {
                if let Some((ns, name)) = key
                    .strip_prefix(SERVICES_PREFIX.as_str())
                    .and_then(|id| id.split_once('/'))
                {
                    self.compiler.remove_service(ns, name);
                } else if let Some((ns, name)) = key
                    .strip_prefix(SLICES_PREFIX.as_str())
                    .and_then(|id| id.split_once('/'))
                {
                    self.compiler.remove_slice(ns, name);
                } else if self.nodes.remove(key).is_some() {
                    self.compiler.set_nodes(self.nodes.values().cloned());
                }
            }
        }
    }
}

/// Objects are stored under `objects/<kind>/<namespace>/<name>`: the key is the truth for
/// the namespace.
fn fill_namespace(key: &str, prefix: &str, meta: &mut model::ObjectMeta) {
    if let Some(ns) = key
        .strip_prefix(prefix)
        .and_then(|rest| rest.split('/').next())
    {
        meta.namespace = Some(ns.to_string());
    }
}

/// The proxy's node.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The Kubernetes Node name.
    pub node: String,
    /// Addresses NodePorts answer on (the node's InternalIP).
    pub addresses: Vec<Ipv4Addr>,
    /// The pod CIDR of the whole cluster: sources inside it are pods.
    pub cluster_cidr: Ipv4Net,
    /// The service CIDR, when the config names one.
    pub service_cidr: Option<Ipv4Net>,
    /// The underlay device, which carries the announced LoadBalancer IPs.
    pub underlay_dev: String,
    /// The LoadBalancer address pool, when LoadBalancer IPs are announced.
    pub lb_pool: Option<Ipv4Net>,
}

/// Brings the kernel to the compiler's plan: the whole plan after a start or a failure, the
/// compiler's diff otherwise.
#[derive(Debug, Default)]
pub struct Applier {
    /// Whether the kernel holds the plan as of the last apply (false: reload everything).
    synced: bool,
    /// Per-count chains nothing points at any more but still in the kernel: deleted together
    /// once there are [`UNUSED_CHAINS_KEPT`] of them (an `nft` run costs more than the chains),
    /// and reused as they are when their count comes back.
    unused: BTreeSet<DynChain>,
    /// The underlay device and the LoadBalancer pool, when LoadBalancer IPs are announced.
    pub announcer: Option<(String, Ipv4Net)>,
}

/// How many unused per-count chains stay in the kernel before they are deleted in one go.
pub const UNUSED_CHAINS_KEPT: usize = 16;

/// The kernel work of one apply, planned from the compiler by [`Applier::prepare`].
#[derive(Debug, Default)]
pub struct Work {
    /// The first apply, or the one after a failure: flush the maps and load every element.
    full: bool,
    /// `nft -f` script of the table and its chains, when they must be (re)declared.
    structure: Option<String>,
    ops: Vec<ElemOp>,
    /// Full loads: every dynamic chain the plan uses (others left by an earlier run go).
    wanted: BTreeSet<String>,
    delete_chains: Vec<String>,
    stale_udp: Vec<(Frontend, Ipv4Addr)>,
    revived_udp: Vec<Frontend>,
    affinity_gc: Vec<(u32, Vec<Backend>)>,
    /// Device, pool and the LoadBalancer IPs to hold, when they may have changed.
    announce: Option<(String, Ipv4Net, BTreeSet<Ipv4Addr>)>,
    /// The plan's health checks may have changed (ports, local endpoint counts).
    pub health_changed: bool,
}

impl Applier {
    /// Recompiles what changed in `c` and plans the kernel work that brings the kernel to its
    /// plan. Pure; hand the result to [`Work::run`] and its outcome to [`finish`](Self::finish).
    pub fn prepare(&mut self, c: &mut Compiler) -> Work {
        let full = !self.synced;
        self.synced = false;
        let d = if full {
            c.reload();
            svc::ServiceDiff::default()
        } else {
            c.update();
            c.take_diff()
        };
        let plan = c.plan();
        let announce = self
            .announcer
            .as_ref()
            .filter(|_| full || d.announce_changed)
            .map(|(dev, pool)| (dev.clone(), *pool, plan.announce.clone()));
        // Chains the kernel still has (unused so far) are used again as they are.
        let new_chains: Vec<DynChain> = d
            .add_chains
            .iter()
            .filter(|ch| !self.unused.remove(*ch))
            .copied()
            .collect();
        // The whole structure at a start or when the firewall changed; otherwise only the new
        // per-count chains (they name no map, so `nft` need not load the maps' elements).
        let structure = if full || d.structure_changed {
            Some(svc::render_structure(plan, c.chains()))
        } else {
            (!new_chains.is_empty()).then(|| svc::render_chains(&new_chains))
        };
        self.unused.extend(d.delete_chains.iter().copied());
        if full {
            // The whole load deletes every chain nothing points at.
            self.unused.clear();
            return Work {
                full,
                structure,
                ops: plan.all_ops(),
                wanted: c.chains().iter().map(DynChain::name).collect(),
                announce,
                health_changed: true,
                ..Work::default()
            };
        }
        Work {
            full,
            structure,
            ops: d.ops,
            delete_chains: if self.unused.len() >= UNUSED_CHAINS_KEPT {
                std::mem::take(&mut self.unused)
                    .iter()
                    .map(DynChain::name)
                    .collect()
            } else {
                Vec::new()
            },
            stale_udp: d.stale_udp,
            revived_udp: d.revived_udp,
            affinity_gc: d.affinity_gc,
            announce,
            health_changed: d.health_changed,
            ..Work::default()
        }
    }

    /// Takes the outcome of the prepared work: after an error everything is reloaded next.
    pub fn finish(&mut self, result: &Result<(), KernelError>) {
        self.synced = result.is_ok();
    }

    /// [`prepare`](Self::prepare), [`Work::run`] and [`finish`](Self::finish) in one.
    pub fn apply(
        &mut self,
        dp: &mut impl ProxyDataplane,
        c: &mut Compiler,
    ) -> Result<(), KernelError> {
        let result = self.prepare(c).run(dp);
        self.finish(&result);
        result
    }
}

impl Work {
    /// How many element operations the work sends.
    pub fn element_ops(&self) -> usize {
        self.ops.len()
    }

    /// Does the work: structure, then elements in one transaction, then chain deletions and
    /// conntrack and affinity cleanups, then the LoadBalancer announcements.
    pub fn run(self, dp: &mut impl ProxyDataplane) -> Result<(), KernelError> {
        if let Some(script) = &self.structure {
            dp.nft_script(script)?;
        }
        if self.full || !self.ops.is_empty() {
            dp.nft_elements(&self.ops, self.full)?;
        }
        let mut delete = self.delete_chains;
        if self.full {
            // Chains left by an earlier run that nothing points at any more.
            delete = dp
                .nft_chains()?
                .into_iter()
                .filter(|c| svc::is_dyn_chain_name(c) && !self.wanted.contains(c))
                .collect();
        }
        if !delete.is_empty() {
            dp.nft_script(&svc::render_delete_chains(&delete))?;
        }
        let mut errors = Vec::new();
        for (fe, ep) in &self.stale_udp {
            errors.extend(dp.forget_udp(fe, Some(*ep)).err());
        }
        for fe in &self.revived_udp {
            errors.extend(dp.forget_udp(fe, None).err());
        }
        for (mark, gone) in &self.affinity_gc {
            errors.extend(dp.forget_affinity(*mark, gone).err());
        }
        if !errors.is_empty() {
            // The maps are right; only cleanup failed. Log it and carry on.
            tracing::warn!(errors = ?errors, "conntrack or affinity cleanup failed");
        }
        if let Some((dev, pool, ips)) = &self.announce {
            dp.announce(dev, *pool, ips)?;
        }
        Ok(())
    }
}

/// Runs the proxy until the future is dropped. Store outages keep the dataplane as it is.
/// `health` learns when changes arrive and are applied, and the applied health checks.
pub async fn run<S: Store, P: ProxyDataplane>(
    store: S,
    dp: Arc<Mutex<P>>,
    cfg: ProxyConfig,
    report: ProxyReport,
    health: ProxyHealth,
) {
    let node = NodeView {
        name: cfg.node.clone(),
        addresses: cfg.addresses.clone(),
        cluster_cidr: cfg.cluster_cidr,
        service_cidr: cfg.service_cidr,
        nodes: Vec::new(),
    };
    let announcer = cfg.lb_pool.map(|pool| (cfg.underlay_dev.clone(), pool));
    let mut ctx = Ctx {
        dp,
        applier: Applier {
            announcer,
            ..Applier::default()
        },
        report,
    };
    let mut reflector = Reflector::new(
        store,
        &[
            SERVICES_PREFIX.as_str(),
            SLICES_PREFIX.as_str(),
            LEASES_PREFIX,
        ],
    );
    let mut batch = Batch::new();
    let mut view = View::new(&node, &health);
    loop {
        tokio::select! {
            ev = reflector.next() => match ev {
                Ok(ev) => {
                    batch.saw(&ev);
                    ctx.take(&mut view, ev, &node);
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?reflector.retry_in(), "cannot follow services; dataplane kept as it is");
                }
            },
            () = batch.ready() => {
                let ok = ctx.apply_view(&mut view).await;
                batch.applied(ok);
            }
        }
    }
}

/// What the loop applies with.
struct Ctx<P: ProxyDataplane> {
    dp: Arc<Mutex<P>>,
    applier: Applier,
    report: ProxyReport,
}

impl<P: ProxyDataplane> Ctx<P> {
    /// Takes one reflector event into the view. A listing is decoded into a fresh view, one
    /// key at a time (the old view is dropped first: no second copy while relisting), and is
    /// applied as a full reload: a fresh compiler knows nothing of what the kernel holds, so
    /// its diff would add elements that exist (the transaction fails) and miss those of
    /// objects deleted before the listing.
    fn take(&mut self, view: &mut View, ev: Event, node: &NodeView) {
        match ev {
            Event::Init => {
                let health = view.health.clone();
                *view = View::new(node, &health);
                self.applier.synced = false;
            }
            Event::InitApply(kv) => view.take(&kv),
            Event::InitDone { revision } => view.revision = view.revision.max(revision),
            ev => {
                if let Some(change) = ev.into_change() {
                    view.take_event(&change);
                }
            }
        }
    }

    /// Compiles what changed in the view and applies it; reports the outcome. Returns whether
    /// it applied.
    async fn apply_view(&mut self, view: &mut View) -> bool {
        let started = std::time::Instant::now();
        let work = self.applier.prepare(&mut view.compiler);
        let whole = work.full;
        let health_changed = work.health_changed;
        let dp = self.dp.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut d = dp.lock().unwrap_or_else(|p| p.into_inner());
            let r = work.run(&mut *d);
            if whole {
                // A whole load leaves its listing, element list and netlink batch freed but
                // scattered over the allocator's arenas: hand the free pages back.
                release_freed_memory();
            }
            r
        })
        .await
        .unwrap_or_else(|e| Err(KernelError::Worker(e)));
        self.applier.finish(&result);
        let c = &view.compiler;
        let plan = c.plan();
        let (services, frontends, endpoints) = (
            c.service_count(),
            plan.services.len() + plan.no_endpoints.len(),
            plan.backends.len(),
        );
        let revision = view.revision;
        match result {
            Ok(()) => {
                tracing::debug!(revision, elapsed = ?started.elapsed(), services, "services applied");
                if health_changed {
                    view.health.set_services(&plan.health_checks);
                }
                view.health.updated();
                self.report.set(|s| {
                    s.applied_revision = s.applied_revision.max(revision);
                    s.services = services;
                    s.frontends = frontends;
                    s.endpoints = endpoints;
                    s.last_error = None;
                });
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "applying services failed; will reload");
                self.report.set(|s| s.last_error = Some(e.to_string()));
                false
            }
        }
    }
}

/// Returns free heap pages to the kernel (glibc keeps them otherwise, and the agent's RSS stays
/// at its peak after a large load).
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds free; it has no
    // preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use crate::MemNft;
    use serde_json::json;

    fn node() -> NodeView {
        NodeView {
            name: "n1".into(),
            addresses: vec![Ipv4Addr::new(10, 99, 0, 1)],
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            service_cidr: None,
            nodes: Vec::new(),
        }
    }

    fn service(name: &str, ip: &str, revision: i64) -> KeyValue {
        let v = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]}});
        KeyValue {
            key: keys::object(Kind::Service, Some("default"), name),
            value: serde_json::to_vec(&v).unwrap(),
            mod_revision: revision,
            create_revision: revision,
            lease: 0,
        }
    }

    fn has_frontend(dp: &Arc<Mutex<MemNft>>, ip: &str) -> bool {
        dp.lock()
            .unwrap()
            .elements
            .keys()
            .any(|(_, k)| k.contains(ip))
    }

    #[tokio::test]
    async fn a_relist_is_a_full_reload_so_services_deleted_before_it_lose_their_elements() {
        let dp = Arc::new(Mutex::new(MemNft::default()));
        let mut ctx = Ctx {
            dp: dp.clone(),
            applier: Applier::default(),
            report: ProxyReport::default(),
        };
        let node = node();
        let mut view = View::new(&node, &ProxyHealth::default());
        let listing = |kvs: Vec<KeyValue>, revision| {
            std::iter::once(Event::Init)
                .chain(kvs.into_iter().map(Event::InitApply))
                .chain([Event::InitDone { revision }])
        };
        for ev in listing(
            vec![service("a", "10.96.0.10", 2), service("b", "10.96.0.11", 3)],
            3,
        ) {
            ctx.take(&mut view, ev, &node);
        }
        assert!(ctx.apply_view(&mut view).await);
        assert!(has_frontend(&dp, "10.96.0.10") && has_frontend(&dp, "10.96.0.11"));
        assert_eq!(ctx.report.get().applied_revision, 3);

        // `a` was deleted while the watch was behind compaction: only the relist tells.
        for ev in listing(vec![service("b", "10.96.0.11", 3)], 9) {
            ctx.take(&mut view, ev, &node);
        }
        assert!(ctx.apply_view(&mut view).await);
        assert!(!has_frontend(&dp, "10.96.0.10"), "a's elements are gone");
        assert!(has_frontend(&dp, "10.96.0.11"));
        let last = dp.lock().unwrap().transactions.last().copied();
        assert_eq!(
            last.map(|(_, flush)| flush),
            Some(true),
            "one flush and load"
        );
        assert_eq!(ctx.report.get().applied_revision, 9);
    }
}
