//! The typed store contract (design.md §4): every key flatnet writes and what its value means.
//! Nothing outside this module spells a key prefix or reads a value as untyped JSON.
//!
//! # Layout
//! - `keys.rs` — key names: objects, `config`, `subnets/`, `agents/`
//! - `config.rs` — [`NetworkConfig`], the value of `config`
//! - `lease.rs` — [`Lease`], [`LeaseAttrs`], [`Backend`], [`Mac`]: the values of `subnets/`
//! - `status.rs` — [`AgentStatus`] and its parts, the value of `agents/<node>`; [`Report`]
//! - here — typed reads and writes of those keys

pub mod keys;

mod config;
mod lease;
mod status;

pub use config::{InvalidConfig, NetworkConfig};
pub use lease::{
    Backend, Lease, LeaseAttrs, Mac, VXLAN_OVERHEAD, VXLAN_VNI, decode_leases, key_cidr,
};
pub use status::{AGENT_STALE_SECS, AgentStatus, PolicyStatus, ProxyStatus, Report, RoutesStatus};

use std::collections::BTreeMap;

use crate::{Store, StoreError};

/// Why the network config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No `config` key yet.
    #[error("network config (store key config) is not in the store")]
    Missing,
    /// The value does not parse or validate.
    #[error("network config (store key config): {0}")]
    Invalid(#[from] InvalidConfig),
}

/// Reads and validates the network config.
pub async fn read_config<S: Store>(store: &S) -> Result<NetworkConfig, ConfigError> {
    let kv = store.get(keys::CONFIG).await?.ok_or(ConfigError::Missing)?;
    Ok(NetworkConfig::parse(&kv.value)?)
}

/// Writes the network config (validated first).
pub async fn write_config<S: Store>(store: &S, cfg: &NetworkConfig) -> Result<i64, ConfigError> {
    cfg.validate()?;
    let value = crate::encode(keys::CONFIG, cfg)?;
    Ok(store.put(keys::CONFIG, value).await?)
}

/// Writes `agents/<node>`.
pub async fn write_status<S: Store>(store: &S, status: &AgentStatus) -> Result<i64, StoreError> {
    let key = keys::agent(&status.node);
    let value = crate::encode(&key, status)?;
    store.put(&key, value).await
}

/// Every agent's status by node name (the `<node>` of `agents/<node>`), and the store revision
/// read at; a value that does not decode is returned as its error text (naming the key) so
/// callers can show it rather than skip it.
pub async fn read_statuses<S: Store>(
    store: &S,
) -> Result<(BTreeMap<String, Result<AgentStatus, String>>, i64), StoreError> {
    let (kvs, revision) = store.list(keys::AGENTS).await?;
    let statuses = kvs
        .iter()
        .filter_map(|kv| {
            let node = kv.key.strip_prefix(keys::AGENTS)?;
            Some((
                node.to_string(),
                kv.decode::<AgentStatus>().map_err(|e| e.to_string()),
            ))
        })
        .collect();
    Ok((statuses, revision))
}
