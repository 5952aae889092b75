#!/usr/bin/env bash
# Service proxy benchmark of issue 5, one command, side by side in one run (design.md §10):
#   1. rule sync at N services x M endpoints (N in SIZES): flatnet's proxy (the agent's own
#      Applier over netlink, crates/services/examples/proxy_sync.rs) against kube-proxy's layouts
#      reproduced by kp_gen.py and timed by kp_bench.py: iptables-restore (legacy and nft
#      variants) and the nftables verdict-map table; a fresh namespace for every backend and N;
#   2. the real agent (`flatnet agent`) against a real etcd holding RSS_N services: RSS and
#      peak RSS idle, after loading while it runs, after a restart; time to apply; end-to-end
#      latency of one endpoint change (put -> agent status reports it applied);
#   3. pod-to-service vs pod-to-pod TCP throughput in flatnet labs (throughput.sh).
# Prints Markdown on stdout (progress on stderr); keeps the raw JSON in $OUT.
#
#   sudo bench/services/run.sh
#   SIZES="1000 10000" M=10 K=20 SCALE=4 KP_CHANGES=5 REPS=1 KP_TIMEOUT=400 IPT_NFT_TIMEOUT=300
#   BACKENDS="flatnet ipt-legacy ipt-nft nft" RSS_N=10000 THROUGHPUT=1
#   TPUT_REPS=5 TPUT_SECS=5 (defaults)
#
# Needs root, the release build (`cargo build --release -p flatnet -p flatnet-cni` and
# `cargo build --release -p services --example proxy_sync --example load_services`), etcd, python3, nft, iptables-{legacy,nft}-restore,
# iperf3, jq. The root network namespace is never touched: every namespace made here is named
# fbs<pid>-* and deleted on exit (also on failure or Ctrl-C), as are the processes started.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
BIN=${BIN:-$root/target/release}
SIZES=${SIZES:-"1000 10000"}
M=${M:-10}
K=${K:-20}
SCALE=${SCALE:-4}
KP_CHANGES=${KP_CHANGES:-5}
REPS=${REPS:-1}
KP_TIMEOUT=${KP_TIMEOUT:-400}
IPT_NFT_TIMEOUT=${IPT_NFT_TIMEOUT:-300}
BACKENDS=${BACKENDS:-"flatnet ipt-legacy ipt-nft nft"}
RSS_N=${RSS_N:-10000}
THROUGHPUT=${THROUGHPUT:-1}
TPUT_REPS=${TPUT_REPS:-5}
TPUT_SECS=${TPUT_SECS:-5}
OUT=${OUT:-/tmp/flatnet-bench-services-$(date -u +%Y%m%dT%H%M%SZ)}

[ "$(id -u)" = 0 ] || { echo "run.sh: needs root (network namespaces)" >&2; exit 1; }
for t in "$BIN/flatnet" "$BIN/examples/proxy_sync" "$BIN/examples/load_services" \
         python3 nft iptables-legacy-restore iptables-nft-restore etcd ip jq nsenter timeout; do
  command -v "$t" >/dev/null || { echo "run.sh: $t not found" >&2; exit 1; }
done

PFX=fbs$$
tmp=$(mktemp -d /tmp/flatnet-bench-services.XXXXXX)
mkdir -p "$OUT"
declare -a made_ns=() pids=()
cleanup() {
  local rc=$?
  set +e
  trap '' INT TERM # a second signal must not cut the cleanup short
  local p ns
  for p in "${pids[@]}"; do
    kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
  done
  for ns in "${made_ns[@]}"; do
    [ -e "/run/netns/$ns" ] && ip netns del "$ns"
  done
  rm -rf "$tmp"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# A private copy of the binaries: a rebuild of target/ during the run cannot change them.
mkdir "$tmp/bin"
cp "$BIN/flatnet" "$BIN/examples/proxy_sync" "$BIN/examples/load_services" "$tmp/bin/"
[ -x "$BIN/flatnet-cni" ] && cp "$BIN/flatnet-cni" "$tmp/bin/"

say() { echo "== $*" >&2; }
mkns() { # tag: makes namespace $PFX-tag with lo up, names it in $ns (not in a subshell, so
  # that cleanup knows it)
  ns=$PFX-$1
  made_ns+=("$ns")
  ip netns add "$ns"
  ip -n "$ns" link set lo up
}
# Deleting a namespace frees its nftables objects in a kernel work item, after `ip netns del`
# returns; wait a little so the next backend's kernel memory figures and CPU are not mixed with it.
SETTLE=${SETTLE:-3}
delns() { ip netns del "$1"; sleep "$SETTLE"; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null)" ] || commit+=" plus uncommitted changes"
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
t_start=$(date +%s)
cat >"$OUT/run.json" <<EOF
{"started": "$started", "commit": "$commit", "sizes": "$SIZES", "m": $M, "k": $K, "scale": $SCALE,
 "kp_changes": $KP_CHANGES, "reps": $REPS, "kp_timeout": $KP_TIMEOUT, "ipt_nft_timeout": $IPT_NFT_TIMEOUT,
 "backends": "$BACKENDS", "rss_n": $RSS_N, "nproc": $(nproc), "kernel": "$(uname -r)",
 "cpu": "$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')",
 "nft": "$(nft -v)", "iptables": "$(iptables-legacy -V) / $(iptables-nft -V)",
 "etcd": "$(etcd --version | head -1)", "load_start": "$(loadavg)"}
EOF

# ---------------------------------------------------------------- 1. rule sync
: >"$OUT/sync.jsonl"
for n in $SIZES; do
  say "N=$n: generating kube-proxy inputs"
  gen=$tmp/gen-$n
  python3 "$here/kp_gen.py" "$gen" "$n" -m "$M" --changes "$KP_CHANGES"
  for rep in $(seq "$REPS"); do
    for b in $BACKENDS; do
      mkns "$b-$n-$rep"
      load=$(loadavg)
      say "N=$n rep $rep/$REPS: $b in $ns (load $load)"
      case $b in
        flatnet)
          "$tmp/bin/proxy_sync" --netns "/run/netns/$ns" --services "$n" --endpoints "$M" \
            --changes "$K" --scale-changes "$SCALE" --seed "$rep" >"$tmp/one.json"
          ;;
        ipt-legacy|ipt-nft|nft)
          t=$KP_TIMEOUT; [ "$b" = ipt-nft ] && t=$IPT_NFT_TIMEOUT
          python3 "$here/kp_bench.py" --netns "$ns" --backend "$b" --dir "$gen" --timeout "$t" \
            >"$tmp/one.json"
          ;;
        *) echo "run.sh: unknown backend $b" >&2; exit 1 ;;
      esac
      jq -c --arg b "$b" --arg load "$load" --argjson rep "$rep" \
        '. + {bench: $b, rep: $rep, load_before: $load}' "$tmp/one.json" >>"$OUT/sync.jsonl"
      delns "$ns"
    done
  done
  rm -rf "$gen"
done

# ---------------------------------------------------------------- 2. the real agent's RSS
if [ "$RSS_N" -gt 0 ]; then
  say "agent: etcd, node namespace, $RSS_N services"
  free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
  cport=$(free_port); pport=$(free_port)
  etcd --name bench --data-dir "$tmp/etcd" \
    --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
    --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "bench=http://127.0.0.1:$pport" --quota-backend-bytes 4294967296 \
    >"$tmp/etcd.log" 2>&1 &
  pids+=($!)
  ep=http://127.0.0.1:$cport
  for _ in $(seq 100); do
    etcdctl --endpoints "$ep" endpoint health >/dev/null 2>&1 && break
    sleep 0.1
  done
  etcdctl --endpoints "$ep" endpoint health >/dev/null 2>&1 || { echo "run.sh: etcd did not start:" >&2; tail "$tmp/etcd.log" >&2; exit 1; }
  mkns agent
  node_ns=$ns
  # The underlay: one end of a veth pair (both ends inside the namespace) with the node address.
  ip -n "$node_ns" link add eth0 type veth peer name eth0peer
  ip -n "$node_ns" link set eth0peer up
  ip -n "$node_ns" addr add 192.0.2.11/24 dev eth0
  ip -n "$node_ns" link set eth0 up
  ls_() { "$tmp/bin/load_services" --etcd "$ep" "$@"; }
  start_agent() {
    "$tmp/bin/flatnet" agent --node bench-node --etcd "$ep" --netns "/run/netns/$node_ns" \
      --underlay-dev eth0 --cni-conf "$tmp/agent/net.d/10-flatnet.conflist" \
      --ipam-dir "$tmp/agent/ipam" --state-dir "$tmp/agent/state" >>"$tmp/agent.log" 2>&1 &
    apid=$!
    pids+=($apid)
  }
  mem() { # pid -> {"rss_mib", "hwm_mib"}
    awk '/^VmRSS/{r=$2} /^VmHWM/{h=$2} END{printf "{\"rss_mib\": %.1f, \"hwm_mib\": %.1f}", r/1024, h/1024}' "/proc/$1/status"
  }
  # The config alone (0 services): the agent at idle.
  rev0=$(etcdctl --endpoints "$ep" put /flatnet/config \
    '{"podCIDR": "10.128.0.0/9", "nodePrefixLength": 24, "serviceCIDR": "10.96.0.0/12", "backend": "host-gw"}' -w json | jq -r .header.revision)
  start_agent
  ls_ --mode wait --node bench-node --revision "$rev0" --timeout-s 60 >"$tmp/w0.json"
  sleep 2
  idle=$(mem "$apid")
  say "agent: loading $RSS_N services + slices while it runs"
  ls_ --mode load --services "$RSS_N" --endpoints "$M" >"$tmp/load.json"
  rev=$(jq -r .revision "$tmp/load.json")
  t0=$(date +%s.%N)
  ls_ --mode wait --node bench-node --revision "$rev" >"$tmp/w1.json"
  after_load_wait=$(echo "$(date +%s.%N) - $t0" | bc -l)
  sleep 2
  loaded=$(mem "$apid")
  say "agent: $K endpoint changes through etcd"
  ls_ --mode change --node bench-node --services "$RSS_N" --endpoints "$M" --changes "$K" >"$tmp/change.json"
  changed=$(mem "$apid")
  say "agent: restart with $RSS_N services in the store"
  kill "$apid"; wait "$apid" 2>/dev/null || true
  rev=$(etcdctl --endpoints "$ep" get /flatnet/config -w json | jq -r .header.revision)
  t0=$(date +%s.%N)
  start_agent
  ls_ --mode wait --node bench-node --revision "$rev" >"$tmp/w2.json"
  restart_s=$(echo "$(date +%s.%N) - $t0" | bc -l)
  sleep 2
  restarted=$(mem "$apid")
  elements=$(nsenter --net="/run/netns/$node_ns" nft -j list map inet flatnet backends | jq '[.nftables[] | select(.map) | .map.elem // [] | length] | add')
  jq -n --argjson idle "$idle" --argjson loaded "$loaded" --argjson changed "$changed" \
    --argjson restarted "$restarted" --slurpfile load "$tmp/load.json" \
    --slurpfile change "$tmp/change.json" --argjson wait_after_load "$after_load_wait" \
    --argjson restart_s "$restart_s" --argjson elements "$elements" --argjson n "$RSS_N" \
    '{services: $n, idle: $idle, loaded: $loaded, after_changes: $changed, restarted: $restarted,
      load: $load[0], apply_after_last_put_s: $wait_after_load, restart_to_applied_s: $restart_s,
      change: $change[0], backends_elements: $elements}' >"$OUT/agent.json"
  kill "$apid"; wait "$apid" 2>/dev/null || true
fi

# ---------------------------------------------------------------- 3. throughput
if [ "$THROUGHPUT" = 1 ]; then
  say "throughput: pod-to-service vs pod-to-pod"
  BIN=$tmp/bin REPS=$TPUT_REPS SECS=$TPUT_SECS "$here/throughput.sh" >"$OUT/throughput.md"
fi

jq -n --arg le "$(loadavg)" --argjson secs "$(( $(date +%s) - t_start ))" \
  '{load_end: $le, seconds: $secs}' >"$OUT/end.json"
python3 "$here/report.py" "$OUT"
say "raw results kept in $OUT"
