//! The one error type of the chat logic. The wire layer maps it to a gRPC
//! status in exactly one place (`impl From<Error> for tonic::Status` in
//! `grpc.rs`).

use crate::store::StoreError;

/// A failed request. Every variant carries a stable error id (such as
/// `chat.Send.MissingText`, the original service's ids) and a detail that
/// tells the caller what to fix; `Display` is `"{id}: {detail}"`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed: fix it and send again.
    #[error("{0}: {1}")]
    Invalid(&'static str, String),
    /// A field or message is over a configured size limit.
    #[error("{0}: {1}")]
    TooLarge(&'static str, String),
    /// The chat does not exist.
    #[error("{0}: {1}")]
    NotFound(&'static str, String),
    /// The user is not a member of a members-only chat.
    #[error("{0}: {1}")]
    PermissionDenied(&'static str, String),
    /// An idempotency key was reused for different content.
    #[error("{0}: {1}")]
    AlreadyExists(&'static str, String),
    /// The service is shutting down: retry elsewhere or later (same client_id).
    #[error("chat.Unavailable: {0}")]
    Unavailable(String),
    /// The store failed; the request may be retried with the same client_id.
    #[error("chat.Store: {0}")]
    Store(#[from] StoreError),
}

impl Error {
    /// What to fix, without the id.
    pub fn detail(&self) -> String {
        match self {
            Error::Invalid(_, d)
            | Error::TooLarge(_, d)
            | Error::NotFound(_, d)
            | Error::PermissionDenied(_, d)
            | Error::AlreadyExists(_, d)
            | Error::Unavailable(d) => d.clone(),
            Error::Store(e) => e.to_string(),
        }
    }

    /// The stable error id, for `google.rpc.ErrorInfo.reason` and the HTTP error body.
    pub fn id(&self) -> &'static str {
        match self {
            Error::Invalid(id, _)
            | Error::TooLarge(id, _)
            | Error::NotFound(id, _)
            | Error::PermissionDenied(id, _)
            | Error::AlreadyExists(id, _) => id,
            Error::Unavailable(_) => "chat.Unavailable",
            Error::Store(_) => "chat.Store",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
