//! Tier 0: subnet lease acquisition, adoption, expiry and exhaustion against `MemStore`.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;

use routes::LeaseError;
use routes::lease::{self, LeaseRequest};
use store::contract::{Backend, LeaseAttrs, NetworkConfig};
use store::{MemStore, Store, keys};
use testkit::TempDir;

fn net(pod: &str, prefix: u8) -> NetworkConfig {
    NetworkConfig {
        pod_cidr: pod.parse().unwrap(),
        node_prefix_length: prefix,
        service_cidr: None,
        load_balancer_pool: None,
        backend: Backend::Vxlan,
    }
}

fn request(node: &str, host: u8, net: &NetworkConfig, dir: &Path) -> LeaseRequest {
    LeaseRequest {
        net: net.clone(),
        attrs: LeaseAttrs::new(node, Ipv4Addr::new(10, 99, 0, host), net.backend),
        ttl_secs: 30,
        state_dir: dir.join(node),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_started_concurrently_get_different_subnets() {
    let dir = TempDir::new("concurrent");
    let store = MemStore::new();
    let n = net("10.244.0.0/16", 24);
    let tasks: Vec<_> = (1..=8u8)
        .map(|i| {
            let (store, req) = (store.clone(), request(&format!("n{i}"), i, &n, dir.path()));
            tokio::spawn(async move { lease::acquire(&store, &req).await.unwrap() })
        })
        .collect();
    let mut cidrs = BTreeSet::new();
    for t in tasks {
        let held = t.await.unwrap();
        assert!(n.fits(&held.lease.cidr));
        assert!(
            cidrs.insert(held.lease.cidr),
            "{} handed out twice",
            held.lease.cidr
        );
    }
    let (kvs, _) = store.list(keys::SUBNETS).await.unwrap();
    assert_eq!(kvs.len(), 8);
    assert!(
        kvs.iter().all(|kv| kv.lease != 0),
        "every key is attached to a store lease"
    );
}

#[tokio::test]
async fn restart_adopts_the_live_lease_of_the_same_node() {
    let dir = TempDir::new("restart");
    let store = MemStore::new();
    let n = net("10.244.0.0/16", 24);
    let first = lease::acquire(&store, &request("n1", 1, &n, dir.path()))
        .await
        .unwrap();
    let other = lease::acquire(&store, &request("n2", 2, &n, dir.path()))
        .await
        .unwrap();
    assert_ne!(first.lease.cidr, other.lease.cidr);
    let rev = store.revision().await.unwrap();
    // The remembered subnet is removed: adoption works from the store alone.
    std::fs::remove_dir_all(dir.path().join("n1")).unwrap();
    let again = lease::acquire(&store, &request("n1", 1, &n, dir.path()))
        .await
        .unwrap();
    assert_eq!(again, first, "same subnet, same store lease");
    assert_eq!(
        store.revision().await.unwrap(),
        rev,
        "adopting an unchanged lease writes nothing"
    );
}

#[tokio::test]
async fn after_the_lease_expired_a_restart_gets_the_remembered_subnet() {
    let dir = TempDir::new("expired");
    let store = MemStore::new();
    let n = net("10.244.0.0/16", 24);
    let a = lease::acquire(&store, &request("n1", 1, &n, dir.path()))
        .await
        .unwrap();
    let b = lease::acquire(&store, &request("n2", 2, &n, dir.path()))
        .await
        .unwrap();
    store.expire_leases_now();
    assert!(store.list(keys::SUBNETS).await.unwrap().0.is_empty());
    // n2 comes back first: without its state dir it would take n1's (lower) subnet.
    let b2 = lease::acquire(&store, &request("n2", 2, &n, dir.path()))
        .await
        .unwrap();
    let a2 = lease::acquire(&store, &request("n1", 1, &n, dir.path()))
        .await
        .unwrap();
    assert_eq!((a2.lease.cidr, b2.lease.cidr), (a.lease.cidr, b.lease.cidr));
    assert_ne!(b2.lease_id, b.lease_id, "a fresh store lease");
}

#[tokio::test]
async fn exhaustion_names_the_pod_cidr_and_the_number_of_nodes() {
    let dir = TempDir::new("exhausted");
    let store = MemStore::new();
    let n = net("10.244.0.0/29", 30); // two subnets
    lease::acquire(&store, &request("n1", 1, &n, dir.path()))
        .await
        .unwrap();
    lease::acquire(&store, &request("n2", 2, &n, dir.path()))
        .await
        .unwrap();
    let err = lease::acquire(&store, &request("n3", 3, &n, dir.path()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LeaseError::Exhausted { nodes: 2, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("10.244.0.0/29") && msg.contains("2 nodes"),
        "{msg}"
    );
    assert!(
        store.list(keys::SUBNETS).await.unwrap().0.len() == 2,
        "the loser left nothing behind"
    );
}

#[tokio::test]
async fn a_reservation_is_adopted_and_stays_permanent() {
    let dir = TempDir::new("reservation");
    let store = MemStore::new();
    let n = net("10.244.0.0/16", 24);
    let req = request("n1", 1, &n, dir.path());
    let key = keys::subnet("10.244.77.0/24");
    store
        .put(&key, serde_json::to_vec(&req.attrs).unwrap())
        .await
        .unwrap();
    let held = lease::acquire(&store, &req).await.unwrap();
    assert_eq!(
        (held.lease.cidr.to_string(), held.lease_id),
        ("10.244.77.0/24".into(), 0)
    );
    assert!(lease::renew(&store, &held).await.unwrap());
}

#[tokio::test]
async fn a_changed_underlay_ip_rewrites_the_lease_in_place() {
    let dir = TempDir::new("moved");
    let store = MemStore::new();
    let n = net("10.244.0.0/16", 24);
    let first = lease::acquire(&store, &request("n1", 1, &n, dir.path()))
        .await
        .unwrap();
    let moved = request("n1", 11, &n, dir.path());
    let again = lease::acquire(&store, &moved).await.unwrap();
    assert_eq!(again.lease.cidr, first.lease.cidr);
    let kv = store.get(&again.key).await.unwrap().unwrap();
    assert_eq!(kv.decode::<LeaseAttrs>().unwrap(), moved.attrs);
    assert_ne!(kv.lease, 0, "still attached to a store lease");
}

#[tokio::test]
async fn reclaim_recreates_the_same_key_or_reports_the_new_holder() {
    let dir = TempDir::new("reclaim");
    let store = MemStore::new();
    let n = net("10.244.0.0/16", 24);
    let req = request("n1", 1, &n, dir.path());
    let held = lease::acquire(&store, &req).await.unwrap();
    store.expire_leases_now();
    assert!(!lease::renew(&store, &held).await.unwrap(), "expired");
    let back = lease::reclaim(&store, &req, &held).await.unwrap();
    assert_eq!(back.key, held.key);
    assert_ne!(back.lease_id, held.lease_id);
    assert!(lease::renew(&store, &back).await.unwrap());

    store.expire_leases_now();
    let thief = request("n9", 9, &n, dir.path());
    store
        .create(&held.key, serde_json::to_vec(&thief.attrs).unwrap(), 0)
        .await
        .unwrap();
    let err = lease::reclaim(&store, &req, &back).await.unwrap_err();
    assert!(
        matches!(&err, LeaseError::Lost { holder, .. } if holder == "n9"),
        "{err:?}"
    );
}

#[test]
fn config_validation_explains_what_is_wrong() {
    let parse = |s: &str| NetworkConfig::parse(s.as_bytes());
    assert!(
        parse(r#"{"podCIDR":"10.244.0.0/16","nodePrefixLength":24,"backend":"host-gw"}"#).is_ok()
    );
    let e =
        parse(r#"{"podCIDR":"10.244.0.0/16","nodePrefixLength":8,"backend":"vxlan"}"#).unwrap_err();
    assert!(e.to_string().contains("nodePrefixLength 8"), "{e}");
    let e = parse(r#"{"podCIDR":"10.244.1.0/16","nodePrefixLength":24,"backend":"vxlan"}"#)
        .unwrap_err();
    assert!(e.to_string().contains("host bits"), "{e}");
    let e =
        parse(r#"{"podCIDR":"10.244.0.0/16","nodePrefixLength":24,"backend":"udp"}"#).unwrap_err();
    assert!(e.to_string().contains("udp"), "{e}");
}
