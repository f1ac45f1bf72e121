//! Compiles the protos with protox (pure Rust, no `protoc` needed) and keeps
//! the file descriptor set for server reflection.
use prost::Message;

const PROTOS: &[&str] = &["weft/v1/generation.proto", "weft/cluster/v1/cluster.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(PROTOS, ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("weft_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
