//! What every Vigie process does the same way, as plain functions and small types (no framework):
//!
//! - [`config`]: the flags every process shares (NATS, stream, logs, shutdown), each with its
//!   `VIGIE_*` environment variable.
//! - [`telemetry`]: tracing to stderr, text or JSON, filtered by `RUST_LOG`.
//! - [`shutdown`]: a `CancellationToken` cancelled on SIGTERM or SIGINT.
//! - [`bus`]: the NATS connection (reconnecting forever, also at start) and the idempotent creation
//!   of the JetStream events stream.
//! - [`outbox`]: the sled-backed transactional outbox and the relay that publishes it to JetStream.
//! - [`grpc`]: serving gRPC on a bound listener with health, reflection and Vigie's limits.
//! - [`grpc_auth`]: who may call a domain service's gRPC API (tokens, integrators' scopes,
//!   revocations), and the credential a client sends.
//! - [`alarms`]: active alarms, their changes, how they are stored and announced.
//! - [`error`]: why a service's core refuses or fails a use case, and its gRPC status.
//! - [`store`]: a service's sled database (its trees and outbox), the one way it is written, the
//!   store's error, reading records back.
//! - [`replica`]: a service run as an active instance and standbys (the state bucket).
//! - [`lease`]: which instance is active (a lease in a key-value bucket), and its fence.
//! - [`service`]: the start and the end of every domain service's `run`.
//! - [`controller`]: field controllers' sessions and the desk of commands they wait for.
//! - [`metrics`]: the process's Prometheus metrics and their `/metrics` route.

pub mod alarms;
pub mod auth;
pub mod bus;
pub mod config;
pub mod controller;
pub mod error;
pub mod grpc;
pub mod grpc_auth;
pub mod lease;
pub mod metrics;
pub mod outbox;
pub mod replica;
pub mod service;
pub mod shutdown;
pub mod store;
pub mod store_fault;
pub mod telemetry;
