//! Sandbox and cache tests for Wasm plugins, driven over real sockets: each hostile test
//! plugin (tests/wasm/*.wat) is contained while other clients keep being served, failures
//! are counted and degrade the plugin, memory stays under its limit, a component built for
//! another interface version is refused, and compiled artifacts are cached.

mod common;

use common::*;
use mqtt_broker::config::{Config, ConfigDuration};
use mqtt_broker::plugins::{
    ArtifactSource, ByteSize, EngineSettings, OnError, OptLevel, PluginConfig, PluginHost,
    PluginStats,
};
use mqtt_broker::protocol::*;
use mqtt_broker::{Broker, BrokerHandle};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Per-call limit used by these tests.
const CALL_LIMIT: Duration = Duration::from_millis(10);
/// Memory limit used by these tests.
const MEMORY_LIMIT: u64 = 8 << 20;
/// Scheduling slack on a busy 2-core machine when asserting how long a contained call took.
const SLACK: Duration = Duration::from_millis(250);

fn wat(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/wasm")
        .join(format!("{name}.wat"))
}

/// A fresh, empty cache directory, so tests do not see each other's artifacts.
fn temp_cache() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "mqtt-broker-plugin-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn hostile_config(name: &str) -> PluginConfig {
    let mut p = PluginConfig::new(name, wat(name));
    p.limits.memory = ByteSize(MEMORY_LIMIT);
    p.limits.call_timeout = ConfigDuration(CALL_LIMIT);
    p.limits.failures_to_degrade = 5;
    p.limits.failure_window = ConfigDuration::secs(60);
    // No probe during the test: once degraded, the plugin stays degraded.
    p.limits.degraded_cooldown = ConfigDuration::secs(600);
    p.cache_dir = Some(temp_cache());
    p
}

fn stats(broker: &BrokerHandle) -> PluginStats {
    broker
        .plugin_stats()
        .into_iter()
        .next()
        .expect("one plugin loaded")
}

/// Publishes `bad/...` at QoS 1 (a call the plugin misbehaves on) and returns how long the
/// broker took to answer with PUBACK: the call was contained and the client still served.
async fn hostile_publish(bad: &mut RawClient, pid: u16) -> Duration {
    let started = Instant::now();
    bad.send(&publish(
        "bad/x",
        b"boom",
        QoS::AtLeastOnce,
        Some(pid),
        false,
    ))
    .await;
    assert_eq!(bad.recv().await, Some(Packet::PubAck(pid)));
    started.elapsed()
}

/// Runs one hostile plugin: failures are contained within the limit while a QoS 2 exchange
/// between two other clients runs alongside; then the plugin degrades and fails closed.
async fn contained(name: &str, expect_failure: impl Fn(&PluginStats)) {
    let broker = start_broker(|c| c.plugins = vec![hostile_config(name)]).await;
    let mut events = broker.events();
    let addr = broker.local_addr();
    let (mut watcher, _) = RawClient::connect(addr, "watcher", true).await;
    assert_eq!(
        watcher.subscribe(1, &[("good/#", QoS::ExactlyOnce)]).await,
        vec![SubAckCode::Granted(QoS::ExactlyOnce)]
    );
    // QoS 2 exchanges through the same plugin (it allows `good/...`) alongside the failures.
    let alongside = tokio::spawn(async move {
        let (mut good, _) = RawClient::connect(addr, "good-pub", true).await;
        for i in 0..20u16 {
            good.publish_qos2("good/reading", format!("r{i}").as_bytes(), 100 + i)
                .await;
            let got = watcher.receive_qos2().await;
            assert_eq!(&*got.topic, "good/reading");
            assert_eq!(&got.payload[..], format!("r{i}").as_bytes());
        }
        watcher
    });
    let (mut bad, _) = RawClient::connect(addr, "bad-pub", true).await;
    for pid in 1..=3 {
        let took = hostile_publish(&mut bad, pid).await;
        assert!(
            took < CALL_LIMIT + SLACK,
            "{name}: a contained call took {took:?}"
        );
    }
    let mut watcher = tokio::time::timeout(Duration::from_secs(30), alongside)
        .await
        .expect("QoS 2 exchanges finish while the plugin misbehaves")
        .expect("QoS 2 task");

    let s = stats(&broker);
    assert_eq!(s.failures, 3, "{name}: {s:?}");
    assert!(!s.degraded, "{name}: degraded too early: {s:?}");
    assert!(s.peak_memory_bytes <= MEMORY_LIMIT, "{name}: memory {s:?}");
    assert!(
        s.slowest_call_us < (CALL_LIMIT + SLACK).as_micros() as u64,
        "{name}: slowest call {s:?}"
    );
    expect_failure(&s);
    // Each failure was announced on the event bus, naming the plugin, hook and client.
    let mut announced = 0;
    while let Ok(event) = events.try_recv() {
        if let mqtt_broker::events::BrokerEvent::PluginError { plugin, error } = event {
            assert_eq!(plugin, name);
            assert!(error.contains("authorize for client bad-pub"), "{error}");
            announced += 1;
        }
    }
    assert_eq!(announced, 3, "{name}: PluginError events");
    // Each failure discarded its instance; replacements were created for later calls.
    assert!(s.instances_created >= 3, "{name}: {s:?}");

    // Two more failures reach failures_to_degrade (5): the plugin is degraded.
    for pid in 4..=5 {
        hostile_publish(&mut bad, pid).await;
    }
    let s = stats(&broker);
    assert!(s.degraded, "{name}: not degraded after 5 failures: {s:?}");

    // Degraded fails closed, even for topics the plugin would allow: nothing is delivered.
    let (mut good, _) = RawClient::connect(addr, "good-pub-2", true).await;
    good.publish_qos2("good/reading", b"after", 200).await;
    watcher.expect_silence(Duration::from_millis(300)).await;
    let s = stats(&broker);
    assert!(s.rejected_degraded >= 1, "{name}: {s:?}");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_is_stopped_at_the_deadline() {
    contained("loop", |s| {
        assert_eq!(s.timeouts, 3, "{s:?}");
        assert!(s.slowest_call_us >= CALL_LIMIT.as_micros() as u64, "{s:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_memory_growth_hits_the_limit() {
    contained("grow", |s| {
        assert_eq!(s.out_of_memory, 3, "{s:?}");
        assert!(
            s.peak_memory_bytes > MEMORY_LIMIT / 2,
            "grew towards the limit: {s:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_fails_closed() {
    contained("trap", |s| assert_eq!(s.traps, 3, "{s:?}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_plugin_within_limits_works() {
    let mut p = hostile_config("slow");
    // The plugin busy-waits about 3 ms; give it room on a loaded machine.
    p.limits.call_timeout = ConfigDuration::millis(50);
    // Every message runs the slow call (no remembered decisions).
    p.cache_decisions = false;
    let broker = start_broker(|c| c.plugins = vec![p]).await;
    let addr = broker.local_addr();
    let (mut sub, _) = RawClient::connect(addr, "sub", true).await;
    assert_eq!(
        sub.subscribe(1, &[("slow/#", QoS::ExactlyOnce)]).await,
        vec![SubAckCode::Granted(QoS::ExactlyOnce)]
    );
    let (mut publisher, _) = RawClient::connect(addr, "pub", true).await;
    for i in 0..5u16 {
        publisher.publish_qos2("slow/t", &[i as u8], 10 + i).await;
        assert_eq!(&sub.receive_qos2().await.payload[..], &[i as u8]);
    }
    let s = stats(&broker);
    assert_eq!(s.failures, 0, "{s:?}");
    assert!(s.calls >= 6, "{s:?}");
    assert!(
        s.slowest_call_us >= 2_000,
        "the plugin really was slow: {s:?}"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn pass_on_error_fails_open() {
    let mut p = hostile_config("trap");
    p.on_error = OnError::Pass;
    let broker = start_broker(|c| c.plugins = vec![p]).await;
    let addr = broker.local_addr();
    let (mut sub, _) = RawClient::connect(addr, "sub", true).await;
    sub.subscribe(1, &[("bad/#", QoS::AtMostOnce)]).await;
    let (mut publisher, _) = RawClient::connect(addr, "pub", true).await;
    publisher
        .send(&publish("bad/x", b"through", QoS::AtMostOnce, None, false))
        .await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"through");
    assert!(stats(&broker).traps >= 1);
    broker.shutdown().await;
}

#[tokio::test]
async fn wrong_interface_version_is_refused_naming_both_versions() {
    let config = Config {
        listeners: vec![BrokerHandle::loopback_listener()],
        plugins: vec![hostile_config("wrong-version")],
        ..Default::default()
    };
    let err = match Broker::start(config).await {
        Ok(_) => panic!("a component built for another interface version was loaded"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("mqtt-broker:plugin@0.3.0"), "{err}");
    assert!(err.contains("mqtt-broker:plugin@0.1.0"), "{err}");
    assert!(err.contains("wrong-version"), "names the plugin: {err}");
}

#[tokio::test]
async fn second_start_reuses_compiled_artifacts() {
    let cache = temp_cache();
    let mut p = PluginConfig::new("allow", wat("allow"));
    p.cache_dir = Some(cache.clone());
    for (round, expected) in [(1, ArtifactSource::Compiled), (2, ArtifactSource::Cache)] {
        let broker = start_broker(|c| c.plugins = vec![p.clone()]).await;
        assert_eq!(stats(&broker).artifact, expected, "start {round}");
        // The plugin works either way.
        let (mut c, _) = RawClient::connect(broker.local_addr(), "c", true).await;
        assert_eq!(
            c.subscribe(1, &[("x", QoS::AtMostOnce)]).await,
            vec![SubAckCode::Granted(QoS::AtMostOnce)]
        );
        broker.shutdown().await;
    }
    let artifacts: Vec<_> = std::fs::read_dir(&cache).expect("cache dir").collect();
    assert_eq!(
        artifacts.len(),
        1,
        "one artifact for one component and engine"
    );
}

#[test]
fn changed_component_or_engine_setting_is_recompiled() {
    let cache = temp_cache();
    let dir = temp_cache();
    std::fs::create_dir_all(&dir).expect("mkdir");
    let component = dir.join("plugin.wat");
    std::fs::copy(wat("allow"), &component).expect("copy");
    let mut p = PluginConfig::new("p", &component);
    p.cache_dir = Some(cache.clone());
    let load =
        |host: &PluginHost| host.load(std::slice::from_ref(&p)).expect("loads").stats()[0].artifact;

    let host = PluginHost::new(EngineSettings::default()).expect("engine");
    assert_eq!(load(&host), ArtifactSource::Compiled);
    assert_eq!(load(&host), ArtifactSource::Cache);
    assert_eq!((host.compiles(), host.cache_hits()), (1, 1));

    // Another engine setting: a different artifact.
    let other = PluginHost::new(EngineSettings {
        opt_level: OptLevel::None,
    })
    .expect("engine");
    assert_eq!(load(&other), ArtifactSource::Compiled);
    assert_eq!(load(&other), ArtifactSource::Cache);

    // A changed component (one more comment byte changes its hash): recompiled.
    let mut text = std::fs::read_to_string(&component).expect("read");
    text.push_str("\n;; changed\n");
    std::fs::write(&component, text).expect("write");
    assert_eq!(load(&host), ArtifactSource::Compiled);
    assert_eq!(std::fs::read_dir(&cache).expect("cache").count(), 3);
}

/// Runs 20 QoS 2 publishes on one topic through the `allow` authorizer and returns how
/// many times the plugin was called.
async fn authorize_calls_for_twenty_publishes(cache_decisions: bool) -> u64 {
    let mut p = hostile_config("allow");
    p.cache_decisions = cache_decisions;
    let broker = start_broker(|c| c.plugins = vec![p]).await;
    let addr = broker.local_addr();
    let (mut sub, _) = RawClient::connect(addr, "sub", true).await;
    assert_eq!(
        sub.subscribe(1, &[("cached/#", QoS::ExactlyOnce)]).await,
        vec![SubAckCode::Granted(QoS::ExactlyOnce)]
    );
    let (mut publisher, _) = RawClient::connect(addr, "pub", true).await;
    for i in 0..20u16 {
        publisher
            .publish_qos2("cached/t", &i.to_be_bytes(), 1 + i)
            .await;
        assert_eq!(&sub.receive_qos2().await.payload[..], &i.to_be_bytes());
    }
    let calls = stats(&broker).calls;
    broker.shutdown().await;
    calls
}

/// ACL decisions are remembered per connection and topic: the plugin is asked once for the
/// SUBSCRIBE, once for the first PUBLISH and once for the first delivery, not per message;
/// with `cache_decisions: false` it is asked every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_decisions_are_cached_per_connection_and_topic() {
    assert_eq!(authorize_calls_for_twenty_publishes(true).await, 3);
    assert_eq!(
        authorize_calls_for_twenty_publishes(false).await,
        1 + 2 * 20
    );
}

/// A degraded plugin is probed again after its cooldown: one successful call ends the
/// degradation, and messages flow through it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degraded_plugin_recovers_after_a_successful_probe() {
    let mut p = hostile_config("trap");
    p.limits.degraded_cooldown = ConfigDuration::millis(200);
    let broker = start_broker(|c| c.plugins = vec![p]).await;
    let addr = broker.local_addr();
    let (mut bad, _) = RawClient::connect(addr, "bad-pub", true).await;
    for pid in 1..=5 {
        hostile_publish(&mut bad, pid).await;
    }
    assert!(stats(&broker).degraded, "{:?}", stats(&broker));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The next call is the probe; `good/...` is a topic the plugin answers normally.
    let (mut watcher, _) = RawClient::connect(addr, "watcher", true).await;
    assert_eq!(
        watcher.subscribe(1, &[("good/#", QoS::ExactlyOnce)]).await,
        vec![SubAckCode::Granted(QoS::ExactlyOnce)]
    );
    assert!(!stats(&broker).degraded, "{:?}", stats(&broker));
    let (mut good, _) = RawClient::connect(addr, "good-pub", true).await;
    good.publish_qos2("good/reading", b"back", 7).await;
    assert_eq!(&watcher.receive_qos2().await.payload[..], b"back");
    broker.shutdown().await;
}

/// `topics:` limits which topics reach a plugin: the trapping plugin, told to look only at
/// `good/#`, is never called for `bad/...`, so those messages flow without a failure; an
/// invalid filter is refused at load with its index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_limit_which_messages_reach_a_plugin() {
    let mut p = hostile_config("trap");
    p.topics = vec!["good/#".into()];
    let broker = start_broker(|c| c.plugins = vec![p]).await;
    let addr = broker.local_addr();
    let (mut sub, _) = RawClient::connect(addr, "sub", true).await;
    assert_eq!(
        sub.subscribe(1, &[("#", QoS::ExactlyOnce)]).await,
        vec![SubAckCode::Granted(QoS::ExactlyOnce)]
    );
    let calls_before = stats(&broker).calls;
    let (mut publisher, _) = RawClient::connect(addr, "pub", true).await;
    publisher.publish_qos2("bad/ignored", b"passes", 1).await;
    assert_eq!(&sub.receive_qos2().await.payload[..], b"passes");
    publisher.publish_qos2("good/seen", b"checked", 2).await;
    assert_eq!(&sub.receive_qos2().await.payload[..], b"checked");
    let s = stats(&broker);
    assert_eq!(s.failures, 0, "{s:?}");
    // good/seen: publish and deliver were asked; bad/ignored: nothing.
    assert_eq!(s.calls - calls_before, 2, "{s:?}");
    broker.shutdown().await;

    let mut bad = hostile_config("trap");
    bad.topics = vec!["a/#/b".into()];
    let config = Config {
        listeners: vec![BrokerHandle::loopback_listener()],
        plugins: vec![bad],
        ..Default::default()
    };
    let err = Broker::start(config)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("topics[0]") && err.contains("a/#/b"), "{err}");
}
