#!/usr/bin/env python3
"""Markdown tables from ingress-results.tsv (bench/ingress/run.sh): best and median over the
repetitions per config, and flatnet's median req/s as a ratio of each peer's.
usage: summarize.py ingress-results.tsv"""
import csv, re, statistics as st, sys
from collections import OrderedDict


def us(s):
    m = re.match(r"([\d.]+)(us|ms|s)$", s or "")
    return float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)] if m else float("nan")


def med(xs):
    return st.median(xs) if xs else float("nan")


rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
g = OrderedDict()
for r in rows:
    g.setdefault((r["config"], r["conns"]), []).append(r)
print("| config | conns | reps | req/s best | req/s median | p50 µs | p90 µs | p99 µs | server CPU % (median) | req/s per server CPU-second (median) | non-2xx / errors |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
medians = {}
for (cfg, c), rs in g.items():
    rps = [float(r["req_per_s"]) for r in rs]
    cpu = [float(r["measured_proc_cpu%"]) for r in rs]
    eff = [float(r["req_per_s"]) / (float(r["measured_proc_cpu%"]) / 100) for r in rs if float(r["measured_proc_cpu%"]) > 0]
    errs = sorted(set(r["non2xx/errors"] for r in rs))
    medians[(cfg, c)] = (med(rps), med(eff))
    print(f"| {cfg} | {c} | {len(rs)} | {max(rps):,.0f} | {med(rps):,.0f} | {med([us(r['p50']) for r in rs]):,.0f} | "
          f"{med([us(r['p90']) for r in rs]):,.0f} | {med([us(r['p99']) for r in rs]):,.0f} | {med(cpu):.0f} | {med(eff):,.0f} | {'; '.join(errs)} |")
print()
for c in sorted({c for _, c in medians}, key=int, reverse=True):
    for f in ("flatnet", "flatnet2", "flatnet3"):
        if (f, c) not in medians:
            continue
        f_rps, f_eff = medians[(f, c)]
        for peer in ("nginx", "haproxy", "direct", "flatnet"):
            if peer != f and (peer, c) in medians:
                p_rps, p_eff = medians[(peer, c)]
                print(f"- {c} connection(s): {f} / {peer} = {f_rps / p_rps:.2f}x req/s, {f_eff / p_eff:.2f}x req/s per CPU-second")
