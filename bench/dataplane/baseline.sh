#!/usr/bin/env bash
# Hand-built dataplane baselines, iproute2 only, every namespace made here (the root namespace is
# never touched). Adapted from the shared anchor baseline-netns.sh; each case has namespaces of its
# own so that all cases stand at once and runs can be interleaved with flatnet's.
#
#   veth      client ns <-veth-> server ns (one hop, no routing)                 [anchor case 1]
#   routed1   pod -veth- node -veth- pod, one node, /32 routes (flatnet's same-node shape)
#   routed2   pod -veth- node1 -veth- node2 -veth- pod, host-gw routes            [anchor case 2]
#   routed2b  as routed2, but node1 and node2 meet on a bridge in a fabric namespace (the lab's underlay)
#   vxlan     as routed2, node to node through VXLAN on the underlay veth         [anchor case 3]
#   vxlanb    as vxlan, underlay through the fabric bridge (the lab's shape)
#
# In both VXLAN cases the pod veths get MTU 1450 (underlay 1500 - 50), as flatnet gives its pods;
# the anchor left them at 1500, which makes every full-size segment need PMTU discovery.
#
# Usage:
#   baseline.sh up PREFIX          build every case; namespaces are PREFIX-<case>-<role>
#   baseline.sh run PREFIX CASE    one iperf3 run of SECS (default 5) s; prints receiver bits/s
#   baseline.sh down PREFIX        kill the iperf3 servers started by up, delete the namespaces
#   baseline.sh                    standalone: up, every case once (Gbit/s), down
set -euo pipefail

CASES="veth routed1 routed2 routed2b vxlan vxlanb"
secs=${SECS:-5}

# The namespaces of one prefix: the ones whose name starts with it.
owned() { ip netns list | awk '{print $1}' | grep -E "^$1-" || true; }

server_addr() { # case -> server ns suffix and address
  case $2 in
    veth) echo "$1-veth-b 10.250.0.2" ;;
    routed1) echo "$1-routed1-p2 10.252.1.11" ;;
    routed2 | routed2b | vxlan | vxlanb) echo "$1-$2-p2 10.252.2.10" ;;
    *) echo "unknown case $2" >&2; return 1 ;;
  esac
}
client_ns() {
  case $2 in
    veth) echo "$1-veth-a" ;;
    *) echo "$1-$2-p1" ;;
  esac
}

mkns() { ip netns add "$1"; ip -n "$1" link set lo up; }

# A pod behind a node, flatnet style: /32 on e0, default route via a link-local gateway that the
# node side answers by proxy ARP, the node holds a /32 route to the pod.
pod() { # podns nodens hostif addr mtu
  local p=$1 n=$2 h=$3 a=$4 mtu=$5
  ip link add e0 netns "$p" mtu "$mtu" type veth peer name "$h" netns "$n" mtu "$mtu"
  ip -n "$p" addr add "$a/32" dev e0; ip -n "$p" link set e0 up
  ip -n "$p" route add 169.254.1.1 dev e0; ip -n "$p" route add default via 169.254.1.1 dev e0
  ip -n "$n" addr add 169.254.1.1/32 dev "$h"; ip -n "$n" link set "$h" up
  ip netns exec "$n" sysctl -qw net.ipv4.ip_forward=1 "net.ipv4.conf.$h.proxy_arp=1"
  ip -n "$n" route add "$a/32" dev "$h"
}

# Two nodes n1, n2 with 10.251.0.1/.2 on u1/u2, either one veth between them or each on a veth
# to a bridge in a fabric namespace.
underlay() { # prefix case bridged(0|1)
  local P=$1-$2
  if [ "$3" = 1 ]; then
    mkns "$P-fab"
    ip -n "$P-fab" link add br0 type bridge; ip -n "$P-fab" link set br0 up
    for i in 1 2; do
      ip link add u$i netns "$P-n$i" type veth peer name p$i netns "$P-fab"
      ip -n "$P-fab" link set p$i master br0; ip -n "$P-fab" link set p$i up
    done
  else
    ip link add u1 netns "$P-n1" type veth peer name u2 netns "$P-n2"
  fi
  for i in 1 2; do
    ip -n "$P-n$i" addr add 10.251.0.$i/24 dev u$i; ip -n "$P-n$i" link set u$i up
  done
}

two_nodes() { # prefix case bridged vxlan(0|1)
  local P=$1-$2 mtu=1500 i j mac
  for n in n1 n2 p1 p2; do mkns "$P-$n"; done
  underlay "$1" "$2" "$3"
  [ "$4" = 1 ] && mtu=1450
  for i in 1 2; do pod "$P-p$i" "$P-n$i" h$i 10.252.$i.10 $mtu; done
  if [ "$4" = 0 ]; then
    ip -n "$P-n1" route add 10.252.2.0/24 via 10.251.0.2
    ip -n "$P-n2" route add 10.252.1.0/24 via 10.251.0.1
    return
  fi
  for i in 1 2; do
    ip -n "$P-n$i" link add vx0 type vxlan id 1 dstport 4789 local 10.251.0.$i dev u$i nolearning
    ip -n "$P-n$i" addr add 10.252.$i.0/32 dev vx0; ip -n "$P-n$i" link set vx0 up
  done
  for i in 1 2; do
    j=$((3 - i))
    mac=$(ip -n "$P-n$j" link show vx0 | awk '/ether/{print $2}')
    ip -n "$P-n$i" neigh add 10.252.$j.0 lladdr "$mac" dev vx0 nud permanent
    bridge -n "$P-n$i" fdb append "$mac" dev vx0 dst 10.251.0.$j
    ip -n "$P-n$i" route add 10.252.$j.0/24 via 10.252.$j.0 dev vx0 onlink
  done
}

up() {
  local P=$1 c s a
  # veth
  mkns "$P-veth-a"; mkns "$P-veth-b"
  ip link add va netns "$P-veth-a" type veth peer name vb netns "$P-veth-b"
  ip -n "$P-veth-a" addr add 10.250.0.1/30 dev va; ip -n "$P-veth-a" link set va up
  ip -n "$P-veth-b" addr add 10.250.0.2/30 dev vb; ip -n "$P-veth-b" link set vb up
  # routed1: two pods behind one node
  for n in n0 p1 p2; do mkns "$P-routed1-$n"; done
  pod "$P-routed1-p1" "$P-routed1-n0" h1 10.252.1.10 1500
  pod "$P-routed1-p2" "$P-routed1-n0" h2 10.252.1.11 1500
  two_nodes "$P" routed2 0 0
  two_nodes "$P" routed2b 1 0
  two_nodes "$P" vxlan 0 1
  two_nodes "$P" vxlanb 1 1
  # One persistent iperf3 server per case; its pid file lives next to the namespaces' names.
  mkdir -p "/run/$P"
  for c in $CASES; do
    read -r s a < <(server_addr "$P" "$c")
    ip netns exec "$s" iperf3 -s -D -B "$a" -I "/run/$P/$c.pid" >/dev/null
  done
  # A new bridge port forwards only after the kernel processed its carrier event (batched for up
  # to 1 s); until then it drops frames. Wait, so that no run starts on a dropping fabric.
  for c in routed2b vxlanb; do
    for _ in $(seq 100); do
      [ "$(bridge -n "$P-$c-fab" -j link show | jq '[.[] | select(.state == "forwarding")] | length')" = 2 ] && break
      sleep 0.05
    done
  done
  for c in $CASES; do # every server listens before up returns
    read -r s a < <(server_addr "$P" "$c")
    for _ in $(seq 50); do
      ip netns exec "$s" ss -Hltn "sport = :5201" | grep -q . && break
      sleep 0.1
    done
  done
}

run() { # prefix case -> receiver bits/s
  local s a
  read -r s a < <(server_addr "$1" "$2")
  ip netns exec "$(client_ns "$1" "$2")" iperf3 -c "$a" -t "$secs" -J |
    jq -e '.end.sum_received.bits_per_second'
}

down() {
  local P=$1 f n
  for f in "/run/$P"/*.pid; do
    [ -e "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
  rm -rf "/run/$P"
  for n in $(owned "$P"); do ip netns del "$n" 2>/dev/null || true; done
}

case ${1:-} in
  up) up "$2" ;;
  run) run "$2" "$3" ;;
  down) down "$2" ;;
  "")
    P=fnbl$$
    trap 'trap "" INT TERM; down $P' EXIT
    trap 'exit 130' INT TERM
    up $P
    for c in $CASES; do
      run $P "$c" | awk -v c="$c" '{printf "%s_gbps %.2f\n", c, $1 / 1e9}'
    done
    ;;
  *) echo "usage: $0 [up|run|down] PREFIX [CASE]" >&2; exit 2 ;;
esac
