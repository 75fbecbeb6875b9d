//! Compiles `saga/v1/*.proto` with a vendored `protoc`, so a fresh machine needs no system package.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["saga/v1/orchestrator.proto", "saga/v1/messages.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("saga_v1_descriptor.bin"))
        .build_client(cfg!(feature = "client"))
        .build_server(cfg!(feature = "server"))
        .compile_with_config(config, &files, &["."])?;
    Ok(())
}
