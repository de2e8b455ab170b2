//! Bad input ends with a one-line error and the documented exit code, never a panic.

mod common;

use std::fs;
use std::path::Path;

use onnx_deeppatch::onnx::proto::{tensor_proto::DataLocation, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, ValueInfoProto};
use prost::Message;

/// Runs the binary and returns (exit code, standard error), checking the error is one line.
fn fails(args: &[&std::ffi::OsStr]) -> (i32, String) {
    let output = common::cli(args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let code = output.status.code().expect("exited, not killed");
    assert_ne!(code, 0, "succeeded unexpectedly: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    (code, stderr)
}

fn tiny_model_bytes() -> Vec<u8> {
    fs::read(common::shared_model("tiny_dw_cifar10")).unwrap()
}

#[test]
fn truncated_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.onnx");
    let bytes = tiny_model_bytes();
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let (code, message) = fails(os_args!["inspect", path]);
    assert_eq!(code, 3);
    assert!(message.contains("cut.onnx") && message.contains("not a valid ONNX model"), "{message}");
}

#[test]
fn random_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("noise.onnx");
    let mut state = 0x2545F4914F6CDD1Du64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    fs::write(&path, noise).unwrap();
    let (code, message) = fails(os_args!["inspect", path]);
    assert_eq!(code, 3);
    assert!(message.contains("noise.onnx"), "{message}");
}

#[test]
fn external_data_outside_the_model_folder() {
    let dir = tempfile::tempdir().unwrap();
    let inner = dir.path().join("model");
    fs::create_dir(&inner).unwrap();
    fs::write(dir.path().join("secret.bin"), vec![0u8; 4096]).unwrap();
    let mut model = ModelProto::decode(tiny_model_bytes().as_slice()).unwrap();
    let tensor = &mut model.graph.as_mut().unwrap().initializer[0];
    tensor.raw_data = None;
    tensor.float_data.clear();
    tensor.data_location = Some(DataLocation::External as i32);
    tensor.external_data = vec![StringStringEntryProto { key: Some("location".into()), value: Some("../secret.bin".into()) }];
    let path = inner.join("escape.onnx");
    fs::write(&path, model.encode_to_vec()).unwrap();
    let (code, message) = fails(os_args!["inspect", path]);
    assert_eq!(code, 3);
    assert!(message.contains("leaves the model's folder"), "{message}");
}

#[test]
fn graph_with_a_cycle() {
    let value = |name: &str| ValueInfoProto { name: Some(name.into()), ..Default::default() };
    let node = |name: &str, op: &str, inputs: &[&str], output: &str| NodeProto {
        name: Some(name.into()),
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    };
    let model = ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(17) }],
        graph: Some(GraphProto {
            name: Some("loop".into()),
            node: vec![node("first", "Add", &["x", "b"], "a"), node("second", "Relu", &["a"], "b")],
            input: vec![value("x")],
            output: vec![value("b")],
            ..Default::default()
        }),
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cycle.onnx");
    fs::write(&path, model.encode_to_vec()).unwrap();
    let (code, message) = fails(os_args!["inspect", path]);
    assert_eq!(code, 3);
    assert!(message.contains("cycle") && message.contains("cycle.onnx"), "{message}");
}

#[test]
fn config_naming_an_input_the_model_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("deeppatch.yaml");
    fs::write(&config, "preprocess:\n  input: pixels\n  mean: [0.485, 0.456, 0.406]\n  std: [0.229, 0.224, 0.225]\n").unwrap();
    let model = common::shared_model("tiny_cnn_cifar10");
    let data = common::fixture("cifar10-mini");
    let (code, message) = fails(os_args!["eval", model, "--config", config, "--data", data]);
    assert_eq!(code, 2);
    assert!(message.contains("pixels") && message.contains("preprocess.input"), "{message}");
}

#[test]
fn image_folder_without_images() {
    let dir = tempfile::tempdir().unwrap();
    for class in ["cat", "dog"] {
        fs::create_dir_all(dir.path().join("test").join(class)).unwrap();
    }
    fs::write(dir.path().join("test/cat/notes.txt"), "not an image").unwrap();
    let model = common::shared_model("tiny_cnn_cifar10");
    let (code, message) = fails(os_args!["eval", model, "--data", dir.path(), "--format", "folder"]);
    assert_eq!(code, 4);
    assert!(message.contains("no images"), "{message}");
    assert!(message.contains(&dir.path().join("test").display().to_string()) || message.contains(&dir.path().display().to_string()), "{message}");
}

#[test]
fn missing_model_file() {
    let (code, message) = fails(os_args!["inspect", Path::new("/nonexistent/model.onnx")]);
    assert_eq!(code, 4);
    assert!(message.contains("/nonexistent/model.onnx"), "{message}");
}
