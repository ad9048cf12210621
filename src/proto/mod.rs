//! Generated protobuf and gRPC code. Imported only by the servers and the CLI client.
#![allow(clippy::all, clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

pub mod codec;

pub mod admin {
    pub mod v1 {
        tonic::include_proto!("trustmesh.admin.v1");
    }
}

pub mod agent {
    pub mod v1 {
        tonic::include_proto!("trustmesh.agent.v1");
    }
}

/// The SPIFFE Workload API (`proto/spiffe/workload.proto`, no proto package).
pub mod spiffe {
    tonic::include_proto!("_");

    /// Redacts the private key: an SVID may be logged, its key never.
    impl std::fmt::Debug for X509svid {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("X509svid")
                .field("spiffe_id", &self.spiffe_id)
                .field("x509_svid_len", &self.x509_svid.len())
                .field("x509_svid_key", &"<redacted>")
                .field("bundle_len", &self.bundle.len())
                .field("hint", &self.hint)
                .finish()
        }
    }

    /// The well-known types the Workload API uses (`google.protobuf.Struct`).
    pub mod google {
        pub mod protobuf {
            tonic::include_proto!("google.protobuf");
        }
    }
}
