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

/// The open-files warning appears only when connections really come near the limit, and
/// says what to do; at start a limit below `server.max_connections` is only noted at info
/// level (issue 21: ordinary use logs no warnings that are not problems).
#[test]
fn open_files_warning_only_near_the_limit() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("mqtt-broker-nofile-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("broker.yaml");
    std::fs::write(
        &cfg,
        format!("server:\n  host: 127.0.0.1\n  port: {port}\n  connect_timeout: 30s\n"),
    )
    .unwrap();
    // 120 files: 64 are kept back, so about 56 connections fit; 90 % of that is 51.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 120 && exec {BIN} --config {}",
            cfg.display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "broker did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut lines = Vec::new();
    let drain = |lines: &mut Vec<String>, wait: Duration| {
        let until = Instant::now() + wait;
        while let Ok(l) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            lines.push(l);
        }
    };
    drain(&mut lines, Duration::from_millis(300));
    assert!(
        !lines.iter().any(|l| l.contains("WARN")),
        "a warning at start: {lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("open-files limit caps connections")),
        "{lines:#?}"
    );
    // 40 connections: still far from it.
    let mut held: Vec<std::net::TcpStream> = (0..40)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    drain(&mut lines, Duration::from_millis(300));
    assert!(!lines
        .iter()
        .any(|l| l.contains("near the open-files limit")));
    // 52: within 10 % of what fits.
    held.extend((0..12).map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap()));
    drain(&mut lines, Duration::from_secs(1));
    let warned: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("near the open-files limit"))
        .collect();
    assert_eq!(warned.len(), 1, "{lines:#?}");
    assert!(
        warned[0].contains("WARN") && warned[0].contains("LimitNOFILE"),
        "{}",
        warned[0]
    );
    drop(held);
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits until `port` on loopback accepts connections.
fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "broker did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `f` holds (checked every 20 ms, at most 10 s).
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sighup(child: &Child) {
    let st = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// Mosquitto-style command line: `-p PORT` (kept across a reload of the file), `-v`
/// (debug), `--log-file` (reopened on SIGHUP, for logrotate) and `--pid-file`.
#[test]
fn command_line_port_verbose_log_file_and_pid_file() {
    require("mosquitto_pub");
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("mqtt-broker-cli-{port}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("broker.yaml");
    // The file says another port; -p wins, also after the reload below.
    std::fs::write(&cfg, "server:\n  host: 127.0.0.1\n  port: 1\n").unwrap();
    let log = dir.join("broker.log");
    let pid = dir.join("broker.pid");
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .args(["-p", &port.to_string(), "-v", "--log-file"])
        .arg(&log)
        .arg("--pid-file")
        .arg(&pid)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port);
    wait_until("the pid file", || {
        std::fs::read_to_string(&pid).is_ok_and(|t| t.trim() == child.id().to_string())
    });
    let publish = |topic: &str| {
        let st = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                topic,
                "-m",
                "x",
            ])
            .status()
            .unwrap();
        assert!(st.success());
    };
    publish("before/rotate");
    wait_until("the connection in the log file", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("client connected"))
    });
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("DEBUG"), "-v logs at debug level:\n{text}");

    // logrotate: move the file away, SIGHUP; new lines go to a new file at the old path.
    let rotated = dir.join("broker.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    std::fs::write(
        &cfg,
        "server:\n  host: 127.0.0.1\n  port: 1\nlimits:\n  max_subscriptions: 50\n",
    )
    .unwrap();
    sighup(&child);
    wait_until("the reopened log file", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("configuration reloaded"))
    });
    // -p survived the reload: the broker still listens there.
    publish("after/rotate");
    wait_until("the second connection in the new file", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("client connected"))
    });
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(!old.contains("configuration reloaded"), "{old}");

    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    assert!(child.wait().unwrap().success());
    assert!(!pid.exists(), "the pid file is removed at exit");
}

/// `log.syslog: true` sends each line to the syslog socket as an RFC 3164 datagram
/// (facility daemon, severity from the level), which journald also reads.
#[test]
fn syslog_receives_log_lines_with_their_severity() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("mqtt-broker-syslog-{port}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket_path = dir.join("log.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let cfg = dir.join("broker.yaml");
    std::fs::write(
        &cfg,
        format!(
            "server:\n  host: 127.0.0.1\n  port: {port}\nlog:\n  syslog: true\n  syslog_socket: {}\n",
            socket_path.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    while !got
        .iter()
        .any(|l: &String| l.contains("starting mqtt-broker"))
    {
        let n = socket.recv(&mut buf).expect("a syslog datagram");
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let _ = child.kill();
    let _ = child.wait();
    let line = got
        .iter()
        .find(|l| l.contains("starting mqtt-broker"))
        .unwrap();
    // <30> = facility daemon (3) * 8 + severity info (6).
    assert!(
        line.starts_with(&format!("<30>mqtt-broker[{}]: ", child.id())),
        "{line}"
    );
}
