//! Corruptions as a choice (docs/configuration.md, `data.corruption`), end to end on the bundled
//! fixtures: a folder of blurred images written losslessly reproduces the blur columns of `eval`
//! prediction for prediction, and the spatial columns are the same on every run with one seed.

mod common;

use std::path::Path;

use onnx_deeppatch::config::Config;
use onnx_deeppatch::data::blur::GaussianKernel;
use onnx_deeppatch::data::{load_split, CorruptionKind, Corruptions, DataFormat, ImageRef, Split};
use onnx_deeppatch::eval::{evaluate_model, Evaluation, Evaluations};

fn config() -> Config {
    Config::from_file(&common::fixture("cifar10.yaml")).unwrap()
}

fn plain(model: &str, config: &Config) -> (Evaluation, serde_json::Value) {
    let outcome = evaluate_model(&common::fixture_model(model), config).unwrap();
    let json = onnx_deeppatch::report::json(&outcome.report);
    match outcome.evaluations {
        Evaluations::Plain(evaluation) => (evaluation, json),
        Evaluations::Patched(_) => panic!("a plain model"),
    }
}

/// Writes the bundled test images blurred at each σ as PNG into `dir/<σ>/<class>/`, in the order
/// the data set holds them.
fn write_blurred(dir: &Path, sigmas: &[f32]) {
    let test = load_split(&common::fixture("cifar10-mini"), Split::Test, DataFormat::Folder).unwrap();
    let (h, w) = (test.images.height(), test.images.width());
    for &sigma in sigmas {
        let kernel = GaussianKernel::new(sigma).unwrap();
        let level = dir.join(onnx_deeppatch::report::sigma_key(sigma));
        for class in &test.classes {
            std::fs::create_dir_all(level.join(class)).unwrap();
        }
        for i in 0..test.len() {
            let ImageRef::U8Hwc(pixels) = test.images.image(i) else { panic!("8-bit images") };
            let blurred = image::RgbImage::from_raw(w as u32, h as u32, kernel.blur_u8(pixels, h, w, 3)).unwrap();
            blurred.save(level.join(&test.classes[test.labels[i] as usize]).join(format!("{i:05}.png"))).unwrap();
        }
    }
}

#[test]
fn a_folder_of_blurred_pngs_reproduces_the_blur_predictions() {
    let root = tempfile::tempdir().unwrap();
    let field = root.path().join("field");
    let sigmas = [0.5, 1.5, 3.0];
    write_blurred(&field.join("test"), &sigmas);
    std::fs::create_dir_all(field.join("train")).unwrap();
    let mut config = config();
    config.eval.sigmas = sigmas.to_vec();
    let (blur, blur_json) = plain("tiny_cnn_cifar10", &config);
    config.data.corruption = Corruptions(vec![CorruptionKind::Folder(field)]);
    let (folder, folder_json) = plain("tiny_cnn_cifar10", &config);

    let keys: Vec<&str> = folder.groups[0].levels.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(keys, ["0.5", "1.5", "3.0"]);
    for ((sigma, by_blur), (_, by_folder)) in blur.groups[0].levels.iter().zip(&folder.groups[0].levels) {
        assert_eq!(by_folder.labels, by_blur.labels, "σ {sigma}");
        assert_eq!(by_folder.predictions, by_blur.predictions, "σ {sigma}");
    }
    assert_eq!(folder.clean, blur.clean);
    assert_eq!(folder_json["folder:field"], blur_json["blur"]);
    assert_eq!(folder_json["frob:field"], blur_json["nrob"]);
    assert_eq!(folder_json["joint"], blur_json["joint"]);
    assert!(blur_json["nrob"].as_f64().unwrap() > 20.0, "{blur_json}");
}

#[test]
fn spatial_eval_has_five_levels_and_srob_on_every_run() {
    let mut config = config();
    config.data.corruption = Corruptions(vec![CorruptionKind::Spatial]);
    let (first, json) = plain("tiny_cnn_cifar10", &config);
    let (again, json_again) = plain("tiny_cnn_cifar10", &config);
    assert_eq!(json, json_again);
    assert_eq!(first.conditions().map(|c| &c.predictions).collect::<Vec<_>>(), again.conditions().map(|c| &c.predictions).collect::<Vec<_>>());
    let levels = json["spatial"].as_object().unwrap();
    assert_eq!(levels.keys().collect::<Vec<_>>(), ["1/5", "2/5", "3/5", "4/5", "5/5"]);
    let accuracy: Vec<f64> = levels.values().map(|v| v.as_f64().unwrap()).collect();
    let std = json["std"].as_f64().unwrap();
    // sRob with the clean set (as nRob), and over the five levels alone.
    let with_clean = (std + accuracy.iter().sum::<f64>()) / 6.0;
    assert!((json["srob"].as_f64().unwrap() - with_clean).abs() < 1e-9, "{json}");
    assert!((json["srob_levels"].as_f64().unwrap() - accuracy.iter().sum::<f64>() / 5.0).abs() < 1e-9, "{json}");
    assert!(accuracy[4] < std && accuracy[4] <= accuracy[0] + 5.0, "the strongest level hurts: {json}");
    assert!(json.get("blur").is_none() && json.get("nrob").is_none());

    let mut reseeded = config.clone();
    reseeded.data.seed += 1;
    assert_ne!(plain("tiny_cnn_cifar10", &reseeded).1["spatial"], json["spatial"]);
}

#[test]
fn the_cli_takes_corruptions_and_reports_every_level() {
    let dir = tempfile::tempdir().unwrap();
    let markdown = dir.path().join("report.md");
    let output = common::cli(os_args![
        "eval", common::fixture_model("tiny_cnn_cifar10"), "--config", common::fixture("cifar10.yaml"),
        "--corruption", "blur,spatial", "--sigmas", "1", "--limit", "100", "--report-md", markdown, "--quiet"
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = std::fs::read_to_string(&markdown).unwrap();
    assert!(text.contains("| model | std | blur1.0 | nRob | spat1/5 | spat2/5 | spat3/5 | spat4/5 | spat5/5 | sRob | sRob (levels) | joint |"), "{text}");
    let refused = common::cli(os_args!["eval", common::fixture_model("tiny_cnn_cifar10"), "--config", common::fixture("cifar10.yaml"), "--corruption", "fog"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("allowed: blur, spatial, folder=DIR"));
}
