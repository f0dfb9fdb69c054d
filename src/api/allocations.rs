//! `allocations` tag: allocating customer order lines to stock, and reading
//! where an order's lines were allocated. Any access token will do.

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::auth::{AccessToken, Protected};
use super::error::{ErrorBody, bad_request, error_body, unavailable};
use super::json_body::JsonBody;
use super::{ApiTags, AppState};
use crate::domain::allocation::OrderLine;
use crate::services::allocation::{self, AllocateError, DeallocateError, OrderAllocationsError};

pub struct AllocationsApi;

/// An order line to allocate.
#[derive(Debug, Object, serde::Deserialize)]
#[oai(example)]
pub struct OrderLineRequest {
    /// The customer order (1–100 characters, no whitespace).
    #[oai(validator(min_length = 1, max_length = 100, pattern = r"^\S+$"))]
    pub orderid: String,
    /// The stock-keeping unit ordered (1–100 characters, no whitespace).
    #[oai(validator(min_length = 1, max_length = 100, pattern = r"^\S+$"))]
    pub sku: String,
    /// Units ordered (1 to 1 000 000 000).
    #[oai(validator(minimum(value = "1"), maximum(value = "1000000000")))]
    pub qty: u32,
}

impl Example for OrderLineRequest {
    fn example() -> Self {
        Self {
            orderid: "order-001".to_owned(),
            sku: "SMALL-TABLE".to_owned(),
            qty: 2,
        }
    }
}

/// An order line to deallocate.
#[derive(Debug, Object, serde::Deserialize)]
#[oai(example)]
pub struct OrderLineRef {
    /// The customer order.
    #[oai(validator(min_length = 1, max_length = 100, pattern = r"^\S+$"))]
    pub orderid: String,
    /// The sku of the line.
    #[oai(validator(min_length = 1, max_length = 100, pattern = r"^\S+$"))]
    pub sku: String,
}

impl Example for OrderLineRef {
    fn example() -> Self {
        Self {
            orderid: "order-001".to_owned(),
            sku: "SMALL-TABLE".to_owned(),
        }
    }
}

/// Where an order line was allocated.
#[derive(Debug, Object)]
#[oai(example)]
pub struct Allocated {
    /// Reference of the batch the line draws from.
    pub batchref: String,
}

impl Example for Allocated {
    fn example() -> Self {
        Self {
            batchref: "batch-001".to_owned(),
        }
    }
}

/// A deallocated order line and the batch it was taken from.
#[derive(Debug, Object)]
#[oai(example)]
pub struct Deallocated {
    /// The customer order.
    pub orderid: String,
    /// The sku of the line.
    pub sku: String,
    /// Units that were allocated.
    pub qty: u32,
    /// The batch whose stock it gave back.
    pub batchref: String,
}

impl Example for Deallocated {
    fn example() -> Self {
        Self {
            orderid: "order-001".to_owned(),
            sku: "SMALL-TABLE".to_owned(),
            qty: 2,
            batchref: "batch-001".to_owned(),
        }
    }
}

/// One line of an order, as allocated.
#[derive(Debug, Object)]
#[oai(example)]
pub struct OrderAllocation {
    /// The sku of the line.
    pub sku: String,
    /// The batch the line draws from.
    pub batchref: String,
    /// Units allocated.
    pub qty: u32,
}

impl Example for OrderAllocation {
    fn example() -> Self {
        Self {
            sku: "SMALL-TABLE".to_owned(),
            batchref: "batch-001".to_owned(),
            qty: 2,
        }
    }
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "allocate_bad_request")]
pub enum AllocateResponse {
    /// Allocated (or already allocated: allocating the same line again changes nothing).
    #[oai(status = 201)]
    Created(Json<Allocated>),
    /// `Invalid sku <sku>` when no batch holds the sku, `Out of stock for sku <sku>`
    /// when no batch has enough left; or a field missing, mistyped or out of range.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// The request body is over the size limit (64 KiB by default).
    // Answered by `middleware::BodyLimit` before the handler runs.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// The database is unreachable, or too many concurrent allocations of the
    /// sku; retry later.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

fn allocate_bad_request(error: poem::Error) -> AllocateResponse {
    AllocateResponse::BadRequest(bad_request(error))
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "deallocate_bad_request")]
pub enum DeallocateResponse {
    /// The line is deallocated and its stock is available again.
    #[oai(status = 200)]
    Ok(Json<Deallocated>),
    /// A field is missing, mistyped or out of range.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// That order line is not allocated.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The request body is over the size limit (64 KiB by default).
    // Answered by `middleware::BodyLimit` before the handler runs.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// The database is unreachable; retry later.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

fn deallocate_bad_request(error: poem::Error) -> DeallocateResponse {
    DeallocateResponse::BadRequest(bad_request(error))
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "order_bad_request")]
pub enum OrderAllocationsResponse {
    /// Every allocated line of the order.
    #[oai(status = 200)]
    Ok(Json<Vec<OrderAllocation>>),
    /// The order id is malformed.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// The order has no allocated lines.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The database is unreachable; retry later.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

fn order_bad_request(error: poem::Error) -> OrderAllocationsResponse {
    OrderAllocationsResponse::BadRequest(bad_request(error))
}

#[OpenApi(tag = "ApiTags::Allocations")]
impl AllocationsApi {
    /// Allocate an order line
    ///
    /// Allocates the line to a batch of its sku, preferring stock already in the
    /// warehouse, then the earliest arrival. Never oversells, whatever the
    /// number of concurrent requests and allot instances.
    #[oai(path = "/allocate", method = "post", operation_id = "allocate")]
    async fn allocate(
        &self,
        state: Data<&AppState>,
        _token: AccessToken,
        body: JsonBody<OrderLineRequest>,
    ) -> Protected<AllocateResponse> {
        let JsonBody(request) = body;
        let line = OrderLine {
            orderid: request.orderid,
            sku: request.sku,
            qty: request.qty,
        };
        Protected::Ok(match allocation::allocate(&state.batches, line).await {
            Ok(batchref) => AllocateResponse::Created(Json(Allocated { batchref })),
            Err(AllocateError::Allocation(error)) => {
                AllocateResponse::BadRequest(error_body(&error))
            }
            Err(error @ AllocateError::Contention(_)) => {
                AllocateResponse::Unavailable(error_body(&error))
            }
            Err(AllocateError::Store(error)) => AllocateResponse::Unavailable(unavailable(&error)),
        })
    }

    /// Deallocate an order line
    ///
    /// Gives the line's stock back to its batch.
    #[oai(path = "/deallocate", method = "post", operation_id = "deallocate")]
    async fn deallocate(
        &self,
        state: Data<&AppState>,
        _token: AccessToken,
        body: JsonBody<OrderLineRef>,
    ) -> Protected<DeallocateResponse> {
        let result = allocation::deallocate(&state.batches, &body.orderid, &body.sku).await;
        Protected::Ok(match result {
            Ok((batchref, line)) => DeallocateResponse::Ok(Json(Deallocated {
                orderid: line.orderid,
                sku: line.sku,
                qty: line.qty,
                batchref,
            })),
            Err(error @ DeallocateError::NotAllocated { .. }) => {
                DeallocateResponse::NotFound(error_body(&error))
            }
            Err(DeallocateError::Store(error)) => {
                DeallocateResponse::Unavailable(unavailable(&error))
            }
        })
    }

    /// An order's allocations
    ///
    /// Where each line of the order was allocated.
    #[oai(
        path = "/allocations/:orderid",
        method = "get",
        operation_id = "order_allocations"
    )]
    async fn order_allocations(
        &self,
        state: Data<&AppState>,
        _token: AccessToken,
        /// The customer order.
        #[oai(validator(min_length = 1, max_length = 100))]
        orderid: Path<String>,
    ) -> Protected<OrderAllocationsResponse> {
        Protected::Ok(
            match allocation::allocations_for_order(&state.batches, &orderid.0).await {
                Ok(allocations) => OrderAllocationsResponse::Ok(Json(
                    allocations
                        .into_iter()
                        .map(|a| OrderAllocation {
                            sku: a.sku,
                            batchref: a.batchref,
                            qty: a.qty,
                        })
                        .collect(),
                )),
                Err(error @ OrderAllocationsError::NoAllocations(_)) => {
                    OrderAllocationsResponse::NotFound(error_body(&error))
                }
                Err(OrderAllocationsError::Store(error)) => {
                    OrderAllocationsResponse::Unavailable(unavailable(&error))
                }
            },
        )
    }
}
