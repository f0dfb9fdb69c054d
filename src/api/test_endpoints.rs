//! `tests` tag: the seed service's sample endpoints, kept for compatibility.

use std::marker::PhantomData;

use poem_openapi::payload::Json;
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::auth::AccessToken;
use super::reply::{Reply, Token};
use super::{Adapters, ApiTags};

pub struct TestEndpointsApi<A>(pub(super) PhantomData<fn() -> A>);

/// The greeting.
#[derive(Debug, Object)]
#[oai(example)]
pub struct Greeting {
    /// `World!` from `/tests/hello`, `Secret!` from `/tests/secret`.
    #[oai(rename = "Hello")]
    pub hello: String,
}

impl Example for Greeting {
    fn example() -> Self {
        Self {
            hello: "World!".to_owned(),
        }
    }
}

#[derive(ApiResponse)]
pub enum HelloResponse {
    /// Always `{"Hello": "World!"}`.
    #[oai(status = 200)]
    Ok(Json<Greeting>),
}

#[derive(ApiResponse)]
pub enum SecretResponse {
    /// The token is valid: `{"Hello": "Secret!"}`.
    #[oai(status = 200)]
    Ok(Json<Greeting>),
}

#[OpenApi(tag = "ApiTags::Tests")]
impl<A: Adapters> TestEndpointsApi<A> {
    /// Say hello
    ///
    /// An unauthenticated endpoint that answers `{"Hello": "World!"}`.
    #[oai(path = "/tests/hello", method = "get", operation_id = "hello")]
    async fn hello(&self) -> Reply<HelloResponse> {
        Reply::ok(HelloResponse::Ok(Json(Greeting {
            hello: "World!".to_owned(),
        })))
    }

    /// Say hello to a logged-in user
    ///
    /// Answers `{"Hello": "Secret!"}` to a valid access token; shows every
    /// token error the protected operations share.
    #[oai(path = "/tests/secret", method = "get", operation_id = "secret")]
    async fn secret(&self, _token: AccessToken<A>) -> Reply<SecretResponse, Token> {
        Reply::ok(SecretResponse::Ok(Json(Greeting {
            hello: "Secret!".to_owned(),
        })))
    }
}
