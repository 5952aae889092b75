//! The store behaviour suite against a real etcd started by `EtcdProcess`, plus what only a
//! real server can show: restart recovery and detaching. Skips with a notice when etcd cannot
//! start, fails instead under `REQUIRE_NETNS=1`.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::time::{Duration, Instant};

use common::{Harness, TempDir, WAIT, next_event, next_ok, start_etcd};
use store::{EtcdProcess, EtcdStore, Store, StoreError};

const PREFIX: &str = "/flatnet/";

/// Fields drop in order: client, server (killed), then its directory.
struct Etcd {
    store: EtcdStore,
    _process: EtcdProcess,
    _dir: TempDir,
}

impl Harness for Etcd {
    type S = EtcdStore;

    fn store(&self) -> &EtcdStore {
        &self.store
    }

    async fn compact(&self, revision: i64) {
        self.store.compact(revision).await.unwrap();
    }

    async fn expire_leases(&self) {
        // etcd expires leases on its own clock; the suite waits for the effect.
    }
}

async fn etcd(test: &str) -> Option<Etcd> {
    let dir = TempDir::new(test);
    let process = start_etcd(dir.path())?;
    let store = EtcdStore::connect(std::slice::from_ref(&process.endpoint), PREFIX)
        .await
        .unwrap();
    Some(Etcd {
        store,
        _process: process,
        _dir: dir,
    })
}

store_suite!(etcd;
    create_is_if_absent,
    concurrent_creates_exactly_one_wins,
    put_if_compares_mod_revision,
    delete_if_compares_mod_revision,
    revisions_count_writes,
    list_is_sorted_and_limited_to_the_prefix,
    list_pages_through_many_keys,
    delete_prefix_removes_only_the_prefix,
    empty_key_is_invalid,
    lease_expiry_deletes_the_key,
    keep_alive_and_revoke,
    lease_ttl_reports_remaining_and_granted,
    put_detaches_the_lease,
    watch_resumes_from_a_revision,
    watch_from_now_sees_only_later_changes,
    watch_after_list_misses_nothing,
    watch_on_a_compacted_revision_yields_compacted,
    dropping_the_receiver_cancels_the_watch,
);

#[tokio::test]
async fn keys_live_under_the_prefix_and_come_back_relative() {
    let Some(h) = etcd("prefix").await else {
        return;
    };
    h.store.put("config", b"{}".to_vec()).await.unwrap();
    let other = EtcdStore::connect(std::slice::from_ref(&h._process.endpoint), "/other")
        .await
        .unwrap();
    assert_eq!(other.prefix(), "/other/");
    assert_eq!(
        other.get("config").await.unwrap(),
        None,
        "prefixes do not see each other"
    );
    let root = EtcdStore::connect(std::slice::from_ref(&h._process.endpoint), "")
        .await
        .unwrap();
    let (all, _) = root.list("").await.unwrap();
    let keys: Vec<&str> = all.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/flatnet/config"]);
}

#[tokio::test]
async fn connect_to_nothing_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let err = EtcdStore::connect(&[format!("http://127.0.0.1:{port}")], PREFIX)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn client_recovers_after_etcd_restarts() {
    let dir = TempDir::new("restart");
    let Some(mut process) = start_etcd(dir.path()) else {
        return;
    };
    let (client_port, peer_port) = (process.client_port(), process.peer_port());
    let s = EtcdStore::connect(std::slice::from_ref(&process.endpoint), PREFIX)
        .await
        .unwrap();
    let r1 = s.put("config", b"before".to_vec()).await.unwrap();
    let mut w = s.watch("", r1 + 1).await.unwrap();

    process.stop();
    assert!(
        matches!(next_event(&mut w).await, Err(StoreError::Unavailable(_))),
        "a watch breaks with Unavailable when etcd goes away"
    );
    for attempt in 0..2 {
        let started = Instant::now();
        let err = s.get("config").await.unwrap_err();
        assert!(
            matches!(err, StoreError::Unavailable(_)),
            "attempt {attempt}: {err:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "took {:?}",
            started.elapsed()
        );
    }
    assert!(matches!(
        s.put("config", vec![]).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        s.watch("", 0).await,
        Err(StoreError::Unavailable(_))
    ));

    let _process = EtcdProcess::start_on(dir.path(), client_port, peer_port).unwrap();
    let deadline = Instant::now() + WAIT * 2;
    let kv = loop {
        match s.get("config").await {
            Ok(kv) => break kv,
            Err(StoreError::Unavailable(e)) => {
                assert!(
                    Instant::now() < deadline,
                    "still unavailable after restart: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("unexpected error after restart: {e:?}"),
        }
    };
    assert_eq!(kv.unwrap().value, b"before", "data survives the restart");
    // resume the broken watch from where it stopped
    let mut w = s.watch("", r1 + 1).await.unwrap();
    let r2 = s.put("config", b"after".to_vec()).await.unwrap();
    assert_eq!(next_ok(&mut w).await.mod_revision(), r2);
}

#[tokio::test]
async fn detached_server_keeps_running() {
    let dir = TempDir::new("detach");
    let Some(process) = start_etcd(dir.path()) else {
        return;
    };
    let endpoint = process.endpoint.clone();
    let pid = process.detach();
    let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    assert!(proc_dir.exists());
    let alive = EtcdStore::connect(&[endpoint], PREFIX).await.map(|_| ());
    // clean up before asserting so a failure does not leak the server
    let status = std::process::Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status();
    assert!(status.unwrap().success());
    alive.unwrap();
}

#[tokio::test]
async fn watch_outlives_the_request_timeout() {
    let Some(h) = etcd("idle-watch").await else {
        return;
    };
    let mut w = h.store.watch("agents/", 0).await.unwrap();
    tokio::time::sleep(store::REQUEST_TIMEOUT + Duration::from_secs(2)).await;
    let r = h.store.put("agents/n1", vec![]).await.unwrap();
    assert_eq!(
        next_ok(&mut w).await.mod_revision(),
        r,
        "an idle watch is not a slow request"
    );
}
