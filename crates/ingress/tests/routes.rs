//! Tier 0: the routing table against the Ingress v1 examples table (kubernetes.io, "Examples"
//! under "Path types") and the ingress controller conformance suite's host and path rules.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::net::SocketAddr;

use common::*;
use ingress::routes::{ClassFilter, PathKind, Snapshot, compile, normalize_host};
use serde_json::{Value, json};

/// Backends `b0..bN` and `fallback`, each a Service with one ready endpoint.
fn snapshot(ingresses: Vec<model::Ingress>, n: usize) -> Snapshot {
    let mut s = Snapshot {
        ingresses,
        ..Default::default()
    };
    for i in 0..n {
        let name = format!("b{i}");
        s.services.push(service("default", &name, 80, None));
        let ip = format!("10.0.0.{}", i + 1);
        s.slices
            .push(slice("default", &name, None, 8080, &[(ip.as_str(), true)]));
    }
    s.services.push(service("default", "fallback", 80, None));
    s.slices.push(slice(
        "default",
        "fallback",
        None,
        8080,
        &[("10.0.1.1", true)],
    ));
    s
}

/// Which backend a request reaches: `Some("b3")`, `Some("fallback")`, or None (404).
fn reach(s: &Snapshot, host: &str, path: &str) -> Option<String> {
    let c = compile(s, &ClassFilter::default());
    c.routes.route(host, path).map(|r| {
        r.backend
            .name
            .trim_start_matches("default/")
            .trim_end_matches(":80")
            .to_string()
    })
}

/// Rule (pathType, path) pairs of one host, in order.
type Rules = Vec<(&'static str, &'static str)>;

/// One row of the upstream table: rules (kind, path) in order, each to backend `b<i>`.
fn table_case(rules: &[(&str, &str)], with_default: bool) -> Snapshot {
    let paths: Vec<Value> = rules
        .iter()
        .enumerate()
        .map(|(i, (k, p))| path(k, p, be(&format!("b{i}"), 80)))
        .collect();
    let mut spec = json!({"rules": [rule(Some("foo.bar.com"), paths)]});
    if with_default {
        spec["defaultBackend"] = be("fallback", 80);
    }
    snapshot(vec![ingress("default", "ing", spec)], rules.len())
}

#[test]
fn upstream_path_examples_table() {
    // (rules, request, expected rule index or None for "no match")
    let cases: Vec<(Rules, &str, Option<usize>)> = vec![
        (vec![("Prefix", "/")], "/", Some(0)),
        (vec![("Prefix", "/")], "/anything/at/all", Some(0)),
        (vec![("Exact", "/foo")], "/foo", Some(0)),
        (vec![("Exact", "/foo")], "/bar", None),
        (vec![("Exact", "/foo")], "/foo/", None),
        (vec![("Exact", "/foo/")], "/foo", None),
        (vec![("Prefix", "/foo")], "/foo", Some(0)),
        (vec![("Prefix", "/foo")], "/foo/", Some(0)),
        (vec![("Prefix", "/foo/")], "/foo", Some(0)),
        (vec![("Prefix", "/foo/")], "/foo/", Some(0)),
        (vec![("Prefix", "/aaa/bb")], "/aaa/bbb", None),
        (vec![("Prefix", "/aaa/bbb")], "/aaa/bbb", Some(0)),
        (vec![("Prefix", "/aaa/bbb/")], "/aaa/bbb", Some(0)),
        (vec![("Prefix", "/aaa/bbb")], "/aaa/bbb/", Some(0)),
        (vec![("Prefix", "/aaa/bbb")], "/aaa/bbb/ccc", Some(0)),
        (vec![("Prefix", "/aaa/bbb")], "/aaa/bbbxyz", None),
        (
            vec![("Prefix", "/"), ("Prefix", "/aaa")],
            "/aaa/ccc",
            Some(1),
        ),
        (
            vec![("Prefix", "/"), ("Prefix", "/aaa"), ("Prefix", "/aaa/bbb")],
            "/aaa/bbb",
            Some(2),
        ),
        (
            vec![("Prefix", "/"), ("Prefix", "/aaa"), ("Prefix", "/aaa/bbb")],
            "/ccc",
            Some(0),
        ),
        (vec![("Prefix", "/aaa")], "/ccc", None),
        (vec![("Prefix", "/foo"), ("Exact", "/foo")], "/foo", Some(1)),
        (vec![("Exact", "/foo"), ("Prefix", "/foo")], "/foo", Some(0)),
    ];
    for (rules, req, want) in cases {
        let s = table_case(&rules, false);
        let got = reach(&s, "foo.bar.com", req);
        assert_eq!(
            got,
            want.map(|i| format!("b{i}")),
            "rules {rules:?}, request {req}"
        );
        // "No match" means the default backend when there is one.
        let s = table_case(&rules, true);
        let got = reach(&s, "foo.bar.com", req);
        let want = Some(want.map_or("fallback".to_string(), |i| format!("b{i}")));
        assert_eq!(got, want, "rules {rules:?} + defaultBackend, request {req}");
    }
}

#[test]
fn conformance_path_rules() {
    // ingress-controller-conformance features/path_rules.feature
    let ing = ingress(
        "default",
        "path-rules",
        json!({"rules": [
            rule(Some("exact-path-rules"), vec![path("Exact", "/foo", be("b0", 80))]),
            rule(Some("prefix-path-rules"), vec![
                path("Prefix", "/foo", be("b1", 80)),
                path("Prefix", "/aaa/bbb", be("b2", 80)),
                path("Prefix", "/aaa", be("b3", 80)),
            ]),
            rule(Some("mixed-path-rules"), vec![
                path("Prefix", "/foo", be("b4", 80)),
                path("Exact", "/foo", be("b5", 80)),
            ]),
            rule(Some("trailing-slash-path-rules"), vec![
                path("Prefix", "/aaa/bbb/", be("b6", 80)),
                path("Exact", "/foo/", be("b7", 80)),
            ]),
        ]}),
    );
    let s = snapshot(vec![ing], 8);
    let cases = [
        ("exact-path-rules", "/foo", Some("b0")),
        ("exact-path-rules", "/foo/", None),
        ("exact-path-rules", "/FOO", None),
        ("exact-path-rules", "/bar", None),
        ("prefix-path-rules", "/foo", Some("b1")),
        ("prefix-path-rules", "/foo/", Some("b1")),
        ("prefix-path-rules", "/FOO", None),
        ("prefix-path-rules", "/aaa/bbb", Some("b2")),
        ("prefix-path-rules", "/aaa/bbb/ccc", Some("b2")),
        ("prefix-path-rules", "/aaa/ccc", Some("b3")),
        ("prefix-path-rules", "/aaaccc", None),
        ("mixed-path-rules", "/foo", Some("b5")),
        ("mixed-path-rules", "/foo/bar", Some("b4")),
        ("trailing-slash-path-rules", "/aaa/bbb", Some("b6")),
        ("trailing-slash-path-rules", "/aaa/bbb/", Some("b6")),
        ("trailing-slash-path-rules", "/foo", None),
        ("trailing-slash-path-rules", "/foo/", Some("b7")),
    ];
    for (host, p, want) in cases {
        assert_eq!(reach(&s, host, p).as_deref(), want, "request {host}{p}");
    }
}

#[test]
fn conformance_host_rules_exact_and_one_label_wildcards() {
    // features/host_rules.feature
    let ing = ingress(
        "default",
        "host-rules",
        json!({"rules": [
            rule(Some("foo.bar.com"), vec![path("Prefix", "/", be("b0", 80))]),
            rule(Some("*.foo.com"), vec![path("Prefix", "/", be("b1", 80))]),
        ]}),
    );
    let s = snapshot(vec![ing], 2);
    let cases = [
        ("foo.bar.com", Some("b0")),
        ("FOO.Bar.com", Some("b0")),
        ("foo.bar.com:8080", Some("b0")),
        ("foo.bar.com.", Some("b0")),
        ("subdomain.bar.com", None),
        ("bar.foo.com", Some("b1")),
        ("baz.bar.foo.com", None),
        ("foo.com", None),
        (".foo.com", None),
        ("", None),
    ];
    for (host, want) in cases {
        assert_eq!(reach(&s, host, "/").as_deref(), want, "host {host:?}");
    }
}

#[test]
fn exact_host_beats_wildcard_and_owns_its_requests() {
    let ing = ingress(
        "default",
        "hosts",
        json!({"rules": [
            rule(Some("*.foo.com"), vec![path("Prefix", "/", be("b0", 80))]),
            rule(Some("bar.foo.com"), vec![path("Prefix", "/api", be("b1", 80))]),
            rule(None, vec![path("Prefix", "/", be("b2", 80))]),
        ]}),
    );
    let s = snapshot(vec![ing], 3);
    assert_eq!(reach(&s, "bar.foo.com", "/api/x").as_deref(), Some("b1"));
    // The exact host has rules: its unmatched paths do not fall through to the wildcard or
    // the host-less rules.
    assert_eq!(reach(&s, "bar.foo.com", "/other"), None);
    assert_eq!(reach(&s, "baz.foo.com", "/other").as_deref(), Some("b0"));
    // Host-less rules serve every other host.
    assert_eq!(reach(&s, "unknown.test", "/x").as_deref(), Some("b2"));
    assert_eq!(reach(&s, "10.0.0.1:80", "/x").as_deref(), Some("b2"));
}

#[test]
fn default_backend_only_serves_everything() {
    // features/default_backend.feature: an Ingress with no rules.
    let ing = ingress(
        "default",
        "default-backend",
        json!({"defaultBackend": be("fallback", 80)}),
    );
    let s = snapshot(vec![ing], 0);
    for (host, p) in [
        ("my-host", "/"),
        ("my-host", "/sub-path"),
        ("some-host", "/resource"),
        ("", "/resource"),
    ] {
        assert_eq!(reach(&s, host, p).as_deref(), Some("fallback"), "{host}{p}");
    }
    let c = compile(&s, &ClassFilter::default());
    let r = c.routes.route("x", "/").unwrap();
    assert_eq!(r.path, None);
    assert_eq!(r.ingress, "default/default-backend");
}

#[test]
fn no_match_without_default_backend_is_none() {
    let ing = ingress(
        "default",
        "a",
        json!({"rules": [rule(Some("a.test"), vec![path("Prefix", "/api", be("b0", 80))])]}),
    );
    let s = snapshot(vec![ing], 1);
    assert_eq!(reach(&s, "a.test", "/web"), None);
    assert_eq!(reach(&s, "b.test", "/api"), None);
}

#[test]
fn default_backend_of_the_host_owner_before_the_global_one() {
    let old = aged(
        ingress(
            "default",
            "old",
            json!({"defaultBackend": be("b0", 80),
                   "rules": [rule(Some("a.test"), vec![path("Prefix", "/api", be("b1", 80))])]}),
        ),
        "2026-01-01T00:00:00Z",
    );
    let new = aged(
        ingress(
            "default",
            "new",
            json!({"defaultBackend": be("b2", 80),
                   "rules": [rule(Some("b.test"), vec![path("Prefix", "/api", be("b3", 80))])]}),
        ),
        "2026-02-01T00:00:00Z",
    );
    let s = snapshot(vec![new, old], 4);
    assert_eq!(reach(&s, "a.test", "/x").as_deref(), Some("b0"));
    assert_eq!(reach(&s, "b.test", "/x").as_deref(), Some("b2"));
    // Unknown hosts: the oldest Ingress's defaultBackend.
    assert_eq!(reach(&s, "c.test", "/x").as_deref(), Some("b0"));
}

#[test]
fn rules_of_several_ingresses_merge_and_the_oldest_wins_a_tie() {
    let a = aged(
        ingress(
            "default",
            "zzz-old",
            json!({"rules": [rule(Some("a.test"), vec![path("Prefix", "/api", be("b0", 80))])]}),
        ),
        "2026-01-01T00:00:00Z",
    );
    let b = aged(
        ingress(
            "default",
            "aaa-new",
            json!({"rules": [rule(Some("a.test"), vec![
                path("Prefix", "/api", be("b1", 80)),
                path("Prefix", "/web", be("b2", 80)),
            ])]}),
        ),
        "2026-03-01T00:00:00Z",
    );
    let s = snapshot(vec![b, a], 3);
    assert_eq!(reach(&s, "a.test", "/api").as_deref(), Some("b0"));
    assert_eq!(reach(&s, "a.test", "/web").as_deref(), Some("b2"));
}

#[test]
fn ingress_class_filtering() {
    let mk = |name: &str, class: Option<&str>, legacy: Option<&str>, host: &str| {
        let mut i = ingress(
            "default",
            name,
            json!({"rules": [rule(Some(host), vec![path("Prefix", "/", be("b0", 80))])]}),
        );
        i.spec.ingress_class_name = class.map(str::to_string);
        if let Some(l) = legacy {
            i.metadata
                .annotations
                .insert("kubernetes.io/ingress.class".into(), l.into());
        }
        i
    };
    let s = snapshot(
        vec![
            mk("ours", Some("flatnet"), None, "ours.test"),
            mk("legacy", None, Some("flatnet"), "legacy.test"),
            mk(
                "invalid",
                Some("some-invalid-class-name"),
                None,
                "invalid.test",
            ),
            mk("legacy-other", None, Some("nginx"), "nginx.test"),
            mk("classless", None, None, "classless.test"),
        ],
        1,
    );
    let c = compile(&s, &ClassFilter::default());
    assert_eq!(
        c.served,
        vec!["default/classless", "default/legacy", "default/ours"]
    );
    assert!(c.routes.route("invalid.test", "/").is_none());
    assert!(c.routes.route("nginx.test", "/").is_none());
    let strict = ClassFilter {
        serve_classless: false,
        ..ClassFilter::default()
    };
    let c = compile(&s, &strict);
    assert_eq!(c.served, vec!["default/legacy", "default/ours"]);
    assert!(c.routes.route("classless.test", "/").is_none());
}

fn eps(s: &Snapshot, host: &str) -> (Vec<SocketAddr>, Option<String>) {
    let c = compile(s, &ClassFilter::default());
    let r = c.routes.route(host, "/").unwrap();
    (r.backend.endpoints.clone(), r.backend.problem.clone())
}

#[test]
fn backends_resolve_port_by_number_or_name_to_ready_endpoints() {
    let mut s = Snapshot {
        ingresses: vec![ingress(
            "shop",
            "web",
            json!({"rules": [
                rule(Some("num.test"), vec![path("Prefix", "/", be("web", 80))]),
                rule(Some("name.test"), vec![path("Prefix", "/", be_named("web", "http"))]),
                rule(Some("badnum.test"), vec![path("Prefix", "/", be("web", 81))]),
                rule(Some("badname.test"), vec![path("Prefix", "/", be_named("web", "grpc"))]),
                rule(Some("nosvc.test"), vec![path("Prefix", "/", be("gone", 80))]),
                rule(Some("noeps.test"), vec![path("Prefix", "/", be("idle", 80))]),
            ]}),
        )],
        ..Default::default()
    };
    s.services.push(service("shop", "web", 80, Some("http")));
    s.slices.push(slice(
        "shop",
        "web",
        Some("http"),
        8080,
        &[
            ("10.244.1.5", true),
            ("10.244.2.7", true),
            ("10.244.3.9", false),
        ],
    ));
    // A slice of the same service for another port name does not count.
    s.slices.push(slice(
        "shop",
        "web",
        Some("metrics"),
        9090,
        &[("10.244.1.5", true)],
    ));
    // The same service name in another namespace does not count.
    s.slices.push(slice(
        "other",
        "web",
        Some("http"),
        8080,
        &[("10.9.9.9", true)],
    ));
    s.services.push(service("shop", "idle", 80, None));
    s.slices
        .push(slice("shop", "idle", None, 80, &[("10.244.1.6", false)]));
    let want: Vec<SocketAddr> = vec![
        "10.244.1.5:8080".parse().unwrap(),
        "10.244.2.7:8080".parse().unwrap(),
    ];
    assert_eq!(eps(&s, "num.test"), (want.clone(), None));
    assert_eq!(eps(&s, "name.test"), (want, None));
    let (e, why) = eps(&s, "badnum.test");
    assert!(e.is_empty());
    assert_eq!(why.as_deref(), Some("service shop/web has no TCP port 81"));
    let (_, why) = eps(&s, "badname.test");
    assert_eq!(
        why.as_deref(),
        Some("service shop/web has no TCP port named grpc")
    );
    let (_, why) = eps(&s, "nosvc.test");
    assert_eq!(why.as_deref(), Some("service shop/gone not found"));
    let (e, why) = eps(&s, "noeps.test");
    assert!(e.is_empty());
    assert_eq!(why.as_deref(), Some("no ready endpoints"));
    let c = compile(&s, &ClassFilter::default());
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("service shop/gone not found")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn round_robin_spreads_evenly_and_is_shared_by_routes_to_one_port() {
    let mut s = Snapshot {
        ingresses: vec![ingress(
            "default",
            "lb",
            json!({"rules": [
                rule(Some("a.test"), vec![path("Prefix", "/", be("web", 80))]),
                rule(Some("b.test"), vec![path("Prefix", "/", be_named("web", "http"))]),
            ]}),
        )],
        ..Default::default()
    };
    s.services.push(service("default", "web", 80, Some("http")));
    s.slices.push(slice(
        "default",
        "web",
        Some("http"),
        80,
        &[("10.0.0.1", true), ("10.0.0.2", true), ("10.0.0.3", true)],
    ));
    let c = compile(&s, &ClassFilter::default());
    let mut counts = std::collections::BTreeMap::new();
    for i in 0..300 {
        let host = if i % 2 == 0 { "a.test" } else { "b.test" };
        let ep = c.routes.route(host, "/").unwrap().backend.pick().unwrap();
        *counts.entry(ep).or_insert(0) += 1;
    }
    assert_eq!(counts.len(), 3);
    assert!(counts.values().all(|&n| n == 100), "{counts:?}");
}

#[test]
fn implementation_specific_and_missing_path_act_as_prefix() {
    let ing = ingress(
        "default",
        "is",
        json!({"rules": [rule(Some("a.test"), vec![
            json!({"path": "/api", "pathType": "ImplementationSpecific", "backend": be("b0", 80)}),
            json!({"pathType": "ImplementationSpecific", "backend": be("b1", 80)}),
        ])]}),
    );
    let s = snapshot(vec![ing], 2);
    assert_eq!(reach(&s, "a.test", "/api/v1").as_deref(), Some("b0"));
    assert_eq!(reach(&s, "a.test", "/apix").as_deref(), Some("b1"));
    let c = compile(&s, &ClassFilter::default());
    let r = c.routes.route("a.test", "/api").unwrap();
    assert_eq!(r.path, Some((PathKind::Prefix, "/api".to_string())));
}

#[test]
fn host_normalization() {
    for (raw, want) in [
        ("Foo.Bar.COM", "foo.bar.com"),
        ("foo.bar.com:443", "foo.bar.com"),
        ("foo.bar.com.", "foo.bar.com"),
        ("[::1]:8080", "::1"),
        ("10.0.0.1:80", "10.0.0.1"),
        (" a.test ", "a.test"),
    ] {
        assert_eq!(normalize_host(raw), want, "{raw}");
    }
}
