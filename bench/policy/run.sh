#!/usr/bin/env bash
# NetworkPolicy benchmark of issue 6, one command (design.md §10): per-packet cost with 0, 100
# and 1,000 policies selecting the destination among 1,000 pods (TCP_RR and TCP_CRR between
# two pods on one node, levels alternated in one run, several reps), and the latency of one
# policy change at 1,000 policies (store write -> agent status, and the agent's own
# compile + diff + apply time). Everything runs in crates/agent/examples/policy_bench.rs with
# the agent's own code; see its doc for the method.
#
#   sudo bench/policy/run.sh            # REPS=15 SECS=0.7 CHANGES=20 LEVELS=0,100,1000 PODS=1000
#
# Many short samples with the levels interleaved, because on a shared 2-core machine other
# work comes in bursts: the table gives the median and the best sample of each level (the
# best is the least disturbed one), each also as a ratio to 0 policies.
#
# Needs root (network namespaces), nft, ip, jq and the release build of the example
# (`cargo build --release --example policy_bench -p agent`, done here if missing). The root
# network namespace is never touched: the example makes namespaces named fpb-<pid>-* (testkit) and
# deletes them on exit. Prints Markdown on stdout; the raw JSON goes to $OUT.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
REPS=${REPS:-15}
SECS=${SECS:-0.7}
CHANGES=${CHANGES:-20}
LEVELS=${LEVELS:-0,100,1000}
PODS=${PODS:-1000}
OUT=${OUT:-/tmp/flatnet-bench-policy-$(date -u +%Y%m%dT%H%M%SZ).json}
BIN=$root/target/release/examples/policy_bench

[ "$(id -u)" = 0 ] || { echo "run.sh: needs root (network namespaces)" >&2; exit 1; }
for t in nft ip jq; do
  command -v "$t" >/dev/null || { echo "run.sh: $t not found" >&2; exit 1; }
done
if [ ! -x "$BIN" ]; then
  (cd "$root" && cargo build --release --example policy_bench -p agent) >&2
fi

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
"$BIN" --levels "$LEVELS" --pods "$PODS" --reps "$REPS" --secs "$SECS" --changes "$CHANGES" >"$OUT"

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')
echo "Machine: $(nproc) cores ($cpu), kernel $(uname -r), nftables $(nft --version | awk '{print $2}')."
echo "Pods in the store: $(jq .pods "$OUT"); $REPS reps of ${SECS} s per level and test, levels rotated every rep."
echo
echo "Load average before: $LOAD_BEFORE; after: $(cut -d' ' -f1-3 /proc/loadavg)."
echo
echo "| policies selecting the server | set elements | TCP_RR tx/s median (min-max) | median vs 0 | best vs 0 | TCP_CRR conn/s median (min-max) | median vs 0 | best vs 0 |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
jq -r '(.per_packet[0]) as $b | .per_packet[] | "| \(.policies) | \(.elements) | \(.rr_median|floor) (\(.rr_min|floor)-\(.rr_max|floor)) | \(.rr_ratio*1000|round/1000) | \(.rr_max/$b.rr_max*1000|round/1000) | \(.crr_median|floor) (\(.crr_min|floor)-\(.crr_max|floor)) | \(.crr_ratio*1000|round/1000) | \(.crr_max/$b.crr_max*1000|round/1000) |"' "$OUT"
echo
jq -r '.change | "One policy change at \(.policies) policies (\(.end_to_end_ms.n) changes): store write -> agent status \(.end_to_end_ms.median*10|round/10) ms median (\(.end_to_end_ms.min*10|round/10)-\(.end_to_end_ms.max*10|round/10)); the agent'"'"'s compile + diff + apply \(.agent_sync_ms.median*10|round/10) ms median (\(.agent_sync_ms.min*10|round/10)-\(.agent_sync_ms.max*10|round/10))."' "$OUT"
echo
echo "Raw results: $OUT"
