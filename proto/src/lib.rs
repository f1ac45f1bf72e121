//! Generated protobuf and gRPC code for weft.

/// Client API, version 1.
pub mod v1 {
    tonic::include_proto!("weft.v1");
}

/// Internal coordinator <-> worker API, version 1.
pub mod cluster {
    pub mod v1 {
        tonic::include_proto!("weft.cluster.v1");
    }
}

/// Encoded `FileDescriptorSet` of every weft proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/weft_descriptor.bin"));
