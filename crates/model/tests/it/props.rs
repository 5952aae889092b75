//! Property tests: parsing never panics, whatever the input.

use model::{parse_manifests, to_yaml};
use proptest::prelude::*;
use serde_json::Value;

use crate::ALL_KINDS;

/// Arbitrary JSON values, biased towards what validation looks at (ports, names, lists).
fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-70000i64..70000).prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-zA-Z0-9./_:-]{0,12}".prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        prop_oneof![
            Just("TCP"),
            Just("In"),
            Just("Exists"),
            Just("http"),
            Just("10.0.0.0/8"),
            Just("kubernetes.io/tls"),
            Just("Prefix"),
            Just("None"),
            Just("NodePort")
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-zA-Z]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// All paths (as JSON pointers) to the values inside `v`.
fn pointers(v: &Value, prefix: String, out: &mut Vec<String>) {
    out.push(prefix.clone());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let k = k.replace('~', "~0").replace('/', "~1");
                pointers(child, format!("{prefix}/{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                pointers(child, format!("{prefix}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn fixture_values() -> Vec<Value> {
    parse_manifests(ALL_KINDS, "f")
        .expect("fixture")
        .into_iter()
        .map(|o| o.value)
        .collect()
}

/// Replaces the value at a chosen pointer, or deletes it, or adds a new key next to it.
fn mutate(mut v: Value, pick: usize, op: u8, new: Value, key: &str) -> Value {
    let mut ptrs = Vec::new();
    pointers(&v, String::new(), &mut ptrs);
    let ptr = &ptrs[pick % ptrs.len()];
    match op % 3 {
        0 => {
            if let Some(t) = v.pointer_mut(ptr) {
                *t = new;
            }
        }
        1 => {
            if let Some((parent, last)) = ptr.rsplit_once('/') {
                match v.pointer_mut(parent) {
                    Some(Value::Object(m)) => {
                        m.remove(&last.replace("~1", "/").replace("~0", "~"));
                    }
                    Some(Value::Array(a)) => {
                        if let Ok(i) = last.parse::<usize>()
                            && i < a.len()
                        {
                            a.remove(i);
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => match v.pointer_mut(ptr) {
            Some(Value::Object(m)) => {
                m.insert(key.to_string(), new);
            }
            Some(Value::Array(a)) => a.push(new),
            _ => {}
        },
    }
    v
}

proptest! {
    #[test]
    fn never_panics_on_arbitrary_text(text in any::<String>()) {
        let _ = parse_manifests(&text, "fuzz");
    }

    #[test]
    fn never_panics_on_yaml_like_text(text in "([a-z{}\\[\\]:,\"' #&*!|>-]|\n|---\n|  ){0,200}") {
        let _ = parse_manifests(&text, "fuzz");
    }

    #[test]
    fn never_panics_on_text_edits_of_a_valid_manifest(
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0usize..20, "[\\PC\n]{0,8}"), 1..6)
    ) {
        let mut text = ALL_KINDS.to_string();
        for (at, del, ins) in edits {
            let mut start = at.index(text.len() + 1);
            while !text.is_char_boundary(start) { start -= 1; }
            let mut end = (start + del).min(text.len());
            while !text.is_char_boundary(end) { end += 1; }
            text.replace_range(start..end, &ins);
        }
        let _ = parse_manifests(&text, "fuzz");
    }

    #[test]
    fn never_panics_on_structural_mutations_and_accepted_objects_are_sound(
        doc in 0usize..8,
        mutations in prop::collection::vec((any::<usize>(), any::<u8>(), arb_value(), "[a-zA-Z]{1,12}"), 1..4),
        as_json in any::<bool>(),
    ) {
        let values = fixture_values();
        let mut v = values[doc % values.len()].clone();
        for (pick, op, new, key) in mutations {
            v = mutate(v, pick, op, new, &key);
        }
        let text = if as_json { v.to_string() } else { to_yaml(&v) };
        if let Ok(objs) = parse_manifests(&text, "fuzz") {
            // Whatever is accepted validates again and reads as its typed view.
            for obj in objs {
                prop_assert!(model::validate(&obj).is_ok(), "{:?}", model::validate(&obj));
                let typed_ok = match obj.kind {
                    model::Kind::Pod => obj.typed::<model::Pod>().is_ok(),
                    model::Kind::Service => obj.typed::<model::Service>().is_ok(),
                    model::Kind::Deployment => obj.typed::<model::Deployment>().is_ok(),
                    model::Kind::Namespace => obj.typed::<model::Namespace>().is_ok(),
                    model::Kind::Secret => obj.typed::<model::Secret>().is_ok(),
                    _ => true,
                };
                prop_assert!(typed_ok, "{}", obj.key());
            }
        }
    }

    #[test]
    fn yaml_output_round_trips_arbitrary_values(v in arb_value()) {
        let text = to_yaml(&v);
        let back: Value = serde_saphyr::from_str(&text)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(&back, &v, "{}", text);
    }
}
