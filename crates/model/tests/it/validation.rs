//! Each validation rule: the error names the field path and the value as written.

use model::parse_manifests;
use serde_json::{Value, json};

fn pod() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"containers": [
            {"name": "web", "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 53, "protocol": "UDP"}],
             "readinessProbe": {"tcpSocket": {"port": 80}}},
            {"name": "side"}]}})
}

fn deployment() -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "d"}},
            "template": {"metadata": {"labels": {"app": "d"}},
                "spec": {"containers": [{"name": "c"}]}}}})
}

fn service() -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc"},
        "spec": {"selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}, {"name": "dns", "port": 53, "protocol": "UDP"}]}})
}

fn netpol() -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "np"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                "ports": [{"port": 80, "endPort": 90}]}]}})
}

fn ingress() -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "ing"},
        "spec": {"rules": [{"host": "a.example.test", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "svc", "port": {"number": 80}}}}]}}]}})
}

fn ingress_class() -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": {"name": "flatnet"},
        "spec": {"controller": "flatnet.io/ingress-gateway"}})
}

fn secret() -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tls"},
        "type": "kubernetes.io/tls", "data": {"tls.crt": "Zm9v", "tls.key": "YmFy"}})
}

fn namespace() -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}})
}

/// `base` with the field at JSON pointer `ptr` set to `v` (`None` removes it).
fn with(mut base: Value, ptr: &str, v: Option<Value>) -> Value {
    let (parent, last) = ptr.rsplit_once('/').expect("pointer");
    let last = last.replace("~1", "/").replace("~0", "~");
    let last = last.as_str();
    let target = base
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no {parent}"));
    match (target, v) {
        (Value::Object(m), Some(v)) => {
            m.insert(last.to_string(), v);
        }
        (Value::Object(m), None) => {
            m.remove(last);
        }
        (Value::Array(a), Some(v)) => {
            let i: usize = last.parse().expect("index");
            if i == a.len() {
                a.push(v);
            } else {
                a[i] = v;
            }
        }
        (Value::Array(a), None) => {
            a.remove(last.parse::<usize>().expect("index"));
        }
        _ => panic!("{parent} is not a container"),
    }
    base
}

/// Parses `v` written as YAML (as a user would) and returns the error message.
fn error_of(v: &Value) -> String {
    let text = model::to_yaml(v);
    match parse_manifests(&text, "t.yaml") {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn base_objects_are_valid() {
    for v in [
        pod(),
        deployment(),
        service(),
        netpol(),
        ingress(),
        secret(),
        namespace(),
    ] {
        let text = model::to_yaml(&v);
        if let Err(e) = parse_manifests(&text, "t.yaml") {
            panic!("{e}\n{text}");
        }
    }
}

#[test]
fn container_port_out_of_range_names_path_and_value() {
    let v = with(
        pod(),
        "/spec/containers/0/ports/1/containerPort",
        Some(json!(70000)),
    );
    assert_eq!(
        error_of(&v),
        "t.yaml: document 1: Pod \"default/web\" is invalid: spec.containers[0].ports[1].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive"
    );
}

#[test]
fn all_errors_of_a_document_are_reported_together() {
    let v = with(
        pod(),
        "/spec/containers/0/ports/1/containerPort",
        Some(json!(0)),
    );
    let v = with(v, "/spec/containers/1/name", Some(json!("web")));
    assert_eq!(
        error_of(&v),
        "t.yaml: document 1: Pod \"default/web\" is invalid: spec.containers[0].ports[1].containerPort: Invalid value: 0: must be between 1 and 65535, inclusive; spec.containers[1].name: Duplicate value: \"web\""
    );
}

/// (object, pointer, new value or removal, expected part of the message)
fn cases() -> Vec<(Value, &'static str, Option<Value>, &'static str)> {
    vec![
        // kind and apiVersion
        (
            pod(),
            "/kind",
            Some(json!("ConfigMap")),
            "ConfigMap \"web\" is invalid: kind: Unsupported value: \"ConfigMap\": supported values: \"Namespace\", \"Pod\", \"Service\", \"NetworkPolicy\", \"Ingress\", \"IngressClass\", \"Secret\", \"Deployment\"",
        ),
        // IngressClass
        (
            ingress_class(),
            "/spec/controller",
            None,
            "IngressClass \"flatnet\" is invalid: spec.controller: Required value",
        ),
        (
            ingress_class(),
            "/spec/controller",
            Some(json!("gateway")),
            "spec.controller: Invalid value: \"gateway\": must be a domain-prefixed path",
        ),
        (ingress_class(), "/spec", None, "spec: Required value"),
        (
            pod(),
            "/kind",
            Some(json!("Node")),
            "kind: Unsupported value: \"Node\"",
        ),
        (
            pod(),
            "/kind",
            Some(json!("pod")),
            "kind: Unsupported value: \"pod\"",
        ),
        (
            pod(),
            "/kind",
            None,
            "object \"web\" is invalid: kind: Required value",
        ),
        (
            deployment(),
            "/apiVersion",
            Some(json!("v1")),
            "Deployment \"d\" is invalid: apiVersion: Unsupported value: \"v1\": supported values: \"apps/v1\"",
        ),
        (
            ingress(),
            "/apiVersion",
            Some(json!("extensions/v1beta1")),
            "apiVersion: Unsupported value: \"extensions/v1beta1\": supported values: \"networking.k8s.io/v1\"",
        ),
        (pod(), "/apiVersion", None, "apiVersion: Required value"),
        // metadata
        (
            pod(),
            "/metadata/name",
            None,
            "metadata.name: Required value",
        ),
        (
            pod(),
            "/metadata/name",
            Some(json!("")),
            "metadata.name: Required value",
        ),
        (
            with(pod(), "/metadata/name", None),
            "/metadata/generateName",
            Some(json!("web-")),
            "metadata.name: Required value: generateName is not supported by flatnet",
        ),
        (
            pod(),
            "/metadata/name",
            Some(json!("Web_1")),
            "metadata.name: Invalid value: \"Web_1\": a lowercase RFC 1123 subdomain must consist of",
        ),
        (
            pod(),
            "/metadata/name",
            Some(json!(5)),
            "metadata.name: Invalid value: 5: must be a string, not a number",
        ),
        (
            service(),
            "/metadata/name",
            Some(json!("1svc")),
            "metadata.name: Invalid value: \"1svc\": a DNS-1035 label must consist of",
        ),
        (
            namespace(),
            "/metadata/name",
            Some(json!("a.b")),
            "metadata.name: Invalid value: \"a.b\": a lowercase RFC 1123 label must consist of",
        ),
        (
            namespace(),
            "/metadata/name",
            Some(json!("a".repeat(64))),
            "metadata.name: Invalid value: \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\": must be no more than 63 characters",
        ),
        (
            pod(),
            "/metadata/namespace",
            Some(json!("Prod")),
            "metadata.namespace: Invalid value: \"Prod\": a lowercase RFC 1123 label",
        ),
        (
            pod(),
            "/metadata/labels/-bad",
            Some(json!("x")),
            "metadata.labels: Invalid value: \"-bad\": name part must consist of alphanumeric characters",
        ),
        (
            pod(),
            "/metadata/labels/Example.com~1x",
            Some(json!("x")),
            "metadata.labels: Invalid value: \"Example.com/x\": prefix part a lowercase RFC 1123 subdomain",
        ),
        (
            pod(),
            "/metadata/labels/app",
            Some(json!("a b")),
            "metadata.labels[app]: Invalid value: \"a b\": a valid label must be an empty string or consist of",
        ),
        (
            pod(),
            "/metadata/labels/app",
            Some(json!("a".repeat(64))),
            "metadata.labels[app]: Invalid value: \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\": must be no more than 63 characters",
        ),
        (
            pod(),
            "/metadata/labels/version",
            Some(json!(1.5)),
            "metadata.labels[version]: Invalid value: 1.5: must be a string, not a number",
        ),
        (
            pod(),
            "/metadata/annotations",
            Some(json!({"a b": "x"})),
            "metadata.annotations: Invalid value: \"a b\": name part must consist of",
        ),
        (
            pod(),
            "/metadata",
            Some(json!("web")),
            "metadata: Invalid value: \"web\": must be a mapping, not a string",
        ),
        // pod spec
        (
            pod(),
            "/spec",
            None,
            "Pod \"default/web\" is invalid: spec: Required value",
        ),
        (
            pod(),
            "/spec/containers",
            Some(json!([])),
            "spec.containers: Required value",
        ),
        (
            pod(),
            "/spec/containers",
            None,
            "spec.containers: Required value",
        ),
        (
            pod(),
            "/spec/containers/1/name",
            Some(json!("Side")),
            "spec.containers[1].name: Invalid value: \"Side\": a lowercase RFC 1123 label",
        ),
        (
            pod(),
            "/spec/containers/1/name",
            None,
            "spec.containers[1].name: Required value",
        ),
        (
            pod(),
            "/spec/containers/1/name",
            Some(json!("web")),
            "spec.containers[1].name: Duplicate value: \"web\"",
        ),
        (
            pod(),
            "/spec/containers/1/command",
            Some(json!("sleep 1")),
            "spec.containers[1].command: Invalid value: \"sleep 1\": must be a list, not a string",
        ),
        (
            pod(),
            "/spec/containers/1/args",
            Some(json!(["a", 1])),
            "spec.containers[1].args[1]: Invalid value: 1: must be a string, not a number",
        ),
        (
            pod(),
            "/spec/containers/0/ports/0/containerPort",
            Some(json!(0)),
            "spec.containers[0].ports[0].containerPort: Invalid value: 0: must be between 1 and 65535, inclusive",
        ),
        (
            pod(),
            "/spec/containers/0/ports/0/containerPort",
            Some(json!("80")),
            "spec.containers[0].ports[0].containerPort: Invalid value: \"80\": must be an integer, not a string",
        ),
        (
            pod(),
            "/spec/containers/0/ports/0/containerPort",
            Some(json!(80.5)),
            "spec.containers[0].ports[0].containerPort: Invalid value: 80.5: must be an integer, not a number",
        ),
        (
            pod(),
            "/spec/containers/0/ports/0/containerPort",
            Some(json!(u64::MAX)),
            "spec.containers[0].ports[0].containerPort: Invalid value: 18446744073709551615: must be between 1 and 65535, inclusive",
        ),
        (
            pod(),
            "/spec/containers/0/ports/0/containerPort",
            None,
            "spec.containers[0].ports[0].containerPort: Required value",
        ),
        (
            pod(),
            "/spec/containers/0/ports/0/name",
            Some(json!("HTTP_1")),
            "spec.containers[0].ports[0].name: Invalid value: \"HTTP_1\": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
        ),
        (
            pod(),
            "/spec/containers/0/ports/0/name",
            Some(json!("very-long-name-x")),
            "spec.containers[0].ports[0].name: Invalid value: \"very-long-name-x\": must be no more than 15 characters",
        ),
        (
            pod(),
            "/spec/containers/0/ports/0/name",
            Some(json!("8080")),
            "spec.containers[0].ports[0].name: Invalid value: \"8080\": must contain at least one letter (a-z)",
        ),
        (
            pod(),
            "/spec/containers/0/ports/0/name",
            Some(json!("a--b")),
            "spec.containers[0].ports[0].name: Invalid value: \"a--b\": must not contain consecutive hyphens",
        ),
        (
            pod(),
            "/spec/containers/0/ports/0/name",
            Some(json!("-ab")),
            "spec.containers[0].ports[0].name: Invalid value: \"-ab\": must not begin or end with a hyphen",
        ),
        (
            pod(),
            "/spec/containers/1/ports",
            Some(json!([{"containerPort": 81, "name": "http"}])),
            "spec.containers[1].ports[0].name: Duplicate value: \"http\"",
        ),
        (
            pod(),
            "/spec/containers/0/ports/1/protocol",
            Some(json!("ICMP")),
            "spec.containers[0].ports[1].protocol: Unsupported value: \"ICMP\": supported values: \"TCP\", \"UDP\", \"SCTP\"",
        ),
        (
            pod(),
            "/spec/containers/0/ports/1/protocol",
            Some(json!("udp")),
            "spec.containers[0].ports[1].protocol: Unsupported value: \"udp\"",
        ),
        (
            pod(),
            "/spec/terminationGracePeriodSeconds",
            Some(json!(-1)),
            "spec.terminationGracePeriodSeconds: Invalid value: -1: must be greater than or equal to 0",
        ),
        (
            pod(),
            "/spec/containers/0/lifecycle",
            Some(json!({"preStop": {}})),
            "spec.containers[0].lifecycle.preStop: Required value: must specify a handler type",
        ),
        (
            pod(),
            "/spec/containers/0/lifecycle",
            Some(json!({"preStop": {"sleep": {"seconds": 1}, "exec": {"command": ["true"]}}})),
            "spec.containers[0].lifecycle.preStop.sleep: Forbidden: may not specify more than 1 handler type",
        ),
        (
            pod(),
            "/spec/containers/0/lifecycle",
            Some(json!({"preStop": {"sleep": {"seconds": -3}}})),
            "spec.containers[0].lifecycle.preStop.sleep.seconds: Invalid value: -3: must be greater than or equal to 0",
        ),
        (
            pod(),
            "/spec/containers/0/lifecycle",
            Some(json!({"preStop": {"sleep": {}}})),
            "spec.containers[0].lifecycle.preStop.sleep.seconds: Required value",
        ),
        (
            pod(),
            "/spec/containers/0/lifecycle",
            Some(json!({"preStop": {"exec": {"command": []}}})),
            "spec.containers[0].lifecycle.preStop.exec.command: Required value",
        ),
        (
            pod(),
            "/spec/containers/0/readinessProbe",
            Some(json!({"periodSeconds": 1})),
            "spec.containers[0].readinessProbe: Required value: must specify a handler type",
        ),
        (
            pod(),
            "/spec/containers/0/readinessProbe/exec",
            Some(json!({"command": ["true"]})),
            "spec.containers[0].readinessProbe.tcpSocket: Forbidden: may not specify more than 1 handler type",
        ),
        (
            pod(),
            "/spec/containers/0/readinessProbe/tcpSocket/port",
            Some(json!(0)),
            "spec.containers[0].readinessProbe.tcpSocket.port: Invalid value: 0: must be between 1 and 65535, inclusive",
        ),
        (
            pod(),
            "/spec/containers/0/readinessProbe/tcpSocket/port",
            Some(json!("8080")),
            "spec.containers[0].readinessProbe.tcpSocket.port: Invalid value: \"8080\": must contain at least one letter (a-z)",
        ),
        (
            pod(),
            "/spec/containers/0/readinessProbe/tcpSocket",
            None,
            "spec.containers[0].readinessProbe: Required value: must specify a handler type",
        ),
        (
            pod(),
            "/spec/containers/0/readinessProbe/periodSeconds",
            Some(json!(-1)),
            "spec.containers[0].readinessProbe.periodSeconds: Invalid value: -1: must be greater than or equal to 0",
        ),
        (
            pod(),
            "/spec/containers/1/readinessProbe",
            Some(json!({"exec": {}})),
            "spec.containers[1].readinessProbe.exec.command: Required value",
        ),
        (
            pod(),
            "/spec/containers/1/readinessProbe",
            Some(json!({"httpGet": {"port": 80, "scheme": "FTP"}})),
            "spec.containers[1].readinessProbe.httpGet.scheme: Unsupported value: \"FTP\": supported values: \"HTTP\", \"HTTPS\"",
        ),
        (
            pod(),
            "/spec/nodeName",
            Some(json!("Node_1")),
            "spec.nodeName: Invalid value: \"Node_1\"",
        ),
        (
            pod(),
            "/spec/hostNetwork",
            Some(json!("yes please")),
            "spec.hostNetwork: Invalid value: \"yes please\": must be a boolean, not a string",
        ),
        (
            pod(),
            "/spec/restartPolicy",
            Some(json!("Sometimes")),
            "spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\"",
        ),
        // deployment
        (
            deployment(),
            "/spec/replicas",
            Some(json!(-1)),
            "Deployment \"default/d\" is invalid: spec.replicas: Invalid value: -1: must be greater than or equal to 0",
        ),
        (
            deployment(),
            "/spec/template/metadata/labels/app",
            Some(json!("other")),
            "spec.template.metadata.labels: Invalid value: {\"app\":\"other\"}: `selector` does not match template `labels`",
        ),
        (
            deployment(),
            "/spec/selector",
            Some(json!({})),
            "spec.selector: Invalid value: {}: empty selector is invalid for deployment",
        ),
        (
            deployment(),
            "/spec/selector",
            None,
            "spec.selector: Required value",
        ),
        (
            deployment(),
            "/spec/template/spec/containers",
            Some(json!([])),
            "spec.template.spec.containers: Required value",
        ),
        (
            deployment(),
            "/spec/template/spec/containers/0/ports",
            Some(json!([{"containerPort": 65536}])),
            "spec.template.spec.containers[0].ports[0].containerPort: Invalid value: 65536: must be between 1 and 65535, inclusive",
        ),
        // service
        (
            service(),
            "/spec/type",
            Some(json!("Foo")),
            "Service \"default/svc\" is invalid: spec.type: Unsupported value: \"Foo\": supported values: \"ClusterIP\", \"NodePort\", \"LoadBalancer\", \"ExternalName\"",
        ),
        (
            service(),
            "/spec/ports/1/port",
            Some(json!(65536)),
            "spec.ports[1].port: Invalid value: 65536: must be between 1 and 65535, inclusive",
        ),
        (
            service(),
            "/spec/ports/1/port",
            None,
            "spec.ports[1].port: Required value",
        ),
        (
            service(),
            "/spec/ports/1/name",
            None,
            "spec.ports[1].name: Required value: required when there is more than one port",
        ),
        (
            service(),
            "/spec/ports/1/name",
            Some(json!("http")),
            "spec.ports[1].name: Duplicate value: \"http\"",
        ),
        (
            service(),
            "/spec/ports/1",
            Some(json!({"name": "again", "port": 80})),
            "spec.ports[1]: Duplicate value: {\"port\":80,\"protocol\":\"TCP\"}",
        ),
        (
            service(),
            "/spec/ports/0/targetPort",
            Some(json!("Bad_Name")),
            "spec.ports[0].targetPort: Invalid value: \"Bad_Name\": must contain only alpha-numeric characters",
        ),
        (
            service(),
            "/spec/ports/0/targetPort",
            Some(json!(0)),
            "spec.ports[0].targetPort: Invalid value: 0: must be between 1 and 65535, inclusive",
        ),
        (
            service(),
            "/spec/ports/0/nodePort",
            Some(json!(30080)),
            "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'",
        ),
        (
            service(),
            "/spec/ports",
            Some(json!([])),
            "spec.ports: Required value",
        ),
        (
            service(),
            "/spec/clusterIP",
            Some(json!("10.0.0.300")),
            "spec.clusterIP: Invalid value: \"10.0.0.300\": must be empty, 'None', or a valid IP address",
        ),
        (
            service(),
            "/spec/selector",
            Some(json!({"app": "a b"})),
            "spec.selector[app]: Invalid value: \"a b\"",
        ),
        (
            service(),
            "/spec/sessionAffinity",
            Some(json!("Sticky")),
            "spec.sessionAffinity: Unsupported value: \"Sticky\": supported values: \"None\", \"ClientIP\"",
        ),
        (
            service(),
            "/spec/externalTrafficPolicy",
            Some(json!("Local")),
            "spec.externalTrafficPolicy: Forbidden: may only be set when `type` is 'NodePort' or 'LoadBalancer'",
        ),
        (
            service(),
            "/spec/externalIPs",
            Some(json!(["1.2.3"])),
            "spec.externalIPs[0]: Invalid value: \"1.2.3\": must be a valid IP address",
        ),
        (
            service(),
            "/spec/type",
            Some(json!("ExternalName")),
            "spec.externalName: Required value",
        ),
        // network policy
        (
            netpol(),
            "/spec/policyTypes/0",
            Some(json!("Ingres")),
            "NetworkPolicy \"default/np\" is invalid: spec.policyTypes[0]: Unsupported value: \"Ingres\": supported values: \"Ingress\", \"Egress\"",
        ),
        (
            netpol(),
            "/spec/policyTypes/1",
            Some(json!("Ingress")),
            "spec.policyTypes[1]: Duplicate value: \"Ingress\"",
        ),
        (
            netpol(),
            "/spec/ingress/0/from/0/ipBlock/cidr",
            Some(json!("10.0.0.0/33")),
            "spec.ingress[0].from[0].ipBlock.cidr: Invalid value: \"10.0.0.0/33\": must be a valid CIDR value",
        ),
        (
            netpol(),
            "/spec/ingress/0/from/0/ipBlock/cidr",
            None,
            "spec.ingress[0].from[0].ipBlock.cidr: Required value",
        ),
        (
            netpol(),
            "/spec/ingress/0/from/0/ipBlock/except/0",
            Some(json!("192.168.0.0/16")),
            "spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: \"192.168.0.0/16\": must be a strict subset of `cidr`",
        ),
        (
            netpol(),
            "/spec/ingress/0/from/0/ipBlock/except/0",
            Some(json!("10.0.0.0/8")),
            "spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: \"10.0.0.0/8\": must be a strict subset of `cidr`",
        ),
        (
            netpol(),
            "/spec/ingress/0/from/0/ipBlock/except/0",
            Some(json!("fd00::/64")),
            "spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: \"fd00::/64\": must be a strict subset of `cidr`",
        ),
        (
            netpol(),
            "/spec/ingress/0/from/0/podSelector",
            Some(json!({})),
            "spec.ingress[0].from[0]: Forbidden: may not specify both ipBlock and another peer",
        ),
        (
            netpol(),
            "/spec/ingress/0/from/0",
            Some(json!({})),
            "spec.ingress[0].from[0]: Required value: must specify a peer",
        ),
        (
            netpol(),
            "/spec/podSelector",
            Some(
                json!({"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["b"]}]}),
            ),
            "spec.podSelector.matchExpressions[0].operator: Unsupported value: \"Equals\": supported values: \"In\", \"NotIn\", \"Exists\", \"DoesNotExist\"",
        ),
        (
            netpol(),
            "/spec/podSelector",
            Some(json!({"matchExpressions": [{"key": "a", "operator": "In"}]})),
            "spec.podSelector.matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'",
        ),
        (
            netpol(),
            "/spec/podSelector",
            Some(
                json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}),
            ),
            "spec.podSelector.matchExpressions[0].values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
        ),
        (
            netpol(),
            "/spec/ingress/0/ports/0/endPort",
            Some(json!(79)),
            "spec.ingress[0].ports[0].endPort: Invalid value: 79: must be greater than or equal to `port`",
        ),
        (
            netpol(),
            "/spec/ingress/0/ports/0/port",
            Some(json!("http")),
            "spec.ingress[0].ports[0].endPort: Forbidden: may not be specified when `port` is non-numeric",
        ),
        (
            netpol(),
            "/spec/ingress/0/ports/0/protocol",
            Some(json!("ICMP")),
            "spec.ingress[0].ports[0].protocol: Unsupported value: \"ICMP\"",
        ),
        (
            netpol(),
            "/spec/egress",
            Some(json!([{"to": [{"namespaceSelector": {"matchLabels": {"a": "-"}}}]}])),
            "spec.egress[0].to[0].namespaceSelector.matchLabels[a]: Invalid value: \"-\"",
        ),
        // ingress
        (
            ingress(),
            "/spec/rules/0/http/paths/0/pathType",
            None,
            "Ingress \"default/ing\" is invalid: spec.rules[0].http.paths[0].pathType: Required value",
        ),
        (
            ingress(),
            "/spec/rules/0/http/paths/0/pathType",
            Some(json!("Regex")),
            "spec.rules[0].http.paths[0].pathType: Unsupported value: \"Regex\": supported values: \"Exact\", \"Prefix\", \"ImplementationSpecific\"",
        ),
        (
            ingress(),
            "/spec/rules/0/http/paths/0/path",
            Some(json!("api")),
            "spec.rules[0].http.paths[0].path: Invalid value: \"api\": must be an absolute path",
        ),
        (
            ingress(),
            "/spec/rules/0/http/paths/0/backend/service/port",
            Some(json!({"number": 80, "name": "http"})),
            "spec.rules[0].http.paths[0].backend.service.port: Invalid value: {\"name\":\"http\",\"number\":80}: cannot set both port name & port number",
        ),
        (
            ingress(),
            "/spec/rules/0/http/paths/0/backend/service/port",
            Some(json!({})),
            "spec.rules[0].http.paths[0].backend.service.port: Required value: port name or number is required",
        ),
        (
            ingress(),
            "/spec/rules/0/http/paths/0/backend/service/port/number",
            Some(json!(0)),
            "spec.rules[0].http.paths[0].backend.service.port.number: Invalid value: 0: must be between 1 and 65535, inclusive",
        ),
        (
            ingress(),
            "/spec/rules/0/http/paths/0/backend",
            Some(json!({"resource": {"kind": "Bucket", "name": "b"}})),
            "spec.rules[0].http.paths[0].backend.resource: Forbidden: resource backends are not supported by flatnet",
        ),
        (
            ingress(),
            "/spec/rules/0/host",
            Some(json!("foo.*.example")),
            "spec.rules[0].host: Invalid value: \"foo.*.example\": a wildcard DNS-1123 subdomain must start with '*.'",
        ),
        (
            ingress(),
            "/spec/rules/0/host",
            Some(json!("10.0.0.1")),
            "spec.rules[0].host: Invalid value: \"10.0.0.1\": must be a DNS name, not an IP address",
        ),
        (
            ingress(),
            "/spec/rules",
            Some(json!([])),
            "spec: Invalid value: {\"rules\":[]}: either `defaultBackend` or `rules` must be specified",
        ),
        (
            ingress(),
            "/spec/tls",
            Some(json!([{"secretName": "Bad"}])),
            "spec.tls[0].secretName: Invalid value: \"Bad\"",
        ),
        // secret
        (
            secret(),
            "/data/tls.key",
            None,
            "Secret \"default/tls\" is invalid: data[tls.key]: Required value",
        ),
        (
            secret(),
            "/data/tls.crt",
            Some(json!("!!!!")),
            "data[tls.crt]: Invalid value: \"!!!!\": illegal base64 data at input byte 0",
        ),
        (
            secret(),
            "/data/a b",
            Some(json!("Zm9v")),
            "data: Invalid value: \"a b\": a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
        ),
        (
            secret(),
            "/stringData",
            Some(json!({"x": 1})),
            "stringData[x]: Invalid value: 1: must be a string, not a number",
        ),
    ]
}

#[test]
fn every_rule_reports_field_path_and_value() {
    let mut failures = Vec::new();
    for (base, ptr, v, want) in cases() {
        let obj = with(base, ptr, v);
        let text = model::to_yaml(&obj);
        match parse_manifests(&text, "t.yaml") {
            Ok(_) => failures.push(format!("{ptr}: accepted, wanted {want:?}\n{text}")),
            Err(e) if e.to_string().contains(want) => {}
            Err(e) => failures.push(format!("{ptr}: got\n  {e}\nwanted\n  {want}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn accepted_variants_stay_accepted() {
    let ok = [
        with(
            pod(),
            "/spec/containers/0/readinessProbe",
            Some(json!({"httpGet": {"port": "http", "path": "/healthz"}})),
        ),
        with(pod(), "/metadata/labels/empty", Some(json!(""))),
        with(
            pod(),
            "/metadata/labels/example.com~1role",
            Some(json!("A.b_c-9")),
        ),
        with(
            pod(),
            "/spec/containers/0/ports/1/protocol",
            Some(json!("SCTP")),
        ),
        with(service(), "/spec/type", Some(json!("NodePort"))),
        with(
            with(service(), "/spec/type", Some(json!("NodePort"))),
            "/spec/ports/0/nodePort",
            Some(json!(30080)),
        ),
        with(service(), "/spec/clusterIP", Some(json!("None"))),
        with(
            with(service(), "/spec/clusterIP", Some(json!("None"))),
            "/spec/ports",
            Some(json!([])),
        ),
        with(
            with(service(), "/spec/type", Some(json!("ExternalName"))),
            "/spec/externalName",
            Some(json!("db.example.test")),
        ),
        with(
            with(service(), "/spec/ports", Some(json!([{"port": 80}]))),
            "/spec/selector",
            None,
        ),
        with(netpol(), "/spec/podSelector", None),
        with(
            netpol(),
            "/spec/ingress/0/from/0",
            Some(json!({"podSelector": {}, "namespaceSelector": {}})),
        ),
        with(
            netpol(),
            "/spec/ingress/0/from/0/ipBlock/cidr",
            Some(json!("10.0.0.1/8")),
        ),
        with(netpol(), "/spec/ingress", Some(json!([{}]))),
        with(
            ingress(),
            "/spec/rules/0/host",
            Some(json!("*.example.test")),
        ),
        with(
            ingress(),
            "/spec/defaultBackend",
            Some(json!({"service": {"name": "svc", "port": {"name": "http"}}})),
        ),
        with(secret(), "/type", Some(json!("Opaque"))),
        with(
            with(secret(), "/data", None),
            "/stringData",
            Some(json!({"tls.crt": "c", "tls.key": "k"})),
        ),
        with(deployment(), "/spec/replicas", Some(json!(0))),
        with(
            deployment(),
            "/spec/selector",
            Some(
                json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["d", "e"]}]}),
            ),
        ),
    ];
    for v in ok {
        let text = model::to_yaml(&v);
        if let Err(e) = parse_manifests(&text, "t.yaml") {
            panic!("{e}\n{text}");
        }
    }
}

#[test]
fn validate_checks_objects_built_in_code() {
    let mut obj = model::Object::from_json(pod()).expect("pod");
    assert_eq!(model::validate(&obj), Ok(()));
    obj.value["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(-5);
    let err = model::validate(&obj).expect_err("invalid");
    assert_eq!(
        err.to_string(),
        "Pod \"default/web\" is invalid: spec.containers[0].ports[0].containerPort: Invalid value: -5: must be between 1 and 65535, inclusive"
    );

    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"},
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": "172.20.0.11"}],
            "conditions": [{"type": "Ready", "status": "True"}]}});
    let obj = model::Object::from_json(node.clone()).expect("node");
    assert_eq!(model::validate(&obj), Ok(()));
    let typed: model::Node = obj.typed().expect("typed");
    assert_eq!(typed.status.address("InternalIP"), Some("172.20.0.11"));
    assert_eq!(typed.spec.pod_cidr.as_deref(), Some("10.244.1.0/24"));
    let bad = with(node, "/spec/podCIDR", Some(json!("10.244.1.0")));
    let err = model::validate(&model::Object::from_json(bad).expect("node")).expect_err("bad cidr");
    assert!(
        err.to_string()
            .contains("spec.podCIDR: Invalid value: \"10.244.1.0\": must be a valid CIDR value"),
        "{err}"
    );

    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-abc", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": true}, "nodeName": "node-1",
            "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-0"}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]});
    let obj = model::Object::from_json(slice.clone()).expect("slice");
    assert_eq!(model::validate(&obj), Ok(()));
    let typed: model::EndpointSlice = obj.typed().expect("typed");
    assert_eq!(typed.endpoints[0].conditions.ready, Some(true));
    assert_eq!(
        model::Object::from_typed(model::Kind::EndpointSlice, &typed)
            .expect("back")
            .value,
        slice
    );
    let bad = with(slice, "/endpoints/0/addresses/0", Some(json!("fd00::1")));
    let err = model::validate(&model::Object::from_json(bad).expect("slice")).expect_err("family");
    assert!(
        err.to_string().contains(
            "endpoints[0].addresses[0]: Invalid value: \"fd00::1\": must be a valid IPv4 address"
        ),
        "{err}"
    );
}
