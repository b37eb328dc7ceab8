//! End-to-end scenarios against real processes (see the `tests` crate's harness). One test binary;
//! each test starts its own NATS server, services and gateway, so tests run in parallel.

mod abuse;
mod all_domains;
mod bench_smoke;
mod clock;
mod cluster;
mod console;
mod console_api;
mod deploy_manifests;
mod failover;
mod faults;
mod gateway_ops;
mod gateway_replicas;
mod grpc_faces;
mod gtfs_rt_rules;
mod lighting_domain;
mod lighting_slice;
mod live_protocol;
mod ngsild;
mod openapi_fuzz;
mod reliability;
mod reports;
mod shards;
mod tenancy;
mod transport;
mod transport_simulated;
mod water;
