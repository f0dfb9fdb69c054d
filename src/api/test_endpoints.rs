//! `tests` tag: the seed service's sample endpoints, kept for compatibility.

use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::ApiTags;

pub struct TestEndpointsApi;

/// The greeting.
#[derive(Debug, Object)]
pub struct Greeting {
    /// `World!` from `/tests/hello`.
    #[oai(rename = "Hello")]
    pub hello: String,
}

#[derive(ApiResponse)]
pub enum HelloResponse {
    /// Always `{"Hello": "World!"}`.
    #[oai(status = 200)]
    Ok(Json<Greeting>),
}

#[OpenApi(tag = "ApiTags::Tests")]
impl TestEndpointsApi {
    /// Say hello
    ///
    /// An unauthenticated endpoint that answers `{"Hello": "World!"}`.
    #[oai(path = "/tests/hello", method = "get", operation_id = "hello")]
    async fn hello(&self) -> HelloResponse {
        HelloResponse::Ok(Json(Greeting {
            hello: "World!".to_owned(),
        }))
    }
}
