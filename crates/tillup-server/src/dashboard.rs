//! Head office's dashboard: a static page (HTML, CSS and plain JavaScript,
//! no build step) over the admin API ([`crate::admin`]), compiled into the
//! server. The page only shows; every rule (who may do what) is checked
//! by the API it calls, so the page holds no secret and no authority.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::http::AppState;

/// Where the dashboard is served.
pub const ROOT: &str = "/admin/";

/// Each file of the page: its path under [`ROOT`], media type and bytes.
const FILES: &[(&str, &str, &str)] = &[
    (
        "",
        "text/html; charset=utf-8",
        include_str!("../dashboard/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../dashboard/app.js"),
    ),
    (
        "i18n.js",
        "text/javascript; charset=utf-8",
        include_str!("../dashboard/i18n.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../dashboard/style.css"),
    ),
];

/// Only the page's own files run, nothing frames it, and nothing it shows
/// can load from elsewhere.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The routes (merged into [`crate::http::app`]'s router).
pub fn routes() -> Router<AppState> {
    let mut router = Router::new().route("/admin", get(|| async { Redirect::permanent(ROOT) }));
    for &(name, media, body) in FILES {
        router = router.route(
            &format!("{ROOT}{name}"),
            get(move || async move { page_file(media, body) }),
        );
    }
    router
}

fn page_file(media: &'static str, body: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // A new server's page is used at once, never a cached old one.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::FILES;

    fn file(name: &str) -> &'static str {
        FILES.iter().find(|f| f.0 == name).unwrap().2
    }

    /// The words of `text` that follow `before` (not inside a longer
    /// name: `get("` is not `t("`), up to `end`.
    fn quoted_after(text: &str, before: &str, end: char) -> BTreeSet<String> {
        text.match_indices(before)
            .filter(|(at, _)| {
                !text[..*at]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.')
            })
            .filter_map(|(at, _)| {
                let rest = &text[at + before.len()..];
                rest.split_once(end).map(|(k, _)| k.to_owned())
            })
            .collect()
    }

    /// The keys the page asks for: plain `t("key")` calls, `data-t`
    /// attributes, and the keys built from a value of the server's enums.
    fn used() -> BTreeSet<String> {
        let mut keys = quoted_after(file("app.js"), "t(\"", '"');
        keys.extend(quoted_after(file(""), "data-t=\"", '"'));
        let built = [
            (
                "phase",
                &[
                    "awaiting_approval",
                    "running",
                    "paused",
                    "halted",
                    "aborted",
                    "done",
                ][..],
            ),
            (
                "outcome",
                &["upgraded", "restored", "abandoned", "in_progress"],
            ),
            ("role", &["viewer", "releaser", "admin"]),
            (
                "action",
                &["approve", "pause", "resume", "advance", "abort"],
            ),
            ("wave", &["passed", "current", "waiting"]),
        ];
        for (prefix, values) in built {
            keys.extend(values.iter().map(|v| format!("{prefix}.{v}")));
        }
        keys
    }

    #[test]
    fn both_languages_have_every_text_the_page_uses() {
        let i18n = file("i18n.js");
        let (en, zh) = i18n.split_once("\"zh-CN\": {").unwrap();
        let en = quoted_after(en, "\n    \"", '"');
        let zh = quoted_after(zh, "\n    \"", '"');
        let used = used();
        assert!(used.len() > 100, "{used:?}");
        let missing_en: Vec<_> = used.difference(&en).collect();
        let missing_zh: Vec<_> = used.difference(&zh).collect();
        assert!(missing_en.is_empty(), "English lacks {missing_en:?}");
        assert!(missing_zh.is_empty(), "Chinese lacks {missing_zh:?}");
        assert_eq!(en, zh, "the two languages have different keys");
    }

    #[test]
    fn the_enums_the_page_names_are_the_servers() {
        use tillup_core::roles::Role;
        for role in Role::ALL {
            assert!(used().contains(&format!("role.{role}")), "{role}");
        }
    }
}
