#!/usr/bin/env bash
# Where `flatnet dns` spends its CPU under dnsperf (issue 7): the server pinned to CPU 1 and
# dnsperf to CPU 0 on the loopback of a private network namespace (flt-dnsperf-<pid>, removed at
# exit), the same zone and query files as run.sh. Nothing touches the root namespace.
#
# usage: sudo bench/dns/perf.sh record BIN [QFILE]   perf record -g for 8 s, top symbols
#        sudo bench/dns/perf.sh stat RATE BIN...     per build and query file: server CPU per
#                                                    query (all, and user space alone) and
#                                                    queries per recvmmsg at dnsperf -Q RATE
#                                                    (0: unlimited), 2 reps interleaved
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

start() { # binary
  $X nice -n -20 taskset -c 1 "$1" dns --static-objects "$W/objects.json" --listen 127.0.0.1:5353 \
    --service-cidr 10.96.0.0/12 --pod-cidr 10.244.0.0/16 --udp-workers 1 >"$W/server.log" 2>&1 & SPID=$!
  for _ in $(seq 100); do
    $X dig +time=1 +tries=1 -p 5353 @127.0.0.1 svc-1.ns-2.svc.cluster.local A +short 2>/dev/null | grep -q 10.96 && return
    sleep 0.1
  done
  echo "server did not answer; log:" >&2; cat "$W/server.log" >&2; exit 1
}
utime() { awk '{print $14}' "/proc/$1/stat"; } # user-space clock ticks of the whole process
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
  perf record -F 2000 -g -p "$SPID" -o "$W/perf.data" -- sleep 8 >/dev/null 2>&1 & pp=$!
  client "$q" 0 | grep -E "Queries per second|Response codes"
  wait $pp
  echo "== by binary"; perf report -i "$W/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep "%" | head -8
  echo "== by symbol"; perf report -i "$W/perf.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null | grep "%" | head -40
  ;;
stat)
  rate=$2; shift 2
  printf 'build\tqueries\trep\tcompleted\tCPU us/query\tuser us/query\tper CPU-s\tqueries/recvmmsg\tload1\n'
  for rep in 1 2; do for bin in "$@"; do
    start "$bin"
    for q in q-exist.txt q-nx50.txt; do
      u0=$(utime "$SPID")
      perf stat -x, -e task-clock,syscalls:sys_enter_recvmmsg -p "$SPID" -o "$W/stat.txt" -- sleep 8 & pp=$!
      n=$(client "$q" "$rate" | awk '/Queries completed/{print $3}')
      wait $pp
      u=$(( $(utime "$SPID") - u0 ))
      ms=$(awk -F, '/task-clock/{print $1}' "$W/stat.txt"); calls=$(awk -F, '/recvmmsg/{print $1}' "$W/stat.txt")
      awk -v b="$bin" -v q="$q" -v r="$rep" -v n="$n" -v ms="$ms" -v c="$calls" -v u="$u" -v hz="$(getconf CLK_TCK)" \
        -v l="$(cut -d' ' -f1 /proc/loadavg)" \
        'BEGIN{printf "%s\t%s\t%s\t%d\t%.2f\t%.2f\t%.0f\t%.1f\t%s\n", b, q, r, n, ms*1000/n, u*1e6/hz/n, n/(ms/1000), n/c, l}'
    done
    stop
  done; done
  ;;
*) echo "usage: $0 record BIN [QFILE] | stat RATE BIN..." >&2; exit 2 ;;
esac
