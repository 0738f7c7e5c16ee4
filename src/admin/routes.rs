//! The admin API's routes: what each endpoint answers, and the bearer-token check.

use super::Body;
use crate::core::control::Control;
use crate::metrics::Counters;
use bytes::Bytes;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tracing::info;

/// Largest page of `GET /api/v1/clients`.
const MAX_PAGE: usize = 1000;
/// Page size when `limit` is not given.
const DEFAULT_PAGE: usize = 100;

/// Answers one request.
pub(super) async fn handle<B>(control: &Arc<dyn Control>, req: Request<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    // The dashboard's page and scripts hold no data: served without the token, so that the
    // login form can ask for it. Every data endpoint below still requires it.
    if method == Method::GET {
        if let Some(asset) = super::assets::serve(&path) {
            return asset;
        }
    }
    // Probes are unauthenticated: orchestrators call them without credentials.
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => return text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            return if control.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else if control.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            } else if control.cluster().is_some_and(|c| !c.link_up) {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cut off from the cluster (NATS)\n",
                )
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "starting\n")
            }
        }
        _ => {}
    }
    let token = control.runtime().admin_token.clone();
    if let Some(refusal) = browser_guard(&req, &method, &path, token.is_some()) {
        return refusal;
    }
    if let Some(token) = token {
        if !authorized(&req, token.secret()) {
            let mut r = json(
                StatusCode::UNAUTHORIZED,
                &serde_json::json!({"error": "a valid bearer token is required"}),
            );
            r.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"mqtt-broker admin\""),
            );
            return r;
        }
    }
    let query = req.uri().query().unwrap_or("").to_owned();
    match (&method, path.as_str()) {
        (&Method::GET, "/metrics") => {
            let mut r = Response::new(super::full(super::prometheus::render(control.as_ref())));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (&Method::GET, "/api/v1/stats") => json(StatusCode::OK, &control.stats()),
        (&Method::GET, "/api/v1/bridges") => json(
            StatusCode::OK,
            &serde_json::json!({"bridges": control.bridges()}),
        ),
        (&Method::GET, "/api/v1/cluster") => match control.cluster() {
            Some(c) => json(StatusCode::OK, &c),
            None => json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": "this broker is not part of a cluster (no `cluster:` section)"}),
            ),
        },
        (&Method::GET, "/api/v1/clients") => clients(control.as_ref(), &query),
        (&Method::DELETE, p) if p.starts_with("/api/v1/clients/") => {
            let raw = &p["/api/v1/clients/".len()..];
            let Some(id) = percent_decode(raw) else {
                return json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({"error": "malformed percent-encoding in the client id"}),
                );
            };
            let n = control.disconnect(&id);
            if n == 0 {
                json(
                    StatusCode::NOT_FOUND,
                    &serde_json::json!({"error": "no connected client with this id", "id": id}),
                )
            } else {
                info!(client_id = %id, "client disconnected through the admin API");
                json(
                    StatusCode::OK,
                    &serde_json::json!({"disconnected": id, "connections": n}),
                )
            }
        }
        (&Method::POST, "/api/v1/reload") => reload(control.as_ref()).await,
        (&Method::GET, "/api/v1/reload") => json(StatusCode::OK, &control.last_reload()),
        (
            _,
            "/metrics" | "/api/v1/stats" | "/api/v1/clients" | "/api/v1/reload" | "/api/v1/bridges"
            | "/api/v1/cluster",
        )
        | (_, "/healthz" | "/readyz") => json(
            StatusCode::METHOD_NOT_ALLOWED,
            &serde_json::json!({"error": "method not allowed"}),
        ),
        _ => super::api::handle(control.as_ref(), req, &query).await,
    }
}

/// Defends the API against web pages in the operator's browser, now that a page of this
/// listener can write the config: a request a browser sends on behalf of another site
/// (`Origin` is not this listener) may not change anything, and without a token the
/// dashboard's config and tail endpoints answer only to an address or `localhost` in
/// `Host`, so that a DNS-rebinding page (its own host name, resolved to 127.0.0.1) cannot
/// reach them. Tools that send no `Origin` (curl, Prometheus) are unaffected.
fn browser_guard<B>(
    req: &Request<B>,
    method: &Method,
    path: &str,
    token_set: bool,
) -> Option<Response<Body>> {
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let host = header(hyper::header::HOST).unwrap_or("");
    if *method != Method::GET && *method != Method::HEAD {
        if let Some(origin) = header(hyper::header::ORIGIN) {
            if !same_origin(origin, host) {
                return Some(json(
                    StatusCode::FORBIDDEN,
                    &serde_json::json!({"error": format!("cross-origin request refused (Origin {origin} is not this listener)")}),
                ));
            }
        }
    }
    let sensitive = path.starts_with("/api/v1/config") || path == "/api/v1/tail";
    if sensitive && !token_set && !host.is_empty() && !host_is_local(host) {
        return Some(json(
            StatusCode::FORBIDDEN,
            &serde_json::json!({"error": format!("Host `{host}` refused: without admin.token_file the config and tail endpoints answer only to an IP address or localhost (set a token to use a host name)")}),
        ));
    }
    None
}

/// Whether a `Host` header names an IP address or `localhost` (not a DNS name that could
/// be made to point here).
fn host_is_local(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // [v6]:port
        Some(rest) => {
            return rest
                .split(']')
                .next()
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
        }
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

/// Whether `Origin` (`scheme://host[:port]`) is the listener named by `Host`.
fn same_origin(origin: &str, host: &str) -> bool {
    origin
        .split_once("://")
        .is_some_and(|(_, authority)| !host.is_empty() && authority.eq_ignore_ascii_case(host))
}

/// Whether the request carries `Authorization: Bearer <token>` (compared in constant time).
fn authorized<B>(req: &Request<B>, token: &str) -> bool {
    let Some(value) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(given) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
    else {
        return false;
    };
    given.trim().as_bytes().ct_eq(token.as_bytes()).into()
}

/// `POST /api/v1/reload`: re-reads the config file the broker was started from.
async fn reload(control: &dyn Control) -> Response<Body> {
    let Some(path) = control.config_path() else {
        return json(
            StatusCode::CONFLICT,
            &serde_json::json!({"error": "the broker was not started from a config file; nothing to re-read"}),
        );
    };
    info!(path = %path.display(), "reload requested through the admin API");
    let result = control.reload_from_file(&path).await;
    let status = control.last_reload();
    let code = if result.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    json(code, &status)
}

/// `GET /api/v1/clients?offset=N&limit=M`: connected clients in connection order.
fn clients(control: &dyn Control, query: &str) -> Response<Body> {
    let mut offset = 0usize;
    let mut limit = DEFAULT_PAGE;
    let mut search = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "q" {
            search = Some(query_value(v));
            continue;
        }
        let parsed = v.parse::<usize>();
        match (k, parsed) {
            ("offset", Ok(n)) => offset = n,
            ("limit", Ok(n)) => limit = n.clamp(1, MAX_PAGE),
            ("offset" | "limit", Err(_)) => {
                return json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({"error": format!("`{k}` must be a non-negative integer")}),
                )
            }
            _ => {}
        }
    }
    let (total, views) = match search.as_deref() {
        Some(q) if !q.trim().is_empty() => control.find_clients(q, offset, limit),
        _ => control.clients(offset, limit),
    };
    json(
        StatusCode::OK,
        &serde_json::json!({
            "total": total,
            "offset": offset,
            "limit": limit,
            "clients": views,
            "connections": Counters::get(&control.counters().connections),
        }),
    )
}

/// Decodes a query-string value (`+` is a space); malformed escapes are kept as typed.
pub(super) fn query_value(v: &str) -> String {
    let spaced = v.replace('+', " ");
    percent_decode(&spaced).unwrap_or(spaced)
}

/// Decodes `%XX` escapes of a path segment; `None` when malformed or not UTF-8.
pub(super) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

pub(super) fn text(code: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(super::full(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = code;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub(super) fn json<T: Serialize>(code: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|e| {
        format!("{{\"error\":\"cannot serialize the response: {e}\"}}").into_bytes()
    });
    let mut r = Response::new(super::full(body));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_and_localhost_are_local_hosts() {
        for h in [
            "127.0.0.1:9100",
            "127.0.0.1",
            "localhost:9100",
            "LOCALHOST",
            "[::1]:9100",
            "10.0.0.5:9100",
        ] {
            assert!(host_is_local(h), "{h}");
        }
        for h in [
            "evil.example:9100",
            "localhost.evil.example",
            "[not-an-ip]:1",
            "broker",
        ] {
            assert!(!host_is_local(h), "{h}");
        }
    }

    #[test]
    fn origins_must_name_this_listener() {
        assert!(same_origin("http://127.0.0.1:9100", "127.0.0.1:9100"));
        assert!(same_origin("http://Localhost:9100", "localhost:9100"));
        assert!(!same_origin("http://evil.example", "127.0.0.1:9100"));
        assert!(!same_origin("null", "127.0.0.1:9100"));
        assert!(!same_origin("http://127.0.0.1:9100", ""));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb%20c").as_deref(), Some("a/b c"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%zz"), None);
    }
}
