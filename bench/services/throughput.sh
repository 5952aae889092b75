#!/usr/bin/env bash
# Pod-to-service against pod-to-pod TCP throughput (issue 5), in the same flatnet labs and the
# same run: iperf3 from pod cli1 to a server pod's IP, and to a ClusterIP Service in front of the
# same pod, interleaved round by round (the order alternates every round). Cases: same node and
# cross node in a host-gw lab (2 nodes), cross node in a vxlan lab (2 nodes).
# Prints Markdown on stdout (progress on stderr). Needs root; labs are named bsvc<kind><pid> and
# taken down on exit; the root namespace is never touched.
#
#   sudo bench/services/throughput.sh        # SECS=5 REPS=5 by default; BIN=target/release
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
BIN=${BIN:-$root/target/release}
SECS=${SECS:-5}
REPS=${REPS:-5}
export SECS

[ "$(id -u)" = 0 ] || { echo "throughput.sh: needs root (network namespaces)" >&2; exit 1; }
for t in "$BIN/flatnet" "$BIN/flatnet-cni" iperf3 jq bc; do
  command -v "$t" >/dev/null || { echo "throughput.sh: $t not found" >&2; exit 1; }
done

GW=bsvcgw$$ VX=bsvcvx$$
tmp=$(mktemp -d /tmp/flatnet-bench-svc-tput.XXXXXX)
cleanup() {
  local rc=$?
  set +e
  trap '' INT TERM
  local l
  for l in $GW $VX; do
    "$tmp/bin/flatnet" --lab=$l lab down >"$tmp/down-$l.log" 2>&1 || {
      echo "throughput.sh: lab down $l failed:" >&2; cat "$tmp/down-$l.log" >&2; }
  done
  rm -rf "$tmp"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir "$tmp/bin" && cp "$BIN/flatnet" "$BIN/flatnet-cni" "$tmp/bin/"
export PATH=$tmp/bin:$PATH

# say now since fmt median gbps quiet pods podip runs med ratio_cells
. "$root/bench/dataplane/lib.sh"

services() { # NAME:APP ... -> ClusterIP Services on 5201 selecting app: APP
  local s
  for s in "$@"; do
    cat <<EOF
---
apiVersion: v1
kind: Service
metadata: {name: ${s%%:*}}
spec:
  selector: {app: ${s##*:}}
  ports: [{port: 5201, targetPort: 5201, protocol: TCP}]
EOF
  done
}
clusterip() { flatnet --lab="$1" get svc "$2" -o json | jq -er .spec.clusterIP; }
# `lab ip` -> iperf3's JSON of one run from cli1 to ip:5201. A run that iperf3 reports as
# failed (e.g. "the server is busy" while the server still finishes the previous test) is
# logged and retried up to twice, for pod and service runs alike.
iperf_json() {
  local j attempt
  for attempt in 1 2 3; do
    j=$(flatnet --lab="$1" exec cli1 -- iperf3 -c "$2" -p 5201 -t "$SECS" -J || true)
    if jq -e '.error == null and .end.sum_received.bits_per_second != null' <<<"$j" >/dev/null 2>&1; then
      echo "$j"
      return 0
    fi
    echo "throughput.sh: iperf3 to $2 (attempt $attempt): $(jq -r '.error // "no result"' <<<"$j" 2>/dev/null || echo "unreadable output")" >&2
    sleep 1
  done
  return 1
}
fl_pod() { iperf_json "$1" "$2" | jq -e '.end.sum_received.bits_per_second'; }
# Through a ClusterIP: the client must have connected to the ClusterIP itself (which no
# interface holds, so the connection was DNATed by the proxy).
fl_svc() {
  local j
  j=$(iperf_json "$1" "$2") || return 1
  jq -e --arg ip "$2" '.start.connected[0].remote_host == $ip' <<<"$j" >/dev/null || {
    echo "throughput.sh: iperf3 to $2 did not connect to the ClusterIP: $(jq -c .start.connected <<<"$j")" >&2
    return 1; }
  jq -e '.end.sum_received.bits_per_second' <<<"$j"
}

started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
t_start=$(now)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
say "labs $GW (host-gw, 2 nodes) and $VX (vxlan, 2 nodes)"
quiet flatnet --lab=$GW lab up --nodes 2 --backend host-gw
quiet flatnet --lab=$VX lab up --nodes 2 --backend vxlan
{ pods cli1:node1 srv1:node1 srv2:node2; services svc-same:srv1 svc-cross:srv2; } >"$tmp/gw.yaml"
{ pods cli1:node1 srv2:node2; services svc-cross:srv2; } >"$tmp/vx.yaml"
quiet flatnet --lab=$GW apply -f "$tmp/gw.yaml"
quiet flatnet --lab=$VX apply -f "$tmp/vx.yaml"
quiet flatnet --lab=$GW wait --converged --timeout 60s
quiet flatnet --lab=$VX wait --converged --timeout 60s
ip_same=$(podip $GW srv1) ip_gw=$(podip $GW srv2) ip_vx=$(podip $VX srv2)
cip_same=$(clusterip $GW svc-same) cip_gw=$(clusterip $GW svc-cross) cip_vx=$(clusterip $VX svc-cross)

declare -A raw
for rep in $(seq "$REPS"); do
  say "round $rep/$REPS"
  for c in same gw vx; do
    case $c in
      same) lab=$GW pip=$ip_same cip=$cip_same ;;
      gw) lab=$GW pip=$ip_gw cip=$cip_gw ;;
      vx) lab=$VX pip=$ip_vx cip=$cip_vx ;;
    esac
    if (( rep % 2 )); then
      raw[pod_$c]+="$(fl_pod $lab "$pip") "; raw[svc_$c]+="$(fl_svc $lab "$cip") "
    else
      raw[svc_$c]+="$(fl_svc $lab "$cip") "; raw[pod_$c]+="$(fl_pod $lab "$pip") "
    fi
  done
done
total=$(since "$t_start")
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

cat <<EOF
Command: \`sudo bench/services/throughput.sh  (SECS=$SECS REPS=$REPS)\`, $started, $(fmt "$total") s in all.
Load average (1/5/15 min) at start: $load_start; at end: $load_end.
iperf3 TCP, one stream, ${SECS} s, receiver's bits/s; pod and service runs of one round back to back
(order alternating by round); the service runs connect to the ClusterIP (checked in iperf3's JSON).

| case | pod-to-pod Gbit/s (runs) | median | pod-to-service Gbit/s (runs) | median | service/pod, ratio of medians | per-round ratios (median) | goal | met |
|---|---|---|---|---|---|---|---|---|
EOF
row() { # label case goal%
  echo "| $1 | $(runs "${raw[pod_$2]}") | $(med "${raw[pod_$2]}") | $(runs "${raw[svc_$2]}") | $(med "${raw[svc_$2]}") | $(ratio_cells "${raw[svc_$2]}" "${raw[pod_$2]}" "$3") |"
}
row "same node (host-gw lab)" same 97
row "cross node, host-gw" gw 97
row "cross node, vxlan" vx 97
