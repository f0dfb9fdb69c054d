//! Use cases. Each is a function over ports (traits) that the adapters
//! implement, so the rules can be tested over in-memory fakes.

pub mod allocation;
pub mod feed;
pub mod login_throttle;
pub mod ports;
pub mod tokens;
pub mod users;
pub mod webhooks;

/// A store (database) failed: unreachable, timed out, or refused the operation.
///
/// The one store error of every port (`services::ports`). What a port can
/// answer besides "the database failed" (a taken username, a duplicate batch
/// reference) is a port-specific error holding this one with `#[from]`; the
/// use cases' errors hold it the same way, so `?` converts it.
#[derive(Debug, thiserror::Error)]
#[error("the database is unavailable")]
pub struct StoreError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// A failure of what a use case runs on (the database, the password hasher,
/// the token signer), as opposed to one of the use case's own answers.
///
/// It stays (rather than three variants in each account use case's error)
/// because the account use cases meet all three: their errors list their own
/// answers plus one `Fault`, and the API maps every fault in one place
/// (`From<Fault> for Failure`). The allocation use cases run on the store
/// alone, so their errors hold a [`StoreError`] directly.
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Hashing(#[from] ports::accounts::HashingError),
    #[error(transparent)]
    Issue(#[from] ports::tokens::TokenIssueError),
}

/// Lets `?` turn each [`Fault`] into a use case error's `Fault` variant.
///
/// It stays because `#[from]` converts one level only: `Fault(#[from] Fault)`
/// gives `From<Fault>`, but `?` on a `StoreError` (or a `HashingError`, a
/// `TokenIssueError`) needs `From<StoreError>` for the use case error too,
/// and these three impls are the same for each error that holds a `Fault`.
macro_rules! faults {
    ($($error:ident),+) => {
        $(
            impl From<$crate::services::StoreError> for $error {
                fn from(error: $crate::services::StoreError) -> Self {
                    Self::Fault(error.into())
                }
            }

            impl From<$crate::services::ports::accounts::HashingError> for $error {
                fn from(error: $crate::services::ports::accounts::HashingError) -> Self {
                    Self::Fault(error.into())
                }
            }

            impl From<$crate::services::ports::tokens::TokenIssueError> for $error {
                fn from(error: $crate::services::ports::tokens::TokenIssueError) -> Self {
                    Self::Fault(error.into())
                }
            }
        )+
    };
}
pub(crate) use faults;
