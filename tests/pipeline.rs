//! `rewrite` end to end on tiny_cnn and the bundled CIFAR-10 subset: every stage's artifact in the
//! run folder, a patched model that keeps the serving contract, a rerun that reuses the finished
//! stages, and the original model kept when training does not beat it.

mod common;

use std::path::Path;

fn rewrite(output: &Path, run: &Path, extra: &[&str]) -> std::process::Output {
    let mut args: Vec<std::ffi::OsString> = vec![
        "rewrite".into(),
        common::fixture("models/tiny_cnn_cifar10.onnx").into(),
        output.into(),
        "--config".into(),
        common::fixture("cifar10.yaml").into(),
        "--backend".into(),
        "ort".into(),
        "--run".into(),
        run.into(),
    ];
    args.extend(extra.iter().map(|a| a.into()));
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    common::cli(&refs)
}

#[test]
fn rewrite_keeps_every_stage_and_reuses_them() {
    let folder = tempfile::tempdir().unwrap();
    let (output, run) = (folder.path().join("patched.onnx"), folder.path().join("run"));
    let first = rewrite(&output, &run, &["--init", "original", "--epochs", "3"]);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    for artifact in ["assessment.json", "train/spec.json", "train/train.csv", "train/checkpoint.json", "calibration.json", "spec.json", "spec.npz", "report.json", "report.md", "report.svg"] {
        assert!(run.join(artifact).is_file(), "{artifact} missing; {stderr}");
    }
    let table = String::from_utf8_lossy(&first.stdout);
    for row in ["PT", "DP-β", "DP-γ", "DP-fb", "oracle"] {
        assert!(table.contains(row), "{table}");
    }
    // The served model is the γ model of the calibrated spec, and the report is its evaluation.
    let model = onnx_deeppatch::onnx::load_model(&output).unwrap();
    assert!(onnx_deeppatch::units::strip::is_patched(&model));
    let spec = onnx_deeppatch::units::PatchSpec::load(&run.join("spec.json")).unwrap();
    let original = onnx_deeppatch::onnx::load_model(&common::fixture("models/tiny_cnn_cifar10.onnx")).unwrap();
    assert_eq!(onnx_deeppatch::units::gamma_model(&original, &spec).unwrap(), model);
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    let calibration: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("calibration.json")).unwrap()).unwrap();
    assert!(report["rows"].as_array().is_some_and(|rows| rows.len() >= 5), "{report}");
    assert!(calibration["chosen"].is_string(), "{calibration}");

    // A rerun reuses assessment, training and calibration and writes the same model.
    let bytes = std::fs::read(&output).unwrap();
    let second = rewrite(&output, &run, &["--init", "original", "--epochs", "3", "--no-eval"]);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{stderr}");
    assert!(stderr.contains("reusing") && !stderr.contains("assessing filters") && !stderr.contains("epoch 1/3"), "{stderr}");
    assert_eq!(std::fs::read(&output).unwrap(), bytes);
}

#[test]
fn rewrite_keeps_the_original_when_training_does_not_beat_it() {
    let folder = tempfile::tempdir().unwrap();
    let (output, run) = (folder.path().join("out.onnx"), folder.path().join("run"));
    // One epoch of fresh filters on a thousand images cannot beat the original model.
    let done = rewrite(&output, &run, &["--epochs", "1", "--no-eval"]);
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert!(stdout.contains("the output is the original model"), "{stdout}");
    let original = onnx_deeppatch::onnx::load_model(&common::fixture("models/tiny_cnn_cifar10.onnx")).unwrap();
    assert_eq!(onnx_deeppatch::onnx::load_model(&output).unwrap(), original);
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("train/train.json")).unwrap()).unwrap();
    assert_eq!(summary["improved"], serde_json::json!(false));
}

#[test]
fn rewrite_never_writes_over_its_input() {
    let folder = tempfile::tempdir().unwrap();
    let input = folder.path().join("model.onnx");
    std::fs::copy(common::fixture("models/tiny_cnn_cifar10.onnx"), &input).unwrap();
    let before = std::fs::read(&input).unwrap();
    let done = common::cli(os_args!["rewrite", input, input, "--config", common::fixture("cifar10.yaml"), "--backend", "ort", "--init", "original", "--epochs", "2", "--no-eval"]);
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("model.onnx") && stderr.contains("overwrite"), "{stderr}");
    assert!(!folder.path().join("model.run").exists(), "nothing may run before the check");
    assert_eq!(std::fs::read(&input).unwrap(), before);
}
