//! Generates the tonic/prost code and the reflection descriptor set from `proto/`.
//! `protoc` comes from `protoc-bin-vendored`, so no system package is needed.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { env::set_var("PROTOC", protoc) };
    let wkt_include = protoc_bin_vendored::include_path()?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("phantom_descriptor.bin"))
        // google.rpc.Status is the same type tonic-types uses for rich errors.
        .extern_path(".google.rpc", "::tonic_types::pb")
        // Written by hand so the server can send a page it encoded once (src/wire.rs).
        .extern_path(
            ".phantom.v1.GetContactsResponse",
            "crate::wire::GetContactsResponse",
        )
        // Payloads are shared, not copied, on their way through the actors.
        .bytes(".phantom.v1")
        // The `Connect` RPC would clash with the generated `connect` constructor; clients build
        // a `Channel` and call `new` instead.
        .build_transport(false)
        // Small starting buffers: an idle event stream holds one for its whole life.
        .codec_path("crate::grpc::codec::LeanCodec")
        .compile_protos(
            &[PathBuf::from("proto/phantom/v1/phantom.proto")],
            &[PathBuf::from("proto"), wkt_include],
        )?;
    // The benchmark's ceiling service; not part of the API (nor of its descriptor set).
    tonic_prost_build::configure().compile_protos(
        &[PathBuf::from("proto/phantom/bench/v1/echo.proto")],
        &[PathBuf::from("proto")],
    )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
