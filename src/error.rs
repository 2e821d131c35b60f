//! The one error type of the chat logic, and its one table of what each
//! variant is on every wire: gRPC code, HTTP status, WebSocket close code.

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
    /// The request itself is over the size the server decodes (gRPC's
    /// receive limit, or the HTTP body limit).
    #[error("chat.RequestTooLarge: {0}")]
    RequestTooLarge(String),
    /// A value is past what exists (a `since-seq` beyond the chat's end).
    #[error("{0}: {1}")]
    OutOfRange(&'static str, String),
    /// The chat does not exist.
    #[error("{0}: {1}")]
    NotFound(&'static str, String),
    /// No credential, or one that does not verify.
    #[error("{0}: {1}")]
    Unauthenticated(&'static str, String),
    /// The user is not a member of a members-only chat.
    #[error("{0}: {1}")]
    PermissionDenied(&'static str, String),
    /// An idempotency key was reused for different content.
    #[error("{0}: {1}")]
    AlreadyExists(&'static str, String),
    /// The request is valid but the state does not allow it (editing a
    /// deleted message; a feature the server runs without).
    #[error("{0}: {1}")]
    FailedPrecondition(&'static str, String),
    /// The server's memory budget is spent (clients not reading what they
    /// were sent): retry later.
    #[error("chat.Busy: {0}")]
    Busy(String),
    /// The caller is over its rate limit (`--rate-limit-send`,
    /// `--rate-limit-new`): retry after the given wait.
    #[error("chat.RateLimited: {0}")]
    RateLimited(String, std::time::Duration),
    /// The service is shutting down: retry elsewhere or later (same client_id).
    #[error("chat.Unavailable: {0}")]
    Unavailable(String),
    /// The store failed or is unreachable; the request may be retried (a
    /// Send with the same client_id, so that it is stored once).
    #[error("chat.Store: the store is unavailable, retry ({0})")]
    Store(#[from] StoreError),
}

impl Error {
    /// How long the caller should wait before retrying, when the server knows.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Error::RateLimited(_, wait) => Some(*wait),
            _ => None,
        }
    }

    /// What to fix, without the id.
    pub fn detail(&self) -> String {
        match self {
            Error::Invalid(_, d)
            | Error::Unauthenticated(_, d)
            | Error::TooLarge(_, d)
            | Error::NotFound(_, d)
            | Error::PermissionDenied(_, d)
            | Error::AlreadyExists(_, d)
            | Error::FailedPrecondition(_, d)
            | Error::OutOfRange(_, d)
            | Error::RequestTooLarge(d)
            | Error::Busy(d)
            | Error::RateLimited(d, _)
            | Error::Unavailable(d) => d.clone(),
            Error::Store(e) => e.to_string(),
        }
    }

    /// The stable error id, for `google.rpc.ErrorInfo.reason` and the HTTP error body.
    pub fn id(&self) -> &'static str {
        match self {
            Error::Invalid(id, _)
            | Error::Unauthenticated(id, _)
            | Error::TooLarge(id, _)
            | Error::NotFound(id, _)
            | Error::PermissionDenied(id, _)
            | Error::AlreadyExists(id, _)
            | Error::FailedPrecondition(id, _)
            | Error::OutOfRange(id, _) => id,
            Error::RequestTooLarge(_) => "chat.RequestTooLarge",
            Error::Busy(_) => "chat.Busy",
            Error::RateLimited(..) => "chat.RateLimited",
            Error::Unavailable(_) => "chat.Unavailable",
            Error::Store(_) => "chat.Store",
        }
    }
}

/// What an [`Error`] is on each wire.
pub struct Wire {
    pub grpc: tonic::Code,
    pub http: u16,
    /// Close code when it ends a WebSocket Connect.
    pub ws_close: u16,
}

impl Error {
    /// The one table: no `_` arm, so a new variant must be placed here.
    pub fn wire(&self) -> Wire {
        use tonic::Code;
        let (grpc, http, ws_close) = match self {
            Error::Invalid(..) => (Code::InvalidArgument, 400, 1008),
            Error::TooLarge(..) => (Code::InvalidArgument, 413, 1008),
            // gRPC's convention for a message over the receive limit;
            // 1009 "message too big".
            Error::RequestTooLarge(_) => (Code::ResourceExhausted, 413, 1009),
            Error::OutOfRange(..) => (Code::OutOfRange, 400, 1008),
            Error::NotFound(..) => (Code::NotFound, 404, 1008),
            // 4401 / 4403: the HTTP statuses, as WebSocket application codes.
            Error::Unauthenticated(..) => (Code::Unauthenticated, 401, 4401),
            Error::PermissionDenied(..) => (Code::PermissionDenied, 403, 4403),
            Error::AlreadyExists(..) => (Code::AlreadyExists, 409, 1008),
            Error::FailedPrecondition(..) => (Code::FailedPrecondition, 409, 1008),
            // 1013 "try again later".
            Error::Busy(_) => (Code::ResourceExhausted, 503, 1013),
            // 1013 "try again later".
            Error::RateLimited(..) => (Code::ResourceExhausted, 429, 1013),
            // 1012 "service restart": reconnect with since_seq.
            Error::Unavailable(_) => (Code::Unavailable, 503, 1012),
            // 1013 "try again later".
            Error::Store(_) => (Code::Unavailable, 503, 1013),
        };
        Wire {
            grpc,
            http,
            ws_close,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
