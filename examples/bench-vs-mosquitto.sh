#!/usr/bin/env bash
# bench-vs-mosquitto.sh — mqtt-broker and Mosquitto side by side, on loopback, with the same
# load generator (examples/loadgen.rs) and equivalent limits; prints a Markdown table of the
# medians and the ratio ours/Mosquitto.
#
# Every scenario run gets a freshly started broker (so memory figures start from the same
# place), and the two brokers alternate: run 1 is ours then Mosquitto, run 2 Mosquitto then
# ours, and so on, so that drift in the machine's load hits both alike.
#
# Usage: examples/bench-vs-mosquitto.sh [--quick] [--runs N] [--scenarios "fan-in idle ..."]
#                                       [--out FILE.md] [--keep-json DIR]
#   --quick      one run each with 3 s measurements (about 2 minutes); default: 2 runs of
#                10 s measurements (about 7 minutes)
#   --runs N     runs per scenario and broker (the table shows medians)
#   --scenarios  subset of: fan-in fan-out latency0 latency1 latency2 idle filters retained
#                persist1 (QoS 1 latency to a persistent session with persistence on: ours
#                file-backed with sync: always, Mosquitto with `persistence true`)
#   --out FILE   also write the table to FILE
#   --keep-json  keep the raw JSON results (one line per run) in DIR
#
# It installs Mosquitto from Debian if missing, and builds the broker and the load
# generator with --release. Brokers listen on 127.0.0.1 only; everything started here is
# stopped by its process id on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=2
quick=0
scenarios="fan-in fan-out latency0 latency1 latency2 idle filters retained persist1"
out=""
keep_json=""
port_ours=${PORT_OURS:-18830}
port_mosq=${PORT_MOSQ:-18831}
while (($#)); do
  case "$1" in
    --quick) quick=1; runs=1 ;;
    --runs) runs="$2"; shift ;;
    --scenarios) scenarios="$2"; shift ;;
    --out) out="$2"; shift ;;
    --keep-json) keep_json="$2"; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if ((quick)); then
  duration=3s; warmup=500ms
else
  duration=10s; warmup=1s
fi

# --- tools --------------------------------------------------------------------------------
mosquitto_bin=$(command -v mosquitto || true)
[ -z "$mosquitto_bin" ] && [ -x /usr/sbin/mosquitto ] && mosquitto_bin=/usr/sbin/mosquitto
if [ -z "$mosquitto_bin" ]; then
  echo "installing mosquitto from Debian..." >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mosquitto >/dev/null
  mosquitto_bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)
fi
command -v python3 >/dev/null || { echo "python3 is needed for the summary table" >&2; exit 1; }

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
echo "building (release)..." >&2
cargo build --release --quiet --bin mqtt-broker --example loadgen
broker_bin="$CARGO_TARGET_DIR/release/mqtt-broker"
loadgen_bin="$CARGO_TARGET_DIR/release/examples/loadgen"

# 10,000 idle connections need as many descriptors in the broker and in the load generator.
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
broker_pid=""
cleanup() {
  if [ -n "$broker_pid" ]; then
    kill "$broker_pid" 2>/dev/null || true
    wait "$broker_pid" 2>/dev/null || true
  fi
  if [ -n "$keep_json" ]; then
    mkdir -p "$keep_json"
    cp "$work/results.jsonl" "$keep_json/" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# --- equivalent configurations -------------------------------------------------------------
# Limits that would make either broker drop messages of a scenario are raised on both to the
# same values: per-client queue 200,000 (the retained scenario hands 100,000 messages to one
# new subscriber; Mosquitto counts those against max_queued_messages), inflight window 32
# (ours' default), no cap on connections or retained topics that a scenario reaches.
# Persistence off, loopback only, Nagle off, warnings and errors logged only. Our per-client
# protection limits (publish rate, subscriptions, queued bytes), which Mosquitto does not have
# by default, are lifted, and the admin listener is off (Mosquitto has none).
cat >"$work/ours.yaml" <<EOF
listeners:
  - bind: 127.0.0.1:$port_ours
server:
  max_connections: 100000
persistence:
  enabled: false
  retained_message_limit: 1000000
performance:
  message_queue_limit: 200000
  inflight_window_size: 32
limits:
  publish_rate: 0
  publish_bytes_rate: 0
  max_subscriptions: 1000000
  max_queued_bytes: 1073741824
admin:
  enabled: false
log:
  level: warn
EOF
cat >"$work/mosquitto.conf" <<EOF
listener $port_mosq 127.0.0.1
allow_anonymous true
persistence false
max_connections -1
max_queued_messages 200000
max_inflight_messages 32
set_tcp_nodelay true
sys_interval 0
log_dest stderr
log_type error
log_type warning
EOF
# persist1: the same brokers with persistence on. Ours acknowledges a QoS 1 message only once
# it is on disk (sync: always, group commit); Mosquitto keeps it in memory and writes its
# whole state every autosave_interval (default 1800 s), so what it acknowledged in between is
# lost on a crash: the latencies below do not buy the same promise.
sed -e "s|^persistence:|persistence:\n  storage_type: file\n  path: $work/data\n  sync: always|" \
    -e "s|^  enabled: false|  enabled: true|" "$work/ours.yaml" >"$work/ours-persist.yaml"
sed -e "s|^persistence false|persistence true\npersistence_location $work/mosq-data/|" \
    "$work/mosquitto.conf" >"$work/mosquitto-persist.conf"
chmod 644 "$work/mosquitto.conf"
chmod 755 "$work"

wait_port() {
  local port=$1
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "broker on port $port did not start" >&2
  return 1
}

start_broker() { # ours|mosquitto [persist]
  local suffix=""
  if [ "${2:-}" = persist ]; then
    suffix="-persist"
    rm -rf "$work/data" "$work/mosq-data"
    mkdir -p "$work/mosq-data"
    chmod 777 "$work/mosq-data"
  fi
  case "$1" in
    ours)
      "$broker_bin" --config "$work/ours$suffix.yaml" 2>>"$work/ours.log" &
      broker_pid=$!
      wait_port "$port_ours"
      ;;
    mosquitto)
      "$mosquitto_bin" -c "$work/mosquitto$suffix.conf" 2>>"$work/mosquitto.log" &
      broker_pid=$!
      wait_port "$port_mosq"
      ;;
  esac
}

stop_broker() {
  kill "$broker_pid" 2>/dev/null || true
  wait "$broker_pid" 2>/dev/null || true
  broker_pid=""
}

run_one() { # scenario broker run
  local scenario=$1 broker=$2 run=$3 port args
  [ "$broker" = ours ] && port=$port_ours || port=$port_mosq
  case "$scenario" in
    fan-in) args=(fan-in --duration "$duration" --warmup "$warmup") ;;
    fan-out) args=(fan-out --duration "$duration" --warmup "$warmup") ;;
    latency0|latency1|latency2) args=(latency --qos "${scenario#latency}" --duration "$duration") ;;
    persist1) args=(latency --qos 1 --persistent --duration "$duration") ;;
    idle) args=(idle) ;;
    filters) args=(filters --duration "$duration" --warmup "$warmup") ;;
    retained) args=(retained) ;;
    *) echo "unknown scenario $scenario" >&2; return 1 ;;
  esac
  if [ "$scenario" = persist1 ]; then start_broker "$broker" persist; else start_broker "$broker"; fi
  local line
  line=$("$loadgen_bin" "${args[@]}" --port "$port" --broker-pid "$broker_pid" \
    --label "$broker" --timeout 180s) || true
  stop_broker
  [ -z "$line" ] && line='{"error":"loadgen printed nothing"}'
  printf '%s\n' "$line" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
r.update(case=sys.argv[1], broker=sys.argv[2], run=int(sys.argv[3]))
print(json.dumps(r))' "$scenario" "$broker" "$run" >>"$work/results.jsonl"
  echo "  $scenario run $run $broker: $(tail -c 300 <<<"$line")" >&2
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date +%s)
for scenario in $scenarios; do
  for run in $(seq "$runs"); do
    if ((run % 2)); then order="ours mosquitto"; else order="mosquitto ours"; fi
    for broker in $order; do
      run_one "$scenario" "$broker" "$run"
    done
  done
done
elapsed=$(($(date +%s) - started))
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# --- the table ---------------------------------------------------------------------------
cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
mosq_version=$("$mosquitto_bin" -h 2>/dev/null | head -1 || true)
ours_version=$("$broker_bin" --version 2>/dev/null || true)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
table=$(python3 - "$work/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]

def med(case, broker, key, sub=None):
    vals = []
    for r in rows:
        if r.get("case") != case or r.get("broker") != broker:
            continue
        v = r.get(key)
        if sub is not None and isinstance(v, dict):
            v = v.get(sub)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            vals.append(v)
    return statistics.median(vals) if vals else None

def errors(case):
    return [f"{r['broker']} run {r['run']}: {r['error']}" for r in rows if r.get("case") == case and r.get("error")]

def fmt(v):
    if v is None:
        return "n/a"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"

# (case, label, key, goal: ('>=' or '<=', factor) or None)
spec = [
    ("fan-in", "fan-in 8→1, QoS 0: delivered msg/s", "msgs_per_s", (">=", 2.0)),
    ("fan-in", "fan-in: broker CPU µs/msg", "broker_cpu_us_per_msg", None),
    ("fan-in", "fan-in: loadgen CPU µs/msg", "loadgen_cpu_us_per_delivery", None),
    ("fan-out", "fan-out 1→100, QoS 0: deliveries/s", "deliveries_per_s", (">=", 2.0)),
    ("fan-out", "fan-out: broker CPU µs/delivery", "broker_cpu_us_per_delivery", None),
    ("fan-out", "fan-out: loadgen CPU µs/delivery", "loadgen_cpu_us_per_delivery", None),
]
for q in (0, 1, 2):
    c = f"latency{q}"
    spec += [
        (c, f"latency QoS {q} @5k/s: p50 µs", "p50_us", ("<=", 1.0)),
        (c, f"latency QoS {q}: p99 µs", "p99_us", ("<=", 1.0)),
        (c, f"latency QoS {q}: p99.9 µs", "p999_us", ("<=", 1.0)),
        (c, f"latency QoS {q}: lost + duplicated", "_lostdup", ("==0", None)),
        (c, f"latency QoS {q}: achieved msg/s", "achieved_rate", None),
        (c, f"latency QoS {q}: broker CPU µs/msg", "broker_cpu_us_per_msg", None),
    ]
spec += [
    ("persist1", "persistent QoS 1 @5k/s (ours sync: always): p50 µs", "p50_us", None),
    ("persist1", "persistent QoS 1: p99 µs", "p99_us", None),
    ("persist1", "persistent QoS 1: lost + duplicated", "_lostdup", ("==0", None)),
    ("persist1", "persistent QoS 1: achieved msg/s", "achieved_rate", None),
    ("persist1", "persistent QoS 1: broker CPU µs/msg", "broker_cpu_us_per_msg", None),
]
spec += [
    ("idle", "idle 10k: broker bytes/connection", "bytes_per_conn", ("<=", 1.5)),
    ("idle", "idle 10k: connects/s (to CONNACK)", "connects_per_s", (">=", 1.0)),
    ("idle", "idle 10k: broker CPU µs/connect", "broker_cpu_us_per_connect", None),
    ("filters", "100k filters: broker bytes/filter", "bytes_per_filter", ("<=", 1.0)),
    ("filters", "100k filters: matching msg/s", "msgs_per_s", (">=", 1.0)),
    ("filters", "100k filters: subscribe time s", "subscribe_s", None),
    ("retained", "100k retained → new '#': time s", "deliver_s", ("<=", 1.0)),
    ("retained", "retained: first message after SUBSCRIBE, ms", "first_message_ms", None),
    ("retained", "retained: broker bytes/message", "bytes_per_retained", None),
]
for r in rows:
    if "lost" in r:
        r["_lostdup"] = r.get("lost", 0) + r.get("duplicates", 0)
cases = {r["case"] for r in rows}
print("| scenario / metric | mqtt-broker | Mosquitto | ours/Mosquitto | goal | met |")
print("|---|---:|---:|---:|---|---|")
for case, label, key, goal in spec:
    if case not in cases:
        continue
    a, b = med(case, "ours", key), med(case, "mosquitto", key)
    ratio = a / b if a is not None and b not in (None, 0) else None
    goal_s, met = "", ""
    if goal and goal[0] == "==0":
        goal_s = "0 (ours)"
        met = "n/a" if a is None else ("yes" if a == 0 else "**no**")
    elif goal and ratio is not None:
        op, f = goal
        goal_s = f"{op} {f:g}×"
        ok = ratio >= f if op == ">=" else ratio <= f
        met = "yes" if ok else "**no**"
    elif goal:
        goal_s = f"{goal[0]} {goal[1]:g}×"
        met = "n/a"
    print(f"| {label} | {fmt(a)} | {fmt(b)} | {'n/a' if ratio is None else f'{ratio:.2f}'} | {goal_s} | {met} |")
errs = [e for c in sorted(cases) for e in errors(c)]
if errs:
    print()
    print("Errors: " + "; ".join(errs))
PY
)

report=$(cat <<EOF
Measured $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc) CPU(s), ${cpu_model}, $(uname -sr);
${ours_version:-mqtt-broker} (commit $commit) vs ${mosq_version:-mosquitto}; loadgen on 1 thread on the same machine.
$runs run(s) per scenario and broker, medians; measurements ${duration} (latency: ${duration} at 5,000 msg/s);
total time ${elapsed} s; load average before ${load_before}, after ${load_after}.

$table
EOF
)
printf '%s\n' "$report"
[ -n "$out" ] && printf '%s\n' "$report" >"$out"
exit 0
