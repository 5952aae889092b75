#!/usr/bin/env python3
"""Prints the Markdown report of bench/services/run.sh from its raw results.

    report.py OUTDIR

OUTDIR holds run.json, sync.jsonl (one JSON object per backend, N and rep), and optionally
agent.json, throughput.md and end.json. Times are milliseconds unless a unit says otherwise.
Percentiles are nearest-rank over all samples of all reps.
"""

import json
import math
import os
import sys


def pct(v, p):
    v = sorted(v)
    if not v:
        return float("nan")
    return v[max(1, math.ceil(p / 100 * len(v))) - 1]


def med(v):
    return pct(v, 50)


def f(x, unit="ms"):
    """A time in ms, printed in ms below 10 s, else in s."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if unit == "ms" and x >= 10000:
        return "%.1f s" % (x / 1000)
    if x >= 100:
        return "%.0f" % x
    if x >= 10:
        return "%.1f" % x
    return "%.2f" % x


def fu(x):
    """A time in ms with its unit."""
    s = f(x)
    return s if s.endswith(" s") else s + " ms"


def spread(v):
    """min / median / p90 / max."""
    if not v:
        return "–"
    return " / ".join(f(x) for x in (min(v), med(v), pct(v, 90), max(v)))


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    r = a / b
    if r >= 10:
        return "%.0f×" % r
    if r >= 0.1:
        return "%.1f×" % r
    return "%.2f×" % r


def main():
    out = sys.argv[1]
    run = json.load(open(os.path.join(out, "run.json")))
    rows = [json.loads(l) for l in open(os.path.join(out, "sync.jsonl")) if l.strip()]
    end = {}
    if os.path.exists(os.path.join(out, "end.json")):
        end = json.load(open(os.path.join(out, "end.json")))
    sizes = [int(n) for n in run["sizes"].split()]
    p = print

    p("Command: `sudo bench/services/run.sh` (SIZES=\"%s\" M=%d K=%d SCALE=%d KP_CHANGES=%d REPS=%d "
      "KP_TIMEOUT=%d IPT_NFT_TIMEOUT=%d RSS_N=%d), started %s, %s s in all."
      % (run["sizes"], run["m"], run["k"], run["scale"], run["kp_changes"], run["reps"], run["kp_timeout"],
         run["ipt_nft_timeout"], run["rss_n"], run["started"], end.get("seconds", "?")))
    p("Binaries built from commit %s." % run["commit"])
    p("Machine: %s CPUs (%s), Linux %s; %s; %s; %s."
      % (run["nproc"], run["cpu"], run["kernel"], run["nft"], run["iptables"], run["etcd"]))
    p("Load average (1/5/15 min) at start: %s; at end: %s. Before each backend: %s."
      % (run["load_start"], end.get("load_end", "?"),
         ", ".join("%s N=%d %s" % (r["bench"], r["services"], r["load_before"].split()[0]) for r in rows)))
    p()

    def pick(bench, n):
        return [r for r in rows if r["bench"] == bench and r["services"] == n]

    # ------------------------------------------------------------------ full sync
    p("#### Full sync (wall time, ms; median over reps, and every rep)")
    p()
    p("| N | backend | full sync | reps | what it includes | vs flatnet |")
    p("|---|---|---:|---|---|---:|")
    flat_full = {}
    for n in sizes:
        for r in pick("flatnet", n):
            flat_full.setdefault(n, []).append(r["full"]["total_ms"])
        base = med(flat_full[n]) if n in flat_full else None
        for bench in ("flatnet", "ipt-legacy", "ipt-nft", "nft"):
            rs = pick(bench, n)
            if not rs:
                continue
            if bench.startswith("flatnet"):
                vals = [r["full"]["total_ms"] for r in rs]
                c = rs[0]["full"]["apply_calls"]
                what = ("decode + compile %s + apply %s (nft -f structure %s, element batch of %d ops %s, "
                        "nft -j list chains %s); machine's VmallocUsed %+.0f MiB"
                        % (f(med([r["full"]["take_ms"] + r["full"]["compile_ms"] + r["full"]["diff_ms"] for r in rs])),
                           f(med([r["full"]["apply_ms"] for r in rs])),
                           f(med([r["full"]["apply_calls"]["nft_script"]["ms"] for r in rs])),
                           c["nft_elements"]["size"],
                           f(med([r["full"]["apply_calls"]["nft_elements"]["ms"] for r in rs])),
                           f(med([r["full"]["apply_calls"]["nft_chains"]["ms"] for r in rs])),
                           med([r["full"]["kernel_mem_delta_mib"]["VmallocUsed"] for r in rs])))
                label = "flatnet"
            else:
                done = [r for r in rs if r["steps"].get("full", {}).get("rc") == 0]
                vals = [r["steps"]["full"]["ms"] for r in done]
                label = {"ipt-legacy": "kube-proxy iptables, `iptables-legacy-restore`",
                         "ipt-nft": "kube-proxy iptables, `iptables-nft-restore`",
                         "nft": "kube-proxy nftables, `nft -f`"}[bench]
                cpu = [r["steps"]["full"]["cpu_ms"] for r in rs if "full" in r["steps"]]
                rss = [r["steps"]["full"]["maxrss_mib"] for r in rs if "full" in r["steps"]]
                what = "one process; CPU %s (sys %s), peak RSS %s MiB" % (
                    fu(med(cpu)) if cpu else "–",
                    fu(med([r["steps"]["full"]["sys_ms"] for r in rs if "full" in r["steps"]])) if cpu else "–",
                    "%.0f" % med(rss) if rss else "–")
                notdone = [r for r in rs if r not in done]
                if notdone:
                    what += "; **%d of %d did not finish in %d s** (%s)" % (
                        len(notdone), len(rs), notdone[0]["timeout_s"], notdone[0]["problem"])
            if bench == "flatnet":
                vs = "1"
            elif vals:
                vs = ratio(med(vals), base)
            else:
                vs = "> %s" % ratio(rs[0]["timeout_s"] * 1000, base)
            cell = f(med(vals)) if vals else "did not finish"
            p("| %d | %s | %s | %s | %s | %s |" % (
                n, label, cell, " ".join(f(v) for v in vals) or "–", what, vs))
    p()

    # ------------------------------------------------------------------ one change
    p("#### One endpoint change (ms: min / median / p90 / max over all changes of all reps)")
    p()
    p("| N | backend and what is timed | changes | time | median vs flatnet's agent path |")
    p("|---|---|---:|---|---:|")
    for n in sizes:
        fl = pick("flatnet", n)
        tot = [x for r in fl for x in r["change"]["samples"]["total_ms"]]
        app = [x for r in fl for x in r["change"]["samples"]["apply_ms"]]
        dp = [x for r in fl for x in r["change"]["samples"]["dataplane_ms"]]
        base = med(tot) if tot else None
        if fl:
            comp = [r["change"]["take_ms"]["median"] + r["change"]["compile_ms"]["median"]
                    + r["change"]["diff_ms"]["median"] for r in fl]
            p("| %d | **flatnet, as the agent does it**: decode the slice + recompile its service + diff + apply | %d | %s | 1 |"
              % (n, len(tot), spread(tot)))
            p("| %d | flatnet: of that, user space (decode + recompile + diff, medians summed) | | %s | |" % (n, f(med(comp))))
            p("| %d | flatnet: of that, `Work::run` (netlink batch and cleanups) | %d | %s | %s |"
              % (n, len(app), spread(app), ratio(med(app), base)))
            p("| %d | flatnet: of that, the netlink batch alone (%s element ops, median) | %d | %s | %s |"
              % (n, f(med([r["change"]["element_ops"]["median"] for r in fl])), len(dp), spread(dp),
                 ratio(med(dp), base)))
            sc = [x for r in fl for x in r["scale"]["samples"]["total_ms"]]
            scd = [x for r in fl for x in r["scale"]["samples"]["dataplane_ms"]]
            if sc:
                p("| %d | flatnet: endpoint added/removed (new count: `lb-N` chain made/deleted by `nft -f`), agent path | %d | %s | %s |"
                  % (n, len(sc), spread(sc), ratio(med(sc), base)))
                p("| %d | flatnet: of that, dataplane (`nft -f` + batch) | %d | %s | %s |"
                  % (n, len(scd), spread(scd), ratio(med(scd), base)))
        for bench, label in (("ipt-legacy", "kube-proxy iptables-legacy: KEP-3453 partial restore"),
                             ("ipt-nft", "kube-proxy iptables-nft: KEP-3453 partial restore")):
            rs = pick(bench, n)
            if not rs:
                continue
            ch = [c["ms"] for r in rs for c in r["steps"].get("change", []) if c["rc"] == 0]
            if ch:
                p("| %d | %s | %d | %s | %s |" % (n, label, len(ch), spread(ch), ratio(med(ch), base)))
            else:
                p("| %d | %s | 0 | not measured: %s | – |" % (n, label, rs[0]["problem"]))
            rsy = [r["steps"]["resync"]["ms"] for r in rs if "resync" in r["steps"]]
            sav = [r["steps"]["save_nat"]["ms"] for r in rs if "save_nat" in r["steps"]]
            if rsy:
                p("| %d | %s: full resync (periodic or forced full restore) | %d | %s | %s |"
                  % (n, bench, len(rsy), spread(rsy), ratio(med(rsy), base)))
            if sav:
                p("| %d | %s: `iptables-save -t nat` (stale-chain scan) | %d | %s | %s |"
                  % (n, bench, len(sav), spread(sav), ratio(med(sav), base)))
        rs = pick("nft", n)
        if rs:
            ch = [c for r in rs for c in r["steps"].get("change", [])]
            if ch:
                sync = [c["sync_ms"] for c in ch]
                tx = [c["tx"]["ms"] for c in ch]
                lc = [c["list_chains"]["ms"] + c["list_sets"]["ms"] for c in ch]
                st = [c["delete_stale"]["ms"] for c in ch]
                p("| %d | **kube-proxy nftables: one sync** (`list chains` + `list sets` + transaction) | %d | %s | %s |"
                  % (n, len(sync), spread(sync), ratio(med(sync), base)))
                p("| %d | kube-proxy nftables: the transaction alone | %d | %s | %s |" % (n, len(tx), spread(tx), ratio(med(tx), base)))
                p("| %d | kube-proxy nftables: the two list calls | %d | %s | %s |" % (n, len(lc), spread(lc), ratio(med(lc), base)))
                p("| %d | kube-proxy nftables: next sync's stale chain deletion | %d | %s | %s |" % (n, len(st), spread(st), ratio(med(st), base)))
            else:
                p("| %d | kube-proxy nftables | 0 | not measured: %s | – |" % (n, rs[0]["problem"]))
    p()

    p("Memory of the proxy_sync process (VmRSS MiB: at start / with the N services loaded into "
      "the compiler and applied / at the end): " + "; ".join(
          "%s N=%d: %s" % (r["bench"], r["services"], " / ".join(
              str(r["rss_mib"][k]) for k in ("start", "loaded", "end")))
          for r in rows if r["bench"].startswith("flatnet") and "rss_mib" in r))
    p()

    # ------------------------------------------------------------------ restart
    p("#### flatnet restart (a fresh applier over the loaded table: flush + reload of every element in one batch)")
    p()
    p("| N | total (median) | decode + compile | `nft -f` structure | element batch (flush + add) | `nft -j list chains` |")
    p("|---|---:|---:|---:|---:|---:|")
    for n in sizes:
        fl = pick("flatnet", n)
        if fl:
            g = lambda k: med([r["restart"]["apply_calls"][k]["ms"] for r in fl])
            p("| %d | %s | %s | %s | %s | %s |" % (
                n, f(med([r["restart"]["total_ms"] for r in fl])),
                f(med([r["restart"]["take_ms"] + r["restart"]["compile_ms"] + r["restart"]["diff_ms"] for r in fl])),
                f(g("nft_script")), f(g("nft_elements")), f(g("nft_chains"))))
    p()
    p("Verification against the kernel after the changes:")
    p()
    for r in rows:
        v = r.get("verified") or r.get("steps", {}).get("verified")
        if r.get("ok", True) and v:
            state = "ok: %s" % json.dumps(v, sort_keys=True)
        else:
            state = "**not verified**: %s" % r.get("problem")
        p("- %s, N=%d, rep %d: %s" % (r["bench"], r["services"], r["rep"], state))
    p()

    # ------------------------------------------------------------------ agent
    ap = os.path.join(out, "agent.json")
    if os.path.exists(ap):
        a = json.load(open(ap))
        p("#### The agent process at %d services (real etcd, `flatnet agent --netns`)" % a["services"])
        p()
        p("| moment | VmRSS MiB | VmHWM (peak) MiB |")
        p("|---|---:|---:|")
        for k, label in (("idle", "idle, 0 services (config only)"),
                         ("loaded", "after %d services + %d slices were put while it ran (%d puts in %.1f s)"
                          % (a["services"], a["services"], a["load"]["puts"], a["load"]["seconds"])),
                         ("after_changes", "after %d endpoint changes through etcd" % a["change"]["changes"]),
                         ("restarted", "restarted with everything in the store (fresh process)")):
            p("| %s | %.1f | %.1f |" % (label, a[k]["rss_mib"], a[k]["hwm_mib"]))
        p()
        c = a["change"]["put_to_status_ms"]
        p("- Applied %.2f s after the last put returned (it followed the load as it came); after a restart, "
          "%.2f s from process start to the status reporting every service applied."
          % (a["apply_after_last_put_s"], a["restart_to_applied_s"]))
        p("- One endpoint change through etcd, from the put returning to the agent's status reporting it "
          "applied (watch, 5 ms batch window, compile, apply, status write): min %s / median %s / p90 %s / max %s ms (%d changes)."
          % (f(c["min"]), f(c["median"]), f(c["p90"]), f(c["max"]), c["n"]))
        p("- The kernel held %d `backends` elements afterwards (expected %d)." % (a["backends_elements"], a["services"] * run["m"]))
        p()

    tp = os.path.join(out, "throughput.md")
    if os.path.exists(tp):
        p("#### Pod-to-service vs pod-to-pod throughput")
        p()
        sys.stdout.write(open(tp).read())
        p()


if __name__ == "__main__":
    main()
