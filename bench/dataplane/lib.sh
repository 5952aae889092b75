# Shell helpers shared by the lab throughput benchmarks (bench/dataplane/run.sh,
# bench/services/throughput.sh). Source it; it defines functions only. The caller sets `tmp`
# (a scratch directory, for `quiet`'s log) and `SECS` (iperf3 duration), and has `flatnet` on
# PATH.

say() { echo "== $*" >&2; }
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc -l; }
fmt() { printf '%.2f' "$1"; }
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {printf "%.6f\n", (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
gbps() { awk '{printf "%.2f", $1/1e9}' <<<"$1"; }
# A command that must succeed; its output goes to a log that is shown if it does not.
quiet() {
  local log=$tmp/cmd.log
  "$@" >"$log" 2>&1 || { echo "failed: $*" >&2; cat "$log" >&2; return 1; }
}

# Pod manifests, one per NAME:NODE argument: srv* pods run `iperf3 -s` (containerPort 5201,
# so Ready means it accepts) and carry the label `app: NAME` (for Services); others sleep.
pods() {
  local s
  for s in "$@"; do
    local name=${s%%:*} node=${s##*:}
    if [[ $name == srv* ]]; then
      cat <<EOF
---
apiVersion: v1
kind: Pod
metadata: {name: $name, labels: {app: $name}}
spec:
  nodeName: $node
  containers:
  - name: iperf
    command: [iperf3, -s]
    ports: [{containerPort: 5201}]
EOF
    else
      cat <<EOF
---
apiVersion: v1
kind: Pod
metadata: {name: $name}
spec:
  nodeName: $node
  containers:
  - name: shell
    command: [sleep, infinity]
EOF
    fi
  done
}

# `lab pod` -> the pod's IP.
podip() { flatnet --lab="$1" get pod "$2" -o json | jq -er .status.podIP; }

# `lab ip [port]` -> receiver bits/s of one iperf3 TCP run from pod cli1 to ip.
fl() {
  flatnet --lab="$1" exec cli1 -- iperf3 -c "$2" -p "${3:-5201}" -t "$SECS" -J | jq -e '.end.sum_received.bits_per_second'
}

# "v1 v2 ..." (bits/s) -> "g1 g2 ..." (Gbit/s, two decimals).
runs() { local v out=""; for v in $1; do out+="$(gbps "$v") "; done; echo "${out% }"; }
# "v1 v2 ..." (bits/s) -> median in Gbit/s.
med() { gbps "$(median $1)"; }

# Ratio row: "label" "a runs" "b runs" goal% -> ratio of medians (%), per-round ratios and
# their median, and whether the ratio of medians meets the goal. Runs i of both sides ran back
# to back, so their ratio cancels noise that lasts one round.
ratio_cells() {
  local a=$1 b=$2 goal=$3
  local fa fb r
  fa=$(median $a) fb=$(median $b)
  r=$(echo "100 * $fa / $fb" | bc -l)
  local -a xa=($a) xb=($b) pr=()
  local i p prs=""
  for i in "${!xa[@]}"; do pr+=("$(echo "100 * ${xa[$i]} / ${xb[$i]}" | bc -l)"); done
  for p in "${pr[@]}"; do prs+="$(printf '%.0f' "$p") "; done
  local met
  met=$(awk -v r="$r" -v g="$goal" 'BEGIN{print (r >= g) ? "yes" : "**no**"}')
  echo "$(printf '%.1f' "$r") % | ${prs% } ($(printf '%.1f' "$(median "${pr[@]}")") %) | >= $goal % | $met"
}
