//! `allocations` tag: allocating customer order lines to stock, and reading
//! where an order's lines were allocated. Orders belong to the account that
//! allocated their first line; other accounts (admins aside) get 404.

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Object, OpenApi, Union};

use super::auth::{AccessToken, AdminOnly, AdminToken, Protected};
use super::batches::{default_limit, next_cursor};
use super::error::{ApiError, bad_request, error_body, unavailable};
use super::identifier::Identifier;
use super::json_body::JsonBody;
use super::{ApiTags, AppState};
use crate::domain::allocation::Requester;
use crate::domain::allocation::{AcknowledgedLine, LineStatus, OrderLine};
use crate::domain::user::Role;
use crate::metrics::{AllocationOutcome, metrics};
use crate::services::allocation::{
    self, AllocateError, Allocation, DeallocateError, OrderAllocationsError,
};

pub struct AllocationsApi;

/// An order line to allocate.
#[derive(Debug, Object, serde::Deserialize)]
#[oai(example)]
pub struct OrderLineRequest {
    /// The customer order (1–100 characters, no whitespace).
    pub orderid: Identifier,
    /// The stock-keeping unit ordered (1–100 characters, no whitespace).
    pub sku: Identifier,
    /// Units ordered (1 to 1 000 000 000).
    #[oai(validator(minimum(value = "1"), maximum(value = "1000000000")))]
    pub qty: u32,
}

impl Example for OrderLineRequest {
    fn example() -> Self {
        Self {
            orderid: Identifier("order-001".to_owned()),
            sku: Identifier("SMALL-TABLE".to_owned()),
            qty: 2,
        }
    }
}

/// An order line to deallocate.
#[derive(Debug, Object, serde::Deserialize)]
#[oai(example)]
pub struct OrderLineRef {
    /// The customer order.
    pub orderid: Identifier,
    /// The sku of the line.
    pub sku: Identifier,
}

impl Example for OrderLineRef {
    fn example() -> Self {
        Self {
            orderid: Identifier("order-001".to_owned()),
            sku: Identifier("SMALL-TABLE".to_owned()),
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

/// Where an order line stands: `allocated` (it draws from `batchref`) or
/// `backordered` (it waits for stock of its sku).
#[derive(Debug, Clone, Copy, PartialEq, Eq, poem_openapi::Enum)]
#[oai(rename_all = "lowercase")]
pub enum LineStatusBody {
    /// The line draws its stock from `batchref`.
    Allocated,
    /// The line lost its stock (its batch shrank) and waits for stock of its
    /// sku; it is allocated, oldest first, as soon as some appears.
    Backordered,
}

/// An acknowledged order line was repeated while it waits for stock; `status`
/// is always `backordered`.
#[derive(Debug, Object)]
#[oai(example)]
pub struct Waiting {
    // No doc comment on enum fields: a described `$ref` becomes an `allOf`
    // wrapper, which client generators cannot take (see `LineStatusBody`).
    pub status: LineStatusBody,
}

impl Example for Waiting {
    fn example() -> Self {
        Self {
            status: LineStatusBody::Backordered,
        }
    }
}

/// One line of an order, as it stands.
#[derive(Debug, Object)]
#[oai(example)]
pub struct OrderLineBody {
    /// The customer order.
    pub orderid: String,
    /// The sku of the line.
    pub sku: String,
    /// Units ordered.
    pub qty: u32,
    /// The batch the line draws from; null while it is backordered.
    #[oai(nullable)]
    pub batchref: Option<String>,
    pub status: LineStatusBody,
}

impl Example for OrderLineBody {
    fn example() -> Self {
        Self {
            orderid: "order-001".to_owned(),
            sku: "SMALL-TABLE".to_owned(),
            qty: 2,
            batchref: Some("batch-001".to_owned()),
            status: LineStatusBody::Allocated,
        }
    }
}

impl From<AcknowledgedLine> for OrderLineBody {
    fn from(acknowledged: AcknowledgedLine) -> Self {
        let (batchref, status) = match acknowledged.status {
            LineStatus::Allocated { batchref } => (Some(batchref), LineStatusBody::Allocated),
            LineStatus::Backordered => (None, LineStatusBody::Backordered),
        };
        Self {
            orderid: acknowledged.line.orderid,
            sku: acknowledged.line.sku,
            qty: acknowledged.line.qty,
            batchref,
            status,
        }
    }
}

/// What an allocation answers: `Allocated` with 201, `Waiting` with 202. One
/// schema for both, so that a generated client has one success type.
#[derive(Debug, Union)]
#[oai(one_of)]
pub enum AllocationResult {
    Allocated(Allocated),
    Waiting(Waiting),
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "allocate_bad_request")]
pub enum AllocateResponse {
    /// `Allocated`: allocated (or already allocated: allocating the same line
    /// again changes nothing).
    #[oai(status = 201)]
    Created(Json<AllocationResult>),
    /// `Waiting`: this order line was acknowledged before and is backordered:
    /// it waits for stock and is allocated as soon as some appears. Nothing changed.
    #[oai(status = 202)]
    Accepted(Json<AllocationResult>),
    /// `Invalid sku <sku>` when no batch holds the sku, `Out of stock for sku <sku>`
    /// when no batch has enough left; or a field missing, mistyped or out of range.
    #[oai(status = 400)]
    BadRequest(Json<ApiError>),
    /// The order belongs to another account: `Order <orderid> not found`, as
    /// for an order that does not exist, so that its id is not confirmed.
    #[oai(status = 404)]
    NotFound(Json<ApiError>),
    /// The request body is over the size limit (64 KiB by default).
    // Answered by `middleware::BodyLimit` before the handler runs.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ApiError>),
    /// The database is unreachable; retry later (a retry is safe: allocating
    /// the same line again changes nothing).
    #[oai(status = 503)]
    Unavailable(Json<ApiError>),
}

fn allocate_bad_request(error: poem::Error) -> AllocateResponse {
    AllocateResponse::BadRequest(bad_request(error))
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "deallocate_bad_request")]
pub enum DeallocateResponse {
    /// The line is gone; if it was allocated, its stock is available again.
    #[oai(status = 200)]
    Ok(Json<OrderLineBody>),
    /// A field is missing, mistyped or out of range.
    #[oai(status = 400)]
    BadRequest(Json<ApiError>),
    /// The order has no line for that sku, or belongs to another account.
    #[oai(status = 404)]
    NotFound(Json<ApiError>),
    /// The request body is over the size limit (64 KiB by default).
    // Answered by `middleware::BodyLimit` before the handler runs.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ApiError>),
    /// The database is unreachable; retry later.
    #[oai(status = 503)]
    Unavailable(Json<ApiError>),
}

fn deallocate_bad_request(error: poem::Error) -> DeallocateResponse {
    DeallocateResponse::BadRequest(bad_request(error))
}

/// One line of an order.
#[derive(Debug, Object)]
#[oai(example)]
pub struct OrderAllocation {
    /// The sku of the line.
    pub sku: String,
    /// Units ordered.
    pub qty: u32,
    /// The batch the line draws from; null while it is backordered.
    #[oai(nullable)]
    pub batchref: Option<String>,
    pub status: LineStatusBody,
}

impl Example for OrderAllocation {
    fn example() -> Self {
        Self {
            sku: "SMALL-TABLE".to_owned(),
            qty: 2,
            batchref: Some("batch-001".to_owned()),
            status: LineStatusBody::Allocated,
        }
    }
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "order_bad_request")]
pub enum OrderAllocationsResponse {
    /// Every line of the order, allocated or backordered, by sku.
    #[oai(status = 200)]
    Ok(Json<Vec<OrderAllocation>>),
    /// The order id is malformed.
    #[oai(status = 400)]
    BadRequest(Json<ApiError>),
    /// The order has no line at all.
    #[oai(status = 404)]
    NotFound(Json<ApiError>),
    /// The database is unreachable; retry later.
    #[oai(status = 503)]
    Unavailable(Json<ApiError>),
}

fn order_bad_request(error: poem::Error) -> OrderAllocationsResponse {
    OrderAllocationsResponse::BadRequest(bad_request(error))
}

/// An order line waiting for stock.
#[derive(Debug, Object)]
pub struct BackorderBody {
    /// The customer order.
    pub orderid: String,
    /// The stock-keeping unit ordered.
    pub sku: String,
    /// Units ordered.
    pub qty: u32,
    /// When the line was first allocated (and acknowledged with 201).
    pub acknowledged_at: DateTime<Utc>,
}

/// A page of backordered lines, oldest first: the order they are served in.
#[derive(Debug, Object)]
#[oai(example)]
pub struct BackorderPage {
    /// At most `limit` lines.
    pub backorders: Vec<BackorderBody>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<String>,
}

impl Example for BackorderPage {
    fn example() -> Self {
        Self {
            backorders: vec![BackorderBody {
                orderid: "order-003".to_owned(),
                sku: "SMALL-TABLE".to_owned(),
                qty: 2,
                acknowledged_at: DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default(),
            }],
            next_cursor: Some("6952b8c0a1b2c3d4e5f60718".to_owned()),
        }
    }
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "backorders_bad_request")]
pub enum ListBackordersResponse {
    /// A page of waiting lines, oldest first.
    #[oai(status = 200)]
    Ok(Json<BackorderPage>),
    /// A query parameter is malformed or out of range; the message names it.
    #[oai(status = 400)]
    BadRequest(Json<ApiError>),
    /// The database is unreachable; retry later.
    #[oai(status = 503)]
    Unavailable(Json<ApiError>),
}

fn backorders_bad_request(error: poem::Error) -> ListBackordersResponse {
    ListBackordersResponse::BadRequest(bad_request(error))
}

/// The caller, as far as orders are concerned: its account and whether it
/// is an admin (from the token: revoked at once when either changes).
fn requester(token: &AccessToken) -> Requester {
    Requester {
        account: token.0.uid.clone(),
        admin: token.0.has_role(Role::Admin),
    }
}

#[OpenApi(tag = "ApiTags::Allocations")]
impl AllocationsApi {
    /// Allocate an order line
    ///
    /// Allocates the line to a batch of its sku, preferring stock already in the
    /// warehouse, then the earliest arrival. Never oversells, whatever the
    /// number of concurrent requests and allot instances. Once answered 201,
    /// the line is the system's to keep until it is deallocated: if its batch
    /// later shrinks, it moves to another batch or waits as a backorder.
    ///
    /// The account that allocates an order's first line owns the order; only
    /// it (and admins) may add lines to it, read it or deallocate its lines.
    #[oai(path = "/allocate", method = "post", operation_id = "allocate")]
    async fn allocate(
        &self,
        state: Data<&AppState>,
        token: AccessToken,
        body: JsonBody<OrderLineRequest>,
    ) -> Protected<AllocateResponse> {
        let JsonBody(request) = body;
        let line = OrderLine {
            orderid: request.orderid.into(),
            sku: request.sku.into(),
            qty: request.qty,
        };
        let requester = requester(&token);
        let result = allocation::allocate(&state.allocations, line, &requester).await;
        let outcome = match &result {
            Ok(Allocation::Allocated(_)) => Some(AllocationOutcome::Allocated),
            Ok(Allocation::Backordered) => Some(AllocationOutcome::Backordered),
            Err(AllocateError::Allocation(
                crate::domain::allocation::AllocationError::OutOfStock(_),
            )) => Some(AllocationOutcome::OutOfStock),
            Err(AllocateError::Allocation(
                crate::domain::allocation::AllocationError::InvalidSku(_),
            )) => Some(AllocationOutcome::InvalidSku),
            Err(AllocateError::Store(_)) => Some(AllocationOutcome::Unavailable),
            Err(AllocateError::OrderNotFound(_)) => None,
        };
        if let Some(outcome) = outcome {
            metrics().allocation(outcome);
        }
        Protected::Ok(match result {
            Ok(Allocation::Allocated(batchref)) => {
                AllocateResponse::Created(Json(AllocationResult::Allocated(Allocated { batchref })))
            }
            Ok(Allocation::Backordered) => {
                AllocateResponse::Accepted(Json(AllocationResult::Waiting(Waiting {
                    status: LineStatusBody::Backordered,
                })))
            }
            Err(AllocateError::Allocation(error)) => {
                AllocateResponse::BadRequest(error_body(&error))
            }
            Err(error @ AllocateError::OrderNotFound(_)) => {
                AllocateResponse::NotFound(error_body(&error))
            }
            Err(AllocateError::Store(error)) => AllocateResponse::Unavailable(unavailable(&error)),
        })
    }

    /// Deallocate an order line
    ///
    /// Forgets the line, allocated or backordered. An allocated line's stock
    /// goes back to its batch, where waiting lines of the sku take it first.
    #[oai(path = "/deallocate", method = "post", operation_id = "deallocate")]
    async fn deallocate(
        &self,
        state: Data<&AppState>,
        token: AccessToken,
        body: JsonBody<OrderLineRef>,
    ) -> Protected<DeallocateResponse> {
        let requester = requester(&token);
        let result =
            allocation::deallocate(&state.allocations, &body.orderid, &body.sku, &requester).await;
        Protected::Ok(match result {
            Ok(line) => DeallocateResponse::Ok(Json(line.into())),
            Err(error @ DeallocateError::NotAllocated { .. }) => {
                DeallocateResponse::NotFound(error_body(&error))
            }
            Err(DeallocateError::Store(error)) => {
                DeallocateResponse::Unavailable(unavailable(&error))
            }
        })
    }

    /// List backorders
    ///
    /// Order lines waiting for stock, oldest first (the order in which stock
    /// arriving for their sku serves them), optionally of one sku. Requires
    /// the `admin` role.
    #[oai(path = "/backorders", method = "get", operation_id = "list_backorders")]
    async fn list_backorders(
        &self,
        state: Data<&AppState>,
        _admin: AdminToken,
        /// Only lines of this sku.
        #[oai(validator(min_length = 1, max_length = 100))]
        sku: Query<Option<String>>,
        /// Lines per page, 1–200 (default 50).
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "200"))
        )]
        limit: Query<u32>,
        /// `next_cursor` of the previous page.
        #[oai(validator(min_length = 1, max_length = 100))]
        cursor: Query<Option<String>>,
    ) -> AdminOnly<ListBackordersResponse> {
        let limit = limit.0 as usize;
        let result = allocation::list_backorders(
            &state.allocations,
            sku.0.as_deref(),
            cursor.0.as_deref(),
            limit + 1,
        )
        .await;
        AdminOnly::Ok(match result {
            Ok(mut waiting) => {
                let next_cursor = next_cursor(&mut waiting, limit, |b| b.position.clone());
                ListBackordersResponse::Ok(Json(BackorderPage {
                    backorders: waiting
                        .into_iter()
                        .map(|b| BackorderBody {
                            orderid: b.line.line.orderid,
                            sku: b.line.line.sku,
                            qty: b.line.line.qty,
                            acknowledged_at: b.line.acknowledged_at,
                        })
                        .collect(),
                    next_cursor,
                }))
            }
            Err(error) => ListBackordersResponse::Unavailable(unavailable(&error)),
        })
    }

    /// An order's lines
    ///
    /// Where each line of the order stands: the batch it draws from, or
    /// `backordered` while it waits for stock. Another account's order answers
    /// 404, as an unknown one does.
    #[oai(
        path = "/allocations/:orderid",
        method = "get",
        operation_id = "order_allocations"
    )]
    async fn order_allocations(
        &self,
        state: Data<&AppState>,
        token: AccessToken,
        /// The customer order.
        #[oai(validator(min_length = 1, max_length = 100))]
        orderid: Path<String>,
    ) -> Protected<OrderAllocationsResponse> {
        let requester = requester(&token);
        Protected::Ok(
            match allocation::allocations_for_order(&state.allocations, &orderid.0, &requester)
                .await
            {
                Ok(lines) => OrderAllocationsResponse::Ok(Json(
                    lines
                        .into_iter()
                        .map(|line| {
                            let body = OrderLineBody::from(line);
                            OrderAllocation {
                                sku: body.sku,
                                qty: body.qty,
                                batchref: body.batchref,
                                status: body.status,
                            }
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
