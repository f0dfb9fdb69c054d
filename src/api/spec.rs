//! The OpenAPI document as served (`/openapi.json`, `/openapi.yaml`, Swagger UI
//! at `/docs`) and committed (`openapi/openapi.yaml`): poem-openapi's, with an
//! example of its own message on every error response. poem-openapi can only
//! give a schema one example, and every error shares the `Error` schema.
//!
//! The document is the same whatever [`Adapters`] the API runs on; the
//! functions take them only because poem-openapi describes the API from its
//! (generic) endpoint types. The `allot openapi` command names
//! `startup::Production`.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use poem::endpoint::make_sync;
use poem::{Response, Route};
use poem_openapi::payload::Json;
use serde_json::{Map, Value};

use super::Adapters;
use super::error::{ApiError, BODY_TOO_LARGE, Failure, message, msg};
use super::reply::{AdminRole, Body, Database, FeedOnly, Hashing, Input, Shared, Token};
use crate::domain::token::TokenRejection;

/// The examples of every operation's own error responses, written beside
/// each response enum: `(status, description, example)`.
fn own_examples() -> Vec<(u16, &'static str, Json<ApiError>)> {
    [
        super::users::error_examples(),
        super::accounts::error_examples(),
        super::batches::error_examples(),
        super::allocations::error_examples(),
        super::webhooks::error_examples(),
        super::events::error_examples(),
    ]
    .concat()
}

/// The example of a shared response (see `api::reply`), from what
/// [`Failure`] answers; `operation` names the field a 400 is about.
fn shared_example(
    operation: &Value,
    schemas: &Value,
    status: u16,
    description: &str,
) -> Option<Json<ApiError>> {
    let feed_only = FeedOnly::responses()
        .iter()
        .any(|r| r.description == description);
    Some(match status {
        403 if feed_only => msg(TokenRejection::FeedOnly),
        400 => message(bad_request_example(operation, schemas)),
        401 => msg(TokenRejection::Expired),
        403 => msg(TokenRejection::AdminRequired),
        413 => message(BODY_TOO_LARGE),
        422 => msg(TokenRejection::BadSignature),
        503 => message(Failure::Unavailable("".into())),
        _ => return None,
    })
}

/// A 400 as the operation's first body field or parameter would get it.
fn bad_request_example(operation: &Value, schemas: &Value) -> String {
    let body = operation
        .pointer("/requestBody/content")
        .and_then(Value::as_object)
        .and_then(|content| content.values().next())
        .and_then(|media| media.pointer("/schema/$ref"))
        .and_then(Value::as_str)
        .and_then(|schema| schemas.get(schema.rsplit('/').next()?));
    if let Some(field) = body.and_then(|schema| schema.pointer("/required/0")) {
        let field = field.as_str().unwrap_or_default();
        return format!("Invalid request body: missing field `{field}`");
    }
    let parameter = operation.pointer("/parameters/0").unwrap_or(&Value::Null);
    let name = parameter["name"].as_str().unwrap_or_default();
    let place = if parameter["in"] == "path" {
        "path"
    } else {
        "parameter"
    };
    let reason = match parameter.pointer("/schema/maximum") {
        Some(maximum) => format!("must be from 1 to {maximum}"),
        None => "must be printable ASCII (`!` to `~`): no spaces, control or non-ASCII characters"
            .to_owned(),
    };
    format!("failed to parse {place} `{name}`: {reason}")
}

/// poem-openapi's document, with an example on every error response.
pub fn document<A: Adapters>() -> Value {
    with_examples(&super::service::<A>().spec())
}

/// `spec`, poem-openapi's document, with an example on every error response.
fn with_examples(spec: &str) -> Value {
    let mut spec: Value = serde_json::from_str(spec).unwrap_or_default();
    let schemas = spec["components"]["schemas"].clone();
    let own = own_examples();
    let shared: Vec<(u16, &str)> = <(
        (Token, AdminRole, FeedOnly),
        Input,
        Body,
        (Database, Hashing),
    )>::responses()
    .into_iter()
    .filter_map(|response| Some((response.status?, response.description)))
    .collect();
    let operations = spec
        .get_mut("paths")
        .and_then(Value::as_object_mut)
        .into_iter()
        .flat_map(Map::values_mut)
        .filter_map(Value::as_object_mut)
        .flat_map(Map::values_mut);
    for operation in operations {
        let context = operation.clone();
        let Some(responses) = operation
            .get_mut("responses")
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        for (status, response) in responses {
            let status: u16 = status.parse().unwrap_or_default();
            let description = response["description"].as_str().unwrap_or_default();
            let example = if shared.contains(&(status, description)) {
                shared_example(&context, &schemas, status, description)
            } else {
                own.iter()
                    .find(|(s, d, _)| *s == status && *d == description)
                    .map(|(_, _, example)| Json(example.0.clone()))
            };
            let media = response
                .get_mut("content")
                .and_then(Value::as_object_mut)
                .and_then(|content| content.values_mut().next());
            if let (Some(Json(example)), Some(Value::Object(media))) = (example, media)
                && media["schema"]["$ref"] == "#/components/schemas/Error"
            {
                let example = poem_openapi::types::ToJSON::to_json(&example);
                media.insert("example".to_owned(), example.unwrap_or_default());
            }
        }
    }
    spec
}

/// The document as JSON.
pub fn json<A: Adapters>() -> String {
    serde_json::to_string_pretty(&document::<A>()).unwrap_or_default()
}

/// The document as YAML, as committed in `openapi/openapi.yaml`.
pub fn yaml<A: Adapters>() -> String {
    serde_yaml::to_string(&document::<A>()).unwrap_or_default()
}

/// poem-openapi's Swagger UI page, showing `document` instead of the
/// document poem-openapi embeds.
fn swagger_ui_page<A: Adapters>(document: &str) -> String {
    let service = super::service::<A>();
    service
        .swagger_ui_html()
        .replacen(&service.spec(), document, 1)
}

const JSON_PATH: &str = "/openapi.json";
const YAML_PATH: &str = "/openapi.yaml";
const DOCS_PATH: &str = "/docs";

/// Whether [`routes`] serves `path`.
pub fn serves(path: &str) -> bool {
    path == JSON_PATH
        || path == YAML_PATH
        || path
            .strip_prefix(DOCS_PATH)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// `route` with `/openapi.json`, `/openapi.yaml` and Swagger UI at `/docs`.
///
/// Each document is made on its first request, not at start (an instance
/// nobody browses does not hold them: the Swagger UI page alone inlines a
/// 1.5 MB bundle), and every response shares that one copy. The page shows
/// `/openapi.json`'s copy.
pub fn routes<A: Adapters>(route: Route) -> Route {
    let json_body = made_once(json::<A>);
    let page_json = json_body.clone();
    route
        .at(JSON_PATH, serving("application/json", json_body))
        .at(
            YAML_PATH,
            serving("application/x-yaml", made_once(yaml::<A>)),
        )
        .nest(
            DOCS_PATH,
            Route::new().at(
                "/",
                serving(
                    "text/html; charset=utf-8",
                    made_once(move || {
                        let json = page_json();
                        swagger_ui_page::<A>(std::str::from_utf8(&json).unwrap_or_default())
                    }),
                ),
            ),
        )
}

/// `make`'s result, made on the first call (about 10 ms once, 15 for the
/// page, on the worker that serves it) and shared by every later one.
fn made_once(
    make: impl Fn() -> String + Clone + Send + Sync,
) -> impl Fn() -> Bytes + Clone + Send + Sync {
    let body = Arc::new(OnceLock::new());
    move || body.get_or_init(|| Bytes::from(make())).clone()
}

/// An endpoint answering every request with `body()`.
fn serving(
    content_type: &'static str,
    body: impl Fn() -> Bytes + Send + Sync + 'static,
) -> impl poem::Endpoint<Output = Response> {
    make_sync(move |_| Response::builder().content_type(content_type).body(body()))
}

#[cfg(test)]
mod tests {
    use super::*;
    // The adapters allot runs on; the document is the same for any.
    use crate::startup::Production;

    #[test]
    fn the_committed_spec_matches_the_code() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.yaml");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == yaml::<Production>(),
            "openapi/openapi.yaml differs from the API the code serves; \
             regenerate it with `cargo run --quiet -- openapi > openapi/openapi.yaml`"
        );
    }

    #[test]
    fn every_error_response_shows_an_example_of_its_own() {
        let spec = document::<Production>();
        let mut missing = Vec::new();
        for (path, operations) in spec["paths"].as_object().into_iter().flatten() {
            for (method, operation) in operations.as_object().into_iter().flatten() {
                for (status, response) in operation["responses"].as_object().into_iter().flatten() {
                    let media = response["content"]
                        .as_object()
                        .and_then(|c| c.values().next());
                    let is_error =
                        media.is_some_and(|m| m["schema"]["$ref"] == "#/components/schemas/Error");
                    if is_error && media.is_some_and(|m| m.get("example").is_none()) {
                        missing.push(format!("{method} {path} {status}"));
                    }
                }
            }
        }
        assert!(
            missing.is_empty(),
            "error responses without an example: {missing:?}"
        );
        let example = |path: &str| spec.pointer(path).cloned().unwrap_or_default();
        assert_eq!(
            example(
                "/paths/~1users~1me/get/responses/503/content/application~1json; charset=utf-8/example"
            ),
            serde_json::json!({"message": "The database is unavailable; retry later"})
        );
        assert_eq!(
            example(
                "/paths/~1users~1me/get/responses/404/content/application~1json; charset=utf-8/example"
            ),
            serde_json::json!({"message": "User alice no longer exists"})
        );
        assert_eq!(
            example(
                "/paths/~1tests~1secret/get/responses/422/content/application~1json; charset=utf-8/example"
            ),
            serde_json::json!({"msg": "Signature verification failed"})
        );
    }

    #[test]
    fn the_document_routes_are_known_by_path() {
        for path in [
            "/openapi.json",
            "/openapi.yaml",
            "/docs",
            "/docs/",
            "/docs/x",
        ] {
            assert!(serves(path), "{path}");
        }
        for path in ["/docsx", "/openapi", "/batches", "/"] {
            assert!(!serves(path), "{path}");
        }
    }

    #[test]
    fn swagger_ui_shows_this_document() {
        assert!(swagger_ui_page::<Production>("DOCUMENT").contains("let spec = DOCUMENT;"));
    }
}
