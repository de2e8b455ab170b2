//! Both backends on real models and on a hand-built graph with a defaulted input: they must agree
//! (docs/specification.md §6) and honour the `Session` contract (defaults, element types, names).

mod common;

use std::path::PathBuf;
use std::time::Instant;

use ndarray::{ArrayD, IxDyn};
use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use onnx_deeppatch::backend::{open_session, BackendKind, BackendOptions, Device, Session};
use onnx_deeppatch::onnx::proto::{self, tensor_proto::DataType, tensor_shape_proto, type_proto};
use onnx_deeppatch::Tensor;

/// The four CIFAR-10 classifiers of `fixtures/models`.
fn models() -> Vec<PathBuf> {
    common::MODELS.iter().map(|name| common::fixture_model(name)).collect()
}

fn open(model: &[u8], kind: BackendKind) -> Box<dyn Session> {
    open_session(model, &BackendOptions { kind, ..BackendOptions::default() })
        .unwrap_or_else(|e| panic!("opening on {kind}: {e}"))
}

/// Values uniform in [-2, 2), about the range of normalised images; the same for every run.
fn images(batch: usize, seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let values = (0..batch * 3 * 32 * 32).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
    Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[batch, 3, 32, 32]), values).unwrap())
}

fn logits(session: &mut dyn Session, input: &Tensor) -> ArrayD<f32> {
    let mut outputs = session.run(&[("input", input)]).unwrap();
    assert_eq!(outputs.len(), 1);
    outputs.remove(0).into_f32().unwrap()
}

fn argmax(row: ndarray::ArrayViewD<f32>) -> usize {
    row.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0
}

#[test]
fn backends_agree_on_bundled_models() {
    for path in models() {
        let model = std::fs::read(&path).unwrap();
        let mut tract = open(&model, BackendKind::Tract);
        let mut ort = open(&model, BackendKind::Ort);
        for session in [&tract, &ort] {
            assert_eq!(session.input_names(), ["input"]);
            assert_eq!(session.output_names(), ["logits"]);
        }
        // 7 then 1 then 7 again: the second 7 reuses tract's cached plan.
        for (batch, seed) in [(7, 1), (1, 2), (7, 1)] {
            let input = images(batch, seed);
            let (a, b) = (logits(tract.as_mut(), &input), logits(ort.as_mut(), &input));
            assert_eq!(a.shape(), [batch, 10], "{}", path.display());
            assert_eq!(a.shape(), b.shape());
            for (x, y) in a.iter().zip(b.iter()) {
                assert!((x - y).abs() <= 1e-4 + 1e-3 * y.abs(), "{}: tract {x} vs ort {y}", path.display());
            }
            for (n, (row_a, row_b)) in a.outer_iter().zip(b.outer_iter()).enumerate() {
                assert_eq!(argmax(row_a), argmax(row_b), "{} sample {n}", path.display());
            }
        }
    }
}

#[test]
fn backends_run_samples_equals_the_batched_run() {
    // tract runs the rows one by one (its lazy patch gathering); ort runs them together. Either
    // way the rows come back in order and agree with the batched run.
    for path in models() {
        let model = std::fs::read(&path).unwrap();
        for kind in [BackendKind::Tract, BackendKind::Ort] {
            let mut session = open(&model, kind);
            let input = images(5, 3);
            let batched = logits(session.as_mut(), &input);
            let mut outputs = session.run_samples(&[("input", &input)], &["input"]).unwrap();
            let rows = outputs.remove(0).into_f32().unwrap();
            assert_eq!(rows.shape(), batched.shape(), "{} on {kind}", path.display());
            for (x, y) in rows.iter().zip(batched.iter()) {
                assert!((x - y).abs() <= 1e-5 + 1e-5 * y.abs(), "{} on {kind}: {x} vs {y}", path.display());
            }
            let one = images(1, 4);
            assert_eq!(session.run_samples(&[("input", &one)], &["input"]).unwrap()[0].as_f32().unwrap(), &logits(session.as_mut(), &one));
        }
    }
}

#[test]
fn backends_run_samples_runs_together_what_is_not_per_sample() {
    // The switch is shared by every row, and three outputs (a shape, a sum of `k`, the negated
    // switch) have no row per sample: the result is the batched run's.
    let model = defaulted_flag_model();
    for kind in [BackendKind::Tract, BackendKind::Ort] {
        let mut session = open(&model, kind);
        let x = Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[3, 4]), (0..12).map(|v| v as f32).collect()).unwrap());
        let flag = Tensor::Bool(ndarray::arr0(true).into_dyn());
        let k = Tensor::I64(ndarray::arr1(&[2, 5]).into_dyn());
        let inputs = [("x", &x), ("flag", &flag), ("k", &k)];
        let outputs = session.run_samples(&inputs, &["x"]).unwrap();
        assert_eq!(outputs, session.run(&inputs).unwrap(), "{kind}");
        assert_eq!(outputs[1], Tensor::I64(ndarray::arr1(&[3, 4]).into_dyn()), "{kind}");
    }
}

fn value_info(name: &str, elem_type: DataType, dims: &[Option<i64>]) -> proto::ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Some(size) => tensor_shape_proto::dimension::Value::DimValue(*size),
                None => tensor_shape_proto::dimension::Value::DimParam("N".into()),
            }),
            ..Default::default()
        })
        .collect();
    proto::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(proto::TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem_type as i32),
                shape: Some(proto::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(op_type: &str, inputs: &[&str], output: &str) -> proto::NodeProto {
    proto::NodeProto {
        op_type: Some(op_type.into()),
        name: Some(output.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

/// y = Where(flag, x, 0), shape = Shape(x), doubled = k + k, flipped = Not(flag); `flag` is a bool
/// scalar input that defaults to TRUE through an initializer, like DeepPatch's `deeppatch_decision`.
fn defaulted_flag_model() -> Vec<u8> {
    let flag = proto::TensorProto {
        name: Some("flag".into()),
        data_type: Some(DataType::Bool as i32),
        int32_data: vec![1],
        ..Default::default()
    };
    let zero = proto::TensorProto {
        name: Some("zero".into()),
        data_type: Some(DataType::Float as i32),
        float_data: vec![0.0],
        ..Default::default()
    };
    let graph = proto::GraphProto {
        name: Some("defaulted_flag".into()),
        node: vec![
            node("Where", &["flag", "x", "zero"], "y"),
            node("Shape", &["x"], "shape"),
            node("Add", &["k", "k"], "doubled"),
            node("Not", &["flag"], "flipped"),
        ],
        initializer: vec![flag, zero],
        input: vec![
            value_info("x", DataType::Float, &[None, Some(4)]),
            value_info("flag", DataType::Bool, &[]),
            value_info("k", DataType::Int64, &[Some(2)]),
        ],
        output: vec![
            value_info("y", DataType::Float, &[None, Some(4)]),
            value_info("shape", DataType::Int64, &[Some(2)]),
            value_info("doubled", DataType::Int64, &[Some(2)]),
            value_info("flipped", DataType::Bool, &[]),
        ],
        ..Default::default()
    };
    proto::ModelProto {
        ir_version: Some(8),
        opset_import: vec![proto::OperatorSetIdProto { domain: Some(String::new()), version: Some(13) }],
        producer_name: Some("backends.rs".into()),
        graph: Some(graph),
        ..Default::default()
    }
    .encode_to_vec()
}

#[test]
fn backends_run_a_defaulted_bool_input_fed_or_not() {
    let model = defaulted_flag_model();
    let x = Tensor::F32(ArrayD::from_shape_fn(IxDyn(&[3, 4]), |i| (i[0] * 4 + i[1]) as f32 + 0.5));
    let k = Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[2]), vec![3, -5]).unwrap());
    let scalar = |value: bool| Tensor::Bool(ArrayD::from_elem(IxDyn(&[]), value));
    let (yes, no) = (scalar(true), scalar(false));
    for kind in [BackendKind::Tract, BackendKind::Ort] {
        let mut session = open(&model, kind);
        assert_eq!(session.input_names(), ["x", "flag", "k"]);
        assert_eq!(session.output_names(), ["y", "shape", "doubled", "flipped"]);
        // Not fed (default TRUE), fed FALSE, fed TRUE, and not fed again after a fed run.
        for (flag, expect_x) in [(None, true), (Some(&no), false), (Some(&yes), true), (None, true)] {
            let mut inputs = vec![("k", &k), ("x", &x)];
            inputs.extend(flag.map(|f| ("flag", f)));
            let outputs = session.run(&inputs).unwrap_or_else(|e| panic!("{kind}, flag {flag:?}: {e}"));
            let expected_y = if expect_x { x.clone() } else { Tensor::F32(ArrayD::zeros(IxDyn(&[3, 4]))) };
            assert_eq!(outputs[0], expected_y, "{kind}, flag {flag:?}");
            assert_eq!(outputs[1], Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[2]), vec![3, 4]).unwrap()));
            assert_eq!(outputs[2], Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[2]), vec![6, -10]).unwrap()));
            assert_eq!(outputs[3], scalar(!expect_x), "{kind}, flag {flag:?}");
        }
    }
}

#[test]
fn backends_name_unknown_and_missing_inputs() {
    let model = defaulted_flag_model();
    let x = Tensor::F32(ArrayD::zeros(IxDyn(&[1, 4])));
    let k = Tensor::I64(ArrayD::zeros(IxDyn(&[2])));
    for kind in [BackendKind::Tract, BackendKind::Ort] {
        let mut session = open(&model, kind);
        let unknown = session.run(&[("x", &x), ("k", &k), ("deeppatch_decision", &x)]).unwrap_err().to_string();
        assert!(unknown.contains("'deeppatch_decision'"), "{kind}: {unknown}");
        let missing = session.run(&[("x", &x)]).unwrap_err().to_string();
        assert!(missing.contains("'k'"), "{kind}: {missing}");
        // A wrong element type is the runtime's refusal of the run (exit 3), not a panic.
        let wrong = session.run(&[("x", &k), ("k", &k)]).unwrap_err();
        assert!(matches!(wrong, onnx_deeppatch::Error::ModelRejected { .. }), "{kind}: {wrong}");
    }
}

#[test]
fn backends_ort_cuda_works_or_fails_clearly() {
    let model = std::fs::read(&models()[0]).unwrap();
    let options = BackendOptions { kind: BackendKind::Ort, device: Device::Cuda(0), threads: None };
    match open_session(&model, &options) {
        Ok(mut cuda) => {
            let input = images(7, 3);
            let (a, b) = (logits(cuda.as_mut(), &input), logits(open(&model, BackendKind::Tract).as_mut(), &input));
            for (x, y) in a.iter().zip(b.iter()) {
                assert!((x - y).abs() <= 1e-3 + 1e-3 * y.abs(), "cuda {x} vs tract {y}");
            }
        }
        Err(e) => {
            let message = e.to_string();
            assert!(message.contains("CUDA device 0") && message.contains("onnxruntime-gpu"), "{message}");
        }
    }
}

/// Images per second of both backends on ResNet20 at batch 256, printed (not asserted):
/// `cargo test --release --test backends -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement; run alone"]
fn backends_throughput_resnet20_batch256() {
    let path = models().into_iter().find(|p| p.ends_with("resnet20_cifar10.onnx")).unwrap();
    let model = std::fs::read(path).unwrap();
    let input = images(256, 4);
    for kind in [BackendKind::Ort, BackendKind::Tract] {
        let mut session = open(&model, kind);
        let start = Instant::now();
        logits(session.as_mut(), &input);
        let first = start.elapsed();
        let rounds = 5;
        let start = Instant::now();
        for _ in 0..rounds {
            logits(session.as_mut(), &input);
        }
        let per_batch = start.elapsed().as_secs_f64() / rounds as f64;
        println!(
            "{kind}: {:.0} images/s ({:.1} ms per batch of 256; first call {:.0} ms)",
            256.0 / per_batch,
            per_batch * 1e3,
            first.as_secs_f64() * 1e3
        );
    }
}
