//! `GET /metrics`: the counters and gauges in the Prometheus text exposition format
//! (version 0.0.4), written by hand: the format is simple and the broker already keeps
//! every number in atomics, so no metrics registry is needed.

use crate::core::control::Control;
use crate::events::DisconnectReason;
use crate::metrics::ops::{LimitKind, LATENCY_BUCKETS};
use crate::metrics::Counters;
use std::fmt::{Display, Write};
use std::sync::atomic::{AtomicU64, Ordering};

/// Accumulates the exposition text.
struct Out(String);

impl Out {
    /// `# HELP` and `# TYPE` lines of a metric family.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample; label values here are fixed identifiers that need no escaping.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{v}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A family with a single unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

const QOS: [&str; 3] = ["0", "1", "2"];

/// Messages (or deliveries) dropped so far, by reason: the `reason` label of
/// `mqtt_messages_dropped_total`, and the dashboard's "drops by reason".
pub(crate) fn drop_reasons(c: &Counters) -> [(&'static str, u64); 9] {
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let ops = &c.ops;
    [
        ("queue_full", get(&c.dropped_queue_full)),
        (
            "queue_bytes",
            get(&ops.limits[LimitKind::MaxQueuedBytes as usize]),
        ),
        ("no_subscribers", get(&c.dropped_no_subscribers)),
        ("offline_qos0", get(&c.dropped_offline_qos0)),
        ("acl_denied_publish", get(&c.acl_denied_publish)),
        ("acl_denied_deliver", get(&c.acl_denied_deliver)),
        ("sys_topic", get(&ops.sys_publish_denied)),
        ("oversized", get(&ops.oversized_packets)),
        ("retained_limit", get(&c.retained_refused_limit)),
    ]
}

/// Renders every metric.
pub(crate) fn render(control: &dyn Control) -> String {
    let c = control.counters();
    let ops = &c.ops;
    let stats = control.stats();
    let persistent = control.persistent_sessions();
    let runtime = control.runtime();
    let mut o = Out(String::with_capacity(8 * 1024));

    o.family(
        "mqtt_connections",
        "gauge",
        "Open client connections by transport.",
    );
    for (t, v) in [
        ("tcp", stats.connections.tcp),
        ("tls", stats.connections.tls),
        ("ws", stats.connections.websocket),
        ("wss", stats.connections.wss),
        ("bridge", stats.connections.bridge),
    ] {
        o.sample("mqtt_connections", &[("transport", t)], v);
    }
    o.single(
        "mqtt_connections_accepted_total",
        "counter",
        "TCP connections accepted by the listeners.",
        get(&c.connections_accepted),
    );
    o.family(
        "mqtt_connects_total",
        "counter",
        "CONNECT outcomes: accepted, or why refused.",
    );
    for (r, v) in [
        ("accepted", get(&ops.connects_accepted)),
        ("max_connections", get(&c.connections_refused_limit)),
        ("auth_failed", get(&c.auth_failure)),
        (
            "identifier_rejected",
            get(&ops.connects_identifier_rejected),
        ),
        ("connect_timeout", get(&ops.connect_timeouts)),
        ("bad_auth_method", get(&ops.connects_bad_auth_method)),
    ] {
        o.sample("mqtt_connects_total", &[("result", r)], v);
    }
    o.family(
        "mqtt5_reason_codes_sent_total",
        "counter",
        "MQTT 5 reason codes other than success sent to clients (CONNACK, PUBACK/PUBREC/PUBREL/PUBCOMP, SUBACK, UNSUBACK, DISCONNECT), by code.",
    );
    for (code, n) in ops.reason_codes_sent.nonzero() {
        let code = format!("0x{code:02X}");
        o.sample("mqtt5_reason_codes_sent_total", &[("code", &code)], n);
    }
    o.family(
        "mqtt5_messages_discarded_total",
        "counter",
        "Messages not sent to a subscriber: expired (Message Expiry Interval) or larger than its Maximum Packet Size.",
    );
    o.sample(
        "mqtt5_messages_discarded_total",
        &[("reason", "expired")],
        get(&ops.expired_messages),
    );
    o.sample(
        "mqtt5_messages_discarded_total",
        &[("reason", "too_large_for_client")],
        get(&ops.dropped_too_large_for_client),
    );
    o.family(
        "mqtt_disconnects_total",
        "counter",
        "Ends of accepted connections by reason.",
    );
    for r in DisconnectReason::ALL {
        o.sample(
            "mqtt_disconnects_total",
            &[("reason", r.as_str())],
            get(&ops.disconnects[r.index()]),
        );
    }
    o.single(
        "mqtt_protocol_errors_total",
        "counter",
        "Connections closed for a protocol violation (before or after CONNECT).",
        get(&c.protocol_errors),
    );

    o.family(
        "mqtt_sessions",
        "gauge",
        "Sessions held, by whether a client is connected.",
    );
    o.sample(
        "mqtt_sessions",
        &[("state", "connected")],
        stats.sessions.connected,
    );
    o.sample(
        "mqtt_sessions",
        &[("state", "disconnected")],
        stats.sessions.total - stats.sessions.connected.min(stats.sessions.total),
    );
    o.single(
        "mqtt_sessions_persistent",
        "gauge",
        "Sessions with clean session 0 (kept across connections).",
        persistent,
    );
    o.single(
        "mqtt_subscriptions",
        "gauge",
        "Subscriptions (filter, client pairs).",
        stats.subscriptions.total,
    );
    o.single(
        "mqtt_retained_messages",
        "gauge",
        "Topics holding a retained message.",
        stats.messages.retained,
    );
    o.family(
        "mqtt_inflight_messages",
        "gauge",
        "Outbound QoS 1/2 messages awaiting acknowledgement (QoS 2 includes inbound awaiting PUBREL).",
    );
    o.sample(
        "mqtt_inflight_messages",
        &[("qos", "1")],
        stats.messages.inflight.qos1,
    );
    o.sample(
        "mqtt_inflight_messages",
        &[("qos", "2")],
        stats.messages.inflight.qos2,
    );
    o.single(
        "mqtt_queued_messages",
        "gauge",
        "Messages queued for sessions behind their inflight windows.",
        stats.messages.queued,
    );

    for (name, help, arr) in [
        (
            "mqtt_messages_received_total",
            "PUBLISH packets received from clients, by QoS.",
            &ops.messages_in,
        ),
        (
            "mqtt_messages_sent_total",
            "PUBLISH packets sent to clients (resends included), by QoS.",
            &ops.messages_out,
        ),
        (
            "mqtt_payload_bytes_received_total",
            "PUBLISH payload bytes received, by QoS.",
            &ops.payload_bytes_in,
        ),
        (
            "mqtt_payload_bytes_sent_total",
            "PUBLISH payload bytes sent, by QoS.",
            &ops.payload_bytes_out,
        ),
    ] {
        o.family(name, "counter", help);
        for (q, v) in QOS.iter().zip(arr.iter()) {
            o.sample(name, &[("qos", q)], get(v));
        }
    }
    o.single(
        "mqtt_bytes_received_total",
        "counter",
        "Bytes read from client sockets.",
        get(&c.bytes_in),
    );
    o.single(
        "mqtt_bytes_sent_total",
        "counter",
        "Bytes written to client sockets.",
        get(&c.bytes_out),
    );
    o.family(
        "mqtt_messages_dropped_total",
        "counter",
        "Messages (or deliveries) dropped, by reason.",
    );
    for (r, v) in drop_reasons(c) {
        o.sample("mqtt_messages_dropped_total", &[("reason", r)], v);
    }
    o.single(
        "mqtt_subscribe_denied_total",
        "counter",
        "SUBSCRIBE filters refused by the ACL (SUBACK 0x80).",
        get(&c.acl_denied_subscribe),
    );
    o.family(
        "mqtt_limit_refusals_total",
        "counter",
        "Work refused or slowed by a resource limit, by the config key of the limit.",
    );
    for k in LimitKind::ALL {
        o.sample(
            "mqtt_limit_refusals_total",
            &[("limit", k.as_str())],
            get(&ops.limits[k as usize]),
        );
    }
    for (k, v) in [
        ("max_connections", get(&c.connections_refused_limit)),
        ("max_packet_size", get(&ops.oversized_packets)),
        ("connect_timeout", get(&ops.connect_timeouts)),
        ("retained_message_limit", get(&c.retained_refused_limit)),
    ] {
        o.sample("mqtt_limit_refusals_total", &[("limit", k)], v);
    }
    o.family(
        "mqtt_auth_total",
        "counter",
        "Authentication outcomes at CONNECT.",
    );
    o.sample(
        "mqtt_auth_total",
        &[("result", "success")],
        get(&c.auth_success),
    );
    o.sample(
        "mqtt_auth_total",
        &[("result", "failure")],
        get(&c.auth_failure),
    );
    o.single(
        "mqtt_reauth_disconnects_total",
        "counter",
        "Clients disconnected because a reload revoked their credentials.",
        get(&c.reauth_disconnects),
    );
    o.single(
        "mqtt_wills_published_total",
        "counter",
        "Will messages published.",
        get(&c.wills_published),
    );

    let (buckets, sum, count) = ops.deliver_latency.snapshot();
    let name = "mqtt_publish_deliver_latency_seconds";
    o.family(
        name,
        "histogram",
        "Time from routing a PUBLISH to writing it to a subscriber's connection (queueing included).",
    );
    for (bound, n) in LATENCY_BUCKETS.iter().zip(&buckets) {
        o.sample(&format!("{name}_bucket"), &[("le", &bound.to_string())], n);
    }
    o.sample(&format!("{name}_bucket"), &[("le", "+Inf")], count);
    o.sample(&format!("{name}_sum"), &[], sum);
    o.sample(&format!("{name}_count"), &[], count);

    o.single(
        "mqtt_config_generation",
        "gauge",
        "Generation of the configuration in force (1 at start, +1 per successful reload).",
        runtime.generation,
    );
    o.family(
        "mqtt_config_reloads_total",
        "counter",
        "Configuration reload attempts by result.",
    );
    o.sample(
        "mqtt_config_reloads_total",
        &[("result", "ok")],
        get(&c.reloads_ok),
    );
    o.sample(
        "mqtt_config_reloads_total",
        &[("result", "error")],
        get(&c.reloads_failed),
    );
    let last = control.last_reload();
    o.single(
        "mqtt_config_pending_restart",
        "gauge",
        "Settings changed in the configuration that take effect only after a restart (see GET /api/v1/reload).",
        last.pending_restart.len(),
    );
    o.single(
        "mqtt_config_last_reload_successful",
        "gauge",
        "1 if the last reload attempt succeeded (or none was made), 0 if it was refused.",
        u8::from(last.ok),
    );
    o.single(
        "mqtt_config_last_reload_timestamp_seconds",
        "gauge",
        "When the last reload attempt (or the start) happened, Unix time.",
        unix_secs(last.at),
    );
    o.single(
        "mqtt_ready",
        "gauge",
        "1 when /readyz answers 200.",
        u8::from(control.is_ready()),
    );
    o.single(
        "mqtt_uptime_seconds",
        "gauge",
        "Seconds since the broker started.",
        control.started().0.elapsed().as_secs(),
    );
    o.single(
        "process_start_time_seconds",
        "gauge",
        "Start time of the broker, Unix time.",
        unix_secs(control.started().1),
    );
    if let Some(rss) = process_rss_bytes() {
        o.single(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory of the process.",
            rss,
        );
    }
    render_plugins(&mut o, &runtime.plugins.stats());
    render_bridges(&mut o, &control.bridges());
    if let Some(c) = control.cluster() {
        render_cluster(&mut o, &c);
    }
    if let Some(fds) = process_open_fds() {
        o.single(
            "process_open_fds",
            "gauge",
            "Open file descriptors of the process.",
            fds,
        );
    }
    if let Some(max) = process_max_fds() {
        o.single(
            "process_max_fds",
            "gauge",
            "Open file descriptor limit of the process.",
            max,
        );
    }
    o.0
}

/// Name, type, help and value of one per-plugin metric family.
type PluginFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&crate::plugins::PluginStats) -> u64,
);

/// Per-plugin counters and state (`plugin` label: the configured name, escaped).
/// The cluster link: state, traffic both ways, JetStream acknowledgements and failures.
fn render_cluster(o: &mut Out, c: &crate::core::control::ClusterSummary) {
    o.single(
        "mqtt_cluster_link_up",
        "gauge",
        "1 while this node is connected to NATS (0: it refuses new clients).",
        u8::from(c.link_up),
    );
    o.single(
        "mqtt_cluster_link_losses_total",
        "counter",
        "Times this node lost its NATS connection.",
        c.link_losses,
    );
    o.family(
        "mqtt_cluster_messages_total",
        "counter",
        "Messages this node sent to the cluster (out) and received from it (in).",
    );
    o.sample(
        "mqtt_cluster_messages_total",
        &[("direction", "out")],
        c.messages_to_cluster,
    );
    o.sample(
        "mqtt_cluster_messages_total",
        &[("direction", "in")],
        c.messages_from_cluster,
    );
    o.single(
        "mqtt_cluster_publish_failures_total",
        "counter",
        "QoS 1/2 messages JetStream did not store: their publishers got no acknowledgement.",
        c.publish_failures,
    );
    o.family(
        "mqtt_cluster_jetstream_ack_seconds",
        "summary",
        "Time from sending a message to JetStream to its acknowledgement.",
    );
    o.sample(
        "mqtt_cluster_jetstream_ack_seconds_sum",
        &[],
        c.jetstream_ack_seconds_sum,
    );
    o.sample(
        "mqtt_cluster_jetstream_ack_seconds_count",
        &[],
        c.jetstream_acks,
    );
    o.single(
        "mqtt_cluster_jetstream_ack_max_seconds",
        "gauge",
        "Slowest JetStream acknowledgement since start.",
        c.jetstream_ack_us_max as f64 / 1e6,
    );
    o.single(
        "mqtt_cluster_retained_updates_total",
        "counter",
        "Retained messages stored or deleted from the cluster's retained bucket.",
        c.retained_updates,
    );
    o.single(
        "mqtt_cluster_undecodable_total",
        "counter",
        "Messages from the cluster that did not decode (dropped, logged).",
        c.undecodable,
    );
    o.single(
        "mqtt_cluster_sessions_owned",
        "gauge",
        "Client ids whose sessions this node owns.",
        c.sessions_owned,
    );
    o.single(
        "mqtt_cluster_sessions_handed_over_total",
        "counter",
        "Sessions this node gave to another node their client connected to.",
        c.sessions_handed_over,
    );
    o.single(
        "mqtt_cluster_wills_of_stopped_nodes_total",
        "counter",
        "Wills of a stopped node's clients this node published.",
        c.wills_of_stopped_nodes,
    );
    o.family(
        "mqtt_cluster_node_up",
        "gauge",
        "1 while another node's heartbeat is recent (alive), by node.",
    );
    for n in &c.nodes {
        o.sample(
            "mqtt_cluster_node_up",
            &[("node", &escape_label(&n.name))],
            u8::from(n.alive),
        );
    }
}

/// Per-bridge state, traffic, drops, queue and reconnects.
fn render_bridges(o: &mut Out, bridges: &[crate::core::control::BridgeSummary]) {
    if bridges.is_empty() {
        return;
    }
    let names: Vec<String> = bridges.iter().map(|b| escape_label(&b.name)).collect();
    o.family(
        "mqtt_bridge_connected",
        "gauge",
        "1 while the bridge is connected to its remote broker.",
    );
    for (b, n) in bridges.iter().zip(&names) {
        o.sample(
            "mqtt_bridge_connected",
            &[("bridge", n)],
            u8::from(b.state == "connected"),
        );
    }
    o.family(
        "mqtt_bridge_messages_total",
        "counter",
        "Messages forwarded by the bridge: out to the remote (acknowledged), in from it.",
    );
    for (b, n) in bridges.iter().zip(&names) {
        o.sample(
            "mqtt_bridge_messages_total",
            &[("bridge", n), ("direction", "out")],
            b.messages_out,
        );
        o.sample(
            "mqtt_bridge_messages_total",
            &[("bridge", n), ("direction", "in")],
            b.messages_in,
        );
    }
    o.family(
        "mqtt_bridge_dropped_total",
        "counter",
        "Messages the bridge did not forward, by reason.",
    );
    for (b, n) in bridges.iter().zip(&names) {
        for (reason, v) in &b.dropped {
            o.sample(
                "mqtt_bridge_dropped_total",
                &[("bridge", n), ("reason", reason)],
                v,
            );
        }
    }
    o.family(
        "mqtt_bridge_queue_depth",
        "gauge",
        "QoS 1/2 messages waiting for the remote (held by the bridge and queued in its session).",
    );
    for (b, n) in bridges.iter().zip(&names) {
        o.sample("mqtt_bridge_queue_depth", &[("bridge", n)], b.queue_depth);
    }
    o.family(
        "mqtt_bridge_reconnects_total",
        "counter",
        "Connections to the remote lost or failed.",
    );
    for (b, n) in bridges.iter().zip(&names) {
        o.sample(
            "mqtt_bridge_reconnects_total",
            &[("bridge", n)],
            b.reconnects,
        );
    }
}

fn render_plugins(o: &mut Out, plugins: &[crate::plugins::PluginStats]) {
    if plugins.is_empty() {
        return;
    }
    let names: Vec<String> = plugins.iter().map(|p| escape_label(&p.name)).collect();
    let families: [PluginFamily; 15] = [
        (
            "mqtt_plugin_calls_total",
            "counter",
            "Hook calls attempted, refused-while-degraded included.",
            |p| p.calls,
        ),
        (
            "mqtt_plugin_failures_total",
            "counter",
            "Hook calls that failed (any reason).",
            |p| p.failures,
        ),
        (
            "mqtt_plugin_timeouts_total",
            "counter",
            "Hook calls stopped at their time limit.",
            |p| p.timeouts,
        ),
        (
            "mqtt_plugin_out_of_memory_total",
            "counter",
            "Hook calls stopped at the memory limit.",
            |p| p.out_of_memory,
        ),
        (
            "mqtt_plugin_traps_total",
            "counter",
            "Hook calls that trapped or answered invalidly.",
            |p| p.traps,
        ),
        (
            "mqtt_plugin_instances_created_total",
            "counter",
            "Plugin instances created (first, replacements, pool growth).",
            |p| p.instances_created,
        ),
        (
            "mqtt_plugin_degraded",
            "gauge",
            "1 while the plugin is degraded (failing per on_error without being called).",
            |p| u64::from(p.degraded),
        ),
        (
            "mqtt_plugin_peak_memory_bytes",
            "gauge",
            "Largest linear memory one instance of the plugin reached.",
            |p| p.peak_memory_bytes,
        ),
        (
            "mqtt_plugin_events_delivered_total",
            "counter",
            "Event hook calls made (plugin API 0.2).",
            |p| p.events_delivered,
        ),
        (
            "mqtt_plugin_events_dropped_total",
            "counter",
            "Events dropped because the plugin's event queue (events.queue) was full.",
            |p| p.events_dropped,
        ),
        (
            "mqtt_plugin_ticks_total",
            "counter",
            "timer.tick calls made (capability tick).",
            |p| p.ticks,
        ),
        (
            "mqtt_plugin_http_requests_total",
            "counter",
            "HTTP requests made by the plugin (capability http).",
            |p| p.http_requests,
        ),
        (
            "mqtt_plugin_published_total",
            "counter",
            "Messages the plugin published (capability publish).",
            |p| p.published,
        ),
        (
            "mqtt_plugin_capability_denied_total",
            "counter",
            "Capability calls refused: not granted, host or topic not allowed, over a limit.",
            |p| p.capability_denied,
        ),
        (
            "mqtt_plugin_kv_bytes",
            "gauge",
            "Bytes in the plugin's key-value store (capability kv).",
            |p| p.kv_bytes,
        ),
    ];
    for (name, kind, help, value) in families {
        o.family(name, kind, help);
        for (p, label) in plugins.iter().zip(&names) {
            o.sample(name, &[("plugin", label)], value(p));
        }
    }
}

/// Escapes a label value per the text format: backslash, double quote and newline.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn unix_secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `VmRSS` from `/proc/self/status` (Linux only; `None` elsewhere).
pub fn process_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Entries of `/proc/self/fd` (Linux only).
pub fn process_open_fds() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

/// The soft "Max open files" limit from `/proc/self/limits` (Linux only).
fn process_max_fds() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_readings_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(process_rss_bytes().unwrap_or(0) > 0);
            assert!(process_open_fds().unwrap_or(0) > 0);
        }
    }

    #[test]
    fn plugin_families_carry_the_plugin_label_escaped() {
        let stats = crate::plugins::PluginStats {
            name: "acl \"v2\"".into(),
            hooks: vec!["authorize"],
            artifact: crate::plugins::ArtifactSource::Compiled,
            calls: 7,
            failures: 2,
            timeouts: 1,
            out_of_memory: 0,
            traps: 1,
            rejected_degraded: 0,
            instances_created: 3,
            mean_instantiate_us: 10,
            slowest_call_us: 5,
            degraded: true,
            peak_memory_bytes: 65536,
            memory_limit_bytes: 1 << 20,
            recent_errors: Vec::new(),
            api: "0.2.0",
            events_delivered: 4,
            events_dropped: 1,
            ticks: 0,
            http_requests: 0,
            published: 3,
            capability_denied: 0,
            kv_bytes: 10,
        };
        let mut o = Out(String::new());
        render_plugins(&mut o, &[stats]);
        for line in [
            "mqtt_plugin_calls_total{plugin=\"acl \\\"v2\\\"\"} 7",
            "mqtt_plugin_failures_total{plugin=\"acl \\\"v2\\\"\"} 2",
            "mqtt_plugin_timeouts_total{plugin=\"acl \\\"v2\\\"\"} 1",
            "mqtt_plugin_degraded{plugin=\"acl \\\"v2\\\"\"} 1",
            "mqtt_plugin_peak_memory_bytes{plugin=\"acl \\\"v2\\\"\"} 65536",
            "mqtt_plugin_events_dropped_total{plugin=\"acl \\\"v2\\\"\"} 1",
            "mqtt_plugin_published_total{plugin=\"acl \\\"v2\\\"\"} 3",
            "mqtt_plugin_kv_bytes{plugin=\"acl \\\"v2\\\"\"} 10",
        ] {
            assert!(o.0.lines().any(|l| l == line), "missing {line} in\n{}", o.0);
        }
    }

    #[test]
    fn sample_format() {
        let mut o = Out(String::new());
        o.family("m", "counter", "Help.");
        o.sample("m", &[("a", "x"), ("b", "y")], 3);
        o.sample("m", &[], 1.5);
        assert_eq!(
            o.0,
            "# HELP m Help.\n# TYPE m counter\nm{a=\"x\",b=\"y\"} 3\nm 1.5\n"
        );
    }
}
