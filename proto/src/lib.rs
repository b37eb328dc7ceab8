//! Vigie's contract, in one place.
//!
//! - [`v1`], [`lighting`], [`transport`], [`reports`], [`water`], [`ops`]: the protobuf messages and gRPC services, generated from
//!   `proto/vigie/**`; [`transit_realtime`]: the GTFS-Realtime messages.
//! - [`ids`]: commune (INSEE) and asset identifiers, validated before they touch a subject or a key.
//! - [`subject`]: the NATS subject scheme and the JetStream stream; no other crate builds a subject.
//! - [`event`]: building an [`v1::Event`] (id, times, domain and kind derived from the payload) and
//!   checking one received from the bus.
//! - [`live`]: the WebSocket protocol spoken between the gateway and the console.

pub mod event;
pub mod ids;
pub mod live;
mod report_status;
pub mod subject;

/// Generated code; modules mirror the proto packages (generated paths rely on it).
pub mod vigie {
    /// The envelope and the types shared by every domain (`vigie.v1`).
    pub mod v1 {
        tonic::include_proto!("vigie.v1");
    }
    pub mod lighting {
        /// Street lighting (`vigie.lighting.v1`).
        pub mod v1 {
            tonic::include_proto!("vigie.lighting.v1");
        }
    }
    pub mod transport {
        /// Public transport (`vigie.transport.v1`).
        pub mod v1 {
            tonic::include_proto!("vigie.transport.v1");
        }
    }
    pub mod reports {
        /// Citizen reports (`vigie.reports.v1`).
        pub mod v1 {
            tonic::include_proto!("vigie.reports.v1");
        }
    }
    pub mod ops {
        /// Operators' actions (`vigie.ops.v1`).
        pub mod v1 {
            tonic::include_proto!("vigie.ops.v1");
        }
    }
    pub mod water {
        /// Water network (`vigie.water.v1`).
        pub mod v1 {
            tonic::include_proto!("vigie.water.v1");

            /// The detail of a `burst` alarm that proposes how to isolate it: the links to close
            /// (`SendValveCommandRequest.link_id`), widest first, separated by ", ".
            pub const ISOLATION_DETAIL: &str = "isolation";

            /// The detail of a `burst` alarm that counts the links meeting there which belong to
            /// another commune than the alarm's, and so are not proposed.
            pub const ISOLATION_ELSEWHERE_DETAIL: &str = "isolation_elsewhere";
        }
    }
}

/// GTFS-Realtime (`transit_realtime`), the standard feed the transport service publishes.
pub mod transit_realtime {
    tonic::include_proto!("transit_realtime");
}

pub use vigie::lighting::v1 as lighting;
pub use vigie::ops::v1 as ops;
pub use vigie::reports::v1 as reports;
pub use vigie::transport::v1 as transport;
pub use vigie::v1;
pub use vigie::water::v1 as water;

/// Encoded `FileDescriptorSet` of every Vigie proto (and GTFS-Realtime's), for gRPC server reflection
/// and the JSON views of protobuf data.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vigie_descriptor.bin"));

/// Largest gRPC message a Vigie server accepts (4 MiB); larger ones get `RESOURCE_EXHAUSTED`.
pub const MAX_GRPC_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
