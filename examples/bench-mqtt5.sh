#!/usr/bin/env bash
# bench-mqtt5.sh — this broker's fan-in and fan-out with MQTT 3.1.1 clients, MQTT 5 clients
# without properties, and MQTT 5 clients whose every PUBLISH carries user properties, in the
# same run (the three alternate inside each run, on a freshly started broker each time), with
# the same load generator (examples/loadgen.rs). Prints a Markdown table of the medians and
# each variant's ratio to 3.1.1.
#
# Usage: examples/bench-mqtt5.sh [--runs N] [--duration 10s] [--user-properties 2]
#   --runs N             runs per scenario and variant (default 3)
#   --duration D         measured time per run (default 10s, after 1s of warm-up)
#   --user-properties N  user properties (16-byte name, 16-byte value) per PUBLISH in the
#                        third variant (default 2)
# Loopback only; the broker started here is stopped by its process id on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=3
duration=10s
props=2
port=${PORT:-18840}
while (($#)); do
  case "$1" in
    --runs) runs="$2"; shift ;;
    --duration) duration="$2"; shift ;;
    --user-properties) props="$2"; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
echo "building (release)..." >&2
cargo build --release --quiet --bin mqtt-broker --example loadgen
broker_bin="$CARGO_TARGET_DIR/release/mqtt-broker"
loadgen_bin="$CARGO_TARGET_DIR/release/examples/loadgen"

work=$(mktemp -d)
broker_pid=""
cleanup() {
  [ -n "$broker_pid" ] && { kill "$broker_pid" 2>/dev/null || true; wait "$broker_pid" 2>/dev/null || true; }
  rm -rf "$work"
}
trap cleanup EXIT

# The limits of examples/bench-vs-mosquitto.sh: nothing a scenario reaches drops messages.
cat >"$work/ours.yaml" <<EOF
listeners:
  - bind: 127.0.0.1:$port
performance:
  message_queue_limit: 200000
limits:
  publish_rate: 0
  publish_bytes_rate: 0
  max_queued_bytes: 1073741824
admin:
  enabled: false
log:
  level: warn
EOF

wait_port() {
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "broker did not start" >&2
  return 1
}

run_one() { # scenario variant run
  local scenario=$1 variant=$2 run=$3 flags=()
  case "$variant" in
    3.1.1) flags=(--mqtt-version 311) ;;
    5) flags=(--mqtt-version 5) ;;
    5+props) flags=(--mqtt-version 5 --user-properties "$props") ;;
  esac
  "$broker_bin" --config "$work/ours.yaml" 2>>"$work/broker.log" &
  broker_pid=$!
  wait_port
  local line
  line=$("$loadgen_bin" "$scenario" --duration "$duration" --warmup 1s --port "$port" \
    --broker-pid "$broker_pid" --label "$variant" --timeout 120s "${flags[@]}") || true
  kill "$broker_pid" 2>/dev/null || true
  wait "$broker_pid" 2>/dev/null || true
  broker_pid=""
  [ -z "$line" ] && line='{"error":"loadgen printed nothing"}'
  printf '%s\n' "$line" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
r.update(case=sys.argv[1], variant=sys.argv[2], run=int(sys.argv[3]))
print(json.dumps(r))' "$scenario" "$variant" "$run" >>"$work/results.jsonl"
  echo "  $scenario run $run $variant: $(tail -c 200 <<<"$line")" >&2
}

variants=("3.1.1" "5" "5+props")
for scenario in fan-in fan-out; do
  for run in $(seq "$runs"); do
    # Rotate the order so that drift in the machine's load hits every variant alike.
    for k in 0 1 2; do
      run_one "$scenario" "${variants[$(((k + run) % 3))]}" "$run"
    done
  done
done

python3 - "$work/results.jsonl" "$props" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
props = sys.argv[2]
def med(case, variant, key):
    v = [r[key] for r in rows if r.get("case") == case and r.get("variant") == variant and isinstance(r.get(key), (int, float))]
    return statistics.median(v) if v else None
print(f"| measure (median of runs) | 3.1.1 | 5.0 | 5.0 + {props} user properties | 5.0 / 3.1.1 | 5.0+props / 3.1.1 |")
print("|---|---|---|---|---|---|")
for case, label, key in [
    ("fan-in", "fan-in 8→1, QoS 0: delivered msg/s", "msgs_per_s"),
    ("fan-in", "fan-in: broker CPU µs/msg", "broker_cpu_us_per_msg"),
    ("fan-out", "fan-out 1→100, QoS 0: deliveries/s", "deliveries_per_s"),
    ("fan-out", "fan-out: broker CPU µs/delivery", "broker_cpu_us_per_delivery"),
]:
    a, b, c = (med(case, v, key) for v in ("3.1.1", "5", "5+props"))
    f = lambda x: "n/a" if x is None else (f"{x:,.0f}" if x >= 100 else f"{x:.3f}")
    r = lambda x: "n/a" if x is None or not a else f"{x / a:.3f}"
    print(f"| {label} | {f(a)} | {f(b)} | {f(c)} | {r(b)} | {r(c)} |")
errs = [f"{r['case']} {r['variant']} run {r['run']}: {r['error']}" for r in rows if r.get("error")]
for e in errs:
    print(f"\nerror: {e}")
PY
