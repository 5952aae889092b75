#!/usr/bin/env bash
# Where `flatnet dns` spends its CPU under dnsperf (issue 7): the server pinned to CPU 1 and
# dnsperf to CPU 0 on the loopback of a private network namespace (flt-dnsperf-<pid>, removed at
# exit), the same zone and query files as run.sh. Nothing touches the root namespace.
#
# usage: sudo bench/dns/perf.sh record BIN [QFILE]   perf record -g for 8 s, top symbols (RATE=N:
#                                                    dnsperf -Q N, default unlimited)
#        sudo bench/dns/perf.sh stat RATE BIN...     per build and query file: server CPU per
#                                                    query (all, and user space alone),
#                                                    context switches and system calls per
#                                                    query, queries per recvmmsg and per
#                                                    sendmmsg at dnsperf -Q RATE (0:
#                                                    unlimited), REPS=2 reps interleaved
#   BIN: a flatnet binary, or `knot` (knotd, the benchmark's configuration) to compare with.
# Take the benchmark lock first: flock /tmp/flatnet-bench.lock bash bench/dns/perf.sh ...
set -euo pipefail
D=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d /var/tmp/flt-dnsperf.XXXXXX)
NSN=flt-dnsperf-$$
X="ip netns exec $NSN"
SPID=""
cleanup() { [ -n "$SPID" ] && { kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; }; ip netns del "$NSN" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT INT TERM
command -v perf >/dev/null || { echo "perf is not installed" >&2; exit 1; }
ip netns add "$NSN"; ip -n "$NSN" link set lo up
python3 "$D/gen.py" "$W" >&2

start() { # binary, or knot
  if [ "$1" = knot ]; then start_knot; else start_flatnet "$1"; fi
  for _ in $(seq 100); do
    if $X dig +time=1 +tries=1 -p 5353 @127.0.0.1 svc-1.ns-2.svc.cluster.local A +short 2>/dev/null | grep -q 10.96; then
      # knotd pins its UDP worker i to CPU i itself: every thread back on CPU 1 (as run.sh).
      taskset -a -p -c 1 "$SPID" >/dev/null
      return
    fi
    sleep 0.1
  done
  echo "server did not answer; log:" >&2; cat "$W/server.log" >&2; exit 1
}
start_knot() {
  mkdir -p "$W/knot"
  cat > "$W/knot.conf" <<C
server:
    rundir: "$W/knot"
    user: root:root
    listen: 127.0.0.1@5353
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
  $X nice -n -20 taskset -c 1 knotd -c "$W/knot.conf" >"$W/server.log" 2>&1 & SPID=$!
}
start_flatnet() { # binary
  $X nice -n -20 taskset -c 1 "$1" dns --static-objects "$W/objects.json" --listen 127.0.0.1:5353 \
    --service-cidr 10.96.0.0/12 --pod-cidr 10.244.0.0/16 --udp-workers 1 >"$W/server.log" 2>&1 & SPID=$!
}
utime() { awk '{print $14}' "/proc/$1/stat"; } # user-space clock ticks of the whole process
# Clock ticks of CPU 1 (the server's): busy (all but idle and iowait), and of its ksoftirqd
# (softirq work the kernel deferred there is not charged to the server process).
cpu1_busy() { awk '$1=="cpu1"{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
ksoftirqd1() { awk '{print $14+$15}' "/proc/$(pgrep -x ksoftirqd/1)/stat"; }
stop() { kill "$SPID"; wait "$SPID" 2>/dev/null || true; SPID=""; }
client() { # qfile rate
  local rate=()
  [ "${2:-0}" != 0 ] && rate=(-Q "$2")
  $X nice -n -20 taskset -c 0 dnsperf -s 127.0.0.1 -p 5353 -d "$W/$1" -l 8 -q 500 "${rate[@]}" 2>&1
}

case "${1:-}" in
record)
  bin=$2; q=${3:-q-nx50.txt}
  start "$bin"
  perf record -F 2000 -g -p "$SPID" -o "${PERF_DATA:-$W/perf.data}" -- sleep 8 >/dev/null 2>&1 & pp=$!
  client "$q" "${RATE:-0}" | grep -E "Queries (per second|completed)|Response codes"
  wait $pp
  perf report -i "${PERF_DATA:-$W/perf.data}" --stdio --sort dso 2>/dev/null | awk "/^# (Samples|Event count)/"
  echo "== by binary"; perf report -i "${PERF_DATA:-$W/perf.data}" --no-children --sort dso --stdio -g none 2>/dev/null | grep "%" | head -8
  echo "== by symbol"; perf report -i "${PERF_DATA:-$W/perf.data}" --no-children --sort dso,symbol --stdio -g none 2>/dev/null | grep "%" | head -40
  ;;
stat)
  rate=$2; shift 2
  ev=task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter
  for c in recvmmsg sendmmsg epoll_wait; do ev+=,syscalls:sys_enter_$c; done
  ev+=,sched:sched_waking,ipi:ipi_send_cpu # wake-ups the server makes (the client's) and IPIs sent
  printf 'build\tqueries\trep\tcompleted\tCPU us/query\tuser us/query\tper CPU-s\tctx switches/query\tsyscalls/query\tqueries/recvmmsg\tqueries/sendmmsg\tepoll_wait/query\twake-ups made/query\tIPIs sent/query\tksoftirqd us/query\tCPU1 busy us/query\tload1\n'
  for rep in $(seq "${REPS:-2}"); do for bin in "$@"; do
    start "$bin"
    for q in q-exist.txt q-nx50.txt; do
      u0=$(utime "$SPID"); b0=$(cpu1_busy); k0=$(ksoftirqd1)
      perf stat -x, -e "$ev" -p "$SPID" -o "$W/stat.txt" -- sleep 8 & pp=$!
      n=$(client "$q" "$rate" | awk '/Queries completed/{print $3}')
      wait $pp
      u=$(( $(utime "$SPID") - u0 )); busy=$(( $(cpu1_busy) - b0 )); ks=$(( $(ksoftirqd1) - k0 ))
      c() { awk -F, -v e="$1" '$3==e{print $1+0}' "$W/stat.txt"; }
      awk -v b="$(basename "$bin")" -v q="$q" -v r="$rep" -v n="$n" -v ms="$(c task-clock)" -v cs="$(c context-switches)" \
        -v sc="$(c raw_syscalls:sys_enter)" -v rm="$(c syscalls:sys_enter_recvmmsg)" -v sm="$(c syscalls:sys_enter_sendmmsg)" \
        -v ew="$(c syscalls:sys_enter_epoll_wait)" -v wk="$(c sched:sched_waking)" -v ipi="$(c ipi:ipi_send_cpu)" -v u="$u" -v busy="$busy" -v ks="$ks" -v hz="$(getconf CLK_TCK)" -v l="$(cut -d' ' -f1 /proc/loadavg)" \
        'function d(a, b) { return b > 0 ? sprintf("%.1f", a / b) : "-" }
         BEGIN{printf "%s\t%s\t%s\t%d\t%.2f\t%.2f\t%.0f\t%.3f\t%.3f\t%s\t%s\t%.3f\t%.3f\t%.3f\t%.2f\t%.2f\t%s\n", b, q, r, n, ms*1000/n,
           u*1e6/hz/n, n/(ms/1000), cs/n, sc/n, d(n, rm), d(n, sm), ew/n, wk/n, ipi/n, ks*1e6/hz/n, busy*1e6/hz/n, l}'
    done
    stop
  done; done
  ;;
*) echo "usage: $0 record BIN [QFILE] | stat RATE BIN..." >&2; exit 2 ;;
esac
