//! `calibrate` end to end on the fixtures (tiny_cnn, the bundled CIFAR-10 subset, random
//! replacement filters): the CR statistics against an independent recomputation, the auto choice
//! against the clean-accuracy floor, and the probe's figures against its γ model as served.

mod common;

use std::path::Path;

use onnx_deeppatch::backend::{open_session, BackendOptions};
use onnx_deeppatch::config::{Config, SIGMAS};
use onnx_deeppatch::data::split::{stratified_split, ValSize};
use onnx_deeppatch::data::{load_split, make_batch, Corruption, Split};
use onnx_deeppatch::eval::{argmax, preprocess_for};
use onnx_deeppatch::onnx::load_model;
use onnx_deeppatch::onnx::proto::ModelProto;
use onnx_deeppatch::units::{gamma_model, spec::random_spec, Decision, PatchSpec};
use onnx_deeppatch::Tensor;
use serde_json::Value;

/// T_val (clean) then T_val blurred at each σ, as (blurred, input, labels) batches.
fn val_set(config: &Config) -> Vec<(bool, Tensor, Vec<i64>)> {
    let train = load_split(config.data.root.as_ref().unwrap(), Split::Train, config.data.format).unwrap();
    let (_, val) = stratified_split(&train.labels, ValSize::Fraction(0.02), 2022).unwrap();
    let preprocess = preprocess_for(&config.preprocess, &train).unwrap();
    let labels: Vec<i64> = val.iter().map(|&i| train.labels[i]).collect();
    std::iter::once(Corruption::Clean)
        .chain(SIGMAS.iter().map(|&s| Corruption::Blur(s)))
        .map(|c| (c != Corruption::Clean, Tensor::F32(make_batch(&train, &val, &c, &preprocess).unwrap()), labels.clone()))
        .collect()
}

/// Runs `model` (tract, as the fixture configuration says) and returns the named outputs.
fn run(model: &ModelProto, x: &Tensor, names: &[&str]) -> Vec<Tensor> {
    let mut session = open_session(&prost::Message::encode_to_vec(model), &BackendOptions::default()).unwrap();
    let positions: Vec<usize> = names.iter().map(|n| session.output_names().iter().position(|o| o == n).unwrap()).collect();
    let mut outputs = session.run(&[("input", x)]).unwrap();
    positions.iter().map(|&p| std::mem::replace(&mut outputs[p], Tensor::F32(ndarray::ArrayD::zeros(ndarray::IxDyn(&[0]))))).collect()
}

fn calibrate(model: &Path, spec: &Path, out: &Path, report: &Path, rule: &str) -> Value {
    let config = common::fixture("cifar10.yaml");
    let result = common::cli(os_args!["calibrate", model, "--spec", spec, "--out-spec", out, "--report", report, "--rule", rule, "--config", config, "--quiet"]);
    assert!(result.status.success(), "calibrate failed: {}", String::from_utf8_lossy(&result.stderr));
    serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap()
}

fn number(value: &Value, key: &str) -> f64 {
    value[key].as_f64().unwrap_or_else(|| panic!("no number '{key}' in {value}"))
}

#[test]
fn calibration_on_the_fixtures() {
    let dir = tempfile::tempdir().unwrap();
    let path = |f: &str| dir.path().join(f);
    let model_path = common::fixture("models/tiny_cnn_cifar10.onnx");
    let model = load_model(&model_path).unwrap();
    let spec = random_spec(&model, 0.25, 7, Decision::adapt_none()).unwrap();
    spec.save(&path("spec.json")).unwrap();
    let config = Config::from_file(&common::fixture("cifar10.yaml")).unwrap();
    let data = val_set(&config);

    // The input spec is never overwritten.
    let refused = common::cli(os_args![
        "calibrate", model_path, "--spec", path("spec.json"), "--out-spec", path("spec.json"), "--report", path("r.json"), "--config",
        common::fixture("cifar10.yaml")
    ]);
    assert_eq!(refused.status.code(), Some(2), "{}", String::from_utf8_lossy(&refused.stderr));

    // μ_clean, μ_aug and the midpoint from CR recomputed here with the uncalibrated γ model.
    let report = calibrate(&model_path, &path("spec.json"), &path("probe.json"), &path("probe_report.json"), "probe");
    let gamma = gamma_model(&model, &spec).unwrap();
    let (mut clean, mut star) = (Vec::new(), Vec::new());
    for (blurred, x, _) in &data {
        let cr = run(&gamma, x, &["deeppatch_cr"]).remove(0);
        let target = if *blurred { &mut star } else { &mut clean };
        target.extend(cr.as_f32().unwrap().iter().map(|&v| f64::from(v)));
    }
    assert_eq!((clean.len(), star.len()), (20, 120));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (mu_clean, mu_aug) = (mean(&clean), mean(&star));
    assert!((number(&report, "mu_clean") - mu_clean).abs() < 1e-9 && (number(&report, "mu_aug") - mu_aug).abs() < 1e-9, "{report}");
    let midpoint = &report["rules"][0];
    assert_eq!(midpoint["rule"], "cr-midpoint");
    assert_eq!(midpoint["decision"]["boundary"].as_f64().unwrap() as f32, ((mu_clean + mu_aug) / 2.0) as f32);
    assert_eq!(midpoint["decision"]["direction"], if mu_aug < mu_clean { "below" } else { "above" });

    // The probe's figures, recomputed from the saved spec's γ model, equal the report's (as
    // served, and as the offline combination of the two paths' predictions predicted).
    let calibrated = PatchSpec::load(&path("probe.json")).unwrap();
    assert!(matches!(calibrated.decision, Decision::Probe { .. }));
    let served = gamma_model(&model, &calibrated).unwrap();
    let mut counts = [[0usize; 3]; 2]; // [clean, star] × [images, correct, adapted]
    for (blurred, x, labels) in &data {
        let outputs = run(&served, x, &["logits", "deeppatch_adapted"]);
        let group = &mut counts[usize::from(*blurred)];
        for ((row, label), adapted) in outputs[0].as_f32().unwrap().outer_iter().zip(labels).zip(outputs[1].as_bool().unwrap().iter()) {
            group[0] += 1;
            group[1] += usize::from(argmax(row.iter().copied()) == *label);
            group[2] += usize::from(*adapted);
        }
    }
    let percent = |part: usize, whole: usize| 100.0 * part as f64 / whole as f64;
    let expected = [
        ("clean_accuracy", percent(counts[0][1], counts[0][0])),
        ("star_accuracy", percent(counts[1][1], counts[1][0])),
        ("val_accuracy", percent(counts[0][1] + counts[1][1], counts[0][0] + counts[1][0])),
        ("adapted_clean", percent(counts[0][2], counts[0][0])),
        ("adapted_star", percent(counts[1][2], counts[1][0])),
    ];
    assert_eq!(report["chosen"], "probe");
    // (JSON numbers read back within 1e-9: far below one image in 140.)
    for (key, value) in expected {
        assert!((number(&report["served"], key) - value).abs() < 1e-9, "served {key}: {} vs {value}", report["served"]);
        assert!((number(&report["rules"][2], key) - value).abs() < 1e-9, "offline probe {key}: {} vs {value}", report["rules"][2]);
    }

    // auto: the chosen rule keeps clean accuracy within 0.3 points of the original's and has the
    // best T_val° accuracy among the rules that do.
    let report = calibrate(&model_path, &path("spec.json"), &path("auto.json"), &path("auto_report.json"), "auto");
    let floor = number(&report["original"], "clean_accuracy") - 0.3;
    let rules = report["rules"].as_array().unwrap();
    let best = rules.iter().filter(|r| number(r, "clean_accuracy") >= floor).map(|r| number(r, "val_accuracy")).fold(f64::NEG_INFINITY, f64::max);
    let chosen = report["chosen"].as_str().unwrap();
    assert!(number(&report["served"], "clean_accuracy") >= floor, "{report}");
    if chosen == "original" {
        assert_eq!(best, f64::NEG_INFINITY);
    } else {
        let figures = rules.iter().find(|r| r["rule"] == chosen).unwrap();
        assert!((number(figures, "val_accuracy") - best).abs() < 1e-9);
        assert_eq!(PatchSpec::load(&path("auto.json")).unwrap().decision, serde_json::from_value(figures["decision"].clone()).unwrap());
    }
}
