//! Built-in authentication and ACL over real sockets, including password files written by
//! Mosquitto's own `mosquitto_passwd` and read by Mosquitto's own broker (both directions).

mod common;

use common::*;
use mqtt_broker::auth::{hash_password, UserConfig};
use mqtt_broker::protocol::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-broker");

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mqtt-auth-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn login(user: &str, pass: &str) -> Connect {
    let mut c = connect_packet(user, true);
    c.username = Some(user.into());
    c.password = Some(bytes::Bytes::copy_from_slice(pass.as_bytes()));
    c
}

async fn connack(addr: std::net::SocketAddr, c: Connect) -> ConnectReturnCode {
    RawClient::connect_with(addr, c).await.1.code
}

fn mosquitto_passwd(file: &Path, user: &str, pass: &str) {
    let st = Command::new("mosquitto_passwd")
        .args(["-b"])
        .arg(file)
        .args([user, pass])
        .status()
        .expect("mosquitto_passwd is required (apt-get install mosquitto; .ci/run does this)");
    assert!(st.success());
}

/// Mosquitto's own broker on a free port, refusing anonymous clients and checking `file`;
/// killed on drop. `publish(user, password)` says whether it accepted that login.
struct MosquittoWithPasswords {
    child: std::process::Child,
    port: u16,
}

impl MosquittoWithPasswords {
    fn start(dir: &Path, file: &Path) -> Self {
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\nuser root\n",
                file.display()
            ),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is required (apt-get install mosquitto; .ci/run does this)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        MosquittoWithPasswords { child, port }
    }

    fn publish(&self, user: &str, pass: &str) -> bool {
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-u", user, "-P", pass, "-t", "t", "-m", "x"])
            .status()
            .unwrap()
            .success()
    }
}

impl Drop for MosquittoWithPasswords {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn mosquitto_passwd_file_is_accepted() {
    let dir = temp_dir("mosq");
    let file = dir.join("passwd");
    std::fs::write(&file, "").unwrap();
    mosquitto_passwd(&file, "alice", "s3cret");
    mosquitto_passwd(&file, "bob", "p@ss:w0rd ü");
    let broker = start_broker(|c| {
        c.security.password_file = Some(file.clone());
        c.security.allow_anonymous = false;
        c.security.auth_failure_delay = mqtt_broker::config::ConfigDuration::millis(0);
    })
    .await;
    let addr = broker.local_addr();
    assert_eq!(
        connack(addr, login("alice", "s3cret")).await,
        ConnectReturnCode::Accepted
    );
    assert_eq!(
        connack(addr, login("bob", "p@ss:w0rd ü")).await,
        ConnectReturnCode::Accepted
    );
    // Wrong password: 0x04; unknown user: 0x05; anonymous refused: 0x05.
    assert_eq!(
        connack(addr, login("alice", "wrong")).await,
        ConnectReturnCode::BadUsernameOrPassword
    );
    assert_eq!(
        connack(addr, login("mallory", "x")).await,
        ConnectReturnCode::NotAuthorized
    );
    assert_eq!(
        connack(addr, connect_packet("anon", true)).await,
        ConnectReturnCode::NotAuthorized
    );
}

/// A file written by `mqtt-broker passwd` works in Mosquitto's broker.
#[test]
fn our_passwd_file_is_accepted_by_mosquitto() {
    let dir = temp_dir("ours");
    let file = dir.join("passwd");
    let mut child = Command::new(BIN)
        .arg("passwd")
        .arg(&file)
        .arg("carol")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hunter2\n").unwrap();
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("carol:$7$101$"), "{text}");

    let mosq = MosquittoWithPasswords::start(&dir, &file);
    let good = mosq.publish("carol", "hunter2");
    let bad = mosq.publish("carol", "wrong");
    drop(mosq);
    assert!(
        good,
        "mosquitto refused a password written by mqtt-broker passwd"
    );
    assert!(!bad, "mosquitto accepted a wrong password");
}

/// `mqtt-broker passwd` has `mosquitto_passwd`'s -c (create), -b (batch, with a warning),
/// -D (delete) and -U (upgrade plaintext), and Mosquitto's own broker accepts the result.
#[test]
fn passwd_create_batch_delete_and_upgrade_like_mosquitto_passwd() {
    use mqtt_broker::auth::{PasswordCheck, PasswordFile};
    let dir = temp_dir("passwd-flags");
    let file = dir.join("passwd");
    let f = file.to_str().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN).arg("passwd").args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let check = |user: &str, pass: &str| {
        PasswordFile::load(&file)
            .unwrap()
            .verify(user, pass.as_bytes())
    };

    std::fs::write(&file, "old:plaintext-that-must-go\n").unwrap();
    let (ok, err) = run(&["-c", "-b", f, "alice", "s3cret"]);
    assert!(ok, "{err}");
    assert!(err.contains("warning: -b"), "batch mode warns: {err}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count(), 1, "-c starts a new file: {text}");
    assert_eq!(check("alice", "s3cret"), PasswordCheck::Ok);

    assert!(run(&["-b", f, "bob", "hunter2"]).0);
    assert_eq!(check("bob", "hunter2"), PasswordCheck::Ok);
    assert_eq!(check("alice", "s3cret"), PasswordCheck::Ok);

    let (ok, err) = run(&["-D", f, "alice"]);
    assert!(ok, "{err}");
    assert_eq!(check("alice", "s3cret"), PasswordCheck::UnknownUser);
    assert_eq!(check("bob", "hunter2"), PasswordCheck::Ok);
    let (ok, err) = run(&["-D", f, "nobody"]);
    assert!(!ok && err.contains("not found"), "{err}");

    // A password argument without -b is refused, not silently used.
    let (ok, err) = run(&[f, "carol", "visible"]);
    assert!(!ok && err.contains("-b"), "{err}");

    // -U hashes plaintext lines and keeps hashed ones.
    let bob_line = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("{bob_line}carol:plain pass\n# a comment\n")).unwrap();
    let (ok, err) = run(&["-U", f]);
    assert!(ok && err.contains("1 plaintext"), "{err}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.starts_with(bob_line.trim_end()),
        "bob's hash is kept: {text}"
    );
    assert!(text.contains("carol:$7$"), "{text}");
    assert!(text.contains("# a comment"), "{text}");
    assert_eq!(check("carol", "plain pass"), PasswordCheck::Ok);
    assert_eq!(check("bob", "hunter2"), PasswordCheck::Ok);

    // Mosquitto's broker accepts the file as written.
    let mosq = MosquittoWithPasswords::start(&dir, &file);
    let carol = mosq.publish("carol", "plain pass");
    let bob = mosq.publish("bob", "hunter2");
    let alice = mosq.publish("alice", "s3cret");
    drop(mosq);
    assert!(
        carol && bob,
        "mosquitto accepts the upgraded and the batch-added users"
    );
    assert!(!alice, "the deleted user is gone for mosquitto too");
}

#[tokio::test]
async fn inline_users_and_require_auth() {
    let broker = start_broker(|c| {
        c.security.require_auth = true;
        c.security.users = vec![UserConfig {
            username: "dev1".into(),
            password_hash: hash_password(b"pw1"),
        }];
        c.security.auth_failure_delay = mqtt_broker::config::ConfigDuration::millis(0);
    })
    .await;
    let addr = broker.local_addr();
    assert_eq!(
        connack(addr, login("dev1", "pw1")).await,
        ConnectReturnCode::Accepted
    );
    assert_eq!(
        connack(addr, login("dev1", "pw2")).await,
        ConnectReturnCode::BadUsernameOrPassword
    );
    assert_eq!(
        connack(addr, connect_packet("nobody", true)).await,
        ConnectReturnCode::NotAuthorized
    );
}

#[test]
fn plaintext_password_in_config_is_refused_with_hint() {
    let err = mqtt_broker::Config::parse(
        "security:\n  users:\n    - username: a\n      password: secret\n",
        Path::new("broker.yaml"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("mqtt-broker passwd"), "{err}");
    assert!(
        !err.contains("secret"),
        "the password leaked into the error: {err}"
    );
}

#[tokio::test]
async fn failed_authentication_is_delayed_exponentially_per_address() {
    let broker = start_broker(|c| {
        c.security.require_auth = true;
        c.security.users = vec![UserConfig {
            username: "u".into(),
            password_hash: hash_password(b"p"),
        }];
        c.security.auth_failure_delay = mqtt_broker::config::ConfigDuration::millis(200);
    })
    .await;
    let addr = broker.local_addr();
    let t = Instant::now();
    assert_eq!(
        connack(addr, login("u", "bad")).await,
        ConnectReturnCode::BadUsernameOrPassword
    );
    let first = t.elapsed();
    let t = Instant::now();
    assert_eq!(
        connack(addr, login("u", "bad")).await,
        ConnectReturnCode::BadUsernameOrPassword
    );
    let second = t.elapsed();
    assert!(first >= Duration::from_millis(200), "{first:?}");
    assert!(second >= Duration::from_millis(400), "{second:?}");
    // Success resets the back-off.
    assert_eq!(
        connack(addr, login("u", "p")).await,
        ConnectReturnCode::Accepted
    );
    let t = Instant::now();
    connack(addr, login("u", "bad")).await;
    assert!(t.elapsed() < Duration::from_millis(400));
}

const ACL_FILE: &str = "\
# anonymous clients
topic read public/#

user reader
topic read sensors/#
topic deny sensors/private/#

user writer
topic write sensors/#

pattern readwrite devices/%c/#
pattern read users/%u/inbox
";

async fn acl_broker(dir: &Path) -> mqtt_broker::BrokerHandle {
    let acl = dir.join("acl");
    std::fs::write(&acl, ACL_FILE).unwrap();
    start_broker(|c| c.security.acl_file = Some(acl.clone())).await
}

fn as_user(user: &str, id: &str) -> Connect {
    let mut c = connect_packet(id, true);
    c.username = Some(user.into());
    c
}

#[tokio::test]
async fn denied_subscription_gets_0x80_while_others_are_granted() {
    let dir = temp_dir("acl-sub");
    let broker = acl_broker(&dir).await;
    let (mut reader, ack) =
        RawClient::connect_with(broker.local_addr(), as_user("reader", "r1")).await;
    assert_eq!(ack.code, ConnectReturnCode::Accepted);
    let codes = reader
        .subscribe(
            1,
            &[
                ("sensors/#", QoS::AtLeastOnce),
                ("other/x", QoS::AtMostOnce),
                ("sensors/private/#", QoS::AtMostOnce),
                ("devices/r1/#", QoS::ExactlyOnce),
            ],
        )
        .await;
    assert_eq!(
        codes,
        vec![
            SubAckCode::Granted(QoS::AtLeastOnce),
            SubAckCode::Failure,
            SubAckCode::Failure,
            SubAckCode::Granted(QoS::ExactlyOnce)
        ]
    );
}

#[tokio::test]
async fn hash_subscriber_never_receives_topics_it_cannot_read() {
    let dir = temp_dir("acl-hash");
    let broker = acl_broker(&dir).await;
    let addr = broker.local_addr();
    let (mut reader, _) = RawClient::connect_with(addr, as_user("reader", "r1")).await;
    assert_eq!(
        reader.subscribe(1, &[("#", QoS::AtMostOnce)]).await,
        vec![SubAckCode::Granted(QoS::AtMostOnce)]
    );
    let (mut writer, _) = RawClient::connect_with(addr, as_user("writer", "w1")).await;
    for topic in ["sensors/private/key", "sensors/a"] {
        writer
            .send(&publish(
                topic,
                topic.as_bytes(),
                QoS::AtLeastOnce,
                Some(1),
                false,
            ))
            .await;
        assert_eq!(writer.recv().await, Some(Packet::PubAck(1)));
    }
    let p = reader.recv_publish().await;
    assert_eq!(&*p.topic, "sensors/a");
    reader.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(broker.stats().messages.received, 2);
}

#[tokio::test]
async fn retained_messages_obey_read_rights_on_subscribe() {
    let dir = temp_dir("acl-retained");
    let broker = acl_broker(&dir).await;
    let addr = broker.local_addr();
    let (mut writer, _) = RawClient::connect_with(addr, as_user("writer", "w1")).await;
    for (pid, topic) in [(1, "sensors/private/key"), (2, "sensors/a")] {
        writer
            .send(&publish(
                topic,
                topic.as_bytes(),
                QoS::AtLeastOnce,
                Some(pid),
                true,
            ))
            .await;
        assert_eq!(writer.recv().await, Some(Packet::PubAck(pid)));
    }
    // `#` is granted because it overlaps what the reader may read; the retained messages it
    // matches are still checked one by one, like live deliveries.
    let (mut reader, _) = RawClient::connect_with(addr, as_user("reader", "r1")).await;
    assert_eq!(
        reader.subscribe(1, &[("#", QoS::AtLeastOnce)]).await,
        vec![SubAckCode::Granted(QoS::AtLeastOnce)]
    );
    let p = reader.recv_publish().await;
    assert_eq!(&*p.topic, "sensors/a");
    assert!(
        p.retain,
        "a retained message is sent with RETAIN=1 [MQTT-3.3.1-8]"
    );
    reader.expect_silence(Duration::from_millis(300)).await;
    // Anonymous clients may read public/# only: no retained sensor message reaches them.
    let (mut anon, _) = RawClient::connect(addr, "anon-retained", true).await;
    assert_eq!(
        anon.subscribe(1, &[("#", QoS::AtMostOnce)]).await,
        vec![SubAckCode::Granted(QoS::AtMostOnce)]
    );
    anon.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(broker.stats().messages.retained, 2);
}

#[tokio::test]
async fn anonymous_connects_do_not_reset_the_failed_login_delay() {
    let broker = start_broker(|c| {
        c.security.allow_anonymous = true;
        c.security.users = vec![UserConfig {
            username: "u".into(),
            password_hash: hash_password(b"p"),
        }];
        c.security.auth_failure_delay = mqtt_broker::config::ConfigDuration::millis(150);
    })
    .await;
    let addr = broker.local_addr();
    for _ in 0..2 {
        assert_eq!(
            connack(addr, login("u", "bad")).await,
            ConnectReturnCode::BadUsernameOrPassword
        );
        // An anonymous connect from the same address succeeds but proves nothing.
        assert_eq!(
            connack(addr, connect_packet("", true)).await,
            ConnectReturnCode::Accepted
        );
    }
    // Third failure in a row from this address: 150 ms × 4.
    let t = Instant::now();
    connack(addr, login("u", "bad")).await;
    assert!(
        t.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn denied_publish_is_acknowledged_and_dropped() {
    let dir = temp_dir("acl-pub");
    let broker = acl_broker(&dir).await;
    let addr = broker.local_addr();
    let (mut anon_sub, _) = RawClient::connect(addr, "anon-sub", true).await;
    anon_sub
        .subscribe(1, &[("public/#", QoS::AtMostOnce)])
        .await;
    let (mut reader, _) = RawClient::connect_with(addr, as_user("reader", "r1")).await;
    // reader has no write rights on public/: QoS 1 and QoS 2 flows still complete.
    reader
        .send(&publish(
            "public/x",
            b"no",
            QoS::AtLeastOnce,
            Some(5),
            false,
        ))
        .await;
    assert_eq!(reader.recv().await, Some(Packet::PubAck(5)));
    reader.publish_qos2("public/x", b"no", 6).await;
    anon_sub.expect_silence(Duration::from_millis(300)).await;
    // The %c pattern lets a client use its own device tree.
    let (mut dev, _) = RawClient::connect_with(addr, as_user("reader", "dev7")).await;
    dev.subscribe(1, &[("devices/dev7/#", QoS::AtMostOnce)])
        .await;
    dev.send(&publish(
        "devices/dev7/cmd",
        b"ok",
        QoS::AtMostOnce,
        None,
        false,
    ))
    .await;
    assert_eq!(&dev.recv_publish().await.payload[..], b"ok");
}

#[tokio::test]
async fn inline_acl_rules_first_match_then_default() {
    let broker = start_broker(|c| {
        c.security.acl = serde_yaml_ng::from_str(
            "- {deny: subscribe, topic: 'secret/#'}\n- {allow: all, topic: 'open/#'}\n- {allow: publish, topic: 'in/%c', user: dev}\n",
        )
        .unwrap();
    })
    .await;
    let addr = broker.local_addr();
    let (mut c, _) = RawClient::connect_with(addr, as_user("dev", "d1")).await;
    let codes = c
        .subscribe(
            1,
            &[
                ("secret/x", QoS::AtMostOnce),
                ("open/x", QoS::AtMostOnce),
                ("elsewhere", QoS::AtMostOnce),
            ],
        )
        .await;
    // No rule decides "elsewhere": the default is deny once rules exist.
    assert_eq!(
        codes,
        vec![
            SubAckCode::Failure,
            SubAckCode::Granted(QoS::AtMostOnce),
            SubAckCode::Failure
        ]
    );
    let (mut watcher, _) = RawClient::connect_with(addr, as_user("dev", "w")).await;
    watcher.subscribe(1, &[("open/#", QoS::AtMostOnce)]).await;
    c.send(&publish("open/y", b"1", QoS::AtMostOnce, None, false))
        .await;
    assert_eq!(&watcher.recv_publish().await.payload[..], b"1");
}

#[tokio::test]
async fn acl_default_decides_only_what_no_authorizer_decides() {
    use mqtt_broker::auth::acl::AclDefault;
    // Inline rules with `acl_default: allow`: only the deny rule refuses.
    let broker = start_broker(|c| {
        c.security.acl =
            serde_yaml_ng::from_str("- {deny: subscribe, topic: 'secret/#'}\n").unwrap();
        c.security.acl_default = Some(AclDefault::Allow);
    })
    .await;
    let (mut c, _) = RawClient::connect(broker.local_addr(), "d-allow", true).await;
    assert_eq!(
        c.subscribe(
            1,
            &[("secret/x", QoS::AtMostOnce), ("other/x", QoS::AtMostOnce)]
        )
        .await,
        vec![SubAckCode::Failure, SubAckCode::Granted(QoS::AtMostOnce)]
    );
    // No rules at all and `acl_default: deny`: nothing is allowed.
    let broker = start_broker(|c| c.security.acl_default = Some(AclDefault::Deny)).await;
    let (mut c, _) = RawClient::connect(broker.local_addr(), "d-deny", true).await;
    assert_eq!(
        c.subscribe(1, &[("any/x", QoS::AtMostOnce)]).await,
        vec![SubAckCode::Failure]
    );
    // Next to an ACL file an inline allow cannot widen what the file grants, and
    // `acl_default: allow` changes nothing: the file denies what it does not grant.
    let dir = temp_dir("acl-default");
    let acl = dir.join("acl");
    std::fs::write(&acl, ACL_FILE).unwrap();
    let broker = start_broker(|c| {
        c.security.acl_file = Some(acl.clone());
        c.security.acl = serde_yaml_ng::from_str("- {allow: all, topic: 'extra/#'}\n").unwrap();
        c.security.acl_default = Some(AclDefault::Allow);
    })
    .await;
    let (mut r, _) = RawClient::connect_with(broker.local_addr(), as_user("reader", "r9")).await;
    assert_eq!(
        r.subscribe(
            1,
            &[("extra/x", QoS::AtMostOnce), ("sensors/a", QoS::AtMostOnce)]
        )
        .await,
        vec![SubAckCode::Failure, SubAckCode::Granted(QoS::AtMostOnce)]
    );
}

#[test]
fn check_config_names_the_key_of_a_missing_file() {
    let dir = temp_dir("check");
    let cfg = dir.join("broker.yaml");
    for (yaml, file, key) in [
        (
            "security:\n  acl_file: nowhere.acl\n",
            "nowhere.acl",
            "security.acl_file",
        ),
        (
            "security:\n  password_file: nope\n",
            "nope",
            "security.password_file",
        ),
        (
            "admin:\n  token_file: no-token\n",
            "no-token",
            "admin.token_file",
        ),
        (
            "plugins:\n  - name: auth\n    path: missing.wasm\n",
            "missing.wasm",
            "plugin auth: `path`",
        ),
    ] {
        std::fs::write(&cfg, yaml).unwrap();
        let out = Command::new(BIN)
            .arg("--check-config")
            .arg(&cfg)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{yaml}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(file) && err.contains(key), "{yaml}: {err}");
    }
}

/// The broker binary at trace level, with failed and successful logins: no password (nor
/// its hash) ever reaches the log.
#[tokio::test]
async fn passwords_never_reach_the_log_even_at_trace_level() {
    let dir = temp_dir("nolog");
    let port = free_port();
    let hash = hash_password(b"right-Pa55word");
    let cfg = dir.join("broker.yaml");
    std::fs::write(
        &cfg,
        format!(
            "server: {{host: 127.0.0.1, port: {port}}}\nadmin: {{enabled: false}}\nlog: {{level: trace}}\nsecurity:\n  require_auth: true\n  auth_failure_delay: 1ms\n  users:\n    - {{username: dana, password_hash: \"{hash}\"}}\n"
        ),
    )
    .unwrap();
    let log = dir.join("broker.log");
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .env_remove("RUST_LOG")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.join("broker.err")).unwrap())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "broker did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        connack(addr, login("dana", "wrong-Pa55word")).await,
        ConnectReturnCode::BadUsernameOrPassword
    );
    assert_eq!(
        connack(addr, login("dana", "right-Pa55word")).await,
        ConnectReturnCode::Accepted
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap()
        + &std::fs::read_to_string(dir.join("broker.err")).unwrap();
    assert!(
        text.contains("authentication failed") && text.contains("dana"),
        "the failure is logged with the user name: {text}"
    );
    for secret in ["wrong-Pa55word", "right-Pa55word", hash.as_str()] {
        assert!(!text.contains(secret), "{secret} leaked into the log");
    }
}
