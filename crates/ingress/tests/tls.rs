//! Tier 0: certificates from Secrets and their choice by SNI name.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::*;
use ingress::routes::{ClassFilter, Snapshot, compile};
use serde_json::json;

fn snap(tls: serde_json::Value, secrets: Vec<model::Secret>) -> Snapshot {
    Snapshot {
        ingresses: vec![ingress(
            "default",
            "gw",
            json!({"tls": tls, "defaultBackend": be("web", 80)}),
        )],
        secrets,
        services: vec![service("default", "web", 80, None)],
        ..Default::default()
    }
}

#[test]
fn sni_chooses_exact_then_one_label_wildcard_then_default() {
    let foo = tls_secret(
        "default",
        "foo",
        &fixture("foo.bar.com.crt"),
        &fixture("foo.bar.com.key"),
    );
    let wild = tls_secret(
        "default",
        "wild",
        &fixture("wildcard.foo.com.crt"),
        &fixture("wildcard.foo.com.key"),
    );
    let s = snap(
        json!([{"hosts": ["foo.bar.com"], "secretName": "foo"},
               {"hosts": ["*.foo.com"], "secretName": "wild"}]),
        vec![foo.clone(), wild.clone()],
    );
    let c = compile(&s, &ClassFilter::default());
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let der = |ck: std::sync::Arc<rustls::sign::CertifiedKey>| ck.cert[0].to_vec();
    let foo_der = der(c.certs.lookup(Some("foo.bar.com")).unwrap());
    let wild_der = der(c.certs.lookup(Some("www.foo.com")).unwrap());
    assert_ne!(foo_der, wild_der);
    assert_eq!(der(c.certs.lookup(Some("FOO.bar.com")).unwrap()), foo_der);
    assert!(
        c.certs.lookup(Some("a.b.foo.com")).is_none(),
        "wildcard is one label"
    );
    assert!(c.certs.lookup(Some("foo.com")).is_none());
    assert!(c.certs.lookup(None).is_none(), "no default certificate");
    // An entry without hosts is the default certificate.
    let s = snap(
        json!([{"hosts": ["*.foo.com"], "secretName": "wild"}, {"secretName": "foo"}]),
        vec![foo, wild],
    );
    let c = compile(&s, &ClassFilter::default());
    assert_eq!(der(c.certs.lookup(Some("other.test")).unwrap()), foo_der);
    assert_eq!(der(c.certs.lookup(None).unwrap()), foo_der);
    assert_eq!(der(c.certs.lookup(Some("x.foo.com")).unwrap()), wild_der);
}

#[test]
fn unusable_secrets_are_left_out_with_a_warning_naming_them() {
    let mut opaque = tls_secret(
        "default",
        "opaque",
        &fixture("foo.bar.com.crt"),
        &fixture("foo.bar.com.key"),
    );
    opaque.type_ = Some("Opaque".into());
    let mismatched = tls_secret(
        "default",
        "mismatched",
        &fixture("foo.bar.com.crt"),
        &fixture("wildcard.foo.com.key"),
    );
    let garbage = tls_secret(
        "default",
        "garbage",
        b"not a certificate",
        &fixture("foo.bar.com.key"),
    );
    let s = snap(
        json!([{"hosts": ["a.test"], "secretName": "missing"},
               {"hosts": ["b.test"], "secretName": "opaque"},
               {"hosts": ["c.test"], "secretName": "mismatched"},
               {"hosts": ["d.test"], "secretName": "garbage"}]),
        vec![opaque, mismatched, garbage],
    );
    let c = compile(&s, &ClassFilter::default());
    assert!(c.certs.is_empty());
    let w = c.warnings.join("\n");
    for want in [
        "spec.tls[0]: secret default/missing not found",
        "spec.tls[1]: secret default/opaque: type is \"Opaque\", want \"kubernetes.io/tls\"",
        "spec.tls[2]: secret default/mismatched: tls.key does not belong to tls.crt",
        "spec.tls[3]: secret default/garbage: data[tls.crt]: no PEM certificate",
    ] {
        assert!(w.contains(want), "missing {want:?} in:\n{w}");
    }
}
