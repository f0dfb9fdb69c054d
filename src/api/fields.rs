//! Field types every tag shares. Each states its rule once: its schema tells
//! clients, and its parser, the same for a JSON field, a path or a query
//! parameter, refuses anything else with a 400 that names the field.
//!
//! Rules are checked by hand rather than with poem-openapi's `pattern`
//! validator, which compiles its regex on every request (poem-openapi 5.1:
//! `Regex::new` inside `Pattern::check`); the schemas still state the patterns.

use std::borrow::Cow;

use chrono::{Datelike, NaiveDate};
use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{
    ParseError, ParseFromJSON, ParseFromParameter, ParseResult, ToJSON, Type,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::domain::allocation::MAX_QUANTITY;
use crate::domain::user::Username;

/// How a value of the wire type becomes the field, or why it cannot.
trait Rule: Sized {
    type Raw: DeserializeOwned + ParseFromParameter + ToJSON;

    fn check(raw: Self::Raw) -> Result<Self, String>;
}

/// Implements the poem-openapi and serde traits of a one-value field from its
/// [`Rule`] and schema. serde is used by `JsonBody`, whose errors name the field.
macro_rules! field {
    ($(@[$($generics:tt)*])? $field:ty, $name:expr, $schema:expr) => {
        impl $(<$($generics)*>)? Type for $field {
            const IS_REQUIRED: bool = true;
            type RawValueType = Self;
            type RawElementValueType = Self;

            fn name() -> Cow<'static, str> {
                $name.into()
            }

            fn schema_ref() -> MetaSchemaRef {
                MetaSchemaRef::Inline(Box::new($schema))
            }

            fn as_raw_value(&self) -> Option<&Self> {
                Some(self)
            }

            fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
                Box::new(self.as_raw_value().into_iter())
            }
        }

        impl $(<$($generics)*>)? ParseFromJSON for $field {
            // Through serde, which takes no number for a string (poem-openapi's `String` does).
            fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
                serde::Deserialize::deserialize(value.unwrap_or_default())
                    .map_err(|error: serde_json::Error| ParseError::custom(error.to_string()))
            }
        }

        impl $(<$($generics)*>)? ParseFromParameter for $field {
            fn parse_from_parameter(value: &str) -> ParseResult<Self> {
                let raw = <Self as Rule>::Raw::parse_from_parameter(value).map_err(ParseError::propagate)?;
                Self::check(raw).map_err(ParseError::custom)
            }
        }

        impl $(<$($generics)*>)? ToJSON for $field {
            fn to_json(&self) -> Option<Value> {
                self.0.to_json()
            }
        }

        impl<'de, $($($generics)*)?> serde::Deserialize<'de> for $field {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let raw = <Self as Rule>::Raw::deserialize(deserializer)?;
                Self::check(raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// An order id, sku, batch reference or cursor: 1–100 characters, none of
/// them whitespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identifier(pub String);

impl Identifier {
    pub const MAX_LENGTH: usize = 100;
}

impl Rule for Identifier {
    type Raw = String;

    fn check(text: String) -> Result<Self, String> {
        if text.is_empty() {
            Err("must not be empty".to_owned())
        } else if text.chars().count() > Self::MAX_LENGTH {
            Err(format!("longer than {} characters", Self::MAX_LENGTH))
        } else if text.chars().any(char::is_whitespace) {
            Err("must not contain whitespace".to_owned())
        } else {
            Ok(Self(text))
        }
    }
}

field!(
    Identifier,
    "identifier",
    MetaSchema {
        min_length: Some(1),
        max_length: Some(Identifier::MAX_LENGTH),
        pattern: Some(r"^\S+$".to_owned()),
        ..MetaSchema::new("string")
    }
);

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

/// A username as sent: its schema states the rule of [`Username::parse`], which
/// checks it (registration answers 400 with the rule in words; login answers
/// 401 as for any unknown user; an account path 404). Only a string over 256
/// characters is refused here.
#[derive(Debug, Clone)]
pub struct UsernameField(pub String);

impl Rule for UsernameField {
    type Raw = String;

    fn check(text: String) -> Result<Self, String> {
        if text.chars().count() > 256 {
            return Err("longer than 256 characters".to_owned());
        }
        Ok(Self(text))
    }
}

field!(
    UsernameField,
    "username",
    MetaSchema {
        min_length: Some(Username::MIN_LENGTH),
        max_length: Some(Username::MAX_LENGTH),
        pattern: Some(r"^[A-Za-z0-9_.-]+$".to_owned()),
        ..MetaSchema::new("string")
    }
);

impl std::ops::Deref for UsernameField {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

/// A number of units, from `MIN` to 1 000 000 000: an order line's quantity
/// (`Quantity<1>`), or a batch's (`Quantity<0>` for a lost shipment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity<const MIN: u32 = 1>(pub u32);

impl<const MIN: u32> Rule for Quantity<MIN> {
    type Raw = u32;

    fn check(units: u32) -> Result<Self, String> {
        if (MIN..=MAX_QUANTITY).contains(&units) {
            Ok(Self(units))
        } else {
            Err(format!("must be from {MIN} to {MAX_QUANTITY}"))
        }
    }
}

field!(
    @[const MIN: u32] Quantity<MIN>,
    format!("quantity_{MIN}"),
    MetaSchema {
        minimum: Some(f64::from(MIN)),
        maximum: Some(f64::from(MAX_QUANTITY)),
        ..MetaSchema::new_with_format("integer", "uint32")
    }
);

/// A calendar date, `YYYY-MM-DD`, from 0001-01-01 to 9999-12-31 (four-digit
/// years: databases do not all store dates outside them, and such a date
/// would be refused by the database after the request was accepted).
/// Described with OpenAPI's standard `date` format, not poem-openapi's
/// `naive-date`, so that clients and tools know it is a date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Date(pub NaiveDate);

impl Rule for Date {
    type Raw = NaiveDate;

    fn check(date: NaiveDate) -> Result<Self, String> {
        if (1..=9999).contains(&date.year()) {
            Ok(Self(date))
        } else {
            Err("must be a date from 0001-01-01 to 9999-12-31".to_owned())
        }
    }
}

field!(
    Date,
    "string_date",
    MetaSchema::new_with_format("string", "date")
);

/// How many items a page holds: 1–200, 50 when absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit(pub u32);

impl Default for PageLimit {
    fn default() -> Self {
        Self(50)
    }
}

impl Rule for PageLimit {
    type Raw = u32;

    fn check(items: u32) -> Result<Self, String> {
        if (1..=Self::MAX).contains(&items) {
            Ok(Self(items))
        } else {
            Err(format!("must be from 1 to {}", Self::MAX))
        }
    }
}

field!(
    PageLimit,
    "page_limit",
    MetaSchema {
        minimum: Some(1.0),
        maximum: Some(f64::from(PageLimit::MAX)),
        ..MetaSchema::new_with_format("integer", "uint32")
    }
);

impl PageLimit {
    const MAX: u32 = 200;

    /// The page's items and the next page's cursor (the last item's, when
    /// more follow). `items` was read with [`PageLimit::probe`] items at
    /// most: the one past the page tells whether a page follows.
    pub fn page<T>(
        self,
        mut items: Vec<T>,
        cursor: impl Fn(&T) -> String,
    ) -> (Vec<T>, Option<String>) {
        let limit = self.0 as usize;
        let more = items.len() > limit;
        items.truncate(limit);
        let next = more.then(|| items.last().map(cursor)).flatten();
        (items, next)
    }

    /// How many items to read for a page: one more than it holds.
    pub fn probe(self) -> usize {
        self.0 as usize + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_have_no_whitespace_and_up_to_100_characters() {
        for ok in ["a", "order-001", "ÉLAN_42", &"x".repeat(100), "{$ne:null}"] {
            assert_eq!(Identifier::parse_from_parameter(ok).unwrap().0, ok);
        }
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
            assert!(
                serde_json::from_value::<Identifier>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn quantities_stay_within_their_bounds() {
        assert!(Quantity::<1>::parse_from_parameter("0").is_err());
        assert_eq!(
            Quantity::<0>::parse_from_parameter("0").unwrap(),
            Quantity(0)
        );
        assert_eq!(
            serde_json::from_value::<Quantity>(serde_json::json!(1_000_000_000)).unwrap(),
            Quantity(1_000_000_000)
        );
        let over = serde_json::from_value::<Quantity>(serde_json::json!(1_000_000_001));
        assert_eq!(
            over.unwrap_err().to_string(),
            "must be from 1 to 1000000000"
        );
    }

    #[test]
    fn dates_have_four_digit_years() {
        assert!(serde_json::from_value::<Date>(serde_json::json!("2026-11-22")).is_ok());
        for bad in ["+10000-01-01", "0000-12-31", "-0001-01-01"] {
            assert!(
                Date::parse_from_json(Some(Value::from(bad))).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_page_holds_at_most_its_limit_and_names_the_next_cursor() {
        let limit = PageLimit(2);
        assert_eq!(limit.probe(), 3);
        assert_eq!(
            limit.page(vec![1, 2, 3], i32::to_string),
            (vec![1, 2], Some("2".to_owned()))
        );
        assert_eq!(limit.page(vec![1, 2], i32::to_string), (vec![1, 2], None));
        assert!(PageLimit::parse_from_parameter("201").is_err());
        assert!(PageLimit::parse_from_parameter("0").is_err());
    }
}
