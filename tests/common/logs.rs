//! The broker's log lines, captured inside a test binary (tracing allows one subscriber per
//! process, so every test of the binary shares the capture and looks for its own lines).
//! `TEST_LOG=1` also prints the log while the tests run.

use std::sync::{Mutex, OnceLock};

/// Everything the broker logged so far in this test binary (installs the capture on first
/// use, at `info` for the broker).
pub fn log_buffer() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        struct W(&'static Mutex<Vec<u8>>);
        impl std::io::Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(b);
                if std::env::var_os("TEST_LOG").is_some() {
                    let _ = std::io::stderr().write_all(b);
                }
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        tracing_subscriber::fmt()
            .with_env_filter("mqtt_broker=info")
            .with_ansi(false)
            .with_writer(move || W(buf))
            .try_init()
            .expect("the log capture is the only subscriber");
        buf
    })
}

/// The captured log lines that contain every one of `needles`.
pub fn log_lines(needles: &[&str]) -> Vec<String> {
    let logs = log_buffer().lock().unwrap_or_else(|e| e.into_inner());
    String::from_utf8_lossy(&logs)
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_owned)
        .collect()
}
