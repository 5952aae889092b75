#!/usr/bin/env python3
"""Objects for the static NetworkPolicy evaluation benchmark (bench/policy/static.sh).

Writes a manifest of NAMESPACES namespaces and POLICIES NetworkPolicies (applied through
`flatnet apply`, so the API's validation runs on every one), and puts PODS Running pods
straight into the lab's etcd through its JSON gateway, each with the status a kubelet writes
(phase, podIP, Ready). The pods are bound to a node that does not exist, so no kubelet runs
them: only the store matters for `--static`.

The policies are a mix of the shapes real clusters use: a default deny per namespace, then in
turn pod-selector allows on a named port, namespace+pod selector allows, egress to a tier and
the service CIDR, matchExpressions with port ranges, and ipBlock with except plus a UDP named
port. Everything is derived from the index, so a run is reproducible.

    static_gen.py --endpoint http://127.0.0.1:PORT --pods 1000 --policies 500 \
                  --namespaces 20 --manifest /tmp/x.yaml
"""

import argparse
import base64
import json
import sys
import urllib.request

APPS = 25
TIERS = ["web", "api", "db"]


def ns_name(i):
    return f"bench{i:02d}"


def namespaces(n):
    out = []
    for i in range(n):
        out.append({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns_name(i),
                         "labels": {"team": f"t{i % 5}", "env": "prod" if i % 2 else "dev"}},
        })
    return out


def pods(n, n_ns):
    out = []
    for i in range(n):
        ns = ns_name(i % n_ns)
        ip = f"10.244.{10 + i // 250}.{2 + i % 250}"
        out.append({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": f"p{i:05d}", "namespace": ns, "uid": f"bench-{i:05d}",
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {"app": f"app{i % APPS}", "tier": TIERS[i % 3],
                           "version": f"v{i % 2}"},
            },
            "spec": {
                "nodeName": "bench-ghost",
                "containers": [{"name": "c", "ports": [
                    {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                    {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
                    {"name": "dns", "containerPort": 5353, "protocol": "UDP"},
                ]}],
            },
            "status": {
                "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                "hostIP": "172.20.0.11",
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        })
    return out


def policy(k, n_ns):
    ns = ns_name(k % n_ns)
    meta = {"name": f"pol{k:04d}", "namespace": ns}
    doc = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta}
    if k < n_ns:
        meta["name"] = "default-deny-ingress"
        doc["spec"] = {"podSelector": {}, "policyTypes": ["Ingress"]}
        return doc
    a, b = f"app{k % APPS}", f"app{(k * 7) % APPS}"
    t = k % 5
    if t == 0:
        spec = {"podSelector": {"matchLabels": {"app": a}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": b}}}],
                             "ports": [{"port": "http"}]}]}
    elif t == 1:
        spec = {"podSelector": {"matchLabels": {"tier": "db"}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": f"t{k % 5}"}},
                                       "podSelector": {"matchLabels": {"tier": "api"}}}],
                             "ports": [{"port": 8080, "protocol": "TCP"}]}]}
    elif t == 2:
        spec = {"podSelector": {"matchLabels": {"app": a}}, "policyTypes": ["Egress"],
                "egress": [{"to": [{"podSelector": {"matchLabels": {"tier": "db"}}}],
                            "ports": [{"port": 8080}]},
                           {"to": [{"ipBlock": {"cidr": "10.96.0.0/12"}}]}]}
    elif t == 3:
        spec = {"podSelector": {"matchExpressions": [
                    {"key": "app", "operator": "In", "values": [a, b]}]},
                "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
                                 {"key": "env", "operator": "NotIn", "values": ["dev"]}]}}],
                             "ports": [{"port": 8080, "endPort": 8090}]}]}
    else:
        spec = {"podSelector": {"matchLabels": {"version": f"v{k % 2}", "tier": "web"}},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.0.0/16",
                                                   "except": [f"10.244.{10 + k % 4}.0/24"]}}],
                             "ports": [{"port": 9090}, {"port": 8080}]}],
                "egress": [{"ports": [{"port": "dns", "protocol": "UDP"}]},
                           {"to": [{"podSelector": {"matchLabels": {"app": b}}}]}]}
    doc["spec"] = spec
    return doc


def put(endpoint, key, value):
    body = json.dumps({
        "key": base64.b64encode(key.encode()).decode(),
        "value": base64.b64encode(json.dumps(value).encode()).decode(),
    }).encode()
    req = urllib.request.Request(f"{endpoint}/v3/kv/put", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--policies", type=int, default=500)
    ap.add_argument("--namespaces", type=int, default=20)
    ap.add_argument("--manifest", required=True)
    a = ap.parse_args()
    if a.policies < a.namespaces:
        sys.exit("static_gen.py: --policies must be at least --namespaces")
    docs = namespaces(a.namespaces) + [policy(k, a.namespaces) for k in range(a.policies)]
    with open(a.manifest, "w") as f:
        f.write("\n---\n".join(json.dumps(d) for d in docs) + "\n")
    for p in pods(a.pods, a.namespaces):
        m = p["metadata"]
        put(a.endpoint, f"/flatnet/objects/pods/{m['namespace']}/{m['name']}", p)
    print(f"{a.pods} pods written, {len(docs)} objects in {a.manifest}", file=sys.stderr)


if __name__ == "__main__":
    main()
