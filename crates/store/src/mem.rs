//! [`MemStore`]: an in-memory [`Store`] with etcd's semantics, for unit tests.
//!
//! One mutex guards the whole state; it is never held across an `.await`. Every change is kept
//! in a history until [`MemStore::compact`], so watches can start from any live revision.
//! Watch tasks are woken through a `tokio::sync::watch` channel carrying the revision.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::{KeyValue, Store, StoreError, WATCH_BUFFER, WatchEvent, WatchReceiver};

/// How often the background reaper looks for expired leases.
const REAP_INTERVAL: Duration = Duration::from_millis(100);

/// In-memory [`Store`]. Clones share one state.
///
/// Leases expire by `tokio::time` (checked on every call and by a background task started with
/// the first lease), or at once with [`MemStore::expire_leases_now`]. [`MemStore::compact`]
/// drops history so old watches get [`StoreError::Compacted`]; [`MemStore::set_available`]
/// simulates an etcd outage.
#[derive(Clone, Default)]
pub struct MemStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.inner.lock();
        f.debug_struct("MemStore")
            .field("revision", &st.revision)
            .field("compacted", &st.compacted)
            .field("keys", &st.kvs.len())
            .field("leases", &st.leases.len())
            .field("available", &st.available)
            .finish()
    }
}

struct Inner {
    state: Mutex<State>,
    /// Latest revision (bumped also on outages and compactions to wake watchers).
    wake: watch::Sender<i64>,
    reaper_running: AtomicBool,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            state: Mutex::new(State::default()),
            wake: watch::Sender::new(0),
            reaper_running: AtomicBool::new(false),
        }
    }
}

struct State {
    revision: i64,
    /// History before this revision is gone.
    compacted: i64,
    kvs: BTreeMap<String, KeyValue>,
    history: Vec<WatchEvent>,
    leases: HashMap<i64, Lease>,
    next_lease: i64,
    available: bool,
}

impl Default for State {
    fn default() -> Self {
        State {
            revision: 1, // etcd starts at 1 too
            compacted: 0,
            kvs: BTreeMap::new(),
            history: Vec::new(),
            leases: HashMap::new(),
            next_lease: 0x1000,
            available: true,
        }
    }
}

struct Lease {
    ttl: i64,
    deadline: Instant,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters to a test fake, so keep going with the data as it is.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Lock, expire due leases, and fail if the store is "down".
    fn lock_available(&self, op: &str, key: &str) -> Result<MutexGuard<'_, State>, StoreError> {
        let mut st = self.lock();
        if !st.available {
            return Err(StoreError::Unavailable(format!(
                "{op} {key}: memory store set unavailable"
            )));
        }
        if st.expire_due(Instant::now()) {
            self.wake.send_replace(st.revision);
        }
        Ok(st)
    }

    fn notify(&self, st: &State) {
        self.wake.send_replace(st.revision);
    }
}

impl State {
    fn put_kv(&mut self, key: &str, value: Vec<u8>, lease: i64) -> i64 {
        self.revision += 1;
        let rev = self.revision;
        let create_revision = self.kvs.get(key).map_or(rev, |kv| kv.create_revision);
        let kv = KeyValue {
            key: key.to_owned(),
            value,
            mod_revision: rev,
            create_revision,
            lease,
        };
        self.kvs.insert(key.to_owned(), kv.clone());
        self.history.push(WatchEvent::Put(kv));
        rev
    }

    /// Delete all `keys` in one revision (no revision when none exist); returns how many.
    fn delete_keys(&mut self, keys: Vec<String>) -> u64 {
        let present: Vec<String> = keys
            .into_iter()
            .filter(|k| self.kvs.contains_key(k))
            .collect();
        if present.is_empty() {
            return 0;
        }
        self.revision += 1;
        for key in &present {
            self.kvs.remove(key);
            self.history.push(WatchEvent::Delete {
                key: key.clone(),
                mod_revision: self.revision,
            });
        }
        present.len() as u64
    }

    fn keys_with_lease(&self, lease: i64) -> Vec<String> {
        self.kvs
            .values()
            .filter(|kv| kv.lease == lease)
            .map(|kv| kv.key.clone())
            .collect()
    }

    /// Remove `lease` and its keys; true if a key went away.
    fn expire(&mut self, lease: i64) -> bool {
        if self.leases.remove(&lease).is_none() {
            return false;
        }
        let keys = self.keys_with_lease(lease);
        self.delete_keys(keys) > 0
    }

    fn expire_due(&mut self, now: Instant) -> bool {
        let mut due: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        due.sort_unstable();
        let mut changed = false;
        for id in due {
            tracing::debug!(lease = id, "memory store lease expired");
            changed |= self.expire(id);
        }
        changed
    }
}

fn require_key(op: &str, key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::Invalid(format!("{op}: empty key")));
    }
    Ok(())
}

impl MemStore {
    /// An empty store at revision 1, as a new etcd starts.
    pub fn new() -> Self {
        Self::default()
    }

    /// Drop history before `revision`, as etcd compaction does: a watch from an older revision
    /// ends with [`StoreError::Compacted`]. Compacting the future is [`StoreError::Invalid`].
    pub fn compact(&self, revision: i64) -> Result<(), StoreError> {
        let mut st = self.inner.lock();
        if revision > st.revision {
            return Err(StoreError::Invalid(format!(
                "compact to revision {revision}: current revision is {}",
                st.revision
            )));
        }
        if revision > st.compacted {
            st.compacted = revision;
            st.history.retain(|ev| ev.mod_revision() >= revision);
        }
        Ok(())
    }

    /// Expire every lease now, deleting the attached keys (one revision per lease).
    pub fn expire_leases_now(&self) {
        let mut st = self.inner.lock();
        let mut ids: Vec<i64> = st.leases.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            st.expire(id);
        }
        self.inner.notify(&st);
    }

    /// Expire one lease now; false if it did not exist.
    pub fn expire_lease(&self, lease: i64) -> bool {
        let mut st = self.inner.lock();
        let existed = st.leases.contains_key(&lease);
        st.expire(lease);
        self.inner.notify(&st);
        existed
    }

    /// Simulate an outage: while false every call returns [`StoreError::Unavailable`] and
    /// running watches end with it. Leases do not expire while down (nothing checks them).
    pub fn set_available(&self, available: bool) {
        let mut st = self.inner.lock();
        st.available = available;
        if available {
            // etcd's lessor renews every lease on leader change; do the same after an outage.
            let now = Instant::now();
            for lease in st.leases.values_mut() {
                lease.deadline = now + Duration::from_secs(lease.ttl.unsigned_abs());
            }
        }
        self.inner.notify(&st);
    }

    /// Oldest revision a watch can still start from.
    pub fn compacted_revision(&self) -> i64 {
        self.inner.lock().compacted
    }

    fn start_reaper(&self) {
        if self.inner.reaper_running.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(reap(weak));
    }
}

/// Background lease expiry; exits when the store is dropped. Clears `reaper_running` however it
/// ends (also when its runtime shuts down) so a later lease starts a new one.
async fn reap(weak: Weak<Inner>) {
    struct Running(Weak<Inner>);
    impl Drop for Running {
        fn drop(&mut self) {
            if let Some(inner) = self.0.upgrade() {
                inner.reaper_running.store(false, Ordering::SeqCst);
            }
        }
    }
    let _running = Running(weak.clone());
    loop {
        tokio::time::sleep(REAP_INTERVAL).await;
        let Some(inner) = weak.upgrade() else { return };
        let mut st = inner.lock();
        if st.available && st.expire_due(Instant::now()) {
            inner.notify(&st);
        }
    }
}

impl Store for MemStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        require_key("get", key)?;
        let st = self.inner.lock_available("get", key)?;
        Ok(st.kvs.get(key).cloned())
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), StoreError> {
        let st = self.inner.lock_available("list", prefix)?;
        let kvs = st
            .kvs
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, kv)| kv.clone())
            .collect();
        Ok((kvs, st.revision))
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<i64, StoreError> {
        require_key("put", key)?;
        let mut st = self.inner.lock_available("put", key)?;
        let rev = st.put_kv(key, value, 0);
        self.inner.notify(&st);
        Ok(rev)
    }

    async fn put_if(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_mod_revision: i64,
    ) -> Result<i64, StoreError> {
        require_key("put_if", key)?;
        let mut st = self.inner.lock_available("put_if", key)?;
        let current = st.kvs.get(key).map_or(0, |kv| kv.mod_revision);
        if current != expected_mod_revision {
            return Err(StoreError::Conflict {
                key: key.to_owned(),
            });
        }
        let rev = st.put_kv(key, value, 0);
        self.inner.notify(&st);
        Ok(rev)
    }

    async fn create(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<bool, StoreError> {
        require_key("create", key)?;
        let mut st = self.inner.lock_available("create", key)?;
        if st.kvs.contains_key(key) {
            return Ok(false);
        }
        if lease != 0 && !st.leases.contains_key(&lease) {
            return Err(StoreError::Invalid(format!(
                "create {key}: lease {lease:x} not found"
            )));
        }
        st.put_kv(key, value, lease);
        self.inner.notify(&st);
        Ok(true)
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        require_key("delete", key)?;
        let mut st = self.inner.lock_available("delete", key)?;
        let deleted = st.delete_keys(vec![key.to_owned()]) > 0;
        self.inner.notify(&st);
        Ok(deleted)
    }

    async fn delete_if(&self, key: &str, expected_mod_revision: i64) -> Result<i64, StoreError> {
        require_key("delete_if", key)?;
        let mut st = self.inner.lock_available("delete_if", key)?;
        match st.kvs.get(key) {
            Some(kv) if kv.mod_revision == expected_mod_revision => {}
            _ => {
                return Err(StoreError::Conflict {
                    key: key.to_owned(),
                });
            }
        }
        st.delete_keys(vec![key.to_owned()]);
        let rev = st.revision;
        self.inner.notify(&st);
        Ok(rev)
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        let mut st = self.inner.lock_available("delete_prefix", prefix)?;
        let keys = st
            .kvs
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect();
        let n = st.delete_keys(keys);
        self.inner.notify(&st);
        Ok(n)
    }

    async fn grant_lease(&self, ttl_secs: i64) -> Result<i64, StoreError> {
        if ttl_secs <= 0 {
            return Err(StoreError::Invalid(format!(
                "grant lease: ttl {ttl_secs}s is not positive"
            )));
        }
        let id = {
            let mut st = self.inner.lock_available("grant_lease", "")?;
            st.next_lease += 1;
            let id = st.next_lease;
            let deadline = Instant::now() + Duration::from_secs(ttl_secs.unsigned_abs());
            st.leases.insert(
                id,
                Lease {
                    ttl: ttl_secs,
                    deadline,
                },
            );
            id
        };
        self.start_reaper();
        Ok(id)
    }

    async fn keep_alive_once(&self, lease: i64) -> Result<i64, StoreError> {
        let mut st = self
            .inner
            .lock_available("keep_alive", &format!("lease {lease:x}"))?;
        let Some(l) = st.leases.get_mut(&lease) else {
            return Ok(0);
        };
        l.deadline = Instant::now() + Duration::from_secs(l.ttl.unsigned_abs());
        Ok(l.ttl)
    }

    async fn lease_ttl(&self, lease: i64) -> Result<(i64, i64), StoreError> {
        let st = self
            .inner
            .lock_available("lease_ttl", &format!("lease {lease:x}"))?;
        Ok(st.leases.get(&lease).map_or((0, 0), |l| {
            let left = l
                .deadline
                .saturating_duration_since(Instant::now())
                .as_secs() as i64;
            (left, l.ttl)
        }))
    }

    async fn revoke_lease(&self, lease: i64) -> Result<(), StoreError> {
        let mut st = self
            .inner
            .lock_available("revoke_lease", &format!("lease {lease:x}"))?;
        st.expire(lease);
        self.inner.notify(&st);
        Ok(())
    }

    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchReceiver, StoreError> {
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let mut wake = self.inner.wake.subscribe();
        let next = {
            let st = self.inner.lock_available("watch", prefix)?;
            if from_revision <= 0 {
                st.revision + 1
            } else {
                from_revision
            }
        };
        let inner = Arc::clone(&self.inner);
        let prefix = prefix.to_owned();
        tokio::spawn(async move {
            let mut next = next;
            loop {
                // Mark seen before reading the state, so a change made after the read wakes us.
                wake.borrow_and_update();
                let (events, end) = {
                    let st = inner.lock();
                    if !st.available {
                        let msg = format!("watch {prefix}: memory store set unavailable");
                        (Vec::new(), Some(StoreError::Unavailable(msg)))
                    } else if next < st.compacted {
                        let end = StoreError::Compacted {
                            revision: st.compacted,
                        };
                        (Vec::new(), Some(end))
                    } else {
                        let start = st.history.partition_point(|ev| ev.mod_revision() < next);
                        let events: Vec<WatchEvent> = st.history[start..]
                            .iter()
                            .filter(|ev| ev.key().starts_with(prefix.as_str()))
                            .cloned()
                            .collect();
                        next = next.max(st.revision + 1);
                        (events, None)
                    }
                };
                for ev in events {
                    if tx.send(Ok(ev)).await.is_err() {
                        return;
                    }
                }
                if let Some(end) = end {
                    let _ = tx.send(Err(end)).await;
                    return;
                }
                tokio::select! {
                    () = tx.closed() => return,
                    changed = wake.changed() => if changed.is_err() { return },
                }
            }
        });
        Ok(rx)
    }

    async fn revision(&self) -> Result<i64, StoreError> {
        let st = self.inner.lock_available("revision", "")?;
        Ok(st.revision)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    async fn next_event(rx: &mut WatchReceiver) -> Result<WatchEvent, StoreError> {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("watch event within 5s")
            .expect("watch stream still open")
    }

    #[tokio::test]
    async fn create_is_if_absent_and_keeps_the_first_value() {
        let s = MemStore::new();
        assert!(s.create("subnets/a", b"n1".to_vec(), 0).await.unwrap());
        assert!(!s.create("subnets/a", b"n2".to_vec(), 0).await.unwrap());
        assert_eq!(s.get("subnets/a").await.unwrap().unwrap().value, b"n1");
    }

    #[tokio::test]
    async fn create_with_unknown_lease_is_invalid() {
        let s = MemStore::new();
        let err = s.create("k", vec![], 42).await.unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
        assert_eq!(s.get("k").await.unwrap(), None);
    }

    #[tokio::test]
    async fn revisions_follow_etcd_rules() {
        let s = MemStore::new();
        let r0 = s.revision().await.unwrap();
        let r1 = s.put("a/1", vec![1]).await.unwrap();
        let r2 = s.put("a/1", vec![2]).await.unwrap();
        assert_eq!((r1, r2), (r0 + 1, r0 + 2));
        let kv = s.get("a/1").await.unwrap().unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision), (r1, r2));
        // deleting nothing is not a write
        assert!(!s.delete("missing").await.unwrap());
        assert_eq!(s.revision().await.unwrap(), r2);
        s.put("a/2", vec![]).await.unwrap();
        assert_eq!(s.delete_prefix("a/").await.unwrap(), 2);
        assert_eq!(
            s.revision().await.unwrap(),
            r2 + 2,
            "delete_prefix is one revision"
        );
    }

    #[tokio::test]
    async fn lease_expires_by_time_and_watch_sees_the_delete() {
        let s = MemStore::new();
        let lease = s.grant_lease(1).await.unwrap();
        assert!(s.create("subnets/x", vec![], lease).await.unwrap());
        let mut w = s.watch("subnets/", 0).await.unwrap();
        // No other calls: the background reaper must do it.
        match next_event(&mut w).await.unwrap() {
            WatchEvent::Delete { key, .. } => assert_eq!(key, "subnets/x"),
            other => panic!("expected delete, got {other:?}"),
        }
        assert_eq!(s.keep_alive_once(lease).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn keep_alive_postpones_expiry() {
        let s = MemStore::new();
        let lease = s.grant_lease(1).await.unwrap();
        s.create("k", vec![], lease).await.unwrap();
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            assert_eq!(s.keep_alive_once(lease).await.unwrap(), 1);
        }
        assert!(s.get("k").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn outage_fails_calls_and_ends_watches() {
        let s = MemStore::new();
        let mut w = s.watch("", 0).await.unwrap();
        s.set_available(false);
        assert!(matches!(
            s.put("k", vec![]).await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            next_event(&mut w).await,
            Err(StoreError::Unavailable(_))
        ));
        s.set_available(true);
        s.put("k", vec![]).await.unwrap();
    }

    #[tokio::test]
    async fn compacting_the_future_is_invalid() {
        let s = MemStore::new();
        let rev = s.revision().await.unwrap();
        assert!(matches!(s.compact(rev + 1), Err(StoreError::Invalid(_))));
        s.compact(rev).unwrap();
        assert_eq!(s.compacted_revision(), rev);
    }
}
