//! Use cases. Each is a function over ports (traits) that the adapters
//! implement, so the rules can be tested over in-memory fakes.

pub mod allocation;
pub mod login_throttle;
pub mod ports;
pub mod tokens;
pub mod users;

/// A store (database) failed: unreachable, timed out, or refused the operation.
#[derive(Debug, thiserror::Error)]
#[error("the database is unavailable")]
pub struct StoreError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// A failure of what a use case runs on (the database, the password hasher,
/// the token signer), as opposed to one of the use case's own answers.
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
