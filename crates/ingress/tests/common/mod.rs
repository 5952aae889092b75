//! Builders for the objects the gateway compiles from.
#![allow(dead_code, clippy::unwrap_used)] // shared by several test binaries; tests may unwrap

pub mod scripted;

use model::{EndpointSlice, Ingress, Secret, Service};
use serde_json::{Value, json};

pub fn ingress(ns: &str, name: &str, spec: Value) -> Ingress {
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }))
    .unwrap()
}

pub fn aged(mut i: Ingress, ts: &str) -> Ingress {
    i.metadata.creation_timestamp = Some(ts.to_string());
    i
}

/// A backend reference by port number.
pub fn be(svc: &str, port: u16) -> Value {
    json!({"service": {"name": svc, "port": {"number": port}}})
}

/// A backend reference by port name.
pub fn be_named(svc: &str, port: &str) -> Value {
    json!({"service": {"name": svc, "port": {"name": port}}})
}

pub fn path(kind: &str, p: &str, backend: Value) -> Value {
    json!({"path": p, "pathType": kind, "backend": backend})
}

pub fn rule(host: Option<&str>, paths: Vec<Value>) -> Value {
    match host {
        Some(h) => json!({"host": h, "http": {"paths": paths}}),
        None => json!({"http": {"paths": paths}}),
    }
}

/// A Service with one TCP port `port` named `port_name` (if given).
pub fn service(ns: &str, name: &str, port: u16, port_name: Option<&str>) -> Service {
    let mut p = json!({"port": port, "protocol": "TCP"});
    if let Some(n) = port_name {
        p["name"] = json!(n);
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"ports": [p], "selector": {"app": name}},
    }))
    .unwrap()
}

/// A slice of `svc` with the given (ip, ready) endpoints on `target` for port `port_name`.
pub fn slice(
    ns: &str,
    svc: &str,
    port_name: Option<&str>,
    target: u16,
    eps: &[(&str, bool)],
) -> EndpointSlice {
    let mut p = json!({"port": target, "protocol": "TCP"});
    if let Some(n) = port_name {
        p["name"] = json!(n);
    }
    let endpoints: Vec<Value> = eps
        .iter()
        .map(|(ip, ready)| json!({"addresses": [ip], "conditions": {"ready": ready}}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": format!("{svc}-abcde"), "namespace": ns,
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [p],
    }))
    .unwrap()
}

pub fn tls_secret(ns: &str, name: &str, crt: &[u8], key: &[u8]) -> Secret {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": model::base64_encode(crt), "tls.key": model::base64_encode(key)},
    }))
    .unwrap()
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}
