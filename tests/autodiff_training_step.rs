//! The training-step graph through the public API: one step on tiny_cnn against an independent
//! ndarray computation, every bundled model on both runtimes, the ONNX checker, naming and errors.
//! (Test names start with `autodiff_` so that `cargo test autodiff` selects them.)

mod common;

use std::collections::HashMap;

use ndarray::{Array2, ArrayD, Axis, Ix1, Ix2, IxDyn};
use onnx_deeppatch::autodiff::{training_step, StepOptions, TrainingStep};
use onnx_deeppatch::backend::{open_session, BackendKind, BackendOptions};
use onnx_deeppatch::onnx::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    ValueInfoProto,
};
use onnx_deeppatch::onnx::{load_model, tensor::from_f32, tensor::to_f32};
use onnx_deeppatch::{Error, Tensor};
use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Preprocessed CIFAR-10 test images (every 39th of the sorted test set) and their labels.
fn batch(count: usize) -> (ArrayD<f32>, Vec<i64>) {
    let array = onnx_deeppatch::data::npy::read_npy(&common::fixture("reference/cifar10_test64_nchw.npy")).unwrap();
    let onnx_deeppatch::data::npy::NpyData::F32(all) = array.data else { panic!("float32 expected") };
    let values = all[..count * 3 * 32 * 32].to_vec();
    let labels = (0..count as i64).map(|i| i * 39 / 1000).collect();
    (ArrayD::from_shape_vec(IxDyn(&[count, 3, 32, 32]), values).unwrap(), labels)
}

fn initializer(model: &ModelProto, name: &str) -> ArrayD<f32> {
    let tensor = model.graph.as_ref().unwrap().initializer.iter().find(|t| t.name() == name).unwrap();
    to_f32(tensor).unwrap().into_owned()
}

/// Runs a step with the given weights and momentum buffers; returns every float output by name
/// and the number of correct predictions.
fn run_step(
    step: &TrainingStep,
    kind: BackendKind,
    images: &ArrayD<f32>,
    labels: &[i64],
    state: &HashMap<String, ArrayD<f32>>,
    lr: f32,
) -> (HashMap<String, ArrayD<f32>>, i64) {
    let mut feeds = vec![
        (step.images.clone(), Tensor::F32(images.clone())),
        (step.labels.clone(), Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[labels.len()]), labels.to_vec()).unwrap())),
        (step.learning_rate.clone(), Tensor::F32(ArrayD::from_elem(IxDyn(&[]), lr))),
    ];
    for p in &step.parameters {
        feeds.push((p.name.clone(), Tensor::F32(state[&p.name].clone())));
        feeds.push((p.momentum.clone(), Tensor::F32(state[&p.momentum].clone())));
    }
    let feeds: Vec<(&str, &Tensor)> = feeds.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut session =
        open_session(&step.model.encode_to_vec(), &BackendOptions { kind, ..Default::default() }).unwrap();
    let names = session.output_names().to_vec();
    let outputs = session.run(&feeds).unwrap();
    let mut correct = -1;
    let mut floats = HashMap::new();
    for (name, value) in names.into_iter().zip(outputs) {
        match value {
            Tensor::F32(a) => {
                floats.insert(name, a);
            }
            Tensor::I64(a) if name == step.correct => correct = a.iter().copied().sum(),
            other => panic!("unexpected output {name}: {other:?}"),
        }
    }
    (floats, correct)
}

/// Current values and random momentum buffers of the trainable tensors.
fn initial_state(model: &ModelProto, step: &TrainingStep, seed: u64) -> HashMap<String, ArrayD<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut state = HashMap::new();
    for p in &step.parameters {
        let value = initializer(model, &p.name);
        state.insert(p.momentum.clone(), value.mapv(|_| rng.gen_range(-0.01f32..0.01)));
        state.insert(p.name.clone(), value);
    }
    state
}

fn max_gap(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn autodiff_tiny_cnn_step_matches_an_independent_sgd_step() {
    let model = load_model(&common::fixture_model("tiny_cnn_cifar10")).unwrap();
    let (images, labels) = batch(24);
    let options = StepOptions::default();
    let (lr, momentum, decay) = (0.05f32, options.momentum as f32, options.weight_decay as f32);
    let step = training_step(&model, &["fc.weight", "fc.bias"], &options).unwrap();
    // Only the classifier trains: nothing is differentiated through the convolutions.
    let ops: Vec<&str> = step.model.graph.as_ref().unwrap().node.iter().map(|n| n.op_type()).collect();
    assert!(!ops.contains(&"ConvTranspose") && ops.iter().filter(|&&op| op == "MaxPool").count() == 2, "{ops:?}");

    // The independent computation: features from the frozen layers, then the classifier, the
    // loss, its gradient and torch.optim.SGD's update written out with ndarray in float64.
    let mut features_model = model.clone();
    features_model.graph.as_mut().unwrap().output[0].name = Some("/Flatten_output_0".into());
    let mut session =
        open_session(&features_model.encode_to_vec(), &BackendOptions { kind: BackendKind::Ort, ..Default::default() })
            .unwrap();
    let features = session.run(&[("input", &Tensor::F32(images.clone()))]).unwrap().remove(0).into_f32().unwrap();
    let features: Array2<f64> = features.mapv(f64::from).into_dimensionality::<Ix2>().unwrap();
    let state = initial_state(&model, &step, 1);
    let weight = state["fc.weight"].mapv(f64::from).into_dimensionality::<Ix2>().unwrap();
    let bias = state["fc.bias"].mapv(f64::from).into_dimensionality::<Ix1>().unwrap();
    let logits = features.dot(&weight.t()) + &bias;
    let n = labels.len() as f64;
    let mut residual = logits.clone();
    let mut loss = 0.0;
    let mut correct = 0;
    for (mut row, &label) in residual.axis_iter_mut(Axis(0)).zip(&labels) {
        let max = row.fold(f64::MIN, |m, &v| m.max(v));
        let total: f64 = row.iter().map(|v| (v - max).exp()).sum();
        loss += total.ln() + max - row[label as usize];
        correct += i64::from(
            row.iter().enumerate().fold((0, f64::MIN), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0
                == label as usize,
        );
        row.mapv_inplace(|v| (v - max).exp() / total / n);
        row[label as usize] -= 1.0 / n;
    }
    loss /= n;
    let gradients =
        [("fc.weight", residual.t().dot(&features).into_dyn()), ("fc.bias", residual.sum_axis(Axis(0)).into_dyn())];

    for kind in [BackendKind::Ort, BackendKind::Tract] {
        let (outputs, graph_correct) = run_step(&step, kind, &images, &labels, &state, lr);
        assert!(
            (f64::from(outputs[&step.loss].iter().copied().sum::<f32>()) - loss).abs() < 1e-5 * loss,
            "{kind}: loss"
        );
        assert_eq!(graph_correct, correct, "{kind}: correct predictions");
        for (p, (name, gradient)) in step.parameters.iter().zip(&gradients) {
            assert_eq!(&p.name, name);
            assert!(p.reaches_loss);
            let value = state[*name].mapv(f64::from);
            let buffer = state[&p.momentum].mapv(f64::from);
            // d = g + wd·p; buf = μ·buf + d; p ← p − lr·buf.
            let direction = gradient + &(&value * f64::from(decay));
            let new_buffer = &buffer * f64::from(momentum) + direction;
            let new_value = &value - &(&new_buffer * f64::from(lr));
            let buffer_gap = max_gap(&outputs[&p.updated_momentum], &new_buffer.mapv(|v| v as f32));
            let value_gap = max_gap(&outputs[&p.updated], &new_value.mapv(|v| v as f32));
            eprintln!("{kind}: {name}: updated weights within {value_gap:.1e}, momentum within {buffer_gap:.1e}");
            assert!(value_gap < 1e-5 && buffer_gap < 1e-5, "{kind}: {name}");
        }
    }
}

#[test]
fn autodiff_sgd_composition_on_a_convolution_weight() {
    // Without momentum, decay or learning rate the new buffer is the gradient; the full step must
    // then be p − lr · (μ · buf + g + wd · p) with that gradient.
    let model = load_model(&common::fixture_model("tiny_cnn_cifar10")).unwrap();
    let (images, labels) = batch(8);
    let plain = StepOptions { momentum: 0.0, weight_decay: 0.0, logits: None };
    let gradient_step = training_step(&model, &["f.2.0.weight"], &plain).unwrap();
    let state = initial_state(&model, &gradient_step, 2);
    let (outputs, _) = run_step(&gradient_step, BackendKind::Ort, &images, &labels, &state, 0.0);
    let gradient = &outputs[&gradient_step.parameters[0].updated_momentum];

    let options = StepOptions { momentum: 0.5, weight_decay: 1e-2, logits: Some("logits".into()) };
    let step = training_step(&model, &["f.2.0.weight"], &options).unwrap();
    let mut state = state;
    state.insert(step.parameters[0].momentum.clone(), state[&gradient_step.parameters[0].momentum].clone());
    let (outputs, _) = run_step(&step, BackendKind::Ort, &images, &labels, &state, 0.1);
    let p = &step.parameters[0];
    let buffer = &state[&p.momentum] * 0.5 + gradient + &(&state[&p.name] * 1e-2);
    let value = &state[&p.name] - &(&buffer * 0.1);
    assert!(max_gap(&outputs[&p.updated_momentum], &buffer) < 1e-6);
    assert!(max_gap(&outputs[&p.updated], &value) < 1e-6);
}

#[test]
fn autodiff_every_bundled_model_steps_alike_on_both_runtimes() {
    for name in common::MODELS {
        let model = load_model(&common::fixture_model(name)).unwrap();
        let graph = model.graph.as_ref().unwrap();
        let convs: Vec<&NodeProto> = graph.node.iter().filter(|n| n.op_type() == "Conv").collect();
        // The first and the last convolution (bias included where there is one): every backward
        // rule between them and the logits is exercised.
        let mut trainable: Vec<&str> = vec![&convs[0].input[1], &convs[convs.len() - 1].input[1]];
        trainable.extend(convs[0].input.get(2).map(String::as_str));
        let step = training_step(&model, &trainable, &StepOptions::default()).unwrap();
        check_naming(&model, &step);
        for count in [1, 5] {
            let (images, labels) = batch(count);
            let state = initial_state(&model, &step, 3);
            let (ort, ort_correct) = run_step(&step, BackendKind::Ort, &images, &labels, &state, 0.01);
            let (tract, tract_correct) = run_step(&step, BackendKind::Tract, &images, &labels, &state, 0.01);
            assert_eq!(ort_correct, tract_correct, "{name}");
            for (output, value) in &ort {
                let scale = value.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                let gap = max_gap(value, &tract[output]);
                assert!(
                    gap <= 1e-4 * scale,
                    "{name}, batch {count}: {output} differs by {gap:.2e} (scale {scale:.2e})"
                );
            }
            for p in &step.parameters {
                assert!(p.reaches_loss);
                assert!(max_gap(&ort[&p.updated], &state[&p.name]) > 0.0, "{name}: {} did not move", p.name);
            }
        }
        check_with_onnx(&step.model, name);
    }
}

/// Added names are under `deeppatch/`, the forward names and opset are kept and frozen
/// initializers are unchanged.
fn check_naming(model: &ModelProto, step: &TrainingStep) {
    let original = model.graph.as_ref().unwrap();
    let known: std::collections::HashSet<&str> = original
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(String::as_str))
        .chain(original.initializer.iter().map(|t| t.name()))
        .chain(original.input.iter().map(|i| i.name()))
        .collect();
    let graph = step.model.graph.as_ref().unwrap();
    for node in &graph.node {
        for output in &node.output {
            assert!(known.contains(output.as_str()) || output.starts_with("deeppatch/"), "{output}");
        }
    }
    for value in
        graph.input.iter().chain(&graph.output).map(|v| v.name()).chain(graph.initializer.iter().map(|t| t.name()))
    {
        assert!(known.contains(value) || value.starts_with("deeppatch/"), "{value}");
    }
    assert_eq!(step.model.opset_import, model.opset_import);
    for tensor in &graph.initializer {
        if let Some(before) = original.initializer.iter().find(|t| t.name() == tensor.name()) {
            assert_eq!(before, tensor, "frozen initializer {} changed", tensor.name());
        }
    }
    let trainable: Vec<&str> = step.parameters.iter().map(|p| p.name.as_str()).collect();
    assert!(graph.initializer.iter().all(|t| !trainable.contains(&t.name())));
}

/// `onnx.checker.check_model(full_check=True)` accepts the model.
fn check_with_onnx(model: &ModelProto, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{name}_step.onnx"));
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    let script = "import sys, onnx; onnx.checker.check_model(onnx.load(sys.argv[1]), full_check=True)";
    let output = std::process::Command::new(common::python()).args(["-c", script]).arg(&path).output().unwrap();
    assert!(output.status.success(), "{name}: {}", String::from_utf8_lossy(&output.stderr));
}

fn tensor_info(name: &str, elem_type: i32, dims: &[usize]) -> ValueInfoProto {
    use onnx_deeppatch::onnx::proto::tensor_shape_proto::{dimension::Value, Dimension};
    let dims = dims.iter().map(|&d| Dimension { value: Some(Value::DimValue(d as i64)), denotation: None }).collect();
    onnx_deeppatch::onnx::builder::tensor_info(name, elem_type, dims)
}

fn node(name: &str, op: &str, inputs: &[&str], attributes: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        name: Some(name.into()),
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![name.into()],
        attribute: attributes,
        ..Default::default()
    }
}

/// x [N, 4] → Gemm(w) → `middle` → Gemm(v) → logits [N, 3], with `middle` chosen by the caller.
fn two_layer_model(middle: Vec<NodeProto>, feeds_second: &str) -> ModelProto {
    let w = ArrayD::from_shape_fn(IxDyn(&[4, 4]), |i| (i[0] as f32 - i[1] as f32) * 0.1);
    let v = ArrayD::from_shape_fn(IxDyn(&[4, 3]), |i| (i[0] + i[1]) as f32 * 0.1);
    let mut nodes = vec![node("first", "Gemm", &["x", "w"], vec![])];
    nodes.extend(middle);
    nodes.push(node("logits", "Gemm", &[feeds_second, "v"], vec![]));
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(17) }],
        graph: Some(GraphProto {
            node: nodes,
            name: Some("two layers".into()),
            initializer: vec![from_f32("w", &w.view()), from_f32("v", &v.view())],
            input: vec![tensor_info("x", 1, &[2, 4])],
            output: vec![tensor_info("logits", 1, &[2, 3])],
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn autodiff_an_operator_without_a_rule_is_named_only_on_the_gradient_path() {
    let on_path = two_layer_model(vec![node("odd", "Erf", &["first"], vec![])], "odd");
    match training_step(&on_path, &["w"], &StepOptions::default()) {
        Err(Error::Unsupported { node, op_type, message }) => {
            assert_eq!((node.as_str(), op_type.as_str()), ("odd", "Erf"));
            assert!(message.contains("no backward rule"), "{message}");
        }
        other => panic!("expected an unsupported-operator error, got {other:?}"),
    }
    // Only the second layer trains: the Erf lies below it and needs no gradient.
    let step = training_step(&on_path, &["v"], &StepOptions::default()).unwrap();
    assert!(step.parameters[0].reaches_loss);
    // A shape computation off the float path carries no gradient whatever operators it uses.
    let shape_path = vec![
        node("shape", "Shape", &["first"], vec![]),
        node(
            "as_float",
            "Cast",
            &["shape"],
            vec![AttributeProto { name: Some("to".into()), r#type: Some(2), i: Some(1), ..Default::default() }],
        ),
        node("rounded", "Round", &["as_float"], vec![]),
        node(
            "back",
            "Cast",
            &["rounded"],
            vec![AttributeProto { name: Some("to".into()), r#type: Some(2), i: Some(7), ..Default::default() }],
        ),
        node("same", "Reshape", &["first", "back"], vec![]),
    ];
    let model = two_layer_model(shape_path, "same");
    // The Round sits on a float path fed by an integer: nothing reaches it from w.
    training_step(&model, &["w"], &StepOptions::default()).unwrap();
}

#[test]
fn autodiff_misuse_is_reported() {
    let model = two_layer_model(Vec::new(), "first");
    let not_initializer = training_step(&model, &["x"], &StepOptions::default()).unwrap_err();
    assert!(matches!(not_initializer, Error::InvalidGraph(ref m) if m.contains("'x'")), "{not_initializer}");
    let missing = training_step(&model, &["nowhere"], &StepOptions::default()).unwrap_err();
    assert!(missing.to_string().contains("nowhere"), "{missing}");
    let twice = training_step(&model, &["w", "w"], &StepOptions::default()).unwrap_err();
    assert!(twice.to_string().contains("twice"), "{twice}");
    let inner = StepOptions { logits: Some("first".into()), ..StepOptions::default() };
    assert!(training_step(&model, &["w"], &inner).is_ok(), "any float [N, C] value can serve as logits");
    let no_value = StepOptions { logits: Some("w".into()), ..StepOptions::default() };
    assert!(training_step(&model, &["w"], &no_value).is_err());
    let training_dropout = two_layer_model(
        vec![
            NodeProto {
                name: Some("drop".into()),
                op_type: Some("Dropout".into()),
                input: vec!["first".into(), String::new(), "mode".into()],
                output: vec!["drop".into()],
                ..Default::default()
            },
            node(
                "mode",
                "Constant",
                &[],
                vec![AttributeProto {
                    name: Some("value".into()),
                    r#type: Some(4),
                    t: Some(onnx_deeppatch::onnx::tensor::from_bool("", &[], &[true])),
                    ..Default::default()
                }],
            ),
        ],
        "drop",
    );
    let error = training_step(&training_dropout, &["w"], &StepOptions::default()).unwrap_err();
    assert!(matches!(error, Error::Unsupported { ref node, .. } if node == "drop"), "{error}");
}

#[test]
fn autodiff_a_trainable_tensor_off_the_loss_path_is_left_unchanged() {
    // PyTorch skips a parameter without a gradient: no decay, no momentum.
    let mut model = two_layer_model(Vec::new(), "first");
    let graph = model.graph.as_mut().unwrap();
    let unused = ArrayD::from_elem(IxDyn(&[2]), 1.5f32);
    graph.initializer.push(from_f32("unused", &unused.view()));
    graph.node.push(node("side", "Mul", &["unused", "unused"], vec![]));
    graph.output.push(tensor_info("side", 1, &[2]));
    let step = training_step(&model, &["w", "unused"], &StepOptions::default()).unwrap();
    assert!(!step.parameters[1].reaches_loss);
    let mut state = HashMap::new();
    for (p, value) in step.parameters.iter().zip([initializer(&model, "w"), unused.clone()]) {
        state.insert(p.momentum.clone(), value.mapv(|_| 0.25));
        state.insert(p.name.clone(), value);
    }
    let images = ArrayD::from_shape_fn(IxDyn(&[2, 4]), |i| i[1] as f32 - 1.0);
    for kind in [BackendKind::Ort, BackendKind::Tract] {
        let (outputs, _) = run_step(&step, kind, &images, &[0, 2], &state, 0.1);
        let p = &step.parameters[1];
        assert_eq!(outputs[&p.updated], unused);
        assert_eq!(outputs[&p.updated_momentum], state[&p.momentum]);
    }
}
