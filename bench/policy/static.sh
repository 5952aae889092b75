#!/usr/bin/env bash
# Static NetworkPolicy evaluation (issue 6): `flatnet connectivity --static -o json` end to end
# (process start, store read, compile, the PODS x PODS matrix, JSON out) on a lab whose store
# holds PODS pods in NAMESPACES namespaces and POLICIES NetworkPolicies (static_gen.py makes
# them: namespaces and policies through `flatnet apply`, pods written with a kubelet's status
# straight into etcd, bound to no real node). Side by side in the same run: reading the same
# objects with `flatnet get -A -o json` (the floor any store-reading command pays).
#
#   sudo bench/policy/static.sh
#   PODS=1000 POLICIES=500 NAMESPACES=20 RUNS=7 PORT=8080 LAB=polbench (defaults)
#
# Needs root (the lab), the release build (`cargo build --release -p flatnet -p flatnet-cni`),
# etcd and python3. Prints Markdown on stdout, progress on stderr. The lab is removed on exit
# (also on failure or Ctrl-C); nothing outside it is touched.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
BIN=${BIN:-$root/target/release}
PODS=${PODS:-1000}
POLICIES=${POLICIES:-500}
NAMESPACES=${NAMESPACES:-20}
RUNS=${RUNS:-7}
PORT=${PORT:-8080}
LAB=${LAB:-polbench}

[ "$(id -u)" = 0 ] || { echo "static.sh: needs root (the lab)" >&2; exit 1; }
for t in "$BIN/flatnet" "$BIN/flatnet-cni" etcd python3; do
  command -v "$t" >/dev/null || { echo "static.sh: $t not found" >&2; exit 1; }
done
fl() { "$BIN/flatnet" --lab "$LAB" "$@"; }

tmp=$(mktemp -d /tmp/flatnet-bench-policy.XXXXXX)
cleanup() {
  local rc=$?
  set +e
  trap '' INT TERM
  fl lab down >/dev/null 2>&1
  rm -rf "$tmp"
  exit $rc
}
trap cleanup EXIT INT TERM

echo "lab up ($LAB)" >&2
fl lab down >/dev/null 2>&1 || true
fl lab up --nodes 1 >/dev/null 2>&1
# Only the store matters for --static: stop the daemons so nothing else competes for the CPUs
# while we time (the agent would otherwise compile the same policies as they arrive).
for d in agent/node1 kubelet/node1 controller; do fl lab stop "$d" >/dev/null; done
endpoint=$(cat "/run/flatnet/$LAB/etcd.endpoint")

echo "writing $PODS pods, $NAMESPACES namespaces, $POLICIES policies" >&2
python3 "$here/static_gen.py" --endpoint "$endpoint" --pods "$PODS" --policies "$POLICIES" \
  --namespaces "$NAMESPACES" --manifest "$tmp/objects.yaml"
fl apply -f "$tmp/objects.yaml" >/dev/null

# Wall seconds of one or more commands run in order (stdout of the last kept in $1).
timed() {
  python3 - "$@" <<'EOF'
import json, subprocess, sys, time
out, cmds = sys.argv[1], json.loads(sys.argv[2])
t = time.perf_counter()
for argv in cmds:
    with open(out, "wb") as f:
        subprocess.run(argv, stdout=f, check=True)
print(f"{time.perf_counter() - t:.3f}")
EOF
}

fb="$BIN/flatnet"
static_cmd="[[\"$fb\",\"--lab\",\"$LAB\",\"connectivity\",\"--static\",\"--port\",\"$PORT\",\"-o\",\"json\"]]"
get_cmd="[[\"$fb\",\"--lab\",\"$LAB\",\"get\",\"namespaces\",\"-A\",\"-o\",\"json\"],[\"$fb\",\"--lab\",\"$LAB\",\"get\",\"pods\",\"-A\",\"-o\",\"json\"],[\"$fb\",\"--lab\",\"$LAB\",\"get\",\"networkpolicies\",\"-A\",\"-o\",\"json\"]]"
declare -a t_static=() t_get=()
for i in $(seq "$RUNS"); do
  echo "run $i/$RUNS" >&2
  t_static+=("$(timed "$tmp/matrix.json" "$static_cmd")")
  t_get+=("$(timed "$tmp/get.json" "$get_cmd")")
done

BIN_LABEL=$BIN python3 - "$tmp/matrix.json" "$PODS" "$POLICIES" "$NAMESPACES" "$PORT" \
  "${t_static[*]}" "${t_get[*]}" <<'EOF'
import json, os, platform, statistics, sys
path, pods, policies, nss, port, ts, tg = sys.argv[1:]
m = json.load(open(path))
n = len(m["pods"])
assert n == int(pods), f"{n} pods in the matrix, expected {pods}"
assert len(m["matrix"]) == n and all(len(r) == n for r in m["matrix"]), "matrix shape"
allowed = sum(map(sum, m["matrix"]))
ts = [float(x) for x in ts.split()]
tg = [float(x) for x in tg.split()]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
            if l.startswith("model name")), "?")
print(f"Machine: {cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}; binaries: {os.environ.get('BIN_LABEL', '?')}.")
print(f"Store: {pods} Running pods in {nss} namespaces, {policies} NetworkPolicies "
      f"(`bench/policy/static_gen.py`); matrix on TCP/{port}: {n}x{n} cells, "
      f"{allowed} allowed ({100 * allowed / (n * n):.1f} %).")
print()
print("| command (end to end, wall) | runs | min | median | max |")
print("|---|---|---|---|---|")
for name, t in [("`flatnet connectivity --static -o json`", ts),
                ("`flatnet get` namespaces, pods, networkpolicies `-A -o json` "
                 "(3 processes: the store-read floor)", tg)]:
    print(f"| {name} | {len(t)} | {min(t):.3f} s | {statistics.median(t):.3f} s "
          f"| {max(t):.3f} s |")
print()
med = statistics.median(ts)
print(f"Ratio of medians, connectivity --static / store reads: "
      f"{med / statistics.median(tg):.2f}. Target (under 1 s end to end): "
      f"{'met' if med < 1 else 'NOT met'}.")
EOF
