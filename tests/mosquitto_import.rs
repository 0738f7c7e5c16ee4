//! `mqtt-broker import-mosquitto` on real Mosquitto configurations: Debian's shipped
//! `mosquitto.conf` and its full example file, and the setups of Mosquitto's documentation
//! (password file + ACL file, anonymous clients with an ACL, several listeners with
//! WebSocket and TLS, per-listener connection limits with `max_keepalive` and
//! `retain_available`). For each one that can run here, Mosquitto and this broker (started
//! by its binary on the imported YAML) are run in turn on the same ports, and must accept
//! and refuse the same clients and deliver the same topics to the same users.

mod common;

use common::*;
use mqtt_broker::protocol::*;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-broker");

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mqtt-import-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `mqtt-broker import-mosquitto FILE`: (YAML, notes on stderr).
fn import(conf: &Path) -> (String, String) {
    let out = Command::new(BIN)
        .arg("import-mosquitto")
        .arg(conf)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "import failed: {stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

/// A broker process, killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_ports(ports: &[u16]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for port in ports {
        while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
            assert!(Instant::now() < deadline, "nothing listens on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Starts Mosquitto on `conf`. As root it would drop to the `mosquitto` user, who cannot
/// read the test's files, so the run copy says `user root`; it logs to stderr.
fn spawn_mosquitto(conf: &Path, stderr: Stdio) -> Child {
    let text = std::fs::read_to_string(conf).unwrap();
    let run = conf.with_extension("run.conf");
    std::fs::write(&run, format!("{text}\nuser root\nlog_dest stderr\n")).unwrap();
    Command::new("mosquitto")
        .arg("-c")
        .arg(&run)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("mosquitto is required (apt-get install mosquitto; .ci/run does this)")
}

fn mosquitto(conf: &Path, ports: &[u16]) -> Running {
    let child = spawn_mosquitto(conf, Stdio::null());
    wait_ports(ports);
    Running(child)
}

/// Starts Mosquitto and waits for its "running" log line instead of probing the port: in
/// Mosquitto 2.0.11 a connection that has come and gone leaves a listener's
/// `max_connections` one higher than configured, so a probe would skew the limits test.
fn mosquitto_unprobed(conf: &Path) -> Running {
    use std::io::{BufRead, BufReader};
    let mut child = spawn_mosquitto(conf, Stdio::piped());
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("running") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("mosquitto logged that it is running");
    Running(child)
}

fn ours(yaml: &str, dir: &Path, ports: &[u16]) -> Running {
    let file = dir.join("imported.yaml");
    std::fs::write(&file, yaml).unwrap();
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_ports(ports);
    Running(child)
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn login(id: &str, user: Option<&str>, pass: Option<&str>) -> Connect {
    let mut c = connect_packet(id, true);
    c.username = user.map(Into::into);
    c.password = pass.map(|p| bytes::Bytes::copy_from_slice(p.as_bytes()));
    c
}

/// Whether the broker accepts this CONNECT (CONNACK 0), refusing or closing otherwise.
async fn accepted(port: u16, c: Connect) -> bool {
    let mut client = RawClient::open(addr(port)).await;
    client.send(&Packet::Connect(Box::new(c))).await;
    matches!(
        client.recv_within(WAIT).await,
        Ok(Some(Packet::ConnAck(a))) if a.code == ConnectReturnCode::Accepted
    )
}

/// For each user, which of `topics` it receives when `admin` publishes there, and which
/// of its own publications reach `admin` (subscribed to `#`).
async fn deliveries(
    port: u16,
    admin: (&str, &str),
    users: &[(Option<&str>, Option<&str>)],
    topics: &[&str],
) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let (mut watcher, ack) =
        RawClient::connect_with(addr(port), login("watcher", Some(admin.0), Some(admin.1))).await;
    assert_eq!(ack.code, ConnectReturnCode::Accepted);
    watcher.subscribe(1, &[("#", QoS::AtMostOnce)]).await;
    for (i, (user, pass)) in users.iter().enumerate() {
        let name = user.unwrap_or("anonymous");
        let (mut sub, ack) =
            RawClient::connect_with(addr(port), login(&format!("u{i}"), *user, *pass)).await;
        assert_eq!(ack.code, ConnectReturnCode::Accepted, "{name}");
        let filters: Vec<(&str, QoS)> = topics.iter().map(|t| (*t, QoS::AtMostOnce)).collect();
        sub.subscribe(1, &filters).await;
        let (mut publ, _) = RawClient::connect_with(
            addr(port),
            login(&format!("p{i}"), Some(admin.0), Some(admin.1)),
        )
        .await;
        for (n, t) in topics.iter().enumerate() {
            publ.send(&publish(
                t,
                b"from-admin",
                QoS::AtLeastOnce,
                Some(n as u16 + 1),
                false,
            ))
            .await;
            assert_eq!(publ.recv().await, Some(Packet::PubAck(n as u16 + 1)));
        }
        // The user publishes too; the admin's watcher tells what got through.
        for (n, t) in topics.iter().enumerate() {
            sub.send(&publish(
                t,
                name.as_bytes(),
                QoS::AtLeastOnce,
                Some(n as u16 + 1),
                false,
            ))
            .await;
        }
        let until = tokio::time::Instant::now() + Duration::from_millis(400);
        while let Ok(Some(p)) = sub
            .recv_within(until.saturating_duration_since(tokio::time::Instant::now()))
            .await
        {
            if let Packet::Publish(p) = p {
                if &p.payload[..] == b"from-admin" {
                    seen.insert(format!("{name} reads {}", p.topic));
                }
            }
        }
        let until = tokio::time::Instant::now() + Duration::from_millis(300);
        while let Ok(Some(p)) = watcher
            .recv_within(until.saturating_duration_since(tokio::time::Instant::now()))
            .await
        {
            if let Packet::Publish(p) = p {
                if &p.payload[..] == name.as_bytes() {
                    seen.insert(format!("{name} writes {}", p.topic));
                }
            }
        }
    }
    seen
}

fn write_passwords(dir: &Path) -> PathBuf {
    let file = dir.join("passwd");
    for (i, (user, pass)) in [("admin", "adminpw"), ("alice", "alicepw")]
        .iter()
        .enumerate()
    {
        let mut cmd = Command::new(BIN);
        cmd.arg("passwd");
        if i == 0 {
            cmd.arg("-c");
        }
        let st = cmd
            .arg("-b")
            .arg(&file)
            .args([user, pass])
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
    }
    file
}

fn write_acl(dir: &Path) -> PathBuf {
    let file = dir.join("acl");
    std::fs::write(
        &file,
        "# anonymous clients\ntopic read public/#\n\nuser alice\ntopic readwrite alice/#\ntopic read public/#\n\nuser admin\ntopic readwrite #\n",
    )
    .unwrap();
    file
}

/// A directory with the password and ACL files and a mosquitto.conf with one listener on
/// a free port that uses them: (directory, port, conf).
fn password_and_acl_setup(name: &str, allow_anonymous: bool) -> (PathBuf, u16, PathBuf) {
    let dir = temp_dir(name);
    let port = free_port();
    let passwd = write_passwords(&dir);
    let acl = write_acl(&dir);
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "# /etc/mosquitto/conf.d/auth.conf\nlistener {port} 127.0.0.1\nallow_anonymous {allow_anonymous}\npassword_file {}\nacl_file {}\n",
            passwd.display(),
            acl.display()
        ),
    )
    .unwrap();
    (dir, port, conf)
}

const TOPICS: [&str; 4] = ["public/news", "alice/data", "secret/x", "bob/data"];

/// Mosquitto's documented "password file and ACL" setup: the same logins succeed and fail,
/// and every user reads and writes the same topics on both brokers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_file_and_acl_behave_as_in_mosquitto() {
    let (dir, port, conf) = password_and_acl_setup("passwd-acl", false);
    let (yaml, notes) = import(&conf);
    assert!(
        yaml.contains("password_file") && yaml.contains("acl_file"),
        "{yaml}"
    );
    assert!(notes.contains("0 option(s)"), "nothing dropped: {notes}");

    let logins = [
        (None, None),
        (Some("alice"), Some("alicepw")),
        (Some("alice"), Some("wrong")),
        (Some("mallory"), Some("x")),
        (Some("admin"), Some("adminpw")),
    ];
    let users = [(Some("alice"), Some("alicepw"))];
    let mut results = Vec::new();
    for broker in ["mosquitto", "ours"] {
        let _running = match broker {
            "mosquitto" => mosquitto(&conf, &[port]),
            _ => ours(&yaml, &dir, &[port]),
        };
        let mut accept = Vec::new();
        for (i, (u, p)) in logins.iter().enumerate() {
            accept.push(accepted(port, login(&format!("c{i}"), *u, *p)).await);
        }
        let seen = deliveries(port, ("admin", "adminpw"), &users, &TOPICS).await;
        results.push((accept, seen));
    }
    assert_eq!(results[0].0, vec![false, true, false, false, true]);
    assert_eq!(results[0], results[1], "mosquitto vs ours");
    assert!(results[1].1.contains("alice reads alice/data"));
    assert!(!results[1].1.contains("alice reads secret/x"));
}

/// Anonymous clients next to named ones, with an ACL and no password file: the anonymous
/// section applies to clients without a user name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_clients_with_an_acl_behave_as_in_mosquitto() {
    let (dir, port, conf) = password_and_acl_setup("anon-acl", true);
    let (yaml, _) = import(&conf);
    let users = [(None, None), (Some("alice"), Some("alicepw"))];
    let mut results = Vec::new();
    for broker in ["mosquitto", "ours"] {
        let _running = match broker {
            "mosquitto" => mosquitto(&conf, &[port]),
            _ => ours(&yaml, &dir, &[port]),
        };
        let anonymous = accepted(port, login("anon", None, None)).await;
        let seen = deliveries(port, ("admin", "adminpw"), &users, &TOPICS).await;
        results.push((anonymous, seen));
    }
    assert!(results[0].0);
    assert!(results[0].1.contains("anonymous reads public/news"));
    assert_eq!(results[0], results[1], "mosquitto vs ours");
}

/// Several listeners: plain MQTT, WebSocket and TLS, each reachable on both brokers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_listeners_with_websocket_and_tls_as_in_mosquitto() {
    let pki = TestPki::new("import-listeners");
    let dir = pki.dir.clone();
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "per_listener_settings false\nallow_anonymous true\n\nlistener {p1} 127.0.0.1\n\nlistener {p2} 127.0.0.1\nprotocol websockets\n\nlistener {p3} 127.0.0.1\ncertfile {}\nkeyfile {}\n",
            pki.path("server.pem").display(),
            pki.path("server.key").display()
        ),
    )
    .unwrap();
    let (yaml, _) = import(&conf);
    assert!(
        yaml.contains("protocol: ws") && yaml.contains("protocol: tls"),
        "{yaml}"
    );
    for broker in ["mosquitto", "ours"] {
        let _running = match broker {
            "mosquitto" => mosquitto(&conf, &[p1, p2, p3]),
            _ => ours(&yaml, &dir, &[p1, p2, p3]),
        };
        assert!(
            accepted(p1, connect_packet("tcp", true)).await,
            "{broker} tcp"
        );
        let ws = ws_upgrade(
            tokio::net::TcpStream::connect(addr(p2)).await.unwrap(),
            &format!("ws://127.0.0.1:{p2}/mqtt"),
        )
        .await
        .unwrap_or_else(|e| panic!("{broker} websocket: {e}"));
        let (_, ack) = RawClient::connect_over(ws, connect_packet("ws", true)).await;
        assert_eq!(ack.code, ConnectReturnCode::Accepted, "{broker} ws");
        let tls = tls_stream(addr(p3), pki.client_config(None))
            .await
            .unwrap_or_else(|e| panic!("{broker} tls: {e}"));
        let (_, ack) = RawClient::connect_over(tls, connect_packet("tls", true)).await;
        assert_eq!(ack.code, ConnectReturnCode::Accepted, "{broker} tls");
    }
}

/// A listener's `max_connections`, `retain_available false` and `max_keepalive` (which in
/// Mosquitto 2.0 only concerns MQTT 5 clients): the same connections are refused and the
/// same PUBLISH closes the connection on both brokers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_keepalive_and_retain_as_in_mosquitto() {
    let dir = temp_dir("limits");
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nmax_connections 2\nallow_anonymous true\nmax_keepalive 60\nretain_available false\n"),
    )
    .unwrap();
    let (yaml, notes) = import(&conf);
    assert!(
        notes.contains("max_keepalive 60") && notes.contains("1 option(s)"),
        "{notes}"
    );
    let mut results = Vec::new();
    for broker in ["mosquitto", "ours"] {
        let _running = match broker {
            "mosquitto" => mosquitto_unprobed(&conf),
            _ => ours(&yaml, &dir, &[port]),
        };
        let keep = |id: &str, ka: u16| {
            let mut c = connect_packet(id, true);
            c.keep_alive = ka;
            c
        };
        let (mut a, _) = RawClient::connect_with(addr(port), keep("a", 30)).await;
        let (mut b, _) = RawClient::connect_with(addr(port), keep("b", 30)).await;
        let third = accepted(port, keep("c", 30)).await;
        a.send(&publish("t", b"x", QoS::AtLeastOnce, Some(1), false))
            .await;
        let plain = a.recv().await == Some(Packet::PubAck(1));
        b.send(&publish("t", b"x", QoS::AtLeastOnce, Some(1), true))
            .await;
        let retained_closes = matches!(b.recv_within(WAIT).await, Ok(None));
        drop(a);
        // Both sockets are closed; let the broker count them out.
        tokio::time::sleep(Duration::from_millis(300)).await;
        // max_keepalive applies to MQTT 5 clients only (mosquitto.conf(5) of 2.0.11): a
        // 3.1.1 client asking for more is accepted by both.
        let long = accepted(port, keep("long", 120)).await;
        results.push((third, plain, retained_closes, long));
    }
    assert!(!results[0].0, "over max_connections");
    assert!(results[0].1 && results[0].2 && results[0].3, "{results:?}");
    assert_eq!(results[0], results[1], "mosquitto vs ours");
}

/// Debian's shipped `/etc/mosquitto/mosquitto.conf` (local only mode with persistence and a
/// log file, plus its conf.d) and Mosquitto's full example file: both import and load.
#[test]
fn debian_default_and_example_files_import() {
    let debian = Path::new("/etc/mosquitto/mosquitto.conf");
    assert!(
        debian.exists(),
        "Debian's mosquitto package is required (apt-get install mosquitto; .ci/run does this)"
    );
    let (yaml, notes) = import(debian);
    let config = mqtt_broker::Config::parse(&yaml, Path::new("imported.yaml")).unwrap();
    assert_eq!(config.listeners[0].bind.to_string(), "127.0.0.1:1883");
    assert!(config.security.allow_anonymous, "local only mode");
    assert_eq!(
        config.persistence.storage_type,
        mqtt_broker::config::StorageType::File
    );
    assert_eq!(config.persistence.path, Path::new("/var/lib/mosquitto/"));
    assert_eq!(
        config.log.file.as_deref(),
        Some(Path::new("/var/log/mosquitto/mosquitto.log"))
    );
    assert!(notes.contains("--pid-file"), "{notes}");
    assert!(notes.contains("local only mode"), "{notes}");

    let example = Path::new("/usr/share/doc/mosquitto/examples/mosquitto.conf");
    assert!(example.exists(), "Debian's mosquitto package ships it");
    let (yaml, notes) = import(example);
    mqtt_broker::Config::parse(&yaml, Path::new("imported.yaml")).unwrap();
    assert!(!notes.contains("unknown option"), "{notes}");
}
