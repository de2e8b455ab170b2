//! Compiles `proto/onnx.proto` with prost and the vendored protoc, so no system protoc is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build reads PROTOC from the environment; a build script is single-threaded, so this is sound.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("onnx_descriptor.pb");
    // The descriptor set lets tests compare this proto with the onnx package field by field.
    prost_build::Config::new().file_descriptor_set_path(descriptors).compile_protos(&["proto/onnx.proto"], &["proto/"])?;
    Ok(())
}
