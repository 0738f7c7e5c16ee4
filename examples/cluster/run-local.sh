#!/usr/bin/env bash
# A 3-node cluster on this host: three NATS JetStream servers (client ports 4222-4224,
# cluster ports 6222-6224, monitoring 8222-8224) and three brokers (MQTT 1883-1885, admin
# 8081-8083). Waits until every node's /readyz answers 200, prints what to try, and stops
# everything on Ctrl-C.
#
#   examples/cluster/run-local.sh            # builds target/release/mqtt-broker first
#   examples/cluster/run-local.sh --fresh    # also deletes the JetStream data of a previous run
#
# Environment: MQTT_BROKER=path/to/mqtt-broker to use another binary (no build);
# NATS_SERVER=path/to/nats-server (default: nats-server on PATH, else /usr/sbin/nats-server,
# where Debian's `apt install nats-server` puts it). Logs and JetStream data go to
# /tmp/mqtt-cluster-example.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
work=/tmp/mqtt-cluster-example
logs="$work/logs"

if [[ "${1:-}" == "--fresh" ]]; then
    rm -rf "$work"
elif [[ -n "${1:-}" ]]; then
    echo "usage: $0 [--fresh]" >&2
    exit 2
fi

nats="${NATS_SERVER:-$(command -v nats-server || true)}"
[[ -z "$nats" && -x /usr/sbin/nats-server ]] && nats=/usr/sbin/nats-server
if [[ -z "$nats" ]]; then
    echo "nats-server not found: apt install nats-server (or set NATS_SERVER)" >&2
    exit 1
fi
command -v curl >/dev/null || { echo "curl is needed to wait for readiness" >&2; exit 1; }

broker="${MQTT_BROKER:-}"
if [[ -z "$broker" ]]; then
    echo "building target/release/mqtt-broker ..."
    (cd "$repo" && cargo build --release --bin mqtt-broker)
    broker="$repo/target/release/mqtt-broker"
fi

# Refuse to start over something else's ports (e.g. a Mosquitto on 1883).
for port in 4222 4223 4224 6222 6223 6224 8222 8223 8224 1883 1884 1885 8081 8082 8083; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "port $port is already in use on 127.0.0.1: stop what listens there first" >&2
        exit 1
    fi
done

mkdir -p "$logs"
nats_pids=()
broker_pids=()
sleeper=
# Each server in its own session, so that Ctrl-C reaches only this script, which then stops
# them in order (setsid execs in place: $! is the server's pid).
detach=()
command -v setsid >/dev/null && detach=(setsid)

stop() {
    trap - EXIT INT TERM HUP
    [[ -n "$sleeper" ]] && kill "$sleeper" 2>/dev/null
    echo
    echo "stopping ..."
    # Brokers first (graceful: they finish what their clients sent), then NATS.
    for pid in "${broker_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${broker_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    for pid in "${nats_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${nats_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    echo "stopped; logs in $logs, JetStream data in $work (--fresh deletes it)"
}
trap stop EXIT
trap 'exit 130' INT TERM HUP

# wait_for URL WHAT PID: polls URL until it answers 200 (60 s at most).
wait_for() {
    local url=$1 what=$2 pid=$3 log=$4
    for _ in $(seq 1 120); do
        if curl -fsS -o /dev/null "$url" 2>/dev/null; then
            echo "  $what ready ($url)"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$what exited; the end of $log:" >&2
            tail -n 20 "$log" >&2
            exit 1
        fi
        sleep 0.5
    done
    echo "$what not ready after 60 s; the end of $log:" >&2
    tail -n 20 "$log" >&2
    exit 1
}

echo "starting NATS (JetStream) ..."
for i in 1 2 3; do
    "${detach[@]}" "$nats" -c "$here/nats-$i.conf" >>"$logs/nats-$i.log" 2>&1 &
    nats_pids+=($!)
done
# /healthz answers 200 once the server's JetStream is current with the cluster.
for i in 1 2 3; do
    wait_for "http://127.0.0.1:$((8221 + i))/healthz" "nats-$i" "${nats_pids[$((i - 1))]}" "$logs/nats-$i.log"
done

echo "starting the brokers ($broker) ..."
for i in 1 2 3; do
    "${detach[@]}" "$broker" --config "$here/node-$i.yaml" >>"$logs/node-$i.log" 2>&1 &
    broker_pids+=($!)
done
for i in 1 2 3; do
    wait_for "http://127.0.0.1:$((8080 + i))/readyz" "node-$i" "${broker_pids[$((i - 1))]}" "$logs/node-$i.log"
done

cat <<EOF

The cluster is up:
  node-1  MQTT 127.0.0.1:1883  admin 127.0.0.1:8081  pid ${broker_pids[0]}
  node-2  MQTT 127.0.0.1:1884  admin 127.0.0.1:8082  pid ${broker_pids[1]}
  node-3  MQTT 127.0.0.1:1885  admin 127.0.0.1:8083  pid ${broker_pids[2]}
  nats-1  127.0.0.1:4222  pid ${nats_pids[0]}
  nats-2  127.0.0.1:4223  pid ${nats_pids[1]}
  nats-3  127.0.0.1:4224  pid ${nats_pids[2]}

Try, in other shells:
  mosquitto_sub -p 1883 -t 'demo/#' -q 1 -v           # a subscriber on node-1
  mosquitto_pub -p 1884 -t demo/x -m hi -q 1          # published on node-2: node-1's subscriber prints it
  mosquitto_pub -p 1885 -t demo/state -m on -r -q 1   # retained on node-3 ...
  mosquitto_sub -p 1884 -t demo/state -C 1 -v         # ... seen on node-2
  curl -s 127.0.0.1:8081/api/v1/cluster
  curl -s 127.0.0.1:8081/metrics | grep mqtt_cluster
  kill ${nats_pids[1]}   # stop nats-2: the brokers keep serving
  kill ${broker_pids[2]}   # stop node-3: node-1 and node-2 stay ready
  haproxy -f $here/haproxy.cfg   # one address for all three nodes: 127.0.0.1:1880

Logs: $logs/{nats,node}-N.log.  Ctrl-C stops everything.
EOF

# Keep running (whatever is killed meanwhile) until Ctrl-C.
while true; do
    sleep 3600 &
    sleeper=$!
    wait "$sleeper" || true
done
