//! The `$SYS/broker/...` topics: a task that publishes the broker's state every
//! `server.sys_interval` as retained QoS 0 messages, under the names Mosquitto uses where
//! the meaning matches, so that existing dashboards and `mosquitto_sub -t '$SYS/#'` work.
//!
//! `$SYS` topics are not matched by subscriptions starting with a wildcard
//! [MQTT-4.7.2-1]; clients must subscribe to `$SYS/#` explicitly. Clients cannot publish
//! to them (see `core/engine.rs`).

use crate::core::control::Control;
use crate::metrics::Counters;
use crate::model::Message;
use crate::protocol::QoS;
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a disabled (`sys_interval: 0`) task checks whether it was enabled by a reload.
const DISABLED_POLL: Duration = Duration::from_secs(1);

/// Mosquitto's load averages: exponentially weighted moving averages of a counter's rate
/// per minute over 1, 5 and 15 minutes.
#[derive(Debug, Clone, Default)]
struct Load {
    last: Option<u64>,
    averages: [f64; 3],
}

const WINDOWS: [(f64, &str); 3] = [(60.0, "1min"), (300.0, "5min"), (900.0, "15min")];

impl Load {
    fn update(&mut self, value: u64, elapsed: f64) {
        if let Some(last) = self.last {
            if elapsed > 0.0 {
                let per_minute = value.saturating_sub(last) as f64 * 60.0 / elapsed;
                for (avg, (window, _)) in self.averages.iter_mut().zip(WINDOWS) {
                    let alpha = 1.0 - (-elapsed / window).exp();
                    *avg += alpha * (per_minute - *avg);
                }
            }
        }
        self.last = Some(value);
    }
}

/// Starts the `$SYS` task; it ends when the broker shuts down.
pub(crate) fn spawn(control: Arc<dyn Control>) {
    let stop = control.stopped();
    let mut reloads = control.reloads();
    tokio::spawn(async move {
        let mut loads: [Load; 7] = Default::default();
        let mut last_tick: Option<Instant> = None;
        loop {
            let interval = control.runtime().config.server.sys_interval.get();
            let wait = if interval.is_zero() {
                DISABLED_POLL
            } else {
                interval
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                // A reload may change the interval: start over with the new one.
                r = reloads.changed() => {
                    if r.is_err() {
                        return;
                    }
                    continue;
                }
                _ = tokio::time::sleep(wait) => {}
            }
            if control.runtime().config.server.sys_interval.is_zero() {
                last_tick = None;
                continue;
            }
            let now = Instant::now();
            let elapsed = last_tick.map_or(0.0, |t| now.duration_since(t).as_secs_f64());
            last_tick = Some(now);
            publish_all(control.as_ref(), &mut loads, elapsed);
        }
    });
}

fn publish_all(control: &dyn Control, loads: &mut [Load; 7], elapsed: f64) {
    let c = control.counters();
    let stats = control.stats();
    let dropped = Counters::get(&c.dropped_queue_full)
        + Counters::get(&c.dropped_offline_qos0)
        + Counters::get(&c.ops.limits[crate::metrics::ops::LimitKind::MaxQueuedBytes as usize]);
    let mut topics: Vec<(String, String)> = vec![
        (
            "version".into(),
            format!("mqtt-broker version {}", env!("CARGO_PKG_VERSION")),
        ),
        (
            "uptime".into(),
            format!("{} seconds", control.started().0.elapsed().as_secs()),
        ),
        (
            "clients/connected".into(),
            stats.sessions.connected.to_string(),
        ),
        (
            "clients/disconnected".into(),
            stats
                .sessions
                .total
                .saturating_sub(stats.sessions.connected)
                .to_string(),
        ),
        ("clients/total".into(), stats.sessions.total.to_string()),
        (
            "messages/received".into(),
            stats.messages.received.to_string(),
        ),
        ("messages/sent".into(), stats.messages.sent.to_string()),
        (
            "publish/messages/received".into(),
            stats.messages.received.to_string(),
        ),
        (
            "publish/messages/sent".into(),
            stats.messages.sent.to_string(),
        ),
        ("publish/messages/dropped".into(), dropped.to_string()),
        (
            "messages/inflight".into(),
            (stats.messages.inflight.qos1 + stats.messages.inflight.qos2).to_string(),
        ),
        (
            "messages/stored".into(),
            (stats.messages.retained + stats.messages.queued).to_string(),
        ),
        (
            "retained messages/count".into(),
            stats.messages.retained.to_string(),
        ),
        (
            "subscriptions/count".into(),
            stats.subscriptions.total.to_string(),
        ),
        ("bytes/received".into(), stats.bytes.received.to_string()),
        ("bytes/sent".into(), stats.bytes.sent.to_string()),
    ];
    let sources = [
        ("messages/received", stats.messages.received),
        ("messages/sent", stats.messages.sent),
        ("publish/received", stats.messages.received),
        ("publish/sent", stats.messages.sent),
        ("bytes/received", stats.bytes.received),
        ("bytes/sent", stats.bytes.sent),
        ("connections", Counters::get(&c.connections_accepted)),
    ];
    for (load, (name, value)) in loads.iter_mut().zip(sources) {
        let first = load.last.is_none();
        load.update(value, elapsed);
        if first {
            // No rate yet: Mosquitto, too, publishes loads from the second interval on.
            continue;
        }
        for (avg, (_, window)) in load.averages.iter().zip(WINDOWS) {
            topics.push((format!("load/{name}/{window}"), format!("{avg:.2}")));
        }
    }
    for (suffix, value) in topics {
        let topic = format!("$SYS/broker/{suffix}");
        control.publish(Message::new(
            &topic,
            Bytes::from(value),
            QoS::AtMostOnce,
            true,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_converges_to_the_rate() {
        let mut l = Load::default();
        let mut v = 0;
        l.update(v, 0.0);
        // 100 minutes of ticks: long enough for even the 15-minute average to converge.
        for _ in 0..600 {
            v += 100; // 100 per 10 s = 600 per minute
            l.update(v, 10.0);
        }
        assert!((l.averages[0] - 600.0).abs() < 1.0, "{:?}", l.averages);
        assert!((l.averages[2] - 600.0).abs() < 1.0, "{:?}", l.averages);
    }
}
