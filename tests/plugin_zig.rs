//! The Zig example plugin (`plugins/zig-auth`, plugin API 0.2, world `authenticator`, built
//! by `bash plugins/zig-auth/build.sh`) loaded by a real broker, with Mosquitto's
//! command-line clients (`mosquitto_pub` / `mosquitto_sub`, Debian `mosquitto-clients`) as
//! real client processes: a good token connects and exchanges a message, a wrong token, an
//! unknown user and a missing user name are refused with the CONNACK code the client
//! reports, a config the plugin's `init` rejects refuses loading with its message, and
//! thousands of calls leave the plugin's memory as it was (it frees what the host hands it).

mod common;

use common::clients::mosquitto;
use common::*;
use mqtt_broker::config::Config;
use mqtt_broker::plugins::PluginConfig;
use mqtt_broker::{Broker, BrokerHandle};
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::process::{Child, Command};

/// How long one client process may run.
const PROCESS_LIMIT: Duration = Duration::from_secs(30);

/// The built component; fails (never skips) when it was not built.
fn component() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("plugins/zig-auth/zig-auth.wasm");
    assert!(
        path.is_file(),
        "{} is missing: build it with `bash plugins/zig-auth/build.sh` (needs \
         `python3 -m pip install --user ziglang==0.17.1` and \
         `cargo install --locked wasm-tools@1.254.2`), or `bash .ci/plugins.sh`",
        path.display()
    );
    path
}

/// The plugin entry: `tokens` as the YAML map a broker config would hold (the broker hands
/// it to `init` as JSON).
fn zig_auth(tokens_yaml: &str) -> PluginConfig {
    let tokens: serde_yaml_ng::Value = serde_yaml_ng::from_str(tokens_yaml).expect("YAML map");
    assert!(tokens.is_mapping(), "{tokens_yaml:?} is not a map");
    PluginConfig::new("zig-auth", component()).with("tokens", tokens)
}

async fn start(plugin: PluginConfig) -> BrokerHandle {
    // Broker and plugin logs in the test output (shown for failing tests).
    let _ = tracing_subscriber::fmt()
        .with_env_filter("mqtt_broker=info")
        .with_test_writer()
        .try_init();
    let broker = start_broker(|c: &mut Config| {
        c.plugins = vec![plugin];
        // The refusals below should not wait for the default anti-guessing delay.
        c.security.auth_failure_delay = mqtt_broker::config::ConfigDuration::millis(0);
    })
    .await;
    assert_eq!(broker.plugin_stats()[0].hooks, vec!["authenticate"]);
    broker
}

/// Waits for a client process within [`PROCESS_LIMIT`] (killed if it takes longer).
async fn finish(child: Child, what: &str) -> Output {
    tokio::time::timeout(PROCESS_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {PROCESS_LIMIT:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Runs `tool args` to completion; returns its exit code and everything it printed.
async fn run(tool: &str, broker: &BrokerHandle, args: &[&str]) -> (Option<i32>, String) {
    let what = format!("{tool} {}", args.join(" "));
    let child = mosquitto(tool, broker, args)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let out = finish(child, &what).await;
    (out.status.code(), output_text(&out))
}

/// Command-line arguments written as one string (none of them contains a space).
fn words(line: &str) -> Vec<&str> {
    line.split(' ').collect()
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts that `tool args` was refused at CONNECT with `refusal` (the client's text for
/// the CONNACK code) and exited with `code`.
async fn expect_refused(
    tool: &str,
    broker: &BrokerHandle,
    args: &[&str],
    refusal: &str,
    code: i32,
) {
    let (status, printed) = run(tool, broker, args).await;
    assert!(
        printed.contains(refusal),
        "{tool} {args:?}: expected {refusal:?}, printed {printed:?} (exit {status:?})"
    );
    assert_eq!(
        status,
        Some(code),
        "{tool} {args:?}: exit status (printed {printed:?})"
    );
}

/// What mosquitto_pub and mosquitto_sub print when refused with 0x04 over MQTT 3.1.1; they
/// exit with the CONNACK return code (over MQTT 5, with the reason code).
const BAD_CREDENTIALS: &str = "Connection Refused: bad user name or password";
/// Refused with 0x05.
const NOT_AUTHORIZED: &str = "Connection Refused: not authorised";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zig_auth_admits_good_tokens_and_refuses_the_rest() {
    let broker = start(zig_auth("alice: s3cret\nbob: \"hunter 2\"")).await;
    let port = broker.local_addr().port();

    // bob subscribes with his token (it has a space), alice publishes with hers.
    let sub = mosquitto(
        "mosquitto_sub",
        &broker,
        &["-i", "zig-sub", "-u", "bob", "-P", "hunter 2"],
    )
    .args(["-q", "1", "-t", "zig/#", "-C", "1", "-W", "20", "-v"])
    .spawn()
    .expect("spawn mosquitto_sub");
    let deadline = tokio::time::Instant::now() + WAIT;
    while broker.stats().subscriptions.total < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "mosquitto_sub (bob, right token) did not subscribe within {WAIT:?} (port {port})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, printed) = run(
        "mosquitto_pub",
        &broker,
        &words("-i zig-pub -u alice -P s3cret -q 1 -t zig/hello -m world"),
    )
    .await;
    assert_eq!(status, Some(0), "alice's publish failed: {printed:?}");
    let out = finish(sub, "mosquitto_sub (bob)").await;
    assert!(
        out.status.success(),
        "mosquitto_sub (bob): {}",
        output_text(&out)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "zig/hello world\n");

    // Wrong token, another user's token, a prefix or an extension of the right one, no
    // password, an unknown user: 0x04 bad user name or password.
    for credentials in [
        &["-u", "alice", "-P", "wrong"][..],
        &["-u", "alice", "-P", "hunter 2"],
        &["-u", "alice", "-P", "s3cre"],
        &["-u", "alice", "-P", "s3cret!"],
        &["-u", "alice"],
        &["-u", "carol", "-P", "s3cret"],
    ] {
        let mut args = vec!["-i", "zig-pub"];
        args.extend_from_slice(credentials);
        args.extend_from_slice(&["-t", "zig/x", "-m", "no"]);
        expect_refused("mosquitto_pub", &broker, &args, BAD_CREDENTIALS, 4).await;
    }
    // mosquitto_sub with a wrong token: the same refusal.
    expect_refused(
        "mosquitto_sub",
        &broker,
        &words("-i zig-sub2 -u bob -P hunter2 -t zig/# -C 1 -W 10"),
        BAD_CREDENTIALS,
        4,
    )
    .await;
    // No user name: 0x05 not authorized (anonymous clients are not allowed by default).
    expect_refused(
        "mosquitto_pub",
        &broker,
        &["-i", "zig-anon", "-t", "zig/x", "-m", "no"],
        NOT_AUTHORIZED,
        5,
    )
    .await;

    // MQTT 5 clients get the 5.0 reason codes, 0x86 and 0x87.
    expect_refused(
        "mosquitto_pub",
        &broker,
        &words("-V mqttv5 -i zig-pub5 -u alice -P wrong -t zig/x -m no"),
        "Bad User Name or Password",
        134,
    )
    .await;
    expect_refused(
        "mosquitto_pub",
        &broker,
        &["-V", "mqttv5", "-i", "zig-anon5", "-t", "zig/x", "-m", "no"],
        "Not authorized",
        135,
    )
    .await;
    let (status, printed) = run(
        "mosquitto_pub",
        &broker,
        &words("-V mqttv5 -i zig-pub5 -u alice -P s3cret -t zig/x -m yes"),
    )
    .await;
    assert_eq!(
        status,
        Some(0),
        "v5 publish with the right token: {printed:?}"
    );

    let s = &broker.plugin_stats()[0];
    assert_eq!(s.failures, 0, "{s:?}");
    // One call per CONNECT: 1 + 1 + 6 + 1 + 1 + 3.
    assert!(s.calls >= 13, "{s:?}");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zig_auth_admits_anonymous_clients_when_allowed() {
    let broker = start(zig_auth("alice: s3cret").with("allow_anonymous", true)).await;
    let (status, printed) = run(
        "mosquitto_pub",
        &broker,
        &["-i", "zig-anon", "-t", "zig/x", "-m", "hi"],
    )
    .await;
    assert_eq!(status, Some(0), "anonymous publish: {printed:?}");
    // A user name still needs its token.
    expect_refused(
        "mosquitto_pub",
        &broker,
        &words("-i zig-pub -u alice -P nope -t zig/x -m no"),
        BAD_CREDENTIALS,
        4,
    )
    .await;
    broker.shutdown().await;
}

/// The plugin frees every buffer the host hands it (user names, passwords, peer addresses)
/// and every message it returns (in `cabi_post_*`): thousands of calls through one pool of
/// instances leave their memory where a handful of calls left it. A leak of even the
/// 16-byte password per call would need more than this.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zig_auth_memory_stays_flat_over_many_calls() {
    use mqtt_broker::protocol::ConnectReturnCode;
    let broker = start(zig_auth("alice: s3cret-token-0123")).await;
    let addr = broker.local_addr();
    let login = |i: usize, password: &str| mqtt_broker::protocol::Connect {
        username: Some("alice".into()),
        password: Some(bytes::Bytes::copy_from_slice(password.as_bytes())),
        ..connect_packet(&format!("zig-many-{i}"), true)
    };
    let round = |from: usize, to: usize| async move {
        for i in from..to {
            let (good, wrong) = (login(i, "s3cret-token-0123"), login(i, "s3cret-token-0124"));
            assert_eq!(
                RawClient::connect_with(addr, good).await.1.code,
                ConnectReturnCode::Accepted
            );
            assert_eq!(
                RawClient::connect_with(addr, wrong).await.1.code,
                ConnectReturnCode::BadUsernameOrPassword
            );
        }
    };
    round(0, 50).await;
    let warm = broker.plugin_stats()[0].peak_memory_bytes;
    assert!(warm > 0, "{:?}", broker.plugin_stats()[0]);
    round(50, 1500).await;
    let s = &broker.plugin_stats()[0];
    assert_eq!(s.failures, 0, "{s:?}");
    assert!(s.calls >= 3000, "{s:?}");
    // 2900 more calls: a leak of 16 bytes per call would be 46 KB, most of a page.
    assert_eq!(s.peak_memory_bytes, warm, "memory grew: {s:?}");
    broker.shutdown().await;
}

/// `tokens` that are not JSON (a string in the YAML, as a user might write it): the plugin's
/// `init` refuses it, and so the broker refuses to load it, with the plugin's own message,
/// both in-process and from `mqtt-broker --check-config` (exit status 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zig_auth_init_refuses_bad_json_with_its_message() {
    let bad = PluginConfig::new("zig-auth", component()).with("tokens", "{alice: s3cret}");
    let config = Config {
        listeners: vec![BrokerHandle::loopback_listener()],
        plugins: vec![bad],
        ..Default::default()
    };
    let err = match Broker::start(config).await {
        Ok(broker) => {
            broker.shutdown().await;
            panic!("a broker with tokens that are not JSON started");
        }
        Err(e) => e.to_string(),
    };
    let expected = "plugin zig-auth: init refused the config: config key `tokens` is not valid JSON (SyntaxError at line 1, column 2)";
    assert!(err.contains(expected), "{err}");

    // The same through the binary, as an operator would see it.
    let dir = std::env::temp_dir().join(format!("plugin-zig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("broker.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listeners:\n  - bind: 127.0.0.1:{}\nadmin:\n  enabled: false\nplugins:\n  - name: zig-auth\n    path: {}\n    config:\n      tokens: \"[1, 2\"\n",
            free_port(),
            component().display()
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_mqtt-broker"))
        .arg("--check-config")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run mqtt-broker --check-config");
    let out = finish(child, "mqtt-broker --check-config").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "error: plugin zig-auth: init refused the config: config key `tokens` is not valid JSON (UnexpectedEndOfInput at line 1, column 6)"
        ),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
