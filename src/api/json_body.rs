//! A JSON request body whose parse errors name the field at fault.
//!
//! poem-openapi's own `Json<T>` reports a mistyped or missing field only by its
//! type ("found null (occurred while parsing "Credentials")"). This payload has
//! the same OpenAPI description, but reads the body with serde first so the
//! error says which field (`password: missing field` …), then applies the
//! schema's validators, whose messages name the field too.

use poem::{FromRequest, Request, RequestBody};
use poem_openapi::error::ParseRequestPayloadError;
use poem_openapi::payload::{ParsePayload, Payload};
use poem_openapi::registry::{MetaMediaType, MetaRequest, MetaSchemaRef, Registry};
use poem_openapi::types::{ParseFromJSON, Type};
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};
use serde::de::DeserializeOwned;
use serde_json::Value;

pub struct JsonBody<T>(pub T);

impl<T> std::ops::Deref for JsonBody<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

fn invalid(reason: String) -> poem::Error {
    ParseRequestPayloadError { reason }.into()
}

impl<T: Type> Payload for JsonBody<T> {
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";

    fn check_content_type(content_type: &str) -> bool {
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        essence.eq_ignore_ascii_case("application/json")
            || (essence.starts_with("application/") && essence.ends_with("+json"))
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Type + ParseFromJSON + DeserializeOwned> ParsePayload for JsonBody<T> {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let data = <Vec<u8> as FromRequest>::from_request(request, body).await?;
        let value: Value = serde_json::from_slice(&data)
            .map_err(|e| invalid(format!("the body is not valid JSON: {e}")))?;
        if let Err(error) = serde_path_to_error::deserialize::<_, T>(&value) {
            let path = error.path().to_string();
            let inner = error.into_inner().to_string();
            return Err(invalid(match path.as_str() {
                "." => inner,
                _ => format!("{path}: {inner}"),
            }));
        }
        T::parse_from_json(Some(value))
            .map(Self)
            .map_err(|e| invalid(e.into_message()))
    }
}

impl<'a, T: Type + ParseFromJSON + DeserializeOwned> ApiExtractor<'a> for JsonBody<T> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        <Self as Payload>::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType {
                content_type: <Self as Payload>::CONTENT_TYPE,
                schema: <Self as Payload>::schema_ref(),
            }],
            required: true,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        // A missing Content-Type is read as JSON; a different one is refused.
        match request.content_type() {
            Some(content_type) if !Self::check_content_type(content_type) => {
                Err(poem_openapi::error::ContentTypeError::NotSupported {
                    content_type: content_type.to_owned(),
                }
                .into())
            }
            _ => <Self as ParsePayload>::from_request(request, body).await,
        }
    }
}
