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
    fs::read(common::fixture_model("tiny_dw_cifar10")).unwrap()
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
    let model = common::fixture_model("tiny_cnn_cifar10");
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
    let model = common::fixture_model("tiny_cnn_cifar10");
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

/// tiny_cnn (a fixture) changed by `change`, written to a fresh folder.
fn mutant(dir: &Path, change: impl FnOnce(&mut ModelProto)) -> std::path::PathBuf {
    let mut model = ModelProto::decode(fs::read(common::fixture("models/tiny_cnn_cifar10.onnx")).unwrap().as_slice()).unwrap();
    change(&mut model);
    let path = dir.join("mutant.onnx");
    fs::write(&path, model.encode_to_vec()).unwrap();
    path
}

fn graph(model: &mut ModelProto) -> &mut GraphProto {
    model.graph.as_mut().unwrap()
}

fn node_of<'g>(graph: &'g mut GraphProto, op: &str) -> &'g mut NodeProto {
    graph.node.iter_mut().find(|n| n.op_type.as_deref() == Some(op)).unwrap()
}

/// Hostile or broken models are refused by `inspect` and `patch` before anything allocates, with
/// exit 3 and a message naming the tensor or node and the value at fault.
#[test]
fn structurally_invalid_models_are_refused_with_exit_3() {
    type Change = Box<dyn FnOnce(&mut ModelProto)>;
    let cases: Vec<(&str, Change, &str)> = vec![
        ("short data", Box::new(|m| graph(m).initializer[0].dims[0] += 1), "raw_data bytes"),
        ("2^30 elements claimed", Box::new(|m| graph(m).initializer[0].dims = vec![1 << 30]), "need"),
        ("negative bias dimension", Box::new(|m| graph(m).initializer[1].dims = vec![-16]), "negative dimension -16"),
        ("unknown data type", Box::new(|m| graph(m).initializer[0].data_type = Some(77)), "unknown data type 77"),
        (
            "kernel of 2^32",
            Box::new(|m| {
                let conv = node_of(graph(m), "Conv");
                conv.attribute.retain(|a| a.name.as_deref() != Some("kernel_shape"));
                conv.attribute.push(onnx_deeppatch::onnx::builder::ints("kernel_shape", &[1 << 32, 3]));
            }),
            "kernel_shape",
        ),
        ("BatchNormalization with one input", Box::new(|m| node_of(graph(m), "BatchNormalization").input.truncate(1)), "BatchNormalization-9 takes 5 to 5"),
        (
            "group of zero",
            Box::new(|m| {
                let conv = node_of(graph(m), "Conv");
                conv.attribute.retain(|a| a.name.as_deref() != Some("group"));
                conv.attribute.push(onnx_deeppatch::onnx::builder::int("group", 0));
            }),
            "'group' 0",
        ),
        (
            "an attribute given twice",
            Box::new(|m| node_of(graph(m), "Conv").attribute.push(onnx_deeppatch::onnx::builder::int("group", 2))),
            "attribute 'group' is given 2 times",
        ),
        ("opset 5", Box::new(|m| m.opset_import[0].version = Some(5)), "opset 5"),
        (
            "a NaN weight",
            Box::new(|m| {
                let weight = &mut graph(m).initializer[0];
                let raw = weight.raw_data.as_mut().unwrap();
                raw[..4].copy_from_slice(&f32::NAN.to_le_bytes());
            }),
            "--allow-nonfinite",
        ),
    ];
    for (case, change, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = mutant(dir.path(), change);
        for command in [os_args!["inspect", &path].to_vec(), os_args!["patch", &path, dir.path().join("out.onnx"), "--random-spec"].to_vec()] {
            let (code, message) = fails(&command);
            assert_eq!(code, 3, "{case}: {message}");
            assert!(message.contains(expected), "{case}: {message}");
        }
        assert!(!dir.path().join("out.onnx").exists(), "{case}: an output was written");
    }
}

#[test]
fn nonfinite_weights_are_a_warning_with_allow_nonfinite() {
    let dir = tempfile::tempdir().unwrap();
    let path = mutant(dir.path(), |m| graph(m).initializer[0].raw_data.as_mut().unwrap()[..4].copy_from_slice(&f32::INFINITY.to_le_bytes()));
    let output = common::cli(os_args!["--allow-nonfinite", "inspect", path]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("warning:") && stderr.contains("1 non-finite value"), "{stderr}");
}

/// What the γ rewrite cannot route per sample is refused: a weight fed at run time (a second
/// runtime input) and an unbatched image input.
#[test]
fn inputs_the_rewrite_cannot_route_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let weight_input = mutant(dir.path(), |m| {
        let g = graph(m);
        let weight = node_of(g, "Conv").input[1].clone();
        g.initializer.retain(|t| t.name.as_deref() != Some(weight.as_str()));
        g.input.push(ValueInfoProto { name: Some(weight), ..Default::default() });
    });
    let (code, message) = fails(os_args!["patch", weight_input, dir.path().join("a.onnx"), "--random-spec"]);
    assert_eq!(code, 3, "{message}");
    assert!(message.contains("2 runtime inputs"), "{message}");

    // A valid unbatched model: [3, 32, 32] in, Unsqueeze to [1, 3, 32, 32] before the first Conv.
    let unbatched = mutant(dir.path(), |m| {
        use onnx_deeppatch::onnx::proto::type_proto::Value;
        let g = graph(m);
        let input = &mut g.input[0];
        let name = input.name.clone().unwrap();
        let Some(Value::TensorType(tensor)) = input.r#type.as_mut().unwrap().value.as_mut() else { panic!("tensor input") };
        tensor.shape.as_mut().unwrap().dim.remove(0);
        for node in &mut g.node {
            node.input.iter_mut().filter(|i| **i == name).for_each(|i| *i = "batched".into());
        }
        g.initializer.push(onnx_deeppatch::onnx::tensor::from_i64("unsqueeze_axes", &[1], &[0]));
        let unsqueeze = NodeProto {
            op_type: Some("Unsqueeze".into()),
            input: vec![name, "unsqueeze_axes".into()],
            output: vec!["batched".into()],
            ..Default::default()
        };
        g.node.insert(0, unsqueeze);
    });
    let (code, message) = fails(os_args!["patch", unbatched, dir.path().join("b.onnx"), "--random-spec"]);
    assert_eq!(code, 3, "{message}");
    assert!(message.contains("has rank 3"), "{message}");
}

/// Devices and named pipes are refused before they are read (a pipe would block forever).
#[test]
fn non_regular_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("model.onnx");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    for model in [Path::new("/dev/zero"), fifo.as_path()] {
        let (code, message) = fails(os_args!["inspect", model]);
        assert_eq!(code, 4, "{message}");
        assert!(message.contains("not a regular file"), "{message}");
    }
    let (code, message) = fails(os_args!["eval", common::fixture("models/tiny_cnn_cifar10.onnx"), "--config", "/dev/zero"]);
    assert_eq!(code, 2, "{message}");
}

/// `--isolate`: a child that runs out of time or memory ends as one error line with exit 3.
#[test]
fn isolated_runs_end_cleanly_at_their_limits() {
    let (model, config) = (common::fixture("models/tiny_cnn_cifar10.onnx"), common::fixture("cifar10.yaml"));
    let dir = tempfile::tempdir().unwrap();
    let (code, message) = fails(os_args!["--isolate", "--time-limit", "1", "train", &model, "--config", &config, "--assessment", "/nonexistent", "--out", dir.path().join("run")]);
    assert_eq!(code, 4, "the child's own error passes through: {message}");
    let (code, message) = fails(os_args!["--isolate", "--memory-limit", "16", "eval", &model, "--config", &config]);
    assert_eq!(code, 3, "{message}");
    assert!(message.contains("isolated run: the command was ended by signal"), "{message}");
    // Quiet: a round may finish (and report its progress) well within the second.
    let (code, message) = fails(os_args!["--isolate", "--time-limit", "1", "--quiet", "bench", "eval", &model, "--config", &config, "--rounds", "1000"]);
    assert_eq!(code, 3, "{message}");
    assert!(message.contains("did not finish within 1 s"), "{message}");
}
