//! The admin API endpoints the dashboard reads and writes beyond the original ones:
//! overview, client detail, topic tree, retained browser, live tail (Server-Sent Events),
//! plugins, effective config, reload history, config validation and apply.
//!
//! Everything here sits behind the bearer-token check of [`super::routes`] and reaches
//! the broker only through [`Control`]. The pure parts (topic tree, redaction, payload
//! views) are plain functions with unit tests.

use super::routes::{json, percent_decode, query_value};
use super::Body;
use crate::core::control::{Control, TailLimits, TailMessage};
use base64::Engine;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::info;

/// Largest config text the editor may send.
const MAX_CONFIG_BYTES: usize = 1024 * 1024;
/// Largest page of `GET /api/v1/retained`.
const MAX_RETAINED_PAGE: usize = 500;
/// Payload bytes of a retained message shown in the browser (preview and hex view).
const PREVIEW_BYTES: usize = 4096;
/// Retained topics the topic tree takes into account; beyond, it says it is partial.
const TREE_RETAINED: usize = 10_000;
/// Most messages and seconds one live tail may ask for.
const TAIL_MAX_MESSAGES: usize = 1000;
const TAIL_MAX_SECONDS: u64 = 600;
/// Defaults of a live tail.
const TAIL_DEFAULT_MESSAGES: usize = 200;
const TAIL_DEFAULT_SECONDS: u64 = 120;

/// Answers the dashboard's endpoints; 404 for any other path.
pub(super) async fn handle<B>(control: &dyn Control, req: Request<B>, query: &str) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let params = Params::parse(query);
    match (&method, path.as_str()) {
        (&Method::GET, "/api/v1/overview") => json(StatusCode::OK, &overview(control)),
        (&Method::GET, p) if p.starts_with("/api/v1/clients/") => {
            let Some(id) = percent_decode(&p["/api/v1/clients/".len()..]) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "malformed percent-encoding in the client id",
                );
            };
            match control.client_detail(&id) {
                Some(detail) => json(StatusCode::OK, &detail),
                None => json(
                    StatusCode::NOT_FOUND,
                    &json!({"error": "no connected client with this id", "id": id}),
                ),
            }
        }
        (&Method::GET, "/api/v1/topics") => {
            let filters = control.subscription_filters();
            let (retained_total, retained) = control.retained_page("", 0, TREE_RETAINED);
            let topics: Vec<Arc<str>> = retained.into_iter().map(|m| m.topic).collect();
            json(
                StatusCode::OK,
                &json!({
                    "tree": topic_tree(&filters, &topics),
                    "filters": filters.len(),
                    "retained": retained_total,
                    "partial": retained_total > topics.len(),
                }),
            )
        }
        (&Method::GET, "/api/v1/retained") => retained(control, &params),
        (&Method::GET, "/api/v1/tail") => tail(control, &params),
        (&Method::GET, "/api/v1/plugins") => json(
            StatusCode::OK,
            &json!({"plugins": control.runtime().plugins.stats()}),
        ),
        (&Method::GET, "/api/v1/config") => config(control),
        (&Method::GET, "/api/v1/reloads") => json(
            StatusCode::OK,
            &json!({"reloads": control.reload_history(), "config_path": control.config_path()}),
        ),
        (&Method::POST, "/api/v1/config/validate") => {
            let text = match read_text(req).await {
                Ok(t) => t,
                Err(r) => return *r,
            };
            match control.validate_config(&text).await {
                Ok(()) => json(StatusCode::OK, &json!({"valid": true})),
                Err(e) => json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &json!({"valid": false, "error": e}),
                ),
            }
        }
        (&Method::PUT, "/api/v1/config") => {
            let text = match read_text(req).await {
                Ok(t) => t,
                Err(r) => return *r,
            };
            info!("config apply requested through the dashboard");
            match control.apply_config(&text).await {
                Ok(applied) => json(
                    StatusCode::OK,
                    &json!({"applied": true, "generation": applied.generation, "saved_to": applied.saved_to}),
                ),
                Err(e) => json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &json!({"applied": false, "error": e, "generation": control.runtime().generation}),
                ),
            }
        }
        (
            _,
            "/api/v1/overview"
            | "/api/v1/topics"
            | "/api/v1/retained"
            | "/api/v1/tail"
            | "/api/v1/plugins"
            | "/api/v1/config"
            | "/api/v1/reloads"
            | "/api/v1/config/validate",
        ) => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

fn error(code: StatusCode, message: &str) -> Response<Body> {
    json(code, &json!({"error": message}))
}

/// Query parameters, decoded; later duplicates win.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(query: &str) -> Params {
        Params(
            query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (query_value(k), query_value(v))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A number parameter: `default` when absent, an error naming it when not a number.
    fn number(&self, key: &str, default: u64) -> Result<u64, String> {
        match self.get(key) {
            None | Some("") => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("`{key}` must be a non-negative integer")),
        }
    }
}

/// Reads a UTF-8 request body of at most [`MAX_CONFIG_BYTES`]; the error is the answer.
async fn read_text<B>(req: Request<B>) -> Result<String, Box<Response<Body>>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limited = http_body_util::Limited::new(req.into_body(), MAX_CONFIG_BYTES);
    let bytes = match limited.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            return Err(Box::new(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("cannot read the request body (at most {MAX_CONFIG_BYTES} bytes): {e}"),
            )))
        }
    };
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "the config must be UTF-8 text",
        ))
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `GET /api/v1/overview`: everything the overview page shows, in one request per tick.
fn overview(control: &dyn Control) -> Value {
    let (started, _) = control.started();
    let runtime = control.runtime();
    let plugins: Vec<Value> = runtime
        .plugins
        .stats()
        .into_iter()
        .map(|p| json!({"name": p.name, "degraded": p.degraded, "calls": p.calls, "failures": p.failures}))
        .collect();
    let drops: serde_json::Map<String, Value> = super::prometheus::drop_reasons(control.counters())
        .into_iter()
        .map(|(k, v)| (k.to_owned(), json!(v)))
        .collect();
    json!({
        "now": now_ms(),
        "stats": control.stats(),
        "ready": control.is_ready(),
        "draining": control.is_draining(),
        "generation": runtime.generation,
        "uptime_seconds": started.elapsed().as_secs(),
        "persistent_sessions": control.persistent_sessions(),
        "drops": drops,
        "plugins": plugins,
        "last_reload": control.last_reload(),
        "token_required": runtime.admin_token.is_some(),
        "bridges": control.bridges(),
    })
}

/// A payload as the dashboard shows it: its size, the first [`PREVIEW_BYTES`] in base64 (the
/// page renders text or a hex dump), and whether it is binary.
#[derive(Debug, Serialize, PartialEq, Eq)]
struct PayloadView {
    size: usize,
    preview_base64: String,
    truncated: bool,
    binary: bool,
}

impl PayloadView {
    fn of(payload: &[u8]) -> PayloadView {
        let shown = &payload[..payload.len().min(PREVIEW_BYTES)];
        PayloadView {
            size: payload.len(),
            preview_base64: base64::engine::general_purpose::STANDARD.encode(shown),
            truncated: shown.len() < payload.len(),
            binary: is_binary(shown),
        }
    }
}

/// Whether a payload should be shown as hex: not UTF-8 (allowing a character cut at the end
/// of a preview), or holding control characters other than tab and line breaks.
fn is_binary(bytes: &[u8]) -> bool {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        // A preview may end inside a multi-byte character: only that tail may be invalid.
        Err(e) if e.error_len().is_none() => match std::str::from_utf8(&bytes[..e.valid_up_to()]) {
            Ok(t) => t,
            Err(_) => return true,
        },
        Err(_) => return true,
    };
    text.chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
}

/// `GET /api/v1/retained?prefix=&offset=&limit=`.
fn retained(control: &dyn Control, params: &Params) -> Response<Body> {
    let prefix = params.get("prefix").unwrap_or("");
    let offset = match params.number("offset", 0) {
        Ok(n) => n as usize,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let limit = match params.number("limit", 50) {
        Ok(n) => (n as usize).clamp(1, MAX_RETAINED_PAGE),
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let (total, messages) = control.retained_page(prefix, offset, limit);
    let items: Vec<Value> = messages
        .iter()
        .map(|m| {
            json!({
                "topic": &*m.topic,
                "qos": m.qos as u8,
                "payload": PayloadView::of(&m.payload),
            })
        })
        .collect();
    json(
        StatusCode::OK,
        &json!({"total": total, "offset": offset, "limit": limit, "prefix": prefix, "messages": items}),
    )
}

/// `GET /api/v1/config`: the effective configuration with secrets redacted, the file it
/// came from and that file's text for the editor.
fn config(control: &dyn Control) -> Response<Body> {
    let runtime = control.runtime();
    let mut effective = serde_json::to_value(&runtime.config).unwrap_or(Value::Null);
    redact(&mut effective);
    let path = control.config_path();
    // The editor edits the file as written (comments included); it is read on each request
    // so that what is shown is what a reload would read.
    let (file, file_error) = match &path {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(text) => (Some(text), None),
            Err(e) => (None, Some(format!("cannot read {}: {e}", p.display()))),
        },
        None => (None, None),
    };
    let last = control.last_reload();
    json(
        StatusCode::OK,
        &json!({
            "generation": runtime.generation,
            "path": path,
            "file": file,
            "file_error": file_error,
            "effective": effective,
            "pending_restart": last.pending_restart,
            "dashboard_user": runtime.config.admin.dashboard_user,
        }),
    )
}

/// Whether a config key names a secret value (not a path to a file holding one).
fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    if k.ends_with("_file") || k.ends_with("_path") || k == "path" {
        return false;
    }
    [
        "password",
        "passwd",
        "secret",
        "token",
        "credential",
        "private_key",
        "api_key",
        "apikey",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// Replaces every secret value of a JSON document (at any depth, plugin `config:` maps
/// included) by `"<redacted>"`.
fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if is_secret_key(k) && !v.is_null() {
                    *v = Value::String("<redacted>".into());
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// One level of the topic tree.
#[derive(Debug, Serialize, PartialEq, Eq, Default)]
struct TopicNode {
    /// This level's name (`+`, `#` included).
    name: String,
    /// The whole path from the root.
    path: String,
    /// Sessions subscribed to exactly this filter.
    subscriptions: usize,
    /// Subscriptions here and below.
    total_subscriptions: usize,
    /// Whether a retained message is stored on exactly this topic.
    retained: bool,
    /// Retained messages here and below.
    total_retained: usize,
    children: Vec<TopicNode>,
}

impl TopicNode {
    /// The child named `name` (created with `path` when new).
    fn child(&mut self, name: &str, path: impl FnOnce() -> String) -> &mut TopicNode {
        // Children stay sorted by name, so the tree reads the same on every refresh.
        let i = match self
            .children
            .binary_search_by(|c| c.name.as_str().cmp(name))
        {
            Ok(i) => i,
            Err(i) => {
                self.children.insert(
                    i,
                    TopicNode {
                        name: name.to_owned(),
                        path: path(),
                        ..Default::default()
                    },
                );
                i
            }
        };
        &mut self.children[i]
    }

    /// Walks from this node (at `depth` of `levels`) down to the node of all `levels`,
    /// creating what is missing; applies `f` to every node passed (for the totals) and
    /// returns the last one.
    fn walk(
        &mut self,
        levels: &[&str],
        depth: usize,
        f: &impl Fn(&mut TopicNode),
    ) -> &mut TopicNode {
        f(self);
        match levels.get(depth) {
            None => self,
            Some(name) => {
                self.child(name, || levels[..=depth].join("/"))
                    .walk(levels, depth + 1, f)
            }
        }
    }
}

/// Builds the topic tree from subscription filters (with how many sessions hold each) and
/// retained topic names. `$share/{group}/` is kept as two levels, so a group shows where it
/// is. The root has an empty name.
fn topic_tree(filters: &[(String, usize)], retained: &[Arc<str>]) -> TopicNode {
    let mut root = TopicNode::default();
    for (filter, count) in filters {
        let levels: Vec<&str> = filter.split('/').collect();
        let n = *count;
        root.walk(&levels, 0, &|node: &mut TopicNode| {
            node.total_subscriptions += n
        })
        .subscriptions += n;
    }
    for topic in retained {
        let levels: Vec<&str> = topic.split('/').collect();
        root.walk(&levels, 0, &|node: &mut TopicNode| node.total_retained += 1)
            .retained = true;
    }
    root
}

/// `GET /api/v1/tail?filter=&limit=&seconds=`: a live tail as Server-Sent Events
/// (`start`, then one `message` per message, then `end`). Fetched with the token in a
/// header (the browser's `EventSource` cannot send one, so the page reads the stream).
fn tail(control: &dyn Control, params: &Params) -> Response<Body> {
    let Some(filter) = params.get("filter").filter(|f| !f.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "`filter` (a topic filter) is required",
        );
    };
    let max_messages = match params.number("limit", TAIL_DEFAULT_MESSAGES as u64) {
        Ok(n) => (n as usize).clamp(1, TAIL_MAX_MESSAGES),
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let seconds = match params.number("seconds", TAIL_DEFAULT_SECONDS) {
        Ok(n) => n.clamp(1, TAIL_MAX_SECONDS),
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let limits = TailLimits {
        max_messages,
        max_duration: Duration::from_secs(seconds),
    };
    let rx = match control.tail(filter, limits) {
        Ok(rx) => rx,
        Err(e) if e.starts_with("invalid topic filter") => {
            return error(StatusCode::BAD_REQUEST, &e)
        }
        Err(e) => return error(StatusCode::FORBIDDEN, &e),
    };
    let (tx, body_rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let start = json!({
        "filter": filter,
        "max_messages": max_messages,
        "max_seconds": seconds,
        "user": control.runtime().config.admin.dashboard_user,
    });
    tokio::spawn(stream_tail(rx, tx, start, max_messages));
    let mut r = Response::new(Body::new(ChannelBody(body_rx)));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// One Server-Sent Event.
fn sse(event: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// Turns tail messages into events until the tail ends or the browser goes away (then the
/// dropped receiver ends the tail, which unsubscribes).
async fn stream_tail(
    mut rx: tokio::sync::mpsc::Receiver<TailMessage>,
    tx: tokio::sync::mpsc::Sender<Bytes>,
    start: Value,
    max_messages: usize,
) {
    if tx.send(sse("start", &start)).await.is_err() {
        return;
    }
    let mut count = 0usize;
    // A comment now and then keeps proxies from closing a quiet stream.
    let mut keepalive = tokio::time::interval(Duration::from_secs(15));
    keepalive.tick().await;
    loop {
        let chunk = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => {
                    count += 1;
                    sse("message", &json!({
                        "topic": &*m.topic,
                        "at": m.at,
                        "payload": PayloadView::of(&m.payload),
                    }))
                }
                None => break,
            },
            _ = keepalive.tick() => Bytes::from_static(b": keep-alive\n\n"),
        };
        if tx.send(chunk).await.is_err() {
            return;
        }
    }
    let reason = if count >= max_messages {
        "message limit reached"
    } else {
        "time limit reached or broker stopping"
    };
    let _ = tx
        .send(sse("end", &json!({"reason": reason, "messages": count})))
        .await;
}

/// A response body fed by a channel: each chunk is sent as it comes; the body ends when the
/// sender is dropped.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_tree_counts_filters_and_retained_topics_per_level() {
        let filters = vec![
            ("sensors/+/temperature".to_owned(), 2),
            ("sensors/#".to_owned(), 1),
            ("home/a".to_owned(), 1),
        ];
        let retained: Vec<Arc<str>> = vec![
            Arc::from("sensors/a/status"),
            Arc::from("sensors/b/status"),
            Arc::from("home/a"),
        ];
        let root = topic_tree(&filters, &retained);
        assert_eq!(root.total_subscriptions, 4);
        assert_eq!(root.total_retained, 3);
        // Sorted by name.
        let names: Vec<&str> = root.children.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["home", "sensors"]);
        let sensors = &root.children[1];
        assert_eq!(sensors.path, "sensors");
        assert_eq!(sensors.total_subscriptions, 3);
        assert_eq!(sensors.subscriptions, 0);
        assert_eq!(sensors.total_retained, 2);
        let names: Vec<&str> = sensors.children.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["#", "+", "a", "b"]);
        let plus_temp = &sensors.children[1].children[0];
        assert_eq!(plus_temp.path, "sensors/+/temperature");
        assert_eq!(plus_temp.subscriptions, 2);
        let status = &sensors.children[2].children[0];
        assert!(status.retained);
        assert_eq!(status.path, "sensors/a/status");
        let home_a = &root.children[0].children[0];
        assert!(home_a.retained);
        assert_eq!(home_a.subscriptions, 1);
    }

    #[test]
    fn topic_tree_keeps_empty_levels_and_leading_slashes() {
        let root = topic_tree(&[("/a//b".to_owned(), 1)], &[]);
        let first = &root.children[0];
        assert_eq!(first.name, "");
        let b = &first.children[0].children[0].children[0];
        assert_eq!(b.path, "/a//b");
        assert_eq!(b.subscriptions, 1);
    }

    #[test]
    fn redaction_hides_secrets_at_any_depth_but_keeps_file_paths() {
        let mut v = json!({
            "admin": {"token_file": "/etc/token", "bind": "127.0.0.1:9100"},
            "security": {"users": [{"username": "u", "password_hash": "$7$..."}]},
            "plugins": [{"name": "p", "config": {"secret": "s3cret", "nested": {"api_key": "k", "level": 3}}}],
            "bridge": {"password": "pw", "password_file": "/etc/pw", "auth_token": null},
        });
        redact(&mut v);
        assert_eq!(v["admin"]["token_file"], "/etc/token");
        assert_eq!(v["admin"]["bind"], "127.0.0.1:9100");
        assert_eq!(v["security"]["users"][0]["username"], "u");
        assert_eq!(v["security"]["users"][0]["password_hash"], "<redacted>");
        assert_eq!(v["plugins"][0]["config"]["secret"], "<redacted>");
        assert_eq!(v["plugins"][0]["config"]["nested"]["api_key"], "<redacted>");
        assert_eq!(v["plugins"][0]["config"]["nested"]["level"], 3);
        assert_eq!(v["bridge"]["password"], "<redacted>");
        assert_eq!(v["bridge"]["password_file"], "/etc/pw");
        // Nothing to hide: an absent secret stays visibly absent.
        assert_eq!(v["bridge"]["auth_token"], Value::Null);
        assert!(!v.to_string().contains("s3cret"));
    }

    #[test]
    fn payload_views_tell_text_from_binary() {
        assert!(!is_binary(b"25.5"));
        assert!(!is_binary("t=25.5\nh=40 \u{e9}".as_bytes()));
        assert!(is_binary(&[0x00, 0x01, 0xff]));
        assert!(is_binary(b"abc\x07"));
        // A multi-byte character cut by the preview is still text.
        let mut long = "a".repeat(PREVIEW_BYTES - 1).into_bytes();
        long.extend_from_slice("\u{e9}".as_bytes());
        let v = PayloadView::of(&long);
        assert!(v.truncated);
        assert!(!v.binary);
        assert_eq!(v.size, PREVIEW_BYTES + 1);
        let v = PayloadView::of(&[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(v.preview_base64, "3q2+7w==");
        assert!(v.binary && !v.truncated);
    }

    #[test]
    fn query_parameters_are_decoded() {
        let p = Params::parse("filter=sensors%2F%23&q=a+b&limit=5&limit=7");
        assert_eq!(p.get("filter"), Some("sensors/#"));
        assert_eq!(p.get("q"), Some("a b"));
        assert!(matches!(p.number("limit", 1), Ok(7)));
        assert!(p.number("q", 1).is_err());
        assert!(matches!(p.number("absent", 3), Ok(3)));
    }
}
