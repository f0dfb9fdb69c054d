//! `batches` tag: stock. Reading needs any access token; adding stock or
//! changing a batch's quantity needs the `admin` role.

mod schemas;

use std::marker::PhantomData;

use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

pub use self::schemas::*;
use super::auth::{AdminToken, StockToken};
use super::error::{ApiError, Failure, message};
use super::fields::{Cursor, Identifier, PageLimit};
use super::json_body::JsonBody;
use super::reply::{Admin, Body, Database, ErrorExamples, Input, Reply, Stock, example};
use super::{Adapters, ApiTags, AppState};
use crate::domain::allocation::Batch;
use crate::services::allocation::{self, BatchError};
use crate::services::ports::allocation::{AddBatchError, BatchLine};

pub struct BatchesApi<A>(pub(super) PhantomData<fn() -> A>);

#[derive(ApiResponse)]
pub enum AddBatchResponse {
    /// The batch was added (backordered lines of its sku may already have taken
    /// some of it).
    #[oai(status = 201)]
    Created(Json<BatchBody>),
    /// A batch with this reference exists.
    #[oai(status = 409)]
    Conflict(Json<ApiError>),
}

#[derive(ApiResponse)]
pub enum ListBatchesResponse {
    /// A page of batches.
    #[oai(status = 200)]
    Ok(Json<BatchPage>),
}

#[derive(ApiResponse)]
pub enum GetBatchResponse {
    /// The batch and its quantities.
    #[oai(status = 200)]
    Ok(Json<BatchBody>),
    /// No batch has this reference.
    #[oai(status = 404)]
    NotFound(Json<ApiError>),
}

#[derive(ApiResponse)]
pub enum BatchAllocationsResponse {
    /// A page of the batch's order lines, oldest first.
    #[oai(status = 200)]
    Ok(Json<BatchAllocationPage>),
    /// No batch has this reference.
    #[oai(status = 404)]
    NotFound(Json<ApiError>),
}

#[derive(ApiResponse)]
pub enum ChangeQuantityResponse {
    /// The quantity changed. Lines it no longer covers were moved to other
    /// batches where stock allows, and are backordered where it does not.
    #[oai(status = 200)]
    Ok(Json<QuantityChangeBody>),
    /// No batch has this reference.
    #[oai(status = 404)]
    NotFound(Json<ApiError>),
}

impl ErrorExamples for AddBatchResponse {
    fn error_examples() -> Vec<(u16, Json<ApiError>)> {
        vec![(
            409,
            message(AddBatchError::DuplicateBatch(example::BATCH.into())),
        )]
    }
}

fn no_such_batch() -> Vec<(u16, Json<ApiError>)> {
    vec![(
        404,
        message(BatchError::BatchNotFound(example::BATCH.into())),
    )]
}

impl ErrorExamples for GetBatchResponse {
    fn error_examples() -> Vec<(u16, Json<ApiError>)> {
        no_such_batch()
    }
}

impl ErrorExamples for BatchAllocationsResponse {
    fn error_examples() -> Vec<(u16, Json<ApiError>)> {
        no_such_batch()
    }
}

impl ErrorExamples for ChangeQuantityResponse {
    fn error_examples() -> Vec<(u16, Json<ApiError>)> {
        no_such_batch()
    }
}

/// Examples of this tag's own error responses.
pub fn error_examples() -> Vec<(u16, &'static str, Json<ApiError>)> {
    [
        AddBatchResponse::described_examples(),
        GetBatchResponse::described_examples(),
        BatchAllocationsResponse::described_examples(),
        ChangeQuantityResponse::described_examples(),
    ]
    .concat()
}

/// A batch that does not exist is the operation's own 404.
fn batch_not_found<T>(error: BatchError, not_found: fn(Json<ApiError>) -> T) -> Result<T, Failure> {
    match error {
        BatchError::BatchNotFound(_) => Ok(not_found(message(error))),
        BatchError::Store(error) => Err(error.into()),
    }
}

#[OpenApi(tag = "ApiTags::Batches")]
impl<A: Adapters> BatchesApi<A> {
    /// Add a batch
    ///
    /// Adds a batch of stock; backordered lines of its sku take it first,
    /// oldest first. Requires the `admin` role.
    #[oai(path = "/batches", method = "post", operation_id = "add_batch")]
    async fn add_batch(
        &self,
        state: Data<&AppState<A>>,
        _admin: AdminToken<A>,
        body: JsonBody<NewBatch>,
    ) -> Reply<AddBatchResponse, (Admin, Input, Body, Database)> {
        let JsonBody(new) = body;
        let eta = new.eta.map(|eta| eta.0);
        let added = allocation::add_batch(
            &state.allocations,
            &new.reference,
            &new.sku,
            new.purchased_quantity.0,
            eta,
        );
        match added.await {
            Ok(batch) => Ok(AddBatchResponse::Created(Json(BatchBody::from(&batch)))),
            Err(error @ AddBatchError::DuplicateBatch(_)) => {
                Ok(AddBatchResponse::Conflict(message(error)))
            }
            Err(AddBatchError::Store(error)) => Err(error.into()),
        }
        .into()
    }

    /// List batches
    ///
    /// Pages through batches ordered by reference, optionally of one sku.
    #[oai(path = "/batches", method = "get", operation_id = "list_batches")]
    async fn list_batches(
        &self,
        state: Data<&AppState<A>>,
        _token: StockToken<A>,
        /// Only batches of this sku.
        sku: Query<Option<Identifier>>,
        /// Batches per page.
        #[oai(default)]
        limit: Query<PageLimit>,
        /// `next_cursor` of the previous page of this same listing (same
        /// filters); a cursor of another listing gets 400.
        cursor: Query<Option<Cursor>>,
    ) -> Reply<ListBatchesResponse, (Stock, Input, Database)> {
        let sku = sku.0.as_deref();
        let listing = Cursor::listing("batches", sku);
        let after = match Cursor::resume::<String>(cursor.0.as_ref(), &listing) {
            Ok(after) => after,
            Err(failure) => return Err(failure).into(),
        };
        let listed =
            allocation::list_batches(&state.allocations, sku, after.as_deref(), limit.probe());
        let page = |batches: Vec<Batch>| {
            let (batches, next_cursor) = limit.page(batches, &listing, |b| b.reference.clone());
            ListBatchesResponse::Ok(Json(BatchPage {
                batches: batches.iter().map(BatchBody::from).collect(),
                next_cursor,
            }))
        };
        listed.await.map(page).map_err(Failure::from).into()
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
        state: Data<&AppState<A>>,
        _token: StockToken<A>,
        /// The batch reference.
        reference: Path<Identifier>,
    ) -> Reply<GetBatchResponse, (Stock, Input, Database)> {
        match allocation::get_batch(&state.allocations, &reference.0).await {
            Ok(batch) => Ok(GetBatchResponse::Ok(Json(BatchBody::from(&batch)))),
            Err(error) => batch_not_found(error, GetBatchResponse::NotFound),
        }
        .into()
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
        state: Data<&AppState<A>>,
        _admin: AdminToken<A>,
        /// The batch reference.
        reference: Path<Identifier>,
        /// Lines per page.
        #[oai(default)]
        limit: Query<PageLimit>,
        /// `next_cursor` of the previous page of this same listing (same
        /// filters); a cursor of another listing gets 400.
        cursor: Query<Option<Cursor>>,
    ) -> Reply<BatchAllocationsResponse, (Admin, Input, Database)> {
        let listing = format!("batches/{}/allocations", reference.0.0);
        let after = match Cursor::resume(cursor.0.as_ref(), &listing) {
            Ok(after) => after,
            Err(failure) => return Err(failure).into(),
        };
        let lines = allocation::batch_lines(&state.allocations, &reference.0, after, limit.probe());
        match lines.await {
            Ok(lines) => {
                let (lines, next_cursor) = limit.page(lines, &listing, |l| l.position.to_string());
                let allocations = lines
                    .into_iter()
                    .map(|BatchLine { orderid, qty, .. }| BatchAllocation { orderid, qty })
                    .collect();
                Ok(BatchAllocationsResponse::Ok(Json(BatchAllocationPage {
                    allocations,
                    next_cursor,
                })))
            }
            Err(error) => batch_not_found(error, BatchAllocationsResponse::NotFound),
        }
        .into()
    }

    /// Change a batch's quantity
    ///
    /// Sets the purchased quantity (0 for a lost shipment). When it no longer
    /// covers the batch's lines, the most recently allocated ones are moved to
    /// other batches of the sku where stock allows, and backordered where it
    /// does not; none is ever dropped. A larger quantity serves backordered
    /// lines first. Requires the `admin` role.
    ///
    /// After a 503 the change may be partly done: no line is lost, and allot
    /// finishes it by itself.
    #[oai(
        path = "/batches/:reference",
        method = "patch",
        operation_id = "change_batch_quantity"
    )]
    async fn change_batch_quantity(
        &self,
        state: Data<&AppState<A>>,
        _admin: AdminToken<A>,
        /// The batch reference.
        reference: Path<Identifier>,
        body: JsonBody<QuantityUpdate>,
    ) -> Reply<ChangeQuantityResponse, (Admin, Input, Body, Database)> {
        let quantity = body.purchased_quantity.0;
        match allocation::change_batch_quantity(&state.allocations, &reference.0, quantity).await {
            Ok(change) => Ok(ChangeQuantityResponse::Ok(Json(change.into()))),
            Err(error) => batch_not_found(error, ChangeQuantityResponse::NotFound),
        }
        .into()
    }
}
