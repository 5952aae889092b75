//! The cluster store (design.md §4): one [`Store`] trait over etcd v3, implemented by
//! [`EtcdStore`] (real etcd through `etcd-client`) and [`MemStore`] (in-memory fake with the
//! same revision, lease, watch and compaction semantics, for unit tests), plus
//! [`EtcdProcess`], a loopback etcd server for the lab and integration tests.
//!
//! Keys given to and returned by a store are relative to its prefix (`/flatnet/`); [`keys`]
//! spells the layout. Values are opaque bytes; [`encode`] and [`KeyValue::decode`] do JSON.
//!
//! # Layout
//! - `lib.rs` — [`Store`], [`KeyValue`], [`WatchEvent`], JSON helpers
//! - `error.rs` — [`StoreError`]: unavailable (retry), compacted (relist), conflict, invalid
//! - `contract/` — the typed contract: key names and what each value means (config, subnet
//!   leases, agent status); the engines below never interpret a value
//! - `etcd.rs` — [`EtcdStore`]: timeouts, prefixing, error mapping, watch task
//! - `mem.rs` — [`MemStore`]: the fake, with `compact`, `expire_leases_now`, `set_available`
//! - `process.rs` — [`EtcdProcess`]: start, restart on the same ports, stop, detach
//! - `reflector.rs` — [`reflector::Reflector`]: the one list/watch/relist loop and its
//!   [`reflector::Backoff`]; [`reflector::Batch`]: when a consumer applies its view
//!
//! Apart from `contract`, this crate must not know what the values mean (no Kubernetes or
//! dataplane types); nothing in it retries on its own: it reports [`StoreError::Unavailable`] and the caller decides.

pub mod contract;
mod error;
mod etcd;
mod mem;
mod process;
pub mod reflector;

use std::future::Future;

pub use contract::keys;
pub use error::StoreError;
pub use etcd::{CONNECT_TIMEOUT, EtcdStore, REQUEST_TIMEOUT};
pub use mem::MemStore;
pub use process::{EtcdProcess, START_TIMEOUT, etcd_binary};

/// Receiving end of a watch: events in revision order, then at most one error that ends it.
pub type WatchReceiver = tokio::sync::mpsc::Receiver<Result<WatchEvent, StoreError>>;

/// One key as stored, at the revision it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// Relative to the store prefix.
    pub key: String,
    /// The stored bytes (JSON for every key flatnet writes).
    pub value: Vec<u8>,
    /// Revision of the last write of this key.
    pub mod_revision: i64,
    /// Revision that created this key (since its last deletion).
    pub create_revision: i64,
    /// Lease the key is attached to; 0 for none.
    pub lease: i64,
}

impl KeyValue {
    /// The value as JSON of `T`; [`StoreError::Invalid`] naming the key when it does not parse.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, StoreError> {
        serde_json::from_slice(&self.value)
            .map_err(|e| StoreError::Invalid(format!("decode value of key {}: {e}", self.key)))
    }
}

/// `value` as the JSON bytes to store under `key` (named in the error).
pub fn encode<T: serde::Serialize>(key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value)
        .map_err(|e| StoreError::Invalid(format!("encode value of key {key}: {e}")))
}

/// A change to one key, as a watch reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The key was created or changed; its new value.
    Put(KeyValue),
    /// The key was deleted (or its lease expired).
    Delete {
        /// The key, relative to the store prefix.
        key: String,
        /// Revision of the deletion.
        mod_revision: i64,
    },
}

impl WatchEvent {
    /// The key that changed, relative to the store prefix.
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }

    /// Revision of the change; resume a broken watch from this plus one.
    pub fn mod_revision(&self) -> i64 {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// The cluster store. Every write bumps the store revision by one (a `delete_prefix` or a lease
/// expiry removing many keys is one write); reads report revisions so watches can resume.
pub trait Store: Send + Sync + Clone + 'static {
    /// One key; `Ok(None)` when it does not exist.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<KeyValue>, StoreError>> + Send;

    /// Every key under `prefix`, sorted by key, and the store revision the listing was read at
    /// (watch from that plus one to see every later change).
    fn list(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<(Vec<KeyValue>, i64), StoreError>> + Send;

    /// Unconditional write, detaching any lease; returns the new revision.
    fn put(
        &self,
        key: &str,
        value: Vec<u8>,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Write only if the key's mod_revision equals `expected_mod_revision` (0: the key must not
    /// exist); [`StoreError::Conflict`] otherwise. Returns the new revision.
    fn put_if(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_mod_revision: i64,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Create-if-absent in one transaction, attached to `lease` (0: none). Ok(true) if this call
    /// created the key, Ok(false) if it already existed (left untouched).
    fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Ok(true) if the key existed.
    fn delete(&self, key: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Delete only if the key's mod_revision equals `expected_mod_revision` (the value the
    /// caller read is still the stored one); [`StoreError::Conflict`] otherwise, also when the
    /// key is gone. Returns the new revision.
    fn delete_if(
        &self,
        key: &str,
        expected_mod_revision: i64,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Number of keys deleted.
    fn delete_prefix(&self, prefix: &str) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// A new lease; etcd may round `ttl_secs` up to its minimum.
    fn grant_lease(&self, ttl_secs: i64) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Renew once; returns the TTL now remaining, <= 0 when the lease has already expired.
    fn keep_alive_once(&self, lease: i64) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// (remaining TTL, granted TTL) of a lease in seconds; remaining <= 0 when it is gone.
    fn lease_ttl(&self, lease: i64) -> impl Future<Output = Result<(i64, i64), StoreError>> + Send;

    /// Revoke and delete its keys; revoking an unknown or expired lease is Ok.
    fn revoke_lease(&self, lease: i64) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Events for keys under `prefix` with mod_revision >= `from_revision` (<= 0: from now on),
    /// in order. The stream ends with `Err(Compacted)` when `from_revision` is no longer
    /// available (relist) or `Err(Unavailable)` when the watch breaks (rewatch from the last
    /// seen revision plus one); the caller owns recovery. Dropping the receiver cancels it.
    fn watch(
        &self,
        prefix: &str,
        from_revision: i64,
    ) -> impl Future<Output = Result<WatchReceiver, StoreError>> + Send;

    /// The current store revision.
    fn revision(&self) -> impl Future<Output = Result<i64, StoreError>> + Send;
}

/// Capacity of the channel behind a [`WatchReceiver`]; a slow reader stalls its own watch only.
pub(crate) const WATCH_BUFFER: usize = 256;

/// First key after every key starting with `prefix` (etcd's range end for a prefix);
/// `[0]` (to the end of the keyspace) when no such key exists.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte_and_carries_over_ff() {
        assert_eq!(prefix_end(b"/flatnet/"), b"/flatnet0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn decode_error_names_the_key() {
        let kv = KeyValue {
            key: "config".into(),
            value: b"{not json".to_vec(),
            mod_revision: 1,
            create_revision: 1,
            lease: 0,
        };
        let err = kv.decode::<serde_json::Value>().unwrap_err();
        assert!(err.to_string().contains("config"), "{err}");
        assert!(matches!(err, StoreError::Invalid(_)));
    }
}
