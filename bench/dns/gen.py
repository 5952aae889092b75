#!/usr/bin/env python3
"""The benchmark zone in every server's format, plus dnsperf query files.

usage: gen.py OUTDIR [NAMESPACES=100] [SERVICES_PER_NS=100]

Same data and query files as the anchor (shared/anchors/anchor-dns-ingress/gen_dns.py, fixed
seed 42): namespaces ns-K holding services svc-S with clusterIP 10.96.K.(S+1); svc-0..9 of
ns-0 have a port named http (SRV _http._tcp). For flatnet the same cluster is written as
Kubernetes objects (objects.json, served with `flatnet dns --static-objects`), which also
gives flatnet the PTR records and namespace names the spec asks for (the peers' zone files
have only the A and SRV records).
"""
import json, os, random, sys

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
NS = int(sys.argv[2]) if len(sys.argv) > 2 else 100
SVC = int(sys.argv[3]) if len(sys.argv) > 3 else 100
names = [(f"svc-{s}.ns-{k}.svc.cluster.local", f"10.96.{k}.{s+1}") for k in range(NS) for s in range(SVC)]
srv = [(f"_http._tcp.svc-{s}.ns-0.svc.cluster.local", f"svc-{s}.ns-0.svc.cluster.local") for s in range(10)]

items = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"ns-{k}"}} for k in range(NS)]
for k in range(NS):
    for s in range(SVC):
        port = {"port": 80, "protocol": "TCP"}
        if k == 0 and s < 10:
            port["name"] = "http"
        items.append({"apiVersion": "v1", "kind": "Service",
                      "metadata": {"namespace": f"ns-{k}", "name": f"svc-{s}"},
                      "spec": {"type": "ClusterIP", "clusterIP": f"10.96.{k}.{s+1}",
                               "clusterIPs": [f"10.96.{k}.{s+1}"], "ports": [port]}})
with open(f"{out}/objects.json", "w") as f:
    json.dump({"apiVersion": "v1", "kind": "List", "items": items}, f)

with open(f"{out}/cluster.local.zone", "w") as f:
    f.write("$ORIGIN cluster.local.\n$TTL 5\n")
    f.write("@ IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5\n")
    f.write("@ IN NS ns.dns.cluster.local.\nns.dns IN A 10.96.0.10\n")
    for n, ip in names:
        f.write(f"{n}. IN A {ip}\n")
    for n, tgt in srv:
        f.write(f"{n}. IN SRV 0 100 80 {tgt}.\n")

with open(f"{out}/unbound-local.conf", "w") as f:
    f.write('    local-zone: "cluster.local." static\n')
    f.write('    local-data: "cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5"\n')
    f.write('    local-data: "cluster.local. 5 IN NS ns.dns.cluster.local."\n')
    f.write('    local-data: "ns.dns.cluster.local. 5 IN A 10.96.0.10"\n')
    for n, ip in names:
        f.write(f'    local-data: "{n}. 5 IN A {ip}"\n')
    for n, tgt in srv:
        f.write(f'    local-data: "{n}. 5 IN SRV 0 100 80 {tgt}."\n')

with open(f"{out}/dnsmasq.hosts", "w") as f:
    f.write("10.96.0.10 ns.dns.cluster.local\n")
    for n, ip in names:
        f.write(f"{ip} {n}\n")
with open(f"{out}/dnsmasq-srv.conf", "w") as f:
    for n, tgt in srv:
        f.write(f"srv-host={n},{tgt},80,0,100\n")

rnd = random.Random(42)
N = 100_000
with open(f"{out}/q-exist.txt", "w") as f:
    for _ in range(N):
        f.write(f"{rnd.choice(names)[0]} A\n")
with open(f"{out}/q-nx50.txt", "w") as f:
    for i in range(N):
        if rnd.random() < 0.5:
            f.write(f"{rnd.choice(names)[0]} A\n")
        elif rnd.random() < 0.5:
            f.write(f"svc-{rnd.randrange(100, 100000)}.ns-{rnd.randrange(NS)}.svc.cluster.local A\n")
        else:
            f.write(f"host{rnd.randrange(1000)}.example.com.ns-{rnd.randrange(NS)}.svc.cluster.local A\n")
print(f"generated {len(names)} A + {len(srv)} SRV records ({len(items)} objects) in {out}")
