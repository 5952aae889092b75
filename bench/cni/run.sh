#!/usr/bin/env bash
# CNI ADD/DEL latency: target/release/flatnet-cni vs the reference bridge + host-local
# (Debian containernetworking-plugins), same driver, same run, alternating (design.md §10).
#
#   sudo bench/cni/run.sh [--iterations N] [--pause-ms MS] [--json FILE]
#
# Makes one node namespace and one pod namespace per iteration (all named bench-cni-<pid>-*),
# runs bench/cni/driver.py inside the node namespace so the plugins inherit it and the timing
# excludes nsenter, and removes every namespace and scratch file on exit. The root network
# namespace is never changed. Prints a Markdown table.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
ref_dir=${REF_DIR:-/usr/lib/cni}
bin="$root/target/release/flatnet-cni"

[ "$(id -u)" = 0 ] || { echo "run as root (needs network namespaces)" >&2; exit 1; }
for p in bridge host-local; do
    [ -x "$ref_dir/$p" ] || { echo "$ref_dir/$p missing: apt-get install containernetworking-plugins" >&2; exit 1; }
done
if [ ! -x "$bin" ]; then
    (cd "$root" && cargo build --release -p flatnet-cni)
fi

prefix="bench-cni-$$"
node="$prefix-node"
scratch=$(mktemp -d "/tmp/$prefix.XXXXXX")
cleanup() {
    local ns
    for ns in $(ip netns list | awk '{print $1}' | grep "^$prefix-" || true); do
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$scratch"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip netns add "$node"
ip -n "$node" link set lo up

echo "machine: $(nproc) cores, kernel $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ)"
echo "flatnet: $bin ($(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo "reference: $ref_dir/bridge + host-local ($(dpkg-query -W -f='${Version}' containernetworking-plugins 2>/dev/null || echo '?'))"
nsenter --net="/run/netns/$node" python3 "$here/driver.py" \
    --flatnet "$bin" --ref-dir "$ref_dir" --data-dir "$scratch" --prefix "$prefix" "$@"
