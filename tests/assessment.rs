//! Filter assessment (docs/specification.md §3.1): the fast implementation gives exactly the naive oracle's counts
//! of correct predictions, and the `assess` command writes the artifact the later stages read.

mod common;

use std::time::Instant;

use onnx_deeppatch::assess::{self, Assessment, Counts};
use onnx_deeppatch::backend::{BackendKind, BackendOptions};
use onnx_deeppatch::config::Config;
use onnx_deeppatch::eval::ModelIo;

/// The bundled CIFAR-10 subset with the models' preprocessing and `val` validation images.
fn config(val: usize, backend: BackendKind) -> Config {
    let mut config = Config::default();
    config.data.root = Some(common::fixture("cifar10-mini"));
    config.data.val_size = Some(val);
    config.preprocess.mean = vec![0.485, 0.456, 0.406];
    config.preprocess.std = vec![0.229, 0.224, 0.225];
    config.backend.kind = backend;
    config
}

/// Runs naive and fast on the same layers and images; asserts equal counts and returns the
/// seconds each took.
fn fast_equals_naive(model: &str, val: usize, backend: BackendKind, layers: Option<&[usize]>) -> (Counts, f64, f64) {
    let config = config(val, backend);
    let proto = onnx_deeppatch::onnx::load_model(&common::fixture_model(model)).unwrap();
    let io = ModelIo::resolve(&proto, &config.preprocess).unwrap();
    let data = assess::load_val_star(&config).unwrap();
    assert_eq!(data.images, val);
    assert_eq!(data.len(), 6 * val);
    let options = BackendOptions { kind: backend, ..Default::default() };
    let start = Instant::now();
    let fast = assess::fast(&proto, &io, &data, &options, layers).unwrap();
    let fast_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let naive = assess::naive(&proto, &io, &data, &options, layers).unwrap();
    let naive_s = start.elapsed().as_secs_f64();
    let filters: usize = naive.layers.iter().map(|l| l.filters).sum();
    eprintln!(
        "{model} ({backend}, {} T_val* images, {} layers, {filters} filters): naive {naive_s:.1} s, fast {fast_s:.1} s, ratio {:.2}",
        data.len(),
        naive.layers.len(),
        naive_s / fast_s
    );
    assert_eq!(fast, naive);
    // Not a degenerate agreement: zeroing filters changes the counts.
    assert!(naive.layers.iter().any(|l| l.correct.iter().any(|&c| c != naive.correct0)));
    (naive, naive_s, fast_s)
}

#[test]
fn tiny_cnn_fast_equals_naive_on_every_filter() {
    let (counts, _, _) = fast_equals_naive("tiny_cnn_cifar10", 60, BackendKind::Ort, None);
    assert_eq!(counts.total, 360);
    assert_eq!(counts.layers.iter().map(|l| l.filters).collect::<Vec<_>>(), vec![16, 32, 64]);
}

/// ResNet20 with a 60-image T_val: the stem, a residual block's second convolution (read by the
/// skip Add), both convolutions of the first down-sampling block and the last convolution. All
/// 688 filters take several minutes on the shared 2-core machine; `bench assess` compares them all
/// (docs/assessment.md).
#[test]
fn resnet20_fast_equals_naive_on_residual_and_downsampling_layers() {
    let layers = [0, 2, 7, 8, 18];
    let (counts, _, _) = fast_equals_naive("resnet20_cifar10", 60, BackendKind::Ort, Some(&layers));
    assert_eq!(counts.layers.iter().map(|l| l.filters).collect::<Vec<_>>(), vec![16, 16, 32, 32, 64]);
    assert_eq!(counts.layers[1].name, "/layer1/layer1.0/conv2/Conv");
}

/// What assessing single layers of a bundled model needs: the model, its T_val* and its original
/// predictions on one backend.
struct Layers {
    proto: onnx_deeppatch::onnx::proto::ModelProto,
    io: ModelIo,
    data: assess::ValStar,
    options: BackendOptions,
    original: assess::Original,
    progress: onnx_deeppatch::progress::Progress,
}

impl Layers {
    fn open(model: &str, val: usize, backend: BackendKind) -> Layers {
        let config = config(val, backend);
        let proto = onnx_deeppatch::onnx::load_model(&common::fixture_model(model)).unwrap();
        let io = ModelIo::resolve(&proto, &config.preprocess).unwrap();
        let data = assess::load_val_star(&config).unwrap();
        let options = BackendOptions { kind: backend, ..Default::default() };
        let original = assess::Original::predict(&proto, &io, &data, &options).unwrap();
        Layers { proto, io, data, options, original, progress: onnx_deeppatch::progress::Progress::new("test", 0) }
    }
}

/// The consumer-convolution correction is taken where a convolution reads the masked value: a
/// block's first convolution (its ReLU output read by the second), a down-sampling block's first
/// convolution (read by the next one); not after the last convolution (no convolution below it).
/// The counts still equal the oracle's, near-ties rerun on the exact path included.
#[test]
fn resnet20_corrected_layers_equal_naive() {
    let Layers { proto, io, data, options, original, mut progress } = Layers::open("resnet20_cifar10", 20, BackendKind::Ort);
    for (index, corrected) in [(1, true), (13, true), (18, false)] {
        let fast = assess::assess_layer(&proto, &io, &data, &options, assess::Method::Fast, index, &original, &mut progress).unwrap();
        let naive = assess::assess_layer(&proto, &io, &data, &options, assess::Method::Naive, index, &original, &mut progress).unwrap();
        assert_eq!(fast.counts, naive.counts, "layer {index}");
        eprintln!("layer {index}: {} of {} masked images run, {} corrected, {} rerun", fast.rows_run, fast.rows_total, fast.rows_corrected, fast.rows_rerun);
        assert!(fast.rows_run > 0);
        assert_eq!(fast.rows_corrected, if corrected { fast.rows_run } else { 0 }, "layer {index}");
        assert!(fast.rows_rerun <= fast.rows_corrected);
    }
}

#[test]
fn resnet20_fast_equals_naive_on_tract() {
    // The shortcut pads reach the downstream part as integer values: constants there, as tract
    // needs them (a stage-1 layer, whose frontier holds both downsampling shortcuts' pads).
    let (counts, _, _) = fast_equals_naive("resnet20_cifar10", 10, BackendKind::Tract, Some(&[1]));
    assert_eq!(counts.layers[0].filters, 16);
    // tract runs the consumer-convolution correction too (weights fed per call).
    let Layers { proto, io, data, options, original, mut progress } = Layers::open("resnet20_cifar10", 10, BackendKind::Tract);
    let fast = assess::assess_layer(&proto, &io, &data, &options, assess::Method::Fast, 1, &original, &mut progress).unwrap();
    assert_eq!(fast.counts, counts.layers[0]);
    assert!(fast.rows_corrected > 0 && fast.rows_corrected == fast.rows_run);
}

#[test]
fn assess_command_writes_the_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("assessment.json");
    let data = common::fixture("cifar10-mini");
    let model = common::fixture_model("tiny_cnn_cifar10");
    let output = common::cli(os_args![
        "assess", model, "--data", data, "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225",
        "--backend", "ort", "--val-size", "20", "--kappa", "0.5", "--out", out
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("/f/f.4/f.4.0/Conv"), "{stdout}");
    let artifact: Assessment = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(artifact.images, 120);
    assert_eq!(artifact.kappa, 0.5);
    assert_eq!(artifact.model_sha256.len(), 64);
    assert_eq!(artifact.data_fingerprint.len(), 64);
    assert_eq!(artifact.acc0, 100.0 * artifact.correct0 as f64 / 120.0);
    assert_eq!(artifact.layers.len(), 3);
    for layer in &artifact.layers {
        assert_eq!(layer.scores.len(), layer.filters);
        for (score, &correct) in layer.scores.iter().zip(&layer.correct) {
            assert!((score - (100.0 * correct as f64 / 120.0 - artifact.acc0)).abs() < 1e-9);
        }
        // Ranking: a permutation, δ descending, ties by index.
        let mut sorted = layer.ranking.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..layer.filters).collect::<Vec<_>>());
        for pair in layer.ranking.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert!(layer.correct[a] > layer.correct[b] || (layer.correct[a] == layer.correct[b] && a < b));
        }
        let mut blamed = layer.ranking[..layer.filters / 2].to_vec();
        blamed.sort_unstable();
        assert_eq!(layer.blamed, blamed);
    }
    // Layers are named by their Conv node in the raw JSON too.
    let again: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(again["layers"][0]["name"], "/f/f.0/f.0.0/Conv");
}

/// `assess` on tiny_cnn with 20 validation images and extra arguments.
fn assess_args(out: &std::path::Path, extra: &[&str]) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec![
        "assess".into(),
        common::fixture_model("tiny_cnn_cifar10").into(),
        "--data".into(),
        common::fixture("cifar10-mini").into(),
        "--mean".into(),
        "0.485,0.456,0.406".into(),
        "--std".into(),
        "0.229,0.224,0.225".into(),
        "--backend".into(),
        "ort".into(),
        "--val-size".into(),
        "20".into(),
        "--out".into(),
        out.into(),
    ];
    args.extend(extra.iter().map(|a| a.into()));
    args
}

fn run_ok(args: &[std::ffi::OsString]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_onnx-deeppatch")).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    stderr
}

fn artifact(path: &std::path::Path) -> Assessment {
    assess::load(path).unwrap()
}

#[test]
fn killed_assessment_resumes_to_the_same_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole.json");
    run_ok(&assess_args(&whole, &["--naive"]));
    assert!(!assess::partial_path(&whole).exists());

    let resumed = dir.path().join("resumed.json");
    let partial = assess::partial_path(&resumed);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_onnx-deeppatch"))
        .args(assess_args(&resumed, &["--naive"]))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // SIGKILL once the first layer is recorded (header + one line), before the last one is.
    let start = Instant::now();
    loop {
        let lines = std::fs::read_to_string(&partial).map(|t| t.lines().count()).unwrap_or(0);
        if lines >= 2 {
            break;
        }
        assert!(start.elapsed().as_secs() < 120, "no layer recorded");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!resumed.exists(), "the run finished before it was killed");
    // Damage the resume file as a disk or a careless hand would: the first record again with its
    // counts zeroed (its checksum no longer holds), and the first record repeated verbatim.
    let text = std::fs::read_to_string(&partial).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut record: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    let zeroed: Vec<u64> = vec![0; record["record"]["correct"].as_array().unwrap().len()];
    record["record"]["correct"] = serde_json::json!(zeroed);
    std::fs::write(&partial, format!("{}\n{}\n{}\n{}\n", lines[0], record, lines[1], lines[1])).unwrap();
    let stderr = run_ok(&assess_args(&resumed, &["--naive"]));
    assert!(stderr.contains("resuming: "), "{stderr}");
    assert_eq!(stderr.matches("is damaged or repeated").count(), 2, "{stderr}");
    assert_eq!(artifact(&resumed), artifact(&whole));
    assert!(!partial.exists());
}

/// The scale-out recipe of docs/assessment.md (a Kubernetes Indexed Job or an Argo fan-out): n
/// shard processes at once, then `--merge`, give the unsharded artifact byte for byte.
#[test]
fn parallel_shards_merge_to_the_unsharded_artifact_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole.json");
    run_ok(&assess_args(&whole, &[]));
    let shards: Vec<std::path::PathBuf> = (0..3).map(|i| dir.path().join(format!("shard-{i}.json"))).collect();
    let running: Vec<std::process::Child> = shards
        .iter()
        .enumerate()
        .map(|(i, out)| {
            std::process::Command::new(env!("CARGO_BIN_EXE_onnx-deeppatch"))
                .args(assess_args(out, &["--shard", &format!("{i}/3")]))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in running {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    // tiny_cnn has three layers: one per shard.
    for (i, shard) in shards.iter().enumerate() {
        assert_eq!(artifact(shard).layers.iter().map(|l| l.index).collect::<Vec<_>>(), vec![i]);
    }
    let merged = dir.path().join("merged.json");
    let mut merge: Vec<std::ffi::OsString> = vec!["assess".into(), "--merge".into()];
    merge.extend(shards.iter().rev().map(|s| s.clone().into_os_string()));
    merge.extend(["--out".into(), merged.clone().into_os_string()]);
    run_ok(&merge);
    assert_eq!(std::fs::read(&merged).unwrap(), std::fs::read(&whole).unwrap());
    // Shards missing a layer are incomplete.
    let output = common::cli(os_args!["assess", "--merge", shards[0], shards[2], "--out", merged]);
    assert_eq!(output.status.code(), Some(2));
}

/// `bench assess` runs both methods over the same layers and images and reports per-layer times;
/// it fails when their counts differ. On tiny_cnn's first layer (after a ReLU) some masked images
/// equal their original and are not run.
#[test]
fn bench_assess_reports_both_methods_per_layer() {
    let output = common::cli(os_args![
        "--quiet", "bench", "assess", common::fixture_model("tiny_cnn_cifar10"), "--data", common::fixture("cifar10-mini"),
        "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "--backend", "ort", "--val-size", "10", "--layers", "0,2"
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["images"], 60);
    let layers = report["layers"].as_array().unwrap();
    assert_eq!(layers.iter().map(|l| l["index"].as_u64().unwrap()).collect::<Vec<_>>(), vec![0, 2]);
    assert_eq!(layers.iter().map(|l| l["filters"].as_u64().unwrap()).collect::<Vec<_>>(), vec![16, 64]);
    let seconds = |v: &serde_json::Value| v.as_f64().unwrap();
    let naive: f64 = layers.iter().map(|l| seconds(&l["naive_s"])).sum::<f64>() + seconds(&report["original_s"]);
    assert!((seconds(&report["naive_s"]) - naive).abs() < 1e-9);
    assert!((seconds(&report["ratio"]) - seconds(&report["naive_s"]) / seconds(&report["fast_s"])).abs() < 1e-9);
    let run = seconds(&layers[0]["fast_rows_run"]);
    assert!(run > 0.5 && run < 1.0, "share of masked images run on layer 0: {run}");
}
