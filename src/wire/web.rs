//! The web client (`web/`), compiled into the binary and served at `/`
//! (`--web-ui`): plain files, no build step.

use axum::{http::header, routing::get, Router};

/// The web client (web/), compiled into the binary: path, content type, body.
const WEB_UI: [(&str, &str, &str); 7] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../../web/index.html"),
    ),
    (
        "/index.html",
        "text/html; charset=utf-8",
        include_str!("../../web/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/app.js"),
    ),
    (
        "/calls.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/calls.js"),
    ),
    (
        "/state.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/state.js"),
    ),
    (
        "/view.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/view.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_str!("../../web/style.css"),
    ),
];

/// The web client's routes. Its script may only come from here, and the
/// page may only be framed by itself (clickjacking).
pub(super) fn routes<S: Clone + Send + Sync + 'static>(mut router: Router<S>) -> Router<S> {
    for (path, content_type, body) in WEB_UI {
        router = router.route(
            path,
            get(move || async move {
                (
                    [
                        (header::CONTENT_TYPE, content_type),
                        (
                            header::CONTENT_SECURITY_POLICY,
                            "default-src 'self'; connect-src 'self' ws: wss:; frame-ancestors 'self'",
                        ),
                        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                        (header::CACHE_CONTROL, "no-cache"),
                    ],
                    body,
                )
            }),
        );
    }
    router
}
