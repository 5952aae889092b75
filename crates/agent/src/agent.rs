//! The agent loop: config, lease, list + watch `subnets/`, compile, diff against what the
//! kernel holds, apply, report status. One task; every wait is in one `select!`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use store::{KeyValue, Store, StoreError, WatchEvent, WatchReceiver, keys};
use tokio::time::{Instant, MissedTickBehavior, sleep, sleep_until};
use tracing::Instrument;

use crate::config::{NetworkConfig, render_conflist, write_atomic};
use crate::dataplane::{Dataplane, DataplaneError};
use crate::health::{HealthConfig, ProxyHealth};
use crate::lease::{self, HeldLease, LeaseError, LeaseRequest, key_cidr};
use crate::plan::{
    Backend, Change, Lease, LeaseAttrs, UnderlayInfo, check_remote, compile, diff, pod_mtu,
    service_route,
};
use crate::policy::{PolicyDataplane, PolicyReport, PolicyStatus};
use crate::proxy::{ProxyConfig, ProxyDataplane, ProxyReport, ProxyStatus};
use crate::{AgentConfig, AgentError};

/// First wait after the store failed; doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A dataplane shared between the agent and whoever else looks at it (tests).
pub type Shared<D> = Arc<Mutex<D>>;

/// Value of `agents/<node>`, written after every apply and every lease renewal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    pub node: String,
    /// The last apply succeeded completely.
    pub healthy: bool,
    /// Store revision of the last `subnets/` state applied completely to the kernel. Advances
    /// on every applied change and, through a re-list, at every renewal (every TTL/3) even when
    /// nothing changed.
    pub applied_revision: i64,
    pub cidr: Ipv4Net,
    pub backend: Backend,
    #[serde(rename = "underlayIP")]
    pub underlay_ip: std::net::Ipv4Addr,
    /// Pod interface MTU written to the CNI conflist.
    pub mtu: u32,
    pub last_error: Option<String>,
    /// Unix time of writing, in seconds.
    pub heartbeat: u64,
    /// Pod CIDRs of the other nodes this node routes to, as of the last complete apply.
    #[serde(default)]
    pub peers: Vec<Ipv4Net>,
    /// The service proxy.
    #[serde(default)]
    pub proxy: ProxyStatus,
    /// NetworkPolicy enforcement.
    #[serde(default)]
    pub policy: PolicyStatus,
}

fn lock<D>(dp: &Shared<D>) -> MutexGuard<'_, D> {
    // A panic inside a dataplane call leaves no half-made Rust state worth protecting; the
    // kernel state is re-read before every apply anyway.
    dp.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs a blocking dataplane call off the async threads.
async fn blocking<D: Dataplane, T: Send + 'static>(
    dp: &Shared<D>,
    f: impl FnOnce(&mut D) -> Result<T, DataplaneError> + Send + 'static,
) -> Result<T, DataplaneError> {
    let dp = dp.clone();
    tokio::task::spawn_blocking(move || f(&mut lock(&dp)))
        .await
        .map_err(|e| DataplaneError::Other(format!("dataplane worker: {e}")))?
}

fn next_backoff(b: Duration) -> Duration {
    (b * 2).min(BACKOFF_MAX)
}

/// The agent with an explicit store and dataplane (`run` uses etcd and the node's netns).
/// Returns `Ok(())` once `shutdown` completes; the dataplane and the lease are left as they are
/// (the lease runs out after its TTL unless the agent comes back), so a restart is hitless.
pub async fn run_with<S: Store, D: Dataplane + ProxyDataplane + PolicyDataplane>(
    store: S,
    dp: Shared<D>,
    cfg: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    run_with_health(store, dp, cfg, HealthConfig::disabled(), shutdown).await
}

/// [`run_with`], also serving the proxy's health ports of `health` in the node's namespace
/// (`run` serves kube-proxy's defaults; `run_with` none, as tests run several agents in one
/// namespace).
pub async fn run_with_health<S: Store, D: Dataplane + ProxyDataplane + PolicyDataplane>(
    store: S,
    dp: Shared<D>,
    cfg: AgentConfig,
    health: HealthConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let span = tracing::info_span!("agent", node = %cfg.node);
    let body = async move {
        let mut agent = Agent::start(store, dp, cfg).await?;
        let proxy_health = ProxyHealth::default();
        let health_servers =
            crate::health::serve(health, agent.cfg.netns.clone(), proxy_health.clone());
        let proxy = crate::proxy::run(
            agent.store.clone(),
            agent.dp.clone(),
            ProxyConfig {
                node: agent.cfg.node.clone(),
                addresses: vec![agent.underlay.ip],
                cluster_cidr: agent.net.pod_cidr,
                service_cidr: agent.net.service_cidr,
                underlay_dev: agent.underlay.dev.clone(),
                lb_pool: agent.net.load_balancer_pool,
            },
            agent.report.clone(),
            proxy_health,
        );
        let policy = crate::policy::run(
            agent.store.clone(),
            agent.dp.clone(),
            agent.cfg.node.clone(),
            agent.policy.clone(),
        );
        tokio::select! {
            r = agent.run() => r,
            () = proxy => Ok(()),
            () = policy => Ok(()),
            () = health_servers => Ok(()),
        }
    };
    tokio::select! {
        r = body.instrument(span.clone()) => r,
        () = shutdown => {
            tracing::info!(parent: &span, "shutting down; dataplane and lease left in place");
            Ok(())
        }
    }
}

struct Agent<S: Store, D: Dataplane + ProxyDataplane + PolicyDataplane> {
    cfg: AgentConfig,
    store: S,
    dp: Shared<D>,
    net: NetworkConfig,
    req: LeaseRequest,
    underlay: UnderlayInfo,
    held: HeldLease,
    /// Other nodes' leases by key, as of `view_revision`.
    remotes: BTreeMap<String, Lease>,
    /// Keys under `subnets/` left out of the plan, with the reason (logged once).
    ignored: BTreeMap<String, String>,
    view_revision: i64,
    applied_revision: i64,
    /// Remote CIDRs routed as of `applied_revision`.
    peers: Vec<Ipv4Net>,
    need_reclaim: bool,
    /// Why the last reconcile did not fully apply.
    apply_error: Option<String>,
    /// A change of the underlay that needs a restart.
    underlay_error: Option<String>,
    /// What the service proxy reports; a change is written to the status at once.
    report: ProxyReport,
    /// What policy enforcement reports; wakes the same status writer as `report`.
    policy: PolicyReport,
}

/// Waits out store outages (and a missing config key) with backoff; other errors end it.
async fn wait_config<S: Store>(store: &S) -> Result<NetworkConfig, AgentError> {
    let mut backoff = BACKOFF_MIN;
    loop {
        match store.get(keys::CONFIG).await {
            Ok(Some(kv)) => {
                return NetworkConfig::parse(&kv.value).map_err(|reason| AgentError::Config {
                    key: keys::CONFIG.to_string(),
                    reason,
                });
            }
            Ok(None) => tracing::warn!(
                key = keys::CONFIG,
                "network config not in the store yet, waiting"
            ),
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "store unavailable, waiting for the network config")
            }
            Err(e) => return Err(e.into()),
        }
        sleep(backoff).await;
        backoff = next_backoff(backoff);
    }
}

impl<S: Store, D: Dataplane + ProxyDataplane + PolicyDataplane> Agent<S, D> {
    async fn start(store: S, dp: Shared<D>, cfg: AgentConfig) -> Result<Self, AgentError> {
        let net = wait_config(&store).await?;
        let dev = cfg.underlay_dev.clone();
        let underlay = blocking(&dp, move |d| d.underlay(&dev)).await?;
        tracing::info!(pod_cidr = %net.pod_cidr, backend = %net.backend, underlay = ?underlay, "starting");
        if let Some(svc) = net.service_cidr.filter(|c| c.contains(&underlay.ip)) {
            return Err(AgentError::Config {
                key: keys::CONFIG.to_string(),
                reason: format!(
                    "serviceCIDR {svc} contains this node's underlay address {} ({}): traffic to the node would be taken for service traffic",
                    underlay.ip, underlay.dev
                ),
            });
        }
        let req = LeaseRequest {
            net: net.clone(),
            attrs: LeaseAttrs::new(&cfg.node, underlay.ip, net.backend),
            ttl_secs: cfg.lease_ttl.as_secs_f64().ceil().max(1.0) as i64,
            state_dir: cfg.state_dir.clone(),
        };
        let mut backoff = BACKOFF_MIN;
        let held = loop {
            match lease::acquire(&store, &req).await {
                Ok(held) => break held,
                Err(LeaseError::Store(e)) if e.is_retryable() => {
                    tracing::warn!(error = %e, "store unavailable while acquiring a subnet, retrying");
                }
                Err(e) => return Err(e.into()),
            }
            sleep(backoff).await;
            backoff = next_backoff(backoff);
        };
        let report = ProxyReport::default();
        Ok(Agent {
            cfg,
            store,
            dp,
            net,
            req,
            underlay,
            held,
            remotes: BTreeMap::new(),
            ignored: BTreeMap::new(),
            view_revision: 0,
            applied_revision: 0,
            peers: Vec::new(),
            need_reclaim: false,
            apply_error: Some("not applied yet".into()),
            underlay_error: None,
            report: report.clone(),
            policy: PolicyReport::notifying(report.changed.clone()),
        })
    }

    async fn run(&mut self) -> Result<(), AgentError> {
        let period = (self.cfg.lease_ttl / 3).max(Duration::from_millis(100));
        let mut tick = tokio::time::interval_at(Instant::now() + period, period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut watch: Option<WatchReceiver> = None;
        let mut resync_at = Instant::now();
        let mut backoff = BACKOFF_MIN;
        loop {
            tokio::select! {
                _ = tick.tick() => self.heartbeat().await?,
                () = self.report.changed.notified() => self.write_status().await,
                () = sleep_until(resync_at), if watch.is_none() => match self.resync().await {
                    Ok(rx) => {
                        watch = Some(rx);
                        backoff = BACKOFF_MIN;
                    }
                    Err(AgentError::Store(e)) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "cannot list and watch subnets; dataplane kept as it is");
                        resync_at = Instant::now() + backoff;
                        backoff = next_backoff(backoff);
                    }
                    Err(e) => return Err(e),
                },
                ev = next_event(&mut watch), if watch.is_some() => match ev {
                    Some(Ok(first)) => {
                        let mut batch = vec![first];
                        let mut ended = None;
                        if let Some(rx) = watch.as_mut() {
                            while let Ok(more) = rx.try_recv() {
                                match more {
                                    Ok(ev) => batch.push(ev),
                                    Err(e) => {
                                        ended = Some(e);
                                        break;
                                    }
                                }
                            }
                        }
                        self.on_events(batch).await?;
                        if let Some(e) = ended {
                            watch = None;
                            resync_at = self.watch_ended(e, &mut backoff);
                        }
                    }
                    Some(Err(e)) => {
                        watch = None;
                        resync_at = self.watch_ended(e, &mut backoff);
                    }
                    None => {
                        watch = None;
                        resync_at = self.watch_ended(StoreError::Unavailable("watch closed".into()), &mut backoff);
                    }
                },
            }
        }
    }

    /// When to list and watch again after the watch ended with `e`.
    fn watch_ended(&self, e: StoreError, backoff: &mut Duration) -> Instant {
        if let StoreError::Compacted { revision } = e {
            tracing::info!(revision, "watch fell behind compaction, re-listing");
            return Instant::now();
        }
        tracing::warn!(error = %e, retry_in = ?*backoff, "subnet watch broke; dataplane kept as it is");
        let at = Instant::now() + *backoff;
        *backoff = next_backoff(*backoff);
        at
    }

    /// List `subnets/`, converge on it, and watch from the listing revision + 1.
    async fn resync(&mut self) -> Result<WatchReceiver, AgentError> {
        let (kvs, revision) = self.store.list(keys::SUBNETS).await?;
        self.take_listing(&kvs, revision)?;
        self.fix_own_lease().await?;
        self.reconcile().await;
        Ok(self.store.watch(keys::SUBNETS, revision + 1).await?)
    }

    /// Replaces the view of the other nodes with a listing read at `revision`.
    fn take_listing(&mut self, kvs: &[KeyValue], revision: i64) -> Result<(), AgentError> {
        if revision < self.view_revision {
            return Ok(());
        }
        let mut own = false;
        let listed: std::collections::BTreeSet<&str> =
            kvs.iter().map(|kv| kv.key.as_str()).collect();
        for kv in kvs {
            own |= kv.key == self.held.key;
            self.take_put(kv)?;
        }
        let gone: Vec<String> = self
            .remotes
            .keys()
            .filter(|k| !listed.contains(k.as_str()))
            .cloned()
            .collect();
        for key in gone {
            self.take_delete(&key);
        }
        self.ignored.retain(|k, _| listed.contains(k.as_str()));
        if !own {
            self.need_reclaim = true;
        }
        self.view_revision = revision;
        Ok(())
    }

    /// What a subnet key other than our own means for this node: a usable remote lease, or
    /// why it is ignored.
    fn classify(&self, kv: &KeyValue) -> Result<Lease, String> {
        let cidr = key_cidr(&kv.key).ok_or("the key names no IPv4 CIDR")?;
        let attrs = kv.decode::<LeaseAttrs>().map_err(|e| e.to_string())?;
        let lease = Lease { cidr, attrs };
        if !self.net.fits(&lease.cidr) {
            return Err(format!(
                "{} is not a /{} of pod CIDR {}",
                lease.cidr, self.net.node_prefix_length, self.net.pod_cidr
            ));
        }
        check_remote(&self.held.lease, &lease, self.net.backend)?;
        Ok(lease)
    }

    /// One key written: our own (checked), or another node's lease (kept if usable). Logs
    /// only what changed, so a re-list every renewal stays quiet.
    fn take_put(&mut self, kv: &KeyValue) -> Result<(), AgentError> {
        if kv.key == self.held.key {
            let holder = match kv.decode::<LeaseAttrs>() {
                Ok(a) if a.node == self.cfg.node => return Ok(()),
                Ok(a) => a.node,
                Err(_) => "(undecodable value)".into(),
            };
            return Err(LeaseError::Lost {
                cidr: self.held.lease.cidr,
                holder,
            }
            .into());
        }
        match self.classify(kv) {
            Ok(lease) => {
                self.ignored.remove(&kv.key);
                if self.remotes.get(&kv.key) != Some(&lease) {
                    tracing::info!(
                        cidr = %lease.cidr,
                        remote = %lease.attrs.node,
                        underlay_ip = %lease.attrs.underlay_ip,
                        "remote node lease"
                    );
                    self.remotes.insert(kv.key.clone(), lease);
                }
            }
            Err(why) => {
                self.take_delete(&kv.key);
                if self.ignored.get(&kv.key) != Some(&why) {
                    tracing::warn!(key = %kv.key, "ignoring a subnet lease: {why}");
                    self.ignored.insert(kv.key.clone(), why);
                }
            }
        }
        Ok(())
    }

    fn take_delete(&mut self, key: &str) {
        self.ignored.remove(key);
        if let Some(gone) = self.remotes.remove(key) {
            tracing::info!(cidr = %gone.cidr, remote = %gone.attrs.node, "remote node left");
        }
    }

    async fn on_events(&mut self, events: Vec<WatchEvent>) -> Result<(), AgentError> {
        let mut changed = false;
        for ev in events {
            if ev.mod_revision() <= self.view_revision {
                continue;
            }
            self.view_revision = ev.mod_revision();
            changed = true;
            match ev {
                WatchEvent::Put(kv) => self.take_put(&kv)?,
                WatchEvent::Delete { key, .. } if key == self.held.key => {
                    tracing::warn!(key = %key, "own subnet lease vanished");
                    self.need_reclaim = true;
                }
                WatchEvent::Delete { key, .. } => self.take_delete(&key),
            }
        }
        self.fix_own_lease().await?;
        if changed {
            self.reconcile().await;
        }
        Ok(())
    }

    /// Re-claims the own key when it vanished; store outages are retried at the next tick.
    async fn fix_own_lease(&mut self) -> Result<(), AgentError> {
        if !self.need_reclaim {
            return Ok(());
        }
        match lease::reclaim(&self.store, &self.req, &self.held).await {
            Ok(held) => {
                self.held = held;
                self.need_reclaim = false;
                Ok(())
            }
            Err(LeaseError::Store(e)) => {
                tracing::warn!(error = %e, "cannot re-claim the subnet yet, retrying at the next renewal");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Every TTL/3: renew the lease, refresh the underlay, re-list, converge, report.
    async fn heartbeat(&mut self) -> Result<(), AgentError> {
        match lease::renew(&self.store, &self.held).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(cidr = %self.held.lease.cidr, "subnet lease expired, re-claiming");
                self.need_reclaim = true;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the subnet lease, retrying at the next renewal")
            }
        }
        self.fix_own_lease().await?;
        let dev = self.cfg.underlay_dev.clone();
        match blocking(&self.dp, move |d| d.underlay(&dev)).await {
            Ok(u) if u.ip != self.underlay.ip => {
                // The lease names the old IP; re-leasing is a restart's job.
                self.underlay_error = Some(format!(
                    "underlay IP of {} changed from {} to {}; restart the agent",
                    u.dev, self.underlay.ip, u.ip
                ));
            }
            Ok(u) => {
                if u.mtu != self.underlay.mtu {
                    tracing::info!(old = self.underlay.mtu, new = u.mtu, "underlay MTU changed");
                }
                self.underlay = u;
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the underlay device"),
        }
        match self.store.list(keys::SUBNETS).await {
            Ok((kvs, revision)) => {
                self.take_listing(&kvs, revision)?;
                self.fix_own_lease().await?;
                self.reconcile().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot list subnets; dataplane kept as it is");
                self.write_status().await;
            }
        }
        Ok(())
    }

    /// Compile, diff against what the kernel holds, apply; then the CNI conflist and status.
    async fn reconcile(&mut self) {
        let remotes: Vec<Lease> = self.remotes.values().cloned().collect();
        let mut desired = compile(&self.held.lease, &remotes, self.net.backend, &self.underlay);
        let peers: Vec<Ipv4Net> = desired.routes.iter().map(|r| r.dst).collect();
        if let Some(cidr) = self.net.service_cidr {
            desired.routes.insert(service_route(cidr, &self.underlay));
        }
        let result = blocking(&self.dp, move |d| {
            let observed = d.observe()?;
            let changes = diff(&observed, &desired);
            let applied = if changes.is_empty() {
                Ok(())
            } else {
                d.apply(&changes)
            };
            Ok((changes, applied))
        })
        .await;
        let mut errors = Vec::new();
        match result {
            Ok((changes, applied)) => {
                log_changes(&changes);
                match applied {
                    Ok(()) => {
                        self.applied_revision = self.view_revision;
                        self.peers = peers;
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
        let mtu = pod_mtu(self.net.backend, self.underlay.mtu);
        match render_conflist(self.held.lease.cidr, &self.cfg.ipam_dir, mtu) {
            Ok(text) => match write_atomic(&self.cfg.cni_conf_path, &text) {
                Ok(true) => {
                    tracing::info!(path = %self.cfg.cni_conf_path.display(), subnet = %self.held.lease.cidr, mtu, "wrote CNI conflist")
                }
                Ok(false) => {}
                Err(e) => errors.push(format!(
                    "write CNI conflist {}: {e}",
                    self.cfg.cni_conf_path.display()
                )),
            },
            Err(e) => errors.push(e),
        }
        self.apply_error = if errors.is_empty() {
            None
        } else {
            let msg = errors.join("; ");
            tracing::warn!(error = %msg, "dataplane not fully applied");
            Some(msg)
        };
        self.write_status().await;
    }

    async fn write_status(&self) {
        let status = AgentStatus {
            node: self.cfg.node.clone(),
            healthy: self.apply_error.is_none() && self.underlay_error.is_none(),
            applied_revision: self.applied_revision,
            cidr: self.held.lease.cidr,
            backend: self.net.backend,
            underlay_ip: self.underlay.ip,
            mtu: pod_mtu(self.net.backend, self.underlay.mtu),
            last_error: match (&self.apply_error, &self.underlay_error) {
                (Some(a), Some(u)) => Some(format!("{a}; {u}")),
                (a, u) => a.clone().or_else(|| u.clone()),
            },
            heartbeat: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            peers: self.peers.clone(),
            proxy: self.report.get(),
            policy: self.policy.get(),
        };
        let key = keys::agent(&self.cfg.node);
        let put = match store::encode(&key, &status) {
            Ok(value) => self.store.put(&key, value).await,
            Err(e) => Err(e),
        };
        if let Err(e) = put {
            tracing::debug!(error = %e, "cannot write agent status");
        }
    }
}

fn log_changes(changes: &[Change]) {
    for change in changes {
        tracing::info!(%change, "dataplane change");
    }
}

async fn next_event(watch: &mut Option<WatchReceiver>) -> Option<Result<WatchEvent, StoreError>> {
    match watch.as_mut() {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
