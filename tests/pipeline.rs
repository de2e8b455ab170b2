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
    // A learning rate too small to move any weight: the β model stays the original model, which
    // it therefore cannot beat.
    let done = rewrite(&output, &run, &["--epochs", "1", "--learning-rate", "1e-20", "--limit", "50"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&done.stdout), String::from_utf8_lossy(&done.stderr));
    assert!(done.status.success(), "{stderr}");
    assert!(stdout.contains("outcome: unchanged: no training epoch beat the original model"), "{stdout}");
    assert!(stderr.contains("is the original model, unchanged"), "{stderr}");
    let original = onnx_deeppatch::onnx::load_model(&common::fixture("models/tiny_cnn_cifar10.onnx")).unwrap();
    assert_eq!(onnx_deeppatch::onnx::load_model(&output).unwrap(), original);
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("train/train.json")).unwrap()).unwrap();
    assert_eq!(summary["improved"], serde_json::json!(false));
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["outcome"]["status"], serde_json::json!("unchanged"), "{report}");

    // With --require-improvement the same run (reused) writes OUT and exits 5.
    std::fs::remove_file(&output).unwrap();
    let strict = rewrite(&output, &run, &["--epochs", "1", "--learning-rate", "1e-20", "--no-eval", "--require-improvement"]);
    let stderr = String::from_utf8_lossy(&strict.stderr);
    assert_eq!(strict.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("--require-improvement"), "{stderr}");
    assert_eq!(onnx_deeppatch::onnx::load_model(&output).unwrap(), original);
}

/// A run folder belongs to one model: another model's rewrite into it is refused before anything
/// in it changes. Changed settings (here the backend, as a second `demo` after a first on the
/// other backend) set the earlier training aside and run again.
#[test]
fn run_folders_belong_to_one_model_and_changed_settings_run_again() {
    let folder = tempfile::tempdir().unwrap();
    let (output, run) = (folder.path().join("out.onnx"), folder.path().join("run"));
    let first = rewrite(&output, &run, &["--epochs", "1", "--val-size", "50", "--no-eval"]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let assessment = std::fs::read(run.join("assessment.json")).unwrap();

    let other = common::cli(os_args![
        "rewrite", common::fixture("models/tiny_vgg_cifar10.onnx"), folder.path().join("vgg.onnx"), "--config", common::fixture("cifar10.yaml"),
        "--backend", "ort", "--run", run, "--epochs", "1", "--val-size", "50", "--no-eval"
    ]);
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert_eq!(other.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("belongs to another model"), "{stderr}");
    assert_eq!(std::fs::read(run.join("assessment.json")).unwrap(), assessment);
    assert!(!folder.path().join("vgg.onnx").exists());

    let again = common::cli(os_args![
        "rewrite", common::fixture("models/tiny_cnn_cifar10.onnx"), output, "--config", common::fixture("cifar10.yaml"),
        "--backend", "tract", "--run", run, "--epochs", "1", "--val-size", "50", "--no-eval"
    ]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(stderr.contains("reusing") && stderr.contains("moved to"), "{stderr}");
    assert!(run.join("train.previous-1/checkpoint.json").is_file());
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
