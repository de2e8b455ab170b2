//! Real exporter output of torchvision families (`models/zoo` of the shared material: legacy and dynamo
//! exporters, external data): each loads by a bare file name, patches into a file that passes
//! onnx.checker's full check, and evaluates on both backends, plain and patched, with the
//! fallback equal to the original on every prediction. Needs the shared material (skipped
//! without it).

mod common;

use std::path::PathBuf;

fn zoo_models() -> Option<Vec<PathBuf>> {
    let folder = common::shared_or_skip("models/zoo")?;
    let mut models: Vec<PathBuf> = std::fs::read_dir(&folder).unwrap().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "onnx")).collect();
    models.sort();
    Some(models)
}

fn succeeds(args: &[&std::ffi::OsStr], cwd: Option<&std::path::Path>) -> String {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_onnx-deeppatch"));
    command.args(args);
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let output = command.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{args:?}: {text}");
    text
}

#[test]
fn every_zoo_model_patches_into_a_valid_file_that_both_backends_run() {
    let Some(models) = zoo_models() else { return };
    let config = common::fixture("cifar10.yaml");
    for model in models {
        let (folder, name) = (model.parent().unwrap(), model.file_name().unwrap());
        // A bare file name: external data is found beside it in the working folder.
        succeeds(os_args!["inspect", name], Some(folder));
        let dir = tempfile::tempdir().unwrap();
        let patched = dir.path().join("patched.onnx");
        succeeds(os_args!["patch", model, patched, "--random-spec", "--kappa", "0.25"], None);
        let script = "import sys, onnx; onnx.checker.check_model(onnx.load(sys.argv[1]), full_check=True)";
        let checked = std::process::Command::new(common::python()).args(["-c", script]).arg(&patched).output().unwrap();
        assert!(checked.status.success(), "{name:?}: {}", String::from_utf8_lossy(&checked.stderr));
        for backend in ["tract", "ort"] {
            succeeds(os_args!["eval", model, "--config", config, "--limit", "20", "--backend", backend], None);
            let report = succeeds(os_args!["eval", patched, "--config", config, "--limit", "20", "--backend", backend], None);
            assert!(report.contains("DP-fb differs from PT on 0 of"), "{name:?} on {backend}: {report}");
        }
    }
}
