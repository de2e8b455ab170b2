//! Evaluation: accuracy of a model on the clean test set and on each level of each corruption; a γ-patched
//! model is evaluated under every routing the paper compares ([`patched`]).

pub mod patched;

use std::sync::Arc;

use ndarray::Axis;

use crate::backend::Pool;
use crate::config::PreprocessConfig;
use crate::data::corruption::{test_groups, Group, GroupNames};
use crate::data::{Batch, BatchStream, Corruption, Dataset, Preprocess};
use crate::error::{Error, Result};
use crate::onnx::proto::ModelProto;
use crate::progress::Progress;
use crate::report::{AccuracyRow, GroupCounts, Shares};
use crate::tensor::Tensor;
use crate::units::{ADAPTED_OUTPUT, DECISION_INPUT};

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
        let image = crate::analysis::image_input(graph)?.name.as_deref().unwrap_or_default();
        let outputs: Vec<&str> = graph.output.iter().filter_map(|v| v.name.as_deref()).collect();
        let input = choose("preprocess.input", "input", config.input.as_deref(), &[image], Some(image))?;
        let output = choose("preprocess.output", "output", config.output.as_deref(), &outputs, outputs.first().copied())?;
        Ok(ModelIo { input, output })
    }

    /// Checks the data's classes against the model's logits, when the output's class dimension is
    /// static: as many class folders (or CIFAR classes) as logits, and no label beyond them.
    pub fn check_classes(&self, model: &ModelProto, data: &Dataset) -> Result<()> {
        let graph = model.graph.as_ref().ok_or_else(|| Error::InvalidGraph("the model has no graph".into()))?;
        let Some(logits) = graph.output.iter().find(|v| v.name.as_deref() == Some(self.output.as_str())).and_then(crate::onnx::graph::static_last_dim) else {
            return Ok(());
        };
        let largest = data.labels.iter().copied().max().unwrap_or(0);
        // NPY labels name no classes: their count is only the largest label + 1.
        let named = !data.classes.iter().enumerate().all(|(i, c)| *c == i.to_string());
        let classes = data.classes.len();
        if largest >= logits as i64 || (named && classes != logits) {
            return Err(Error::data(
                &data.source,
                format!("the data has {classes} classes (labels up to {largest}) but the model's output '{}' has {logits} logits", self.output),
            ));
        }
        Ok(())
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

/// Predictions of one model on one condition (the clean images or one level of a corruption).
#[derive(Debug, Clone, PartialEq)]
pub struct ConditionResult {
    /// True label per image, in evaluation order.
    pub labels: Vec<i64>,
    /// Predicted class per image, in the same order.
    pub predictions: Vec<i64>,
    pub correct: usize,
    /// Per image, whether a patched model routed it to the replacement filters (its
    /// `deeppatch_adapted` output); empty when the run did not read it.
    pub adapted: Vec<bool>,
}

/// One corruption's results, level by level.
#[derive(Debug, Clone)]
pub struct GroupResult {
    pub names: GroupNames,
    /// (level key, result) per level.
    pub levels: Vec<(String, ConditionResult)>,
}

/// Predictions on the clean images and on each level of each corruption.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// Labels of the clean images.
    pub labels: Vec<i64>,
    pub clean: ConditionResult,
    pub groups: Vec<GroupResult>,
}

impl Evaluation {
    /// The table row of this evaluation.
    pub fn row(&self, label: &str) -> AccuracyRow {
        let counts: Vec<usize> = self.conditions().map(|c| c.correct).collect();
        self.row_of(label, &counts)
    }

    /// A row of counts per condition (clean first, then every level in order), each over the
    /// images of that condition.
    pub fn row_of(&self, label: &str, counts: &[usize]) -> AccuracyRow {
        AccuracyRow::from_counts(label, self.labels.len(), counts.first().copied().unwrap_or(0), &self.group_counts(counts))
    }

    /// Shares of counts per condition, as [`Evaluation::row_of`].
    pub fn shares_of(&self, counts: &[usize]) -> Shares {
        Shares::from_counts(self.labels.len(), counts.first().copied().unwrap_or(0), &self.group_counts(counts))
    }

    /// `counts` (clean first) laid out by corruption and level.
    fn group_counts(&self, counts: &[usize]) -> Vec<GroupCounts> {
        let mut rest = counts.iter().skip(1);
        self.groups
            .iter()
            .map(|g| GroupCounts {
                names: g.names.clone(),
                levels: g.levels.iter().map(|(key, r)| (key.clone(), rest.next().copied().unwrap_or(0), r.labels.len())).collect(),
            })
            .collect()
    }

    /// The clean result, then every level of every corruption.
    pub fn conditions(&self) -> impl Iterator<Item = &ConditionResult> {
        std::iter::once(&self.clean).chain(self.groups.iter().flat_map(|g| g.levels.iter().map(|(_, r)| r)))
    }

    /// Correct predictions over every condition.
    pub fn total_correct(&self) -> usize {
        self.conditions().map(|c| c.correct).sum()
    }
}

/// The evaluated images and how their batches are prepared.
pub struct TestSet<'a> {
    pub data: Arc<Dataset>,
    /// The clean images.
    pub indices: &'a [usize],
    /// The corruptions' levels (images of `data`).
    pub groups: &'a [Group],
    pub preprocess: &'a Preprocess,
    pub batch_size: usize,
}

/// One model to run over a test set, with what a patched model is fed and read besides the images
/// and the logits.
pub struct Run<'s> {
    pub pool: &'s mut Pool,
    /// A value for the `deeppatch_decision` input; `None` leaves the model's default (as served).
    pub decision: Option<bool>,
    /// Read the per-sample `deeppatch_adapted` flags.
    pub read_adapted: bool,
}

impl<'s> Run<'s> {
    /// A model run as it is, logits only.
    pub fn plain(pool: &'s mut Pool) -> Self {
        Run { pool, decision: None, read_adapted: false }
    }
}

/// Runs the model of `pool` on the clean images `set.indices` and every level of `set.groups`,
/// batches prepared in the background while the backend computes.
pub fn evaluate(pool: &mut Pool, io: &ModelIo, set: &TestSet) -> Result<Evaluation> {
    let mut evaluations = evaluate_runs(&mut [Run::plain(pool)], io, set, "evaluating")?;
    evaluations.pop().ok_or_else(|| Error::Internal("no evaluation".into()))
}

/// Runs every model of `runs` on each batch of `set` (every image is corrupted and preprocessed once,
/// whatever the number of models), one [`Evaluation`] per run; progress is reported as `task`.
/// Each model runs as many batches side by side as its pool has workers.
pub fn evaluate_runs(runs: &mut [Run], io: &ModelIo, set: &TestSet, task: &str) -> Result<Vec<Evaluation>> {
    let clean: Vec<(usize, Corruption)> = set.indices.iter().map(|&i| (i, Corruption::Clean)).collect();
    let levels: Vec<Vec<(usize, Corruption)>> = std::iter::once(clean).chain(set.groups.iter().flat_map(|g| g.levels.iter().map(|l| l.items.clone()))).collect();
    let sizes: Vec<usize> = levels.iter().map(Vec::len).collect();
    let empty = |size: usize| ConditionResult { labels: Vec::with_capacity(size), predictions: Vec::with_capacity(size), correct: 0, adapted: Vec::new() };
    let mut results: Vec<Vec<ConditionResult>> = runs.iter().map(|_| sizes.iter().map(|&n| empty(n)).collect()).collect();
    let positions = runs.iter().map(|run| output_positions(run, io)).collect::<Result<Vec<_>>>()?;
    let switches: Vec<Option<Tensor>> = runs.iter().map(|run| run.decision.map(|d| Tensor::Bool(ndarray::arr0(d).into_dyn()))).collect();
    let mut progress = Progress::new(task, sizes.iter().sum());
    let workers = runs.iter().map(|run| run.pool.workers()).max().unwrap_or(1);
    let mut stream = BatchStream::new(set.data.clone(), levels, set.preprocess.clone(), set.batch_size);
    loop {
        let mut group: Vec<Batch> = stream.by_ref().take(workers).collect::<Result<_>>()?;
        if group.is_empty() {
            break;
        }
        let inputs: Vec<Tensor> = group.iter_mut().map(|batch| Tensor::F32(std::mem::take(&mut batch.input))).collect();
        for (((run, (logits_at, adapted_at)), switch), results) in runs.iter_mut().zip(&positions).zip(&switches).zip(&mut results) {
            let outputs = run.pool.map(&inputs, |session, input| {
                let mut inputs = vec![(io.input.as_str(), input)];
                inputs.extend(switch.as_ref().map(|s| (DECISION_INPUT, s)));
                session.run_samples(&inputs, &[io.input.as_str()])
            })?;
            for (outputs, batch) in outputs.iter().zip(&group) {
                let result = &mut results[batch.corruption];
                for (row, label) in outputs[*logits_at].as_f32()?.axis_iter(Axis(0)).zip(&batch.labels) {
                    let predicted = argmax(row.iter().copied());
                    result.correct += usize::from(predicted == *label);
                    result.predictions.push(predicted);
                    result.labels.push(*label);
                }
                if let Some(at) = adapted_at {
                    let flags = outputs[*at].as_bool()?;
                    if flags.len() != batch.labels.len() {
                        return Err(Error::InvalidGraph(format!("'{ADAPTED_OUTPUT}' holds {} flags for a batch of {}", flags.len(), batch.labels.len())));
                    }
                    result.adapted.extend(flags.iter().copied());
                }
            }
        }
        progress.advance(group.iter().map(|batch| batch.labels.len()).sum());
    }
    progress.finish();
    let labels: Vec<i64> = set.indices.iter().map(|&i| set.data.labels[i]).collect();
    Ok(results
        .into_iter()
        .map(|conditions| {
            let mut conditions = conditions.into_iter();
            let clean = conditions.next().unwrap_or_else(|| empty(0));
            let groups = set
                .groups
                .iter()
                .map(|g| GroupResult {
                    names: g.kind.names(),
                    levels: g.levels.iter().map(|l| (l.key.clone(), conditions.next().unwrap_or_else(|| empty(0)))).collect(),
                })
                .collect();
            Evaluation { labels: labels.clone(), clean, groups }
        })
        .collect())
}

/// Where a run's logits and (when it reads them) adaptation flags are among its session's outputs.
fn output_positions(run: &Run, io: &ModelIo) -> Result<(usize, Option<usize>)> {
    let names = run.pool.output_names();
    let find = |name: &str| names.iter().position(|n| n == name);
    let logits = find(&io.output).ok_or_else(|| Error::Internal(format!("backend lost output '{}'", io.output)))?;
    let adapted = run
        .read_adapted
        .then(|| find(ADAPTED_OUTPUT).ok_or_else(|| Error::InvalidGraph(format!("the patched model has no output '{ADAPTED_OUTPUT}'"))))
        .transpose()?;
    Ok((logits, adapted))
}

/// A finished `eval` command: the report and the predictions behind it.
pub struct EvalOutcome {
    pub report: crate::report::Report,
    pub evaluations: Evaluations,
}

/// The predictions behind a report.
pub enum Evaluations {
    /// A plain model: one evaluation.
    Plain(Evaluation),
    /// A γ-patched model: the original, β, served and fallback runs.
    Patched(Box<patched::PatchedEvaluation>),
}

/// Loads `model_path` and the test split named by `config`, evaluates, and builds the report. A
/// γ-patched model (recognised by its DeepPatch metadata) is reported with the rows of
/// [`patched`]; any other model as one row.
pub fn evaluate_model(model_path: &std::path::Path, config: &crate::config::Config) -> Result<EvalOutcome> {
    let model = crate::analysis::load(model_path)?;
    let io = ModelIo::resolve(&model, &config.preprocess)?;
    let root = config.data_root()?;
    let mut test = crate::data::load_split(root, crate::data::Split::Test, config.data.format)?;
    io.check_classes(&model, &test)?;
    let preprocess = preprocess_for(&config.preprocess, &test)?;
    let indices = match config.eval.limit {
        Some(limit) if limit < test.len() => {
            crate::data::split::stratified_split(&test.labels, crate::data::split::ValSize::Count(limit), config.data.seed)?.1
        }
        _ => (0..test.len()).collect(),
    };
    let groups = test_groups(&config.data.corruption, &mut test, &indices, &config.eval.sigmas, config.data.seed)?;
    let options = crate::backend::BackendOptions {
        kind: config.backend.kind,
        device: config.backend.device,
        threads: config.backend.threads,
    };
    let set = TestSet { data: Arc::new(test), indices: &indices, groups: &groups, preprocess: &preprocess, batch_size: config.eval.batch_size };
    let mut report = crate::report::Report {
        model: model_path.display().to_string(),
        backend: format!("{} ({})", config.backend.kind, config.backend.device),
        data: root.join("test").display().to_string(),
        images: indices.len(),
        rows: Vec::new(),
        primary: 0,
        patch: None,
    };
    let evaluations = if crate::units::strip::is_patched(&model) {
        let evaluation = patched::evaluate(&model, &io, &set, &options)?;
        (report.rows, report.primary) = evaluation.rows();
        report.patch = Some(evaluation.context());
        Evaluations::Patched(Box::new(evaluation))
    } else {
        let mut pool = Pool::open(&prost::Message::encode_to_vec(&model), &options)?;
        let evaluation = evaluate(&mut pool, &io, &set)?;
        report.rows = vec![evaluation.row(&model_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into()))];
        Evaluations::Plain(evaluation)
    };
    Ok(EvalOutcome { report, evaluations })
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

    /// Batches on parallel tract sessions give the predictions of one session, in order; the
    /// batches do not divide evenly among the workers.
    #[test]
    fn evaluate_on_parallel_tract_sessions_equals_sequential() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
        let data = Arc::new(crate::data::load_split(&fixtures.join("cifar10-mini"), crate::data::Split::Test, crate::data::DataFormat::Folder).unwrap());
        let model = crate::onnx::load_model(&fixtures.join("models/tiny_cnn_cifar10.onnx")).unwrap();
        let config = PreprocessConfig { mean: vec![0.485, 0.456, 0.406], std: vec![0.229, 0.224, 0.225], ..Default::default() };
        let (io, preprocess) = (ModelIo::resolve(&model, &config).unwrap(), preprocess_for(&config, &data).unwrap());
        let indices: Vec<usize> = (0..150).map(|i| i * 3).collect();
        let run = |threads: usize| {
            let options = crate::backend::BackendOptions { threads: Some(threads), ..Default::default() };
            let mut pool = Pool::open(&prost::Message::encode_to_vec(&model), &options).unwrap();
            let groups = [crate::data::corruption::blur_group(&indices, &[1.0, 2.0])];
            let set = TestSet { data: data.clone(), indices: &indices, groups: &groups, preprocess: &preprocess, batch_size: 64 };
            let evaluation = evaluate(&mut pool, &io, &set).unwrap();
            evaluation.conditions().cloned().collect::<Vec<_>>()
        };
        let sequential = run(1);
        assert_eq!(sequential.iter().map(|c| c.predictions.len()).collect::<Vec<_>>(), [150; 3]);
        assert!(sequential[0].correct > 50, "{}", sequential[0].correct);
        assert_eq!(run(2), sequential);
        assert_eq!(run(4), sequential);
    }
}

