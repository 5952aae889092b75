//! LabelSelector semantics, as upstream (k8s.io/apimachinery labels.Selector).

use std::collections::BTreeMap;

use model::{LabelSelector, LabelSelectorRequirement};

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.into(),
        operator: op.into(),
        values: values.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    }
}

fn selector(match_labels: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>) -> LabelSelector {
    LabelSelector {
        match_labels: labels(match_labels),
        match_expressions: exprs,
        ..Default::default()
    }
}

#[test]
fn selector_matching_table() {
    let web = labels(&[("app", "web"), ("tier", "front")]);
    let db = labels(&[("app", "db")]);
    let none = labels(&[]);
    // (selector, labels, expected)
    let table: Vec<(LabelSelector, &BTreeMap<String, String>, bool)> = vec![
        // The empty selector matches everything, including objects without labels.
        (selector(&[], vec![]), &web, true),
        (selector(&[], vec![]), &none, true),
        // matchLabels: every pair must be present with the same value.
        (selector(&[("app", "web")], vec![]), &web, true),
        (selector(&[("app", "web")], vec![]), &db, false),
        (
            selector(&[("app", "web"), ("tier", "front")], vec![]),
            &web,
            true,
        ),
        (
            selector(&[("app", "web"), ("tier", "back")], vec![]),
            &web,
            false,
        ),
        (selector(&[("app", "web")], vec![]), &none, false),
        // In: the key must exist with one of the values.
        (
            selector(&[], vec![expr("app", "In", &["web", "db"])]),
            &web,
            true,
        ),
        (selector(&[], vec![expr("app", "In", &["db"])]), &web, false),
        (
            selector(&[], vec![expr("app", "In", &["web"])]),
            &none,
            false,
        ),
        // NotIn: a missing key matches.
        (
            selector(&[], vec![expr("app", "NotIn", &["db"])]),
            &web,
            true,
        ),
        (
            selector(&[], vec![expr("app", "NotIn", &["db"])]),
            &db,
            false,
        ),
        (
            selector(&[], vec![expr("app", "NotIn", &["db"])]),
            &none,
            true,
        ),
        // Exists / DoesNotExist look at the key only.
        (selector(&[], vec![expr("tier", "Exists", &[])]), &web, true),
        (selector(&[], vec![expr("tier", "Exists", &[])]), &db, false),
        (
            selector(&[], vec![expr("tier", "DoesNotExist", &[])]),
            &web,
            false,
        ),
        (
            selector(&[], vec![expr("tier", "DoesNotExist", &[])]),
            &db,
            true,
        ),
        (
            selector(&[], vec![expr("tier", "DoesNotExist", &[])]),
            &none,
            true,
        ),
        // Requirements are ANDed, with matchLabels too.
        (
            selector(
                &[("app", "web")],
                vec![
                    expr("tier", "In", &["front"]),
                    expr("x", "DoesNotExist", &[]),
                ],
            ),
            &web,
            true,
        ),
        (
            selector(&[("app", "web")], vec![expr("tier", "NotIn", &["front"])]),
            &web,
            false,
        ),
        // An unknown operator matches nothing (validation rejects it anyway).
        (
            selector(&[], vec![expr("app", "Equals", &["web"])]),
            &web,
            false,
        ),
    ];
    for (i, (sel, l, want)) in table.into_iter().enumerate() {
        assert_eq!(sel.matches(l), want, "case {i}: {sel:?} vs {l:?}");
    }
}

#[test]
fn selector_deserializes_from_kubernetes_json() {
    let sel: LabelSelector = serde_json::from_value(serde_json::json!({
        "matchLabels": {"app": "web"},
        "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front"]}]
    }))
    .expect("selector");
    assert!(sel.matches(&labels(&[("app", "web"), ("tier", "front")])));
    assert!(!sel.is_empty());
    let empty: LabelSelector = serde_json::from_value(serde_json::json!({})).expect("empty");
    assert!(empty.is_empty());
    assert_eq!(
        serde_json::to_value(&empty).expect("json"),
        serde_json::json!({})
    );
}
