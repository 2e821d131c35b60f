//! `grpc.health.v1.Health` for probes and meshes. SERVING for `""` (the whole
//! server) and `chat.Chat` from the moment the store is open; NOT_SERVING as
//! soon as shutdown begins. Written here rather than taken from
//! `tonic_health::server` so that a Watch call *ends* at shutdown (after
//! sending NOT_SERVING): an open Watch would otherwise hold the graceful
//! shutdown until the drain timeout.

use std::pin::Pin;

use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_server::Health, HealthCheckRequest,
    HealthCheckResponse,
};

/// The services this server reports on.
const SERVICES: [&str; 2] = ["", "chat.Chat"];

pub struct HealthService {
    /// True once shutdown has begun (see `Chats::close_streams`).
    closing: watch::Receiver<bool>,
}

impl HealthService {
    pub fn new(closing: watch::Receiver<bool>) -> Self {
        HealthService { closing }
    }
}

fn status(closing: bool) -> HealthCheckResponse {
    let status = if closing {
        ServingStatus::NotServing
    } else {
        ServingStatus::Serving
    };
    HealthCheckResponse {
        status: status as i32,
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        if !SERVICES.contains(&service.as_str()) {
            return Err(Status::not_found(format!(
                "unknown service {service:?}; known: \"\" and \"chat.Chat\""
            )));
        }
        Ok(Response::new(status(*self.closing.borrow())))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let known = SERVICES.contains(&request.into_inner().service.as_str());
        let mut closing = self.closing.clone();
        let out = async_stream::stream! {
            let now = *closing.borrow_and_update();
            if known {
                yield Ok(status(now));
            } else {
                yield Ok(HealthCheckResponse { status: ServingStatus::ServiceUnknown as i32 });
            }
            // Whatever happens to the sender, the answer is the same: stop.
            let _ = closing.wait_for(|closing| *closing).await;
            if known {
                yield Ok(status(true));
            }
        };
        Ok(Response::new(Box::pin(out)))
    }
}
