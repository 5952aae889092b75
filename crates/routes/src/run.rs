//! The routing loop: lease the node's subnet, list + watch `subnets/` (through
//! [`store::reflector`], re-listed at every renewal), compile, diff against what the kernel
//! holds, apply, write the CNI conflist, report. One task; every wait is in one `select!`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::Ipv4Net;
use store::contract::{Lease, LeaseAttrs, NetworkConfig, Report, RoutesStatus, key_cidr, keys};
use store::reflector::{Backoff, Batch, Event, Reflector};
use store::{KeyValue, Store, StoreError, WatchEvent};
use tokio::time::{Instant, MissedTickBehavior, sleep};

use crate::conflist::{render_conflist, write_atomic};
use crate::dataplane::{Dataplane, DataplaneError};
use crate::lease::{self, HeldLease, LeaseError, LeaseRequest};
use crate::plan::{Change, UnderlayInfo, check_remote, compile, diff, pod_mtu, service_route};

/// A dataplane shared between the loop and whoever else looks at it (tests).
pub type Shared<D> = Arc<Mutex<D>>;

/// How to run one node's routing.
#[derive(Debug, Clone)]
pub struct RoutesConfig {
    /// Node name: the lease's `node`.
    pub node: String,
    /// Underlay link in the node's namespace; its first IPv4 address is the node's underlay IP.
    pub underlay_dev: String,
    /// Where the node's CNI conflist goes (written through a temporary file and a rename).
    pub cni_conf_path: PathBuf,
    /// `dataDir` in the conflist: the IPAM directory of `flatnet-cni`.
    pub ipam_dir: PathBuf,
    /// Small local state (the last leased subnet) for restarts after the lease expired.
    pub state_dir: PathBuf,
    /// TTL of the subnet lease (whole seconds, at least 1); renewed every third of it.
    pub lease_ttl: Duration,
}

/// Why a key under `subnets/` other than the own takes no part in the plan (logged once).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
enum Ignored {
    /// The key names no IPv4 CIDR.
    #[error("the key names no IPv4 CIDR")]
    NoCidr,
    /// The value is not a lease.
    #[error("{0}")]
    Decode(String),
    /// The CIDR is not one of the config's node subnets.
    #[error("{cidr} is not a /{prefix} of pod CIDR {pod_cidr}")]
    NotANodeSubnet {
        /// The lease's CIDR.
        cidr: Ipv4Net,
        /// The node prefix length of the config.
        prefix: u8,
        /// The config's pod CIDR.
        pod_cidr: Ipv4Net,
    },
    /// The compiler would leave it out.
    #[error(transparent)]
    Remote(#[from] crate::plan::RemoteRefused),
}

impl From<StoreError> for Ignored {
    fn from(e: StoreError) -> Self {
        Ignored::Decode(e.to_string())
    }
}

/// Why routing stopped.
#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    /// The network config cannot be used on this node.
    #[error("network config (store key {key}): {reason}")]
    Config {
        /// The store key of the config.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The dataplane failed in a way a retry does not fix (no underlay device).
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// The subnet lease cannot be held.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// The store failed with an error that is not an outage.
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub(crate) fn lock<D>(dp: &Shared<D>) -> MutexGuard<'_, D> {
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

/// One node's routing, started ([`Routes::start`]) and then run ([`Routes::run`]).
pub struct Routes<S: Store, D: Dataplane> {
    cfg: RoutesConfig,
    store: S,
    dp: Shared<D>,
    net: NetworkConfig,
    req: LeaseRequest,
    underlay: UnderlayInfo,
    held: HeldLease,
    /// Other nodes' leases by key, as of `view_revision`.
    remotes: BTreeMap<String, Lease>,
    /// Keys under `subnets/` left out of the plan, with the reason (logged once).
    ignored: BTreeMap<String, Ignored>,
    view_revision: i64,
    applied_revision: i64,
    /// Remote CIDRs routed as of `applied_revision`.
    peers: Vec<Ipv4Net>,
    need_reclaim: bool,
    /// Why the last reconcile did not fully apply.
    apply_error: Option<String>,
    /// A change of the underlay that needs a restart.
    underlay_error: Option<String>,
    /// What this loop reports; the agent writes it to `agents/<node>`.
    report: Report<Option<RoutesStatus>>,
}

impl<S: Store, D: Dataplane> Routes<S, D> {
    /// Reads the underlay, checks `net` against it and leases a subnet (waiting out store
    /// outages with backoff). Fails on a missing underlay device or address, a service CIDR
    /// holding the underlay address, an exhausted pod CIDR, or a lease held by another node.
    pub async fn start(
        store: S,
        dp: Shared<D>,
        net: NetworkConfig,
        cfg: RoutesConfig,
        report: Report<Option<RoutesStatus>>,
    ) -> Result<Self, RoutesError> {
        let dev = cfg.underlay_dev.clone();
        let underlay = blocking(&dp, move |d| d.underlay(&dev)).await?;
        tracing::info!(pod_cidr = %net.pod_cidr, backend = %net.backend, underlay = ?underlay, "starting");
        if let Some(svc) = net.service_cidr.filter(|c| c.contains(&underlay.ip)) {
            return Err(RoutesError::Config {
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
        let mut backoff = Backoff::new();
        let held = loop {
            match lease::acquire(&store, &req).await {
                Ok(held) => break held,
                Err(LeaseError::Store(e)) if e.is_retryable() => {
                    tracing::warn!(error = %e, "store unavailable while acquiring a subnet, retrying");
                }
                Err(e) => return Err(e.into()),
            }
            sleep(backoff.next_delay()).await;
        };
        Ok(Routes {
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
            report,
        })
    }

    /// The underlay as read at start (and refreshed at every renewal).
    pub fn underlay(&self) -> &UnderlayInfo {
        &self.underlay
    }

    /// Runs until an error a retry cannot fix; store outages keep the dataplane as it is.
    ///
    /// Follows `subnets/` through a [`Reflector`]: a listing replaces the view of the other
    /// nodes and is applied at once; later changes are applied after a [`Batch`] window, those
    /// older than the view ignored. Every renewal re-lists ([`Reflector::relist`]) and
    /// re-claims the own key if the listing lacks it.
    pub async fn run(&mut self) -> Result<(), RoutesError> {
        let period = (self.cfg.lease_ttl / 3).max(Duration::from_millis(100));
        let mut tick = tokio::time::interval_at(Instant::now() + period, period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut reflector = Reflector::new(self.store.clone(), &[keys::SUBNETS]);
        let mut batch = Batch::new();
        // The listing under way, taken as a whole at its end (it names every node: small).
        let mut listing: Vec<KeyValue> = Vec::new();
        // Changes taken since the last reconcile.
        let mut changed = false;
        // A renewal re-listed and its status is not written yet: the listing's reconcile
        // writes it, or, when the store fails first, the failure does.
        let mut renewal_unreported = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.heartbeat().await?;
                    if renewal_unreported {
                        // The previous renewal's listing has not come yet.
                        self.write_status();
                    }
                    reflector.relist();
                    renewal_unreported = true;
                }
                ev = reflector.next() => match ev {
                    Ok(ev) => {
                        batch.saw(&ev);
                        match ev {
                            Event::Init => listing.clear(),
                            Event::InitApply(kv) => listing.push(kv),
                            Event::InitDone { revision } => {
                                let kvs = std::mem::take(&mut listing);
                                self.take_listing(&kvs, revision)?;
                                self.fix_own_lease().await?;
                                self.reconcile().await;
                                changed = false;
                                renewal_unreported = false;
                                batch.applied(true);
                            }
                            ev => {
                                if let Some(change) = ev.into_change() {
                                    changed |= self.take_event(change)?;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?reflector.retry_in(), "cannot list and watch subnets; dataplane kept as it is");
                        if renewal_unreported {
                            self.write_status();
                            renewal_unreported = false;
                        }
                    }
                },
                () = batch.ready() => {
                    self.fix_own_lease().await?;
                    if std::mem::take(&mut changed) {
                        self.reconcile().await;
                    }
                    // A failed apply is retried at the next renewal.
                    batch.applied(true);
                }
            }
        }
    }

    /// Replaces the view of the other nodes with a listing read at `revision`.
    fn take_listing(&mut self, kvs: &[KeyValue], revision: i64) -> Result<(), RoutesError> {
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
    fn classify(&self, kv: &KeyValue) -> Result<Lease, Ignored> {
        let cidr = key_cidr(&kv.key).ok_or(Ignored::NoCidr)?;
        let attrs = kv.decode::<LeaseAttrs>()?;
        let lease = Lease { cidr, attrs };
        if !self.net.fits(&lease.cidr) {
            return Err(Ignored::NotANodeSubnet {
                cidr,
                prefix: self.net.node_prefix_length,
                pod_cidr: self.net.pod_cidr,
            });
        }
        check_remote(&self.held.lease, &lease, self.net.backend)?;
        Ok(lease)
    }

    /// One key written: our own (checked), or another node's lease (kept if usable). Logs
    /// only what changed, so a re-list every renewal stays quiet.
    fn take_put(&mut self, kv: &KeyValue) -> Result<(), RoutesError> {
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

    /// Takes one watched change, unless the view is already newer; whether it changed the view.
    fn take_event(&mut self, ev: WatchEvent) -> Result<bool, RoutesError> {
        if ev.mod_revision() <= self.view_revision {
            return Ok(false);
        }
        self.view_revision = ev.mod_revision();
        match ev {
            WatchEvent::Put(kv) => self.take_put(&kv)?,
            WatchEvent::Delete { key, .. } if key == self.held.key => {
                tracing::warn!(key = %key, "own subnet lease vanished");
                self.need_reclaim = true;
            }
            WatchEvent::Delete { key, .. } => self.take_delete(&key),
        }
        Ok(true)
    }

    /// Re-claims the own key when it vanished; store outages are retried at the next tick.
    async fn fix_own_lease(&mut self) -> Result<(), RoutesError> {
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

    /// Every TTL/3: renew the lease and refresh the underlay; [`run`](Self::run) then re-lists,
    /// converges and reports.
    async fn heartbeat(&mut self) -> Result<(), RoutesError> {
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
            Err(e) => errors.push(e.to_string()),
        }
        self.apply_error = if errors.is_empty() {
            None
        } else {
            let msg = errors.join("; ");
            tracing::warn!(error = %msg, "dataplane not fully applied");
            Some(msg)
        };
        self.write_status();
    }

    /// Publishes the status; the agent's writer wakes and writes `agents/<node>`.
    fn write_status(&self) {
        let status = RoutesStatus {
            healthy: self.apply_error.is_none() && self.underlay_error.is_none(),
            applied_revision: self.applied_revision,
            cidr: self.held.lease.cidr,
            backend: self.net.backend,
            underlay_ip: self.underlay.ip,
            underlay_dev: self.underlay.dev.clone(),
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
        };
        self.report.set(|s| *s = Some(status));
        // A renewal writes even when nothing changed (the heartbeat is whole seconds).
        self.report.changed.notify_one();
    }
}

fn log_changes(changes: &[Change]) {
    for change in changes {
        tracing::info!(%change, "dataplane change");
    }
}
