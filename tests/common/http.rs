//! A real HTTP/1.1 client (hyper-util's) for the admin API tests, and a reader for the
//! Prometheus text format. Included with `#[path]` by the tests that need it.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;

/// A response: status and body text.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub content_type: String,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Sends `method path` to the admin listener, with `Authorization: Bearer token` if given.
pub async fn request(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> Reply {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = client
        .request(req.body(Empty::new()).expect("request"))
        .await
        .expect("HTTP request to the admin listener");
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Reply {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        content_type,
    }
}

/// `GET path`.
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, None).await
}

/// Scrapes `/metrics` (asserting 200 and the Prometheus content type).
pub async fn scrape(addr: SocketAddr, token: Option<&str>) -> Metrics {
    let r = request(addr, "GET", "/metrics", token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        r.content_type
    );
    Metrics(r.body)
}

/// Prometheus exposition text.
pub struct Metrics(pub String);

impl Metrics {
    /// The value of the sample written exactly as `series` (e.g.
    /// `mqtt_connections{transport="tcp"}`); panics when absent.
    pub fn value(&self, series: &str) -> f64 {
        self.try_value(series)
            .unwrap_or_else(|| panic!("no sample {series} in:\n{}", self.0))
    }

    /// Like [`Metrics::value`] but `None` when absent.
    pub fn try_value(&self, series: &str) -> Option<f64> {
        self.0.lines().find_map(|l| {
            let rest = l.strip_prefix(series)?;
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
    }
}
