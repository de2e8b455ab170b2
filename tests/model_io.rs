//! Model I/O against independent references: the proto covers the whole ONNX IR, and every bundled
//! model survives load → save with nothing dropped and identical onnxruntime outputs.

mod common;

use onnx_deeppatch::onnx::{load_model, save_model, SaveOptions};

#[test]
fn proto_declares_every_field_of_the_onnx_package() {
    let descriptor = concat!(env!("OUT_DIR"), "/onnx_descriptor.pb");
    let text = common::run_python("proto_completeness.py", os_args![descriptor]);
    assert!(text.contains("differences: 0"), "{text}");
}

#[test]
fn every_bundled_model_survives_load_and_save() {
    let out = tempfile::tempdir().unwrap();
    for name in common::MODELS {
        let source = common::fixture_model(name);
        let model = load_model(&source).unwrap();
        let saved = out.path().join(format!("{name}.onnx"));
        save_model(&model, &saved, &SaveOptions { protect: Some(source.clone()), ..Default::default() }).unwrap();
        let text = common::run_python("same_model.py", os_args![source, saved]);
        assert!(text.contains("messages equal, outputs identical"), "{name}: {text}");
    }
}
