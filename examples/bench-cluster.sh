#!/usr/bin/env bash
# Cluster against a single node, in one run on this host (loopback only): three NATS
# JetStream servers, two broker nodes of one cluster (publishers on node A, subscribers on
# node B, so that every message crosses nodes) and one broker without a cluster.
#
#   examples/bench-cluster.sh                 # 5 s per measurement
#   DURATION=10s examples/bench-cluster.sh
#
# Needs nats-server (apt install nats-server) and python3; builds the release broker and
# loadgen. Prints one table; every process it starts is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${DURATION:-5s}"
nats="$(command -v nats-server || echo /usr/sbin/nats-server)"
[[ -x "$nats" ]] || { echo "nats-server not found: apt install nats-server" >&2; exit 1; }

cargo build --release --quiet --bin mqtt-broker --example loadgen
broker=target/release/mqtt-broker
loadgen=target/release/examples/loadgen

work="$(mktemp -d /tmp/bench-cluster.XXXXXX)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Three NATS servers in one JetStream cluster.
declare -a client_ports route_ports
for i in 0 1 2; do client_ports[i]=$(free_port); route_ports[i]=$(free_port); done
for i in 0 1 2; do
    routes=""
    for j in 0 1 2; do [[ $j == "$i" ]] || routes+="nats-route://127.0.0.1:${route_ports[j]},"; done
    cat > "$work/nats-$i.conf" <<EOF
server_name: n$i
listen: 127.0.0.1:${client_ports[i]}
jetstream { store_dir: "$work/js-$i" }
cluster { name: bench, listen: 127.0.0.1:${route_ports[i]}, routes: [${routes%,}] }
EOF
    "$nats" -c "$work/nats-$i.conf" > "$work/nats-$i.log" 2>&1 &
    pids+=($!)
done
servers="[\"nats://127.0.0.1:${client_ports[0]}\", \"nats://127.0.0.1:${client_ports[1]}\", \"nats://127.0.0.1:${client_ports[2]}\"]"

start_broker() { # name port admin_port [cluster yaml]
    cat > "$work/$1.yaml" <<EOF
node_name: $1
server: {host: 127.0.0.1, port: $2}
admin: {enabled: true, bind: "127.0.0.1:$3"}
performance: {message_queue_limit: 200000, inflight_window_size: 32}
# The same lifted protection limits as bench-vs-mosquitto.sh (a load generator is one
# client publishing far beyond the default per-client rate).
limits: {publish_rate: 0, publish_bytes_rate: 0, max_subscriptions: 1000000, max_queued_bytes: 1073741824}
log: {level: warn}
$4
EOF
    "$broker" --config "$work/$1.yaml" > "$work/$1.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 600); do
        curl -sf "127.0.0.1:$3/readyz" > /dev/null && return 0
        sleep 0.1
    done
    echo "$1 did not become ready; its log:" >&2; tail -20 "$work/$1.log" >&2; exit 1
}
pa=$(free_port); pb=$(free_port); ps=$(free_port)
start_broker node-a "$pa" "$(free_port)" "cluster: {servers: $servers, replicas: 3, prefix: bench}"
start_broker node-b "$pb" "$(free_port)" "cluster: {servers: $servers, replicas: 3, prefix: bench}"
start_broker single "$ps" "$(free_port)" ""
pid_of() { pgrep -f -- "--config $work/$1.yaml"; }

run() { # label loadgen-args...
    local label=$1; shift
    "$loadgen" "$@" --label "$label" 2>/dev/null | tail -1
}
{
    run single fan-in --port "$ps" --duration "$duration" --broker-pid "$(pid_of single)"
    run cross fan-in --port "$pa" --sub-port "$pb" --duration "$duration" --broker-pid "$(pid_of node-b)"
    run single fan-out --port "$ps" --duration "$duration" --broker-pid "$(pid_of single)"
    run cross fan-out --port "$pa" --sub-port "$pb" --duration "$duration" --broker-pid "$(pid_of node-b)"
    run single latency --qos 1 --rate 2000 --port "$ps" --duration "$duration" --broker-pid "$(pid_of single)"
    run cross latency --qos 1 --rate 2000 --port "$pa" --sub-port "$pb" --duration "$duration" --broker-pid "$(pid_of node-b)"
} > "$work/results.jsonl"

python3 - "$work/results.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def get(r, *keys):
    for k in keys:
        if k in r: return r[k]
    return None
print(f"{'scenario':<22}{'single node':>16}{'cross-node':>16}{'ratio':>8}")
by = {}
for r in rows:
    by.setdefault(r.get("scenario"), {})[r.get("label")] = r
for name, unit, keys in [("fan-in", "msg/s", ("delivered_per_s",)), ("fan-out", "deliveries/s", ("deliveries_per_s",))]:
    s, c = by.get(name, {}).get("single"), by.get(name, {}).get("cross")
    if s and c:
        a, b = get(s, *keys), get(c, *keys)
        print(f"{name+' QoS 0 ('+unit+')':<22}{a:>16,.0f}{b:>16,.0f}{b/a:>8.2f}")
lat = by.get("latency", {})
for q in ("p50", "p99", "max"):
    s, c = lat.get("single", {}), lat.get("cross", {})
    a, b = s.get(q + "_us"), c.get(q + "_us")
    if a is not None and b is not None:
        print(f"{'QoS 1 latency '+q+' (ms)':<22}{a/1000:>16.2f}{b/1000:>16.2f}")
for r in rows:
    if r.get("scenario") == "latency":
        print(f"  {r.get('label')}: lost {r.get('lost')}, duplicates {r.get('duplicates')}")
EOF
