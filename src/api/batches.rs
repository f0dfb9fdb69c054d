//! `batches` tag: stock. Reading needs any access token; adding stock or
//! changing a batch's quantity needs the `admin` role.

use chrono::NaiveDate;
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::auth::{AccessToken, AdminOnly, AdminToken, Protected};
use super::error::{ErrorBody, bad_request, unavailable};
use super::json_body::JsonBody;
use super::{ApiTags, AppState};
use crate::domain::allocation::{Batch, OrderLine};
use crate::services::allocation::{
    self, AddBatchError, ChangeQuantityError, GetBatchError, QuantityChange,
};

pub struct BatchesApi;

/// Largest quantity allot accepts for a batch or an order line.
pub const MAX_QUANTITY: u32 = 1_000_000_000;

/// A batch to add to the stock.
#[derive(Debug, Object, serde::Deserialize)]
#[oai(example)]
pub struct NewBatch {
    /// Unique reference of the batch (1–100 characters, no whitespace).
    #[oai(validator(min_length = 1, max_length = 100, pattern = r"^\S+$"))]
    pub reference: String,
    /// The stock-keeping unit it holds (1–100 characters, no whitespace).
    #[oai(validator(min_length = 1, max_length = 100, pattern = r"^\S+$"))]
    pub sku: String,
    /// How many units were bought (1 to 1 000 000 000).
    #[oai(validator(minimum(value = "1"), maximum(value = "1000000000")))]
    pub purchased_quantity: u32,
    /// Expected arrival (`YYYY-MM-DD`), or null for stock already in the warehouse.
    /// Allocation prefers warehouse stock, then the earliest arrival.
    pub eta: Option<NaiveDate>,
}

impl Example for NewBatch {
    fn example() -> Self {
        Self {
            reference: "batch-001".to_owned(),
            sku: "SMALL-TABLE".to_owned(),
            purchased_quantity: 20,
            eta: None,
        }
    }
}

/// A new purchased quantity for a batch.
#[derive(Debug, Object, serde::Deserialize)]
pub struct QuantityUpdate {
    /// The new number of units bought (1 to 1 000 000 000).
    #[oai(validator(minimum(value = "1"), maximum(value = "1000000000")))]
    pub purchased_quantity: u32,
}

/// One order line allocated to a batch.
#[derive(Debug, Object)]
pub struct AllocatedLine {
    /// The customer order.
    pub orderid: String,
    /// Units allocated.
    pub qty: u32,
}

/// A batch with its allocations.
#[derive(Debug, Object)]
pub struct BatchBody {
    pub reference: String,
    pub sku: String,
    pub purchased_quantity: u32,
    /// Units not yet allocated.
    pub available_quantity: i64,
    /// Expected arrival, or null when in the warehouse.
    pub eta: Option<NaiveDate>,
    /// Allocated order lines, oldest first.
    pub allocations: Vec<AllocatedLine>,
}

impl From<&Batch> for BatchBody {
    fn from(batch: &Batch) -> Self {
        Self {
            reference: batch.reference.clone(),
            sku: batch.sku.clone(),
            purchased_quantity: batch.purchased_quantity(),
            available_quantity: batch.available_quantity(),
            eta: batch.eta,
            allocations: batch
                .allocations()
                .iter()
                .map(|line| AllocatedLine {
                    orderid: line.orderid.clone(),
                    qty: line.qty,
                })
                .collect(),
        }
    }
}

/// A batch in a listing.
#[derive(Debug, Object)]
pub struct BatchSummary {
    pub reference: String,
    pub sku: String,
    pub purchased_quantity: u32,
    /// Units not yet allocated.
    pub available_quantity: i64,
    /// Expected arrival, or null when in the warehouse.
    pub eta: Option<NaiveDate>,
}

/// A page of batches, ordered by reference.
#[derive(Debug, Object)]
pub struct BatchPage {
    pub batches: Vec<BatchSummary>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<String>,
}

/// An order line that lost its allocation.
#[derive(Debug, Object)]
pub struct OrderLineBody {
    pub orderid: String,
    pub sku: String,
    pub qty: u32,
}

impl From<&OrderLine> for OrderLineBody {
    fn from(line: &OrderLine) -> Self {
        Self {
            orderid: line.orderid.clone(),
            sku: line.sku.clone(),
            qty: line.qty,
        }
    }
}

/// An order line moved to another batch.
#[derive(Debug, Object)]
pub struct ReallocatedLine {
    pub orderid: String,
    pub sku: String,
    pub qty: u32,
    /// The batch it now draws from.
    pub batchref: String,
}

/// The outcome of a quantity change.
#[derive(Debug, Object)]
pub struct QuantityChangeBody {
    /// The batch after the change.
    pub batch: BatchBody,
    /// Lines the smaller quantity no longer covered, allocated again elsewhere.
    pub reallocated: Vec<ReallocatedLine>,
    /// Lines that could not be allocated again: no batch of the sku has room.
    pub unallocated: Vec<OrderLineBody>,
}

impl From<QuantityChange> for QuantityChangeBody {
    fn from(change: QuantityChange) -> Self {
        Self {
            batch: BatchBody::from(&change.batch),
            reallocated: change
                .reallocated
                .iter()
                .map(|(line, batchref)| ReallocatedLine {
                    orderid: line.orderid.clone(),
                    sku: line.sku.clone(),
                    qty: line.qty,
                    batchref: batchref.clone(),
                })
                .collect(),
            unallocated: change.unallocated.iter().map(OrderLineBody::from).collect(),
        }
    }
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "add_bad_request")]
pub enum AddBatchResponse {
    /// The batch was added.
    #[oai(status = 201)]
    Created(Json<BatchBody>),
    /// A field is missing, mistyped or out of range; the message names it.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// A batch with this reference exists.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// The database is unreachable; retry later.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
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
    BadRequest(Json<ErrorBody>),
    /// The database is unreachable; retry later.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

fn list_bad_request(error: poem::Error) -> ListBatchesResponse {
    ListBatchesResponse::BadRequest(bad_request(error))
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "get_bad_request")]
pub enum GetBatchResponse {
    /// The batch, with its allocations.
    #[oai(status = 200)]
    Ok(Json<BatchBody>),
    /// The reference is malformed.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No batch has this reference.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The database is unreachable; retry later.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

fn get_bad_request(error: poem::Error) -> GetBatchResponse {
    GetBatchResponse::BadRequest(bad_request(error))
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "change_bad_request")]
pub enum ChangeQuantityResponse {
    /// The quantity changed; lines it no longer covers were re-allocated where possible.
    #[oai(status = 200)]
    Ok(Json<QuantityChangeBody>),
    /// The quantity is missing or out of range.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No batch has this reference.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The database is unreachable, or the batch kept changing; retry later.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

fn change_bad_request(error: poem::Error) -> ChangeQuantityResponse {
    ChangeQuantityResponse::BadRequest(bad_request(error))
}

fn message(error: &impl std::fmt::Display) -> Json<ErrorBody> {
    Json(ErrorBody::new(error.to_string()))
}

#[OpenApi(tag = "ApiTags::Batches")]
impl BatchesApi {
    /// Add a batch
    ///
    /// Adds a batch of stock. Requires the `admin` role.
    #[oai(path = "/batches", method = "post", operation_id = "add_batch")]
    async fn add_batch(
        &self,
        state: Data<&AppState>,
        _admin: AdminToken,
        body: JsonBody<NewBatch>,
    ) -> AdminOnly<AddBatchResponse> {
        let JsonBody(new) = body;
        let result = allocation::add_batch(
            &state.batches,
            &new.reference,
            &new.sku,
            new.purchased_quantity,
            new.eta,
        )
        .await;
        AdminOnly::Ok(match result {
            Ok(batch) => AddBatchResponse::Created(Json(BatchBody::from(&batch))),
            Err(error @ AddBatchError::DuplicateBatch(_)) => {
                AddBatchResponse::Conflict(message(&error))
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
        // One extra tells whether another page follows.
        let result = allocation::list_batches(
            &state.batches,
            sku.0.as_deref(),
            cursor.0.as_deref(),
            limit + 1,
        )
        .await;
        Protected::Ok(match result {
            Ok(mut batches) => {
                let more = batches.len() > limit;
                batches.truncate(limit);
                let next_cursor = more
                    .then(|| batches.last().map(|b| b.reference.clone()))
                    .flatten();
                ListBatchesResponse::Ok(Json(BatchPage {
                    batches: batches
                        .iter()
                        .map(|batch| BatchSummary {
                            reference: batch.reference.clone(),
                            sku: batch.sku.clone(),
                            purchased_quantity: batch.purchased_quantity(),
                            available_quantity: batch.available_quantity(),
                            eta: batch.eta,
                        })
                        .collect(),
                    next_cursor,
                }))
            }
            Err(error) => ListBatchesResponse::Unavailable(unavailable(&error)),
        })
    }

    /// Get a batch
    ///
    /// The batch with its allocations.
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
            match allocation::get_batch(&state.batches, &reference.0).await {
                Ok(batch) => GetBatchResponse::Ok(Json(BatchBody::from(&batch))),
                Err(error @ GetBatchError::BatchNotFound(_)) => {
                    GetBatchResponse::NotFound(message(&error))
                }
                Err(GetBatchError::Store(error)) => {
                    GetBatchResponse::Unavailable(unavailable(&error))
                }
            },
        )
    }

    /// Change a batch's quantity
    ///
    /// Sets the purchased quantity. When it no longer covers the allocations, the
    /// most recently allocated lines are deallocated and allocated again to other
    /// batches of the sku where possible; the response lists those that could not
    /// be. Requires the `admin` role.
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
            &state.batches,
            &reference.0,
            body.purchased_quantity,
        )
        .await;
        AdminOnly::Ok(match result {
            Ok(change) => ChangeQuantityResponse::Ok(Json(change.into())),
            Err(error @ ChangeQuantityError::BatchNotFound(_)) => {
                ChangeQuantityResponse::NotFound(message(&error))
            }
            Err(error @ ChangeQuantityError::Contention(_)) => {
                ChangeQuantityResponse::Unavailable(message(&error))
            }
            Err(error @ ChangeQuantityError::Reallocation { .. }) => {
                tracing::error!(%error, cause = ?std::error::Error::source(&error).map(ToString::to_string), "re-allocation after a quantity change failed");
                ChangeQuantityResponse::Unavailable(message(&error))
            }
            Err(ChangeQuantityError::Store(error)) => {
                ChangeQuantityResponse::Unavailable(unavailable(&error))
            }
        })
    }
}

fn default_limit() -> u32 {
    50
}
