//! `eval` reproduces the reference accuracies (docs/specification.md §8) on the CIFAR-10 JPEG test
//! set (onnxruntime, all 10 000 images), and tract predicts like onnxruntime image by image. Both
//! need the whole test set of the shared material (skipped without it).

mod common;

use std::sync::Arc;

use onnx_deeppatch::backend::{BackendKind, BackendOptions, Pool};
use onnx_deeppatch::config::{PreprocessConfig, SIGMAS};
use onnx_deeppatch::data::{load_split, split, DataFormat, Split};
use onnx_deeppatch::data::corruption::blur_group;
use onnx_deeppatch::eval::{evaluate, preprocess_for, ModelIo, TestSet};

const MEAN: &str = "0.485,0.456,0.406";
const STD: &str = "0.229,0.224,0.225";

/// The reference figures: std, blur0.5 … blur3.0, nRob.
fn expected(model: &str) -> [f64; 8] {
    match model {
        "resnet20_cifar10" => [81.03, 81.25, 32.70, 20.67, 19.13, 18.46, 18.21, 38.78],
        "tiny_cnn_cifar10" => [66.00, 62.34, 35.21, 26.05, 23.02, 21.57, 21.16, 36.48],
        "tiny_dw_cifar10" => [55.20, 51.99, 33.02, 25.80, 21.74, 19.56, 18.34, 32.24],
        "tiny_vgg_cifar10" => [67.21, 64.07, 42.69, 31.97, 28.47, 27.06, 25.79, 41.04],
        other => panic!("no reference figures for {other}"),
    }
}

fn ort_reproduces(model: &str) {
    let Some(data) = common::shared_or_skip("data/cifar10-jpg") else { return };
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let output = common::cli(os_args![
        "eval", common::fixture_model(model), "--data", data, "--mean", MEAN, "--std", STD,
        "--backend", "ort", "--report-json", json, "--quiet"
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let want = expected(model);
    let mut got = vec![report["std"].as_f64().unwrap()];
    for sigma in ["0.5", "1.0", "1.5", "2.0", "2.5", "3.0"] {
        got.push(report["blur"][sigma].as_f64().unwrap());
    }
    got.push(report["nrob"].as_f64().unwrap());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 0.05 + 1e-9, "{model} column {i}: {g:.3} vs the reference {w:.2} (all: {got:?})");
    }
    let joint = report["joint"].as_f64().unwrap();
    assert!((joint - got[0] - got[7]).abs() < 1e-9);
    assert_eq!(report["images"], 10_000);
}

#[test]
fn ort_reproduces_resnet20() {
    ort_reproduces("resnet20_cifar10");
}

#[test]
fn ort_reproduces_tiny_cnn() {
    ort_reproduces("tiny_cnn_cifar10");
}

#[test]
fn ort_reproduces_tiny_dw() {
    ort_reproduces("tiny_dw_cifar10");
}

#[test]
fn ort_reproduces_tiny_vgg() {
    ort_reproduces("tiny_vgg_cifar10");
}

/// On a stratified 1 000-image subset, clean and blurred, tract's predictions equal onnxruntime's
/// on at least 99.9 % of samples (docs/specification.md §6).
#[test]
fn tract_predicts_like_ort() {
    let Some(root) = common::shared_or_skip("data/cifar10-jpg") else { return };
    let data = Arc::new(load_split(&root, Split::Test, DataFormat::Folder).unwrap());
    let (_, subset) = split::stratified_split(&data.labels, split::ValSize::Count(1000), 2022).unwrap();
    let config = PreprocessConfig { mean: vec![0.485, 0.456, 0.406], std: vec![0.229, 0.224, 0.225], ..Default::default() };
    let preprocess = preprocess_for(&config, &data).unwrap();
    for model in common::MODELS {
        let proto = onnx_deeppatch::onnx::load_model(&common::fixture_model(model)).unwrap();
        let io = ModelIo::resolve(&proto, &config).unwrap();
        let bytes = prost::Message::encode_to_vec(&proto);
        let mut predictions = Vec::new();
        for kind in [BackendKind::Ort, BackendKind::Tract] {
            let mut pool = Pool::open(&bytes, &BackendOptions { kind, ..Default::default() }).unwrap();
            let groups = [blur_group(&subset, &SIGMAS)];
            let set = TestSet { data: data.clone(), indices: &subset, groups: &groups, preprocess: &preprocess, batch_size: 250 };
            let result = evaluate(&mut pool, &io, &set).unwrap();
            let all: Vec<i64> = result.conditions().flat_map(|r| r.predictions.clone()).collect();
            predictions.push(all);
        }
        let differing = predictions[0].iter().zip(&predictions[1]).filter(|(a, b)| a != b).count();
        assert_eq!(predictions[0].len(), 7000);
        assert!(differing <= 7, "{model}: tract and ort disagree on {differing} of 7000 samples");
    }
}
