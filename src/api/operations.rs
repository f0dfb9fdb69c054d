//! Endpoints for operators, outside the OpenAPI document: `/metrics`.

use poem::http::StatusCode;
use poem::http::header::AUTHORIZATION;
use poem::{Endpoint, Request, Response};
use secrecy::{ExposeSecret, SecretString};

use super::error::json_error;

/// `GET /metrics`: the Prometheus text format. With `metrics.token` set, only
/// for `Authorization: Bearer <token>` (401 JSON otherwise).
pub fn metrics_endpoint(token: &SecretString) -> impl Endpoint<Output = Response> + use<> {
    let token = token.expose_secret().as_bytes().to_vec();
    poem::get(poem::endpoint::make(move |req: Request| {
        let token = token.clone();
        async move {
            if !token.is_empty() && !bearer_matches(&req, &token) {
                let mut refused =
                    json_error(StatusCode::UNAUTHORIZED, "Metrics need the metrics token");
                refused.headers_mut().insert(
                    poem::http::header::WWW_AUTHENTICATE,
                    poem::http::HeaderValue::from_static("Bearer"),
                );
                return refused;
            }
            Response::builder()
                .content_type(crate::metrics::CONTENT_TYPE)
                .body(crate::metrics::metrics().render())
        }
    }))
}

/// Compares in time independent of where the tokens differ.
fn bearer_matches(req: &Request, token: &[u8]) -> bool {
    let Some(given) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
    else {
        return false;
    };
    let given = given.trim().as_bytes();
    given.len() == token.len()
        && given
            .iter()
            .zip(token)
            .fold(0u8, |differ, (a, b)| differ | (a ^ b))
            == 0
}
