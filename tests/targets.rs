//! The γ model's routing forms on the runtimes they are built for (docs/deploy.md): every bundled
//! model patched for each target with a mixed decision (a CR boundary at the batch's median), run
//! on onnxruntime, the ONNX reference evaluator and tract, and on OpenVINO when
//! `DEEPPATCH_OPENVINO_PYTHON` names a Python interpreter with the openvino package.

mod common;

use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use onnx_deeppatch::backend::{open_session, BackendKind, BackendOptions};
use onnx_deeppatch::data::npy::{read_npy, NpyData};
use onnx_deeppatch::onnx::load_model;
use onnx_deeppatch::units::target::{form_of, FORM_KEY, TARGET_KEY};
use onnx_deeppatch::units::{Form, Target};
use onnx_deeppatch::{Error, Tensor};

/// The environment variable naming a Python interpreter with openvino, onnx and onnxruntime.
const OPENVINO_PYTHON: &str = "DEEPPATCH_OPENVINO_PYTHON";

fn images() -> Tensor {
    let array = read_npy(&common::fixture("reference/cifar10_test64_nchw.npy")).unwrap();
    let NpyData::F32(values) = array.data else { panic!("float32 expected") };
    Tensor::F32(ArrayD::from_shape_vec(IxDyn(&array.shape), values).unwrap())
}

fn run(path: &Path, kind: BackendKind, x: &Tensor) -> onnx_deeppatch::Result<Vec<(String, Tensor)>> {
    let bytes = std::fs::read(path).unwrap();
    let mut session = open_session(&bytes, &BackendOptions { kind, ..Default::default() })?;
    let names = session.output_names().to_vec();
    Ok(names.into_iter().zip(session.run(&[("input", x)])?).collect())
}

fn output<'o>(outputs: &'o [(String, Tensor)], name: &str) -> &'o Tensor {
    &outputs.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no output {name}")).1
}

fn patch(args: &[&std::ffi::OsStr]) {
    let result = common::cli(args);
    assert!(result.status.success(), "patch failed: {}", String::from_utf8_lossy(&result.stderr));
}

fn check_targets(name: &str) {
    let source = common::fixture_model(name);
    let dir = tempfile::tempdir().unwrap();
    let path = |f: &str| dir.path().join(f);
    let x = images();

    // A boundary midway between two CR values near the median adapts about half of the batch. Not
    // a CR itself: runtimes may round a mean differently in its last bit, and a sample whose CR
    // equals the boundary could then go either way.
    let spec = path("spec.json");
    patch(os_args!["patch", source, path("all.onnx"), "--random-spec", "--seed", "3", "--boundary", "adapt-all", "--save-spec", spec]);
    let cr = run(&path("all.onnx"), BackendKind::Ort, &x).unwrap();
    let mut sorted: Vec<f32> = output(&cr, "deeppatch_cr").as_f32().unwrap().iter().copied().collect();
    sorted.sort_by(f32::total_cmp);
    sorted.dedup();
    let middle = sorted.len() / 2;
    let median = ((sorted[middle - 1] + sorted[middle]) / 2.0).to_string();

    let mut files = Vec::new();
    for (target, form) in [("ort", Form::Scan), ("tract", Form::Scan), ("openvino", Form::Loop), ("portable", Form::Batch)] {
        let file = path(&format!("{target}.onnx"));
        patch(os_args!["patch", source, file, "--spec", spec, "--boundary", median, "--target", target]);
        let model = load_model(&file).unwrap();
        assert_eq!(form_of(&model).unwrap(), form, "{name} {target}");
        let meta = |key: &str| model.metadata_props.iter().find(|p| p.key.as_deref() == Some(key)).and_then(|p| p.value.clone());
        assert_eq!((meta(TARGET_KEY).as_deref(), meta(FORM_KEY).as_deref()), (Some(target), Some(form.name())));

        // tract: the forms it runs give onnxruntime's routing and outputs; the Loop form is refused.
        let ort = run(&file, BackendKind::Ort, &x).unwrap();
        match run(&file, BackendKind::Tract, &x) {
            Ok(tract) => {
                assert!(form.runs_on(BackendKind::Tract), "{name} {target}: tract runs the {} form", form.name());
                assert_eq!(output(&ort, "deeppatch_adapted"), output(&tract, "deeppatch_adapted"), "{name} {target}: routing differs on tract");
                let (a, b) = (output(&ort, "logits").as_f32().unwrap(), output(&tract, "logits").as_f32().unwrap());
                let diff = a.iter().zip(b.iter()).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
                assert!(diff <= 1e-4, "{name} {target}: tract differs from onnxruntime by {diff}");
            }
            Err(error) => {
                assert!(!form.runs_on(BackendKind::Tract), "{name} {target}: {error}");
                assert!(matches!(error, Error::ModelRejected { .. }), "{name} {target}: {error}");
            }
        }
        // tract's and ort's files are the same but for the recorded target.
        if target != "tract" {
            files.push(file);
        }
    }

    let reference = common::fixture("reference/cifar10_test64_nchw.npy");
    let mut args: Vec<&std::ffi::OsStr> = vec![source.as_os_str(), reference.as_os_str()];
    args.extend(files.iter().map(|f| f.as_os_str()));
    let text = common::run_python("check_runtimes.py", &args);
    assert!(text.contains("all runtime checks passed"), "{name}: {text}");

    match std::env::var_os(OPENVINO_PYTHON).filter(|p| !p.is_empty()) {
        Some(python) => {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/check_runtimes.py");
            let result = std::process::Command::new(&python).arg(script).arg("--openvino").args(&args).output().unwrap();
            let text = format!("{}{}", String::from_utf8_lossy(&result.stdout), String::from_utf8_lossy(&result.stderr));
            assert!(result.status.success() && text.contains("all runtime checks passed"), "{name} on OpenVINO:\n{text}");
            assert!(text.contains("(loop, blurred): OpenVINO: max diff"), "{name}: the Loop form was not run on OpenVINO:\n{text}");
        }
        None => {
            use std::io::Write;
            // Past the harness's capture, as common::shared_or_skip does.
            let _ = writeln!(std::io::stderr().lock(), "skipped: {name} on OpenVINO: set {OPENVINO_PYTHON} to a Python with openvino, onnx and onnxruntime");
        }
    }
}

#[test]
fn resnet20() {
    check_targets("resnet20_cifar10");
}

#[test]
fn tiny_cnn() {
    check_targets("tiny_cnn_cifar10");
}

#[test]
fn tiny_dw() {
    check_targets("tiny_dw_cifar10");
}

#[test]
fn tiny_vgg() {
    check_targets("tiny_vgg_cifar10");
}

/// A backend that cannot run the target's form is refused before any work.
#[test]
fn calibrate_refuses_a_target_its_backend_cannot_serve() {
    let dir = tempfile::tempdir().unwrap();
    let path = |f: &str| dir.path().join(f);
    let source = common::fixture_model("tiny_cnn_cifar10");
    patch(os_args!["patch", source, path("p.onnx"), "--random-spec", "--save-spec", path("spec.json")]);
    let result = common::cli(os_args![
        "calibrate", source, "--spec", path("spec.json"), "--out-spec", path("out.json"), "--report", path("report.json"),
        "--target", "openvino", "--backend", "tract"
    ]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("target openvino builds the loop form, which the tract backend cannot run"), "{stderr}");
    assert!(!path("out.json").exists());
    assert_eq!(Target::Openvino.form(), Form::Loop);
}
