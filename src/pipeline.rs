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
//! When training does not beat the original model on T_val°, OUT is the original model, unchanged.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::assess::{self, AssessOptions, Assessment};
use crate::calibrate::{self, CalibrateOptions, RuleChoice};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::eval::{evaluate_model, EvalOutcome};
use crate::onnx::{self, SaveOptions};
use crate::progress;
use crate::train::{self, TrainData};
use crate::units::spec::{model_sha256, weights_path};
use crate::units::{gamma_model, PatchSpec};

/// How `rewrite` runs.
#[derive(Debug, Clone)]
pub struct RewriteOptions {
    /// The run folder.
    pub run: PathBuf,
    /// The γ decision rule calibration puts into the model.
    pub rule: RuleChoice,
    /// Evaluate the output on the test set (report files in the run folder).
    pub evaluate: bool,
}

/// What `rewrite` did.
pub struct Rewritten {
    /// Whether OUT is the patched model (false: training did not beat the original, OUT is the
    /// original model).
    pub patched: bool,
    /// The evaluation of OUT on the test set, when asked for.
    pub evaluation: Option<EvalOutcome>,
}

/// Runs assess → train → calibrate → emit (→ evaluate) for `input`, writing `output` and keeping
/// every stage's artifact in `run`.
pub fn rewrite(input: &Path, output: &Path, config: &Config, options: &RewriteOptions) -> Result<Rewritten> {
    let (run, evaluate) = (options.run.as_path(), options.evaluate);
    let canonical = |p: &Path| std::fs::canonicalize(p).ok();
    if canonical(output).is_some() && canonical(output) == canonical(input) {
        return Err(Error::Config(format!("{}: the output would overwrite the input model; give another path", output.display())));
    }
    let model = onnx::load_model(input)?;
    std::fs::create_dir_all(run).map_err(|e| Error::io(run, e))?;
    let data = TrainData::load(config)?;

    progress::info("stage 1/4: filter assessment");
    let assessment = assessment(input, &model, &data, config, run)?;

    progress::info("stage 2/4: training the replacement filters");
    let initial = train::initial_spec(&model, &assessment, config.train.kappa, config.data.seed, config.train.init)?;
    let trained = train::train(&model, &initial, &data, config, &run.join("train"))?;
    let save = SaveOptions { protect: Some(input.to_path_buf()), ..Default::default() };
    if !trained.summary.improved {
        progress::info("training did not beat the original model on T_val°: writing the original model unchanged");
        onnx::save_model(&model, output, &save)?;
        let evaluation = evaluate.then(|| report(output, config, run)).transpose()?;
        return Ok(Rewritten { patched: false, evaluation });
    }

    progress::info("stage 3/4: calibrating the γ decision");
    let spec = calibrated(&model, &trained.spec, config, run, options.rule)?;

    progress::info("stage 4/4: writing the patched model");
    onnx::save_model(&gamma_model(&model, &spec)?, output, &save)?;
    let evaluation = evaluate.then(|| report(output, config, run)).transpose()?;
    Ok(Rewritten { patched: true, evaluation })
}

/// The run's assessment: reused when complete and made for this model and T_val, else made (resuming
/// from its partial file when there is one).
fn assessment(input: &Path, model: &crate::onnx::proto::ModelProto, data: &TrainData, config: &Config, run: &Path) -> Result<Assessment> {
    let path = run.join("assessment.json");
    if let Ok(found) = assess::load(&path) {
        if found.model_sha256 == model_sha256(model) && found.data_fingerprint == data.fingerprint && found.shard.is_none() && found.layers.len() == found.layers_total {
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

/// The calibrated spec: reused from `run/spec.json` when made from the same trained spec and
/// settings, else calibrated afresh.
fn calibrated(model: &crate::onnx::proto::ModelProto, trained: &PatchSpec, config: &Config, run: &Path, rule: RuleChoice) -> Result<PatchSpec> {
    let spec_path = run.join("spec.json");
    let stamp_path = run.join("calibration.stamp.json");
    let stamp = CalibrationStamp { trained_spec_sha256: spec_sha256(&train::spec_path(&run.join("train")))?, settings: format!("{rule:?} {:?} {:?}", config.data, config.preprocess) };
    let previous: Option<CalibrationStamp> = std::fs::read_to_string(&stamp_path).ok().and_then(|t| serde_json::from_str(&t).ok());
    if previous.as_ref() == Some(&stamp) && spec_path.exists() {
        progress::info(&format!("reusing {}", spec_path.display()));
        return PatchSpec::load(&spec_path);
    }
    let calibration = calibrate::calibrate(model, trained, config, &CalibrateOptions { rule })?;
    progress::info(&calibration.summary());
    calibration.save_report(&run.join("calibration.json"))?;
    calibration.save_histograms(run)?;
    let mut spec = trained.clone();
    calibration.apply(&mut spec);
    spec.save(&spec_path)?;
    let json = serde_json::to_string_pretty(&stamp).map_err(|e| Error::Internal(e.to_string()))?;
    onnx::io::write_atomically(&stamp_path, format!("{json}\n").as_bytes())?;
    Ok(spec)
}

/// SHA-256 over a spec file and its arrays.
fn spec_sha256(path: &Path) -> Result<String> {
    let mut hash = Sha256::new();
    for file in [path.to_path_buf(), weights_path(path)] {
        hash.update(std::fs::read(&file).map_err(|e| Error::io(&file, e))?);
    }
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Evaluates OUT on the test set and writes the report files into the run folder.
fn report(output: &Path, config: &Config, run: &Path) -> Result<EvalOutcome> {
    let outcome = evaluate_model(output, config)?;
    let json = serde_json::to_string_pretty(&crate::report::json(&outcome.report)).map_err(|e| Error::Internal(e.to_string()))?;
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
    let options = RewriteOptions { run: out.join("run"), rule: RuleChoice::Auto, evaluate: true };
    rewrite(&fixtures.join("models/resnet20_cifar10.onnx"), &out.join("resnet20_deeppatch.onnx"), &config, &options)
}
