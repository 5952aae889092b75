#!/usr/bin/env bash
# Dataplane benchmark, one run, side by side (design.md §10):
#   1. iperf3 TCP pod-to-pod through flatnet labs (same node; cross node host-gw; cross node vxlan)
#      interleaved with the hand-built baselines of baseline.sh, each case REPS times, median;
#   2. the agent's RSS and CPU at idle in a 3-node lab;
#   3. `lab up` wall time for 3 and 10 nodes, and `wait --converged` right after it.
# Prints Markdown on stdout (progress on stderr). Needs root; the root namespace is never touched:
# everything happens in lab namespaces and in namespaces baseline.sh makes, all removed on exit.
#
#   sudo bench/dataplane/run.sh          # SECS=5 REPS=3 IDLE=10 by default
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
BIN=${BIN:-$root/target/release}
SECS=${SECS:-5}
REPS=${REPS:-3}
IDLE=${IDLE:-10}
export SECS

[ "$(id -u)" = 0 ] || { echo "run.sh: needs root (network namespaces)" >&2; exit 1; }
for t in "$BIN/flatnet" "$BIN/flatnet-cni" iperf3 jq bc ip bridge; do
  command -v "$t" >/dev/null || { echo "run.sh: $t not found" >&2; exit 1; }
done

# Unique names: lab names are 1-16 lowercase letters and digits.
UP=benchup$$ GW=benchgw$$ VX=benchvx$$ BL=fnbd$$
tmp=$(mktemp -d /tmp/flatnet-bench-dataplane.XXXXXX)
cleanup() {
  local rc=$?
  set +e
  trap '' INT TERM # a second signal must not cut the cleanup short
  local fn=$tmp/bin/flatnet
  [ -x "$fn" ] || fn=$BIN/flatnet
  for l in $UP $GW $VX; do
    "$fn" --lab=$l lab down >"$tmp/down-$l.log" 2>&1 || {
      echo "run.sh: lab down $l failed:" >&2; cat "$tmp/down-$l.log" >&2; }
  done
  "$here/baseline.sh" down $BL
  rm -rf "$tmp"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# A private copy of the binaries: a rebuild of target/ during the run cannot change them.
mkdir "$tmp/bin" && cp "$BIN/flatnet" "$BIN/flatnet-cni" "$tmp/bin/"
export PATH=$tmp/bin:$PATH

# say now since fmt median gbps quiet pods podip fl runs med ratio_cells
. "$here/lib.sh"

cmdline="sudo bench/dataplane/run.sh  (SECS=$SECS REPS=$REPS IDLE=$IDLE)"
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null)" ] || commit+=" plus uncommitted changes"
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
t_start=$(now)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- 3. lab up wall time
declare -A up_t conv_t down_t
for rep in $(seq "$REPS"); do
  for n in 3 10; do
    say "lab up --nodes $n (run $rep/$REPS)"
    t=$(now); quiet flatnet --lab=$UP lab up --nodes $n; up_t[$n]+="$(since "$t") "
    t=$(now); quiet flatnet --lab=$UP wait --converged --timeout 60s; conv_t[$n]+="$(since "$t") "
    t=$(now); quiet flatnet --lab=$UP lab down; down_t[$n]+="$(since "$t") "
  done
done

# ---------------------------------------------------------------- the throughput labs
say "lab $GW: 3 nodes, host-gw; lab $VX: 2 nodes, vxlan"
quiet flatnet --lab=$GW lab up --nodes 3 --backend host-gw
quiet flatnet --lab=$VX lab up --nodes 2 --backend vxlan
pods cli1:node1 srv1:node1 srv2:node2 >"$tmp/gw.yaml"
pods cli1:node1 srv2:node2 >"$tmp/vx.yaml"
quiet flatnet --lab=$GW apply -f "$tmp/gw.yaml"
quiet flatnet --lab=$VX apply -f "$tmp/vx.yaml"
quiet flatnet --lab=$GW wait --converged --timeout 60s
quiet flatnet --lab=$VX wait --converged --timeout 60s
ip_same=$(podip $GW srv1) ip_gw=$(podip $GW srv2) ip_vx=$(podip $VX srv2)
# From netlink, not /sys: `flatnet exec` enters only the network namespace, so /sys still shows
# the root namespace's interfaces.
podmtu() { flatnet --lab=$1 exec cli1 -- ip -o link show eth0 | sed 's/.* mtu \([0-9]*\) .*/\1/'; }
mtu_gw=$(podmtu $GW) mtu_vx=$(podmtu $VX)

# ---------------------------------------------------------------- 2. agent at idle (3-node lab)
say "agent idle: ${IDLE} s window on $GW"
sleep 2 # let the last status writes settle
hz=$(getconf CLK_TCK)
ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; } # utime+stime (fields 14, 15)
declare -A apid t0 t1 rss
for k in 1 2 3; do
  apid[$k]=$(cat /run/flatnet/$GW/agent-node$k.pid)
  t0[$k]=$(ticks "${apid[$k]}")
done
w0=$(now)
sleep "$IDLE"
for k in 1 2 3; do t1[$k]=$(ticks "${apid[$k]}"); done
window=$(since "$w0")
for k in 1 2 3; do rss[$k]=$(awk '/^VmRSS/{print $2}' "/proc/${apid[$k]}/status"); done

# ---------------------------------------------------------------- 1. throughput, interleaved
say "baseline namespaces ($BL)"
"$here/baseline.sh" up $BL
bl() { "$here/baseline.sh" run $BL "$1"; }
declare -A raw
for rep in $(seq "$REPS"); do
  say "throughput round $rep/$REPS"
  raw[fl_same]+="$(fl $GW "$ip_same") "; raw[bl_routed1]+="$(bl routed1) "
  raw[fl_hostgw]+="$(fl $GW "$ip_gw") "; raw[bl_routed2b]+="$(bl routed2b) "
  raw[fl_vxlan]+="$(fl $VX "$ip_vx") ";  raw[bl_vxlanb]+="$(bl vxlanb) "
  raw[bl_veth]+="$(bl veth) "; raw[bl_routed2]+="$(bl routed2) "; raw[bl_vxlan]+="$(bl vxlan) "
done
total=$(since "$t_start")
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- report
cpu=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')
cat <<EOF
Command: \`$cmdline\`, $started, $(fmt "$total") s in all.
Binaries: $BIN, built from commit $commit.
Machine: $(nproc) CPUs ($cpu), Linux $(uname -r), $(iperf3 --version | head -1 | cut -d' ' -f1-2).
Load average (1/5/15 min) at start: $load_start; at end: $load_end (other work on the machine adds noise to both sides alike: runs are interleaved).
Pod MTU: host-gw lab $mtu_gw, vxlan lab $mtu_vx.

| flatnet case | Gbit/s (runs) | median | baseline case | Gbit/s (runs) | median | ratio of medians | per-round ratios (median) | goal | met (ratio of medians) |
|---|---|---|---|---|---|---|---|---|---|
EOF
row() { # label flkey blkey goal%
  local f b
  f=$(median ${raw[$2]}) b=$(median ${raw[$3]})
  echo "| $1 | $(runs "${raw[$2]}") | $(gbps "$f") | ${3#bl_} | $(runs "${raw[$3]}") | $(gbps "$b") | $(ratio_cells "${raw[$2]}" "${raw[$3]}" "$4") |"
}
row "same node (host-gw lab)" fl_same bl_routed1 95
row "cross node, host-gw" fl_hostgw bl_routed2b 95
row "cross node, vxlan" fl_vxlan bl_vxlanb 90
cat <<EOF

| baseline only (anchor shapes) | Gbit/s (runs) | median |
|---|---|---|
| veth (one veth, no routing) | $(runs "${raw[bl_veth]}") | $(med "${raw[bl_veth]}") |
| routed2 (nodes on one veth) | $(runs "${raw[bl_routed2]}") | $(med "${raw[bl_routed2]}") |
| vxlan (nodes on one veth) | $(runs "${raw[bl_vxlan]}") | $(med "${raw[bl_vxlan]}") |

Agent at idle, 3-node host-gw lab with 3 pods, window $(fmt "$window") s:

| agent | pid | VmRSS MiB | CPU s in window | CPU % |
|---|---|---|---|---|
EOF
for k in 1 2 3; do
  d=$((t1[$k] - t0[$k]))
  echo "| node$k | ${apid[$k]} | $(echo "${rss[$k]} / 1024" | bc -l | xargs printf '%.1f') | $(echo "$d / $hz" | bc -l | xargs printf '%.2f') | $(echo "100 * $d / $hz / $window" | bc -l | xargs printf '%.2f') |"
done
cat <<EOF

\`lab up\` (host-gw, until it returns: all nodes Ready), then \`wait --converged\`, then \`lab down\`, seconds:

| nodes | lab up (runs) | median | wait --converged (runs) | median | lab down median |
|---|---|---|---|---|---|
EOF
for n in 3 10; do
  s() { local v o=""; for v in $1; do o+="$(fmt "$v") "; done; echo "${o% }"; }
  echo "| $n | $(s "${up_t[$n]}") | $(fmt "$(median ${up_t[$n]})") | $(s "${conv_t[$n]}") | $(fmt "$(median ${conv_t[$n]})") | $(fmt "$(median ${down_t[$n]})") |"
done
