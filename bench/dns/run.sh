#!/usr/bin/env bash
# Cluster DNS benchmark (issue 7): queries per second of `flatnet dns` against nsd, knot,
# unbound and dnsmasq serving the same 10,000-service cluster.local zone, measured with dnsperf
# over UDP in the same run. Everything runs on the loopback of a private network namespace made
# here (flt-dnsbench-<pid>, removed at exit); the server is pinned to one core (SRV_CPU, default
# 1: every thread of its process tree, again once it answers, since knotd sets its workers'
# affinity itself) and dnsperf to the other (CLI_CPU, default 0). Nothing touches the root
# namespace.
#
# usage: sudo bench/dns/run.sh [server ...]
#   servers: flatnet flatnet-hickory nsd knot unbound dnsmasq (default: all that are installed;
#   flatnet-hickory is flatnet with hickory's own UDP server loop, for comparison; flatnet-b
#   is the binary FLATNET_B, for an A/B of two builds in the same interleaved run)
# env: SECS=10 per run, REPS=1 (servers interleaved per rep), NICE=-20,
#      RATE (unset: dnsperf as fast as it can, the default table; RATE=N: dnsperf -Q N, the same
#      offered load for every server, so that the CPU per query is compared at one query rate
#      and batch regime; the rows' queries column then reads q-exist@N),
#      FLATNET=target/release/flatnet, FLATNET_B (unset: no flatnet-b),
#      RESULTS=bench/dns/results.tsv (appended)
# Output: one TSV row per run (QPS, latency, lost, rcodes, server CPU, QPS per server
# CPU-second) and a markdown table at the end (best and median of REPS, summarize.py).
set -euo pipefail
D=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$D/../.." && pwd)
SECS=${SECS:-10}; REPS=${REPS:-1}
PRIO="nice -n ${NICE:--20}"
FLATNET=${FLATNET:-$ROOT/target/release/flatnet}
RESULTS=${RESULTS:-$D/results.tsv}
SRV_CPU=${SRV_CPU:-1}; CLI_CPU=${CLI_CPU:-0}
NSN=flt-dnsbench-$$
W=$(mktemp -d /var/tmp/flt-dnsbench.XXXXXX)
SPID=""
X="ip netns exec $NSN"
PORT=5353
stop_server() { if [ -n "$SPID" ]; then kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; SPID=""; fi; }
cleanup() { stop_server; ip netns del "$NSN" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT INT TERM

command -v dnsperf >/dev/null || { echo "dnsperf is not installed (scripts/setup installs it)" >&2; exit 1; }
[ -x "$FLATNET" ] || { echo "build first: cargo build --release -p flatnet ($FLATNET missing)" >&2; exit 1; }
ip netns add "$NSN"; ip -n "$NSN" link set lo up
python3 "$D/gen.py" "$W" >&2

servers=("$@")
if [ ${#servers[@]} -eq 0 ]; then
  servers=(flatnet flatnet-hickory)
  [ -n "${FLATNET_B:-}" ] && servers+=(flatnet-b)
  command -v nsd >/dev/null && servers+=(nsd)
  command -v knotd >/dev/null && servers+=(knot)
  command -v unbound >/dev/null && servers+=(unbound)
  command -v dnsmasq >/dev/null && servers+=(dnsmasq)
fi

start_flatnet() { start_flatnet_bin "$FLATNET" "$@"; }
start_flatnet-b() {
  [ -x "${FLATNET_B:-}" ] || { echo "flatnet-b: set FLATNET_B to a flatnet binary" >&2; return 1; }
  start_flatnet_bin "$FLATNET_B"
}
start_flatnet_bin() { # binary [args]
  local bin=$1; shift
  $X $PRIO taskset -c "$SRV_CPU" "$bin" dns --static-objects "$W/objects.json" \
    --listen 127.0.0.1:$PORT --service-cidr 10.96.0.0/12 --pod-cidr 10.244.0.0/16 \
    --udp-workers 1 "$@" >"$W/server.log" 2>&1 & SPID=$!
}
start_flatnet-hickory() { start_flatnet --udp-server hickory; }
start_nsd() {
  cat > "$W/nsd.conf" <<C
server:
  ip-address: 127.0.0.1@$PORT
  server-count: 1
  username: ""
  chroot: ""
  zonesdir: "$W"
  zonelistfile: "$W/nsd.zonelist"
  database: ""
  pidfile: "$W/nsd.pid"
  xfrdfile: "$W/xfrd.state"
  xfrdir: "$W"
  logfile: "$W/nsd.log"
  verbosity: 0
  # Debian builds nsd with response-rate limiting (all NXDOMAINs of a zone share one 200 qps
  # bucket): off, or the NXDOMAIN run measures the limiter.
  rrl-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: cluster.local
  zonefile: cluster.local.zone
C
  $X $PRIO taskset -c "$SRV_CPU" nsd -d -c "$W/nsd.conf" >"$W/server.log" 2>&1 & SPID=$!
}
start_knot() {
  mkdir -p "$W/knot"
  cat > "$W/knot.conf" <<C
server:
    rundir: "$W/knot"
    user: root:root
    listen: 127.0.0.1@$PORT
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
log:
  - target: stderr
    any: warning
database:
    storage: "$W/knot"
control:
    listen: "$W/knot/knot.sock"
zone:
  - domain: cluster.local
    file: "$W/cluster.local.zone"
    storage: "$W/knot"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
C
  $X $PRIO taskset -c "$SRV_CPU" knotd -c "$W/knot.conf" >"$W/server.log" 2>&1 & SPID=$!
}
start_unbound() {
  cat > "$W/unbound.conf" <<C
server:
  interface: 127.0.0.1
  port: $PORT
  num-threads: 1
  username: ""
  chroot: ""
  directory: "$W"
  pidfile: "$W/unbound.pid"
  do-daemonize: no
  use-syslog: no
  verbosity: 0
  do-ip6: no
  access-control: 127.0.0.0/8 allow
  include: "$W/unbound-local.conf"
remote-control:
  control-enable: no
C
  $X $PRIO taskset -c "$SRV_CPU" unbound -d -c "$W/unbound.conf" >"$W/server.log" 2>&1 & SPID=$!
}
start_dnsmasq() {
  cat > "$W/dnsmasq.conf" <<C
user=root
port=$PORT
listen-address=127.0.0.1
bind-interfaces
no-resolv
no-hosts
addn-hosts=$W/dnsmasq.hosts
local=/cluster.local/
cache-size=20000
pid-file=$W/dnsmasq.pid
conf-file=$W/dnsmasq-srv.conf
C
  $X $PRIO taskset -c "$SRV_CPU" dnsmasq -k -C "$W/dnsmasq.conf" >"$W/server.log" 2>&1 & SPID=$!
}

tree_pids() { # pid: it and its descendants
  local p c
  for p in "$@"; do echo "$p"; for c in $(pgrep -P "$p"); do tree_pids "$c"; done; done
}
pin_tree() { # pid: every thread of the process tree on SRV_CPU, or fail
  local p t bad=""
  for p in $(tree_pids "$1"); do taskset -a -p -c "$SRV_CPU" "$p" >/dev/null; done
  for p in $(tree_pids "$1"); do for t in /proc/"$p"/task/*; do
    [ "$(awk '/^Cpus_allowed_list/{print $2}' "$t/status")" = "$SRV_CPU" ] || bad+=" $t"
  done; done
  [ -z "$bad" ] || { echo "threads not on CPU $SRV_CPU:$bad" >&2; exit 1; }
}

run_perf() { # qfile
  local q=$1 out p0 p1 t0 t1 pcpu qps lat lost codes cpus rate=() label=$1
  if [ -n "${RATE:-}" ]; then rate=(-Q "$RATE"); label="${q%.txt}@$RATE"; fi
  p0=$(python3 "$D/../lib/proctree_cpu.py" "$SPID"); t0=$(date +%s.%N)
  out=$($X $PRIO taskset -c "$CLI_CPU" dnsperf -s 127.0.0.1 -p $PORT -d "$W/$q" -l "$SECS" -q 500 "${rate[@]}" 2>&1)
  p1=$(python3 "$D/../lib/proctree_cpu.py" "$SPID"); t1=$(date +%s.%N)
  cpus=$(awk -v a="$p0" -v b="$p1" 'BEGIN{printf "%.2f", b-a}')
  pcpu=$(awk -v a="$p0" -v b="$p1" -v x="$t0" -v y="$t1" 'BEGIN{printf "%.0f", 100*(b-a)/(y-x)}')
  qps=$(awk '/Queries per second:/{printf "%.0f", $4}' <<<"$out")
  lat=$(awk '/Average Latency/{printf "%.0f", $4*1e6}' <<<"$out")
  lost=$(awk '/Queries lost:/{print $3, $4}' <<<"$out")
  codes=$(awk '/Response codes:/{$1="";$2="";print}' <<<"$out" | sed 's/^ *//')
  local sent; sent=$(awk '/Queries completed:/{print $3}' <<<"$out")
  local per; per=$(awk -v n="$sent" -v c="$cpus" 'BEGIN{ if (c>0) printf "%.0f", n/c; else print "-" }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$srv" "$label" "$rep" "$qps" "$lat" "$lost" "$codes" "$pcpu" "$per" \
    "$(cut -d' ' -f1 /proc/loadavg)" | tee -a "$RESULTS"
}

[ -s "$RESULTS" ] || printf 'server\tqueries\trep\tqps\tavg_lat_us\tlost\trcodes\tsrv_cpu%%\tqps_per_srv_cpu_s\tloadavg1\n' > "$RESULTS"
start_line=$(( $(wc -l < "$RESULTS") - 1 ))   # data rows before this run
echo "# $(date -u +%FT%TZ) $(nproc) CPUs, $(uname -r), SECS=$SECS REPS=$REPS RATE=${RATE:-unlimited}" >&2
for rep in $(seq 1 "$REPS"); do
for srv in "${servers[@]}"; do
  echo "== $srv" >&2
  "start_$srv"
  for _ in $(seq 1 100); do
    if $X dig +time=1 +tries=1 -p $PORT @127.0.0.1 svc-1.ns-2.svc.cluster.local A +short 2>/dev/null | grep -q 10.96.2.2; then break; fi
    sleep 0.1
  done
  # taskset at exec is not enough: knotd pins its UDP worker i to CPU i itself (worker 0 landed
  # on the client's CPU 0). Pin every thread of the server's process tree to SRV_CPU again now
  # that it has started them, and check.
  pin_tree "$SPID"
  a=$($X dig -p $PORT @127.0.0.1 svc-99.ns-99.svc.cluster.local A +short || true)
  s=$($X dig -p $PORT @127.0.0.1 _http._tcp.svc-3.ns-0.svc.cluster.local SRV +short || true)
  nx=$($X dig -p $PORT @127.0.0.1 host1.example.com.ns-1.svc.cluster.local A | awk '/status:/{print $6}' | tr -d , || true)
  echo "  check: A=$a SRV=$s nx=$nx" >&2
  if [ "$a" != "10.96.99.100" ] || [ "$nx" != "NXDOMAIN" ]; then
    echo "  $srv: wrong answers, skipped; log:" >&2; cat "$W/server.log" >&2; stop_server; continue
  fi
  run_perf q-exist.txt
  run_perf q-nx50.txt
  stop_server
done
done

echo
python3 "$D/summarize.py" "$RESULTS" "$start_line"
