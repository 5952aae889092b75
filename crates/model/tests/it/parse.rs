use model::{
    Deployment, IntOrString, Kind, ModelError, Namespace, Object, Pod, Secret, Service,
    parse_manifests,
};
use serde_json::{Value, json};

use crate::ALL_KINDS;

fn parse_ok(text: &str) -> Vec<Object> {
    match parse_manifests(text, "test.yaml") {
        Ok(objs) => objs,
        Err(e) => panic!("expected success, got: {e}"),
    }
}

fn parse_err(text: &str) -> String {
    match parse_manifests(text, "test.yaml") {
        Ok(objs) => panic!("expected an error, got {} objects", objs.len()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn every_kind_in_one_multi_document_file_parses() {
    let objs = parse_ok(ALL_KINDS);
    let kinds: Vec<Kind> = objs.iter().map(|o| o.kind).collect();
    assert_eq!(
        kinds,
        [
            Kind::Namespace,
            Kind::Pod,
            Kind::Service,
            Kind::Service,
            Kind::NetworkPolicy,
            Kind::Ingress,
            Kind::Secret,
            Kind::Deployment
        ]
    );
    let keys: Vec<String> = objs.iter().map(Object::key).collect();
    assert_eq!(
        keys,
        [
            "objects/namespaces/_/shop",
            "objects/pods/shop/web-0",
            "objects/services/shop/web",
            "objects/services/shop/web-headless",
            "objects/networkpolicies/shop/allow-web",
            "objects/ingresses/shop/web",
            "objects/secrets/shop/shop-tls",
            "objects/deployments/default/api",
        ]
    );
    for o in &objs {
        assert_eq!(o.value["apiVersion"], o.kind.api_version());
        assert_eq!(o.value["kind"], o.kind.as_str());
        model::validate(o).expect("parsed objects validate again");
    }
}

#[test]
fn typed_views_read_every_parsed_object() {
    let objs = parse_ok(ALL_KINDS);
    let ns: Namespace = objs[0].typed().expect("namespace");
    assert_eq!(ns.metadata.labels["team"], "web");

    let pod: Pod = objs[1].typed().expect("pod");
    assert_eq!(pod.spec.node_name.as_deref(), Some("node-1"));
    let web = &pod.spec.containers[0];
    assert_eq!(web.ports[0].container_port, 8080);
    assert_eq!(web.ports[0].protocol(), "TCP");
    assert_eq!(web.ports[1].protocol(), "UDP");
    let probe = web.readiness_probe.as_ref().expect("probe");
    assert_eq!(
        probe.tcp_socket.as_ref().map(|t| &t.port),
        Some(&IntOrString::String("http".into()))
    );
    assert_eq!(probe.period_seconds, Some(2));
    assert_eq!(
        pod.spec.containers[1].command.as_deref(),
        Some(&["/bin/sleep".to_string(), "infinity".to_string()][..])
    );
    assert_eq!(pod.spec.termination_grace_period_seconds, Some(5));
    assert_eq!(pod.spec.termination_grace_period(), 5);

    let svc: Service = objs[2].typed().expect("service");
    assert_eq!(svc.spec.type_(), "LoadBalancer");
    assert_eq!(svc.spec.ports[0].node_port, Some(30080));
    assert_eq!(
        svc.spec.ports[0].target_port(),
        IntOrString::String("http".into())
    );
    assert_eq!(svc.spec.ports[1].target_port(), IntOrString::Int(53));
    assert_eq!(svc.spec.external_traffic_policy(), "Local");
    let headless: Service = objs[3].typed().expect("headless service");
    assert!(headless.spec.is_headless());
    assert!(headless.spec.ports.is_empty());

    let secret: Secret = objs[6].typed().expect("secret");
    assert_eq!(
        secret.decoded("tls.key").as_deref(),
        Some(&b"-----BEGIN PRIVATE KEY-----\n"[..])
    );
    assert!(secret.decoded("tls.crt").is_some());

    let deploy: Deployment = objs[7].typed().expect("deployment");
    assert_eq!(deploy.spec.replicas(), 3);
    assert!(
        deploy
            .spec
            .selector
            .matches(&deploy.spec.template.metadata.labels)
    );
}

#[test]
fn create_defaults_are_applied() {
    let objs = parse_ok(ALL_KINDS);
    // Namespaces get their name label; cluster-scoped objects carry no namespace.
    assert_eq!(
        objs[0]
            .labels()
            .get("kubernetes.io/metadata.name")
            .map(String::as_str),
        Some("shop")
    );
    assert_eq!(objs[0].namespace(), None);
    // Namespaced objects without a namespace go to `default`.
    assert_eq!(objs[7].value["metadata"]["namespace"], "default");
    // stringData is merged into data.
    assert!(objs[6].value.get("stringData").is_none());
    assert_eq!(
        objs[6].value["data"]["tls.key"],
        "LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0tCg=="
    );

    let objs = parse_ok(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  namespace: y\n  labels:\n    \
         kubernetes.io/metadata.name: wrong\nstatus:\n  phase: Active\n---\napiVersion: v1\n\
         kind: Pod\nmetadata: {name: p, namespace: ''}\nspec:\n  containers: [{name: c}]\n\
         status: {podIP: 10.0.0.1}\n",
    );
    assert_eq!(objs[0].labels()["kubernetes.io/metadata.name"], "x");
    assert!(objs[0].value["metadata"].get("namespace").is_none());
    assert!(
        objs[0].value.get("status").is_none(),
        "status is set by the system"
    );
    assert_eq!(objs[1].namespace(), Some("default"));
    assert!(objs[1].value.get("status").is_none());
}

#[test]
fn json_input_is_accepted_single_and_concatenated() {
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "x"},
        "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80}]}]}});
    let objs = parse_ok(&serde_json::to_string_pretty(&pod).expect("json"));
    assert_eq!(objs.len(), 1);
    assert_eq!(objs[0].value, pod);

    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}});
    let text = format!("{ns}\n{pod}\n");
    let objs = parse_ok(&text);
    assert_eq!(objs.len(), 2);
    assert_eq!(objs[0].kind, Kind::Namespace);

    // Tab-indented JSON is JSON, even though YAML forbids tabs for indentation.
    let tabbed = "{\n\t\"apiVersion\": \"v1\",\n\t\"kind\": \"Namespace\",\n\t\"metadata\": {\"name\": \"t\"}\n}";
    assert_eq!(parse_ok(tabbed)[0].name(), "t");
}

#[test]
fn json_errors_name_document_and_line() {
    let text = "{\"apiVersion\": \"v1\", \"kind\": \"Namespace\", \"metadata\": {\"name\": \"a\"}}\n{\"apiVersion\": \"v1\",\n \"kind\": }";
    let err = parse_manifests(text, "in.json").expect_err("bad json");
    match &err {
        ModelError::Parse { doc, line, .. } => assert_eq!((*doc, *line), (2, 3)),
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        err.to_string()
            .starts_with("in.json: document 2: invalid JSON at line 3"),
        "{err}"
    );
}

#[test]
fn yaml_flow_mapping_is_not_mistaken_for_json() {
    let objs = parse_ok("{apiVersion: v1, kind: Namespace, metadata: {name: flow}}");
    assert_eq!(objs[0].name(), "flow");
}

#[test]
fn list_documents_are_expanded() {
    let text = r#"
apiVersion: v1
kind: List
metadata: {resourceVersion: ""}
items:
  - apiVersion: v1
    kind: Namespace
    metadata: {name: a}
  - apiVersion: v1
    kind: Pod
    metadata: {name: p, namespace: a}
    spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: PodList
items:
  - apiVersion: v1
    kind: Pod
    metadata: {name: q}
    spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: List
items: []
"#;
    let objs = parse_ok(text);
    let names: Vec<String> = objs.iter().map(Object::display_name).collect();
    assert_eq!(names, ["a", "a/p", "default/q"]);
}

#[test]
fn list_item_errors_name_the_item() {
    let text = "kind: List\napiVersion: v1\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: ok}\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: p}\n  spec: {containers: []}\n";
    assert_eq!(
        parse_err(text),
        "test.yaml: document 1: items[1]: Pod \"default/p\" is invalid: spec.containers: Required value"
    );
}

#[test]
fn empty_documents_are_skipped_and_not_counted() {
    assert!(parse_ok("").is_empty());
    assert!(parse_ok("\n# nothing here\n---\n---\n...\n").is_empty());
    assert!(parse_ok("---\nnull\n---\n~\n").is_empty());
    let text = "---\n# first real one follows\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: Bad}\n";
    assert_eq!(
        parse_err(text),
        "test.yaml: document 2: Namespace \"Bad\" is invalid: metadata.name: Invalid value: \"Bad\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name', or '123-abc')"
    );
}

#[test]
fn yaml_syntax_errors_name_document_and_absolute_line() {
    let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: [unclosed\n";
    let err = parse_manifests(text, "bad.yaml").expect_err("bad yaml");
    match &err {
        ModelError::Parse {
            source_name,
            doc,
            line,
            ..
        } => {
            assert_eq!(source_name, "bad.yaml");
            assert_eq!(*doc, 2);
            assert_eq!(*line, 8);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "bad.yaml: document 2: invalid YAML: unclosed bracket '[' at line 8, column 9"
    );
}

#[test]
fn duplicate_keys_are_rejected() {
    let err = parse_err("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\nkind: Pod\n");
    assert!(err.contains("document 1"), "{err}");
}

#[test]
fn one_bad_document_fails_the_whole_file() {
    let text = format!(
        "{ALL_KINDS}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec: {{containers: [{{name: c, ports: [{{containerPort: 0}}]}}]}}\n"
    );
    assert_eq!(
        parse_err(&text),
        "test.yaml: document 9: Pod \"default/p\" is invalid: spec.containers[0].ports[0].containerPort: Invalid value: 0: must be between 1 and 65535, inclusive"
    );
}

#[test]
fn non_mapping_documents_are_rejected() {
    assert_eq!(
        parse_err("- a\n- b\n"),
        "test.yaml: document 1: a document must be a mapping with apiVersion, kind and metadata, not [\"a\",\"b\"]"
    );
    assert!(parse_err("just a string").contains("document 1"));
}

/// Fields flatnet does not model survive value -> typed view -> value.
#[test]
fn round_trip_through_typed_views_keeps_unknown_fields() {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "x", "labels": {"a": "b"},
            "ownerReferences": [{"kind": "Deployment", "name": "d", "uid": "1"}],
            "finalizers": ["f"], "uid": "u-1", "resourceVersion": "7"},
        "spec": {
            "containers": [{
                "name": "c", "image": "i", "env": [{"name": "X", "value": "1"}],
                "ports": [{"containerPort": 80, "hostPort": 8080, "name": "http", "protocol": "TCP"}],
                "readinessProbe": {"httpGet": {"port": 80, "path": "/", "httpHeaders": []},
                    "periodSeconds": 1, "unknownProbeField": true},
                "resources": {"limits": {"cpu": "1"}}
            }],
            "volumes": [{"name": "v", "emptyDir": {}}],
            "hostNetwork": false,
            "tolerations": [{"operator": "Exists"}]
        },
        "status": {"phase": "Running", "podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}],
            "hostIP": "172.20.0.11", "qosClass": "BestEffort",
            "conditions": [{"type": "Ready", "status": "True", "lastProbeTime": null}]}
    });
    let obj = Object::from_json(pod.clone()).expect("pod");
    let typed: Pod = obj.typed().expect("typed");
    assert_eq!(
        typed.status.as_ref().and_then(|s| s.pod_ip.as_deref()),
        Some("10.244.1.5")
    );
    let back = Object::from_typed(Kind::Pod, &typed).expect("back");
    assert_eq!(back.value, pod);

    let svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "s", "namespace": "default"},
        "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
            "ipFamilies": ["IPv4"], "selector": {"app": "a"},
            "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53,
                "nodePort": 30053, "appProtocol": "dns"}],
            "externalIPs": ["172.20.0.50"], "loadBalancerIP": "172.20.0.240",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10}}},
        "status": {"loadBalancer": {"ingress": [{"ip": "172.20.0.240", "ipMode": "VIP"}]}}
    });
    let typed: Service = Object::from_json(svc.clone())
        .expect("svc")
        .typed()
        .expect("typed");
    assert_eq!(typed.spec.cluster_ip.as_deref(), Some("10.96.0.10"));
    assert_eq!(typed.spec.external_ips, ["172.20.0.50"]);
    assert_eq!(typed.spec.load_balancer_ip.as_deref(), Some("172.20.0.240"));
    assert_eq!(
        Object::from_typed(Kind::Service, &typed)
            .expect("back")
            .value,
        svc
    );

    for obj in parse_ok(ALL_KINDS) {
        let back = match obj.kind {
            Kind::Pod => Object::from_typed(obj.kind, &obj.typed::<Pod>().expect("pod")),
            Kind::Service => Object::from_typed(obj.kind, &obj.typed::<Service>().expect("svc")),
            Kind::Deployment => {
                Object::from_typed(obj.kind, &obj.typed::<Deployment>().expect("deploy"))
            }
            Kind::Namespace => Object::from_typed(obj.kind, &obj.typed::<Namespace>().expect("ns")),
            Kind::Secret => Object::from_typed(obj.kind, &obj.typed::<Secret>().expect("secret")),
            _ => continue,
        }
        .expect("serializes");
        assert_eq!(back.value, obj.value, "{}", obj.key());
    }
}

#[test]
fn meta_reads_metadata() {
    let objs = parse_ok(ALL_KINDS);
    let meta = objs[1].meta();
    assert_eq!(meta.name, "web-0");
    assert_eq!(meta.namespace.as_deref(), Some("shop"));
    assert_eq!(meta.labels.len(), 2);
    assert_eq!(
        meta.annotations["example.com/note"],
        "anything goes here: {}"
    );
    let _: Value = objs[1].value.clone();
}

#[test]
fn null_fields_count_as_absent() {
    let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels:\n  annotations: ~\nspec:\n  nodeName:\n  containers:\n  - name: c\n    ports:\n    command: null\n";
    let objs = parse_ok(text);
    assert_eq!(
        objs[0].value,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "c"}]}})
    );
    let pod: Pod = objs[0].typed().expect("typed");
    assert!(pod.metadata.labels.is_empty());
}

fn refs(text: &str) -> Vec<(Kind, Option<String>, String)> {
    match model::parse_object_refs(text, "del.yaml") {
        Ok(r) => r
            .into_iter()
            .map(|r| (r.kind, r.namespace, r.name))
            .collect(),
        Err(e) => panic!("expected success, got: {e}"),
    }
}

#[test]
fn object_refs_need_only_identity_fields() {
    // Stubs without spec, and a Service whose spec is invalid: delete -f reads names only.
    let text = "\
apiVersion: v1
kind: Pod
metadata: {name: web}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {ports: nonsense}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: d, namespace: ''}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: ing}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, namespace: ignored}
";
    assert_eq!(
        refs(text),
        [
            (Kind::Pod, None, "web".to_string()),
            (Kind::Service, Some("shop".to_string()), "web".to_string()),
            (Kind::Deployment, None, "d".to_string()),
            (Kind::NetworkPolicy, None, "deny".to_string()),
            (Kind::Ingress, None, "ing".to_string()),
            (Kind::Namespace, None, "shop".to_string()),
        ]
    );
    // The same file is refused by apply: its stubs are no valid objects.
    let e = parse_err(text);
    assert!(
        e.contains("Pod \"default/web\" is invalid: spec: Required value"),
        "{e}"
    );
}

#[test]
fn object_refs_read_list_items_and_name_bad_documents() {
    let list = "kind: List\napiVersion: v1\nitems:\n- {apiVersion: v1, kind: Pod, metadata: {name: a}}\n- {apiVersion: v1, kind: Secret, metadata: {name: s, namespace: x}}\n";
    assert_eq!(
        refs(list),
        [
            (Kind::Pod, None, "a".to_string()),
            (Kind::Secret, Some("x".to_string()), "s".to_string()),
        ]
    );
    let err = |text: &str| match model::parse_object_refs(text, "del.yaml") {
        Ok(r) => panic!("expected an error, got {r:?}"),
        Err(e) => e.to_string(),
    };
    let e = err("apiVersion: v1\nkind: Pod\nmetadata: {}\n");
    assert!(
        e.contains("del.yaml") && e.contains("metadata.name: Required value"),
        "{e}"
    );
    let e = err("apiVersion: v1\nkind: Pod\nmetadata: {name: 7}\n");
    assert!(e.contains("metadata.name: Invalid value: 7"), "{e}");
    let e = err("apiVersion: v1\nkind: Gadget\nmetadata: {name: g}\n");
    assert!(e.contains("kind: Unsupported value: \"Gadget\""), "{e}");
    let e = err("apiVersion: v2\nkind: Pod\nmetadata: {name: p}\n");
    assert!(e.contains("apiVersion: Unsupported value"), "{e}");
    let e = err(
        "kind: List\napiVersion: v1\nitems:\n- {apiVersion: v1, kind: Pod, metadata: {name: a}}\n- {apiVersion: v1, kind: Pod}\n",
    );
    assert!(e.contains("items[1]") && e.contains("metadata.name"), "{e}");
}
