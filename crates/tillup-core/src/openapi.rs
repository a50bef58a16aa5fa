//! How the wire's scalar types look in the OpenAPI descriptions of the
//! server's and the agent's APIs (`tillup-server openapi`,
//! `tillup-agent openapi`).
//!
//! The JSON bodies of [`crate::api`] derive their schemas; the strings with
//! a grammar of their own get one here, so that a fuzzer working from the
//! description sends what the code would accept, and the opposite.

use std::borrow::Cow;

use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi, RefOr};
use utoipa::{PartialSchema, ToSchema};

use crate::hash::Sha256Hex;
use crate::path::{MAX_PATH_LEN, RelPath};

/// What [`Sha256Hex`] parses.
pub const SHA256_PATTERN: &str = "^[0-9a-f]{64}$";

/// A semantic version the `semver` crate parses: semver.org's grammar, in
/// ASCII digits, with major, minor and patch of at most 16 digits (they are
/// `u64`s).
pub const SEMVER_PATTERN: &str = concat!(
    "^(0|[1-9][0-9]{0,15})\\.(0|[1-9][0-9]{0,15})\\.(0|[1-9][0-9]{0,15})",
    "(-(0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)(\\.(0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*)?",
    "(\\+[0-9a-zA-Z-]+(\\.[0-9a-zA-Z-]+)*)?$"
);

/// A store, upgrade or channel id (`tillup-server`'s `check_id`): a safe
/// file name on every platform.
pub const ID_PATTERN: &str = "^(?!\\.\\.?$)[A-Za-z0-9._-]{1,64}$";

fn string(pattern: Option<&str>, description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(pattern)
        .description(Some(description))
        .into()
}

impl PartialSchema for Sha256Hex {
    fn schema() -> RefOr<Schema> {
        string(
            Some(SHA256_PATTERN),
            "A SHA-256 digest: 64 lowercase hex digits.",
        )
    }
}

impl ToSchema for Sha256Hex {
    fn name() -> Cow<'static, str> {
        "Sha256".into()
    }
}

impl PartialSchema for RelPath {
    fn schema() -> RefOr<Schema> {
        // The full rules (no `..`, no Windows device names, …) are more than
        // a pattern says; a path that breaks them is refused with a 400.
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_PATH_LEN))
            .description(Some(
                "A `/`-separated path inside the program folder: no `..`, `.` or empty component, no backslash, no drive letter, and a valid file name on Windows.",
            ))
            .into()
    }
}

impl ToSchema for RelPath {}

/// The schema of a `semver::Version` (a foreign type: fields name it with
/// `#[schema(value_type = SemVer)]`).
pub struct SemVer;

impl PartialSchema for SemVer {
    fn schema() -> RefOr<Schema> {
        string(
            Some(SEMVER_PATTERN),
            "A semantic version (semver.org), such as `1.2.3` or `2.0.0-rc.1`.",
        )
    }
}

impl ToSchema for SemVer {
    fn name() -> Cow<'static, str> {
        "Version".into()
    }
}

/// The schema of a store, upgrade or channel id in a route.
pub struct Id;

impl PartialSchema for Id {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(ID_PATTERN))
            .min_length(Some(1))
            .max_length(Some(64))
            .description(Some(
                "An id: 1 to 64 ASCII letters, digits, `.`, `_` or `-`, not `.` or `..`.",
            ))
            .into()
    }
}

impl ToSchema for Id {}

/// The schema of a body of raw bytes: a file, or a pack of files.
pub struct Binary;

impl PartialSchema for Binary {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::Custom("binary".into())))
            .into()
    }
}

impl ToSchema for Binary {}

/// Adds a bearer-token scheme `name` to `api`, and sets its version: what
/// the server's and the agent's descriptions share.
pub fn finish(mut api: OpenApi, version: &str, name: &str, token: &str) -> OpenApi {
    api.info.version = version.to_owned();
    api.components
        .get_or_insert_with(Default::default)
        .add_security_scheme(
            name,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(token))
                    .build(),
            ),
        );
    api
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A pattern without its anchors, for proptest to generate from.
    fn unanchored(p: &str) -> &str {
        p.strip_prefix('^')
            .and_then(|p| p.strip_suffix('$'))
            .unwrap()
    }

    proptest! {
        /// What a fuzzer makes from the description, the code accepts.
        #[test]
        fn every_string_of_the_semver_pattern_parses(
            v in proptest::string::string_regex(unanchored(SEMVER_PATTERN)).unwrap()
        ) {
            prop_assert!(semver::Version::parse(&v).is_ok(), "{v}");
        }

        #[test]
        fn every_string_of_the_digest_pattern_parses(
            h in proptest::string::string_regex(unanchored(SHA256_PATTERN)).unwrap()
        ) {
            prop_assert!(h.parse::<Sha256Hex>().is_ok(), "{h}");
        }
    }
}
