#!/usr/bin/env bash
# A/B of two proxy_sync builds (the service proxy's own code over netlink), interleaved in fresh
# namespaces as run.sh runs the flatnet backend, same flags and seeds:
#
#   sudo REPS=3 N=10000 M=10 bench/services/ab.sh BEFORE_BIN AFTER_BIN
#
# BEFORE_BIN / AFTER_BIN: two `proxy_sync` binaries (`cargo build --release -p services --example
# proxy_sync`; before issue 14 it was `-p agent`). Prints one JSON line per run and a table of
# medians (milliseconds; RSS in MiB). Namespaces are named fab-<pid>-* and removed on exit; the
# root network namespace is never touched.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "run as root (needs network namespaces)" >&2; exit 1; }
[ $# = 2 ] || { echo "usage: $0 BEFORE_BIN AFTER_BIN" >&2; exit 2; }
REPS=${REPS:-3} N=${N:-10000} M=${M:-10} K=${K:-20} SCALE=${SCALE:-4}
tmp=$(mktemp -d /tmp/fab.XXXXXX)
cp "$1" "$tmp/before"; cp "$2" "$tmp/after"
PFX=fab-$$
cleanup() {
  for ns in $(ip netns list | awk '{print $1}' | grep "^$PFX-" || true); do ip netns del "$ns"; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
: >"$tmp/runs.jsonl"
for rep in $(seq "$REPS"); do
  for side in before after; do
    ns=$PFX-$side-$rep
    ip netns add "$ns"; ip -n "$ns" link set lo up
    echo "== rep $rep/$REPS $side (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    "$tmp/$side" --netns "/run/netns/$ns" --services "$N" --endpoints "$M" \
      --changes "$K" --scale-changes "$SCALE" --seed "$rep" >"$tmp/one.json"
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["side"]=sys.argv[2]; print(json.dumps(d))' \
      "$tmp/one.json" "$side" | tee -a "$tmp/runs.jsonl"
    ip netns del "$ns"; sleep 3
  done
done
python3 - "$tmp/runs.jsonl" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
def flat(d, p=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict): out.update(flat(v, p + k + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool): out[p + k] = v
    return out
rows = {}
for r in runs:
    for k, v in flat(r).items(): rows.setdefault(k, {}).setdefault(r["side"], []).append(v)
print("| metric | before (median) | after (median) | after/before |")
print("|---|---|---|---|")
for k, sides in sorted(rows.items()):
    b, a = sides.get("before"), sides.get("after")
    if not b or not a: continue
    mb, ma = statistics.median(b), statistics.median(a)
    print(f"| {k} | {mb:.3f} | {ma:.3f} | {ma/mb:.2f} |" if mb else f"| {k} | {mb} | {ma} | - |")
PY
