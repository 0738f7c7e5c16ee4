//! Logging setup: `tracing` to stderr, text or JSON, with the level and the format both
//! changeable by a live reload. `RUST_LOG`, when set, overrides the configured level.
//!
//! Owns the global subscriber; must not import anything but the config schema.

use crate::config::{LogConfig, LogFormat};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use tracing::span;
use tracing::subscriber::Subscriber;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

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
    EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the global subscriber (once per process; later calls do nothing).
pub fn init(config: &LogConfig) {
    if CONTROL.get().is_some() {
        return;
    }
    let json: &'static AtomicBool =
        Box::leak(Box::new(AtomicBool::new(config.format == LogFormat::Json)));
    let (filter, handle) = reload::Layer::new(filter_for(config));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let switch = Switch {
        json,
        text: fmt::layer().with_writer(std::io::stderr).with_ansi(ansi),
        json_layer: fmt::layer().json().with_writer(std::io::stderr),
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
    if !control.env_override {
        let _ = control.filter.reload(filter_for(config));
    }
}
