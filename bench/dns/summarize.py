#!/usr/bin/env python3
"""Markdown table from run.sh's TSV rows: per server and query file, the best and the median
QPS and QPS per server CPU-second over the repetitions.
usage: summarize.py FILE [SKIP]   (SKIP: data rows of earlier runs to leave out)"""
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])][1:]
rows = rows[int(sys.argv[2]) if len(sys.argv) > 2 else 0:]
by = {}
for r in rows:
    if len(r) < 9 or r[0] == "server":
        continue
    by.setdefault((r[0], r[1].replace(".txt", "")), []).append((float(r[3]), float(r[8]) if r[8] != "-" else 0.0))
print("| server | queries | reps | QPS best | QPS median | QPS per server CPU-s best | median |")
print("|---|---|---|---|---|---|---|")
for (srv, q), v in sorted(by.items()):
    qps = [a for a, _ in v]; eff = [b for _, b in v]
    print(f"| {srv} | {q} | {len(v)} | {max(qps):,.0f} | {statistics.median(qps):,.0f} | {max(eff):,.0f} | {statistics.median(eff):,.0f} |")
