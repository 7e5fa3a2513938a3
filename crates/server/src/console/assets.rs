//! The console's static files, in the binary: its stylesheet and script,
//! and uPlot (MIT, from the npm registry: the version in
//! `crates/server/console/package-lock.json`, copied into `assets/vendor/`;
//! `.ci/console-browser.sh` checks the copy against the locked package).

use actix_web::{HttpResponse, web};

/// (name, content type, bytes).
pub const FILES: &[(&str, &str, &[u8])] = &[
    ("console.css", "text/css; charset=utf-8", include_bytes!("../../console/assets/console.css")),
    ("console.js", "text/javascript; charset=utf-8", include_bytes!("../../console/assets/console.js")),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/assets/vendor/uPlot.iife.min.js"),
    ),
    ("uPlot.min.css", "text/css; charset=utf-8", include_bytes!("../../console/assets/vendor/uPlot.min.css")),
    ("uPlot.LICENSE", "text/plain; charset=utf-8", include_bytes!("../../console/assets/vendor/uPlot.LICENSE")),
];

pub async fn serve(name: web::Path<String>) -> HttpResponse {
    match FILES.iter().find(|(n, _, _)| *n == name.as_str()) {
        Some((_, ty, bytes)) => super::session::harden(
            HttpResponse::Ok().content_type(*ty).insert_header(("cache-control", "public, max-age=3600")).body(*bytes),
        ),
        None => super::session::html(
            actix_web::http::StatusCode::NOT_FOUND,
            "<!doctype html><title>Not found</title><p>No such console file.</p>".into(),
        ),
    }
}
