//! Generated protobuf and gRPC code. Imported only by the servers and the CLI client.
#![allow(clippy::all, clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

pub mod admin {
    pub mod v1 {
        tonic::include_proto!("trustmesh.admin.v1");
    }
}
