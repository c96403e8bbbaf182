//! Generates the gRPC code from `proto/` with a pure-Rust protobuf compiler
//! (protox), so that a build machine needs no `protoc`. Only with the `grpc`
//! feature.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "grpc")]
    grpc::generate();
}

#[cfg(feature = "grpc")]
mod grpc {
    use prost::Message as _;
    use std::path::PathBuf;

    pub fn generate() {
        let proto = "proto/netscope/v1/flow.proto";
        println!("cargo:rerun-if-changed={proto}");
        let fds = match protox::compile([proto], ["proto"]) {
            Ok(fds) => fds,
            Err(e) => panic!("compiling {proto} failed: {e:?}"),
        };
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
        std::fs::write(out.join("netscope_v1_descriptor.bin"), fds.encode_to_vec())
            .expect("writing the file descriptor set to OUT_DIR");
        tonic_prost_build::configure()
            .build_client(true)
            .build_server(true)
            .compile_fds(fds)
            .expect("generating Rust code for netscope.v1");
    }
}
