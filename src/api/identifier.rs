//! Order ids, skus and batch references as the API accepts them.

use std::borrow::Cow;

use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{
    Example, ParseError, ParseFromJSON, ParseFromParameter, ParseResult, ToJSON, Type,
};
use serde_json::Value;

/// 1–100 characters, none of them whitespace.
///
/// Checked by hand rather than with poem-openapi's `pattern` validator, which
/// compiles its regex on every request (poem-openapi 5.1: `Regex::new` inside
/// `Pattern::check`); the schema still states the pattern for clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identifier(pub String);

impl Identifier {
    pub const MAX_LENGTH: usize = 100;

    fn problem(text: &str) -> Option<String> {
        if text.is_empty() {
            Some("must not be empty".to_owned())
        } else if text.chars().count() > Self::MAX_LENGTH {
            Some(format!("longer than {} characters", Self::MAX_LENGTH))
        } else if text.chars().any(char::is_whitespace) {
            Some("must not contain whitespace".to_owned())
        } else {
            None
        }
    }

    fn check(text: String) -> ParseResult<Self> {
        match Self::problem(&text) {
            Some(problem) => Err(ParseError::custom(problem)),
            None => Ok(Self(text)),
        }
    }
}

/// Checked here too, so that a JSON body's error names the field at fault
/// (see `json_body`).
impl<'de> serde::Deserialize<'de> for Identifier {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match Self::problem(&text) {
            Some(problem) => Err(serde::de::Error::custom(problem)),
            None => Ok(Self(text)),
        }
    }
}

impl std::ops::Deref for Identifier {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<Identifier> for String {
    fn from(identifier: Identifier) -> Self {
        identifier.0
    }
}

impl Type for Identifier {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "identifier".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            min_length: Some(1),
            max_length: Some(Self::MAX_LENGTH),
            pattern: Some(r"^\S+$".to_owned()),
            ..MetaSchema::new("string")
        }))
    }

    fn as_raw_value(&self) -> Option<&Self> {
        Some(self)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromJSON for Identifier {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(text)) => Self::check(text),
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

impl ParseFromParameter for Identifier {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        Self::check(value.to_owned())
    }
}

impl ToJSON for Identifier {
    fn to_json(&self) -> Option<Value> {
        self.0.to_json()
    }
}

impl Example for Identifier {
    fn example() -> Self {
        Self("SMALL-TABLE".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ids_without_whitespace_up_to_100_characters() {
        for ok in ["a", "order-001", "ÉLAN_42", &"x".repeat(100), "{$ne:null}"] {
            assert_eq!(Identifier::parse_from_parameter(ok).unwrap().0, ok);
        }
    }

    #[test]
    fn refuses_empty_long_or_spaced_ids_and_non_strings() {
        for bad in [
            "",
            " ",
            "a b",
            "tab\there",
            "nl\n",
            "\u{a0}nbsp",
            &"x".repeat(101),
        ] {
            assert!(Identifier::parse_from_parameter(bad).is_err(), "{bad:?}");
        }
        for bad in [
            Value::Null,
            serde_json::json!(3),
            serde_json::json!({"$ne": null}),
        ] {
            assert!(
                Identifier::parse_from_json(Some(bad.clone())).is_err(),
                "{bad}"
            );
        }
    }
}
