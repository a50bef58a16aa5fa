//! The OpenAPI description of the agent's HTTP API, generated from the
//! handlers' annotations: printed by `tillup-agent openapi`. CI fuzzes a
//! running agent against it (`tillup-e2e/tests/api_fuzz.rs`).

use utoipa::OpenApi;
use utoipa::openapi::OpenApi as Description;

use crate::http;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tillup-agent",
        description = "On each terminal: stops and starts the main program, stages and swaps the program folder, rolls back, checks health. Every route takes `Authorization: Bearer <agent token>`; the agent serves HTTPS with its own certificate, which the store's host pins at pairing."
    ),
    paths(
        http::status,
        http::stop,
        http::start,
        http::snapshot,
        http::snapshot_changes,
        http::missing,
        http::get_pack,
        http::put_pack,
        http::stage,
        http::stage_changes,
        http::commit,
        http::rollback,
        http::health,
        http::self_update,
        http::self_confirm,
        http::self_rollback,
    ),
    components(schemas(tillup_core::openapi::SemVer))
)]
struct Api;

/// The description, with the program's version and its token scheme.
pub fn description() -> Description {
    tillup_core::openapi::finish(
        Api::openapi(),
        env!("CARGO_PKG_VERSION"),
        "agent_token",
        "The token whose hash is in the agent's config (`tillup-agent new-token`).",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tillup_core::api::agent as r;

    /// Every route of the API is described, and nothing else.
    #[test]
    fn the_description_names_every_route() {
        let d = description();
        let described: std::collections::BTreeSet<&str> =
            d.paths.paths.keys().map(String::as_str).collect();
        let routes = [
            r::STATUS,
            r::STOP,
            r::START,
            r::SNAPSHOT,
            r::SNAPSHOT_CHANGES,
            r::BLOBS_MISSING,
            r::PACK,
            r::STAGE,
            r::STAGE_CHANGES,
            r::COMMIT,
            r::ROLLBACK,
            r::HEALTH,
            r::SELF_UPDATE,
            r::SELF_CONFIRM,
            r::SELF_ROLLBACK,
        ];
        assert_eq!(described, routes.into_iter().collect());
    }
}
