//! LoadBalancer addresses, as MetalLB's layer-2 mode hands them out: which address of the pool
//! each Service shows ([`allocate_lb`]) and the Service status that says so ([`lb_status`]).
//! Every node announces the addresses of its pool (the proxy's `announce`); this module is pure.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use model::Service;
use serde_json::{Value, json};

/// The LoadBalancer address a Service should show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LbState {
    /// `status.loadBalancer.ingress[0].ip`.
    Assigned(Ipv4Addr),
    /// A LoadBalancer Service that cannot get an address now, and why.
    Pending(String),
    /// Not a LoadBalancer Service: no ingress address.
    None,
}

/// Whether an address of the pool may be handed out: not `x.x.x.0` or `x.x.x.255` (MetalLB's
/// `avoidBuggyIPs`: some clients treat them as network or broadcast addresses; `.255` is the
/// lab underlay's broadcast address).
fn lb_usable(ip: Ipv4Addr) -> bool {
    !matches!(ip.octets()[3], 0 | 255)
}

/// Decides every Service's LoadBalancer address (keyed by `namespace/name`), like MetalLB's
/// allocator: a Service keeps the address it shows while it is in the pool and matches
/// `spec.loadBalancerIP`; then requested addresses are honoured when in the pool and free;
/// then the rest get the lowest free address, oldest Service first. A full pool leaves a
/// Service [`LbState::Pending`].
pub fn allocate_lb(services: &[Service], pool: Option<Ipv4Net>) -> BTreeMap<String, LbState> {
    let mut out = BTreeMap::new();
    let mut lbs: Vec<&Service> = Vec::new();
    for s in services {
        if s.spec.type_() == "LoadBalancer" {
            lbs.push(s);
        } else {
            out.insert(s.key(), LbState::None);
        }
    }
    lbs.sort_by_key(|s| {
        (
            s.metadata.creation_timestamp.clone().unwrap_or_default(),
            s.key(),
        )
    });
    let Some(pool) = pool else {
        for s in lbs {
            out.insert(
                s.key(),
                LbState::Pending("no LoadBalancer pool is configured".into()),
            );
        }
        return out;
    };
    let in_pool = |ip: Ipv4Addr| pool.contains(&ip) && lb_usable(ip);
    let requested = |s: &Service| -> Option<Result<Ipv4Addr, String>> {
        let r = s
            .spec
            .load_balancer_ip
            .as_deref()
            .filter(|r| !r.is_empty())?;
        Some(r.parse::<Ipv4Addr>().map_err(|_| r.to_string()))
    };
    let mut taken: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    // 1. Keep what is shown.
    for s in &lbs {
        let Some(cur) = s
            .load_balancer_ip()
            .and_then(|i| i.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let matches_request = match requested(s) {
            None => true,
            Some(Ok(r)) => r == cur,
            Some(Err(_)) => false,
        };
        if in_pool(cur) && matches_request && !taken.contains_key(&cur) {
            taken.insert(cur, s.key());
            out.insert(s.key(), LbState::Assigned(cur));
        }
    }
    // 2. Requested addresses.
    for s in &lbs {
        if out.contains_key(&s.key()) {
            continue;
        }
        let state = match requested(s) {
            None => continue,
            Some(Err(r)) => {
                LbState::Pending(format!("spec.loadBalancerIP {r} is not an IPv4 address"))
            }
            Some(Ok(r)) if !in_pool(r) => {
                LbState::Pending(format!("spec.loadBalancerIP {r} is not in the pool {pool}"))
            }
            Some(Ok(r)) => match taken.get(&r) {
                Some(other) => LbState::Pending(format!(
                    "spec.loadBalancerIP {r} is in use by service {other}"
                )),
                None => {
                    taken.insert(r, s.key());
                    LbState::Assigned(r)
                }
            },
        };
        out.insert(s.key(), state);
    }
    // 3. The rest, lowest free address first.
    let mut next = (u32::from(pool.network())..=u32::from(pool.broadcast()))
        .map(Ipv4Addr::from)
        .filter(|ip| lb_usable(*ip) && !taken.contains_key(ip));
    for s in &lbs {
        if out.contains_key(&s.key()) {
            continue;
        }
        let state = match next.next() {
            Some(ip) => LbState::Assigned(ip),
            None => LbState::Pending(format!("no free address in the LoadBalancer pool {pool}")),
        };
        out.insert(s.key(), state);
    }
    out
}

/// The condition a pending LoadBalancer Service carries in `status.conditions`.
pub const CONDITION_LB_PENDING: &str = "flatnet.io/LoadBalancerPending";

/// The Service status for `state`, from the current one (other conditions kept; our condition's
/// lastTransitionTime kept while its message stays).
pub fn lb_status(cur: Option<&Value>, state: &LbState, now: &str) -> Value {
    let mut status = match cur {
        Some(Value::Object(m)) => Value::Object(m.clone()),
        _ => json!({}),
    };
    status["loadBalancer"] = match state {
        LbState::Assigned(ip) => json!({"ingress": [{"ip": ip.to_string(), "ipMode": "VIP"}]}),
        _ => json!({}),
    };
    let mut conditions: Vec<Value> = status
        .get("conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let old = conditions
        .iter()
        .find(|c| c["type"] == CONDITION_LB_PENDING)
        .cloned();
    conditions.retain(|c| c["type"] != CONDITION_LB_PENDING);
    if let LbState::Pending(msg) = state {
        let since = old
            .filter(|o| o["message"] == msg.as_str())
            .and_then(|o| o.get("lastTransitionTime").cloned())
            .unwrap_or_else(|| json!(now));
        conditions.push(json!({
            "type": CONDITION_LB_PENDING,
            "status": "True",
            "reason": "NoAddress",
            "message": msg,
            "lastTransitionTime": since,
        }));
    }
    if let Some(m) = status.as_object_mut() {
        if conditions.is_empty() {
            m.remove("conditions");
        } else {
            m.insert("conditions".into(), Value::Array(conditions));
        }
    }
    status
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests;
