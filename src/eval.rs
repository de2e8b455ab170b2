//! Evaluation: accuracy of a model on the clean test set and on its blurred copies.

use std::sync::Arc;

use ndarray::Axis;

use crate::backend::Session;
use crate::config::PreprocessConfig;
use crate::data::{BatchStream, Corruption, Dataset, Preprocess};
use crate::error::{Error, Result};
use crate::onnx::proto::ModelProto;
use crate::progress::Progress;
use crate::report::AccuracyRow;

/// Which model input receives the images and which output holds the logits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelIo {
    pub input: String,
    pub output: String,
}

impl ModelIo {
    /// Resolves the names from the configuration, defaulting to the model's only runtime input and
    /// its first output; a name the model lacks is a configuration error that lists what it has.
    pub fn resolve(model: &ModelProto, config: &PreprocessConfig) -> Result<ModelIo> {
        let graph = model.graph.as_ref().ok_or_else(|| Error::InvalidGraph("the model has no graph".into()))?;
        let initialized: std::collections::HashSet<&str> = graph.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
        let inputs: Vec<&str> = graph.input.iter().filter_map(|v| v.name.as_deref()).filter(|n| !initialized.contains(n)).collect();
        let outputs: Vec<&str> = graph.output.iter().filter_map(|v| v.name.as_deref()).collect();
        let only_input = (inputs.len() == 1).then(|| inputs[0]);
        let input = choose("preprocess.input", "input", config.input.as_deref(), &inputs, only_input)?;
        let output = choose("preprocess.output", "output", config.output.as_deref(), &outputs, outputs.first().copied())?;
        Ok(ModelIo { input, output })
    }
}

/// The configured name if the model has it, else the default; errors name the field and list what
/// the model has.
fn choose(field: &str, kind: &str, requested: Option<&str>, available: &[&str], default: Option<&str>) -> Result<String> {
    let listed = available.join(", ");
    match (requested, default) {
        (Some(name), _) if available.contains(&name) => Ok(name.to_string()),
        (Some(name), _) => Err(Error::Config(format!("{field}: the model has no {kind} '{name}' (its {kind}s: {listed})"))),
        (None, Some(name)) => Ok(name.to_string()),
        (None, None) => Err(Error::Config(format!("{field}: the model has {} {kind}s ({listed}); name one", available.len()))),
    }
}

/// The preprocessing of the configuration, checked against the data's channel count.
pub fn preprocess_for(config: &PreprocessConfig, data: &Dataset) -> Result<Preprocess> {
    let channels = data.images.channels();
    if config.mean.len() != channels {
        return Err(Error::Config(format!(
            "preprocess.mean: {} values given, the images have {channels} channels",
            config.mean.len()
        )));
    }
    Ok(Preprocess { scale: config.scale, mean: config.mean.clone(), std: config.std.clone(), layout: config.layout })
}

/// Predictions of one model on one corruption of the evaluated images.
#[derive(Debug, Clone, PartialEq)]
pub struct ConditionResult {
    pub corruption: Corruption,
    /// Predicted class per image, in the order of the evaluated indices.
    pub predictions: Vec<i64>,
    pub correct: usize,
}

/// Predictions on the clean images and on each blurred copy.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub labels: Vec<i64>,
    pub clean: ConditionResult,
    /// (σ, result) per blur level.
    pub blurred: Vec<(f32, ConditionResult)>,
}

impl Evaluation {
    /// The table row of this evaluation.
    pub fn row(&self, label: &str) -> AccuracyRow {
        let blurred: Vec<(f32, usize)> = self.blurred.iter().map(|(s, r)| (*s, r.correct)).collect();
        AccuracyRow::from_counts(label, self.labels.len(), self.clean.correct, &blurred)
    }
}

/// Runs `session` on `indices` of `data`, clean and blurred at every σ, batches prepared in the
/// background while the backend computes.
pub fn evaluate(
    session: &mut dyn Session,
    io: &ModelIo,
    data: Arc<Dataset>,
    indices: &[usize],
    sigmas: &[f32],
    preprocess: &Preprocess,
    batch_size: usize,
) -> Result<Evaluation> {
    let corruptions: Vec<Corruption> =
        std::iter::once(Corruption::Clean).chain(sigmas.iter().map(|&s| Corruption::Blur(s))).collect();
    let labels: Vec<i64> = indices.iter().map(|&i| data.labels[i]).collect();
    let mut results: Vec<ConditionResult> = corruptions
        .iter()
        .map(|c| ConditionResult { corruption: c.clone(), predictions: Vec::with_capacity(indices.len()), correct: 0 })
        .collect();
    let mut progress = Progress::new("evaluating", indices.len() * corruptions.len());
    let stream = BatchStream::new(data, indices.to_vec(), corruptions, preprocess.clone(), batch_size);
    for batch in stream {
        let batch = batch?;
        let input = crate::tensor::Tensor::F32(batch.input);
        let outputs = session.run(&[(io.input.as_str(), &input)])?;
        let position = session
            .output_names()
            .iter()
            .position(|n| *n == io.output)
            .ok_or_else(|| Error::Internal(format!("backend lost output '{}'", io.output)))?;
        let logits = outputs[position].as_f32()?;
        let result = &mut results[batch.corruption];
        for (row, label) in logits.axis_iter(Axis(0)).zip(&batch.labels) {
            let predicted = argmax(row.iter().copied());
            result.correct += usize::from(predicted == *label);
            result.predictions.push(predicted);
        }
        progress.advance(batch.labels.len());
    }
    progress.finish();
    let mut results = results.into_iter();
    let clean = results.next().ok_or_else(|| Error::Internal("no clean results".into()))?;
    let blurred = sigmas.iter().copied().zip(results).collect();
    Ok(Evaluation { labels, clean, blurred })
}

/// A finished `eval` command: the report and the predictions behind it.
pub struct EvalOutcome {
    pub report: crate::report::Report,
    pub evaluation: Evaluation,
}

/// Loads `model_path` and the test split named by `config`, evaluates, and builds the report.
pub fn evaluate_model(model_path: &std::path::Path, config: &crate::config::Config) -> Result<EvalOutcome> {
    let model = crate::onnx::load_model(model_path)?;
    let io = ModelIo::resolve(&model, &config.preprocess)?;
    let root = config.data_root()?;
    let test = crate::data::load_split(root, crate::data::Split::Test, config.data.format)?;
    let preprocess = preprocess_for(&config.preprocess, &test)?;
    let indices = match config.eval.limit {
        Some(limit) if limit < test.len() => {
            crate::data::split::stratified_split(&test.labels, crate::data::split::ValSize::Count(limit), config.data.seed)?.1
        }
        _ => (0..test.len()).collect(),
    };
    let options = crate::backend::BackendOptions {
        kind: config.backend.kind,
        device: config.backend.device,
        threads: config.backend.threads,
    };
    let mut session = crate::backend::open_session(&prost::Message::encode_to_vec(&model), &options)?;
    let evaluation = evaluate(session.as_mut(), &io, Arc::new(test), &indices, &config.eval.sigmas, &preprocess, config.eval.batch_size)?;
    let report = crate::report::Report {
        model: model_path.display().to_string(),
        backend: format!("{} ({})", config.backend.kind, config.backend.device),
        data: root.join("test").display().to_string(),
        images: indices.len(),
        rows: vec![evaluation.row(&model_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into()))],
    };
    Ok(EvalOutcome { report, evaluation })
}

/// Index of the largest value, the first on ties, NaN never chosen (as numpy's argmax on finite
/// logits).
pub fn argmax(values: impl Iterator<Item = f32>) -> i64 {
    let mut best = (-1i64, f32::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if !v.is_nan() && (v > best.1 || best.0 < 0) {
            best = (i as i64, v);
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax([1.0, 3.0, 3.0, 2.0].into_iter()), 1);
        assert_eq!(argmax([f32::NAN, -1.0].into_iter()), 1);
        assert_eq!(argmax([-5.0].into_iter()), 0);
    }
}

