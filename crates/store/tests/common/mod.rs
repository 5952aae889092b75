//! The behaviour suite every [`Store`] must pass, run against [`store::MemStore`] in
//! `mem_store.rs` and against a real etcd in `etcd_store.rs`.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::future::Future;
use std::time::Duration;

use store::{KeyValue, Store, StoreError, WatchEvent, WatchReceiver};
#[allow(unused_imports)] // only the etcd suite uses these
pub use testkit::{TempDir, start_etcd};

/// Every wait in these tests ends by this.
pub const WAIT: Duration = Duration::from_secs(15);

/// What differs between implementations: how to compact and how to make leases run out.
pub trait Harness {
    type S: Store;
    fn store(&self) -> &Self::S;
    fn compact(&self, revision: i64) -> impl Future<Output = ()>;
    /// Make every lease of at most `ttl` seconds expire (or at least start waiting for it).
    fn expire_leases(&self) -> impl Future<Output = ()>;
}

pub async fn next_event(rx: &mut WatchReceiver) -> Result<WatchEvent, StoreError> {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("watch reports something within the wait")
        .expect("watch stream ends with an error, never silently")
}

pub async fn next_ok(rx: &mut WatchReceiver) -> WatchEvent {
    next_event(rx).await.expect("a watch event, not an error")
}

fn put_of(ev: WatchEvent) -> KeyValue {
    match ev {
        WatchEvent::Put(kv) => kv,
        other => panic!("expected a put, got {other:?}"),
    }
}

/// Poll `get(key)` until it is absent.
async fn wait_gone<S: Store>(s: &S, key: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while s.get(key).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} still present after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn create_is_if_absent<H: Harness>(h: &H) {
    let s = h.store();
    assert!(
        s.create("subnets/10.244.1.0-24", b"n1".to_vec(), 0)
            .await
            .unwrap()
    );
    assert!(
        !s.create("subnets/10.244.1.0-24", b"n2".to_vec(), 0)
            .await
            .unwrap()
    );
    let kv = s.get("subnets/10.244.1.0-24").await.unwrap().unwrap();
    assert_eq!(kv.value, b"n1");
    assert_eq!(
        kv.key, "subnets/10.244.1.0-24",
        "keys come back relative to the prefix"
    );
    assert_eq!(kv.create_revision, kv.mod_revision);
    assert_eq!(kv.lease, 0);
}

pub async fn concurrent_creates_exactly_one_wins<H: Harness>(h: &H) {
    let s = h.store();
    let tasks: Vec<_> = (0..8u8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { (i, s.create("subnets/race", vec![i], 0).await.unwrap()) })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        let (i, won) = t.await.unwrap();
        if won {
            winners.push(i);
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let kv = s.get("subnets/race").await.unwrap().unwrap();
    assert_eq!(
        kv.value,
        vec![winners[0]],
        "the stored value is the winner's"
    );
}

pub async fn put_if_compares_mod_revision<H: Harness>(h: &H) {
    let s = h.store();
    let r1 = s.put_if("config", b"v1".to_vec(), 0).await.unwrap();
    assert_eq!(
        s.put_if("config", b"again".to_vec(), 0).await,
        Err(StoreError::Conflict {
            key: "config".into()
        }),
        "0 means the key must not exist"
    );
    let r2 = s.put_if("config", b"v2".to_vec(), r1).await.unwrap();
    assert!(r2 > r1);
    let err = s.put_if("config", b"stale".to_vec(), r1).await.unwrap_err();
    assert!(
        err.to_string().contains("config"),
        "error names the key: {err}"
    );
    assert!(matches!(
        s.put_if("other", vec![], r2).await,
        Err(StoreError::Conflict { .. })
    ));
    let kv = s.get("config").await.unwrap().unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.mod_revision, kv.create_revision),
        (&b"v2"[..], r2, r1)
    );
}

pub async fn delete_if_compares_mod_revision<H: Harness>(h: &H) {
    let s = h.store();
    let r1 = s.put("pod", b"v1".to_vec()).await.unwrap();
    let r2 = s.put("pod", b"v2".to_vec()).await.unwrap();
    let conflict = Err(StoreError::Conflict { key: "pod".into() });
    assert_eq!(
        s.delete_if("pod", r1).await,
        conflict,
        "a stale read deletes nothing"
    );
    assert_eq!(
        s.delete_if("pod", 0).await,
        conflict,
        "0 never matches a present key"
    );
    assert!(s.get("pod").await.unwrap().is_some());
    let r3 = s.delete_if("pod", r2).await.unwrap();
    assert!(r3 > r2);
    assert!(s.get("pod").await.unwrap().is_none());
    assert_eq!(
        s.delete_if("pod", r2).await,
        conflict,
        "a missing key is a conflict"
    );
    assert_eq!(
        s.delete_if("never", 0).await,
        Err(StoreError::Conflict {
            key: "never".into()
        })
    );
}

pub async fn revisions_count_writes<H: Harness>(h: &H) {
    let s = h.store();
    let r0 = s.revision().await.unwrap();
    let r1 = s.put("a", vec![]).await.unwrap();
    assert_eq!(r1, r0 + 1);
    assert!(!s.delete("never-existed").await.unwrap());
    assert_eq!(
        s.revision().await.unwrap(),
        r1,
        "deleting nothing is no write"
    );
    assert!(s.delete("a").await.unwrap());
    assert_eq!(s.revision().await.unwrap(), r1 + 1);
}

pub async fn list_is_sorted_and_limited_to_the_prefix<H: Harness>(h: &H) {
    let s = h.store();
    for key in [
        "objects/pods/ns/b",
        "objects/pods/ns/a",
        "objects/podsx/ns/c",
        "objects/nodes/_/n",
    ] {
        s.put(key, key.as_bytes().to_vec()).await.unwrap();
    }
    let last = s.put("objects/pods/ns/c", vec![]).await.unwrap();
    let (kvs, rev) = s.list("objects/pods/").await.unwrap();
    let keys: Vec<&str> = kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "objects/pods/ns/a",
            "objects/pods/ns/b",
            "objects/pods/ns/c"
        ]
    );
    assert_eq!(rev, last, "listing revision is the store revision");
    let (all, _) = s.list("").await.unwrap();
    assert_eq!(all.len(), 5);
    let (none, _) = s.list("nothing/").await.unwrap();
    assert!(none.is_empty());
}

pub async fn list_pages_through_many_keys<H: Harness>(h: &H) {
    let s = h.store();
    for i in 0..1200 {
        s.put(&format!("objects/endpoints/ns/e{i:04}"), vec![0; 16])
            .await
            .unwrap();
    }
    let (kvs, _) = s.list("objects/endpoints/").await.unwrap();
    assert_eq!(kvs.len(), 1200);
    assert!(
        kvs.windows(2).all(|w| w[0].key < w[1].key),
        "sorted, no duplicates"
    );
}

pub async fn delete_prefix_removes_only_the_prefix<H: Harness>(h: &H) {
    let s = h.store();
    for key in ["agents/n1", "agents/n2", "agentsx", "config"] {
        s.put(key, vec![]).await.unwrap();
    }
    let before = s.revision().await.unwrap();
    assert_eq!(s.delete_prefix("agents/").await.unwrap(), 2);
    assert_eq!(
        s.revision().await.unwrap(),
        before + 1,
        "one write for the whole prefix"
    );
    assert_eq!(s.delete_prefix("agents/").await.unwrap(), 0);
    let (left, _) = s.list("").await.unwrap();
    let keys: Vec<&str> = left.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["agentsx", "config"]);
}

pub async fn empty_key_is_invalid<H: Harness>(h: &H) {
    let s = h.store();
    assert!(matches!(s.get("").await, Err(StoreError::Invalid(_))));
    assert!(matches!(
        s.put("", vec![]).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        s.grant_lease(0).await,
        Err(StoreError::Invalid(_))
    ));
}

pub async fn lease_expiry_deletes_the_key<H: Harness>(h: &H) {
    let s = h.store();
    let lease = s.grant_lease(1).await.unwrap();
    assert!(
        s.create("subnets/10.244.2.0-24", b"n2".to_vec(), lease)
            .await
            .unwrap()
    );
    s.put("config", vec![]).await.unwrap();
    let kv = s.get("subnets/10.244.2.0-24").await.unwrap().unwrap();
    assert_eq!(kv.lease, lease);
    let mut w = s.watch("subnets/", 0).await.unwrap();
    h.expire_leases().await;
    match next_event(&mut w).await.unwrap() {
        WatchEvent::Delete { key, .. } => assert_eq!(key, "subnets/10.244.2.0-24"),
        other => panic!("expected the lease's key deleted, got {other:?}"),
    }
    wait_gone(s, "subnets/10.244.2.0-24").await;
    assert!(
        s.get("config").await.unwrap().is_some(),
        "keys without the lease stay"
    );
    assert!(
        s.keep_alive_once(lease).await.unwrap() <= 0,
        "expired lease reports ttl <= 0"
    );
    // the subnet is free again
    let lease2 = s.grant_lease(30).await.unwrap();
    assert!(
        s.create("subnets/10.244.2.0-24", b"n3".to_vec(), lease2)
            .await
            .unwrap()
    );
    s.revoke_lease(lease2).await.unwrap();
}

pub async fn keep_alive_and_revoke<H: Harness>(h: &H) {
    let s = h.store();
    let lease = s.grant_lease(30).await.unwrap();
    assert!(s.create("subnets/k", vec![], lease).await.unwrap());
    let ttl = s.keep_alive_once(lease).await.unwrap();
    assert!(ttl > 0 && ttl <= 30, "ttl {ttl}");
    s.revoke_lease(lease).await.unwrap();
    assert_eq!(
        s.get("subnets/k").await.unwrap(),
        None,
        "revoking deletes the lease's keys"
    );
    s.revoke_lease(lease).await.expect("revoking again is fine");
    assert!(s.keep_alive_once(lease).await.unwrap() <= 0);
    assert!(matches!(
        s.create("subnets/k", vec![], lease).await,
        Err(StoreError::Invalid(_))
    ));
}

pub async fn lease_ttl_reports_remaining_and_granted<H: Harness>(h: &H) {
    let s = h.store();
    let lease = s.grant_lease(30).await.unwrap();
    let (left, granted) = s.lease_ttl(lease).await.unwrap();
    assert_eq!(granted, 30);
    assert!(left > 0 && left <= 30, "remaining {left}");
    s.revoke_lease(lease).await.unwrap();
    let (left, _) = s.lease_ttl(lease).await.unwrap();
    assert!(left <= 0, "a revoked lease has no time left: {left}");
}

pub async fn put_detaches_the_lease<H: Harness>(h: &H) {
    let s = h.store();
    let lease = s.grant_lease(30).await.unwrap();
    s.create("agents/n1", vec![1], lease).await.unwrap();
    s.put("agents/n1", vec![2]).await.unwrap();
    assert_eq!(s.get("agents/n1").await.unwrap().unwrap().lease, 0);
    s.revoke_lease(lease).await.unwrap();
    assert!(s.get("agents/n1").await.unwrap().is_some());
}

pub async fn watch_resumes_from_a_revision<H: Harness>(h: &H) {
    let s = h.store();
    let r1 = s.put("objects/pods/ns/a", b"1".to_vec()).await.unwrap();
    let r2 = s.put("objects/pods/ns/a", b"2".to_vec()).await.unwrap();
    s.put("config", b"not watched".to_vec()).await.unwrap();
    assert!(s.delete("objects/pods/ns/a").await.unwrap());
    let r4 = s.revision().await.unwrap();

    let mut w = s.watch("objects/pods/", r2).await.unwrap();
    let kv = put_of(next_ok(&mut w).await);
    assert_eq!(
        (kv.key.as_str(), kv.value.as_slice(), kv.mod_revision),
        ("objects/pods/ns/a", &b"2"[..], r2)
    );
    assert_eq!(kv.create_revision, r1);
    assert_eq!(
        next_ok(&mut w).await,
        WatchEvent::Delete {
            key: "objects/pods/ns/a".into(),
            mod_revision: r4
        }
    );
    // then live changes, in order
    let r5 = s.put("objects/pods/ns/b", b"live".to_vec()).await.unwrap();
    let r6 = s.put("objects/pods/ns/c", b"live".to_vec()).await.unwrap();
    assert_eq!(next_ok(&mut w).await.mod_revision(), r5);
    assert_eq!(next_ok(&mut w).await.mod_revision(), r6);
}

pub async fn watch_from_now_sees_only_later_changes<H: Harness>(h: &H) {
    let s = h.store();
    s.put("agents/old", vec![]).await.unwrap();
    let mut w = s.watch("agents/", 0).await.unwrap();
    s.put("objects/x/_/y", vec![]).await.unwrap();
    let r = s.put("agents/new", vec![]).await.unwrap();
    let ev = next_ok(&mut w).await;
    assert_eq!((ev.key(), ev.mod_revision()), ("agents/new", r));
}

pub async fn watch_after_list_misses_nothing<H: Harness>(h: &H) {
    let s = h.store();
    s.put("objects/svc/ns/a", vec![]).await.unwrap();
    let (kvs, rev) = s.list("objects/svc/").await.unwrap();
    assert_eq!(kvs.len(), 1);
    let r = s.put("objects/svc/ns/b", vec![]).await.unwrap();
    let mut w = s.watch("objects/svc/", rev + 1).await.unwrap();
    let ev = next_ok(&mut w).await;
    assert_eq!((ev.key(), ev.mod_revision()), ("objects/svc/ns/b", r));
}

pub async fn watch_on_a_compacted_revision_yields_compacted<H: Harness>(h: &H) {
    let s = h.store();
    let r1 = s.put("objects/pods/ns/a", b"1".to_vec()).await.unwrap();
    s.put("objects/pods/ns/a", b"2".to_vec()).await.unwrap();
    let r3 = s.put("objects/pods/ns/a", b"3".to_vec()).await.unwrap();
    h.compact(r3).await;
    let mut w = s.watch("objects/pods/", r1).await.unwrap();
    match next_event(&mut w).await {
        Err(StoreError::Compacted { revision }) => assert_eq!(revision, r3),
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(WAIT, w.recv())
            .await
            .unwrap()
            .is_none(),
        "the stream ends after Compacted"
    );
    // the remedy works: relist, watch from the listing
    let (kvs, rev) = s.list("objects/pods/").await.unwrap();
    assert_eq!(kvs[0].value, b"3");
    let mut w = s.watch("objects/pods/", rev + 1).await.unwrap();
    let r4 = s.put("objects/pods/ns/a", b"4".to_vec()).await.unwrap();
    assert_eq!(next_ok(&mut w).await.mod_revision(), r4);
}

pub async fn dropping_the_receiver_cancels_the_watch<H: Harness>(h: &H) {
    let s = h.store();
    let w = s.watch("", 0).await.unwrap();
    drop(w);
    // nothing to observe directly; the store must keep working and not block on the dead watch
    for i in 0..300u32 {
        s.put("objects/x/_/y", i.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
}

/// Run each suite function in its own test, with a fresh harness from `$make`.
#[macro_export]
macro_rules! store_suite {
    ($make:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let Some(harness) = $make(stringify!($name)).await else { return };
                common::$name(&harness).await;
            }
        )*
    };
}
