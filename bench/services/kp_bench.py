#!/usr/bin/env python3
"""Times kube-proxy's rule layouts in one network namespace (made and removed by run.sh).

    kp_bench.py --netns NAME --backend ipt-legacy|ipt-nft|nft --dir GENDIR [--timeout S]

GENDIR holds the files of kp_gen.py. Every step is one process, run as
`nsenter --net=/run/netns/NAME timeout S <tool> ...` and timed from spawn to exit (wall), with
its CPU time (user+sys) and peak RSS from wait4. The steps:

  iptables (iptables-legacy-restore or iptables-nft-restore, `-w 5 --noflush --counters`, as
  kube-proxy runs it):
    init (untimed setup), full, change-1..C (KEP-3453 partial restores), resync (full restore
    of the final state), then `iptables-save -t nat` (timed; also used to verify)
  nft (`nft -f`):
    full, then per change: `nft --json list chains ip` and `nft --json list sets ip` (kube-proxy's
    nftables mode runs both on every sync before its transaction), the change transaction, and
    the next sync's deletion of the stale chain; then verification by listing the changed chains.

A step that times out is reported as such ("timeout": true) and the later steps are skipped.
Prints one JSON object on stdout; progress on stderr.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time


def meminfo():
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            if k in ("VmallocUsed", "SUnreclaim"):
                out[k] = int(v.split()[0])
    return out


class Runner:
    def __init__(self, netns, timeout):
        self.netns = netns
        self.timeout = timeout

    def timed(self, argv, stdin_path=None, capture=False):
        """Runs argv in the namespace; returns (times, stdout if `capture`). ru_maxrss is in KiB."""
        cmd = ["nsenter", "--net=/run/netns/%s" % self.netns, "timeout", str(self.timeout)] + argv
        stdin = open(stdin_path, "rb") if stdin_path else None
        out_r = None
        try:
            if capture:
                out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            t0 = time.perf_counter()
            pid = os.fork()
            if pid == 0:  # child: exec the command with the right descriptors
                try:
                    if stdin is not None:
                        os.dup2(stdin.fileno(), 0)
                    else:
                        devnull = os.open("/dev/null", os.O_RDONLY)
                        os.dup2(devnull, 0)
                    if capture:
                        os.dup2(out_w, 1)
                    else:
                        os.dup2(os.open("/dev/null", os.O_WRONLY), 1)
                    os.dup2(err_w, 2)
                    os.execvp(cmd[0], cmd)
                finally:
                    os._exit(127)
            os.close(err_w)
            chunks, errs = [], []
            if capture:
                os.close(out_w)
                chunks = read_all(out_r)
            errs = read_all(err_r)
            _, status, ru = os.wait4(pid, 0)
            wall = time.perf_counter() - t0
        finally:
            if stdin is not None:
                stdin.close()
        rc = os.waitstatus_to_exitcode(status)
        res = {
            "ms": round(wall * 1000, 3),
            "cpu_ms": round((ru.ru_utime + ru.ru_stime) * 1000, 1),
            "sys_ms": round(ru.ru_stime * 1000, 1),
            "maxrss_mib": round(ru.ru_maxrss / 1024, 1),
            "rc": rc,
        }
        if rc == 124:
            res["timeout"] = True
        elif rc != 0:
            res["stderr"] = b"".join(errs).decode(errors="replace")[-2000:]
        return res, b"".join(chunks)


def read_all(fd):
    chunks = []
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            break
        chunks.append(b)
    os.close(fd)
    return chunks


def log(msg):
    print("kp_bench: " + msg, file=sys.stderr, flush=True)


def bench_iptables(r, variant, gen, expect, steps):
    restore = ["iptables-%s-restore" % variant, "-w", "5", "--noflush", "--counters"]
    save = ["iptables-%s-save" % variant, "-t", "nat"]
    res, _ = r.timed(restore, os.path.join(gen, "ipt-init.rules"))
    steps["init"] = res
    if res["rc"] != 0:
        return "init failed"
    log("%s: full restore" % variant)
    m0 = meminfo()
    res, _ = r.timed(restore, os.path.join(gen, "ipt-full.rules"))
    m1 = meminfo()
    res["kernel_mem_delta_mib"] = {k: round((m1[k] - m0[k]) / 1024, 1) for k in m0}
    steps["full"] = res
    if res["rc"] != 0:
        return "full restore did not finish in %d s" % r.timeout if res.get("timeout") else "full restore failed"
    steps["change"] = []
    for c in range(1, len(expect["changes"]) + 1):
        log("%s: partial restore %d" % (variant, c))
        res, _ = r.timed(restore, os.path.join(gen, "ipt-change-%d.rules" % c))
        steps["change"].append(res)
        if res["rc"] != 0:
            return "partial restore %d: %s" % (c, "timeout" if res.get("timeout") else "failed")
    log("%s: full resync" % variant)
    res, _ = r.timed(restore, os.path.join(gen, "ipt-resync.rules"))
    steps["resync"] = res
    if res["rc"] != 0:
        return "resync: %s" % ("timeout" if res.get("timeout") else "failed")
    res, out = r.timed(save, capture=True)
    steps["save_nat"] = res
    if res["rc"] != 0:
        return "iptables-save failed"
    return verify_iptables(out.decode(), expect, steps)


def verify_iptables(text, expect, steps):
    dnat = [l for l in text.splitlines() if "-j DNAT" in l]
    chains = [l for l in text.splitlines() if l.startswith(":KUBE-SVC-") or l.startswith(":KUBE-SEP-")]
    v = {"dnat_rules": len(dnat), "service_chains": len(chains)}
    steps["verified"] = v
    if len(dnat) != expect["dnat_rules"]:
        return "verify: %d DNAT rules, expected %d" % (len(dnat), expect["dnat_rules"])
    if len(chains) != expect["ipt_service_chains"]:
        return "verify: %d KUBE-SVC/KUBE-SEP chains, expected %d" % (len(chains), expect["ipt_service_chains"])
    if expect["changes"]:
        last = expect["changes"][-1]
        if not any("--to-destination %s:" % last["new"] in l for l in dnat):
            return "verify: no DNAT to the last new endpoint %s" % last["new"]
        if any(l.startswith(":%s " % last["ipt_stale_sep"]) for l in chains):
            return "verify: stale chain %s still exists" % last["ipt_stale_sep"]
        v["last_change"] = {"new": last["new"], "stale_chain_gone": last["ipt_stale_sep"]}
    return None


def bench_nft(r, gen, expect, steps):
    log("nft: full transaction (may take minutes at 10k services)")
    m0 = meminfo()
    res, _ = r.timed(["nft", "-f", os.path.join(gen, "nft-full.nft")])
    m1 = meminfo()
    res["kernel_mem_delta_mib"] = {k: round((m1[k] - m0[k]) / 1024, 1) for k in m0}
    steps["full"] = res
    if res["rc"] != 0:
        return "full transaction did not finish in %d s" % r.timeout if res.get("timeout") else "full transaction failed"
    steps["change"] = []
    for c in range(1, len(expect["changes"]) + 1):
        log("nft: change %d (list chains, list sets, transaction, stale deletion)" % c)
        one = {}
        one["list_chains"], _ = r.timed(["nft", "--json", "list", "chains", "ip"], capture=True)
        one["list_sets"], _ = r.timed(["nft", "--json", "list", "sets", "ip"], capture=True)
        one["tx"], _ = r.timed(["nft", "-f", os.path.join(gen, "nft-change-%d.nft" % c)])
        one["sync_ms"] = round(one["list_chains"]["ms"] + one["list_sets"]["ms"] + one["tx"]["ms"], 3)
        one["delete_stale"], _ = r.timed(["nft", "-f", os.path.join(gen, "nft-stale-%d.nft" % c)])
        steps["change"].append(one)
        for k in ("list_chains", "list_sets", "tx", "delete_stale"):
            if one[k]["rc"] != 0:
                return "change %d, %s: %s" % (c, k, "timeout" if one[k].get("timeout") else "failed")
    return verify_nft(r, expect, steps)


def verify_nft(r, expect, steps):
    res, out = r.timed(["nft", "--json", "list", "chains", "ip"], capture=True)
    if res["rc"] != 0:
        return "verify: nft list chains failed"
    names = {c["chain"]["name"] for c in json.loads(out)["nftables"]
             if "chain" in c and c["chain"]["table"] == "kube-proxy"}
    # Per-service chains are "service-HASH8-..." and "endpoint-HASH8-..." (not the fixed
    # "service-endpoints-check").
    svc_chains = [n for n in names if re.match(r"^(service|endpoint)-[A-Z2-7]{8}-", n)]
    v = {"service_chains": len(svc_chains)}
    steps["verified"] = v
    if len(svc_chains) != expect["nft_service_chains"]:
        return "verify: %d service/endpoint chains, expected %d" % (len(svc_chains), expect["nft_service_chains"])
    if expect["changes"]:
        last = expect["changes"][-1]
        if last["nft_stale_endpoint_chain"] in names:
            return "verify: stale chain %s still exists" % last["nft_stale_endpoint_chain"]
        res, out = r.timed(["nft", "list", "chain", "ip", "kube-proxy", last["nft_new_endpoint_chain"]], capture=True)
        if res["rc"] != 0 or ("dnat to %s:" % last["new"]) not in out.decode():
            return "verify: chain %s has no dnat to %s" % (last["nft_new_endpoint_chain"], last["new"])
        res, out = r.timed(["nft", "list", "chain", "ip", "kube-proxy", last["nft_service_chain"]], capture=True)
        if res["rc"] != 0 or last["nft_new_endpoint_chain"] not in out.decode():
            return "verify: %s does not point at %s" % (last["nft_service_chain"], last["nft_new_endpoint_chain"])
        v["last_change"] = {"new": last["new"], "stale_chain_gone": last["nft_stale_endpoint_chain"]}
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--netns", required=True)
    ap.add_argument("--backend", required=True, choices=["ipt-legacy", "ipt-nft", "nft"])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--timeout", type=int, default=400)
    a = ap.parse_args()
    if not os.path.exists("/run/netns/%s" % a.netns):
        ap.error("--netns %s: /run/netns/%s does not exist" % (a.netns, a.netns))
    with open(os.path.join(a.dir, "expect.json")) as f:
        expect = json.load(f)
    r = Runner(a.netns, a.timeout)
    steps = {}
    t0 = time.perf_counter()
    if a.backend == "nft":
        problem = bench_nft(r, a.dir, expect, steps)
    else:
        problem = bench_iptables(r, a.backend.split("-")[1], a.dir, expect, steps)
    print(json.dumps({"backend": a.backend, "services": expect["services"], "endpoints": expect["endpoints"],
                      "timeout_s": a.timeout, "ok": problem is None, "problem": problem,
                      "elapsed_s": round(time.perf_counter() - t0, 2), "steps": steps}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
