//! Helpers shared by the end-to-end tests: paths of the fixtures and of the optional shared
//! material (`src/test_support.rs`, the unit tests' helpers too), the binary and the Python
//! reference interpreter.
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "../../src/test_support.rs"]
mod test_support;

pub use test_support::{fixture, fixture_model, shared_or_skip};

/// The models every test runs on (`fixtures/models/NAME.onnx`).
pub const MODELS: [&str; 4] = ["resnet20_cifar10", "tiny_cnn_cifar10", "tiny_dw_cifar10", "tiny_vgg_cifar10"];

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
