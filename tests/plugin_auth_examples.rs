//! End-to-end tests of the example authentication plugins for plugin API 0.2, both Python
//! components built from source (`bash plugins/jwt-auth/build.sh`,
//! `bash plugins/http-auth/build.sh`, or `bash .ci/plugins.sh`): a broker loads them and
//! Mosquitto's own command-line clients (`mosquitto_pub` / `mosquitto_sub`, Debian package
//! `mosquitto-clients`) connect to it over real sockets.
//!
//! - jwt-auth (world `access-control`): HS256 and RS256 tokens as MQTT passwords, refused
//!   tokens (expired, forged, `alg: none`, another user's), ACL from the token's claims kept
//!   in the `kv` capability, and what happens without the `kv` grant.
//! - http-auth (world `authenticator`): a real HTTP service started by the test answers
//!   allow / deny / ignore; a failing, unreachable, slow or non-allowed service, and a plugin
//!   without the `http` grant, all refuse the client.
//!
//! RS256 tokens are signed with the test key tests/fixtures/jwt-rs256-private.pem by
//! tests/fixtures/jwt_rs256_sign.py (python3, standard library only: no RSA crate needed).

mod common;

use base64::Engine as _;
use common::*;
use hmac::{Hmac, Mac};
use mqtt_broker::config::{Config, ConfigDuration, PluginConfig, UserConfig};
use mqtt_broker::{BrokerEvent, BrokerHandle};
use serde_json::{json, Value};
use sha2::Sha256;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast::{error::RecvError, Receiver};

/// The HS256 secret configured in jwt-auth.
const HS_SECRET: &str = "jwt-auth-test-secret-0123456789-abcdef";
/// The issuer and audience configured in jwt-auth (and put in valid tokens).
const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "mqtt-broker";

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The built component of an example plugin; fails (never skips) when it was not built.
fn component(name: &str) -> PathBuf {
    let path = repo(&format!("plugins/{name}/{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: build it with `bash plugins/{name}/build.sh` (needs \
         `pip install componentize-py==0.25.1`) or `bash .ci/plugins.sh`",
        path.display()
    );
    path
}

/// Fails (never skips) when a command-line tool the test drives is not installed.
fn require(tool: &str) {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed (Debian: apt-get install mosquitto-clients python3)"
    );
}

/// A plugin entry as an operator writes it in the broker's YAML config.
fn plugin_entry(yaml: &str) -> PluginConfig {
    serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("plugin entry {yaml}: {e}"))
}

async fn start(plugins: Vec<PluginConfig>, adjust: impl FnOnce(&mut Config)) -> BrokerHandle {
    // Broker and plugin logs in the test output (shown for failing tests).
    let _ = tracing_subscriber::fmt()
        .with_env_filter("mqtt_broker=info")
        .with_test_writer()
        .try_init();
    start_broker(|c: &mut Config| {
        c.plugins = plugins;
        // Every client comes from 127.0.0.1: no growing back-off between the refusals.
        c.security.auth_failure_delay = ConfigDuration::millis(0);
        adjust(c);
    })
    .await
}

// --- Mosquitto's clients ----------------------------------------------------------------

/// `tool` (mosquitto_pub / mosquitto_sub) pointed at the broker as client `id`, with a user
/// name (if any) and a password given as raw bytes (it need not be UTF-8).
fn mosquitto(
    tool: &str,
    port: u16,
    id: &str,
    user: Option<&str>,
    password: &[u8],
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(tool);
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-i", id]);
    if let Some(user) = user {
        cmd.args(["-u", user]);
    }
    cmd.arg("-P")
        .arg(OsStr::from_bytes(password))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs a client to completion (at most 20 s).
async fn run(mut cmd: tokio::process::Command) -> Output {
    tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("mosquitto client finished in time")
        .expect("mosquitto client runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Publishes one QoS 1 message with `mosquitto_pub` (MQTT 3.1.1, or 5 with `v5`).
async fn publish_with(
    port: u16,
    id: &str,
    user: Option<&str>,
    password: &[u8],
    topic: &str,
    message: &str,
    v5: bool,
) -> Output {
    let mut cmd = mosquitto("mosquitto_pub", port, id, user, password);
    cmd.args(["-q", "1", "-t", topic, "-m", message]);
    if v5 {
        cmd.args(["-V", "5"]);
    }
    run(cmd).await
}

/// Connects with `mosquitto_pub` and asserts the broker accepted the client.
async fn expect_accepted(port: u16, id: &str, user: Option<&str>, password: &[u8]) {
    let out = publish_with(port, id, user, password, "probe", "x", false).await;
    assert!(
        out.status.success(),
        "{id} should be accepted: {:?} {}",
        out.status,
        stderr(&out)
    );
}

/// Connects with `mosquitto_pub`, asserts the CONNACK refusal `code` (its exit status: 4 bad
/// user name or password, 5 not authorized) and returns the reason the broker logged.
async fn expect_refused(
    port: u16,
    events: &mut Receiver<BrokerEvent>,
    id: &str,
    user: Option<&str>,
    password: &[u8],
    code: i32,
) -> String {
    let out = publish_with(port, id, user, password, "probe", "x", false).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "{id}: {err}");
    assert!(err.contains("Connection Refused"), "{id}: {err}");
    auth_failure(events, id).await
}

// --- broker events ------------------------------------------------------------------------

/// The reason of the next authentication failure of `client_id` (as the broker logs it:
/// `<plugin>: <message>`).
async fn auth_failure(events: &mut Receiver<BrokerEvent>, client_id: &str) -> String {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(BrokerEvent::AuthFailed {
                    client_id: id,
                    reason,
                    ..
                }) if &*id == client_id => return reason,
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => panic!("broker event channel closed"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no authentication failure event for {client_id}"))
}

/// Waits until `client_id` was granted a subscription to `filter`.
async fn subscribed(events: &mut Receiver<BrokerEvent>, client_id: &str, filter: &str) {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(BrokerEvent::Subscribed {
                    client_id: id,
                    filter: f,
                    ..
                }) if &*id == client_id && f == filter => return,
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => panic!("broker event channel closed"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{client_id} was not subscribed to {filter}"))
}

// --- JWT ------------------------------------------------------------------------------------

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// `header.payload` of a token.
fn signing_input(alg: &str, claims: &Value) -> String {
    let header = json!({"alg": alg, "typ": "JWT"});
    format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

fn hs256_with(secret: &[u8], claims: &Value) -> String {
    let input = signing_input("HS256", claims);
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(input.as_bytes());
    format!("{input}.{}", b64url(&mac.finalize().into_bytes()))
}

fn hs256(claims: &Value) -> String {
    hs256_with(HS_SECRET.as_bytes(), claims)
}

/// An RS256 token signed with the fixture key (by python3, see the file's doc comment).
fn rs256(claims: &Value) -> String {
    let input = signing_input("RS256", claims);
    let script = repo("tests/fixtures/jwt_rs256_sign.py");
    let key = repo("tests/fixtures/jwt-rs256-private.pem");
    let mut child = std::process::Command::new("python3")
        .arg(&script)
        .arg(&key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs tests/fixtures/jwt_rs256_sign.py");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write the signing input");
    let out = child.wait_with_output().expect("signer finishes");
    assert!(out.status.success(), "{} failed", script.display());
    let signature = String::from_utf8(out.stdout).expect("base64url signature");
    assert_eq!(signature.len(), 342, "a 2048-bit signature: {signature}");
    format!("{input}.{signature}")
}

/// Valid claims for `sub`, expiring in ten minutes, with the given ACL claims.
fn claims(sub: &str, publish: &[&str], subscribe: &[&str]) -> Value {
    json!({
        "sub": sub,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now_secs(),
        "exp": now_secs() + 600,
        "publish": publish,
        "subscribe": subscribe,
    })
}

fn jwt_auth(kv: bool) -> PluginConfig {
    let capabilities = if kv {
        "capabilities:\n  kv: {max_bytes: 64KiB}\n"
    } else {
        ""
    };
    let pem = std::fs::read_to_string(repo("tests/fixtures/jwt-rs256-public.pem"))
        .expect("tests/fixtures/jwt-rs256-public.pem");
    plugin_entry(&format!(
        "name: jwt-auth\n\
         path: {}\n\
         config:\n  hs256_secret: {HS_SECRET}\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n  leeway: 5\n\
         limits:\n  memory: 128MiB\n  auth_timeout: 2s\n  call_timeout: 200ms\n\
         {capabilities}",
        component("jwt-auth").display()
    ))
    .with("rs256_public_key", pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_auth_verifies_tokens_and_enforces_their_claims() {
    require("mosquitto_pub");
    require("mosquitto_sub");
    require("python3");
    let broker = start(vec![jwt_auth(true)], |_| {}).await;
    let port = broker.local_addr().port();
    let mut events = broker.events();
    assert_eq!(
        broker.plugin_stats()[0].hooks,
        vec!["authenticate", "authorize"]
    );

    // A watcher with an RS256 token that may subscribe to every device topic (and publish
    // nothing).
    let watcher = rs256(&claims("watcher", &[], &["devices/#"]));
    let mut sub = mosquitto(
        "mosquitto_sub",
        port,
        "watcher-1",
        Some("watcher"),
        watcher.as_bytes(),
    );
    sub.args(["-t", "devices/#", "-q", "1", "-v", "-C", "1", "-W", "15"]);
    let sub = sub.spawn().expect("mosquitto_sub starts");
    subscribed(&mut events, "watcher-1", "devices/#").await;

    // A device with an HS256 token: publish under its user name, subscribe to its client id's
    // commands. Client id and user name differ, so %u and %c are told apart.
    let device = hs256(&claims("dev-1", &["devices/%u/#"], &["commands/%c/#"]));
    let dev = device.as_bytes();
    // Outside the `publish` claim: MQTT 5 shows the refusal (PUBACK 0x87), nothing routed.
    let out = publish_with(
        port,
        "sensor-a",
        Some("dev-1"),
        dev,
        "devices/dev-2/temp",
        "spoofed",
        true,
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("Not authorized"), "{}", stderr(&out));
    // `%u` is the user name, not the client id.
    let out = publish_with(
        port,
        "sensor-a",
        Some("dev-1"),
        dev,
        "devices/sensor-a/temp",
        "no",
        false,
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    // Inside it: delivered. The watcher prints the first message it gets (-C 1), so a leaked
    // spoofed message would show here instead.
    let out = publish_with(
        port,
        "sensor-a",
        Some("dev-1"),
        dev,
        "devices/dev-1/temp",
        "21.5",
        true,
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("Not authorized"), "{}", stderr(&out));
    let got = tokio::time::timeout(Duration::from_secs(20), sub.wait_with_output())
        .await
        .expect("watcher finished")
        .expect("watcher ran");
    assert!(got.status.success(), "watcher: {}", stderr(&got));
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        "devices/dev-1/temp 21.5"
    );

    // The `subscribe` claim: the device may not subscribe beyond commands/<client id>/#...
    let mut wide = mosquitto("mosquitto_sub", port, "sensor-a", Some("dev-1"), dev);
    wide.args(["-t", "commands/#", "-C", "1", "-W", "10"]);
    let out = run(wide).await;
    assert!(
        stderr(&out).contains("All subscription requests were denied"),
        "{}",
        stderr(&out)
    );
    // ...but within it, and receives what an operator (RS256, may publish commands) sends.
    let mut own = mosquitto("mosquitto_sub", port, "sensor-a", Some("dev-1"), dev);
    own.args([
        "-t",
        "commands/sensor-a/+",
        "-q",
        "1",
        "-v",
        "-C",
        "1",
        "-W",
        "15",
    ]);
    let own = own.spawn().expect("mosquitto_sub starts");
    subscribed(&mut events, "sensor-a", "commands/sensor-a/+").await;
    let ops = rs256(&claims("ops", &["commands/#"], &[]));
    let out = publish_with(
        port,
        "ops-1",
        Some("ops"),
        ops.as_bytes(),
        "commands/sensor-a/reboot",
        "now",
        false,
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let got = tokio::time::timeout(Duration::from_secs(20), own.wait_with_output())
        .await
        .expect("device subscriber finished")
        .expect("device subscriber ran");
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        "commands/sensor-a/reboot now"
    );

    // Refused tokens: CONNACK 4 (bad user name or password) for a bad token, 5 (not
    // authorized) for a good token presented by another user.
    let mut expired = claims("dev-1", &["devices/%u/#"], &[]);
    expired["exp"] = json!(now_secs() - 3600);
    let reason = expect_refused(
        port,
        &mut events,
        "c-expired",
        Some("dev-1"),
        hs256(&expired).as_bytes(),
        4,
    )
    .await;
    assert!(reason.starts_with("jwt-auth: token expired"), "{reason}");

    let forged = hs256_with(
        b"not-the-configured-secret-0123456789",
        &claims("dev-1", &["#"], &["#"]),
    );
    let reason = expect_refused(
        port,
        &mut events,
        "c-forged",
        Some("dev-1"),
        forged.as_bytes(),
        4,
    )
    .await;
    assert!(reason.contains("bad HS256 signature"), "{reason}");

    // An RS256 token whose payload was swapped for one granting everything.
    let good = rs256(&claims("dev-1", &["devices/%u/#"], &[]));
    let parts: Vec<&str> = good.split('.').collect();
    let greedy = b64url(claims("dev-1", &["#"], &["#"]).to_string().as_bytes());
    let tampered = format!("{}.{greedy}.{}", parts[0], parts[2]);
    let reason = expect_refused(
        port,
        &mut events,
        "c-tampered",
        Some("dev-1"),
        tampered.as_bytes(),
        4,
    )
    .await;
    assert!(reason.contains("bad RS256 signature"), "{reason}");

    let unsigned = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims("dev-1", &["#"], &["#"]).to_string().as_bytes())
    );
    let reason = expect_refused(
        port,
        &mut events,
        "c-none",
        Some("dev-1"),
        unsigned.as_bytes(),
        4,
    )
    .await;
    assert!(reason.contains("alg none"), "{reason}");

    // Algorithm confusion: HS256 keyed with the RSA public key (which attackers know).
    let pem = std::fs::read(repo("tests/fixtures/jwt-rs256-public.pem")).expect("public key");
    let confused = hs256_with(&pem, &claims("dev-1", &["#"], &["#"]));
    let reason = expect_refused(
        port,
        &mut events,
        "c-confused",
        Some("dev-1"),
        confused.as_bytes(),
        4,
    )
    .await;
    assert!(reason.contains("bad HS256 signature"), "{reason}");

    let mut foreign = claims("dev-1", &[], &[]);
    foreign["iss"] = json!("https://elsewhere.test");
    let reason = expect_refused(
        port,
        &mut events,
        "c-issuer",
        Some("dev-1"),
        hs256(&foreign).as_bytes(),
        4,
    )
    .await;
    assert!(reason.contains("issuer"), "{reason}");

    // dev-1's valid token presented as dev-2.
    let reason = expect_refused(port, &mut events, "c-other-user", Some("dev-2"), dev, 5).await;
    assert!(reason.contains("token is for another user"), "{reason}");

    // Not a JWT at all.
    let reason = expect_refused(port, &mut events, "c-plain", Some("dev-1"), b"hunter2", 4).await;
    assert!(reason.contains("not a JWT"), "{reason}");

    let s = &broker.plugin_stats()[0];
    assert!(s.api.starts_with("0.2"), "{s:?}");
    assert_eq!(s.failures, 0, "{s:?}");
    assert!(s.kv_bytes > 0, "the clients' rules are in the store: {s:?}");
    assert_eq!(s.capability_denied, 0, "{s:?}");
    eprintln!(
        "jwt-auth: {} calls, slowest {} us, {} instances (mean instantiate {} us), {} kv bytes",
        s.calls, s.slowest_call_us, s.instances_created, s.mean_instantiate_us, s.kv_bytes
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_auth_without_the_kv_grant_denies_with_the_reason() {
    require("mosquitto_pub");
    let broker = start(vec![jwt_auth(false)], |_| {}).await;
    let port = broker.local_addr().port();
    let mut events = broker.events();
    let token = hs256(&claims("dev-1", &["devices/%u/#"], &[]));
    // A perfectly valid token: the plugin cannot keep its claims, so it refuses the client
    // (rather than letting it in with an ACL nobody can check) and says why.
    let reason = expect_refused(
        port,
        &mut events,
        "no-kv",
        Some("dev-1"),
        token.as_bytes(),
        5,
    )
    .await;
    assert!(
        reason.starts_with("jwt-auth: cannot store the token's ACL claims"),
        "{reason}"
    );
    assert!(
        reason.contains("capability `kv` is not granted"),
        "{reason}"
    );
    let s = &broker.plugin_stats()[0];
    assert_eq!(s.failures, 0, "a denial, not a plugin failure: {s:?}");
    assert_eq!(s.capability_denied, 1, "{s:?}");
    broker.shutdown().await;
}

// --- HTTP -----------------------------------------------------------------------------------

/// One request the authentication service received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP authentication service on a free loopback port, answering by user name:
/// `alice` allow, `mallory` deny, `operator` and `stranger` ignore, `broken` HTTP 500,
/// `slow` allow after 5 s; every request is recorded.
struct AuthService {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl AuthService {
    async fn start() -> AuthService {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the service");
        let port = listener.local_addr().expect("address").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| answer(req, log.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        AuthService { port, seen, task }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mqtt/auth", self.port)
    }

    fn requests(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    /// The request made for `client_id`.
    fn request_of(&self, client_id: &str) -> Seen {
        self.requests()
            .into_iter()
            .find(|s| s.body["clientid"] == client_id)
            .unwrap_or_else(|| panic!("no request for {client_id}: {:?}", self.requests()))
    }
}

impl Drop for AuthService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    log: Arc<Mutex<Vec<Seen>>>,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, hyper::Error> {
    use http_body_util::BodyExt as _;
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = req.into_body().collect().await?.to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let user = body["username"].as_str().unwrap_or("").to_owned();
    log.lock().expect("lock").push(Seen {
        method,
        path,
        headers,
        body,
    });
    let (status, text) = match user.as_str() {
        "alice" => (200, json!({"result": "allow"}).to_string()),
        "mallory" => (
            200,
            json!({"result": "deny", "reason": "account locked"}).to_string(),
        ),
        "operator" | "stranger" => (200, json!({"result": "ignore"}).to_string()),
        "broken" => (500, "database unavailable".to_owned()),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            (200, json!({"result": "allow"}).to_string())
        }
        _ => (200, json!({"result": "deny"}).to_string()),
    };
    Ok(hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(text)))
        .expect("response"))
}

/// http-auth calling `url`, with `capabilities` (YAML lines, indented by two) granted.
fn http_auth(url: &str, capabilities: &str) -> PluginConfig {
    plugin_entry(&format!(
        "name: http-auth\n\
         path: {}\n\
         config:\n  url: {url}\n  headers: {{X-Api-Key: test-key}}\n\
         limits:\n  memory: 128MiB\n  auth_timeout: 2s\n\
         {capabilities}",
        component("http-auth").display()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_auth_asks_the_service() {
    require("mosquitto_pub");
    require("mosquitto_sub");
    let service = AuthService::start().await;
    let grant = format!(
        "capabilities:\n  http: {{allow: [\"127.0.0.1:{}\"], timeout: 10s}}\n",
        service.port
    );
    // `operator` is a user of the broker's own list: when the service ignores a user, the
    // next authenticator decides; with require_auth, nobody decides for `stranger`.
    let operator_hash =
        mqtt_broker::auth::hash_password_with_salt(b"op-pass", b"0123456789abcdef", 1000);
    let broker = start(vec![http_auth(&service.url(), &grant)], |c| {
        c.security.require_auth = true;
        c.security.users = vec![UserConfig {
            username: "operator".into(),
            password_hash: operator_hash,
        }];
    })
    .await;
    let port = broker.local_addr().port();
    let mut events = broker.events();
    assert_eq!(broker.plugin_stats()[0].hooks, vec!["authenticate"]);

    // allow: accepted, and the service saw what EMQX's HTTP authentication sends.
    expect_accepted(port, "alice-1", Some("alice"), b"alice-pw").await;
    let seen = service.request_of("alice-1");
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/mqtt/auth")
    );
    assert_eq!(seen.header("x-api-key"), Some("test-key"));
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(
        seen.body,
        json!({
            "clientid": "alice-1",
            "username": "alice",
            "password": "alice-pw",
            "password_encoding": "utf8",
            "peerhost": "127.0.0.1",
            "protocol": "mqtt311",
        })
    );
    // A password that is not UTF-8 travels as base64; MQTT 5 is named as such.
    let out = publish_with(
        port,
        "alice-2",
        Some("alice"),
        b"\xff\xfe-pw",
        "probe",
        "x",
        true,
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let seen = service.request_of("alice-2");
    assert_eq!(seen.body["password"], "//4tcHc=");
    assert_eq!(seen.body["password_encoding"], "base64");
    assert_eq!(seen.body["protocol"], "mqtt5");

    // deny: bad user name or password, with the service's reason in the broker's log.
    let reason = expect_refused(port, &mut events, "mallory-1", Some("mallory"), b"pw", 4).await;
    assert_eq!(
        reason,
        "http-auth: authentication service: deny (account locked)"
    );
    // Any status but 200 refuses the client (not authorized).
    let reason = expect_refused(port, &mut events, "broken-1", Some("broken"), b"pw", 5).await;
    assert_eq!(
        reason,
        "http-auth: authentication service answered HTTP 500"
    );
    // ignore: the broker's own user list decides...
    expect_accepted(port, "operator-1", Some("operator"), b"op-pass").await;
    let reason = expect_refused(
        port,
        &mut events,
        "operator-2",
        Some("operator"),
        b"wrong",
        4,
    )
    .await;
    assert!(!reason.starts_with("http-auth"), "{reason}");
    // ...and with nobody allowing, require_auth refuses.
    let reason = expect_refused(port, &mut events, "stranger-1", Some("stranger"), b"pw", 5).await;
    assert_eq!(reason, "unknown user");
    assert_eq!(
        service.request_of("stranger-1").body["username"],
        "stranger"
    );

    // A slow service: refused when limits.auth_timeout (2 s) runs out, not when the service
    // answers (5 s); meanwhile the broker serves other clients.
    let started = Instant::now();
    let mut slow = mosquitto("mosquitto_pub", port, "slow-1", Some("slow"), b"pw");
    slow.args(["-t", "probe", "-m", "x"]);
    let mut slow = slow.spawn().expect("mosquitto_pub starts");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut sub = mosquitto("mosquitto_sub", port, "alice-sub", Some("alice"), b"pw");
    sub.args(["-t", "news", "-v", "-C", "1", "-W", "10"]);
    let sub = sub.spawn().expect("mosquitto_sub starts");
    subscribed(&mut events, "alice-sub", "news").await;
    let out = publish_with(
        port,
        "alice-pub",
        Some("alice"),
        b"pw",
        "news",
        "hello",
        false,
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let got = tokio::time::timeout(Duration::from_secs(10), sub.wait_with_output())
        .await
        .expect("subscriber finished")
        .expect("subscriber ran");
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "news hello");
    let served_after = started.elapsed();
    assert!(
        slow.try_wait().expect("poll").is_none(),
        "the slow client was answered before others were served ({served_after:?})"
    );
    let status = tokio::time::timeout(Duration::from_secs(10), slow.wait())
        .await
        .expect("slow client refused in time")
        .expect("slow client ran");
    let refused_after = started.elapsed();
    assert_eq!(status.code(), Some(5), "not authorized");
    assert!(
        refused_after >= Duration::from_millis(1900) && refused_after < Duration::from_millis(4500),
        "refused after {refused_after:?}, auth_timeout is 2 s, the service answers after 5 s"
    );
    let reason = auth_failure(&mut events, "slow-1").await;
    assert!(reason.starts_with("http-auth:"), "{reason}");
    let s = &broker.plugin_stats()[0];
    assert_eq!(s.capability_denied, 0, "{s:?}");
    assert!(s.http_requests >= 8, "{s:?}");
    eprintln!(
        "slow service: others served within {served_after:?}, slow client refused after {refused_after:?}: {reason}"
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_auth_refuses_when_the_service_cannot_be_asked() {
    require("mosquitto_pub");
    let service = AuthService::start().await;

    // The service is down: nothing listens on the port.
    let down = free_port();
    let url = format!("http://127.0.0.1:{down}/mqtt/auth");
    let grant = format!("capabilities:\n  http: {{allow: [\"127.0.0.1:{down}\"]}}\n");
    let broker = start(vec![http_auth(&url, &grant)], |_| {}).await;
    let mut events = broker.events();
    let reason = expect_refused(
        broker.local_addr().port(),
        &mut events,
        "down-1",
        Some("alice"),
        b"pw",
        5,
    )
    .await;
    assert!(
        reason.starts_with(
            "http-auth: authentication service not reached: HTTP request to 127.0.0.1"
        ),
        "{reason}"
    );
    broker.shutdown().await;

    // The grant does not list the service's host: the request never leaves the broker.
    let grant = "capabilities:\n  http: {allow: [\"auth.example.com\", \"127.0.0.1:1\"]}\n";
    let broker = start(vec![http_auth(&service.url(), grant)], |_| {}).await;
    let mut events = broker.events();
    let reason = expect_refused(
        broker.local_addr().port(),
        &mut events,
        "allow-1",
        Some("alice"),
        b"pw",
        5,
    )
    .await;
    assert!(
        reason.contains(&format!(
            "host 127.0.0.1:{} is not in capabilities.http.allow of plugin http-auth",
            service.port
        )),
        "{reason}"
    );
    let s = &broker.plugin_stats()[0];
    assert_eq!((s.capability_denied, s.http_requests), (1, 0), "{s:?}");
    broker.shutdown().await;

    // No `http` grant at all.
    let broker = start(vec![http_auth(&service.url(), "")], |_| {}).await;
    let mut events = broker.events();
    let reason = expect_refused(
        broker.local_addr().port(),
        &mut events,
        "nogrant-1",
        Some("alice"),
        b"pw",
        5,
    )
    .await;
    assert!(
        reason.contains("capability `http` is not granted"),
        "{reason}"
    );
    let s = &broker.plugin_stats()[0];
    assert_eq!((s.capability_denied, s.http_requests), (1, 0), "{s:?}");
    broker.shutdown().await;

    assert!(
        service.requests().is_empty(),
        "no request may reach a service the plugin was not allowed to call: {:?}",
        service.requests()
    );
}
