//! The OpenAPI description of the server's HTTP API, generated from the
//! handlers' annotations: served at [`ROUTE`] and printed by
//! `tillup-server openapi`. CI fuzzes the running server against it
//! (`tillup-e2e/tests/api_fuzz.rs`).

use utoipa::OpenApi;
use utoipa::openapi::OpenApi as Description;

use crate::http;

/// Where the running server serves its description (no token needed).
pub const ROUTE: &str = "/openapi.json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tillup-server",
        description = "Head office: the signed version log, release and store files, store backups, per-terminal processing, reports. Every route but `/healthz` and this description takes `Authorization: Bearer <store token>`."
    ),
    paths(
        http::get_log,
        http::get_log_signature,
        http::get_keys,
        http::get_blob,
        http::blobs_missing,
        http::get_pack,
        http::put_pack,
        http::put_backup,
        http::patch_backup,
        http::process,
        http::report,
    ),
    components(schemas(tillup_core::openapi::Id))
)]
struct Api;

/// The description, with the program's version and its token scheme.
pub fn description() -> Description {
    tillup_core::openapi::finish(
        Api::openapi(),
        env!("CARGO_PKG_VERSION"),
        "store_token",
        "The store's token, from `tillup-server store add` or `store rotate-token`.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tillup_core::api::server as r;

    /// Every route of the API is described, and nothing else.
    #[test]
    fn the_description_names_every_route() {
        let d = description();
        let described: std::collections::BTreeSet<&str> =
            d.paths.paths.keys().map(String::as_str).collect();
        let routes = [
            r::LOG,
            r::LOG_SIGNATURE,
            r::KEYS,
            r::BLOB,
            r::BLOBS_MISSING,
            r::PACK,
            r::BACKUP,
            r::PROCESS,
            r::REPORT,
        ];
        assert_eq!(described, routes.into_iter().collect());
    }
}
