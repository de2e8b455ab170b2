//! Retraining (docs/specification.md §3.3) end to end on tiny_cnn and the bundled CIFAR-10 subset: resuming from a
//! checkpoint gives the uninterrupted run's weights bit for bit, the trained spec patches into the
//! model whose T_val° accuracy training reported, both backends train alike, a loss blow-up is
//! recovered from, and a run that keeps diverging stops with an error.

mod common;

use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use onnx_deeppatch::backend::{open_session, BackendKind, BackendOptions, Pool};
use onnx_deeppatch::config::{Config, LearningRate, AUTO_LEARNING_RATES};
use onnx_deeppatch::eval::{evaluate, ModelIo};
use onnx_deeppatch::train::{self, TrainData};
use onnx_deeppatch::units::PatchSpec;
use prost::Message;

const MODEL: &str = "models/tiny_cnn_cifar10.onnx";

fn config(backend: BackendKind, epochs: usize) -> Config {
    let mut config = Config::from_file(&common::fixture("cifar10.yaml")).unwrap();
    config.backend.kind = backend;
    config.train.epochs = epochs;
    config
}

/// Runs `command` on tiny_cnn with the fixture configuration on onnxruntime, then `extra`.
fn on_tiny_cnn(command: &str, extra: &[&std::ffi::OsStr]) -> std::process::Output {
    let (model, config) = (common::fixture(MODEL), common::fixture("cifar10.yaml"));
    let mut args: Vec<&std::ffi::OsStr> = os_args![command, model, "--config", config, "--backend", "ort"].to_vec();
    args.extend(extra);
    common::cli(&args)
}

/// The assessment of tiny_cnn on the fixture data, made once per test by the `assess` command.
fn assessment(folder: &Path) -> PathBuf {
    let out = folder.join("assessment.json");
    let output = on_tiny_cnn("assess", os_args!["--out", out]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    out
}

fn train(config: &Config, assessment: &Path, run: &Path) -> train::Trained {
    train::train_model(&common::fixture(MODEL), assessment, 0.25, config, run).unwrap()
}

fn weights(spec: &PatchSpec) -> Vec<ArrayD<f32>> {
    spec.layers.iter().flat_map(|l| std::iter::once(l.weight.clone()).chain(l.bias.clone())).collect()
}

#[test]
fn training_resumes_to_the_uninterrupted_result_and_repeats_exactly() {
    let folder = tempfile::tempdir().unwrap();
    let assessment = assessment(folder.path());
    let whole = train(&config(BackendKind::Ort, 2), &assessment, &folder.path().join("whole"));
    let again = train(&config(BackendKind::Ort, 2), &assessment, &folder.path().join("again"));
    assert_eq!(weights(&whole.spec), weights(&again.spec), "same seed, same result");

    let split = folder.path().join("split");
    let first = train(&config(BackendKind::Ort, 1), &assessment, &split);
    assert_eq!(first.summary.epochs.len(), 1);
    let resumed = train(&config(BackendKind::Ort, 2), &assessment, &split);
    assert_eq!(weights(&resumed.spec), weights(&whole.spec), "resumed run differs from the uninterrupted one");
    let figures = |s: &train::TrainSummary| -> Vec<(f64, f64, f64, f64)> {
        s.epochs.iter().map(|e| (e.learning_rate, e.loss, e.train_accuracy, e.val_accuracy)).collect()
    };
    assert_eq!(figures(&resumed.summary), figures(&whole.summary));
    assert_eq!(resumed.summary.best_epoch, whole.summary.best_epoch);
    // learning_rate: auto tried both candidates, kept the better on T_val° (the smaller on a tie),
    // and the second epoch runs at the cosine schedule's rate for epoch 1 of T_max = 200.
    let trials = &whole.summary.learning_rate_trials;
    assert_eq!(trials.iter().map(|t| t.learning_rate).collect::<Vec<_>>(), AUTO_LEARNING_RATES, "{trials:?}");
    let best = trials.iter().filter_map(|t| t.val_accuracy).fold(f64::MIN, f64::max);
    let chosen = trials.iter().rev().find(|t| t.val_accuracy == Some(best)).unwrap().learning_rate;
    assert_eq!(whole.summary.epochs[0].learning_rate, chosen, "{trials:?}");
    assert_eq!(whole.summary.epochs[1].learning_rate, train::cosine(chosen, 1, 200));
    assert_eq!(resumed.summary.learning_rate_trials, *trials, "the resumed run keeps the first part's choice");
    let csv = std::fs::read_to_string(split.join("train.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(csv.starts_with("epoch,learning_rate,loss,train_accuracy,val_accuracy"), "{csv}");

    // Other settings in the same folder: the earlier run is moved aside whole, and training starts afresh.
    let mut other = config(BackendKind::Ort, 1);
    other.train.learning_rate = LearningRate::Fixed(0.002);
    let before = std::fs::read(split.join("checkpoint.json")).unwrap();
    let fresh = train::train_model(&common::fixture(MODEL), &assessment, 0.25, &other, &split).unwrap();
    assert_eq!(fresh.summary.epochs.len(), 1);
    assert_eq!(fresh.summary.epochs[0].learning_rate, 0.002);
    let aside = folder.path().join("split.previous-1");
    assert_eq!(std::fs::read(aside.join("checkpoint.json")).unwrap(), before);
    assert!(aside.join("spec.json").is_file());
}

#[test]
fn the_trained_spec_patches_into_the_model_training_validated() {
    let folder = tempfile::tempdir().unwrap();
    let assessment = assessment(folder.path());
    let run = folder.path().join("run");
    let trained = train(&config(BackendKind::Ort, 2), &assessment, &run);
    let spec = train::spec_path(&run);
    let blamed: Vec<usize> = trained.spec.layers.iter().map(|l| l.blamed.len()).collect();
    assert_eq!(blamed, [4, 8, 16], "⌊κ·m⌋ filters of tiny_cnn's 16, 32 and 64");

    // The command the acceptance runs: the DP-β model of the trained spec.
    let beta = folder.path().join("beta.onnx");
    let output = common::cli(os_args!["patch", common::fixture(MODEL), beta, "--spec", spec, "--boundary", "adapt-all"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    // Its accuracy on T_val° is the one training reported for the best epoch.
    let config = config(BackendKind::Ort, 2);
    let model = onnx_deeppatch::onnx::load_model(&beta).unwrap();
    let data = TrainData::load(&model, &config).unwrap();
    let io = ModelIo::resolve(&model, &config.preprocess).unwrap();
    let options = BackendOptions { kind: BackendKind::Ort, ..Default::default() };
    let mut pool = Pool::open(&model.encode_to_vec(), &options).unwrap();
    let correct = evaluate(&mut pool, &io, &data.val_set(256)).unwrap().total_correct();
    let total = data.val.len() * 7;
    assert_eq!(trained.summary.val_images, total);
    let reported = (trained.summary.best_val_accuracy * total as f64 / 100.0).round() as usize;
    assert_eq!(correct, reported, "T_val° correct predictions of the patched model");
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("train.json")).unwrap()).unwrap();
    assert_eq!(summary["best_epoch"], serde_json::json!(trained.summary.best_epoch));
}

#[test]
fn tract_and_onnxruntime_train_alike() {
    let folder = tempfile::tempdir().unwrap();
    let assessment = assessment(folder.path());
    let ort = train(&config(BackendKind::Ort, 1), &assessment, &folder.path().join("ort"));
    let tract = train(&config(BackendKind::Tract, 1), &assessment, &folder.path().join("tract"));
    for (a, b) in weights(&ort.spec).iter().zip(weights(&tract.spec)) {
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let gap = (a - &b).iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(gap <= 1e-3 * scale, "weights differ by {gap:e} (scale {scale:e})");
    }
    assert!((ort.summary.epochs[0].loss - tract.summary.epochs[0].loss).abs() < 1e-4);
}

#[test]
fn a_run_that_keeps_diverging_stops_with_an_error() {
    let folder = tempfile::tempdir().unwrap();
    let assessment = assessment(folder.path());
    let run = folder.path().join("run");
    let output = on_tiny_cnn("train", os_args!["--assessment", assessment, "--out", run, "--epochs", "2", "--learning-rate", "1e30"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the loss is") && stderr.contains("still diverging after 3 recoveries") && stderr.contains("no epoch finished"), "{stderr}");
    assert_eq!(stderr.matches("recovering from a diverging loss").count(), 3, "{stderr}");
    assert!(!run.join("spec.json").exists());
}

/// A learning rate that explodes at first: the epoch restarts from its start at a tenth of the
/// rate until the loss stays bounded, each recovery logged and recorded, and training finishes.
#[test]
fn a_loss_blow_up_is_recovered_from() {
    let folder = tempfile::tempdir().unwrap();
    let assessment = assessment(folder.path());
    let mut settings = config(BackendKind::Ort, 1);
    settings.train.learning_rate = LearningRate::Fixed(1.0);
    let trained = train(&settings, &assessment, &folder.path().join("run"));
    let recoveries = &trained.summary.recoveries;
    assert!(!recoveries.is_empty() && recoveries.len() <= train::MAX_RECOVERIES, "{recoveries:?}");
    assert!(recoveries[0].contains("epoch 1, batch") && recoveries[0].contains("learning rate × 1e-1"), "{recoveries:?}");
    let scale = train::RECOVERY_FACTOR.powi(recoveries.len() as i32);
    let record = &trained.summary.epochs[0];
    assert!((record.learning_rate - scale).abs() < 1e-9, "{record:?}");
    assert!(record.loss.is_finite());
}

#[test]
fn bn_adapt_stores_the_replacement_channels_statistics_on_t_train() {
    let folder = tempfile::tempdir().unwrap();
    let assessment = assessment(folder.path());
    let mut config = config(BackendKind::Ort, 1);
    config.train.bn_adapt = true;
    // One batch holds all of T_train (980 images), so the batch statistics are the data's own.
    config.train.batch_size = 1024;
    let trained = train(&config, &assessment, &folder.path().join("run"));
    assert_eq!(trained.summary.bn_adapted_layers, Some(3));
    let adapted = trained.spec.layers[0].batchnorm.clone().expect("statistics of the first patched layer");

    // Independently: the first patched convolution's output at the blamed channels, over the draw
    // bn_adapt uses (the one after the last epoch), from the β model of the trained weights.
    let model = onnx_deeppatch::onnx::load_model(&common::fixture(MODEL)).unwrap();
    let mut plain = trained.spec.clone();
    plain.layers.iter_mut().for_each(|l| l.batchnorm = None);
    let (mut beta, params) = onnx_deeppatch::units::beta_model(&model, &plain).unwrap();
    let conv_output = model.graph.as_ref().unwrap().node[params[0].position].output[0].clone();
    beta.graph.as_mut().unwrap().output.push(onnx_deeppatch::onnx::proto::ValueInfoProto { name: Some(conv_output.clone()), ..Default::default() });
    let data = TrainData::load(&model, &config).unwrap();
    let draw = data.epoch_draw(config.data.seed, 1);
    let input = onnx_deeppatch::data::make_mixed_batch(&data.images, &draw, &data.preprocess).unwrap();
    let options = BackendOptions { kind: BackendKind::Ort, ..Default::default() };
    let mut session = open_session(&beta.encode_to_vec(), &options).unwrap();
    let names = session.output_names().to_vec();
    let outputs = session.run(&[("input", &onnx_deeppatch::Tensor::F32(input))]).unwrap();
    let z = outputs[names.iter().position(|n| *n == conv_output).unwrap()].as_f32().unwrap().clone();
    for (k, &channel) in trained.spec.layers[0].blamed.iter().enumerate() {
        let values: Vec<f64> = z.index_axis(ndarray::Axis(1), channel).iter().map(|&v| f64::from(v)).collect();
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let variance = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0);
        let (got_mean, got_variance) = (f64::from(adapted[2][[k]]), f64::from(adapted[3][[k]]));
        assert!((got_mean - mean).abs() <= 1e-4 * (1.0 + mean.abs()), "channel {channel}: mean {got_mean} against {mean}");
        assert!((got_variance - variance).abs() <= 1e-4 * variance, "channel {channel}: variance {got_variance} against {variance}");
    }
}
