//! `allocations` tag: allocating customer order lines to stock, and reading
//! where an order's lines were allocated. Orders belong to the account that
//! allocated their first line; other accounts (admins aside) get 404.

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
use crate::domain::allocation::{AllocationError, OrderLine, Requester};
use crate::domain::user::Role;
use crate::metrics::{AllocationOutcome, metrics};
use crate::services::allocation::{
    self, AllocateError, DeallocateError, OrderAllocationsError, Placement,
};
use crate::services::ports::allocation::Backorder;

pub struct AllocationsApi<A>(pub(super) PhantomData<fn() -> A>);

#[derive(ApiResponse)]
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
}

#[derive(ApiResponse)]
pub enum DeallocateResponse {
    /// The line is gone; if it was allocated, its stock is available again.
    #[oai(status = 200)]
    Ok(Json<OrderLineBody>),
    /// The order has no line for that sku, or belongs to another account.
    #[oai(status = 404)]
    NotFound(Json<ApiError>),
}

#[derive(ApiResponse)]
pub enum OrderAllocationsResponse {
    /// Every line of the order, allocated or backordered, by sku.
    #[oai(status = 200)]
    Ok(Json<Vec<OrderAllocation>>),
    /// The order has no line at all.
    #[oai(status = 404)]
    NotFound(Json<ApiError>),
}

#[derive(ApiResponse)]
pub enum ListBackordersResponse {
    /// A page of waiting lines, oldest first.
    #[oai(status = 200)]
    Ok(Json<BackorderPage>),
}

impl ErrorExamples for AllocateResponse {
    fn error_examples() -> Vec<(u16, Json<ApiError>)> {
        vec![
            (
                400,
                message(AllocationError::OutOfStock(example::SKU.into())),
            ),
            (
                404,
                message(AllocateError::OrderNotFound(example::ORDER.into())),
            ),
        ]
    }
}

impl ErrorExamples for DeallocateResponse {
    fn error_examples() -> Vec<(u16, Json<ApiError>)> {
        let orderid = example::ORDER.into();
        let sku = example::SKU.into();
        vec![(404, message(DeallocateError::NotAllocated { orderid, sku }))]
    }
}

impl ErrorExamples for OrderAllocationsResponse {
    fn error_examples() -> Vec<(u16, Json<ApiError>)> {
        let error = OrderAllocationsError::NoAllocations(example::ORDER.into());
        vec![(404, message(error))]
    }
}

/// Examples of this tag's own error responses.
pub fn error_examples() -> Vec<(u16, &'static str, Json<ApiError>)> {
    [
        AllocateResponse::described_examples(),
        DeallocateResponse::described_examples(),
        OrderAllocationsResponse::described_examples(),
    ]
    .concat()
}

/// The caller, as far as orders are concerned: its account and whether it
/// is an admin (from the token: revoked at once when either changes).
fn requester<A>(token: &StockToken<A>) -> Requester {
    Requester {
        account: token.0.uid.clone(),
        admin: token.0.has_role(Role::Admin),
    }
}

#[OpenApi(tag = "ApiTags::Allocations")]
impl<A: Adapters> AllocationsApi<A> {
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
    ///
    /// A retry after a 503 is safe: allocating the same line again changes nothing.
    #[oai(path = "/allocate", method = "post", operation_id = "allocate")]
    async fn allocate(
        &self,
        state: Data<&AppState<A>>,
        token: StockToken<A>,
        body: JsonBody<OrderLineRequest>,
    ) -> Reply<AllocateResponse, (Stock, Input, Body, Database)> {
        let JsonBody(request) = body;
        let line = OrderLine::new(request.orderid, request.sku, request.qty.0);
        let result = allocation::allocate(&state.allocations, line, &requester(&token)).await;
        // One match gives the answer and what the metrics count of it (a 400
        // is one of two outcomes, which its body alone tells apart).
        let (answer, outcome) = match result {
            Ok(Placement::Allocated(batchref)) => (
                Ok(AllocateResponse::Created(Json(
                    AllocationResult::Allocated(Allocated { batchref }),
                ))),
                Some(AllocationOutcome::Allocated),
            ),
            Ok(Placement::Backordered) => (
                Ok(AllocateResponse::Accepted(Json(AllocationResult::Waiting(
                    Waiting {
                        status: LineStatusBody::Backordered,
                    },
                )))),
                Some(AllocationOutcome::Backordered),
            ),
            Err(AllocateError::Allocation(error)) => {
                let outcome = match error {
                    AllocationError::OutOfStock(_) => AllocationOutcome::OutOfStock,
                    AllocationError::InvalidSku(_) => AllocationOutcome::InvalidSku,
                };
                (
                    Ok(AllocateResponse::BadRequest(message(error))),
                    Some(outcome),
                )
            }
            Err(error @ AllocateError::OrderNotFound(_)) => {
                (Ok(AllocateResponse::NotFound(message(error))), None)
            }
            Err(AllocateError::Store(error)) => {
                (Err(error.into()), Some(AllocationOutcome::Unavailable))
            }
        };
        if let Some(outcome) = outcome {
            metrics().allocation(outcome);
        }
        answer.into()
    }

    /// Deallocate an order line
    ///
    /// Forgets the line, allocated or backordered. An allocated line's stock
    /// goes back to its batch, where waiting lines of the sku take it first.
    #[oai(path = "/deallocate", method = "post", operation_id = "deallocate")]
    async fn deallocate(
        &self,
        state: Data<&AppState<A>>,
        token: StockToken<A>,
        body: JsonBody<OrderLineRef>,
    ) -> Reply<DeallocateResponse, (Stock, Input, Body, Database)> {
        let requester = requester(&token);
        let result =
            allocation::deallocate(&state.allocations, &body.orderid, &body.sku, &requester).await;
        match result {
            Ok(line) => Ok(DeallocateResponse::Ok(Json(line.into()))),
            Err(error @ DeallocateError::NotAllocated { .. }) => {
                Ok(DeallocateResponse::NotFound(message(error)))
            }
            Err(DeallocateError::Store(error)) => Err(error.into()),
        }
        .into()
    }

    /// List backorders
    ///
    /// Order lines waiting for stock, oldest first (the order in which stock
    /// arriving for their sku serves them), optionally of one sku. Requires
    /// the `admin` role.
    #[oai(path = "/backorders", method = "get", operation_id = "list_backorders")]
    async fn list_backorders(
        &self,
        state: Data<&AppState<A>>,
        _admin: AdminToken<A>,
        /// Only lines of this sku.
        sku: Query<Option<Identifier>>,
        /// Lines per page.
        #[oai(default)]
        limit: Query<PageLimit>,
        /// `next_cursor` of the previous page of this same listing (same
        /// filters); a cursor of another listing gets 400.
        cursor: Query<Option<Cursor>>,
    ) -> Reply<ListBackordersResponse, (Admin, Input, Database)> {
        let sku = sku.0.as_deref();
        let listing = Cursor::listing("backorders", sku);
        let after = match Cursor::resume::<String>(cursor.0.as_ref(), &listing) {
            Ok(after) => after,
            Err(failure) => return Err(failure).into(),
        };
        let listed =
            allocation::list_backorders(&state.allocations, sku, after.as_deref(), limit.probe());
        let page = |waiting: Vec<Backorder>| {
            let (waiting, next_cursor) = limit.page(waiting, &listing, |b| b.position.clone());
            let backorders = waiting.into_iter().map(|b| b.line.into()).collect();
            ListBackordersResponse::Ok(Json(BackorderPage {
                backorders,
                next_cursor,
            }))
        };
        listed.await.map(page).map_err(Failure::from).into()
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
        state: Data<&AppState<A>>,
        token: StockToken<A>,
        /// The customer order.
        orderid: Path<Identifier>,
    ) -> Reply<OrderAllocationsResponse, (Stock, Input, Database)> {
        let requester = requester(&token);
        let lines = allocation::allocations_for_order(&state.allocations, &orderid.0, &requester);
        match lines.await {
            Ok(lines) => Ok(OrderAllocationsResponse::Ok(Json(
                lines.into_iter().map(OrderAllocation::from).collect(),
            ))),
            Err(error @ OrderAllocationsError::NoAllocations(_)) => {
                Ok(OrderAllocationsResponse::NotFound(message(error)))
            }
            Err(OrderAllocationsError::Store(error)) => Err(error.into()),
        }
        .into()
    }
}
