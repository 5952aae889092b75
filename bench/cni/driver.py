#!/usr/bin/env python3
"""CNI ADD/DEL latency: flatnet-cni vs the reference bridge + host-local, one driver, one run.

Run by bench/cni/run.sh inside the benchmark's node namespace (``nsenter --net=``), so every
plugin process inherits that namespace and the timed region is exactly one plugin process:
``subprocess.run`` from spawn until exit and EOF on its stdout/stderr, as a runtime waits.

Per iteration and per plugin (the order of the two plugins alternates every iteration):
  1. ``ip netns add`` a fresh pod namespace (not timed), pause
  2. ADD (timed), pause
  3. DEL with the ADD result as prevResult (timed)
  4. poll until the pod's interfaces are gone: the node-side veth and the pod's eth0, each
     asked by RTM_GETLINK on a netlink socket living in its namespace; and wait until every
     process the plugin left behind has exited (the driver is a child subreaper, so flatnet's
     detached DEL child is re-parented to it and its exit is observed) (not timed as DEL,
     reported separately), pause
  5. ``ip netns del`` the pod namespace (not timed), pause

Only the standard library; Linux only; needs root.
"""

import argparse
import ctypes
import ctypes.util
import errno
import json
import math
import os
import socket
import statistics
import struct
import subprocess
import sys
import time

CLONE_NEWNET = 0x40000000
PR_SET_CHILD_SUBREAPER = 36
RTM_NEWLINK, RTM_GETLINK = 16, 18
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
IFLA_IFNAME = 3

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def netlink_socket_in(ns_path):
    """A NETLINK_ROUTE socket bound to the network namespace at ns_path."""
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    there = os.open(ns_path, os.O_RDONLY)
    try:
        if libc.setns(there, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns_path}")
        try:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        finally:
            if libc.setns(here, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
        s.bind((0, 0))
        return s
    finally:
        os.close(here)
        os.close(there)


_seq = 0


def link_exists(sock, name):
    """RTM_GETLINK by name: True if the kernel still lists the link."""
    global _seq
    _seq += 1
    raw = name.encode() + b"\0"
    attr = struct.pack("HH", 4 + len(raw), IFLA_IFNAME) + raw
    attr += b"\0" * ((4 - len(attr) % 4) % 4)
    body = struct.pack("BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0) + attr
    msg = struct.pack("IHHII", 16 + len(body), RTM_GETLINK, NLM_F_REQUEST, _seq, 0) + body
    sock.send(msg)
    while True:
        data = sock.recv(65536)
        off = 0
        while off + 16 <= len(data):
            length, mtype, _flags, seq, _pid = struct.unpack_from("IHHII", data, off)
            if seq == _seq:
                if mtype == RTM_NEWLINK:
                    return True
                if mtype == NLMSG_ERROR:
                    (err,) = struct.unpack_from("i", data, off + 16)
                    if -err == errno.ENODEV:
                        return False
                    raise OSError(-err, f"RTM_GETLINK {name}")
            off += (length + 3) & ~3


def reap_orphans():
    """Reaps exited re-parented processes; returns True while any child is still alive."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True


def pct(xs, p):
    """Nearest-rank percentile."""
    s = sorted(xs)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def ms(x):
    return x * 1000.0


class Plugin:
    def __init__(self, label, binary, conf, host_if_index, env_extra, cni_path):
        self.label = label
        self.binary = binary
        self.conf = conf
        self.host_if_index = host_if_index  # index into result.interfaces of the node-side veth
        self.env_extra = env_extra
        self.cni_path = cni_path
        self.samples = {k: [] for k in ("add", "del", "unlisted", "settled", "version")}

    def env(self, cmd, cid, netns):
        e = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": cmd,
             "CNI_CONTAINERID": cid, "CNI_NETNS": netns, "CNI_IFNAME": "eth0", "CNI_PATH": self.cni_path}
        e.update(self.env_extra)
        return e

    def call(self, cmd, cid, netns, conf):
        data = json.dumps(conf).encode()
        env = self.env(cmd, cid, netns)
        t0 = time.perf_counter()
        p = subprocess.run([self.binary], input=data, env=env, capture_output=True)
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            sys.exit(f"{self.label} {cmd} {cid} failed ({p.returncode}): {p.stdout!r} {p.stderr!r}")
        return dt, p.stdout

    def version(self):
        data = json.dumps({"cniVersion": self.conf["cniVersion"]}).encode()
        env = {"PATH": os.environ.get("PATH", ""), "CNI_COMMAND": "VERSION"}
        t0 = time.perf_counter()
        p = subprocess.run([self.binary], input=data, env=env, capture_output=True)
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            sys.exit(f"{self.label} VERSION failed: {p.stdout!r}")
        return dt


def netns_add(name):
    subprocess.run(["ip", "netns", "add", name], check=True)


def netns_del(name):
    subprocess.run(["ip", "netns", "del", name], check=True)


def one(plugin, args, it, record, node_sock):
    pod = f"{args.prefix}-{plugin.label}-{it}"
    path = f"/run/netns/{pod}"
    cid = f"bench-{plugin.label}-{it}"
    pause = args.pause_ms / 1000.0
    netns_add(pod)
    pod_sock = netlink_socket_in(path)
    try:
        time.sleep(pause)
        t_add, out = plugin.call("ADD", cid, path, plugin.conf)
        result = json.loads(out)
        host_if = result["interfaces"][plugin.host_if_index]["name"]
        time.sleep(pause)
        conf = dict(plugin.conf, prevResult=result)
        t_del, _ = plugin.call("DEL", cid, path, conf)
        t0 = time.perf_counter()
        unlisted = settled = None
        deadline = t0 + 5.0
        while unlisted is None or settled is None:
            now = time.perf_counter()
            if now > deadline:
                sys.exit(f"{plugin.label}: interfaces of {cid} not gone 5 s after DEL")
            if unlisted is None and not link_exists(node_sock, host_if) and not link_exists(pod_sock, "eth0"):
                unlisted = time.perf_counter() - t0
            if settled is None and not reap_orphans():
                settled = time.perf_counter() - t0
            time.sleep(0.0002)
        if record:
            s = plugin.samples
            s["add"].append(t_add)
            s["del"].append(t_del)
            s["unlisted"].append(unlisted)
            s["settled"].append(max(unlisted, settled))
        time.sleep(pause)
    finally:
        pod_sock.close()
        netns_del(pod)
        time.sleep(pause)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flatnet", required=True, help="flatnet-cni binary")
    ap.add_argument("--ref-dir", default="/usr/lib/cni", help="reference plugins (bridge, host-local)")
    ap.add_argument("--data-dir", required=True, help="scratch directory for both IPAM stores")
    ap.add_argument("--prefix", required=True, help="name prefix of the pod namespaces")
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--pause-ms", type=float, default=30.0)
    ap.add_argument("--json", help="write every sample (seconds) here")
    args = ap.parse_args()

    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit("prctl(PR_SET_CHILD_SUBREAPER) failed")

    flat = Plugin("flatnet", args.flatnet, {
        "cniVersion": "1.0.0", "name": "flatbench", "type": "flatnet-cni",
        "subnet": "10.244.2.0/24", "dataDir": os.path.join(args.data_dir, "flatnet"),
        "dns": {"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"]},
    }, host_if_index=0, env_extra={}, cni_path=os.path.dirname(os.path.abspath(args.flatnet)))
    # cni.md §2: the reference as observed, at the highest version Debian's 1.1.1 speaks.
    ref = Plugin("reference", os.path.join(args.ref_dir, "bridge"), {
        "cniVersion": "1.0.0", "name": "refbench", "type": "bridge", "bridge": "rcni0",
        "isGateway": True, "ipMasq": False,
        "ipam": {"type": "host-local", "dataDir": os.path.join(args.data_dir, "host-local"),
                 "ranges": [[{"subnet": "10.244.1.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]},
        "dns": {"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"]},
    }, host_if_index=1, env_extra={}, cni_path=args.ref_dir)
    plugins = [flat, ref]
    node_sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    node_sock.bind((0, 0))

    total = args.warmup + args.iterations
    for it in range(total):
        order = plugins if it % 2 == 0 else plugins[::-1]
        for p in order:
            one(p, args, it, it >= args.warmup, node_sock)
        if (it + 1) % 50 == 0:
            print(f"  {it + 1}/{total} iterations", file=sys.stderr)
    # Process start-up floor: VERSION, alternating, same pauses.
    for it in range(args.iterations):
        for p in (plugins if it % 2 == 0 else plugins[::-1]):
            p.samples["version"].append(p.version())
            time.sleep(args.pause_ms / 1000.0 / 3)

    if args.json:
        with open(args.json, "w") as f:
            json.dump({p.label: p.samples for p in plugins}, f)

    def row(name, key, note=""):
        a, b = flat.samples[key], ref.samples[key]
        fa, fb = (pct(a, 50), pct(a, 95)), (pct(b, 50), pct(b, 95))
        ratio = lambda x, y: f"{x / y:.2f}" if y > 0 else "n/a"
        return (f"| {name} | {ms(fa[0]):.2f} | {ms(fa[1]):.2f} | {ms(fb[0]):.2f} | {ms(fb[1]):.2f} "
                f"| {ratio(fa[0], fb[0])} | {ratio(fa[1], fb[1])} |{note}")

    for p in plugins:
        p.samples["del_complete"] = [d + s for d, s in zip(p.samples["del"], p.samples["settled"])]
    n = args.iterations
    print(f"\n{n} iterations each (after {args.warmup} warm-up), alternating, {args.pause_ms:g} ms pauses; "
          f"times in ms, percentiles nearest-rank\n")
    print("| measurement | flatnet p50 | flatnet p95 | reference p50 | reference p95 | ratio p50 | ratio p95 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(row("ADD", "add"))
    print(row("DEL (until the plugin exits)", "del"))
    print(row("after DEL returned: until both veth ends are unlisted", "unlisted"))
    print(row("after DEL returned: until the kernel work and every plugin process are done", "settled"))
    print(row("DEL + that (teardown complete)", "del_complete"))
    print(row("VERSION (process start-up floor)", "version"))
    print()
    for p in plugins:
        s = p.samples
        print(f"{p.label}: ADD mean {ms(statistics.mean(s['add'])):.2f} min {ms(min(s['add'])):.2f} "
              f"max {ms(max(s['add'])):.2f}; DEL mean {ms(statistics.mean(s['del'])):.2f} "
              f"min {ms(min(s['del'])):.2f} max {ms(max(s['del'])):.2f}")


if __name__ == "__main__":
    main()
