//! `eval` of a γ-patched model (tiny_cnn, random replacement filters at κ = 0.25, the bundled
//! 500 test images, onnxruntime): every row of the report checked against the per-sample
//! predictions and flags behind it, recomputed here independently.
//!
//! Float tolerance: a non-adapted sample runs the original graph untouched, so its prediction
//! equals PT's exactly; an adapted sample runs alone through the merged parameters (the Scan of
//! the γ unit) while the β model runs batches of 256, and runtimes may pick other kernels for
//! other batch sizes, so the last bits of its logits may differ from β's and a near-tie argmax may
//! flip. Hence DP-γ may differ from the prediction its flag selects on at most one sample per
//! condition (0 measured here on both backends).

mod common;

use std::path::Path;

use onnx_deeppatch::backend::{open_session, BackendKind, BackendOptions};
use onnx_deeppatch::config::Config;
use onnx_deeppatch::data::{load_split, make_batch, Corruption, Split};
use onnx_deeppatch::eval::patched::{majority_label, PatchedEvaluation, DP_BETA, DP_FALLBACK, DP_GAMMA, MAJORITY_BATCH, ORACLE, PT};
use onnx_deeppatch::eval::{evaluate_model, preprocess_for, ConditionResult, Evaluation, Evaluations};
use onnx_deeppatch::onnx::{load_model, save_model, SaveOptions};
use onnx_deeppatch::report::{self, AccuracyRow};
use onnx_deeppatch::units::{gamma_model, spec::random_spec, Boundary, Decision, CR_OUTPUT};
use onnx_deeppatch::Tensor;

const IMAGES: usize = 500;

fn config() -> Config {
    let mut config = Config::from_file(&common::fixture("cifar10.yaml")).unwrap();
    config.backend.kind = BackendKind::Ort;
    config
}

fn tiny_cnn() -> std::path::PathBuf {
    common::fixture("models/tiny_cnn_cifar10.onnx")
}

/// A γ-patched tiny_cnn whose CR boundary is the median CR of the clean test images, so that
/// about half of them are adapted.
fn mixed_model(dir: &Path) -> std::path::PathBuf {
    let model = load_model(&tiny_cnn()).unwrap();
    let mut spec = random_spec(&model, 0.25, 7, Decision::adapt_none()).unwrap();
    let config = config();
    let data = load_split(config.data_root().unwrap(), Split::Test, config.data.format).unwrap();
    let preprocess = preprocess_for(&config.preprocess, &data).unwrap();
    let images = make_batch(&data, &(0..data.len()).collect::<Vec<_>>(), &Corruption::Clean, &preprocess).unwrap();
    let probe = gamma_model(&model, &spec).unwrap();
    let mut session = open_session(&prost::Message::encode_to_vec(&probe), &BackendOptions { kind: BackendKind::Ort, ..Default::default() }).unwrap();
    let cr_at = session.output_names().iter().position(|n| n == CR_OUTPUT).unwrap();
    let mut cr: Vec<f32> = session.run(&[("input", &Tensor::F32(images))]).unwrap()[cr_at].as_f32().unwrap().iter().copied().collect();
    cr.sort_by(f32::total_cmp);
    spec.set_boundary(Boundary::Value(cr[cr.len() / 2]));
    let path = dir.join("mixed.onnx");
    save_model(&gamma_model(&model, &spec).unwrap(), &path, &SaveOptions::default()).unwrap();
    path
}

fn conditions(e: &Evaluation) -> Vec<&ConditionResult> {
    e.conditions().collect()
}

/// The row's figures per condition (std, then each σ) as counts of correct images.
fn counts(row: &AccuracyRow) -> Vec<usize> {
    std::iter::once(row.std).chain(blur(row).iter().map(|(_, a)| *a)).map(|a| (a * IMAGES as f64 / 100.0).round() as usize).collect()
}

/// The row's blur levels: (σ key, accuracy).
fn blur(row: &AccuracyRow) -> &[(String, f64)] {
    &row.groups[0].accuracy.levels
}

fn correct(predictions: &[i64], labels: &[i64]) -> usize {
    predictions.iter().zip(labels).filter(|(p, l)| p == l).count()
}

fn row<'r>(rows: &'r [AccuracyRow], label: &str) -> &'r AccuracyRow {
    rows.iter().find(|r| r.label == label).unwrap_or_else(|| panic!("no row {label}"))
}

#[test]
fn every_row_follows_from_the_predictions_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let outcome = evaluate_model(&mixed_model(dir.path()), &config()).unwrap();
    let Evaluations::Patched(patched) = &outcome.evaluations else { panic!("a patched model must be recognised") };
    let PatchedEvaluation { original, beta, served, fallback, .. } = patched.as_ref();
    let rows = &outcome.report.rows;
    let labels: Vec<&str> = rows.iter().map(|r| r.label.as_str()).collect();
    assert_eq!(labels, [PT, DP_BETA, DP_GAMMA, majority_label().as_str(), DP_FALLBACK, ORACLE]);
    assert_eq!(outcome.report.images, IMAGES);
    let truth = &original.labels;

    // DP-fb is PT, exactly: same predictions, no sample adapted, same row.
    for (pt, fb) in conditions(original).into_iter().zip(conditions(fallback)) {
        assert_eq!(pt.predictions, fb.predictions);
        assert_eq!(fb.adapted, vec![false; IMAGES]);
    }
    let (pt_row, fb_row) = (row(rows, PT), row(rows, DP_FALLBACK));
    assert_eq!((pt_row.std, &pt_row.groups, pt_row.joint), (fb_row.std, &fb_row.groups, fb_row.joint));
    assert_eq!(fb_row.adapted.as_ref().unwrap().all, 0.0);

    // DP-γ per sample: PT's prediction where not adapted (exactly), β's where adapted (up to a
    // float tie); its accuracy is the one recomputed from those selections.
    let gamma = row(rows, DP_GAMMA);
    let shares = gamma.adapted.as_ref().unwrap();
    let mut differing = 0;
    for (i, ((pt, b), g)) in conditions(original).into_iter().zip(conditions(beta)).zip(conditions(served)).enumerate() {
        let selected: Vec<i64> = (0..IMAGES).map(|n| if g.adapted[n] { b.predictions[n] } else { pt.predictions[n] }).collect();
        for n in (0..IMAGES).filter(|&n| !g.adapted[n]) {
            assert_eq!(g.predictions[n], pt.predictions[n], "condition {i}, sample {n}: a non-adapted sample must answer as PT");
        }
        let here = selected.iter().zip(&g.predictions).filter(|(s, p)| s != p).count();
        assert!(here <= 1, "condition {i}: DP-γ differs from the selected prediction on {here} samples");
        differing += here;
        assert!(correct(&selected, truth).abs_diff(counts(gamma)[i]) <= here);
        let adapted = g.adapted.iter().filter(|&&a| a).count();
        let share = if i == 0 { shares.std } else { shares.groups[0].levels[i - 1].1 };
        assert_eq!(share, 100.0 * adapted as f64 / IMAGES as f64, "condition {i}");
    }
    assert!(shares.std > 0.0 && shares.std < 100.0, "the median boundary must adapt some clean images: {}", shares.std);
    let context = outcome.report.patch.as_ref().unwrap();
    assert_eq!((context.fallback_differs, context.served_differs_from_routed, context.predictions), (0, differing, 7 * IMAGES));

    // Batch majority, recomputed: chunks of 256 consecutive images, β when more than half adapted.
    let majority = row(rows, &majority_label());
    let mut expected = Vec::new();
    for ((pt, b), g) in conditions(original).into_iter().zip(conditions(beta)).zip(conditions(served)) {
        let mut right = 0;
        for start in (0..IMAGES).step_by(MAJORITY_BATCH) {
            let end = (start + MAJORITY_BATCH).min(IMAGES);
            let adapted = g.adapted[start..end].iter().filter(|&&a| a).count();
            let chosen = if adapted * 2 > end - start { b } else { pt };
            right += correct(&chosen.predictions[start..end], &truth[start..end]);
        }
        expected.push(right);
    }
    assert_eq!(counts(majority), expected);

    // Oracle: PT on clean images, β on blurred ones.
    let oracle = row(rows, ORACLE);
    assert_eq!(oracle.std, pt_row.std);
    assert_eq!(blur(oracle), blur(row(rows, DP_BETA)));

    // JSON: the served row's figures at the top level, every row with its label and shares.
    let json = report::json(&outcome.report);
    assert_eq!(json["std"].as_f64(), Some(gamma.std));
    assert_eq!(json["adapted"]["std"].as_f64(), Some(shares.std));
    assert_eq!(json["rows"][3]["label"], majority_label());
    assert_eq!(json["rows"][3]["adapted"]["all"].as_f64(), majority.adapted.as_ref().map(|a| a.all));
    assert_eq!(json["rows"].as_array().unwrap().len(), 6);
    assert_eq!(json["patch"]["majority_batch"], MAJORITY_BATCH);
    assert_eq!(json["patch"]["decision"]["rule"], "cr");
}

/// Runs `eval` on a γ-patched tiny_cnn with the given boundary; returns the JSON report and the
/// Markdown and SVG files' text.
fn cli_eval(dir: &Path, boundary: &str) -> (serde_json::Value, String, String) {
    let model = dir.join(format!("{boundary}.onnx"));
    let patched = common::cli(os_args!["patch", tiny_cnn(), model, "--random-spec", "--seed", "7", "--boundary", boundary]);
    assert!(patched.status.success(), "{}", String::from_utf8_lossy(&patched.stderr));
    let [json, md, svg] = ["json", "md", "svg"].map(|e| dir.join(format!("{boundary}.{e}")));
    let output = common::cli(os_args![
        "--quiet", "eval", model, "--config", common::fixture("cifar10.yaml"), "--backend", "ort",
        "--report-json", json, "--report-md", md, "--report-svg", svg
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("adapted %") && stdout.contains("DP-fb differs from PT on 0 of 3500"), "{stdout}");
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    (serde_json::from_str(&read(&json)).unwrap(), read(&md), read(&svg))
}

/// Accuracies of a JSON row: std, each σ, nRob, joint.
fn figures(row: &serde_json::Value) -> Vec<f64> {
    let mut values = vec![row["std"].as_f64().unwrap()];
    values.extend(["0.5", "1.0", "1.5", "2.0", "2.5", "3.0"].map(|s| row["blur"][s].as_f64().unwrap()));
    values.extend([row["nrob"].as_f64().unwrap(), row["joint"].as_f64().unwrap()]);
    values
}

#[test]
fn adapt_all_serves_beta_and_adapt_none_serves_the_original() {
    let dir = tempfile::tempdir().unwrap();
    for (boundary, equal_to, share) in [("adapt-all", 1, 100.0), ("adapt-none", 0, 0.0)] {
        let (json, md, svg) = cli_eval(dir.path(), boundary);
        let rows = json["rows"].as_array().unwrap();
        let (served, expected) = (figures(&rows[2]), figures(&rows[equal_to]));
        if boundary == "adapt-none" {
            assert_eq!(served, expected, "adapt-none: DP-γ must be PT exactly");
        } else {
            // Every sample adapted: β's predictions up to a float tie per condition (see above).
            assert!(json["patch"]["served_differs_from_routed"].as_u64().unwrap() <= 7, "{json}");
            for (s, e) in served.iter().zip(&expected).take(7) {
                assert!((s - e).abs() <= 100.0 / IMAGES as f64 + 1e-9, "adapt-all: DP-γ {served:?} vs DP-β {expected:?}");
            }
        }
        assert_eq!(figures(&rows[4]), figures(&rows[0]), "{boundary}: DP-fb must be PT");
        assert_eq!(json["adapted"]["all"].as_f64(), Some(share), "{boundary}");
        assert_eq!(json["rows"][2]["adapted"]["blur"]["3.0"].as_f64(), Some(share), "{boundary}");
        assert_eq!(json["patch"]["fallback_differs"], 0);
        assert_eq!(json["images"], IMAGES);
        assert!(md.contains("| model | std | blur0.5 | blur1.0 | blur1.5 | blur2.0 | blur2.5 | blur3.0 | nRob | joint |"), "{md}");
        let adapted_line = format!("| adapted % | {share:.2} | {share:.2} | {share:.2} | {share:.2} | {share:.2} | {share:.2} | {share:.2} |  |  |");
        assert!(md.contains(&format!("| {DP_GAMMA} | ")) && md.contains(&adapted_line), "{md}");
        assert_eq!(svg.matches("<polyline").count(), 6, "one line per row");
        assert!(svg.contains(&majority_label()));
    }
}

/// A plain model keeps the one-row report.
#[test]
fn a_plain_model_keeps_one_row() {
    let outcome = evaluate_model(&tiny_cnn(), &config()).unwrap();
    assert!(matches!(outcome.evaluations, Evaluations::Plain(_)));
    assert_eq!(outcome.report.rows.len(), 1);
    assert!(outcome.report.patch.is_none());
    let json = report::json(&outcome.report);
    assert_eq!(json.get("adapted"), None);
    assert_eq!(json["rows"][0]["label"], "tiny_cnn_cifar10");
}
