#!/usr/bin/env python3
"""Input files for kube-proxy's two Linux layouts, for the same N services x M endpoints that
crates/services/examples/proxy_sync.rs programs through flatnet (bench/services/run.sh).

    kp_gen.py OUTDIR N [-m M] [--changes C] [--seed S]

Writes into OUTDIR (created if missing):

  ipt-init.rules         kube-proxy's jump rules from the built-in chains (loaded once, untimed)
  ipt-full.rules         full sync: every chain and rule of *filter and *nat, as one
                         `iptables-restore --noflush` input
  ipt-change-<c>.rules   change c (1..C) as a KEP-3453 partial sync: the fixed chains, all of
                         KUBE-SERVICES, only the changed service's KUBE-SVC and KUBE-SEP chains,
                         and `-X` of the endpoint chain that went away
  ipt-resync.rules       a full sync of the state after all C changes (kube-proxy's periodic
                         full resync; nothing stale is left by then)
  nft-full.nft           full sync of table `ip kube-proxy`: base chains, sets and maps, then per
                         service a service chain (masquerade check, `numgen random mod M vmap`)
                         and M endpoint chains (masquerade check, dnat), elements last; one
                         `nft -f` transaction, written the way knftables writes it (`add chain`
                         + `flush chain` for every chain it (re)writes)
  nft-change-<c>.nft     change c as kube-proxy's nftables mode sends it: the changed service's
                         chains rewritten (a new endpoint chain among them) and the stale
                         endpoint chain flushed
  nft-stale-<c>.nft      the next sync's deletion of that flushed chain
  expect.json            what the kernel must hold afterwards (for verification) and the changes

The services, addresses and ports are those of proxy_sync: service i is default/svc-%05d, port
"http" 80/TCP, ClusterIP 10.96.0.1+i, endpoint j at 10.128.0.1+i*M+j port 8080 on another
node; change c replaces endpoint j of a random service by 10.192.0.1+c. Chain names use
kube-proxy's hashing (pkg/proxy/iptables: "KUBE-SVC-"/"KUBE-SEP-" + base32(sha256(...))[:16];
pkg/proxy/nftables: base32(sha256(name))[:8] + "-" + name). Above 1000 endpoints in all,
kube-proxy's large-cluster mode leaves out the per-endpoint comments, and so does this.
The random choices use Python's `random.Random(seed)`, which is not proxy_sync's generator:
both sides change random services, not the same ones.
"""

import argparse
import base64
import hashlib
import ipaddress
import json
import os
import random
import sys

NAMESPACE = "default"
PORT_NAME = "http"
SERVICE_PORT = 80
TARGET_PORT = 8080
SERVICE_BASE = int(ipaddress.IPv4Address("10.96.0.0"))
ENDPOINT_BASE = int(ipaddress.IPv4Address("10.128.0.0"))
FRESH_BASE = int(ipaddress.IPv4Address("10.192.0.0"))
SERVICE_CIDR = "10.96.0.0/12"
CLUSTER_CIDR = "10.128.0.0/9"  # kube-proxy --cluster-cidr: sources outside it get masqueraded
NODE_IP = "192.0.2.11"
MASQ_BIT = "0x4000"
LARGE_CLUSTER = 1000  # kube-proxy's largeClusterEndpointsThreshold


def addr(n):
    return str(ipaddress.IPv4Address(n))


def b32_sha256(text, n):
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:n]


class Service:
    """One service port and its current endpoints."""

    def __init__(self, i, m):
        self.i = i
        self.name = "svc-%05d" % i
        # proxy.ServicePortName.String(): "namespace/name:port"
        self.port_name = "%s/%s:%s" % (NAMESPACE, self.name, PORT_NAME)
        self.ip = addr(SERVICE_BASE + 1 + i)
        self.endpoints = [addr(ENDPOINT_BASE + 1 + i * m + j) for j in range(m)]

    # iptables mode
    def svc_chain(self):
        return "KUBE-SVC-" + b32_sha256(self.port_name + "tcp", 16)

    def sep_chain(self, ep):
        return "KUBE-SEP-" + b32_sha256(self.port_name + "tcp" + "%s:%d" % (ep, TARGET_PORT), 16)

    # nftables mode
    def _nft_name(self, suffix=""):
        name = "%s/%s/tcp/%s%s" % (NAMESPACE, self.name, PORT_NAME, suffix)
        return b32_sha256(name, 8) + "-" + name

    def nft_service_chain(self):
        return "service-" + self._nft_name()

    def nft_endpoint_chain(self, ep):
        return "endpoint-" + self._nft_name("__%s/%d" % (ep, TARGET_PORT))


# ------------------------------------------------------------------------------ iptables

def ipt_init():
    """What kube-proxy's iptablesInit ensures: its chains and the jumps into them."""
    filt = [
        ("INPUT", "-m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL"),
        ("INPUT", "-m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS"),
        ("INPUT", "-m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES"),
        ("FORWARD", "-m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL"),
        ("FORWARD", "-m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD"),
        ("FORWARD", "-m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"),
        ("FORWARD", "-m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES"),
        ("OUTPUT", "-m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL"),
        ("OUTPUT", "-m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"),
    ]
    nat = [
        ("OUTPUT", "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"),
        ("PREROUTING", "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"),
        ("POSTROUTING", "-m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"),
    ]
    out = ["*filter"]
    out += [":%s - [0:0]" % c for c in
            ("KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-SERVICES", "KUBE-FORWARD", "KUBE-PROXY-FIREWALL")]
    out += ["-I %s %s" % r for r in filt]
    out += ["COMMIT", "*nat", ":KUBE-SERVICES - [0:0]", ":KUBE-POSTROUTING - [0:0]"]
    out += ["-I %s %s" % r for r in nat]
    out.append("COMMIT")
    return "\n".join(out) + "\n"


FILTER_TABLE = """*filter
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark {m}/{m} -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
""".format(m=MASQ_BIT)


def ipt_nat(services, large, rewrite, stale=()):
    """The *nat section. `rewrite`: indexes of the services whose SVC/SEP chains are written
    (all of them in a full sync); `stale`: KUBE-SEP chains to delete."""
    chains = [":KUBE-SERVICES - [0:0]", ":KUBE-NODEPORTS - [0:0]", ":KUBE-POSTROUTING - [0:0]",
              ":KUBE-MARK-MASQ - [0:0]"]
    rules = [
        "-A KUBE-POSTROUTING -m mark ! --mark %s/%s -j RETURN" % (MASQ_BIT, MASQ_BIT),
        "-A KUBE-POSTROUTING -j MARK --xor-mark %s" % MASQ_BIT,
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully",
        "-A KUBE-MARK-MASQ -j MARK --or-mark %s" % MASQ_BIT,
    ]
    for s in services:
        rules.append("-A KUBE-SERVICES -m comment --comment \"%s cluster IP\" -m tcp -p tcp -d %s --dport %d -j %s"
                     % (s.port_name, s.ip, SERVICE_PORT, s.svc_chain()))
    for i in sorted(rewrite):
        s = services[i]
        svc = s.svc_chain()
        chains.append(":%s - [0:0]" % svc)
        rules.append("-A %s -m comment --comment \"%s cluster IP\" -m tcp -p tcp -d %s --dport %d ! -s %s -j KUBE-MARK-MASQ"
                     % (svc, s.port_name, s.ip, SERVICE_PORT, CLUSTER_CIDR))
        n = len(s.endpoints)
        for j, ep in enumerate(s.endpoints):
            parts = ["-A", svc]
            if not large:
                parts += ["-m comment --comment \"%s -> %s:%d\"" % (s.port_name, ep, TARGET_PORT)]
            if j < n - 1:
                # The remaining endpoints share the rest equally: 1/n, 1/(n-1), ..., 1/2.
                parts += ["-m statistic --mode random --probability %0.10f" % (1.0 / (n - j))]
            parts += ["-j", s.sep_chain(ep)]
            rules.append(" ".join(parts))
        for ep in s.endpoints:
            sep = s.sep_chain(ep)
            comment = "" if large else " -m comment --comment %s" % s.port_name
            chains.append(":%s - [0:0]" % sep)
            rules.append("-A %s%s -s %s -j KUBE-MARK-MASQ" % (sep, comment, ep))
            rules.append("-A %s%s -m tcp -p tcp -j DNAT --to-destination %s:%d" % (sep, comment, ep, TARGET_PORT))
    for c in stale:
        chains.append(":%s - [0:0]" % c)
        rules.append("-X %s" % c)
    rules.append("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the "
                 "last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")
    return "*nat\n" + "\n".join(chains) + "\n" + "\n".join(rules) + "\nCOMMIT\n"


# ------------------------------------------------------------------------------ nftables

TABLE = "ip kube-proxy"


def nft_base():
    """The table, its sets and maps and the fixed chains, as kube-proxy's setupNFTables
    writes them on a full sync."""
    t = TABLE
    decls = [
        "add table %s { comment \"rules for kube-proxy\" ; }" % t,
        "add set %s cluster-ips { type ipv4_addr ; comment \"Active ClusterIPs\" ; }" % t,
        "add set %s nodeport-ips { type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }" % t,
        "add map %s firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }" % t,
        "add map %s no-endpoint-nodeports { type inet_proto . inet_service : verdict ; }" % t,
        "add map %s no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; }" % t,
        "add map %s service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }" % t,
        "add map %s service-nodeports { type inet_proto . inet_service : verdict ; }" % t,
    ]
    hooked = {
        "filter-prerouting-pre-dnat": "type filter hook prerouting priority -110 ;",
        "filter-output-pre-dnat": "type filter hook output priority -110 ;",
        "filter-forward": "type filter hook forward priority 0 ;",
        "filter-input": "type filter hook input priority 0 ;",
        "filter-output": "type filter hook output priority 0 ;",
        "nat-output": "type nat hook output priority -100 ;",
        "nat-postrouting": "type nat hook postrouting priority 100 ;",
        "nat-prerouting": "type nat hook prerouting priority -100 ;",
    }
    plain = ["cluster-ips-check", "firewall-check", "mark-for-masquerade", "masquerading",
             "nodeport-endpoints-check", "reject-chain", "services", "service-endpoints-check"]
    chains = sorted(list(hooked) + plain)
    for c in chains:
        if c in hooked:
            decls.append("add chain %s %s { %s }" % (t, c, hooked[c]))
        else:
            decls.append("add chain %s %s" % (t, c))
    decls += ["flush chain %s %s" % (t, c) for c in chains]
    rules = [
        ("cluster-ips-check", "ip daddr @cluster-ips reject"),
        ("cluster-ips-check", "ip daddr { %s } drop" % SERVICE_CIDR),
        ("filter-prerouting-pre-dnat", "ct state new jump firewall-check"),
        ("filter-output-pre-dnat", "ct state new jump firewall-check"),
        ("filter-forward", "ct state new jump service-endpoints-check"),
        ("filter-forward", "ct state new jump cluster-ips-check"),
        ("filter-input", "ct state new jump nodeport-endpoints-check"),
        ("filter-input", "ct state new jump service-endpoints-check"),
        ("filter-output", "ct state new jump service-endpoints-check"),
        ("filter-output", "ct state new jump cluster-ips-check"),
        ("firewall-check", "ip daddr . meta l4proto . th dport vmap @firewall-ips"),
        ("mark-for-masquerade", "mark set mark or %s" % MASQ_BIT),
        ("masquerading", "mark and %s == 0 return" % MASQ_BIT),
        ("masquerading", "mark set mark xor %s" % MASQ_BIT),
        ("masquerading", "masquerade fully-random"),
        ("nat-output", "jump services"),
        ("nat-postrouting", "jump masquerading"),
        ("nat-prerouting", "jump services"),
        ("nodeport-endpoints-check", "ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports"),
        ("reject-chain", "reject"),
        ("services", "ip daddr . meta l4proto . th dport vmap @service-ips"),
        ("services", "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"),
        ("service-endpoints-check", "ip daddr . meta l4proto . th dport vmap @no-endpoint-services"),
    ]
    decls += ["add rule %s %s %s" % (t, c, r) for c, r in rules]
    decls.append("add element %s nodeport-ips { %s }" % (t, NODE_IP))
    return decls


def nft_service(s, out, elements):
    """One service's chains and rules (and its map elements when `elements`): what a sync
    of that service writes."""
    t = TABLE
    svc = s.nft_service_chain()
    eps = [s.nft_endpoint_chain(ep) for ep in s.endpoints]
    for c in eps + [svc]:
        out.append("add chain %s %s" % (t, c))
        out.append("flush chain %s %s" % (t, c))
    out.append("add rule %s %s ip daddr %s tcp dport %d ip saddr != %s jump mark-for-masquerade"
               % (t, svc, s.ip, SERVICE_PORT, CLUSTER_CIDR))
    vmap = " , ".join("%d : goto %s" % (j, c) for j, c in enumerate(eps))
    out.append("add rule %s %s numgen random mod %d vmap { %s }" % (t, svc, len(eps), vmap))
    for ep, c in zip(s.endpoints, eps):
        out.append("add rule %s %s ip saddr %s jump mark-for-masquerade" % (t, c, ep))
        out.append("add rule %s %s meta l4proto tcp dnat to %s:%d" % (t, c, ep, TARGET_PORT))
    if elements:
        out.append("add element %s cluster-ips { %s }" % (t, s.ip))
        out.append("add element %s service-ips { %s . tcp . %d : goto %s }" % (t, s.ip, SERVICE_PORT, svc))


# ------------------------------------------------------------------------------ main

def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir")
    ap.add_argument("n", type=int, help="services")
    ap.add_argument("-m", type=int, default=10, help="endpoints per service (default 10)")
    ap.add_argument("--changes", type=int, default=5, help="endpoint changes to prepare (default 5)")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if a.n < 1 or a.n > (1 << 20) - 2:
        ap.error("N=%d: must be between 1 and %d" % (a.n, (1 << 20) - 2))
    if a.m < 1 or a.n * a.m >= FRESH_BASE - ENDPOINT_BASE:
        ap.error("-m %d: must be at least 1, with N x M below %d" % (a.m, FRESH_BASE - ENDPOINT_BASE))
    if a.changes < 0:
        ap.error("--changes %d: must not be negative" % a.changes)
    os.makedirs(a.outdir, exist_ok=True)
    rng = random.Random(a.seed)
    services = [Service(i, a.m) for i in range(a.n)]
    large = a.n * a.m > LARGE_CLUSTER
    everything = range(a.n)

    write(os.path.join(a.outdir, "ipt-init.rules"), ipt_init())
    write(os.path.join(a.outdir, "ipt-full.rules"), FILTER_TABLE + ipt_nat(services, large, everything))
    out = nft_base()
    for s in services:
        nft_service(s, out, elements=True)
    write(os.path.join(a.outdir, "nft-full.nft"), "\n".join(out) + "\n")

    changes = []
    for c in range(1, a.changes + 1):
        i, j = rng.randrange(a.n), rng.randrange(a.m)
        s = services[i]
        old = s.endpoints[j]
        new = addr(FRESH_BASE + c)
        stale_sep, stale_nft = s.sep_chain(old), s.nft_endpoint_chain(old)
        s.endpoints[j] = new
        write(os.path.join(a.outdir, "ipt-change-%d.rules" % c),
              FILTER_TABLE + ipt_nat(services, large, [i], stale=[stale_sep]))
        out = []
        nft_service(s, out, elements=False)
        out.append("flush chain %s %s" % (TABLE, stale_nft))
        write(os.path.join(a.outdir, "nft-change-%d.nft" % c), "\n".join(out) + "\n")
        write(os.path.join(a.outdir, "nft-stale-%d.nft" % c), "delete chain %s %s\n" % (TABLE, stale_nft))
        changes.append({"service": s.name, "index": i, "endpoint": j, "old": old, "new": new,
                        "ipt_svc_chain": s.svc_chain(), "ipt_new_sep": s.sep_chain(new),
                        "ipt_stale_sep": stale_sep, "nft_service_chain": s.nft_service_chain(),
                        "nft_new_endpoint_chain": s.nft_endpoint_chain(new),
                        "nft_stale_endpoint_chain": stale_nft})
    write(os.path.join(a.outdir, "ipt-resync.rules"), FILTER_TABLE + ipt_nat(services, large, everything))
    expect = {
        "services": a.n, "endpoints": a.m, "seed": a.seed,
        "dnat_rules": a.n * a.m,
        # KUBE-SVC + KUBE-SEP chains in *nat
        "ipt_service_chains": a.n * (a.m + 1),
        # service + endpoint chains in ip kube-proxy
        "nft_service_chains": a.n * (a.m + 1),
        "changes": changes,
    }
    write(os.path.join(a.outdir, "expect.json"), json.dumps(expect, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
