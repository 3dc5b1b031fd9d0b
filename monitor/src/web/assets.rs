//! The dashboard's files, embedded in the binary at build time (plain
//! HTML, CSS and JavaScript modules from `monitor/web/`: no build step, no
//! network), each served with its type and an `ETag` so a browser
//! revalidates with one small request instead of downloading again.

use std::sync::LazyLock;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// One embedded file.
pub struct Asset {
    /// Its path under `/assets/`.
    pub path: &'static str,
    /// Its media type.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $type:expr) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!("../../web/", $path)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file under `/assets/`.
pub static ASSETS: &[Asset] = &[
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("js/app.js", JS),
    asset!("js/api.js", JS),
    asset!("js/dom.js", JS),
    asset!("js/format.js", JS),
    asset!("js/live.js", JS),
    asset!("js/chart.js", JS),
    asset!("js/pages/parts.js", JS),
    asset!("js/pages/overview.js", JS),
    asset!("js/pages/nodes.js", JS),
    asset!("js/pages/node.js", JS),
    asset!("js/pages/jobs.js", JS),
    asset!("js/pages/job.js", JS),
    asset!("js/pages/alerts.js", JS),
    asset!("js/pages/events.js", JS),
];

/// The page every dashboard route loads (its script routes by path).
pub static INDEX: Asset = Asset {
    path: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("../../web/index.html"),
};

/// The login page.
pub static LOGIN: Asset = Asset {
    path: "login.html",
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("../../web/login.html"),
};

static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .chain([&INDEX, &LOGIN])
        // Weak: the bytes sent may be gzipped, the content is the same.
        .map(|asset| format!("W/\"{}\"", &hex::encode(Sha256::digest(asset.body))[..16]))
        .collect()
});

fn etag(asset: &Asset) -> &'static str {
    let index = ASSETS
        .iter()
        .chain([&INDEX, &LOGIN])
        .position(|known| std::ptr::eq(known, asset))
        .expect("an embedded asset");
    &ETAGS[index]
}

/// `asset`, or `304 Not Modified` when the browser has it already.
pub fn serve(asset: &'static Asset, request: &HeaderMap) -> Response {
    let etag = etag(asset);
    let cached = request
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == etag));
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type)),
        (header::ETAG, HeaderValue::from_static(etag)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    if cached {
        (StatusCode::NOT_MODIFIED, headers).into_response()
    } else {
        (headers, asset.body).into_response()
    }
}

/// The file at `/assets/{path}`.
pub fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|asset| asset.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_an_embedded_script_imports_is_embedded() {
        for asset in ASSETS.iter().filter(|asset| asset.path.ends_with(".js")) {
            let text = std::str::from_utf8(asset.body).unwrap();
            let dir = asset.path.rsplit_once('/').map_or("", |(dir, _)| dir);
            for line in text.lines().filter(|line| line.starts_with("import ")) {
                let target = line.split(['"', '\'']).nth(1).expect("a quoted module path");
                let mut parts: Vec<&str> = dir.split('/').filter(|part| !part.is_empty()).collect();
                for part in target.split('/') {
                    match part {
                        "." => {}
                        ".." => {
                            parts.pop();
                        }
                        part => parts.push(part),
                    }
                }
                let resolved = parts.join("/");
                assert!(
                    find(&resolved).is_some(),
                    "{} imports {target}: not embedded",
                    asset.path
                );
            }
        }
    }

    #[test]
    fn a_browser_with_the_file_gets_304() {
        let asset = find("style.css").unwrap();
        let mut headers = HeaderMap::new();
        assert_eq!(serve(asset, &headers).status(), StatusCode::OK);
        headers.insert(header::IF_NONE_MATCH, etag(asset).parse().unwrap());
        assert_eq!(serve(asset, &headers).status(), StatusCode::NOT_MODIFIED);
    }
}
