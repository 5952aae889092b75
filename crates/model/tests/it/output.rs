//! Kubernetes-shaped output: lists and YAML that reads back to the same value.

use model::{list_json, parse_manifests, to_yaml};
use serde_json::{Value, json};

use crate::ALL_KINDS;

/// Writes `v` as YAML and reads it back with the same YAML library the parser uses.
fn yaml_round_trip(v: &Value) -> Value {
    let text = to_yaml(v);
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn list_json_has_the_kubectl_shape() {
    let objs = parse_manifests(ALL_KINDS, "f").expect("fixture");
    let list = list_json(objs.iter().map(|o| o.value.clone()).collect());
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(list["kind"], "List");
    assert_eq!(list["metadata"], json!({"resourceVersion": ""}));
    assert_eq!(list["items"].as_array().map(Vec::len), Some(objs.len()));
    // A printed list can be applied again.
    let again = parse_manifests(&to_yaml(&list), "list.yaml").expect("list reparses");
    assert_eq!(again, objs);
    let again = parse_manifests(&list.to_string(), "list.json").expect("json list reparses");
    assert_eq!(again, objs);
}

#[test]
fn yaml_output_reads_back_identically() {
    for obj in parse_manifests(ALL_KINDS, "f").expect("fixture") {
        let text = to_yaml(&obj.value);
        let back = parse_manifests(&text, "back").expect("reparses");
        assert_eq!(back, vec![obj], "{text}");
    }
}

#[test]
fn yaml_output_quotes_strings_that_look_like_other_types() {
    let tricky = json!({
        "s": ["yes", "no", "on", "off", "true", "False", "null", "~", "", "80", "0x1F", "1e3",
              "0755", "1_000", ".inf", "-.5", "a: b", "- x", "#c", "@a", "`b", "*a", "&b", "!t",
              "|", ">", "%p", "{x}", "[y]", "x,y", "trailing ", " leading", "tab\there",
              "line1\nline2\n", "line1\nline2", "\n", "quote\"s", "back\\slash", "ünïcödé",
              "---", "...", "k8s.io/x: y", "10.0.0.1/24", "2001:db8::1", "12:30", "1:2:3"],
        "n": [0, -1, 65535, 1.5, 1e300, u64::MAX, i64::MIN],
        "b": [true, false],
        "z": null,
        "empty_map": {},
        "empty_list": [],
        "nested": {"a": [{"b": [[]]}], "key with spaces": 1, "": "empty key", "123": "numeric key", "true": "bool key"}
    });
    assert_eq!(yaml_round_trip(&tricky), tricky, "{}", to_yaml(&tricky));
}
