//! Paths the tests read: the bundled fixtures, and the optional shared material that only the
//! full-data tests need. One file for both kinds of test: the unit tests use it as
//! `crate::test_support`, the integration tests include it into `tests/common`.
//!
//! The shared material (the whole CIFAR-10 JPEG data set, the full reference batch, the torchvision
//! zoo; see README "Tests") is found at `$DEEPPATCH_SHARED` when that variable is set, else at
//! `../shared` beside the checkout. A test that needs it calls [`shared_or_skip`] and returns when
//! it gets `None`: without the material it passes after printing one `skipped:` line. With
//! `DEEPPATCH_SHARED` set, missing material is an error instead, so that a CI run cannot skip what
//! it means to run.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

/// The environment variable that names the shared material's folder.
pub const SHARED_VARIABLE: &str = "DEEPPATCH_SHARED";

/// A file or folder under `fixtures/`.
pub fn fixture(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(relative)
}

/// `fixtures/models/NAME.onnx`.
pub fn fixture_model(name: &str) -> PathBuf {
    fixture("models").join(format!("{name}.onnx"))
}

/// Where image `index` of the sorted CIFAR-10 test set (classes in order, 1 000 each, files in name
/// order) is in `fixtures/cifar10-mini/test`, which holds the first 50 of each class.
pub fn mini_test_position(index: usize) -> Option<usize> {
    (index % 1000 < 50).then(|| index / 1000 * 50 + index % 1000)
}

/// `relative` under the shared material when it is there. Otherwise prints
/// `skipped: <test>: needs <relative> …` on standard error (past the test harness's capture, so it
/// shows in a normal run) and returns `None`; the caller returns, and the test passes. Panics when
/// `DEEPPATCH_SHARED` is set and `relative` is not under it.
pub fn shared_or_skip(relative: &str) -> Option<PathBuf> {
    let (root, named) = match std::env::var_os(SHARED_VARIABLE) {
        Some(root) if !root.is_empty() => (PathBuf::from(root), true),
        _ => (Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"), false),
    };
    let path = root.join(relative);
    if path.exists() {
        return Some(path);
    }
    assert!(!named, "{SHARED_VARIABLE} is set, but {} does not exist", path.display());
    let thread = std::thread::current();
    let test = match thread.name() {
        Some(name) if name != "main" => format!("{}::{name}", env!("CARGO_CRATE_NAME")),
        _ => env!("CARGO_CRATE_NAME").to_string(),
    };
    // `eprintln!` would be captured with the passing test's output and never shown.
    let _ = writeln!(
        std::io::stderr().lock(),
        "skipped: {test}: needs {relative} of the shared material, not found at {} (set {SHARED_VARIABLE} to its folder)",
        path.display()
    );
    None
}
