//! Responses that hold memory: a History page keeps its lease on the memory
//! budget until its body has been sent, whichever transport sends it.

use std::sync::Arc;

use axum::{
    body::{Body, Bytes},
    response::Response,
};

use crate::chat::budget::Lease;

/// A lease on the memory budget that lives as long as the response body:
/// put on a response's extensions by a handler, moved into its body by
/// [`keep_leases`], given back once the body has been sent (or dropped with
/// the connection).
#[derive(Clone)]
pub struct HeldLease {
    _lease: Arc<Lease>,
}

impl HeldLease {
    pub fn new(lease: Lease) -> HeldLease {
        HeldLease {
            _lease: Arc::new(lease),
        }
    }
}

/// The middleware that ties [`HeldLease`]s to response bodies, for every
/// interface (gRPC handlers put them on their responses too).
pub async fn keep_leases(mut resp: Response) -> Response {
    match resp.extensions_mut().remove::<HeldLease>() {
        None => resp,
        Some(lease) => resp.map(|body| {
            Body::new(LeasedBody {
                body,
                pending: Bytes::new(),
                _lease: lease,
            })
        }),
    }
}

/// At most this much of a leased body is handed to the connection at a
/// time: HTTP/2 and HTTP/1 take the next piece only once the client has
/// made room, so the rest stays here, under the lease, instead of in a
/// connection buffer nobody accounts for.
const LEASED_CHUNK: usize = 16 * 1024;

/// A response body that holds its lease until it has been sent or dropped,
/// and hands out its data in [`LEASED_CHUNK`]s.
struct LeasedBody {
    body: Body,
    pending: Bytes,
    _lease: HeldLease,
}

impl axum::body::HttpBody for LeasedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        use std::task::Poll;
        if self.pending.is_empty() {
            match std::pin::Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => self.pending = data,
                    Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                },
                other => return other,
            }
        }
        let n = self.pending.len().min(LEASED_CHUNK);
        let chunk = self.pending.split_to(n);
        Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let mut hint = self.body.size_hint();
        let pending = self.pending.len() as u64;
        hint.set_lower(hint.lower() + pending);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + pending);
        }
        hint
    }
}
