//! Compiles `neuromfa.proto` with the protoc that Cargo vendors, so a fresh machine needs none.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through this variable.
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=neuromfa.proto");
    tonic_prost_build::configure().compile_protos(&["neuromfa.proto"], &["."])?;
    Ok(())
}
