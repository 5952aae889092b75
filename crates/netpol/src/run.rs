//! The enforcement loop (design.md §7): lists and watches Namespaces, Pods and
//! NetworkPolicies, compiles them ([`crate::Cluster`]), turns what concerns this node's pods
//! into the elements of the `inet flatnet-policy` table ([`nft::compile_node`]) and applies the
//! difference to the previous plan as one element transaction per batch of store events. The
//! first apply after a start writes the table's structure and then flushes and reloads its
//! sets in one transaction (packets see the old or the new elements, never none); after that
//! only changed elements are touched. The rules never change, so a packet's cost does not
//! depend on the number of pods, policies or rules (see [`nft`]). Listing, watching and
//! retrying are [`store::reflector`]'s.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use model::{Kind, NetworkPolicy};
use store::contract::{PolicyStatus, Report, keys};
use store::reflector::{Batch, Event, Reflector};
use store::{KeyValue, Store, WatchEvent};

use crate::nft::{self, PolicyOp, PolicyPlan, compile_node, diff};
use crate::{Cluster, NamespaceInfo, PodInfo};

/// Store prefixes the policy task follows, listed in this order: Namespaces, Pods,
/// NetworkPolicies.
static NAMESPACES_PREFIX: LazyLock<String> = LazyLock::new(|| keys::kind_prefix(Kind::Namespace));
static PODS_PREFIX: LazyLock<String> = LazyLock::new(|| keys::kind_prefix(Kind::Pod));
static POLICIES_PREFIX: LazyLock<String> = LazyLock::new(|| keys::kind_prefix(Kind::NetworkPolicy));

/// Why the kernel (or its fake) did not take a change of the policy table.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// nftables refused or failed (`nft -f`, an element batch); names the table or set.
    #[cfg(feature = "kernel")]
    #[error(transparent)]
    Nft(#[from] datapath::nft::NftError),
    /// The blocking task that ran the apply panicked or was cancelled.
    #[error("policy worker: {0}")]
    Worker(tokio::task::JoinError),
    /// The fake's refusal, worded as the kernel's (`set ...: delete element ...: No such file
    /// or directory`).
    #[error("{0}")]
    Refused(String),
}

/// Why a stored object is left out of enforcement (shown in the status's `ignored`).
#[derive(Debug, thiserror::Error)]
enum Ignored {
    /// The value does not decode as its kind.
    #[error(transparent)]
    Decode(#[from] store::StoreError),
    /// The compiler refuses it (a policy the API server would have rejected, a pod without a
    /// usable address).
    #[error(transparent)]
    Policy(#[from] crate::PolicyError),
}

/// The kernel side of policy enforcement, implemented by `NetnsPolicy` and by [`crate::MemPolicy`].
pub trait PolicyDataplane: Send + 'static {
    /// Runs an `nft -f` script as one transaction (the table, its sets, chains and rules).
    fn policy_script(&mut self, script: &str) -> Result<(), KernelError>;
    /// Applies element changes as one transaction; with `flush`, every set of the table is
    /// emptied first inside the same transaction.
    fn policy_elements(&mut self, ops: &[PolicyOp], flush: bool) -> Result<(), KernelError>;
}

/// What policy enforcement reports in the agent's status (`policy`).
pub type PolicyReport = Report<PolicyStatus>;

/// The objects the compiler reads, by store key, already in the compiler's terms.
#[derive(Default)]
struct View {
    namespaces: BTreeMap<String, NamespaceInfo>,
    pods: BTreeMap<String, PodInfo>,
    policies: BTreeMap<String, NetworkPolicy>,
    /// Keys left out, with why.
    ignored: BTreeMap<String, String>,
    /// Newest revision seen in a listing or an event.
    revision: i64,
}

/// `objects/<kind>/<namespace>/<name>` -> the namespace (the key is the truth for it).
fn key_namespace<'a>(key: &'a str, prefix: &str) -> Option<&'a str> {
    key.strip_prefix(prefix)
        .and_then(|rest| rest.split('/').next())
}

impl View {
    fn take(&mut self, kv: &KeyValue) {
        self.forget(&kv.key);
        let result = if kv.key.starts_with(PODS_PREFIX.as_str()) {
            kv.decode::<model::Pod>()
                .map_err(Ignored::from)
                .and_then(|mut pod| {
                    if let Some(ns) = key_namespace(&kv.key, &PODS_PREFIX) {
                        pod.metadata.namespace = Some(ns.to_string());
                    }
                    // A pod that has finished has no network any more and its address may
                    // already be another pod's: it is no peer and no subject.
                    let done = pod
                        .status
                        .as_ref()
                        .and_then(|s| s.phase.as_deref())
                        .is_some_and(|p| p == "Succeeded" || p == "Failed");
                    if done {
                        return Ok(None);
                    }
                    Ok(PodInfo::from_pod(&pod).map(Some)?)
                })
                .map(|p| {
                    if let Some(p) = p {
                        self.pods.insert(kv.key.clone(), p);
                    }
                })
        } else if kv.key.starts_with(NAMESPACES_PREFIX.as_str()) {
            kv.decode::<model::Namespace>()
                .map_err(Ignored::from)
                .map(|ns| {
                    self.namespaces
                        .insert(kv.key.clone(), NamespaceInfo::from_namespace(&ns));
                })
        } else if kv.key.starts_with(POLICIES_PREFIX.as_str()) {
            kv.decode::<NetworkPolicy>()
                .map_err(Ignored::from)
                .and_then(|mut p| {
                    if let Some(ns) = key_namespace(&kv.key, &POLICIES_PREFIX) {
                        p.metadata.namespace = Some(ns.to_string());
                    }
                    // A policy the compiler refuses would stop every other one from being
                    // enforced: check it alone, leave it out if it is bad.
                    Ok(Cluster::new(Vec::new(), Vec::new(), vec![p.clone()]).map(|_| p)?)
                })
                .map(|p| {
                    self.policies.insert(kv.key.clone(), p);
                })
        } else {
            Ok(())
        };
        if let Err(why) = result {
            tracing::warn!(key = %kv.key, error = %why, "object left out of policy enforcement");
            self.ignored.insert(kv.key.clone(), why.to_string());
        }
    }

    fn forget(&mut self, key: &str) {
        self.namespaces.remove(key);
        self.pods.remove(key);
        self.policies.remove(key);
        self.ignored.remove(key);
    }

    /// Takes one reflector event. A listing is taken into a fresh view (the old one is dropped
    /// first); the applier keeps the plan the kernel holds, so the next apply is the
    /// difference to it.
    fn follow(&mut self, ev: Event) {
        match ev {
            Event::Init => *self = View::default(),
            Event::InitApply(kv) => self.take(&kv),
            Event::InitDone { revision } => self.revision = self.revision.max(revision),
            ev => {
                if let Some(change) = ev.into_change() {
                    self.take_event(&change);
                }
            }
        }
    }

    fn take_event(&mut self, ev: &WatchEvent) {
        self.revision = self.revision.max(ev.mod_revision());
        match ev {
            WatchEvent::Put(kv) => self.take(kv),
            WatchEvent::Delete { key, .. } => self.forget(key),
        }
    }

    fn cluster(&self) -> Result<Cluster, crate::PolicyError> {
        Cluster::new(
            self.namespaces.values().cloned().collect(),
            self.pods.values().cloned().collect(),
            self.policies.values().cloned().collect(),
        )
    }
}

/// Remembers what the kernel holds and turns the next plan into the fewest changes.
#[derive(Debug, Default)]
pub struct Applier {
    /// What the kernel holds, if known (None: reload everything at the next apply).
    applied: Option<PolicyPlan>,
}

impl Applier {
    /// The plan the kernel holds as of the last apply, if known.
    pub fn applied(&self) -> Option<&PolicyPlan> {
        self.applied.as_ref()
    }

    /// Makes the kernel hold `new`; returns the number of element changes sent. On error the
    /// kernel state counts as unknown, so the next call reloads everything.
    pub fn apply(
        &mut self,
        dp: &mut impl PolicyDataplane,
        new: PolicyPlan,
    ) -> Result<usize, KernelError> {
        let result = match self.applied.take() {
            None => {
                let ops = new.all_ops();
                dp.policy_script(&nft::render_structure())
                    .and_then(|()| dp.policy_elements(&ops, true))
                    .map(|()| ops.len())
            }
            Some(old) => {
                let ops = diff(&old, &new);
                if ops.is_empty() {
                    Ok(0)
                } else {
                    dp.policy_elements(&ops, false).map(|()| ops.len())
                }
            }
        };
        if result.is_ok() {
            self.applied = Some(new);
        }
        result
    }
}

/// Runs policy enforcement for the pods of `node` until the future is dropped. Store outages
/// keep the dataplane as it is.
pub async fn run<S: Store, P: PolicyDataplane>(
    store: S,
    dp: Arc<Mutex<P>>,
    node: String,
    report: PolicyReport,
) {
    let mut ctx = Ctx {
        dp,
        applier: Applier::default(),
        node,
        report,
    };
    let mut reflector = Reflector::new(
        store,
        &[
            NAMESPACES_PREFIX.as_str(),
            PODS_PREFIX.as_str(),
            POLICIES_PREFIX.as_str(),
        ],
    );
    let mut batch = Batch::new();
    let mut view = View::default();
    loop {
        tokio::select! {
            ev = reflector.next() => match ev {
                Ok(ev) => {
                    batch.saw(&ev);
                    view.follow(ev);
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?reflector.retry_in(), "cannot follow pods and policies; dataplane kept as it is");
                }
            },
            () = batch.ready() => {
                let ok = ctx.apply_view(&view).await;
                batch.applied(ok);
            }
        }
    }
}

struct Ctx<P: PolicyDataplane> {
    dp: Arc<Mutex<P>>,
    applier: Applier,
    node: String,
    report: PolicyReport,
}

impl<P: PolicyDataplane> Ctx<P> {
    /// Compiles the view and applies it; reports the outcome. Returns whether it applied.
    async fn apply_view(&mut self, view: &View) -> bool {
        let started = Instant::now();
        let revision = view.revision;
        let ignored: Vec<String> = view
            .ignored
            .iter()
            .map(|(k, why)| format!("{k}: {why}"))
            .collect();
        let cluster = match view.cluster() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot compile network policies");
                self.report.set(|s| s.last_error = Some(e.to_string()));
                return false;
            }
        };
        let read = started.elapsed();
        let compiled = cluster.compile();
        let compiled_at = started.elapsed();
        let plan = compile_node(&compiled, &self.node);
        let compile_time = started.elapsed();
        tracing::debug!(read = ?read, compile = ?(compiled_at - read), node = ?(compile_time - compiled_at), "policy compile phases");
        let counts = (
            compiled.policies().len(),
            plan.local_pods,
            plan.ingress_isolated.len(),
            plan.egress_isolated.len(),
            plan.elements(),
        );
        let dp = self.dp.clone();
        let mut applier = std::mem::take(&mut self.applier);
        let (applier, result) = tokio::task::spawn_blocking(move || {
            let mut d = dp.lock().unwrap_or_else(|p| p.into_inner());
            let r = applier.apply(&mut *d, plan);
            (applier, r)
        })
        .await
        .unwrap_or_else(|e| (Applier::default(), Err(KernelError::Worker(e))));
        self.applier = applier;
        let elapsed = started.elapsed();
        match result {
            Ok(changes) => {
                let (policies, local_pods, isolated_ingress, isolated_egress, elements) = counts;
                tracing::debug!(
                    revision,
                    changes,
                    elements,
                    compile = ?compile_time,
                    total = ?elapsed,
                    "network policy applied"
                );
                self.report.set(|s| {
                    s.applied_revision = s.applied_revision.max(revision);
                    s.policies = policies;
                    s.local_pods = local_pods;
                    s.isolated_ingress = isolated_ingress;
                    s.isolated_egress = isolated_egress;
                    s.elements = elements;
                    s.last_sync_micros = elapsed.as_micros() as u64;
                    s.ignored = ignored;
                    s.last_error = None;
                });
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "applying network policy failed; will reload");
                self.report.set(|s| s.last_error = Some(e.to_string()));
                false
            }
        }
    }
}
