//! `grpc.health.v1.Health` for probes and meshes. `""` is liveness: SERVING
//! from the moment the store is open until shutdown begins. `chat.Chat` is
//! readiness: also NOT_SERVING while the store does not answer (a database
//! down), so that a load balancer sends calls elsewhere while the process,
//! which recovers by itself, is not restarted. Written here rather than taken from
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
    /// True while the store answers (see `Chats::ready`).
    ready: watch::Receiver<bool>,
}

impl HealthService {
    pub fn new(closing: watch::Receiver<bool>, ready: watch::Receiver<bool>) -> Self {
        HealthService { closing, ready }
    }
}

fn status(service: &str, closing: bool, ready: bool) -> HealthCheckResponse {
    let serving = !closing && (service.is_empty() || ready);
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
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
        Ok(Response::new(status(
            &service,
            *self.closing.borrow(),
            *self.ready.borrow(),
        )))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let service = request.into_inner().service;
        let known = SERVICES.contains(&service.as_str());
        let (mut closing, mut ready) = (self.closing.clone(), self.ready.clone());
        let out = async_stream::stream! {
            if !known {
                yield Ok(HealthCheckResponse { status: ServingStatus::ServiceUnknown as i32 });
                // Whatever happens to the sender, the answer is the same: stop.
                let _ = closing.wait_for(|closing| *closing).await;
                return;
            }
            let mut last = None;
            loop {
                let now = status(&service, *closing.borrow_and_update(), *ready.borrow_and_update());
                if last != Some(now.status) {
                    last = Some(now.status);
                    yield Ok(now);
                }
                if *closing.borrow() {
                    return;
                }
                tokio::select! {
                    changed = closing.changed() => if changed.is_err() { return },
                    changed = ready.changed() => if changed.is_err() {
                        // Readiness is no longer kept: only shutdown can change the answer.
                        let _ = closing.wait_for(|closing| *closing).await;
                    },
                }
            }
        };
        Ok(Response::new(Box::pin(out)))
    }
}
