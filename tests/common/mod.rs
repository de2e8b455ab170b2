//! Helpers shared by the end-to-end tests: paths of the shared material, the binary and the Python
//! reference interpreter.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The project's shared material (models, data, reference arrays), beside the checkout.
pub fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

/// A file under `fixtures/`.
pub fn fixture(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(relative)
}

/// The models every test runs on.
pub const MODELS: [&str; 4] = ["resnet20_cifar10", "tiny_cnn_cifar10", "tiny_dw_cifar10", "tiny_vgg_cifar10"];

pub fn shared_model(name: &str) -> PathBuf {
    shared().join("models").join(format!("{name}.onnx"))
}

/// The Python interpreter with onnxruntime and onnx (scripts/test.sh sets DEEPPATCH_PYTHON).
pub fn python() -> PathBuf {
    std::env::var_os("DEEPPATCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"))
}

/// Runs a script of `tests/python/` with arguments; panics with its output when it fails.
pub fn run_python(script: &str, args: &[&std::ffi::OsStr]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python").join(script);
    let output = Command::new(python()).arg(&path).args(args).output().unwrap_or_else(|e| {
        panic!("cannot start {} ({e}); run the tests through scripts/test.sh", python().display())
    });
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{script} failed:\n{text}");
    text
}

/// Runs the onnx-deeppatch binary.
pub fn cli(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_onnx-deeppatch")).args(args).output().expect("the binary runs")
}

/// Arguments as OS strings.
#[macro_export]
macro_rules! os_args {
    ($($a:expr),* $(,)?) => { &[$(std::ffi::OsStr::new(&$a)),*] };
}
