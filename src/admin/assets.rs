//! The dashboard's static files, compiled into the binary (`include_str!`): plain HTML,
//! CSS and JavaScript modules written by hand, so that `cargo build` needs no Node build
//! step and the page works offline (nothing is fetched from anywhere but this listener).
//!
//! They hold no data, so they are served without the admin token; the data endpoints they
//! call require it.

use super::Body;
use hyper::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};

/// (path, content type, content) of every file.
const FILES: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("dashboard/index.html"),
    ),
    (
        "/dashboard/app.js",
        "text/javascript; charset=utf-8",
        include_str!("dashboard/app.js"),
    ),
    (
        "/dashboard/charts.js",
        "text/javascript; charset=utf-8",
        include_str!("dashboard/charts.js"),
    ),
    (
        "/dashboard/app.css",
        "text/css; charset=utf-8",
        include_str!("dashboard/app.css"),
    ),
    (
        "/dashboard/icon.svg",
        "image/svg+xml",
        include_str!("dashboard/icon.svg"),
    ),
];

/// Only this listener's own scripts, styles and API: no inline script, no other origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The file at `path`, if it is one of the dashboard's.
pub(super) fn serve(path: &str) -> Option<Response<Body>> {
    let path = if path == "/index.html" { "/" } else { path };
    let (_, content_type, content) = FILES.iter().find(|(p, _, _)| *p == path)?;
    let mut r = Response::new(super::full(content.as_bytes()));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Revalidated on every load, so that an upgraded broker never runs an old script.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(CSP),
    );
    h.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    );
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_served_and_others_are_not() {
        for (path, ty, _) in FILES {
            let r = serve(path).expect(path);
            assert_eq!(r.headers()[CONTENT_TYPE], *ty);
        }
        assert!(serve("/index.html").is_some());
        assert!(serve("/api/v1/stats").is_none());
        assert!(serve("/dashboard/../Cargo.toml").is_none());
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for (path, _, content) in FILES {
            // The SVG namespace is an identifier, not a fetch.
            let content = content.replace("http://www.w3.org/2000/svg", "");
            for needle in ["http://", "https://", "//cdn", "<script>", "@import"] {
                assert!(!content.contains(needle), "{path} refers to {needle}");
            }
        }
    }
}
