use std::collections::BTreeSet;

use super::*;
use serde_json::json;

fn svc(v: serde_json::Value) -> Service {
    serde_json::from_value(v).expect("service")
}

fn with_spec(mut s: Service, f: impl FnOnce(&mut serde_json::Value)) -> Service {
    let mut v = serde_json::to_value(&s).expect("json");
    f(&mut v["spec"]);
    s = serde_json::from_value(v).expect("service");
    s
}

fn lb(name: &str, created: &str, extra: serde_json::Value) -> Service {
    let mut v = json!({"metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
                       "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}});
    if let Some(m) = extra.as_object() {
        for (k, x) in m {
            if k == "status" {
                v["status"] = x.clone();
            } else {
                v["spec"][k] = x.clone();
            }
        }
    }
    svc(v)
}

fn showing(ip: &str) -> serde_json::Value {
    json!({"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}})
}

fn pool() -> Option<Ipv4Net> {
    Some("172.20.0.240/28".parse().expect("cidr"))
}

fn assigned(s: &str) -> LbState {
    LbState::Assigned(s.parse().expect("ip"))
}

#[test]
fn load_balancers_get_the_lowest_free_address_oldest_first() {
    let svcs = [
        lb("young", "2026-01-02T00:00:00Z", json!({})),
        lb("old", "2026-01-01T00:00:00Z", json!({})),
        svc(
            json!({"metadata": {"name": "plain", "namespace": "default"}, "spec": {"ports": [{"port": 1}]}}),
        ),
    ];
    let out = allocate_lb(&svcs, pool());
    assert_eq!(out["default/old"], assigned("172.20.0.240"));
    assert_eq!(out["default/young"], assigned("172.20.0.241"));
    assert_eq!(out["default/plain"], LbState::None);
}

#[test]
fn a_shown_address_is_kept_and_a_request_is_honoured_when_free_and_in_the_pool() {
    let svcs = [
        lb("a", "2026-01-01T00:00:00Z", showing("172.20.0.245")),
        lb(
            "b",
            "2026-01-02T00:00:00Z",
            json!({"loadBalancerIP": "172.20.0.240"}),
        ),
        lb(
            "c",
            "2026-01-03T00:00:00Z",
            json!({"loadBalancerIP": "172.20.0.245"}),
        ),
        lb(
            "d",
            "2026-01-04T00:00:00Z",
            json!({"loadBalancerIP": "10.0.0.1"}),
        ),
        lb("e", "2026-01-05T00:00:00Z", json!({})),
    ];
    let out = allocate_lb(&svcs, pool());
    assert_eq!(out["default/a"], assigned("172.20.0.245"));
    assert_eq!(out["default/b"], assigned("172.20.0.240"));
    assert_eq!(
        out["default/c"],
        LbState::Pending("spec.loadBalancerIP 172.20.0.245 is in use by service default/a".into())
    );
    assert_eq!(
        out["default/d"],
        LbState::Pending("spec.loadBalancerIP 10.0.0.1 is not in the pool 172.20.0.240/28".into())
    );
    assert_eq!(out["default/e"], assigned("172.20.0.241"));
    // a shown address that no longer matches the request moves to the request
    let moved = allocate_lb(
        &[lb(
            "a",
            "2026-01-01T00:00:00Z",
            json!({"loadBalancerIP": "172.20.0.250", "status": {"loadBalancer": {"ingress": [{"ip": "172.20.0.245"}]}}}),
        )],
        pool(),
    );
    assert_eq!(moved["default/a"], assigned("172.20.0.250"));
    // a shown address outside the pool (the pool changed) is replaced
    let out = allocate_lb(
        &[lb("a", "2026-01-01T00:00:00Z", showing("172.20.0.5"))],
        pool(),
    );
    assert_eq!(out["default/a"], assigned("172.20.0.240"));
}

#[test]
fn a_full_pool_leaves_services_pending_and_dot_255_is_never_handed_out() {
    // 172.20.0.240/28 holds .240-.255; .255 is the underlay broadcast: 15 addresses
    let svcs: Vec<Service> = (0..17)
        .map(|i| {
            lb(
                &format!("s{i:02}"),
                &format!("2026-01-01T00:00:{i:02}Z"),
                json!({}),
            )
        })
        .collect();
    let out = allocate_lb(&svcs, pool());
    let ips: BTreeSet<String> = out
        .values()
        .filter_map(|s| match s {
            LbState::Assigned(ip) => Some(ip.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(ips.len(), 15);
    assert!(!ips.contains("172.20.0.255"));
    for late in ["default/s15", "default/s16"] {
        assert_eq!(
            out[late],
            LbState::Pending("no free address in the LoadBalancer pool 172.20.0.240/28".into())
        );
    }
    // without a pool, every LoadBalancer is pending
    let out = allocate_lb(&svcs[..1], None);
    assert!(
        matches!(&out["default/s00"], LbState::Pending(m) if m.contains("no LoadBalancer pool"))
    );
}

#[test]
fn a_deleted_or_retyped_service_frees_its_address() {
    let a = lb("a", "2026-01-01T00:00:00Z", showing("172.20.0.240"));
    let b = lb("b", "2026-01-02T00:00:00Z", json!({}));
    assert_eq!(
        allocate_lb(&[a.clone(), b.clone()], pool())["default/b"],
        assigned("172.20.0.241")
    );
    assert_eq!(
        allocate_lb(std::slice::from_ref(&b), pool())["default/b"],
        assigned("172.20.0.240")
    );
    let a_cluster_ip = with_spec(a, |s| s["type"] = json!("ClusterIP"));
    let out = allocate_lb(&[a_cluster_ip, b], pool());
    assert_eq!(out["default/a"], LbState::None);
    assert_eq!(out["default/b"], assigned("172.20.0.240"));
}

#[test]
fn lb_status_sets_ingress_or_a_pending_condition() {
    let now = "2026-01-01T00:00:00Z";
    let s = lb_status(None, &assigned("172.20.0.240"), now);
    assert_eq!(
        s,
        json!({"loadBalancer": {"ingress": [{"ip": "172.20.0.240", "ipMode": "VIP"}]}})
    );
    let other = json!({"conditions": [{"type": "Other", "status": "True"}], "loadBalancer": {}});
    let p = lb_status(Some(&other), &LbState::Pending("pool full".into()), now);
    assert_eq!(p["loadBalancer"], json!({}));
    let conds = p["conditions"].as_array().expect("conditions");
    assert_eq!(conds.len(), 2);
    assert_eq!(conds[1]["type"], CONDITION_LB_PENDING);
    assert_eq!(conds[1]["message"], "pool full");
    // the same message later keeps its transition time
    let later = lb_status(
        Some(&p),
        &LbState::Pending("pool full".into()),
        "2026-02-02T00:00:00Z",
    );
    assert_eq!(later, p);
    // assigned: condition gone, others kept
    let done = lb_status(Some(&p), &assigned("172.20.0.241"), now);
    assert_eq!(
        done["conditions"],
        json!([{"type": "Other", "status": "True"}])
    );
    let none = lb_status(Some(&done), &LbState::None, now);
    assert_eq!(none["loadBalancer"], json!({}));
}
