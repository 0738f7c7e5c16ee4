//! Logging setup: `tracing` to stderr or a file (`log.file`), and optionally to the local
//! syslog daemon or journald (`log.syslog`), text or JSON, with the level, the format and
//! the destinations changeable by a live reload (which also reopens the file, for
//! logrotate). `RUST_LOG`, when set, overrides the configured level.
//!
//! Owns the global subscriber; must not import anything but the config schema.

use crate::config::{LogConfig, LogFormat};
use parking_lot::Mutex;
use std::fs::File;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use tracing::subscriber::Subscriber;
use tracing::{span, Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

/// Where formatted lines go: stderr or a file, plus syslog when enabled. Swapped by a
/// reload; a line is written whole, in one call, so lines never interleave.
struct Sink {
    file: Mutex<Option<(PathBuf, File)>>,
    syslog: Mutex<Option<(PathBuf, UnixDatagram)>>,
}

static SINK: Sink = Sink {
    file: parking_lot::const_mutex(None),
    syslog: parking_lot::const_mutex(None),
};

impl Sink {
    /// Opens (or reopens) the destinations a `log:` section names. A file or socket that
    /// cannot be opened is reported on stderr and the previous destination is kept.
    fn configure(&self, config: &LogConfig) {
        match &config.file {
            Some(path) => match open_log_file(path) {
                Ok(f) => *self.file.lock() = Some((path.clone(), f)),
                Err(e) => eprintln!("mqtt-broker: cannot open log.file {}: {e}", path.display()),
            },
            None => *self.file.lock() = None,
        }
        if config.syslog {
            match UnixDatagram::unbound() {
                Ok(s) => *self.syslog.lock() = Some((config.syslog_socket.clone(), s)),
                Err(e) => eprintln!("mqtt-broker: cannot create a syslog socket: {e}"),
            }
        } else {
            *self.syslog.lock() = None;
        }
    }

    fn emit(&self, line: &[u8], level: Level) {
        match &mut *self.file.lock() {
            Some((_, f)) => {
                let _ = f.write_all(line);
            }
            None => {
                let _ = std::io::stderr().write_all(line);
            }
        }
        if let Some((path, socket)) = &*self.syslog.lock() {
            // RFC 3164 over the local socket (journald reads it too): facility daemon (3).
            let severity = match level {
                Level::ERROR => 3,
                Level::WARN => 4,
                Level::INFO => 6,
                _ => 7,
            };
            let text = String::from_utf8_lossy(line);
            let msg = format!(
                "<{}>mqtt-broker[{}]: {}",
                3 * 8 + severity,
                std::process::id(),
                text.trim_end()
            );
            // A syslog daemon that is down must not stall the broker: datagrams are dropped.
            let _ = socket.send_to(msg.as_bytes(), path);
        }
    }
}

fn open_log_file(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Buffers one formatted event and hands it to the sink whole when dropped.
struct LineWriter {
    buf: Vec<u8>,
    level: Level,
}

impl Write for LineWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            SINK.emit(&self.buf, self.level);
        }
    }
}

/// The `MakeWriter` of both formatters.
#[derive(Clone, Copy)]
struct ToSink;

impl<'a> MakeWriter<'a> for ToSink {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            buf: Vec::new(),
            level: Level::INFO,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> LineWriter {
        LineWriter {
            buf: Vec::new(),
            level: *meta.level(),
        }
    }
}

struct Control {
    filter: reload::Handle<EnvFilter, Registry>,
    json: &'static AtomicBool,
    env_override: bool,
}

static CONTROL: OnceLock<Control> = OnceLock::new();

/// Sends events to the text or the JSON formatter, whichever is selected now. Span
/// callbacks go to both, so spans opened before a switch still format correctly after it.
struct Switch<A, B> {
    json: &'static AtomicBool,
    text: A,
    json_layer: B,
}

impl<S, A, B> Layer<S> for Switch<A, B>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    A: Layer<S>,
    B: Layer<S>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        self.text.on_new_span(attrs, id, ctx.clone());
        self.json_layer.on_new_span(attrs, id, ctx);
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        self.text.on_record(id, values, ctx.clone());
        self.json_layer.on_record(id, values, ctx);
    }

    fn on_enter(&self, id: &span::Id, ctx: Context<'_, S>) {
        self.text.on_enter(id, ctx.clone());
        self.json_layer.on_enter(id, ctx);
    }

    fn on_exit(&self, id: &span::Id, ctx: Context<'_, S>) {
        self.text.on_exit(id, ctx.clone());
        self.json_layer.on_exit(id, ctx);
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        self.text.on_close(id.clone(), ctx.clone());
        self.json_layer.on_close(id, ctx);
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        if self.json.load(Ordering::Relaxed) {
            self.json_layer.on_event(event, ctx);
        } else {
            self.text.on_event(event, ctx);
        }
    }
}

fn filter_for(config: &LogConfig) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let filter = EnvFilter::try_new(&config.level).unwrap_or_else(|_| EnvFilter::new("info"));
        if config.level.contains("rustls") {
            return filter;
        }
        // rustls warns about every client that sends an IP address as SNI (OpenSSL-based
        // clients such as Mosquitto's do when they connect by IP): ordinary use, not a
        // problem. Its handshake parser is only heard from at error level unless the
        // operator names rustls in `log.level`.
        match "rustls::msgs::handshake=error".parse() {
            Ok(d) => filter.add_directive(d),
            Err(_) => filter,
        }
    })
}

/// Installs the global subscriber (once per process; later calls do nothing).
pub fn init(config: &LogConfig) {
    if CONTROL.get().is_some() {
        return;
    }
    let json: &'static AtomicBool =
        Box::leak(Box::new(AtomicBool::new(config.format == LogFormat::Json)));
    let (filter, handle) = reload::Layer::new(filter_for(config));
    SINK.configure(config);
    // Colours only for a terminal, never in a file or syslog (also not after a reload
    // switches to one).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && config.file.is_none()
        && !config.syslog;
    let switch = Switch {
        json,
        text: fmt::layer().with_writer(ToSink).with_ansi(ansi),
        json_layer: fmt::layer().json().with_writer(ToSink),
    };
    if tracing_subscriber::registry()
        .with(filter)
        .with(switch)
        .try_init()
        .is_ok()
    {
        let _ = CONTROL.set(Control {
            filter: handle,
            json,
            env_override: std::env::var_os("RUST_LOG").is_some(),
        });
    }
}

/// Applies a reloaded `log:` section (a no-op when the embedder installed its own logging).
pub fn apply(config: &LogConfig) {
    let Some(control) = CONTROL.get() else {
        return;
    };
    control
        .json
        .store(config.format == LogFormat::Json, Ordering::Relaxed);
    SINK.configure(config);
    if !control.env_override {
        let _ = control.filter.reload(filter_for(config));
    }
}
