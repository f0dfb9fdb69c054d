//! Field types every tag shares. Each states its rule once: its schema tells
//! clients, and its parser, the same for a JSON field, a path or a query
//! parameter, refuses anything else with a 400 that names the field.
//!
//! Rules are checked by hand rather than with poem-openapi's `pattern`
//! validator, which compiles its regex on every request (poem-openapi 5.1:
//! `Regex::new` inside `Pattern::check`); the schemas still state the patterns.

use std::borrow::Cow;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{Datelike, NaiveDate};
use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{
    ParseError, ParseFromJSON, ParseFromParameter, ParseResult, ToJSON, Type,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::Failure;
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

/// An order id, sku or batch reference: 1–100 printable ASCII characters
/// other than the space (`!` to `~`), so that no two ids look alike but for
/// invisible or look-alike characters. Case-sensitive: `A-1` and `a-1` are
/// two ids.
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
        } else if !text.bytes().all(|byte| byte.is_ascii_graphic()) {
            Err(
                "must be printable ASCII (`!` to `~`): no spaces, control or non-ASCII characters"
                    .to_owned(),
            )
        } else if text.len() > Self::MAX_LENGTH {
            Err(format!("longer than {} characters", Self::MAX_LENGTH))
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
        pattern: Some(r"^[!-~]+$".to_owned()),
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

/// Where a page of one listing ends: opaque to clients. It holds the
/// listing (with its filters) and the last item's key, so that the next page
/// starts after that item however the items before it change, and a cursor
/// of another listing is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(String);

impl Cursor {
    const MAX_LENGTH: usize = 600;

    /// The name of a listing, with its sku filter if any.
    pub fn listing(name: &str, sku: Option<&str>) -> String {
        match sku {
            Some(sku) => format!("{name}?sku={sku}"),
            None => name.to_owned(),
        }
    }

    /// The cursor after `position` in `listing`.
    pub fn after(listing: &str, position: &str) -> String {
        URL_SAFE_NO_PAD.encode(format!("{listing}\n{position}"))
    }

    /// The position where a page of `listing` starts (after it): none
    /// without a cursor; a 400 for another listing's cursor, or one whose
    /// position is not a `P`.
    pub fn resume<P: FromStr>(cursor: Option<&Self>, listing: &str) -> Result<Option<P>, Failure> {
        cursor.map(|cursor| cursor.position_in(listing)).transpose()
    }

    /// The position this cursor holds in `listing`; a 400 if it is another
    /// listing's.
    fn position_in<P: FromStr>(&self, listing: &str) -> Result<P, Failure> {
        let decoded = URL_SAFE_NO_PAD
            .decode(&self.0)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok());
        let forged = || {
            Failure::BadRequest("Invalid cursor: pass a `next_cursor` as it was given".to_owned())
        };
        match decoded.as_deref().and_then(|text| text.split_once('\n')) {
            Some((of, position)) if of == listing => position.parse().map_err(|_| forged()),
            Some(_) => Err(Failure::BadRequest(
                "Invalid cursor: it belongs to another listing".to_owned(),
            )),
            None => Err(forged()),
        }
    }
}

impl Rule for Cursor {
    type Raw = String;

    fn check(text: String) -> Result<Self, String> {
        if text.is_empty() || text.len() > Self::MAX_LENGTH {
            Err(format!("must be 1 to {} characters", Self::MAX_LENGTH))
        } else {
            Ok(Self(text))
        }
    }
}

field!(
    Cursor,
    "cursor",
    MetaSchema {
        min_length: Some(1),
        max_length: Some(Cursor::MAX_LENGTH),
        pattern: Some(r"^[A-Za-z0-9_-]+$".to_owned()),
        ..MetaSchema::new("string")
    }
);

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

    /// The page's items and the next page's cursor in `listing` (after the
    /// last item's `key`, when more follow). `items` was read with
    /// [`PageLimit::probe`] items at most: the one past the page tells
    /// whether a page follows.
    pub fn page<T>(
        self,
        mut items: Vec<T>,
        listing: &str,
        key: impl Fn(&T) -> String,
    ) -> (Vec<T>, Option<String>) {
        let limit = self.0 as usize;
        let more = items.len() > limit;
        items.truncate(limit);
        let next = more.then(|| items.last().map(|item| Cursor::after(listing, &key(item))));
        (items, next.flatten())
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
    fn identifiers_are_1_to_100_printable_ascii_characters() {
        for ok in [
            "a",
            "order-001",
            "Order-001",
            &"x".repeat(100),
            "{$ne:null}",
            "~!",
        ] {
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
            "ÉLAN_42",
            "order\u{200b}-1",
            "order\u{2010}1",
            "\u{39f}rder-1",
            "order\u{ff0d}1",
            "order\0",
            "order\u{7f}",
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
    fn a_cursor_holds_its_listing_and_position() {
        let cursor = Cursor(Cursor::after("batches?sku=A", "batch-7"));
        assert!(
            cursor
                .0
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(
            cursor.position_in::<String>("batches?sku=A").unwrap(),
            "batch-7"
        );
        assert!(cursor.position_in::<u64>("batches?sku=A").is_err());
        for other in ["batches?sku=B", "batches", "users"] {
            assert!(cursor.position_in::<String>(other).is_err(), "{other}");
        }
        for forged in ["2", "batch-7", "!!", "YWJj"] {
            assert!(
                Cursor(forged.to_owned())
                    .position_in::<String>("batches")
                    .is_err(),
                "{forged}"
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
        let (page, next) = limit.page(vec![1, 2, 3], "numbers", i32::to_string);
        assert_eq!(page, [1, 2]);
        let next = Cursor(next.unwrap());
        assert_eq!(next.position_in::<u64>("numbers").unwrap(), 2);
        assert_eq!(
            limit.page(vec![1, 2], "numbers", i32::to_string),
            (vec![1, 2], None)
        );
        assert!(PageLimit::parse_from_parameter("201").is_err());
        assert!(PageLimit::parse_from_parameter("0").is_err());
    }
}
