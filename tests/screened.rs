//! The screened assessment (docs/assessment.md): the exact method's blamed filters, exact counts
//! where the screen leaves them in doubt, and the channel subsets it is built on.

mod common;

use onnx_deeppatch::assess::{self, Assessment, ScreenSettings};
use onnx_deeppatch::backend::{BackendKind, BackendOptions};
use onnx_deeppatch::config::Config;
use onnx_deeppatch::eval::ModelIo;

/// The bundled CIFAR-10 subset with the models' preprocessing and `val` validation images.
fn config(val: usize) -> Config {
    let mut config = Config::default();
    config.data.root = Some(common::fixture("cifar10-mini"));
    config.data.val_size = Some(val);
    config.preprocess.mean = vec![0.485, 0.456, 0.406];
    config.preprocess.std = vec![0.229, 0.224, 0.225];
    config.backend.kind = BackendKind::Ort;
    config
}

/// tiny_cnn with 60 validation images (stages of 16, 32 and 60): every layer's blamed filters are
/// the exact method's, the filters counted exactly have the exact counts, and the screen settled
/// some filters early, so it ran less than the exact method.
#[test]
fn screened_blames_what_exact_blames_on_tiny_cnn() {
    let config = config(60);
    let proto = onnx_deeppatch::onnx::load_model(&common::fixture_model("tiny_cnn_cifar10")).unwrap();
    let io = ModelIo::resolve(&proto, &config.preprocess).unwrap();
    let data = assess::load_val_star(&config).unwrap();
    let options = BackendOptions { kind: BackendKind::Ort, ..Default::default() };
    let exact = assess::fast(&proto, &io, &data, &options, None).unwrap();
    let settings = ScreenSettings::new(0.25, config.data.seed);
    let (screened, screens) = assess::screened(&proto, &io, &data, &options, &settings, None).unwrap();
    assert_eq!((screened.total, screened.correct0), (exact.total, exact.correct0));
    let (mut work, mut early) = (0, 0);
    for ((exact, screened), screen) in exact.layers.iter().zip(&screened.layers).zip(&screens) {
        let blamed = assess::blamed(&assess::ranking(&exact.correct), 0.25);
        assert_eq!(screen.blamed, blamed, "{}", exact.name);
        for &j in &screen.exact {
            assert_eq!(screened.correct[j], exact.correct[j], "{} filter {j}", exact.name);
        }
        assert_eq!(screen.stages.first().map(|s| (s.images, s.filters)), Some((96, exact.filters)), "{}", exact.name);
        work += screen.work();
        early += exact.filters - screen.exact.len();
    }
    let full: usize = exact.layers.iter().map(|l| l.filters * exact.total).sum();
    eprintln!("tiny_cnn screened: {early} filters settled early, {work} of {full} masked images run");
    assert!(early > 0 && work < full, "{early} settled early, {work} of {full} run");
}

/// A run restricted to some channels counts those channels exactly as the run of all of them.
#[test]
fn a_channel_subset_counts_what_the_full_run_counts() {
    let config = config(20);
    let data = assess::load_val_star(&config).unwrap();
    let options = BackendOptions { kind: BackendKind::Ort, ..Default::default() };
    // tiny_dw's depthwise layer and ResNet20's first residual convolution (the corrected path).
    for (model, index) in [("tiny_dw_cifar10", 1), ("resnet20_cifar10", 1)] {
        let proto = onnx_deeppatch::onnx::load_model(&common::fixture_model(model)).unwrap();
        let io = ModelIo::resolve(&proto, &config.preprocess).unwrap();
        let full = assess::fast(&proto, &io, &data, &options, Some(&[index])).unwrap().layers.remove(0);
        let only: Vec<bool> = (0..full.filters).map(|j| j % 3 == 1).collect();
        let subset = assess::fast_channels(&proto, &io, &data, &options, index, &only).unwrap();
        for (j, (&s, &f)) in subset.correct.iter().zip(&full.correct).enumerate() {
            assert_eq!(s, if only[j] { f } else { 0 }, "{model} channel {j}");
        }
        assert!(full.correct.iter().any(|&c| c != full.correct[0]), "{model}: the counts differ among channels");
    }
}

fn assess_args(out: &std::path::Path, extra: &[&str]) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = ["assess", "--data"].iter().map(|a| a.into()).collect();
    args.push(common::fixture("cifar10-mini").into());
    for a in ["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "--backend", "ort", "--val-size", "40", "--out"] {
        args.push(a.into());
    }
    args.push(out.into());
    args.push(common::fixture_model("tiny_cnn_cifar10").into());
    args.extend(extra.iter().map(|a| a.into()));
    args
}

fn run(args: &[std::ffi::OsString]) -> Assessment {
    let output = common::cli(&args.iter().map(|a| a.as_os_str()).collect::<Vec<_>>());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let out = args.iter().position(|a| a == "--out").map(|p| std::path::PathBuf::from(&args[p + 1])).unwrap();
    assess::load(&out).unwrap()
}

/// `assess --method screened`: the artifact says so and holds the exact method's blamed filters,
/// its shards merge to the unsharded artifact, and it merges with no exact shard; `train` refuses
/// another κ than the one screened.
#[test]
fn the_screened_artifact_records_its_method_and_merges_with_its_own_kind_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let exact = run(&assess_args(&path("exact.json"), &[]));
    let whole = run(&assess_args(&path("whole.json"), &["--method", "screened"]));
    assert_eq!((exact.method.as_str(), whole.method.as_str()), ("fast", "screened"));
    let settings = whole.screen.as_ref().unwrap();
    assert_eq!((settings.kappa, settings.seed, settings.z), (0.25, 2022, 3.0));
    for (e, s) in exact.layers.iter().zip(&whole.layers) {
        assert_eq!(s.blamed, e.blamed, "{}", e.name);
        assert_eq!(assess::blamed(&s.ranking, 0.25), s.blamed, "{}: the ranking starts with the blamed filters", e.name);
        assert!(s.screen.as_ref().unwrap().exact.iter().all(|&j| s.correct[j] == e.correct[j]));
    }
    run(&assess_args(&path("a.json"), &["--method", "screened", "--shard", "0/2"]));
    run(&assess_args(&path("b.json"), &["--method", "screened", "--shard", "1/2"]));
    let merged = common::cli(os_args!["assess", "--merge", path("a.json"), path("b.json"), "--out", path("merged.json")]);
    assert!(merged.status.success(), "{}", String::from_utf8_lossy(&merged.stderr));
    // As parsed: the JSON float parser does not round-trip the last digit of every score.
    assert_eq!(assess::load(&path("merged.json")).unwrap(), whole);
    run(&assess_args(&path("exact-b.json"), &["--shard", "1/2"]));
    let mixed = common::cli(os_args!["assess", "--merge", path("a.json"), path("exact-b.json"), "--out", path("mixed.json")]);
    assert_eq!(mixed.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&mixed.stderr).contains("screened"), "{}", String::from_utf8_lossy(&mixed.stderr));
    let proto = onnx_deeppatch::onnx::load_model(&common::fixture_model("tiny_cnn_cifar10")).unwrap();
    let other = onnx_deeppatch::train::initial_spec(&proto, &whole, 0.5, 2022, Default::default()).unwrap_err().to_string();
    assert!(other.contains("κ = 0.25"), "{other}");
}
