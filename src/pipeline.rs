//! `rewrite IN OUT`: the whole DeepPatch pipeline, each stage's artifact kept in a run folder so a
//! rerun (or an orchestrator) can resume or repeat any stage:
//!
//! | stage | artifact in the run folder | reused when |
//! |---|---|---|
//! | assess | `assessment.json` | it is complete and made for this model and T_val |
//! | train | `train/` (spec, log, checkpoints) | its checkpoint is of the same run (training resumes or, when finished, only rewrites its outputs) |
//! | calibrate | `calibration.json`, `spec.json` (+ `.npz`), histograms | it was made from the same trained spec and settings |
//! | emit | OUT | — (cheap) |
//! | evaluate | `report.json`, `report.md`, `report.svg` | — |
//!
//! When training does not beat the original model on T_val°, or no decision rule keeps clean
//! accuracy within its statistical bound, OUT is the original model, unchanged; the outcome says
//! which and why (standard error, `report.json`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::assess::{self, AssessOptions, Assessment};
use crate::calibrate::{self, CalibrateOptions, Calibration, RuleChoice};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::eval::{evaluate_model, EvalOutcome};
use crate::onnx::{self, SaveOptions};
use crate::progress;
use crate::train::{self, TrainData};
use crate::units::spec::{model_sha256, weights_path};
use crate::units::{gamma_model_for, target, PatchSpec, Target};

/// How `rewrite` runs.
#[derive(Debug, Clone)]
pub struct RewriteOptions {
    /// The run folder.
    pub run: PathBuf,
    /// The γ decision rule calibration puts into the model.
    pub rule: RuleChoice,
    /// Evaluate the output on the test set (report files in the run folder).
    pub evaluate: bool,
    /// The runtime the γ model is built for.
    pub target: Target,
}

/// What OUT is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The γ-patched model.
    Patched,
    /// The original model, unchanged.
    Unchanged,
}

/// Whether OUT is the patched model or the original one, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub status: Status,
    pub reason: String,
}

/// What `rewrite` did.
pub struct Rewritten {
    pub outcome: Outcome,
    /// The evaluation of OUT on the test set, when asked for.
    pub evaluation: Option<EvalOutcome>,
}

/// The files `rewrite` may write into a run folder (for the output policy's checks).
pub fn run_files(run: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = ["assessment.json", "calibration.json", "calibration.stamp.json", "spec.json", "spec.npz", "report.json", "report.md", "report.svg", "run.json"]
        .iter()
        .map(|name| run.join(name))
        .collect();
    files.push(assess::partial_path(&run.join("assessment.json")));
    files.extend(calibrate::histogram_paths(run));
    files.extend(train::run_files(&run.join("train")));
    files
}

/// What a run folder belongs to (`run.json`), checked before any stage writes into it.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct RunOwner {
    model_sha256: String,
}

/// Creates the run folder, or checks that an existing one was made for this model: a run folder of
/// another model is refused before anything in it changes.
fn claim_run_folder(run: &Path, model: &crate::onnx::proto::ModelProto) -> Result<()> {
    let path = run.join("run.json");
    let owner = RunOwner { model_sha256: model_sha256(model) };
    if let Ok(text) = crate::onnx::io::read_text(&path, crate::onnx::io::TEXT_LIMIT) {
        let found: RunOwner = serde_json::from_str(&text).map_err(|e| Error::data(&path, format!("not a run folder's record: {e}")))?;
        if found != owner {
            return Err(Error::Config(format!(
                "run folder {} belongs to another model (sha256 {}); give another --run folder",
                run.display(),
                found.model_sha256
            )));
        }
        return Ok(());
    }
    if let Ok(found) = assess::load(&run.join("assessment.json")) {
        if found.model_sha256 != owner.model_sha256 {
            return Err(Error::Config(format!("run folder {} holds the assessment of another model; give another --run folder", run.display())));
        }
    }
    std::fs::create_dir_all(run).map_err(|e| Error::io(run, e))?;
    let json = serde_json::to_string_pretty(&owner).map_err(|e| Error::Internal(e.to_string()))?;
    onnx::io::write_atomically(&path, format!("{json}\n").as_bytes())
}

/// Runs assess → train → calibrate → emit (→ evaluate) for `input`, writing `output` and keeping
/// every stage's artifact in `run`. Everything that can be checked without work (the model, the
/// data, the run folder's owner) is checked before the run folder is created or changed.
pub fn rewrite(input: &Path, output: &Path, config: &Config, options: &RewriteOptions) -> Result<Rewritten> {
    let (run, evaluate) = (options.run.as_path(), options.evaluate);
    onnx::io::check_outputs(&[("input model", input)], &[("output", output)])?;
    target::check_backend(options.target, config.backend.kind)?;
    let model = crate::analysis::load(input)?;
    let data = TrainData::load(&model, config)?;
    claim_run_folder(run, &model)?;

    progress::info("stage 1/4: filter assessment");
    let assessment = assessment(input, &model, &data, config, run)?;

    progress::info("stage 2/4: training the replacement filters");
    let initial = train::initial_spec(&model, &assessment, config.train.kappa, config.data.seed, config.train.init)?;
    let trained = train::train(&model, &initial, &data, config, &run.join("train"))?;
    let save = SaveOptions { protect: Some(input.to_path_buf()), ..Default::default() };
    let s = &trained.summary;
    let unchanged = |outcome: Outcome| -> Result<Rewritten> {
        progress::info(&format!("outcome: {} is the original model, unchanged: {}", output.display(), outcome.reason));
        onnx::save_model(&model, output, &save)?;
        let evaluation = evaluate.then(|| report(output, config, run, &outcome)).transpose()?;
        Ok(Rewritten { outcome, evaluation })
    };
    if !s.improved {
        return unchanged(Outcome { status: Status::Unchanged, reason: format!(
            "no training epoch beat the original model on T_val° (best {:.2} % against the original's {:.2} %)",
            s.bn_adapt_val_accuracy.unwrap_or(s.best_val_accuracy),
            s.original_val_accuracy
        ) });
    }

    progress::info("stage 3/4: calibrating the γ decision");
    let (spec, calibration) = calibrated(&model, &trained.spec, config, run, options)?;
    if !calibration.adapts() {
        return unchanged(Outcome { status: Status::Unchanged, reason: format!(
            "no decision rule keeps clean accuracy within its bound on T_val ({}), so no sample would be adapted",
            calibration.refusals()
        ) });
    }

    progress::info("stage 4/4: writing the patched model");
    onnx::save_model(&gamma_model_for(&model, &spec, options.target)?, output, &save)?;
    let reason = format!(
        "rule {} adapts {:.1} % of clean and {:.1} % of corrupted T_val images; T_val° {:.2} % against the original's {:.2} %; \
         lower bound on the clean-accuracy change {:+.2} points",
        calibration.chosen,
        calibration.served.adapted_clean,
        calibration.served.adapted_star,
        calibration.served.val_accuracy,
        calibration.original.val_accuracy,
        calibration.served.clean_change_lower_bound
    );
    let outcome = Outcome { status: Status::Patched, reason };
    progress::info(&format!("outcome: {} is patched: {}", output.display(), outcome.reason));
    let evaluation = evaluate.then(|| report(output, config, run, &outcome)).transpose()?;
    Ok(Rewritten { outcome, evaluation })
}

/// The run's assessment: reused when complete and made for this model and T_val, else made (resuming
/// from its partial file when there is one).
fn assessment(input: &Path, model: &crate::onnx::proto::ModelProto, data: &TrainData, config: &Config, run: &Path) -> Result<Assessment> {
    let path = run.join("assessment.json");
    let images = data.corrupted.val.iter().flat_map(|g| &g.levels).map(|l| l.items.len()).sum();
    let plan = assess::Plan::choose(model, config.assess.method, false, config.train.kappa, config.data.seed, images)?;
    if let Ok(found) = assess::load(&path) {
        let same_method = found.method == plan.name() && found.screen.as_ref() == plan.screen();
        if found.model_sha256 == model_sha256(model) && found.data_fingerprint == data.fingerprint && found.shard.is_none() && found.layers.len() == found.layers_total && same_method {
            progress::info(&format!("reusing {}", path.display()));
            return Ok(found);
        }
    }
    let options = AssessOptions { naive: false, kappa: Some(config.train.kappa), shard: None, out: Some(path) };
    assess::assess_model(input, config, &options)
}

/// What the calibration stage was made from.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct CalibrationStamp {
    trained_spec_sha256: String,
    settings: String,
}

/// The calibrated spec and its calibration: reused from the run folder when made from the same
/// trained spec and settings, else calibrated afresh.
fn calibrated(model: &crate::onnx::proto::ModelProto, trained: &PatchSpec, config: &Config, run: &Path, options: &RewriteOptions) -> Result<(PatchSpec, Calibration)> {
    let (rule, target) = (options.rule, options.target);
    let spec_path = run.join("spec.json");
    let report_path = run.join("calibration.json");
    let stamp_path = run.join("calibration.stamp.json");
    let stamp = CalibrationStamp { trained_spec_sha256: spec_sha256(&train::spec_path(&run.join("train")))?, settings: format!("{rule:?} {target:?} {:?} {:?} {:?}", config.data, config.preprocess, config.calibrate) };
    let previous: Option<CalibrationStamp> = crate::onnx::io::read_text(&stamp_path, crate::onnx::io::TEXT_LIMIT).ok().and_then(|t| serde_json::from_str(&t).ok());
    if previous.as_ref() == Some(&stamp) && spec_path.exists() {
        if let Ok(calibration) = Calibration::load_report(&report_path) {
            progress::info(&format!("reusing {}", spec_path.display()));
            return Ok((PatchSpec::load(&spec_path)?, calibration));
        }
    }
    let calibration = calibrate::calibrate(model, trained, config, &CalibrateOptions { rule, target: Some(target) })?;
    progress::info(&calibration.summary());
    calibration.save_report(&report_path)?;
    calibration.save_histograms(run)?;
    let mut spec = trained.clone();
    calibration.apply(&mut spec);
    spec.save(&spec_path)?;
    let json = serde_json::to_string_pretty(&stamp).map_err(|e| Error::Internal(e.to_string()))?;
    onnx::io::write_atomically(&stamp_path, format!("{json}\n").as_bytes())?;
    Ok((spec, calibration))
}

/// SHA-256 over a spec file and its arrays.
fn spec_sha256(path: &Path) -> Result<String> {
    crate::onnx::io::sha256_of_files(&[path.to_path_buf(), weights_path(path)])
}

/// Evaluates OUT on the test set and writes the report files into the run folder; the JSON report
/// carries the rewrite's outcome.
fn report(output: &Path, config: &Config, run: &Path, result: &Outcome) -> Result<EvalOutcome> {
    let outcome = evaluate_model(output, config)?;
    let mut value = crate::report::json(&outcome.report);
    if let Some(object) = value.as_object_mut() {
        object.insert("outcome".into(), serde_json::to_value(result).map_err(|e| Error::Internal(e.to_string()))?);
    }
    let json = serde_json::to_string_pretty(&value).map_err(|e| Error::Internal(e.to_string()))?;
    onnx::io::write_atomically(&run.join("report.json"), format!("{json}\n").as_bytes())?;
    onnx::io::write_atomically(&run.join("report.md"), crate::report::markdown(&outcome.report).as_bytes())?;
    onnx::io::write_atomically(&run.join("report.svg"), crate::report::chart(&outcome.report).as_bytes())?;
    Ok(outcome)
}

/// The run folder of `output` when none is given: `<output without extension>.run/`.
pub fn default_run(output: &Path) -> PathBuf {
    output.with_extension("run")
}

/// Where the bundled fixtures are: `ONNX_DEEPPATCH_FIXTURES`, else `fixtures/` in the working
/// folder, else the checkout the binary was built from.
pub fn fixtures() -> Result<PathBuf> {
    let candidates = [
        std::env::var_os("ONNX_DEEPPATCH_FIXTURES").map(PathBuf::from),
        Some(PathBuf::from("fixtures")),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|dir| dir.join("cifar10.yaml").is_file())
        .ok_or_else(|| Error::Config("demo: the bundled fixtures were not found; run it from the repository or set ONNX_DEEPPATCH_FIXTURES".into()))
}

/// The demo's configuration: the bundled CIFAR-10 subset and its settings, on onnxruntime when it
/// can be loaded, else on the embedded tract.
pub fn demo_config(fixtures: &Path) -> Result<Config> {
    let mut config = Config::from_file(&fixtures.join("demo.yaml"))?;
    let probe = crate::backend::BackendOptions { kind: crate::backend::BackendKind::Ort, ..Default::default() };
    let tiny = onnx::load_model(&fixtures.join("models/tiny_cnn_cifar10.onnx"))?;
    config.backend.kind = match crate::backend::open_session(&prost::Message::encode_to_vec(&tiny), &probe) {
        Ok(_) => crate::backend::BackendKind::Ort,
        Err(e) => {
            progress::info(&format!("onnxruntime is not available ({e}); running on the embedded tract backend"));
            crate::backend::BackendKind::Tract
        }
    };
    Ok(config)
}

/// `demo`: the whole pipeline on the bundled ResNet20 and CIFAR-10 subset (`fixtures/demo.yaml`),
/// writing `out/resnet20_deeppatch.onnx` and the run folder `out/run`.
pub fn demo(out: &Path) -> Result<Rewritten> {
    let fixtures = fixtures()?;
    let config = demo_config(&fixtures)?;
    progress::info(&format!(
        "demo: ResNet20 on {} ({} backend); artifacts in {}",
        config.data_root()?.display(),
        config.backend.kind,
        out.display()
    ));
    let options = RewriteOptions { run: out.join("run"), rule: RuleChoice::Auto, evaluate: true, target: Target::default() };
    rewrite(&fixtures.join("models/resnet20_cifar10.onnx"), &out.join("resnet20_deeppatch.onnx"), &config, &options)
}
