#!/usr/bin/env bash
# Ingress requests per second: flatnet's gateway against nginx and haproxy doing the same
# host+path routing to the same backends, in the same run (issue 7; the anchor is
# shared/reference/anchor-dns-ingress.md, whose ingress-bench.sh this follows).
#
# Backends: one nginx worker holding three "services" on 127.0.0.1:8081/8082/8083
# (`return 200 "ok api|web|static"`). Routes: hosts a.example.test and b.example.test, each with
# prefixes /api/ /web/ /static/ (6 routes over 3 backends, b maps them differently); other
# hosts and paths get 404. Every proxy runs one worker (nginx worker_processes 1, haproxy
# nbthread 1, flatnet --workers 1) and keeps upstream connections alive. flatnet reads the
# same routes as an Ingress, Services and EndpointSlices from an etcd of its own.
# wrk (HTTP/1.1 keep-alive, -t1) rotates over the 6 routes with 64 connections, then with 1.
# Everything runs on the loopback of a private network namespace made here
# (flt-ingbench-<pid>, deleted at exit). Pinning: the measured proxy on CPU 1; wrk and the
# backend on CPU 0 (the direct run: backend on CPU 1).
#
# usage: sudo bench/ingress/run.sh [config ...]   configs: direct nginx haproxy flatnet nginx-noupka
#        flatnet2 flatnet3 (default: direct nginx haproxy flatnet)
# env:   REPS=3 (configs interleaved; summarize.py reports best and median)  SECS=15  CONNS=64
#        NICE=-20  RESULTS=file (default ./ingress-results.tsv)  FLATNET=path (default: release build)
#        FLATNET2=path FLATNET3=path: other flatnet binaries, for A/B runs in the same minutes
#        FLATNET_ARGS / FLATNET2_ARGS / FLATNET3_ARGS: extra `flatnet ingress` arguments
set -euo pipefail
PRIO="nice -n ${NICE:--20}"
D=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$D/../.." && pwd)
SECS=${SECS:-15}; CONNS=${CONNS:-64}; REPS=${REPS:-3}
RESULTS=${RESULTS:-$PWD/ingress-results.tsv}
SRV_CPU=${SRV_CPU:-1}; CLI_CPU=${CLI_CPU:-0}
for t in nginx haproxy wrk etcd etcdctl curl python3; do
  command -v $t >/dev/null || { echo "missing $t: run scripts/setup" >&2; exit 1; }
done
if [ -z "${FLATNET:-}" ]; then
  (cd "$ROOT" && cargo build --release -q -p flatnet)
  FLATNET=$ROOT/target/release/flatnet
fi
NSN=flt-ingbench-$$
W=$(mktemp -d /var/tmp/flt-ingbench.XXXXXX)
X="ip netns exec $NSN"
BPID=""; PPID_=""; EPID=""
stopp() { local p=$1; if [ -n "$p" ]; then kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; fi; }
cleanup() { stopp "$PPID_"; stopp "$BPID"; stopp "$EPID"; ip netns del "$NSN" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT INT TERM
ip netns add "$NSN"; ip -n "$NSN" link set lo up
configs=("$@"); [ ${#configs[@]} -gt 0 ] || configs=(direct nginx haproxy flatnet)

cat > "$W/backend.conf" <<C
worker_processes 1;
daemon off;
pid $W/backend.pid;
error_log $W/backend.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  default_type text/plain;
  client_body_temp_path $W/b-body; proxy_temp_path $W/b-proxy; fastcgi_temp_path $W/b-fcgi;
  uwsgi_temp_path $W/b-uwsgi; scgi_temp_path $W/b-scgi;
  server { listen 127.0.0.1:8081; location / { return 200 "ok api\n"; } }
  server { listen 127.0.0.1:8082; location / { return 200 "ok web\n"; } }
  server { listen 127.0.0.1:8083; location / { return 200 "ok static\n"; } }
}
C

nginx_proxy_conf() { # $1 = upstream keepalive on|off
  local ka="keepalive 64;"; [ "$1" = on ] || ka=""
  cat > "$W/proxy.conf" <<C
worker_processes 1;
daemon off;
pid $W/proxy.pid;
error_log $W/proxy.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $W/p-body; proxy_temp_path $W/p-proxy; fastcgi_temp_path $W/p-fcgi;
  uwsgi_temp_path $W/p-uwsgi; scgi_temp_path $W/p-scgi;
  upstream api    { server 127.0.0.1:8081; $ka }
  upstream web    { server 127.0.0.1:8082; $ka }
  upstream static { server 127.0.0.1:8083; $ka }
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_set_header Host \$host;
  proxy_set_header X-Forwarded-For \$remote_addr;
  server { listen 127.0.0.1:8080 default_server; return 404; }
  server {
    listen 127.0.0.1:8080; server_name a.example.test;
    location /api/    { proxy_pass http://api; }
    location /web/    { proxy_pass http://web; }
    location /static/ { proxy_pass http://static; }
    location / { return 404; }
  }
  server {
    listen 127.0.0.1:8080; server_name b.example.test;
    location /api/    { proxy_pass http://static; }
    location /web/    { proxy_pass http://api; }
    location /static/ { proxy_pass http://web; }
    location / { return 404; }
  }
}
C
}
haproxy_conf() {
  cat > "$W/haproxy.cfg" <<C
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option forwardfor
frontend fe
  bind 127.0.0.1:8080
  acl host_a hdr(host) -i a.example.test
  acl host_b hdr(host) -i b.example.test
  acl p_api    path_beg /api/
  acl p_web    path_beg /web/
  acl p_static path_beg /static/
  use_backend api    if host_a p_api
  use_backend web    if host_a p_web
  use_backend static if host_a p_static
  use_backend static if host_b p_api
  use_backend api    if host_b p_web
  use_backend web    if host_b p_static
  default_backend notfound
backend notfound
  http-request return status 404 content-type text/plain string "nf"
backend api
  server s1 127.0.0.1:8081
backend web
  server s1 127.0.0.1:8082
backend static
  server s1 127.0.0.1:8083
C
}

# The same routes for flatnet: one Ingress, three Services, their EndpointSlices (127.0.0.1).
flatnet_store() {
  local ep=http://127.0.0.1:23790
  $X taskset -c $CLI_CPU etcd --name ingbench --data-dir "$W/etcd" --listen-client-urls $ep \
    --advertise-client-urls $ep --listen-peer-urls http://127.0.0.1:23800 \
    --initial-advertise-peer-urls http://127.0.0.1:23800 --initial-cluster ingbench=http://127.0.0.1:23800 \
    --log-level error >"$W/etcd.log" 2>&1 & EPID=$!
  for i in $(seq 1 100); do $X etcdctl --endpoints=$ep endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
  put() { $X etcdctl --endpoints=$ep put "/flatnet/objects/$1" "$2" >/dev/null; }
  local port=8081
  for s in api web static; do
    put "services/bench/$s" "{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{\"name\":\"$s\",\"namespace\":\"bench\"},\"spec\":{\"ports\":[{\"name\":\"http\",\"port\":80,\"protocol\":\"TCP\"}],\"selector\":{\"app\":\"$s\"}}}"
    put "endpointslices/bench/$s-bench" "{\"apiVersion\":\"discovery.k8s.io/v1\",\"kind\":\"EndpointSlice\",\"metadata\":{\"name\":\"$s-bench\",\"namespace\":\"bench\",\"labels\":{\"kubernetes.io/service-name\":\"$s\"}},\"addressType\":\"IPv4\",\"endpoints\":[{\"addresses\":[\"127.0.0.1\"],\"conditions\":{\"ready\":true}}],\"ports\":[{\"name\":\"http\",\"port\":$port,\"protocol\":\"TCP\"}]}"
    port=$((port + 1))
  done
  be() { echo "{\"service\":{\"name\":\"$1\",\"port\":{\"name\":\"http\"}}}"; }
  p() { echo "{\"path\":\"$1\",\"pathType\":\"Prefix\",\"backend\":$(be "$2")}"; }
  put "ingresses/bench/routes" "{\"apiVersion\":\"networking.k8s.io/v1\",\"kind\":\"Ingress\",\"metadata\":{\"name\":\"routes\",\"namespace\":\"bench\"},\"spec\":{\"ingressClassName\":\"flatnet\",\"rules\":[
    {\"host\":\"a.example.test\",\"http\":{\"paths\":[$(p /api/ api),$(p /web/ web),$(p /static/ static)]}},
    {\"host\":\"b.example.test\",\"http\":{\"paths\":[$(p /api/ static),$(p /web/ api),$(p /static/ web)]}}]}}"
  EP=$ep
}

cpu_snap() { awk -v a="cpu$CLI_CPU" -v b="cpu$SRV_CPU" '$1==a||$1==b{t=0;for(i=2;i<=NF;i++)t+=$i; idle=$5+$6; printf "%s %s ", t, idle}' /proc/stat; }
busy() { python3 - "$1" "$2" <<'P'
import sys
a=list(map(int,sys.argv[1].split())); b=list(map(int,sys.argv[2].split()))
print(" ".join("%.0f"%(100*((b[i]-a[i])-(b[i+1]-a[i+1]))/max(1,(b[i]-a[i]))) for i in (0,2)))
P
}
wait_port() { for i in $(seq 1 100); do $X curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done; echo "port $1 not up" >&2; return 1; }
check_routes() { # exits non-zero unless all 6 routes and both 404s answer right
  local ok=1 got
  for r in "a /api/x ok api" "a /web/x ok web" "a /static/x ok static" "b /api/x ok static" "b /web/x ok api" "b /static/x ok web"; do
    set -- $r
    got=$($X curl -s -H "Host: $1.example.test" "http://127.0.0.1:$PORT$2")
    [ "$got" = "$3 $4" ] || { echo "  route $1$2 -> '$got' (want '$3 $4')" >&2; ok=0; }
  done
  got=$($X curl -s -o /dev/null -w '%{http_code}' -H "Host: c.example.test" "http://127.0.0.1:$PORT/api/x")
  [ "$got" = 404 ] || { echo "  unknown host -> $got (want 404)" >&2; ok=0; }
  got=$($X curl -s -o /dev/null -w '%{http_code}' -H "Host: a.example.test" "http://127.0.0.1:$PORT/other")
  [ "$got" = 404 ] || { echo "  unknown path -> $got (want 404)" >&2; ok=0; }
  [ $ok = 1 ] && echo "  routes ok (6 routes + 2 x 404)" >&2
  [ $ok = 1 ]
}
run_wrk() { # label conns secs
  local c0 c1 out p0 p1 t0 t1 mp
  mp=${PPID_:-$BPID}
  c0=$(cpu_snap); p0=$(python3 "$D/../lib/proctree_cpu.py" "$mp"); t0=$(date +%s.%N)
  out=$($X $PRIO taskset -c $CLI_CPU wrk -t1 -c "$2" -d "${3}s" --latency -s "$D/routes.lua" "http://127.0.0.1:$PORT/" 2>&1)
  c1=$(cpu_snap); p1=$(python3 "$D/../lib/proctree_cpu.py" "$mp"); t1=$(date +%s.%N)
  local pcpu; pcpu=$(awk -v a="$p0" -v b="$p1" -v x="$t0" -v y="$t1" 'BEGIN{printf "%.0f", 100*(b-a)/(y-x)}')
  echo "$out" > "$W/wrk-$cfg-$2.txt"
  read -r ccli csrv <<<"$(busy "$c0" "$c1")"
  local rps avg p50 p90 p99 max errs non2xx
  rps=$(awk '/Requests\/sec:/{print $2}' <<<"$out")
  avg=$(awk '$1=="Latency" && NF>=4 {print $2; exit}' <<<"$out")
  max=$(awk '$1=="Latency" && NF>=4 {print $4; exit}' <<<"$out")
  p50=$(awk '$1=="50%"{print $2}' <<<"$out"); p90=$(awk '$1=="90%"{print $2}' <<<"$out"); p99=$(awk '$1=="99%"{print $2}' <<<"$out")
  errs=$(awk '/Socket errors/{print}' <<<"$out" | sed 's/^ *//'); non2xx=$(awk '/Non-2xx/{print $NF}' <<<"$out")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$cfg" "$2" "$3" "$rep" "$rps" "$avg" "$p50" "$p90" "$p99" "$max" "${non2xx:-0}${errs:+ / $errs}" "$pcpu" "$csrv" "$ccli" "$(cut -d' ' -f1 /proc/loadavg)" | tee -a "$RESULTS"
}

[ -s "$RESULTS" ] || printf 'config\tconns\tsecs\trep\treq_per_s\tlat_avg\tp50\tp90\tp99\tmax\tnon2xx/errors\tmeasured_proc_cpu%%\tcpu%s_busy%%\tcpu%s_busy%%\tloadavg1\n' "$SRV_CPU" "$CLI_CPU" > "$RESULTS"
echo "# $(date -u +%FT%TZ) $(nproc) CPUs, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg); nginx $(nginx -v 2>&1 | cut -d/ -f2), $(haproxy -v | head -1 | cut -d' ' -f1-3), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), flatnet $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)" >&2
for rep in $(seq 1 "$REPS"); do
for cfg in "${configs[@]}"; do
  echo "== $cfg (rep $rep)" >&2
  if [ "$cfg" = direct ]; then bcpu=$SRV_CPU; else bcpu=$CLI_CPU; fi
  $X $PRIO taskset -c $bcpu nginx -c "$W/backend.conf" -e "$W/backend.err" >/dev/null 2>&1 & BPID=$!
  wait_port 8081
  case $cfg in
    direct) PORT=8081; PPID_="";;
    nginx|nginx-noupka)
      if [ $cfg = nginx ]; then nginx_proxy_conf on; else nginx_proxy_conf off; fi
      $X $PRIO taskset -c $SRV_CPU nginx -c "$W/proxy.conf" -e "$W/proxy.err" >/dev/null 2>&1 & PPID_=$!
      PORT=8080; wait_port 8080; check_routes;;
    haproxy)
      haproxy_conf; haproxy -c -q -f "$W/haproxy.cfg"
      $X $PRIO taskset -c $SRV_CPU haproxy -db -f "$W/haproxy.cfg" >"$W/haproxy.log" 2>&1 & PPID_=$!
      PORT=8080; wait_port 8080; check_routes;;
    flatnet|flatnet2|flatnet3)
      [ -n "$EPID" ] || flatnet_store
      binv=FLATNET${cfg#flatnet}; argv=${binv}_ARGS
      [ -n "${!binv:-}" ] || { echo "$binv is not set" >&2; exit 1; }
      # shellcheck disable=SC2086
      $X $PRIO taskset -c $SRV_CPU "${!binv}" ingress --etcd "$EP" --http 127.0.0.1:8080 --https off \
        --workers 1 ${!argv:-} >"$W/flatnet.log" 2>&1 & PPID_=$!
      PORT=8080; wait_port 8080
      for i in $(seq 1 50); do check_routes 2>/dev/null && break; sleep 0.1; done
      check_routes || { cat "$W/flatnet.log" >&2; exit 1; };;
    *) echo "unknown config $cfg" >&2; stopp "$BPID"; BPID=""; continue;;
  esac
  sleep 0.5
  run_wrk "$cfg" "$CONNS" "$SECS"   # loaded: keep-alive, $CONNS connections
  run_wrk "$cfg" 1 10               # unloaded: one connection, request after request
  stopp "$PPID_"; PPID_=""; stopp "$BPID"; BPID=""
done
done
python3 "$D/summarize.py" "$RESULTS"
