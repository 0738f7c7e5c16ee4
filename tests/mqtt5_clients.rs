//! MQTT 5 with real clients over real loopback sockets: Mosquitto's command-line clients
//! (`-V mqttv5`, Debian `mosquitto-clients`), rumqttc's v5 client, Python paho-mqtt 2.x
//! (`tests/py/*.py`) and MQTT.js with `protocolVersion: 5` (`tests/js/mqtt5.mjs`). `.ci/run`
//! installs all of them. Each test starts its own broker on a free port and bounds every
//! wait.

mod common;

use common::*;
use mqtt_broker::BrokerHandle;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnectProperties, ConnectReturnCode, Packet, PubAckReason, Publish,
    PublishProperties, SubscribeProperties, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use std::collections::{BTreeSet, VecDeque};
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// How long one client process may run.
const PROCESS_LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Child processes

/// Fails with an install hint when `tool` is not on PATH.
fn require(tool: &str, hint: &str) {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(found, "{tool} is required ({hint}; .ci/run installs it)");
}

/// Runs a command to completion within `limit` (killed if it takes longer).
async fn run_bounded(mut cmd: Command, limit: Duration, what: &str) -> Output {
    cmd.kill_on_drop(true);
    tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"))
}

/// Waits for a spawned child (stdout and stderr piped) within [`PROCESS_LIMIT`].
async fn finish(child: Child, what: &str) -> Output {
    tokio::time::timeout(PROCESS_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {PROCESS_LIMIT:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `mosquitto_pub` or `mosquitto_sub` aimed at the broker.
fn mosquitto(tool: &str, broker: &BrokerHandle) -> Command {
    let mut cmd = Command::new(tool);
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &broker.local_addr().port().to_string(),
    ])
    .stdin(Stdio::null())
    .kill_on_drop(true);
    cmd
}

/// Starts `mosquitto_sub` with `args` (split at spaces; it should exit by itself: `-C` and
/// `-W`) and returns once the broker counts `subscriptions` (non-shared) subscriptions in
/// total.
async fn mosquitto_sub(broker: &BrokerHandle, args: &str, subscriptions: u64) -> Child {
    require("mosquitto_sub", "apt-get install mosquitto-clients");
    let child = mosquitto("mosquitto_sub", broker)
        .args(args.split_whitespace())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mosquitto_sub");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let total = broker.stats().subscriptions.total;
        if total >= subscriptions {
            return child;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{total} subscriptions after {WAIT:?}, expected {subscriptions} (mosquitto_sub {args})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `mosquitto_pub` with `args` (split at spaces) to completion; returns its stdout
/// (the `-d` trace).
async fn mosquitto_pub(broker: &BrokerHandle, args: &str) -> String {
    require("mosquitto_pub", "apt-get install mosquitto-clients");
    let mut cmd = mosquitto("mosquitto_pub", broker);
    cmd.args(args.split_whitespace());
    let out = run_bounded(cmd, PROCESS_LIMIT, "mosquitto_pub").await;
    assert!(
        out.status.success(),
        "mosquitto_pub {args} failed ({}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The one line a `mosquitto_sub -C 1` printed, asserting it exited cleanly.
async fn one_line(sub: Child, what: &str) -> String {
    let out = finish(sub, what).await;
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "{what} failed ({}): stdout {stdout:?}, stderr {:?}",
        out.status,
        text(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{what} printed {stdout:?}");
    lines[0].to_owned()
}

// ---------------------------------------------------------------------------------------
// mosquitto_pub / mosquitto_sub -V mqttv5

/// A v5 PUBLISH with user properties (a repeated key included), content type, response
/// topic, correlation data and message expiry reaches a v5 `mosquitto_sub` with all of them
/// (expiry counted down, [MQTT-3.3.2-6]), and a 3.1.1 `mosquitto_sub` as a plain message
/// (3.1.1 has no properties). The publisher's PUBACK is 0x00: there were subscribers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v5_publish_properties_reach_v5_and_311_subscribers() {
    let broker = start_broker(|_| {}).await;
    let v5 = mosquitto_sub(
        &broker,
        "-V mqttv5 -q 1 -t m5/props/# -C 1 -W 20 -F %t|%p|%P|%C|%R|%D|%E|%q",
        1,
    )
    .await;
    let v311 = mosquitto_sub(&broker, "-q 1 -t m5/props/# -C 1 -W 20 -v", 2).await;
    let debug = mosquitto_pub(
        &broker,
        "-V mqttv5 -d -q 1 -t m5/props/x -m hello \
         -D publish user-property k v \
         -D publish user-property k2 v2 \
         -D publish user-property k again \
         -D publish content-type text/plain \
         -D publish response-topic r/t \
         -D publish correlation-data corr-42 \
         -D publish message-expiry-interval 60",
    )
    .await;
    assert!(debug.contains("received PUBACK (Mid: 1, RC:0)"), "{debug}");

    let line = one_line(v5, "mosquitto_sub -V mqttv5").await;
    let fields: Vec<&str> = line.split('|').collect();
    assert_eq!(
        fields[..6],
        [
            "m5/props/x",
            "hello",
            "k:v k2:v2 k:again",
            "text/plain",
            "r/t",
            "corr-42"
        ],
        "{line}"
    );
    let expiry: u32 = fields[6]
        .parse()
        .unwrap_or_else(|_| panic!("expiry in {line}"));
    assert!(
        (58..=60).contains(&expiry),
        "message expiry {expiry} in {line}"
    );
    assert_eq!(fields[7], "1", "QoS in {line}");

    assert_eq!(
        one_line(v311, "mosquitto_sub (3.1.1)").await,
        "m5/props/x hello"
    );
}

/// A 3.1.1 PUBLISH reaches a v5 `mosquitto_sub` live, and its retained copy reaches a v5
/// subscriber that comes later, without properties the publisher never set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_311_publish_reaches_v5_subscriber() {
    let broker = start_broker(|_| {}).await;
    let sub = "-V mqttv5 -q 1 -t m5/old/# -C 1 -W 20 -F %t|%p|%q|%r|[%P%C%R%D%E]";
    let live = mosquitto_sub(&broker, sub, 1).await;
    mosquitto_pub(&broker, "-V mqttv311 -q 1 -r -t m5/old/x -m from-3.1.1").await;
    // A live subscriber gets RETAIN 0 (no Retain As Published) [MQTT-3.3.1-12].
    assert_eq!(
        one_line(live, "mosquitto_sub -V mqttv5 (live)").await,
        "m5/old/x|from-3.1.1|1|0|[]"
    );
    let later = mosquitto_sub(&broker, sub, 0).await;
    assert_eq!(
        one_line(later, "mosquitto_sub -V mqttv5 (retained)").await,
        "m5/old/x|from-3.1.1|1|1|[]"
    );
}

/// `-D subscribe subscription-identifier 7`: the PUBLISH carries identifier 7 (shown by
/// `%S`) [MQTT-3.3.4-3]; a subscription without one gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v5_subscription_identifier() {
    let broker = start_broker(|_| {}).await;
    let with_id = mosquitto_sub(
        &broker,
        "-V mqttv5 -t m5/sid/# -C 1 -W 20 -F %t|%S|%p -D subscribe subscription-identifier 7",
        1,
    )
    .await;
    let without = mosquitto_sub(&broker, "-V mqttv5 -t m5/sid/# -C 1 -W 20 -F %t|%S|%p", 2).await;
    mosquitto_pub(&broker, "-V mqttv5 -t m5/sid/a -m x").await;
    assert_eq!(
        one_line(with_id, "mosquitto_sub with id 7").await,
        "m5/sid/a|7|x"
    );
    assert_eq!(
        one_line(without, "mosquitto_sub without id").await,
        "m5/sid/a||x"
    );
}

/// A v5 QoS 1 PUBLISH nobody subscribed to is acknowledged with reason code 0x10 (No
/// matching subscribers, 3.4.2.1), which `mosquitto_pub -d` prints as `RC:16`; a 3.1.1
/// publisher's PUBACK has no reason code (printed `RC:0`). QoS 2: PUBREC, then PUBCOMP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v5_puback_no_matching_subscribers() {
    let broker = start_broker(|_| {}).await;
    let v5 = mosquitto_pub(&broker, "-V mqttv5 -d -q 1 -t m5/nobody -m x").await;
    assert!(v5.contains("received PUBACK (Mid: 1, RC:16)"), "{v5}");
    let v311 = mosquitto_pub(&broker, "-d -q 1 -t m5/nobody -m x").await;
    assert!(v311.contains("received PUBACK (Mid: 1, RC:0)"), "{v311}");
    let qos2 = mosquitto_pub(&broker, "-V mqttv5 -d -q 2 -t m5/nobody -m x").await;
    assert!(
        qos2.contains("received PUBREC (Mid: 1)") && qos2.contains("received PUBCOMP (Mid: 1"),
        "{qos2}"
    );
}

// ---------------------------------------------------------------------------------------
// rumqttc v5

/// A rumqttc v5 client whose event loop runs in a task; incoming packets are queued.
struct Rs5 {
    client: AsyncClient,
    incoming: mpsc::UnboundedReceiver<Packet>,
    /// Received packets not yet asked for.
    backlog: VecDeque<Packet>,
    events: tokio::task::JoinHandle<()>,
}

impl Rs5 {
    /// Connects and returns the client and its CONNACK (asserted successful).
    async fn connect(
        broker: &BrokerHandle,
        id: &str,
        adjust: impl FnOnce(&mut MqttOptions),
    ) -> (Rs5, ConnAck) {
        let mut options = MqttOptions::new(id, "127.0.0.1", broker.local_addr().port());
        options.set_keep_alive(Duration::from_secs(30));
        adjust(&mut options);
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let (tx, incoming) = mpsc::unbounded_channel();
        // The loop ends at the first error (no reconnection): the queue then closes.
        let events = tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                if let Event::Incoming(p) = event {
                    if tx.send(p).is_err() {
                        return;
                    }
                }
            }
        });
        let mut c = Rs5 {
            client,
            incoming,
            backlog: VecDeque::new(),
            events,
        };
        let ack = c
            .recv(|p| match p {
                Packet::ConnAck(a) => Some(a.clone()),
                _ => None,
            })
            .await;
        assert_eq!(ack.code, ConnectReturnCode::Success, "{id}: {ack:?}");
        (c, ack)
    }

    /// The first incoming packet `pick` accepts; packets it declines stay queued, in order,
    /// for later calls. `None` when nothing acceptable arrives within `d` or the connection
    /// ended.
    async fn recv_within<T>(
        &mut self,
        d: Duration,
        mut pick: impl FnMut(&Packet) -> Option<T>,
    ) -> Option<T> {
        if let Some(i) = self.backlog.iter().position(|p| pick(p).is_some()) {
            return pick(&self.backlog.remove(i).unwrap());
        }
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.incoming.recv()).await {
                Err(_) | Ok(None) => return None,
                Ok(Some(p)) => match pick(&p) {
                    Some(t) => return Some(t),
                    None => self.backlog.push_back(p),
                },
            }
        }
    }

    /// Like [`Rs5::recv_within`] with [`WAIT`], panicking when nothing acceptable arrives.
    async fn recv<T>(&mut self, pick: impl FnMut(&Packet) -> Option<T>) -> T {
        self.recv_within(WAIT, pick)
            .await
            .expect("expected packet did not arrive (or the connection ended)")
    }

    /// The next PUBLISH, or `None` if none arrives within `d`.
    async fn publish_within(&mut self, d: Duration) -> Option<Publish> {
        self.recv_within(d, |p| match p {
            Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    async fn next_publish(&mut self) -> Publish {
        self.publish_within(WAIT)
            .await
            .expect("a PUBLISH within the wait")
    }

    /// Subscribes (with a subscription identifier when `id` is set) and asserts the grant.
    async fn subscribe(&mut self, filter: &str, qos: QoS, id: Option<usize>) {
        let props = SubscribeProperties {
            id,
            user_properties: Vec::new(),
        };
        self.client
            .subscribe_with_properties(filter, qos, props)
            .await
            .unwrap();
        let codes = self
            .recv(|p| match p {
                Packet::SubAck(s) => Some(s.return_codes.clone()),
                _ => None,
            })
            .await;
        assert_eq!(codes, vec![SubscribeReasonCode::Success(qos)], "{filter}");
    }

    /// Publishes at QoS 1 and returns the PUBACK reason.
    async fn publish(
        &mut self,
        topic: &str,
        payload: &str,
        props: PublishProperties,
    ) -> PubAckReason {
        self.client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, payload.to_owned(), props)
            .await
            .unwrap();
        self.recv(|p| match p {
            Packet::PubAck(a) => Some(a.reason),
            _ => None,
        })
        .await
    }

    /// Sends DISCONNECT and waits for the event loop to end.
    async fn disconnect(self) {
        self.client.disconnect().await.unwrap();
        tokio::time::timeout(WAIT, self.events)
            .await
            .expect("event loop ends after DISCONNECT")
            .unwrap();
    }
}

fn topic(p: &Publish) -> String {
    text(&p.topic)
}

/// rumqttc v5: CONNACK announces the configured limits; a subscription identifier comes
/// back on every PUBLISH it caused; overlapping subscriptions deliver either one copy with
/// every identifier [MQTT-3.3.4-4] or one copy per subscription with its own
/// [MQTT-3.3.4-5]; user properties arrive unchanged and in order [MQTT-3.3.2-17/18], with
/// the content type, payload format and the message expiry (counted down, [MQTT-3.3.2-6]).
#[tokio::test]
async fn rumqttc_v5_subscription_identifiers_user_properties_and_expiry() {
    let broker = start_broker(|c| {
        c.mqtt5.topic_alias_maximum = 12;
        c.mqtt5.receive_maximum = 200;
    })
    .await;
    let (mut sub, connack) = Rs5::connect(&broker, "rs5-sub", |_| {}).await;
    let props = connack.properties.expect("CONNACK properties");
    assert_eq!(props.topic_alias_max, Some(12));
    assert_eq!(props.receive_max, Some(200));
    sub.subscribe("rs5/data/#", QoS::AtLeastOnce, Some(42))
        .await;
    sub.subscribe("rs5/data/+/temp", QoS::AtLeastOnce, Some(43))
        .await;

    let (mut publisher, _) = Rs5::connect(&broker, "rs5-pub", |_| {}).await;
    let user_properties: Vec<(String, String)> = [("z", "1"), ("a", "2"), ("z", "3"), ("m", "")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let reason = publisher
        .publish(
            "rs5/data/a/temp",
            "21.5",
            PublishProperties {
                user_properties: user_properties.clone(),
                message_expiry_interval: Some(120),
                content_type: Some("text/plain".into()),
                payload_format_indicator: Some(1),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(reason, PubAckReason::Success);

    // One copy with both identifiers, or two copies with one each.
    let mut ids = Vec::new();
    while ids.len() < 2 {
        let p = sub.next_publish().await;
        assert_eq!(
            (topic(&p), &p.payload[..]),
            ("rs5/data/a/temp".into(), &b"21.5"[..])
        );
        assert_eq!(p.qos, QoS::AtLeastOnce);
        let props = p.properties.expect("PUBLISH properties");
        assert_eq!(props.user_properties, user_properties);
        assert_eq!(props.content_type.as_deref(), Some("text/plain"));
        assert_eq!(props.payload_format_indicator, Some(1));
        let expiry = props.message_expiry_interval.expect("message expiry");
        assert!((118..=120).contains(&expiry), "expiry {expiry}");
        assert!(!props.subscription_identifiers.is_empty(), "no identifier");
        ids.extend(props.subscription_identifiers);
    }
    ids.sort_unstable();
    assert_eq!(ids, vec![42, 43]);
    assert!(
        sub.publish_within(Duration::from_millis(300))
            .await
            .is_none(),
        "more copies than subscriptions"
    );

    // Only the `#` subscription matches: identifier 42 alone; no expiry set, none sent.
    let reason = publisher
        .publish("rs5/data/b/humidity", "40", PublishProperties::default())
        .await;
    assert_eq!(reason, PubAckReason::Success);
    let p = sub.next_publish().await;
    assert_eq!(topic(&p), "rs5/data/b/humidity");
    let props = p.properties.expect("PUBLISH properties");
    assert_eq!(props.subscription_identifiers, vec![42]);
    assert_eq!(props.message_expiry_interval, None);
    assert!(props.user_properties.is_empty());

    // Nobody subscribed: 0x10.
    let reason = publisher
        .publish("rs5/nobody", "x", PublishProperties::default())
        .await;
    assert_eq!(reason, PubAckReason::NoMatchingSubscribers);
    sub.disconnect().await;
    publisher.disconnect().await;
}

/// rumqttc v5, a session that outlives its connection (Session Expiry Interval 300): a
/// message whose expiry passes while the subscriber is away is never delivered
/// [MQTT-3.3.2-5]; one with time left arrives with its expiry counted down [MQTT-3.3.2-6];
/// one without expiry arrives without it.
#[tokio::test]
async fn rumqttc_v5_offline_message_expiry() {
    let broker = start_broker(|_| {}).await;
    let keeper = |o: &mut MqttOptions| {
        o.set_clean_start(false);
        o.set_connect_properties(ConnectProperties {
            session_expiry_interval: Some(300),
            ..ConnectProperties::new()
        });
    };
    let (mut sub, connack) = Rs5::connect(&broker, "rs5-keeper", keeper).await;
    assert!(!connack.session_present);
    sub.subscribe("rs5/expiry/#", QoS::AtLeastOnce, None).await;
    sub.disconnect().await;

    let (mut publisher, _) = Rs5::connect(&broker, "rs5-expiry-pub", |_| {}).await;
    for (payload, expiry) in [("short", Some(1)), ("long", Some(100)), ("forever", None)] {
        let props = PublishProperties {
            message_expiry_interval: expiry,
            ..Default::default()
        };
        let reason = publisher.publish("rs5/expiry/x", payload, props).await;
        assert_eq!(
            reason,
            PubAckReason::Success,
            "{payload}: queued for the session"
        );
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let (mut sub, connack) = Rs5::connect(&broker, "rs5-keeper", keeper).await;
    assert!(connack.session_present);
    let mut got = Vec::new();
    while let Some(p) = sub.publish_within(Duration::from_secs(1)).await {
        let expiry = p.properties.and_then(|pr| pr.message_expiry_interval);
        got.push((text(&p.payload), expiry));
    }
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].0, "long", "{got:?}");
    let left = got[0].1.expect("expiry of `long`");
    assert!(
        (95..=98).contains(&left),
        "expiry of `long` after 2.5 s: {left}"
    );
    assert_eq!(got[1], ("forever".to_string(), None));
    sub.disconnect().await;
    publisher.disconnect().await;
}

/// rumqttc v5, a client that announces Receive Maximum 5 and Maximum Packet Size 200 and
/// acknowledges by hand: the broker never has more than 5 QoS 1 PUBLISHes unacknowledged
/// towards it [MQTT-3.3.4-9] (each PUBACK lets one more through, in order), and a message
/// too large for it is discarded, not sent [MQTT-3.1.2-24, MQTT-3.1.2-25].
#[tokio::test]
async fn rumqttc_v5_receive_maximum_and_maximum_packet_size() {
    let broker = start_broker(|_| {}).await;
    let (mut sub, _) = Rs5::connect(&broker, "rs5-slow", |o| {
        o.set_manual_acks(true);
        o.set_receive_maximum(Some(5));
        o.set_max_packet_size(Some(200));
    })
    .await;
    sub.subscribe("rs5/flow/#", QoS::AtLeastOnce, None).await;
    let (publisher, _) = Rs5::connect(&broker, "rs5-flow-pub", |_| {}).await;
    publisher
        .client
        .publish("rs5/flow/big", QoS::AtLeastOnce, false, vec![b'x'; 500])
        .await
        .unwrap();
    for i in 0..20 {
        publisher
            .client
            .publish("rs5/flow/n", QoS::AtLeastOnce, false, i.to_string())
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    while let Some(p) = sub.publish_within(Duration::from_millis(700)).await {
        got.push(p);
    }
    let payloads = |ps: &[Publish]| ps.iter().map(|p| text(&p.payload)).collect::<Vec<_>>();
    assert_eq!(payloads(&got), ["0", "1", "2", "3", "4"]);
    for p in &got[..3] {
        sub.client.ack(p).await.unwrap();
    }
    let mut more = Vec::new();
    while let Some(p) = sub.publish_within(Duration::from_millis(700)).await {
        more.push(p);
    }
    assert_eq!(payloads(&more), ["5", "6", "7"]);
    // Acknowledging everything lets the rest through; the large one never comes.
    for p in got[3..].iter().chain(&more) {
        sub.client.ack(p).await.unwrap();
    }
    let mut rest = Vec::new();
    while rest.len() < 12 {
        let p = sub.next_publish().await;
        sub.client.ack(&p).await.unwrap();
        rest.push(p);
    }
    let expected: Vec<String> = (8..20).map(|i| i.to_string()).collect();
    assert_eq!(payloads(&rest), expected);
    assert!(sub
        .publish_within(Duration::from_millis(300))
        .await
        .is_none());
    sub.disconnect().await;
    publisher.disconnect().await;
}

/// rumqttc v5 request/response: the requester asks for Response Information and builds its
/// reply topic from it (4.10.1), sends Response Topic and Correlation Data; the responder
/// answers on that topic with the same correlation data [MQTT-3.3.2-15/16], and each reply
/// is matched to its request.
#[tokio::test]
async fn rumqttc_v5_request_response() {
    let broker = start_broker(|c| c.mqtt5.response_information = "rs5/rpc/replies/".into()).await;
    let (mut responder, connack) = Rs5::connect(&broker, "rs5-responder", |_| {}).await;
    // Only a client that asks gets Response Information [MQTT-3.1.2-28].
    assert_eq!(
        connack.properties.and_then(|p| p.response_information),
        None
    );
    responder
        .subscribe("rs5/rpc/square", QoS::AtLeastOnce, None)
        .await;
    let serving = tokio::spawn(async move {
        for _ in 0..3 {
            let request = responder.next_publish().await;
            let props = request.properties.expect("request properties");
            let n: u64 = text(&request.payload).parse().unwrap();
            let reply = PublishProperties {
                correlation_data: props.correlation_data.clone(),
                user_properties: vec![("served-by".into(), "rs5-responder".into())],
                ..Default::default()
            };
            let to = props.response_topic.expect("response topic");
            responder
                .client
                .publish_with_properties(to, QoS::AtLeastOnce, false, (n * n).to_string(), reply)
                .await
                .unwrap();
        }
        responder
    });

    let (mut requester, connack) = Rs5::connect(&broker, "rs5-requester", |o| {
        o.set_request_response_info(Some(1));
    })
    .await;
    let info = connack
        .properties
        .and_then(|p| p.response_information)
        .expect("Response Information in CONNACK");
    assert_eq!(info, "rs5/rpc/replies/");
    let reply_topic = format!("{info}rs5-requester");
    requester
        .subscribe(&reply_topic, QoS::AtLeastOnce, None)
        .await;
    for n in [3u64, 7, 12] {
        let props = PublishProperties {
            response_topic: Some(reply_topic.clone()),
            correlation_data: Some(format!("req-{n}").into_bytes().into()),
            ..Default::default()
        };
        let reason = requester
            .publish("rs5/rpc/square", &n.to_string(), props)
            .await;
        assert_eq!(reason, PubAckReason::Success);
    }
    let mut replies = BTreeSet::new();
    for _ in 0..3 {
        let reply = requester.next_publish().await;
        assert_eq!(topic(&reply), reply_topic);
        let props = reply.properties.expect("reply properties");
        let correlation = text(&props.correlation_data.expect("correlation data"));
        assert_eq!(
            props.user_properties,
            vec![("served-by".to_string(), "rs5-responder".to_string())]
        );
        replies.insert((correlation, text(&reply.payload)));
    }
    let expected: BTreeSet<(String, String)> = [(3, 9), (7, 49), (12, 144)]
        .iter()
        .map(|(n, sq)| (format!("req-{n}"), sq.to_string()))
        .collect();
    assert_eq!(replies, expected);
    let responder = tokio::time::timeout(WAIT, serving).await.unwrap().unwrap();
    responder.disconnect().await;
    requester.disconnect().await;
}

// ---------------------------------------------------------------------------------------
// Python paho-mqtt 2.x (tests/py)

const PY_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py");

/// Runs `tests/py/SCRIPT HOST PORT`; asserts success and returns its JSON result (the last
/// line of stdout).
async fn run_python(broker: &BrokerHandle, script: &str) -> serde_json::Value {
    let paho = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, paho.mqtt; sys.exit(int(paho.mqtt.__version__.split('.')[0]) < 2)",
        ])
        .output();
    assert!(
        paho.is_ok_and(|o| o.status.success()),
        "paho-mqtt 2.x is required: python3 -m pip install --user 'paho-mqtt>=2,<3' (.ci/run does this)"
    );
    let mut cmd = Command::new("python3");
    cmd.arg(format!("{PY_DIR}/{script}"))
        .arg("127.0.0.1")
        .arg(broker.local_addr().port().to_string());
    let out = run_bounded(cmd, PROCESS_LIMIT, script).await;
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{stdout}\n{}",
        out.status,
        text(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    let result: serde_json::Value =
        serde_json::from_str(last).unwrap_or_else(|e| panic!("{script}: {e} in {stdout}"));
    assert_eq!(result["ok"], true, "{result}");
    result
}

/// paho-mqtt: a responder and a requester; Response Topic, Correlation Data and User
/// Properties (order and repeated keys kept) make the round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_v5_request_response() {
    let broker = start_broker(|_| {}).await;
    let result = run_python(&broker, "mqtt5_request_response.py").await;
    let exchanges = result["exchanges"].as_array().expect("exchanges");
    assert_eq!(exchanges.len(), 3, "{result}");
    for e in exchanges {
        let n = e["correlation"]
            .as_str()
            .unwrap()
            .trim_start_matches("req-");
        assert_eq!(e["payload"], format!("PING {n}"), "{e}");
        assert_eq!(
            e["user_properties"],
            serde_json::json!([
                ["trace", format!("t{n}")],
                ["unit", "celsius"],
                ["trace", "again"],
                ["served-by", "responder"]
            ]),
            "{e}"
        );
    }
}

/// paho-mqtt: three members of `$share/workers/jobs/#` under QoS 1. 300 jobs: each to
/// exactly one member, every member some (section 4.8.2). Then one member stops
/// acknowledging and disconnects mid-stream: the jobs it had not acknowledged go to the
/// others, none is lost (4.8.2: "the Server SHOULD send the Application Message to another
/// Client that is subscribed to the same Shared Subscription").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_v5_shared_subscription_exactly_one_member_and_no_loss() {
    let broker = start_broker(|_| {}).await;
    let result = run_python(&broker, "mqtt5_shared.py").await;
    let round1 = &result["round1"];
    assert_eq!(round1["duplicates"], 0, "{result}");
    let per_worker = round1["per_worker"].as_object().expect("per_worker");
    assert_eq!(per_worker.len(), 3, "{result}");
    let total: u64 = per_worker.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(total, 300, "{result}");
    let round2 = &result["round2"];
    let held = round2["unacknowledged_by_w3"].as_u64().unwrap();
    assert!(held > 0, "w3 held nothing when it left: {result}");
    assert_eq!(round2["redelivered"].as_u64(), Some(held), "{result}");
    // Redelivery may duplicate (at least once), but at most the jobs w3 held.
    assert!(round2["duplicates"].as_u64().unwrap() <= held, "{result}");
}

// ---------------------------------------------------------------------------------------
// MQTT.js (tests/js/mqtt5.mjs)

const JS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js");

/// MQTT.js with `protocolVersion: 5` over mqtt://: CONNACK's Topic Alias Maximum and
/// Receive Maximum are the configured ones; a topic alias set by one PUBLISH resolves an
/// empty-topic PUBLISH; user properties, subscription identifier, PUBACK 0x10 / 0x00; a
/// shared subscription delivers each message to exactly one member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_js_v5_scenario() {
    require("node", "apt-get install nodejs");
    assert!(
        std::path::Path::new(JS_DIR)
            .join("node_modules/mqtt")
            .exists(),
        "MQTT.js is not installed: run `cd tests/js && npm ci` (.ci/run does this)"
    );
    let broker = start_broker(|c| {
        c.mqtt5.topic_alias_maximum = 10;
        c.mqtt5.receive_maximum = 100;
    })
    .await;
    let url = format!("mqtt://{}", broker.local_addr());
    let mut node = Command::new("node");
    node.arg(format!("{JS_DIR}/mqtt5.mjs"))
        .args([&url, "10", "100"]);
    let out = run_bounded(node, PROCESS_LIMIT, "node mqtt5.mjs").await;
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "MQTT.js v5 scenario failed ({}):\n{stdout}\n{}",
        out.status,
        text(&out.stderr)
    );
    for step in [
        "ok CONNACK topicAliasMaximum=10 receiveMaximum=100",
        "ok topic alias resolved for the subscriber",
        "ok user properties delivered in order with repeated keys",
        "ok subscription identifier 5 on every message",
        "ok PUBACK 0x10 without subscribers, 0x00 with one",
        "ok shared subscription",
    ] {
        assert!(stdout.contains(step), "missing `{step}` in\n{stdout}");
    }
    assert!(stdout.contains(&format!("mqtt5 passed {url}")), "{stdout}");
}

/// SCRAM-SHA-512 enhanced authentication with MQTT.js, the SCRAM client computed with
/// Node's crypto (`tests/js/mqtt5_scram.mjs`): the right password connects and the broker's
/// server signature checks out; a wrong one gets CONNACK 0x86.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_js_v5_scram_sha_512() {
    require("node", "apt-get install nodejs");
    let hash = mqtt_broker::auth::hash_password_with_salt(b"pa55word", b"salt-for-js!", 4096);
    let broker = start_broker(|c| {
        c.security.users = vec![mqtt_broker::config::UserConfig {
            username: "sensor-7".into(),
            password_hash: hash,
        }];
        c.security.auth_methods = vec!["SCRAM-SHA-512".into()];
        c.security.auth_failure_delay = mqtt_broker::config::ConfigDuration::millis(0);
    })
    .await;
    let url = format!("mqtt://{}", broker.local_addr());
    for (password, want) in [
        ("pa55word", "scram ok sensor-7"),
        ("nope", "scram refused 134"),
    ] {
        let mut node = Command::new("node");
        node.arg(format!("{JS_DIR}/mqtt5_scram.mjs"))
            .args([&url, "sensor-7", password]);
        let out = run_bounded(node, PROCESS_LIMIT, "node mqtt5_scram.mjs").await;
        let stdout = text(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(want),
            "expected `{want}` ({}):\n{stdout}\n{}",
            out.status,
            text(&out.stderr)
        );
    }
}

/// Enhanced authentication served by a Wasm plugin (plugin API 0.2 `enhanced-auth`, the
/// `TEST-CHALLENGE` method of plugins/noop/test_auth.c) with MQTT.js
/// (`tests/js/mqtt5_plugin_auth.mjs`): the right answer connects with the plugin's server
/// data in CONNACK; a wrong one gets CONNACK 0x86 (section 4.12).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_js_v5_enhanced_auth_served_by_a_plugin() {
    require("node", "apt-get install nodejs");
    let plugin = built_plugin("plugins/noop/challenge-auth.wasm");
    let broker = start_broker(|c| {
        c.plugins = vec![mqtt_broker::plugins::PluginConfig::new("challenge", plugin)
            .with("secret", "js-secret")];
        c.security.auth_failure_delay = mqtt_broker::config::ConfigDuration::millis(0);
    })
    .await;
    let url = format!("mqtt://{}", broker.local_addr());
    for (secret, want) in [
        ("js-secret", "plugin auth ok welcome carol"),
        ("wrong", "plugin auth refused 134"),
    ] {
        let mut node = Command::new("node");
        node.arg(format!("{JS_DIR}/mqtt5_plugin_auth.mjs"))
            .args([&url, "carol", secret]);
        let out = run_bounded(node, PROCESS_LIMIT, "node mqtt5_plugin_auth.mjs").await;
        let stdout = text(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(want),
            "expected `{want}` ({}):\n{stdout}\n{}",
            out.status,
            text(&out.stderr)
        );
    }
}
