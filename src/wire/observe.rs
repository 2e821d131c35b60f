//! What every transport does around a call: who is calling (verified,
//! refusals counted), and one log line and one metric when it ends.

use std::time::Duration;

use tonic::{Code, Status};

use crate::{
    auth::{Auth, Identity},
    error::Error,
    metrics::Metrics,
    tls::PeerIdentity,
};

/// The verified caller of a request over any wire: `get` reads a header
/// (gRPC metadata) by its lower-case name; `token` is a bearer token found
/// elsewhere (a WebSocket's subprotocols or query); `peer` is who the
/// connection's client certificate names. Refusals are counted by
/// reason; no token ever reaches a log or a metric.
///
/// # Errors
/// `Unauthenticated` when auth is on and the credential is missing or bad.
pub(crate) async fn identify<'a>(
    auth: &Auth,
    metrics: &Metrics,
    get: impl Fn(&str) -> Vec<&'a str>,
    token: Option<&str>,
    peer: Option<&PeerIdentity>,
) -> Result<Option<Identity>, Error> {
    let result = auth.identify(get, token, peer).await;
    if let Err(e) = &result {
        let counter = match e.id() {
            "chat.Auth.MissingToken" => &metrics.auth_missing,
            _ => &metrics.auth_invalid,
        };
        counter.inc();
    }
    result
}

/// Counts and logs one finished RPC: one line, at debug when OK or when the
/// client went away, info for a refused request, error for a server failure.
/// Never logs message text.
pub(crate) fn finished(
    metrics: &Metrics,
    method: &'static str,
    chat_id: &str,
    code: Code,
    latency: Duration,
    err: Option<&Status>,
) {
    let code_name = code_name(code);
    metrics.rpc(method, code_name, latency);
    // A client's chat id, however long, is logged by its start only.
    let chat_id = match chat_id.char_indices().nth(64) {
        Some((cut, _)) => &chat_id[..cut],
        None => chat_id,
    };
    let latency_us = latency.as_micros() as u64;
    let error = err.map_or("", Status::message);
    match code {
        Code::Ok | Code::Cancelled => {
            tracing::debug!(method, code = code_name, latency_us, chat_id, "rpc")
        }
        Code::Internal | Code::Unknown | Code::DataLoss => {
            tracing::error!(method, code = code_name, latency_us, chat_id, error, "rpc")
        }
        _ => tracing::info!(method, code = code_name, latency_us, chat_id, error, "rpc"),
    }
}

/// The gRPC code of a domain error (also the label HTTP calls are counted under).
pub(crate) fn code_of(e: &Error) -> Code {
    e.wire().grpc
}

/// The canonical name of a gRPC code, as in the gRPC spec.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
