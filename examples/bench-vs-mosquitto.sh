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
#                                       [--out FILE.md] [--keep-json DIR] [--with-rumqttd BIN]
#   --quick      one run each with 3 s measurements (about 3 minutes); default: 2 runs of
#                10 s measurements (about 9 minutes)
#   --runs N     runs per scenario and broker (the table shows medians)
#   --scenarios  subset of: fan-in fan-out latency0 latency1 latency2 idle filters retained
#                persist1 connect-tcp connect-tls connect-password storm (default: all)
#                persist1: QoS 1 latency to a persistent session with persistence on (ours
#                  file-backed with sync: always, Mosquitto with `persistence true`)
#                connect-tcp, connect-tls, connect-password: connects/s to CONNACK; each
#                  connection then DISCONNECTs and waits for the broker to close it; 5,000
#                  connections (10,000 without --quick), 64 at a time. TLS: a self-signed CA
#                  and an ECDSA P-256 server certificate made here with openssl (TLS_KEY=rsa
#                  for RSA 2048), the same files for both brokers, full handshakes (no
#                  resumption). Password: a password file from mosquitto_passwd ($7$,
#                  PBKDF2-SHA512), read by both brokers, anonymous clients refused.
#                storm: STORM_CLIENTS (15,000) persistent sessions, each subscribed at QoS 1
#                  to its own topic, get 2 QoS 1 messages each while disconnected; the broker
#                  is stopped gracefully (SIGTERM: Mosquitto saves its database then; ours
#                  runs file persistence with sync: never) and started again; then all
#                  reconnect, 1,000 at a time, and the time until every client has CONNACK
#                  with session present and its 2 messages is measured. Needs 15,000
#                  descriptors in the load generator and in the broker.
#   --out FILE   also write the table to FILE
#   --keep-json  keep the raw JSON results (one line per run) in DIR
#   --with-rumqttd BIN  (or env RUMQTTD_BIN) also run fan-out against rumqttd (one MQTT 3.1.1
#                server on 127.0.0.1:$PORT_RUMQ, default 18832), shown in a second table,
#                ours vs rumqttd. Build it with e.g.
#                `cargo install rumqttd --version 0.20.0 --root /tmp/rumqttd`.
#   --baseline BIN  (or env BASELINE_BIN) also run every scenario against another build of
#                this broker (e.g. the last release, or `git worktree add` an older commit and
#                build it) with the same configuration, alternating with the others, and
#                print a third table: this build against it, flagging what got slower by
#                more than 5 % in the same run.
#
# The fan-in, fan-out and filters clients announce keep-alive 60 s (rumqttd refuses 0); no
# PINGREQ falls due within a run.
#
# It installs Mosquitto from Debian if missing, and builds the broker and the load
# generator with --release. Brokers listen on 127.0.0.1 only; everything started here is
# stopped by its process id on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=2
quick=0
scenarios="fan-in fan-out latency0 latency1 latency2 idle filters retained persist1"
scenarios+=" connect-tcp connect-tls connect-password storm"
out=""
keep_json=""
rumqttd_bin=${RUMQTTD_BIN:-}
baseline_bin=${BASELINE_BIN:-}
storm_clients=${STORM_CLIENTS:-15000}
tls_key=${TLS_KEY:-ec}
port_ours=${PORT_OURS:-18830}
port_mosq=${PORT_MOSQ:-18831}
port_rumq=${PORT_RUMQ:-18832}
port_base=${PORT_BASE:-18833}
while (($#)); do
  case "$1" in
    --quick) quick=1; runs=1 ;;
    --runs) runs="$2"; shift ;;
    --scenarios) scenarios="$2"; shift ;;
    --out) out="$2"; shift ;;
    --keep-json) keep_json="$2"; shift ;;
    --with-rumqttd) rumqttd_bin="$2"; shift ;;
    --baseline) baseline_bin="$2"; shift ;;
    -h|--help) sed -n '2,50p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if ((quick)); then
  duration=3s; warmup=500ms; connects=5000
else
  duration=10s; warmup=1s; connects=10000
fi
has_scenario() { [[ " $scenarios " == *" $1 "* ]]; }

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
if has_scenario connect-tls; then
  command -v openssl >/dev/null || { echo "openssl is needed for connect-tls" >&2; exit 1; }
fi
mosquitto_passwd_bin=$(command -v mosquitto_passwd || echo /usr/bin/mosquitto_passwd)
if has_scenario connect-password && [ ! -x "$mosquitto_passwd_bin" ]; then
  echo "mosquitto_passwd (package mosquitto) is needed for connect-password" >&2
  exit 1
fi
if [ -n "$baseline_bin" ] && [ ! -x "$baseline_bin" ]; then
  echo "--baseline: $baseline_bin is not an executable" >&2
  exit 1
fi
if [ -n "$rumqttd_bin" ] && [ ! -x "$rumqttd_bin" ]; then
  echo "--with-rumqttd: $rumqttd_bin is not an executable" >&2
  exit 1
fi

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
# storm: both keep persistent sessions and their queued messages over a graceful restart.
# Ours writes without fsync (sync: never: durable every 30 s and at shutdown); Mosquitto
# writes its database at shutdown (and every autosave_interval).
sed -e "s|^persistence:|persistence:\n  storage_type: file\n  path: $work/data\n  sync: never|" \
    -e "s|^  enabled: false|  enabled: true|" "$work/ours.yaml" >"$work/ours-storm.yaml"
cp "$work/mosquitto-persist.conf" "$work/mosquitto-storm.conf"
# connect-tls: one self-signed CA and one server certificate (127.0.0.1 and localhost) for
# both brokers; the load generator verifies the broker against the CA.
mkdir -p "$work/tls"
if has_scenario connect-tls; then
  if [ "$tls_key" = rsa ]; then
    newkey=(-newkey rsa:2048)
  else
    newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256)
  fi
  openssl req -x509 "${newkey[@]}" -nodes -days 7 -subj "/CN=bench CA" \
    -keyout "$work/tls/ca.key" -out "$work/tls/ca.pem" 2>/dev/null
  openssl req "${newkey[@]}" -nodes -subj "/CN=localhost" \
    -keyout "$work/tls/server.key" -out "$work/tls/server.csr" 2>/dev/null
  printf "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n" \
    >"$work/tls/ext.cnf"
  openssl x509 -req -in "$work/tls/server.csr" -CA "$work/tls/ca.pem" \
    -CAkey "$work/tls/ca.key" -CAcreateserial -days 7 -extfile "$work/tls/ext.cnf" \
    -out "$work/tls/server.pem" 2>/dev/null
  # Mosquitto drops to the mosquitto user and must read them (throw-away keys).
  chmod 644 "$work/tls/"*
fi
sed -e "s|^  - bind: 127.0.0.1:$port_ours\$|&\n    protocol: tls\n    cert_file: $work/tls/server.pem\n    key_file: $work/tls/server.key|" \
    "$work/ours.yaml" >"$work/ours-tls.yaml"
sed -e "s|^listener $port_mosq 127.0.0.1\$|&\ncertfile $work/tls/server.pem\nkeyfile $work/tls/server.key\ncafile $work/tls/ca.pem|" \
    "$work/mosquitto.conf" >"$work/mosquitto-tls.conf"
# connect-password: the same password file for both, anonymous clients refused.
bench_user=bench
bench_pass=bench-pass-1
if has_scenario connect-password; then
  "$mosquitto_passwd_bin" -c -b "$work/passwd" "$bench_user" "$bench_pass"
  chmod 644 "$work/passwd"
fi
{ cat "$work/ours.yaml"; printf 'security:\n  password_file: %s\n  allow_anonymous: false\n' "$work/passwd"; } \
  >"$work/ours-password.yaml"
sed -e "s|^allow_anonymous true|allow_anonymous false\npassword_file $work/passwd|" \
    "$work/mosquitto.conf" >"$work/mosquitto-password.conf"
# rumqttd (fan-out only): one MQTT 3.1.1 server, no console or metrics listeners, limits far
# above what fan-out needs (101 connections, 64-byte payloads), no delay between accepts.
cat >"$work/rumqttd.toml" <<EOF
id = 0

[router]
id = 0
max_connections = 10010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:$port_rumq"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = 1000
    dynamic_filters = true
EOF
chmod 644 "$work/"*.conf
chmod 755 "$work" "$work/tls"

wait_port() {
  local port=$1
  for _ in $(seq 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "broker on port $port did not start" >&2
  return 1
}

start_broker() { # ours|mosquitto|rumqttd [persist|storm|tls|password] [keep]
  local suffix=""
  [ -n "${2:-}" ] && suffix="-$2"
  if [ "${2:-}" = persist ] || [ "${2:-}" = storm ]; then
    if [ "${3:-}" != keep ]; then # a restart keeps what the broker saved
      rm -rf "$work/data" "$work/mosq-data"
      mkdir -p "$work/mosq-data"
      chmod 777 "$work/mosq-data"
    fi
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
    baseline)
      # Our configuration files, on the baseline's port.
      sed "s/127.0.0.1:$port_ours/127.0.0.1:$port_base/" "$work/ours$suffix.yaml" \
        >"$work/baseline$suffix.yaml"
      "$baseline_bin" --config "$work/baseline$suffix.yaml" 2>>"$work/baseline.log" &
      broker_pid=$!
      wait_port "$port_base"
      ;;
    rumqttd)
      "$rumqttd_bin" -q -c "$work/rumqttd.toml" >/dev/null 2>>"$work/rumqttd.log" &
      broker_pid=$!
      wait_port "$port_rumq"
      ;;
  esac
}

stop_broker() {
  kill "$broker_pid" 2>/dev/null || true
  wait "$broker_pid" 2>/dev/null || true
  broker_pid=""
}

record() { # scenario broker run json-line [extra JSON object merged into it]
  local line=$4 extra=${5:-}
  [ -z "$line" ] && line='{"error":"loadgen printed nothing"}'
  [ -z "$extra" ] && extra='{}'
  printf '%s\n' "$line" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
r.update(json.loads(sys.argv[4]))
r.update(case=sys.argv[1], broker=sys.argv[2], run=int(sys.argv[3]))
print(json.dumps(r))' "$1" "$2" "$3" "$extra" >>"$work/results.jsonl"
  echo "  $1 run $3 $2: $(tail -c 300 <<<"$line")" >&2
}

# storm: prepare against a fresh broker, stop it gracefully (it saves its state), start it
# on that state, then the storm against the new process.
run_storm() { # broker run port
  local broker=$1 run=$2 port=$3 line t0 t1 t2 prepared
  local common=(reconnect-storm --port "$port" --clients "$storm_clients" --label "$broker"
                --timeout 300s)
  start_broker "$broker" storm
  line=$("$loadgen_bin" "${common[@]}" --phase prepare --broker-pid "$broker_pid") || true
  if [ -z "$line" ] || [[ "$line" == *'"error"'* ]]; then
    stop_broker
    record storm "$broker" "$run" "$line" '{"failed_phase":"prepare"}'
    return
  fi
  t0=$(date +%s%N); stop_broker; t1=$(date +%s%N)
  start_broker "$broker" storm keep; t2=$(date +%s%N)
  prepared=$(python3 -c '
import json, sys
r = json.loads(sys.argv[1])
print(json.dumps({
    "prepare_sessions_s": r.get("sessions_s"),
    "prepare_publish_s": r.get("publish_s"),
    "stale_sessions": r.get("stale_sessions"),
    "rss_prepared_kb": (r.get("broker_process") or {}).get("rss_end_kb"),
    "stop_s": round(int(sys.argv[2]) / 1e9, 2),
    "start_s": round(int(sys.argv[3]) / 1e9, 2),
}))' "$line" "$((t1 - t0))" "$((t2 - t1))")
  line=$("$loadgen_bin" "${common[@]}" --phase storm --broker-pid "$broker_pid") || true
  stop_broker
  record storm "$broker" "$run" "$line" "$prepared"
}

run_one() { # scenario broker run
  local scenario=$1 broker=$2 run=$3 port args variant=""
  case "$broker" in
    ours) port=$port_ours ;;
    mosquitto) port=$port_mosq ;;
    rumqttd) port=$port_rumq ;;
    baseline) port=$port_base ;;
  esac
  case "$scenario" in
    fan-in) args=(fan-in --duration "$duration" --warmup "$warmup" --keep-alive 60) ;;
    fan-out) args=(fan-out --duration "$duration" --warmup "$warmup" --keep-alive 60) ;;
    latency0|latency1|latency2) args=(latency --qos "${scenario#latency}" --duration "$duration") ;;
    persist1) args=(latency --qos 1 --persistent --duration "$duration"); variant=persist ;;
    idle) args=(idle) ;;
    filters) args=(filters --duration "$duration" --warmup "$warmup" --keep-alive 60) ;;
    retained) args=(retained) ;;
    connect-tcp) args=(connect-rate --connections "$connects" --parallel 64) ;;
    connect-tls)
      args=(connect-rate --connections "$connects" --parallel 64 --tls-ca "$work/tls/ca.pem")
      variant=tls ;;
    connect-password)
      args=(connect-rate --connections "$connects" --parallel 64
            --username "$bench_user" --password "$bench_pass")
      variant=password ;;
    storm) run_storm "$broker" "$run" "$port"; return ;;
    *) echo "unknown scenario $scenario" >&2; return 1 ;;
  esac
  start_broker "$broker" ${variant:+"$variant"}
  local line
  line=$("$loadgen_bin" "${args[@]}" --port "$port" --broker-pid "$broker_pid" \
    --label "$broker" --timeout 180s) || true
  stop_broker
  record "$scenario" "$broker" "$run" "$line"
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date +%s)
for scenario in $scenarios; do
  for run in $(seq "$runs"); do
    if ((run % 2)); then order="ours mosquitto"; else order="mosquitto ours"; fi
    if [ -n "$baseline_bin" ]; then
      if ((run % 2)); then order="$order baseline"; else order="baseline $order"; fi
    fi
    if [ "$scenario" = fan-out ] && [ -n "$rumqttd_bin" ]; then
      if ((run % 2)); then order="$order rumqttd"; else order="rumqttd $order"; fi
    fi
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
rumqttd_version=""
[ -n "$rumqttd_bin" ] && rumqttd_version=" and $("$rumqttd_bin" --version 2>/dev/null || echo rumqttd) (fan-out)"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
baseline_note=""
[ -n "$baseline_bin" ] && baseline_note="; baseline build: $baseline_bin"
table=$(python3 - "$work/results.jsonl" "$storm_clients" <<'PY'
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
    out = []
    for r in rows:
        if r.get("case") != case:
            continue
        if r.get("error"):
            out.append(f"{case} {r['broker']} run {r['run']}: {r['error']}")
        elif r.get("errors"):
            # connect-rate and reconnect-storm count failed connections instead of failing.
            out.append(f"{case} {r['broker']} run {r['run']}: {r['errors']} failed connection(s), "
                       f"first: {r.get('first_error')}")
    return out

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
    ("fan-out", "fan-out: broker peak RSS MiB", "_hwm_mib", None),
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
for case, what in (("connect-tcp", "TCP"), ("connect-tls", "TLS"), ("connect-password", "password file")):
    spec += [
        (case, f"connect {what}, 64 at a time: connects/s", "connects_per_s", (">=", 1.0)),
        (case, f"connect {what}: p50 µs to CONNACK", "connect_p50_us", None),
        (case, f"connect {what}: p99 µs to CONNACK", "connect_p99_us", None),
        (case, f"connect {what}: broker CPU µs/connect", "broker_cpu_us_per_connect", None),
        (case, f"connect {what}: loadgen CPU µs/connect", "loadgen_cpu_us_per_connect", None),
        (case, f"connect {what}: failed connections", "_failed", ("==0", None)),
        (case, f"connect {what}: SYNs dropped, listen queue full", "listen_drops", None),
    ]
spec += [
    ("storm", f"reconnect storm {int(sys.argv[2]):,} sessions × 2 queued QoS 1, 1,000 at a time: time s",
     "storm_s", ("<=", 1.0)),
    ("storm", "storm: all CONNACKs s", "all_connack_s", None),
    ("storm", "storm: per-client p50 ms", "client_p50_ms", None),
    ("storm", "storm: per-client p99 ms", "client_p99_ms", None),
    ("storm", "storm: sessions missing + messages missing + duplicates", "_storm_bad", ("==0", None)),
    ("storm", "storm: SYNs dropped, listen queue full", "listen_drops", None),
    ("storm", "storm: broker CPU µs/client", "broker_cpu_us_per_client", None),
    ("storm", "storm: broker restart s (graceful stop + start to listening)", "_restart_s", None),
    ("storm", "storm: broker RSS, sessions offline (before restart) MiB", "_prepared_mib", None),
    ("storm", "storm: broker RSS, all reconnected MiB", "_connected_mib", None),
]
def mib(kb):
    return kb / 1024 if isinstance(kb, (int, float)) else None

for r in rows:
    if "lost" in r:
        r["_lostdup"] = r.get("lost", 0) + r.get("duplicates", 0)
    if "connected" in r and "connections" in r:
        r["_failed"] = r["connections"] - r["connected"]
    if r.get("phase") == "storm" and "sessions_missing" in r:
        r["_storm_bad"] = r["sessions_missing"] + r["messages_missing"] + r["duplicates"] + r.get("errors", 0)
    if isinstance(r.get("stop_s"), (int, float)) and isinstance(r.get("start_s"), (int, float)):
        r["_restart_s"] = r["stop_s"] + r["start_s"]
    r["_hwm_mib"] = mib((r.get("broker_process") or {}).get("vm_hwm_kb"))
    r["_prepared_mib"] = mib(r.get("rss_prepared_kb"))
    r["_connected_mib"] = mib(r.get("rss_connected_kb"))
cases = {r["case"] for r in rows}

def table(spec, other, other_name):
    print(f"| scenario / metric | mqtt-broker | {other_name} | ours/{other_name} | goal | met |")
    print("|---|---:|---:|---:|---|---|")
    for case, label, key, goal in spec:
        if case not in cases:
            continue
        a, b = med(case, "ours", key), med(case, other, key)
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

table(spec, "mosquitto", "Mosquitto")
if any(r.get("broker") == "rumqttd" for r in rows):
    print()
    print("Fan-out against rumqttd (same runs, same load generator):")
    print()
    table([
        ("fan-out", "fan-out 1→100, QoS 0: deliveries/s", "deliveries_per_s", (">=", 1.0)),
        ("fan-out", "fan-out: broker CPU µs/delivery", "broker_cpu_us_per_delivery", ("<=", 1.0)),
        ("fan-out", "fan-out: broker peak RSS MiB", "_hwm_mib", None),
    ], "rumqttd", "rumqttd")
if any(r.get("broker") == "baseline" for r in rows):
    # Which way is better for each measure; others (sizes, counts) are shown only.
    higher = {"msgs_per_s", "deliveries_per_s", "connects_per_s", "achieved_rate"}
    lower = {"p50_us", "p99_us", "p999_us", "storm_s", "deliver_s", "first_message_ms",
             "subscribe_s", "bytes_per_conn", "bytes_per_filter", "broker_cpu_us_per_msg",
             "broker_cpu_us_per_delivery", "broker_cpu_us_per_connect"}
    print()
    print("This build against the baseline build (same runs; slower by more than 5 % flagged):")
    print()
    print("| scenario / metric | this build | baseline | this/baseline | slower by > 5 % |")
    print("|---|---:|---:|---:|---|")
    for case, label, key, _ in spec:
        if case not in cases:
            continue
        a, b = med(case, "ours", key), med(case, "baseline", key)
        ratio = a / b if a is not None and b not in (None, 0) else None
        flag = ""
        if ratio is not None and key in higher:
            flag = "**yes**" if ratio < 0.95 else "no"
        elif ratio is not None and key in lower:
            flag = "**yes**" if ratio > 1.05 else "no"
        print(f"| {label} | {fmt(a)} | {fmt(b)} | {'n/a' if ratio is None else f'{ratio:.2f}'} | {flag} |")
errs = [e for c in sorted(cases) for e in errors(c)]
if errs:
    print()
    print("Errors: " + "; ".join(errs))
PY
)

report=$(cat <<EOF
Measured $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc) CPU(s), ${cpu_model}, $(uname -sr);
${ours_version:-mqtt-broker} (commit $commit) vs ${mosq_version:-mosquitto}${rumqttd_version}${baseline_note}; loadgen on 1 thread on the same machine.
$runs run(s) per scenario and broker, medians; measurements ${duration} (latency: ${duration} at 5,000 msg/s);
total time ${elapsed} s; load average before ${load_before}, after ${load_after}.

$table
EOF
)
printf '%s\n' "$report"
[ -n "$out" ] && printf '%s\n' "$report" >"$out"
exit 0
