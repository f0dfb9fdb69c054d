//! `batches` tag: stock. Reading needs any access token; adding stock or
//! changing a batch's quantity needs the `admin` role.

use std::borrow::Cow;

use chrono::NaiveDate;
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{Example, ParseFromJSON, ParseResult, ToJSON, Type};
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde_json::Value;

use super::auth::{AccessToken, AdminOnly, AdminToken, Protected};
use super::error::{ApiError, bad_request, error_body, unavailable};
use super::identifier::Identifier;
use super::json_body::JsonBody;
use super::{ApiTags, AppState};
use crate::domain::allocation::{Batch, OrderLine};
use crate::services::allocation::{self, AddBatchError, BatchError, BatchLine, QuantityChange};

pub struct BatchesApi;

/// A calendar date, `YYYY-MM-DD`. poem-openapi describes `NaiveDate` with the
/// non-standard format `naive-date`; this is the same value as OpenAPI's
/// standard `date`, so clients and tools know it is a date.
///
/// Only years 1 to 9999 are accepted (four-digit `YYYY`): databases do not
/// all store dates outside it, and such a date would be refused by the
/// database after the request was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Date(pub NaiveDate);

impl Date {
    const OUT_OF_RANGE: &'static str = "must be a date from 0001-01-01 to 9999-12-31";

    fn checked(date: NaiveDate) -> Result<Self, &'static str> {
        use chrono::Datelike;
        if (1..=9999).contains(&date.year()) {
            Ok(Self(date))
        } else {
            Err(Self::OUT_OF_RANGE)
        }
    }
}

impl<'de> serde::Deserialize<'de> for Date {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::checked(NaiveDate::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

impl Type for Date {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "string_date".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema::new_with_format("string", "date")))
    }

    fn as_raw_value(&self) -> Option<&Self> {
        Some(self)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromJSON for Date {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        let date = NaiveDate::parse_from_json(value)
            .map_err(poem_openapi::types::ParseError::propagate)?;
        Self::checked(date).map_err(poem_openapi::types::ParseError::custom)
    }
}

impl ToJSON for Date {
    fn to_json(&self) -> Option<Value> {
        self.0.to_json()
    }
}

/// A batch to add to the stock.
#[derive(Debug, Object, serde::Deserialize)]
#[oai(example)]
pub struct NewBatch {
    /// Unique reference of the batch (1–100 characters, no whitespace).
    pub reference: Identifier,
    /// The stock-keeping unit it holds (1–100 characters, no whitespace).
    pub sku: Identifier,
    /// How many units were bought (1 to 1 000 000 000).
    #[oai(validator(minimum(value = "1"), maximum(value = "1000000000")))]
    pub purchased_quantity: u32,
    /// Expected arrival (`YYYY-MM-DD`, from 0001-01-01 to 9999-12-31), or null
    /// for stock already in the warehouse.
    /// Allocation prefers warehouse stock, then the earliest arrival.
    #[oai(nullable)]
    pub eta: Option<Date>,
}

impl Example for NewBatch {
    fn example() -> Self {
        Self {
            reference: Identifier("batch-001".to_owned()),
            sku: Identifier("SMALL-TABLE".to_owned()),
            purchased_quantity: 20,
            eta: None,
        }
    }
}

/// A new purchased quantity for a batch.
#[derive(Debug, Object, serde::Deserialize)]
#[oai(example)]
pub struct QuantityUpdate {
    /// The new number of units bought (0 to 1 000 000 000; 0 for a lost shipment).
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000")))]
    pub purchased_quantity: u32,
}

impl Example for QuantityUpdate {
    fn example() -> Self {
        Self {
            purchased_quantity: 15,
        }
    }
}

/// A batch and its quantities. Its lines are paged by
/// `GET /batches/{reference}/allocations`.
#[derive(Debug, Object)]
#[oai(example)]
pub struct BatchBody {
    /// Unique reference of the batch.
    pub reference: String,
    /// The stock-keeping unit it holds.
    pub sku: String,
    /// How many units were bought.
    pub purchased_quantity: u32,
    /// Units held by the order lines drawing from it.
    pub allocated_quantity: i64,
    /// Units not yet allocated. Negative only for a moment, while a batch that
    /// shrank below its lines gives the most recent of them up.
    pub available_quantity: i64,
    /// Expected arrival, or null when in the warehouse.
    #[oai(nullable)]
    pub eta: Option<Date>,
}

impl Example for BatchBody {
    fn example() -> Self {
        Self {
            reference: "batch-001".to_owned(),
            sku: "SMALL-TABLE".to_owned(),
            purchased_quantity: 20,
            allocated_quantity: 2,
            available_quantity: 18,
            eta: None,
        }
    }
}

impl From<&Batch> for BatchBody {
    fn from(batch: &Batch) -> Self {
        Self {
            reference: batch.reference.clone(),
            sku: batch.sku.clone(),
            purchased_quantity: batch.purchased_quantity(),
            allocated_quantity: batch.allocated_quantity(),
            available_quantity: batch.available_quantity(),
            eta: batch.eta.map(Date),
        }
    }
}

/// A page of batches, ordered by reference.
#[derive(Debug, Object)]
#[oai(example)]
pub struct BatchPage {
    /// At most `limit` batches.
    pub batches: Vec<BatchBody>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<String>,
}

impl Example for BatchPage {
    fn example() -> Self {
        Self {
            batches: vec![BatchBody::example()],
            next_cursor: Some("batch-001".to_owned()),
        }
    }
}

/// One order line drawing from a batch.
#[derive(Debug, Object)]
pub struct BatchAllocation {
    /// The customer order.
    pub orderid: String,
    /// Units allocated.
    pub qty: u32,
}

/// A page of a batch's order lines, oldest first.
#[derive(Debug, Object)]
#[oai(example)]
pub struct BatchAllocationPage {
    /// At most `limit` lines.
    pub allocations: Vec<BatchAllocation>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<String>,
}

impl Example for BatchAllocationPage {
    fn example() -> Self {
        Self {
            allocations: vec![BatchAllocation {
                orderid: "order-001".to_owned(),
                qty: 2,
            }],
            next_cursor: Some("1".to_owned()),
        }
    }
}

/// An order line waiting for stock.
#[derive(Debug, Object)]
pub struct BackorderedLine {
    /// The customer order.
    pub orderid: String,
    /// The stock-keeping unit ordered.
    pub sku: String,
    /// Units ordered.
    pub qty: u32,
}

impl From<&OrderLine> for BackorderedLine {
    fn from(line: &OrderLine) -> Self {
        Self {
            orderid: line.orderid.clone(),
            sku: line.sku.clone(),
            qty: line.qty,
        }
    }
}

/// An order line allocated to a batch by a quantity change.
#[derive(Debug, Object)]
pub struct ReallocatedLine {
    /// The customer order.
    pub orderid: String,
    /// The stock-keeping unit ordered.
    pub sku: String,
    /// Units ordered.
    pub qty: u32,
    /// The batch it now draws from.
    pub batchref: String,
}

/// The outcome of a quantity change: `batch` is the batch after the change.
#[derive(Debug, Object)]
#[oai(example)]
pub struct QuantityChangeBody {
    // No doc comment: a described `$ref` becomes an `allOf` wrapper, which client
    // generators turn into a copy of `BatchBody` instead of `BatchBody` itself.
    pub batch: BatchBody,
    /// Lines this change allocated: lines the smaller quantity no longer
    /// covered that found room (in another batch, or back in this one), and
    /// backordered lines that a larger quantity served.
    pub reallocated: Vec<ReallocatedLine>,
    /// Lines the smaller quantity no longer covered that found no room: they
    /// wait for stock of their sku (see `GET /backorders`).
    pub backordered: Vec<BackorderedLine>,
}

impl Example for QuantityChangeBody {
    fn example() -> Self {
        Self {
            batch: BatchBody {
                purchased_quantity: 2,
                allocated_quantity: 2,
                available_quantity: 0,
                ..BatchBody::example()
            },
            reallocated: vec![ReallocatedLine {
                orderid: "order-002".to_owned(),
                sku: "SMALL-TABLE".to_owned(),
                qty: 2,
                batchref: "batch-002".to_owned(),
            }],
            backordered: vec![BackorderedLine {
                orderid: "order-003".to_owned(),
                sku: "SMALL-TABLE".to_owned(),
                qty: 2,
            }],
        }
    }
}

impl From<QuantityChange> for QuantityChangeBody {
    fn from(change: QuantityChange) -> Self {
        Self {
            batch: BatchBody::from(&change.batch),
            reallocated: change
                .reallocated
                .into_iter()
                .map(|(line, batchref)| ReallocatedLine {
                    orderid: line.orderid,
                    sku: line.sku,
                    qty: line.qty,
                    batchref,
                })
                .collect(),
            backordered: change
                .backordered
                .iter()
                .map(BackorderedLine::from)
                .collect(),
        }
    }
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "add_bad_request")]
pub enum AddBatchResponse {
    /// The batch was added (backordered lines of its sku may already have taken
    /// some of it).
    #[oai(status = 201)]
    Created(Json<BatchBody>),
    /// A field is missing, mistyped or out of range; the message names it.
    #[oai(status = 400)]
    BadRequest(Json<ApiError>),
    /// A batch with this reference exists.
    #[oai(status = 409)]
    Conflict(Json<ApiError>),
    /// The request body is over the size limit (64 KiB by default).
    // Answered by `middleware::BodyLimit` before the handler runs.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ApiError>),
    /// The database is unreachable; retry later.
    #[oai(status = 503)]
    Unavailable(Json<ApiError>),
}

fn add_bad_request(error: poem::Error) -> AddBatchResponse {
    AddBatchResponse::BadRequest(bad_request(error))
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "list_bad_request")]
pub enum ListBatchesResponse {
    /// A page of batches.
    #[oai(status = 200)]
    Ok(Json<BatchPage>),
    /// A query parameter is out of range; the message names it.
    #[oai(status = 400)]
    BadRequest(Json<ApiError>),
    /// The database is unreachable; retry later.
    #[oai(status = 503)]
    Unavailable(Json<ApiError>),
}

fn list_bad_request(error: poem::Error) -> ListBatchesResponse {
    ListBatchesResponse::BadRequest(bad_request(error))
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "get_bad_request")]
pub enum GetBatchResponse {
    /// The batch and its quantities.
    #[oai(status = 200)]
    Ok(Json<BatchBody>),
    /// The reference is malformed.
    #[oai(status = 400)]
    BadRequest(Json<ApiError>),
    /// No batch has this reference.
    #[oai(status = 404)]
    NotFound(Json<ApiError>),
    /// The database is unreachable; retry later.
    #[oai(status = 503)]
    Unavailable(Json<ApiError>),
}

fn get_bad_request(error: poem::Error) -> GetBatchResponse {
    GetBatchResponse::BadRequest(bad_request(error))
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "batch_allocations_bad_request")]
pub enum BatchAllocationsResponse {
    /// A page of the batch's order lines, oldest first.
    #[oai(status = 200)]
    Ok(Json<BatchAllocationPage>),
    /// A parameter is malformed or out of range; the message names it.
    #[oai(status = 400)]
    BadRequest(Json<ApiError>),
    /// No batch has this reference.
    #[oai(status = 404)]
    NotFound(Json<ApiError>),
    /// The database is unreachable; retry later.
    #[oai(status = 503)]
    Unavailable(Json<ApiError>),
}

fn batch_allocations_bad_request(error: poem::Error) -> BatchAllocationsResponse {
    BatchAllocationsResponse::BadRequest(bad_request(error))
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "change_bad_request")]
pub enum ChangeQuantityResponse {
    /// The quantity changed. Lines it no longer covers were moved to other
    /// batches where stock allows, and are backordered where it does not.
    #[oai(status = 200)]
    Ok(Json<QuantityChangeBody>),
    /// The quantity is missing or out of range.
    #[oai(status = 400)]
    BadRequest(Json<ApiError>),
    /// No batch has this reference.
    #[oai(status = 404)]
    NotFound(Json<ApiError>),
    /// The request body is over the size limit (64 KiB by default).
    // Answered by `middleware::BodyLimit` before the handler runs.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ApiError>),
    /// The database is unreachable; retry later. The change may be partly
    /// done: no line is lost, and allot finishes it by itself.
    #[oai(status = 503)]
    Unavailable(Json<ApiError>),
}

fn change_bad_request(error: poem::Error) -> ChangeQuantityResponse {
    ChangeQuantityResponse::BadRequest(bad_request(error))
}

/// The next page's cursor: the last item's, when the page came back full.
pub fn next_cursor<T>(
    items: &mut Vec<T>,
    limit: usize,
    cursor: impl Fn(&T) -> String,
) -> Option<String> {
    // Callers ask for one more than `limit`: it tells whether a page follows.
    let more = items.len() > limit;
    items.truncate(limit);
    more.then(|| items.last().map(cursor)).flatten()
}

#[OpenApi(tag = "ApiTags::Batches")]
impl BatchesApi {
    /// Add a batch
    ///
    /// Adds a batch of stock; backordered lines of its sku take it first,
    /// oldest first. Requires the `admin` role.
    #[oai(path = "/batches", method = "post", operation_id = "add_batch")]
    async fn add_batch(
        &self,
        state: Data<&AppState>,
        _admin: AdminToken,
        body: JsonBody<NewBatch>,
    ) -> AdminOnly<AddBatchResponse> {
        let JsonBody(new) = body;
        let result = allocation::add_batch(
            &state.allocations,
            &new.reference,
            &new.sku,
            new.purchased_quantity,
            new.eta.map(|eta| eta.0),
        )
        .await;
        AdminOnly::Ok(match result {
            Ok(batch) => AddBatchResponse::Created(Json(BatchBody::from(&batch))),
            Err(error @ AddBatchError::DuplicateBatch(_)) => {
                AddBatchResponse::Conflict(error_body(&error))
            }
            Err(AddBatchError::Store(error)) => AddBatchResponse::Unavailable(unavailable(&error)),
        })
    }

    /// List batches
    ///
    /// Pages through batches ordered by reference, optionally of one sku.
    #[oai(path = "/batches", method = "get", operation_id = "list_batches")]
    async fn list_batches(
        &self,
        state: Data<&AppState>,
        _token: AccessToken,
        /// Only batches of this sku.
        #[oai(validator(min_length = 1, max_length = 100))]
        sku: Query<Option<String>>,
        /// Batches per page, 1–200 (default 50).
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "200"))
        )]
        limit: Query<u32>,
        /// `next_cursor` of the previous page.
        #[oai(validator(min_length = 1, max_length = 100))]
        cursor: Query<Option<String>>,
    ) -> Protected<ListBatchesResponse> {
        let limit = limit.0 as usize;
        let result = allocation::list_batches(
            &state.allocations,
            sku.0.as_deref(),
            cursor.0.as_deref(),
            limit + 1,
        )
        .await;
        Protected::Ok(match result {
            Ok(mut batches) => {
                let next_cursor = next_cursor(&mut batches, limit, |b| b.reference.clone());
                ListBatchesResponse::Ok(Json(BatchPage {
                    batches: batches.iter().map(BatchBody::from).collect(),
                    next_cursor,
                }))
            }
            Err(error) => ListBatchesResponse::Unavailable(unavailable(&error)),
        })
    }

    /// Get a batch
    ///
    /// The batch and its quantities.
    #[oai(
        path = "/batches/:reference",
        method = "get",
        operation_id = "get_batch"
    )]
    async fn get_batch(
        &self,
        state: Data<&AppState>,
        _token: AccessToken,
        /// The batch reference.
        #[oai(validator(min_length = 1, max_length = 100))]
        reference: Path<String>,
    ) -> Protected<GetBatchResponse> {
        Protected::Ok(
            match allocation::get_batch(&state.allocations, &reference.0).await {
                Ok(batch) => GetBatchResponse::Ok(Json(BatchBody::from(&batch))),
                Err(error @ BatchError::BatchNotFound(_)) => {
                    GetBatchResponse::NotFound(error_body(&error))
                }
                Err(BatchError::Store(error)) => GetBatchResponse::Unavailable(unavailable(&error)),
            },
        )
    }

    /// A batch's order lines
    ///
    /// Pages through the order lines drawing from a batch, oldest first.
    /// Requires the `admin` role.
    #[oai(
        path = "/batches/:reference/allocations",
        method = "get",
        operation_id = "batch_allocations"
    )]
    async fn batch_allocations(
        &self,
        state: Data<&AppState>,
        _admin: AdminToken,
        /// The batch reference.
        #[oai(validator(min_length = 1, max_length = 100))]
        reference: Path<String>,
        /// Lines per page, 1–200 (default 50).
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "200"))
        )]
        limit: Query<u32>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<u64>>,
    ) -> AdminOnly<BatchAllocationsResponse> {
        let limit = limit.0 as usize;
        let result =
            allocation::batch_lines(&state.allocations, &reference.0, cursor.0, limit + 1).await;
        AdminOnly::Ok(match result {
            Ok(mut lines) => {
                let next_cursor = next_cursor(&mut lines, limit, |l| l.position.to_string());
                BatchAllocationsResponse::Ok(Json(BatchAllocationPage {
                    allocations: lines
                        .into_iter()
                        .map(|BatchLine { orderid, qty, .. }| BatchAllocation { orderid, qty })
                        .collect(),
                    next_cursor,
                }))
            }
            Err(error @ BatchError::BatchNotFound(_)) => {
                BatchAllocationsResponse::NotFound(error_body(&error))
            }
            Err(BatchError::Store(error)) => {
                BatchAllocationsResponse::Unavailable(unavailable(&error))
            }
        })
    }

    /// Change a batch's quantity
    ///
    /// Sets the purchased quantity (0 for a lost shipment). When it no longer
    /// covers the batch's lines, the most recently allocated ones are moved to
    /// other batches of the sku where stock allows, and backordered where it
    /// does not; none is ever dropped. A larger quantity serves backordered
    /// lines first. Requires the `admin` role.
    #[oai(
        path = "/batches/:reference",
        method = "patch",
        operation_id = "change_batch_quantity"
    )]
    async fn change_batch_quantity(
        &self,
        state: Data<&AppState>,
        _admin: AdminToken,
        /// The batch reference.
        #[oai(validator(min_length = 1, max_length = 100))]
        reference: Path<String>,
        body: JsonBody<QuantityUpdate>,
    ) -> AdminOnly<ChangeQuantityResponse> {
        let result = allocation::change_batch_quantity(
            &state.allocations,
            &reference.0,
            body.purchased_quantity,
        )
        .await;
        AdminOnly::Ok(match result {
            Ok(change) => ChangeQuantityResponse::Ok(Json(change.into())),
            Err(error @ BatchError::BatchNotFound(_)) => {
                ChangeQuantityResponse::NotFound(error_body(&error))
            }
            Err(BatchError::Store(error)) => {
                ChangeQuantityResponse::Unavailable(unavailable(&error))
            }
        })
    }
}

pub fn default_limit() -> u32 {
    50
}
