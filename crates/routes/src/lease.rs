//! Subnet leases in the store (design.md §4, flannel's scheme): acquire, renew, re-claim.
//!
//! A lease is the key `subnets/<cidr with - for />` holding [`LeaseAttrs`] JSON, attached to a
//! store lease of the agent's TTL and created with create-if-absent, so two agents can never
//! hold the same subnet. A key written without a store lease is a reservation (flannel's
//! term): it never expires, and the node it names adopts it.

use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use store::{KeyValue, Store, StoreError, keys};

use store::contract::{Lease, LeaseAttrs, NetworkConfig, decode_leases, key_cidr};

use crate::conflist::write_atomic;

/// Attempts at acquisition when other agents keep winning races (flannel's `raceRetries`).
const RACE_ATTEMPTS: usize = 10;

/// Why a subnet lease could not be acquired or re-claimed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Every subnet of the pod CIDR is leased.
    #[error(
        "no free /{prefix} subnet left in pod CIDR {pod_cidr}: all {total} are leased ({nodes} nodes hold leases)"
    )]
    Exhausted {
        /// The cluster's pod CIDR.
        pod_cidr: Ipv4Net,
        /// Prefix length of one node's subnet.
        prefix: u8,
        /// How many subnets the pod CIDR holds.
        total: u64,
        /// How many keys under `subnets/` there are.
        nodes: usize,
    },
    /// Another node holds the key this agent's subnet was under.
    #[error("subnet {cidr} was taken over by node {holder}")]
    Lost {
        /// The subnet this agent held.
        cidr: Ipv4Net,
        /// The node that holds it now.
        holder: String,
    },
    /// Every attempt lost a race to other agents.
    #[error(
        "could not acquire a subnet after {RACE_ATTEMPTS} attempts: other agents kept taking the candidates"
    )]
    Contended,
}

/// The subnet this agent holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLease {
    /// The subnet and the attributes written under it.
    pub lease: Lease,
    /// `subnets/<cidr>`.
    pub key: String,
    /// Store lease the key is attached to; 0 for a reservation (nothing to renew).
    pub lease_id: i64,
}

/// What an agent asks for.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    /// The cluster network config: pod CIDR and subnet size.
    pub net: NetworkConfig,
    /// This node's attributes (node name, underlay IP, backend data) to write under the key.
    pub attrs: LeaseAttrs,
    /// TTL of the store lease the key is attached to, in seconds.
    pub ttl_secs: i64,
    /// Directory holding `subnet.json`, the subnet this node held last.
    pub state_dir: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
struct Remembered {
    node: String,
    cidr: Ipv4Net,
}

fn state_file(state_dir: &Path) -> PathBuf {
    state_dir.join("subnet.json")
}

/// The subnet this node held last, as written by [`remember`]; `None` if unknown.
pub fn remembered(state_dir: &Path, node: &str) -> Option<Ipv4Net> {
    let text = std::fs::read_to_string(state_file(state_dir)).ok()?;
    let r: Remembered = serde_json::from_str(&text).ok()?;
    (r.node == node).then_some(r.cidr)
}

/// Remembers the held subnet for a restart after the store lease has expired.
pub fn remember(state_dir: &Path, node: &str, cidr: Ipv4Net) -> std::io::Result<()> {
    let text = serde_json::to_string(&Remembered {
        node: node.to_string(),
        cidr,
    })
    .map_err(std::io::Error::other)?;
    write_atomic(&state_file(state_dir), &text).map(|_| ())
}

/// A store lease granted on first use and revoked on drop of the attempt unless kept.
struct Grant<'a, S: Store> {
    store: &'a S,
    ttl: i64,
    id: i64,
}

impl<S: Store> Grant<'_, S> {
    async fn id(&mut self) -> Result<i64, StoreError> {
        if self.id == 0 {
            self.id = self.store.grant_lease(self.ttl).await?;
        }
        Ok(self.id)
    }

    async fn release(&mut self) {
        if self.id != 0 {
            if let Err(e) = self.store.revoke_lease(self.id).await {
                tracing::debug!(lease = self.id, error = %e, "revoke unused lease");
            }
            self.id = 0;
        }
    }
}

enum Step {
    Done(HeldLease),
    /// Someone changed the keys under us: list again.
    Retry,
}

/// Acquires a subnet for `req.attrs.node`: (1) a key that already names the node (kept alive
/// if its store lease still runs, rewritten if the node's attributes changed), else (2) the
/// subnet remembered in `state_dir`, else (3) the first free subnet in address order. The
/// remembered subnet is updated on success (a failure to write it is only logged).
pub async fn acquire<S: Store>(store: &S, req: &LeaseRequest) -> Result<HeldLease, LeaseError> {
    for attempt in 1..=RACE_ATTEMPTS {
        match acquire_once(store, req).await? {
            Step::Done(held) => {
                if let Err(e) = remember(&req.state_dir, &req.attrs.node, held.lease.cidr) {
                    tracing::warn!(dir = %req.state_dir.display(), error = %e, "cannot remember the leased subnet");
                }
                return Ok(held);
            }
            Step::Retry => {
                tracing::debug!(attempt, "subnet keys changed during acquisition, retrying")
            }
        }
    }
    Err(LeaseError::Contended)
}

async fn acquire_once<S: Store>(store: &S, req: &LeaseRequest) -> Result<Step, LeaseError> {
    let node = req.attrs.node.as_str();
    let (kvs, _) = store.list(keys::SUBNETS).await?;
    let leases = decode_leases(&kvs);
    let remembered = remembered(&req.state_dir, node).filter(|c| req.net.fits(c));
    let mut grant = Grant {
        store,
        ttl: req.ttl_secs,
        id: 0,
    };

    // (1) Adopt a key that names this node; the remembered one first if there are several.
    let mut mine: Vec<&(KeyValue, Lease)> = leases
        .iter()
        .filter(|(_, l)| l.attrs.node == node && req.net.fits(&l.cidr))
        .collect();
    mine.sort_by_key(|(_, l)| Some(l.cidr) != remembered);
    let mut expired: Option<Ipv4Net> = None;
    if let Some((kv, lease)) = mine.first() {
        match adopt(store, req, kv, lease, &mut grant).await? {
            Some(step) => return Ok(step),
            None => expired = Some(lease.cidr),
        }
    }

    let taken: std::collections::HashSet<Ipv4Net> =
        kvs.iter().filter_map(|kv| key_cidr(&kv.key)).collect();
    // (2) The subnet held before (also one whose lease just ran out), then (3) the free ones.
    let preferred = expired
        .into_iter()
        .chain(remembered)
        .filter(|c| expired == Some(*c) || !taken.contains(c));
    let free = req.net.subnets().filter(|c| !taken.contains(c));
    let mut tried = std::collections::HashSet::new();
    for cidr in preferred.chain(free) {
        if !tried.insert(cidr) {
            continue;
        }
        let key = keys::subnet(&cidr.to_string());
        let value = store::encode(&key, &req.attrs)?;
        let id = grant.id().await?;
        if store.create(&key, value, id).await? {
            tracing::info!(%cidr, lease = id, "leased subnet");
            return Ok(Step::Done(HeldLease {
                lease: Lease {
                    cidr,
                    attrs: req.attrs.clone(),
                },
                key,
                lease_id: id,
            }));
        }
        tracing::debug!(%cidr, "subnet taken meanwhile, trying the next");
    }
    grant.release().await;
    let (kvs, _) = store.list(keys::SUBNETS).await?;
    Err(LeaseError::Exhausted {
        pod_cidr: req.net.pod_cidr,
        prefix: req.net.node_prefix_length,
        total: req.net.subnet_count(),
        nodes: kvs.len(),
    })
}

/// Takes over `kv`, which names this node. `Ok(None)` when its store lease has run out (the
/// key is going away; the caller may create it afresh).
async fn adopt<S: Store>(
    store: &S,
    req: &LeaseRequest,
    kv: &KeyValue,
    lease: &Lease,
    grant: &mut Grant<'_, S>,
) -> Result<Option<Step>, LeaseError> {
    let held = |lease_id| HeldLease {
        lease: Lease {
            cidr: lease.cidr,
            attrs: req.attrs.clone(),
        },
        key: kv.key.clone(),
        lease_id,
    };
    if kv.lease == 0 {
        // A reservation stays one; only its attributes are brought up to date.
        if lease.attrs != req.attrs {
            match store
                .put_if(
                    &kv.key,
                    store::encode(&kv.key, &req.attrs)?,
                    kv.mod_revision,
                )
                .await
            {
                Ok(_) => {}
                Err(StoreError::Conflict { .. }) => return Ok(Some(Step::Retry)),
                Err(e) => return Err(e.into()),
            }
        }
        tracing::info!(cidr = %lease.cidr, "adopted the subnet reserved for this node");
        return Ok(Some(Step::Done(held(0))));
    }
    if store.keep_alive_once(kv.lease).await? <= 0 {
        return Ok(None);
    }
    if lease.attrs == req.attrs {
        tracing::info!(cidr = %lease.cidr, lease = kv.lease, "adopted this node's existing subnet lease");
        return Ok(Some(Step::Done(held(kv.lease))));
    }
    // The attributes changed (underlay IP, backend). `put_if` would detach the key from its
    // store lease (making it permanent), so delete and create it again: another agent could
    // take the subnet in between, and then this one gets another.
    tracing::info!(cidr = %lease.cidr, old = ?lease.attrs, new = ?req.attrs, "rewriting this node's lease");
    store.delete(&kv.key).await?;
    let id = grant.id().await?;
    if store
        .create(&kv.key, store::encode(&kv.key, &req.attrs)?, id)
        .await?
    {
        if let Err(e) = store.revoke_lease(kv.lease).await {
            tracing::debug!(lease = kv.lease, error = %e, "revoke the replaced lease");
        }
        return Ok(Some(Step::Done(held(id))));
    }
    Ok(Some(Step::Retry))
}

/// Renews the held lease once. `Ok(true)` when it is alive (or is a reservation), `Ok(false)`
/// when it has expired and must be re-claimed.
pub async fn renew<S: Store>(store: &S, held: &HeldLease) -> Result<bool, StoreError> {
    if held.lease_id == 0 {
        return Ok(true);
    }
    Ok(store.keep_alive_once(held.lease_id).await? > 0)
}

/// After the held key vanished (lease expired or key deleted): a new store lease and the same
/// key again. If another node holds the key now, [`LeaseError::Lost`].
pub async fn reclaim<S: Store>(
    store: &S,
    req: &LeaseRequest,
    held: &HeldLease,
) -> Result<HeldLease, LeaseError> {
    let id = store.grant_lease(req.ttl_secs).await?;
    let value = store::encode(&held.key, &req.attrs)?;
    if store.create(&held.key, value, id).await? {
        tracing::info!(cidr = %held.lease.cidr, lease = id, "re-claimed subnet with a new lease");
        return Ok(HeldLease {
            lease_id: id,
            ..held.clone()
        });
    }
    let _ = store.revoke_lease(id).await;
    let Some(kv) = store.get(&held.key).await? else {
        // Gone again already: let the next attempt retry.
        return Err(
            StoreError::Unavailable(format!("{} vanished while re-claiming", held.key)).into(),
        );
    };
    let attrs: Result<LeaseAttrs, _> = kv.decode();
    match attrs {
        Ok(a) if a.node == req.attrs.node => {
            let lease = Lease {
                cidr: held.lease.cidr,
                attrs: a,
            };
            let mut grant = Grant {
                store,
                ttl: req.ttl_secs,
                id: 0,
            };
            match adopt(store, req, &kv, &lease, &mut grant).await? {
                Some(Step::Done(h)) => Ok(h),
                _ => Err(StoreError::Unavailable(format!(
                    "{} changed while re-claiming",
                    held.key
                ))
                .into()),
            }
        }
        Ok(a) => Err(LeaseError::Lost {
            cidr: held.lease.cidr,
            holder: a.node,
        }),
        Err(_) => Err(LeaseError::Lost {
            cidr: held.lease.cidr,
            holder: "(undecodable value)".into(),
        }),
    }
}
