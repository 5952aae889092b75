//! The service proxy (design.md §6): lists and watches Services and EndpointSlices, compiles
//! them with [`plan::services`] into the elements of the node's `inet flatnet` maps, and
//! applies the difference to the previous plan as one element transaction per batch of store
//! events. The first apply after a start flushes and reloads the maps in one transaction
//! (packets see the old or the new elements, never none); after that only changed elements
//! are touched.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use ipnet::Ipv4Net;
use model::{EndpointSlice, Service};
use plan::services::{
    self as svc, Backend, DynChain, ElemOp, Frontend, NodeView, ServicePlan, compile, diff,
};
use serde::{Deserialize, Serialize};
use store::{KeyValue, Store, StoreError, WatchEvent};
use tokio::sync::Notify;
use tokio::time::sleep;

use crate::agent::{BACKOFF_MAX, BACKOFF_MIN};

/// Store prefixes the proxy follows.
pub const SERVICES_PREFIX: &str = "objects/services/";
pub const SLICES_PREFIX: &str = "objects/endpointslices/";
/// Subnet leases: the nodes that share the LoadBalancer announcements.
pub const LEASES_PREFIX: &str = store::keys::SUBNETS;

/// The kernel side of the proxy, implemented by `NetnsDataplane` and by tests' fakes.
pub trait ProxyDataplane: Send + 'static {
    /// Runs an `nft -f` script as one transaction (table, maps, chains and their rules).
    fn nft_script(&mut self, script: &str) -> Result<(), String>;
    /// Applies element changes as one transaction; with `flush`, the maps in
    /// [`svc::STATIC_MAPS`] are emptied first inside the same transaction.
    fn nft_elements(&mut self, ops: &[ElemOp], flush: bool) -> Result<(), String>;
    /// Names of the chains of the proxy's table that the kernel holds now.
    fn nft_chains(&mut self) -> Result<Vec<String>, String>;
    /// Forgets UDP conntrack entries addressed to `fe` (only those whose reply comes from
    /// `endpoint`, if given).
    fn forget_udp(&mut self, fe: &Frontend, endpoint: Option<Ipv4Addr>) -> Result<(), String>;
    /// Forgets the clients the affinity map pins to any of `gone` under affinity mark `mark`.
    fn forget_affinity(&mut self, mark: u32, gone: &[Backend]) -> Result<(), String>;
    /// Makes `dev` hold exactly `ips` (as /32) of the addresses inside `pool`, so the node
    /// answers ARP for the LoadBalancer IPs it announces; announces new ones with a
    /// gratuitous ARP.
    fn announce(
        &mut self,
        dev: &str,
        pool: Ipv4Net,
        ips: &BTreeSet<Ipv4Addr>,
    ) -> Result<(), String>;
}

/// What the proxy reports in the agent's status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxyStatus {
    /// Store revision of the Services and EndpointSlices last applied completely (the listing's
    /// revision, then that of each watch event applied); 0 before the first apply. Every
    /// Service and EndpointSlice whose `mod_revision` is at most this is in the dataplane.
    pub applied_revision: i64,
    pub services: usize,
    pub frontends: usize,
    pub endpoints: usize,
    pub last_error: Option<String>,
}

/// Shared between the proxy task and the agent loop that writes the status.
#[derive(Clone, Default)]
pub struct ProxyReport {
    pub status: Arc<Mutex<ProxyStatus>>,
    pub changed: Arc<Notify>,
}

impl ProxyReport {
    pub fn get(&self) -> ProxyStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set(&self, f: impl FnOnce(&mut ProxyStatus)) {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let before = s.clone();
        f(&mut s);
        if *s != before {
            self.changed.notify_one();
        }
    }
}

/// The objects the proxy compiles from, by store key.
#[derive(Default)]
struct View {
    services: BTreeMap<String, Service>,
    slices: BTreeMap<String, EndpointSlice>,
    /// Lease key -> node name.
    nodes: BTreeMap<String, String>,
    /// Newest revision seen in a listing or an event.
    revision: i64,
}

impl View {
    fn take(&mut self, kv: &KeyValue) {
        if kv.key.starts_with(SERVICES_PREFIX) {
            match kv.decode::<Service>() {
                Ok(mut s) => {
                    fill_namespace(&kv.key, SERVICES_PREFIX, &mut s.metadata);
                    self.services.insert(kv.key.clone(), s);
                }
                Err(e) => {
                    tracing::warn!(key = %kv.key, error = %e, "service ignored");
                    self.services.remove(&kv.key);
                }
            }
        } else if kv.key.starts_with(LEASES_PREFIX) {
            match kv.decode::<serde_json::Value>() {
                Ok(v) => match v.get("node").and_then(serde_json::Value::as_str) {
                    Some(n) => {
                        self.nodes.insert(kv.key.clone(), n.to_string());
                    }
                    None => {
                        self.nodes.remove(&kv.key);
                    }
                },
                Err(_) => {
                    self.nodes.remove(&kv.key);
                }
            }
        } else if kv.key.starts_with(SLICES_PREFIX) {
            match kv.decode::<EndpointSlice>() {
                Ok(mut s) => {
                    fill_namespace(&kv.key, SLICES_PREFIX, &mut s.metadata);
                    self.slices.insert(kv.key.clone(), s);
                }
                Err(e) => {
                    tracing::warn!(key = %kv.key, error = %e, "endpointslice ignored");
                    self.slices.remove(&kv.key);
                }
            }
        }
    }

    fn take_event(&mut self, ev: &WatchEvent) {
        self.revision = self.revision.max(ev.mod_revision());
        match ev {
            WatchEvent::Put(kv) => self.take(kv),
            WatchEvent::Delete { key, .. } => {
                self.services.remove(key);
                self.slices.remove(key);
                self.nodes.remove(key);
            }
        }
    }

    fn compile(&self, node: &NodeView) -> ServicePlan {
        let mut node = node.clone();
        node.nodes = self
            .nodes
            .values()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        compile(&node, self.services.values(), self.slices.values())
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
    pub node: String,
    pub addresses: Vec<Ipv4Addr>,
    pub cluster_cidr: Ipv4Net,
    pub service_cidr: Option<Ipv4Net>,
    /// The underlay device, which carries the announced LoadBalancer IPs.
    pub underlay_dev: String,
    pub lb_pool: Option<Ipv4Net>,
}

/// Remembers what the kernel holds and turns the next plan into the fewest changes.
#[derive(Debug, Default)]
pub struct Applier {
    /// What the kernel holds, if known (None: reload everything at the next apply).
    applied: Option<ServicePlan>,
    /// The underlay device and the LoadBalancer pool, when LoadBalancer IPs are announced.
    pub announcer: Option<(String, Ipv4Net)>,
}

impl Applier {
    pub fn applied(&self) -> Option<&ServicePlan> {
        self.applied.as_ref()
    }

    /// Makes the kernel hold `new`. On error the kernel state counts as unknown, so the next
    /// call reloads everything.
    pub fn apply(&mut self, dp: &mut impl ProxyDataplane, new: ServicePlan) -> Result<(), String> {
        let (full, changed) = match &self.applied {
            None => (true, true),
            Some(old) => (false, old.announce != new.announce),
        };
        let result = match self.applied.take() {
            None => Self::full(dp, &new),
            Some(old) => Self::incremental(dp, &old, &new),
        };
        let result = match (&self.announcer, result) {
            (Some((dev, pool)), Ok(())) if full || changed => {
                dp.announce(dev, *pool, &new.announce)
            }
            (_, r) => r,
        };
        if result.is_ok() {
            self.applied = Some(new);
        }
        result
    }

    fn full(dp: &mut impl ProxyDataplane, new: &ServicePlan) -> Result<(), String> {
        let chains = new.dyn_chains();
        dp.nft_script(&svc::render_structure(new, &chains))?;
        dp.nft_elements(&new.all_ops(), true)?;
        // Chains left by an earlier run that nothing points at any more.
        let wanted: BTreeSet<String> = chains.iter().map(DynChain::name).collect();
        let stale: Vec<String> = dp
            .nft_chains()?
            .into_iter()
            .filter(|c| svc::is_dyn_chain_name(c) && !wanted.contains(c))
            .collect();
        if !stale.is_empty() {
            dp.nft_script(&svc::render_delete_chains(&stale))?;
        }
        Ok(())
    }

    fn incremental(
        dp: &mut impl ProxyDataplane,
        old: &ServicePlan,
        new: &ServicePlan,
    ) -> Result<(), String> {
        let d = diff(old, new);
        if d.structure_changed || !d.add_chains.is_empty() {
            dp.nft_script(&svc::render_structure(new, &new.dyn_chains()))?;
        }
        if !d.ops.is_empty() {
            dp.nft_elements(&d.ops, false)?;
        }
        if !d.delete_chains.is_empty() {
            let names: Vec<String> = d.delete_chains.iter().map(DynChain::name).collect();
            dp.nft_script(&svc::render_delete_chains(&names))?;
        }
        let mut errors = Vec::new();
        for (fe, ep) in &d.stale_udp {
            if let Err(e) = dp.forget_udp(fe, Some(*ep)) {
                errors.push(e);
            }
        }
        for fe in &d.revived_udp {
            if let Err(e) = dp.forget_udp(fe, None) {
                errors.push(e);
            }
        }
        for (mark, gone) in &d.affinity_gc {
            if let Err(e) = dp.forget_affinity(*mark, gone) {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            // The maps are right; only cleanup failed. Log it and carry on.
            tracing::warn!(errors = ?errors, "conntrack or affinity cleanup failed");
            Ok(())
        }
    }
}

async fn list_all<S: Store>(store: &S, view: &mut View) -> Result<i64, StoreError> {
    let (svcs, r1) = store.list(SERVICES_PREFIX).await?;
    let (slices, r2) = store.list(SLICES_PREFIX).await?;
    let (leases, r3) = store.list(LEASES_PREFIX).await?;
    *view = View::default();
    for kv in svcs.iter().chain(slices.iter()).chain(leases.iter()) {
        view.take(kv);
    }
    view.revision = r1.max(r2).max(r3);
    Ok(r1)
}

/// Runs the proxy until the future is dropped. Store outages keep the dataplane as it is.
pub async fn run<S: Store, P: ProxyDataplane>(
    store: S,
    dp: Arc<Mutex<P>>,
    cfg: ProxyConfig,
    report: ProxyReport,
) {
    let node = NodeView {
        name: cfg.node.clone(),
        addresses: cfg.addresses.clone(),
        cluster_cidr: cfg.cluster_cidr,
        service_cidr: cfg.service_cidr,
        nodes: Vec::new(),
    };
    let announcer = cfg.lb_pool.map(|pool| (cfg.underlay_dev.clone(), pool));
    let mut applier = Applier {
        announcer,
        ..Applier::default()
    };
    let mut backoff = BACKOFF_MIN;
    loop {
        let mut view = View::default();
        let first = match list_all(&store, &mut view).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot list services; dataplane kept as it is");
                sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let watches = async {
            let a = store.watch(SERVICES_PREFIX, first + 1).await?;
            // Slices were listed after services: watch them from their own listing onwards
            // (events between the two listings are then seen twice, which is harmless).
            let b = store.watch(SLICES_PREFIX, first + 1).await?;
            let c = store.watch(LEASES_PREFIX, first + 1).await?;
            Ok::<_, StoreError>((a, b, c))
        };
        let (mut wa, mut wb, mut wc) = match watches.await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot watch services");
                sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        let mut ctx = Ctx {
            dp: &dp,
            applier: &mut applier,
            node: &node,
            report: &report,
        };
        let ok = ctx.apply_view(&view).await;
        let ended =
            crate::batch::follow(&mut ctx, &mut view, ok, [&mut wa, &mut wb, &mut wc]).await;
        match ended {
            StoreError::Compacted { revision } => {
                tracing::info!(revision, "service watch fell behind compaction, re-listing");
            }
            e => {
                tracing::warn!(error = %e, retry_in = ?backoff, "service watch broke; dataplane kept as it is");
                sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// What the follow loop works with.
struct Ctx<'a, P: ProxyDataplane> {
    dp: &'a Arc<Mutex<P>>,
    applier: &'a mut Applier,
    node: &'a NodeView,
    report: &'a ProxyReport,
}

impl<P: ProxyDataplane> crate::batch::Batcher for Ctx<'_, P> {
    type View = View;

    fn take(view: &mut View, ev: &WatchEvent) {
        view.take_event(ev);
    }

    async fn apply(&mut self, view: &View) -> bool {
        self.apply_view(view).await
    }
}

impl<P: ProxyDataplane> Ctx<'_, P> {
    /// Compiles the view and applies it; reports the outcome. Returns whether it applied.
    async fn apply_view(&mut self, view: &View) -> bool {
        let plan = view.compile(self.node);
        let (services, frontends, endpoints) = (
            view.services.len(),
            plan.services.len() + plan.no_endpoints.len(),
            plan.backends.len(),
        );
        for (name, why) in &plan.skipped {
            tracing::debug!(service = %name, "not proxied: {why}");
        }
        let dp = self.dp.clone();
        let mut applier = std::mem::take(self.applier);
        let started = std::time::Instant::now();
        let (applier, result) = tokio::task::spawn_blocking(move || {
            let mut d = dp.lock().unwrap_or_else(|p| p.into_inner());
            let r = applier.apply(&mut *d, plan);
            (applier, r)
        })
        .await
        .unwrap_or_else(|e| (Applier::default(), Err(format!("proxy worker: {e}"))));
        *self.applier = applier;
        let revision = view.revision;
        match result {
            Ok(()) => {
                tracing::debug!(revision, elapsed = ?started.elapsed(), services, "services applied");
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
                self.report.set(|s| s.last_error = Some(e));
                false
            }
        }
    }
}
