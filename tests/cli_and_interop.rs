//! The `mqtt-broker` binary as an operator runs it, and interoperability with Mosquitto's
//! own command-line clients (`mosquitto_pub` / `mosquitto_sub`, Debian package
//! `mosquitto-clients`, installed by `.ci/run`).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-broker");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn require(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is required (apt-get install mosquitto-clients; .ci/run does this)"
    );
}

/// Runs the broker binary on a free loopback port; killed on drop.
struct BrokerProcess {
    child: Child,
    port: u16,
}

impl BrokerProcess {
    fn start(extra_yaml: &str) -> BrokerProcess {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("mqtt-broker-test-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("broker.yaml");
        std::fs::write(
            &cfg,
            format!("server:\n  host: 127.0.0.1\n  port: {port}\n{extra_yaml}"),
        )
        .unwrap();
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "broker did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        BrokerProcess { child, port }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn version_and_help() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--config") && help.contains("--check-config"),
        "{help}"
    );
}

#[test]
fn check_config_accepts_example_and_prints_effective_config() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/broker.yaml");
    let out = Command::new(BIN)
        .args(["--check-config", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("max_connections"), "{printed}");
    assert!(printed.contains("listeners"), "{printed}");
}

#[test]
fn check_config_rejects_unknown_key_with_line_and_exit_1() {
    let dir = std::env::temp_dir().join(format!("mqtt-broker-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "server:\n  port: 1883\n  max_conections: 5\n").unwrap();
    let out = Command::new(BIN)
        .arg("--check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("max_conections") && err.contains("line 3"),
        "{err}"
    );
    std::fs::write(&bad, "server:\n  port: 0\n").unwrap();
    let out = Command::new(BIN)
        .arg("--check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.port"));
}

#[test]
fn invalid_config_refuses_to_start() {
    let dir = std::env::temp_dir().join(format!("mqtt-broker-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "performance:\n  inflight_window_size: nope\n").unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("inflight_window_size"));
}

/// The README's "Done when": a persistent QoS 2 subscriber on `sensors/#` and a retained
/// QoS 2 publish, with Mosquitto's own clients.
#[test]
fn mosquitto_clients_qos2_retained_roundtrip() {
    require("mosquitto_sub");
    require("mosquitto_pub");
    let broker = BrokerProcess::start("");
    let port = broker.port.to_string();
    let mut sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "sensors/#",
            "-q",
            "2",
            "-c",
            "-i",
            "probe",
            "-v",
            "-C",
            "2",
            "-W",
            "10",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the subscriber's session exists (its SUBACK is not observable from here).
    std::thread::sleep(Duration::from_millis(500));
    for (topic, msg) in [("sensors/a", "25.5"), ("sensors/b", "40.1")] {
        let st = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-t",
                topic,
                "-m",
                msg,
                "-q",
                "2",
                "-r",
            ])
            .status()
            .unwrap();
        assert!(st.success());
    }
    let mut lines = Vec::new();
    let reader = BufReader::new(sub.stdout.take().unwrap());
    for line in reader.lines() {
        lines.push(line.unwrap());
    }
    assert!(sub.wait().unwrap().success());
    assert_eq!(lines, vec!["sensors/a 25.5", "sensors/b 40.1"]);

    // A new subscriber gets the retained values.
    let out = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "sensors/a",
            "-C",
            "1",
            "-W",
            "5",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "25.5");
}

/// Messages published while a persistent `mosquitto_sub -c` session is offline arrive when it
/// reconnects.
#[test]
fn mosquitto_persistent_session_receives_offline_messages() {
    require("mosquitto_sub");
    let broker = BrokerProcess::start("");
    let port = broker.port.to_string();
    let sub_args = [
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-t",
        "offline/#",
        "-q",
        "1",
        "-c",
        "-i",
        "keeper",
        "-W",
        "3",
    ];
    // First run registers the session and exits on the -W timeout.
    let _ = Command::new("mosquitto_sub")
        .args(sub_args)
        .args(["-C", "1"])
        .output()
        .unwrap();
    for i in 0..3 {
        let st = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-t",
                "offline/x",
                "-m",
                &i.to_string(),
                "-q",
                "1",
            ])
            .status()
            .unwrap();
        assert!(st.success());
    }
    let out = Command::new("mosquitto_sub")
        .args(sub_args)
        .args(["-C", "3"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n1\n2\n");
}
