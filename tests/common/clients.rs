//! Debian's `mosquitto_pub` / `mosquitto_sub` as test peers: a check that a tool is
//! installed (failing with the install command, never skipping) and a command aimed at a
//! test broker.

use mqtt_broker::BrokerHandle;
use std::process::Stdio;

/// Fails with an install hint when `tool` is not on PATH.
pub fn require(tool: &str) {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{tool} is required (apt-get install mosquitto-clients; .ci/run installs it)"
    );
}

/// `mosquitto_pub` or `mosquitto_sub` aimed at `broker`, with `args` added; its output is
/// piped and the process is killed when the command's child is dropped.
pub fn mosquitto(tool: &str, broker: &BrokerHandle, args: &[&str]) -> tokio::process::Command {
    require(tool);
    let mut cmd = tokio::process::Command::new(tool);
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &broker.local_addr().port().to_string(),
    ])
    .args(args)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    cmd
}
