//! The wire layer: the transports, and what they share, below both (neither
//! transport imports the other).
//!
//! - [`calls`]: every unary RPC as one function from request to response,
//!   and the one table of them both transports generate their routes from;
//! - [`convert`]: model ↔ protobuf, once; [`observe`]: the verified caller,
//!   and one log line and metric per call; [`lease`]: responses that hold
//!   memory until sent;
//! - [`grpc`] (and gRPC-Web): tonic handlers, Connect as a gRPC stream, the
//!   mapping of [`crate::error::Error`] to a `Status`; [`codec`]: the prost
//!   codec; [`health`]: `grpc.health.v1`;
//! - [`http`]: the HTTP/JSON routes and Connect as a WebSocket; [`web`]:
//!   the web client's files.

pub(crate) mod calls;
pub(crate) mod codec;
pub(crate) mod convert;
pub(crate) mod grpc;
pub(crate) mod health;
pub(crate) mod http;
pub(crate) mod lease;
pub(crate) mod observe;
pub(crate) mod web;
