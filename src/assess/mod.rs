//! Filter assessment (docs/specification.md §3.1): for every convolution with constant weights and every output
//! channel j, the number of T_val* images classified correctly when channel j is zeroed (an α unit),
//! against the original model's count.
//!
//! [`naive`] is the oracle and the benchmark baseline: one α model and one full pass over T_val*
//! per filter. [`fast`] gives the same integer counts without recomputing what a zeroed channel
//! cannot change: per layer it runs the part of the graph above the layer once per batch, keeps
//! the values the rest of the graph reads from it (the *frontier*: the layer's output and e.g.
//! residual skip inputs), and runs only the downstream part on those tensors with one channel
//! overwritten ([`cut`]); where convolutions read the overwritten value (past a residual Add and
//! ReLU too), that part starts after them, their output corrected for the one channel that differs
//! and near-ties rerun on the plain path (`correct`). An image whose channel j already holds what
//! the α model writes there (a channel a ReLU zeroed everywhere) is not run at all: the α model
//! computes exactly the original model for it, so it keeps its original prediction ([`fast`]'s
//! module).
//!
//! [`screen`] is the screened method: the exact method's blamed filters, with exact counts only
//! where a small-sample screen leaves the boundary of the blamed set in doubt.
//!
//! Exactness: runtimes fuse a convolution with the per-channel operators that follow it
//! (BatchNormalization, activations) and with the α unit's mask. So the cut is placed after that
//! channel-wise chain, and the zeroed channel is overwritten with what the α model itself computes
//! there (measured once per layer by running the all-channels-zeroed α model), not with a value
//! computed here.

mod artifact;
mod correct;
mod cut;
mod fast;
mod screen;

use std::path::Path;
use std::time::Instant;

use ndarray::Axis;
use serde::{Deserialize, Serialize};

pub use self::artifact::{blamed, load, merge, partial_path, ranking, save, Assessment, LayerScores, Shard};
use self::artifact::{read_partial, PartialHeader, PartialWriter};
pub use self::cut::{cut, downstream_model, upstream_model, Cut};
pub use self::screen::{LayerScreen, ScreenSettings, StageRun};
use crate::analysis::{convolutions, ConvInfo};
use crate::backend::{BackendOptions, Pool};
use crate::config::{AssessMethod, Config};
use crate::data::make_mixed_batch;
use crate::error::{Error, Result};
use crate::eval::{argmax, ModelIo};
use crate::onnx::proto::ModelProto;
use crate::progress::Progress;
use crate::tensor::Tensor;
use crate::units::alpha_model;

/// Default blamed ratio κ.
pub const DEFAULT_KAPPA: f64 = 0.25;

/// T_val*: the validation images under every level of the chosen corruptions (blurred at every σ
/// by default), preprocessed into batches once.
pub struct ValStar {
    /// Input batches (the model's image input).
    pub batches: Vec<Tensor>,
    /// True labels per batch.
    pub labels: Vec<Vec<i64>>,
    /// Per batch, per image: the validation image it is a corrupted copy of (its position in the
    /// data set).
    pub sources: Vec<Vec<usize>>,
    /// Validation images (before blurring).
    pub images: usize,
    /// Fingerprint of the validation images and labels (see `Dataset::fingerprint`).
    pub fingerprint: String,
}

impl ValStar {
    /// Number of images of T_val* (six per validation image for blur).
    pub fn len(&self) -> usize {
        self.labels.iter().map(Vec::len).sum()
    }

    /// Whether T_val* is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Loads the training split named by `config`, draws T_val (stratified, seeded) and builds T_val*:
/// every level of every chosen corruption (blur: T_val at each σ of Σ).
pub fn load_val_star(config: &Config) -> Result<ValStar> {
    let data = crate::train::TrainData::load_data(config)?;
    let batch_size = config.eval.batch_size.max(1);
    let mut batches = Vec::new();
    let mut labels = Vec::new();
    let mut sources = Vec::new();
    for level in data.corrupted.val.iter().flat_map(|g| &g.levels) {
        for chunk in level.items.chunks(batch_size) {
            batches.push(Tensor::F32(make_mixed_batch(&data.images, chunk, &data.preprocess)?));
            labels.push(chunk.iter().map(|&(i, _)| data.images.labels[i]).collect());
            sources.push(chunk.iter().map(|&(i, _)| i).collect());
        }
    }
    Ok(ValStar { batches, labels, sources, images: data.val.len(), fingerprint: data.fingerprint })
}

/// Correct predictions per channel of one convolution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerCounts {
    /// Position among the [`assessable`] convolutions.
    pub index: usize,
    pub name: String,
    pub filters: usize,
    /// Correct predictions on T_val* with channel j zeroed.
    pub correct: Vec<usize>,
}

/// One assessed layer as the partial artifact records it: its counts and, from the screened
/// method, how they were settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    #[serde(flatten)]
    pub counts: LayerCounts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screen: Option<LayerScreen>,
}

/// Raw result of an assessment: exact counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Size of T_val*.
    pub total: usize,
    /// Correct predictions of the original model.
    pub correct0: usize,
    pub layers: Vec<LayerCounts>,
}

/// The convolutions that are assessed: those with constant weights, in topological order.
pub fn assessable(model: &ModelProto) -> Result<Vec<ConvInfo>> {
    Ok(convolutions(model)?.into_iter().filter(|c| c.constant && c.filters > 0).collect())
}

/// The assessable convolutions at `positions` (indices into [`assessable`]), all when `None`,
/// with their indices.
fn selected(model: &ModelProto, positions: Option<&[usize]>) -> Result<Vec<(usize, ConvInfo)>> {
    let all = assessable(model)?;
    match positions {
        None => Ok(all.into_iter().enumerate().collect()),
        Some(positions) => positions
            .iter()
            .map(|&p| {
                let conv = all.get(p).cloned();
                conv.map(|c| (p, c)).ok_or_else(|| Error::Config(format!("layer {p} does not exist (the model has {} assessable convolutions)", all.len())))
            })
            .collect(),
    }
}

fn encode(model: &ModelProto) -> Vec<u8> {
    prost::Message::encode_to_vec(model)
}

/// Position of `name` among a session's outputs `names`.
fn output_position(names: &[String], name: &str) -> Result<usize> {
    names.iter().position(|n| n == name).ok_or_else(|| Error::Internal(format!("backend lost output '{name}'")))
}

/// Whether each row of `logits` predicts its label.
fn correct_rows(logits: &Tensor, labels: &[i64]) -> Result<Vec<bool>> {
    let logits = logits.as_f32()?;
    let rows = logits.len_of(Axis(0));
    if rows != labels.len() {
        return Err(Error::Internal(format!("{rows} logit rows for {} images", labels.len())));
    }
    Ok(logits.axis_iter(Axis(0)).zip(labels).map(|(values, &label)| argmax(values.iter().copied()) == label).collect())
}

/// Per image of T_val*, batch by batch, whether `model` classifies it correctly.
fn correct_images(model: &ModelProto, io: &ModelIo, data: &ValStar, options: &BackendOptions) -> Result<Vec<Vec<bool>>> {
    let mut pool = Pool::open(&encode(model), options)?;
    let position = output_position(pool.output_names(), &io.output)?;
    let batches: Vec<(&Tensor, &Vec<i64>)> = data.batches.iter().zip(&data.labels).collect();
    pool.map(&batches, |session, (batch, labels)| correct_rows(&session.run_samples(&[(io.input.as_str(), batch)], &[io.input.as_str()])?[position], labels))
}

/// The original model's predictions on T_val*: acc₀, and the answer for every image whose
/// masked variant equals the original (see [`fast`]); and the original model's values on T_val*
/// that the fast method's last layer computed, which the next layer's can start from.
#[derive(Debug)]
pub struct Original {
    /// Per batch of T_val*, per image: classified correctly.
    pub correct: Vec<Vec<bool>>,
    kept: std::sync::Mutex<fast::Kept>,
}

impl Original {
    /// Runs the original model over T_val*.
    pub fn predict(model: &ModelProto, io: &ModelIo, data: &ValStar, options: &BackendOptions) -> Result<Original> {
        Ok(Original { correct: correct_images(model, io, data, options)?, kept: Default::default() })
    }

    /// Correct predictions in all of T_val*.
    pub fn count(&self) -> usize {
        self.correct.iter().flatten().filter(|&&c| c).count()
    }
}

/// The oracle: one α model and one full pass over T_val* per filter of every selected layer
/// (`layers`: indices into [`assessable`], all when `None`).
pub fn naive(model: &ModelProto, io: &ModelIo, data: &ValStar, options: &BackendOptions, layers: Option<&[usize]>) -> Result<Counts> {
    Ok(assess_layers(model, io, data, options, &Plan::Exact(Method::Naive), layers, Vec::new(), &mut |_| Ok(()))?.0)
}

/// One layer of [`naive`].
fn naive_layer(model: &ModelProto, conv: &ConvInfo, io: &ModelIo, data: &ValStar, options: &BackendOptions, progress: &mut Progress) -> Result<Vec<usize>> {
    let mut correct = Vec::with_capacity(conv.filters);
    for j in 0..conv.filters {
        let images = correct_images(&alpha_model(model, &conv.name, &[j])?, io, data, options)?;
        correct.push(images.iter().flatten().filter(|&&c| c).count());
        progress.advance(1);
    }
    Ok(correct)
}

/// Same counts as [`naive`], computed layer by layer on the frontier of each (module docs).
pub fn fast(model: &ModelProto, io: &ModelIo, data: &ValStar, options: &BackendOptions, layers: Option<&[usize]>) -> Result<Counts> {
    Ok(assess_layers(model, io, data, options, &Plan::Exact(Method::Fast), layers, Vec::new(), &mut |_| Ok(()))?.0)
}

/// The counts of `fast` for the channels `only` marks of the layer at `index` (0 for the others):
/// the screened method's building block, exposed so that its exactness can be checked.
pub fn fast_channels(model: &ModelProto, io: &ModelIo, data: &ValStar, options: &BackendOptions, index: usize, only: &[bool]) -> Result<LayerCounts> {
    let (_, conv) = selected(model, Some(&[index]))?.remove(0);
    let original = Original::predict(model, io, data, options)?;
    let run = fast::layer(model, &conv, io, data, options, &original, Some(only))?;
    Ok(LayerCounts { index, name: conv.name, filters: conv.filters, correct: run.correct })
}

/// The screened method (see [`screen`]) on the selected layers (all when `None`): counts per
/// layer, and how each layer was settled.
pub fn screened(model: &ModelProto, io: &ModelIo, data: &ValStar, options: &BackendOptions, settings: &ScreenSettings, layers: Option<&[usize]>) -> Result<(Counts, Vec<LayerScreen>)> {
    let plan = Plan::Screened(settings.clone());
    let (counts, records) = assess_layers(model, io, data, options, &plan, layers, Vec::new(), &mut |_| Ok(()))?;
    Ok((counts, records.into_iter().filter_map(|r| r.screen).collect()))
}

/// What assessing one layer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRun {
    pub counts: LayerCounts,
    /// Masked images (filters × T_val*) the backend ran; the others kept the original prediction.
    pub rows_run: usize,
    pub rows_total: usize,
    /// Of those run, the masked images the fast method ran through the consumer-convolution
    /// correction, and those of these it reran on the exact path (logits near a tie).
    pub rows_corrected: usize,
    pub rows_rerun: usize,
}

/// Assesses the layer at `index` (among [`assessable`]) with `method`, given the original
/// model's predictions.
#[allow(clippy::too_many_arguments)]
pub fn assess_layer(
    model: &ModelProto,
    io: &ModelIo,
    data: &ValStar,
    options: &BackendOptions,
    method: Method,
    index: usize,
    original: &Original,
    progress: &mut Progress,
) -> Result<LayerRun> {
    let (_, conv) = selected(model, Some(&[index]))?.remove(0);
    let rows_total = conv.filters * data.len();
    let run = match method {
        Method::Naive => fast::FastRun { correct: naive_layer(model, &conv, io, data, options, progress)?, flips: Vec::new(), rows_run: rows_total, rows_corrected: 0, rows_rerun: 0 },
        Method::Fast => {
            let run = fast::layer(model, &conv, io, data, options, original, None)?;
            progress.advance(conv.filters);
            run
        }
    };
    Ok(LayerRun {
        counts: LayerCounts { index, name: conv.name.clone(), filters: conv.filters, correct: run.correct },
        rows_run: run.rows_run,
        rows_total,
        rows_corrected: run.rows_corrected,
        rows_rerun: run.rows_rerun,
    })
}

/// Assesses the selected layers (all when `None`) as `plan` says, skipping those in `done` (a
/// resumed run) and handing each newly finished layer to `finished` (which records it) before
/// the next starts. Returns the counts and the records of all selected layers, in order.
#[allow(clippy::too_many_arguments)]
fn assess_layers(
    model: &ModelProto,
    io: &ModelIo,
    data: &ValStar,
    options: &BackendOptions,
    plan: &Plan,
    layers: Option<&[usize]>,
    done: Vec<LayerRecord>,
    finished: &mut dyn FnMut(&LayerRecord) -> Result<()>,
) -> Result<(Counts, Vec<LayerRecord>)> {
    let convs = selected(model, layers)?;
    let original = Original::predict(model, io, data, options)?;
    let todo: Vec<&(usize, ConvInfo)> = convs.iter().filter(|(i, _)| !done.iter().any(|d| d.counts.index == *i)).collect();
    let stages = match plan {
        Plan::Screened(settings) if !todo.is_empty() => Some((settings, screen::Stages::new(data, &original, settings)?)),
        _ => None,
    };
    let label = match plan {
        Plan::Exact(Method::Naive) => "assessing filters (naive)",
        Plan::Exact(Method::Fast) => "assessing filters",
        Plan::Screened(_) => "assessing filters (screened)",
    };
    let mut progress = Progress::new(label, todo.iter().map(|(_, c)| c.filters).sum());
    let mut out = done;
    for (index, conv) in todo {
        let record = match (&stages, plan) {
            (Some((settings, stages)), _) => {
                let (correct, screen) = screen::layer(model, conv, io, stages, options, settings)?;
                progress.advance(conv.filters);
                LayerRecord { counts: LayerCounts { index: *index, name: conv.name.clone(), filters: conv.filters, correct }, screen: Some(screen) }
            }
            (None, Plan::Exact(method)) => LayerRecord { counts: assess_layer(model, io, data, options, *method, *index, &original, &mut progress)?.counts, screen: None },
            (None, Plan::Screened(_)) => return Err(Error::Internal("the screen's stages were not built".into())),
        };
        finished(&record)?;
        out.push(record);
    }
    progress.finish();
    out.retain(|l| convs.iter().any(|(i, _)| *i == l.counts.index));
    out.sort_by_key(|l| l.counts.index);
    let counts = Counts { total: data.len(), correct0: original.count(), layers: out.iter().map(|l| l.counts.clone()).collect() };
    Ok((counts, out))
}

/// Which implementation computes the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Naive,
    Fast,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Naive => "naive",
            Method::Fast => "fast",
        }
    }
}

/// How a run computes its counts: an exact method, or the screen.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Exact(Method),
    Screened(ScreenSettings),
}

/// Above this many (filter, T_val* image) pairs, `auto` screens. ResNet20 at the default T_val
/// (688 filters × 6 000 images, 4.1 M pairs) stays exact; the exact method runs about 4 000 pairs
/// a second on two cores (docs/assessment.md), so this is about two hours of exact assessment.
pub const AUTO_SCREEN_ABOVE: usize = 25_000_000;

impl Plan {
    /// The plan for `method` (`naive` picks the oracle) on `model` with `images` T_val* images:
    /// `auto` screens when the exact method's pairs, every assessable filter of the model (not
    /// only a shard's) × images, exceed [`AUTO_SCREEN_ABOVE`].
    pub fn choose(model: &ModelProto, method: AssessMethod, naive: bool, kappa: f64, seed: u64, images: usize) -> Result<Plan> {
        let screened = Plan::Screened(ScreenSettings::new(kappa, seed));
        Ok(match (naive, method) {
            (true, _) => Plan::Exact(Method::Naive),
            (false, AssessMethod::Exact) => Plan::Exact(Method::Fast),
            (false, AssessMethod::Screened) => screened,
            (false, AssessMethod::Auto) => {
                let filters: usize = assessable(model)?.iter().map(|c| c.filters).sum();
                if filters.saturating_mul(images) > AUTO_SCREEN_ABOVE { screened } else { Plan::Exact(Method::Fast) }
            }
        })
    }

    /// The artifact's `method`.
    pub fn name(&self) -> &'static str {
        match self {
            Plan::Exact(method) => method.name(),
            Plan::Screened(_) => "screened",
        }
    }

    pub fn screen(&self) -> Option<&ScreenSettings> {
        match self {
            Plan::Exact(_) => None,
            Plan::Screened(settings) => Some(settings),
        }
    }
}

/// What one `assess` run does besides the data and backend of the configuration.
#[derive(Debug, Clone, Default)]
pub struct AssessOptions {
    /// The oracle, whatever the configuration's `assess.method`.
    pub naive: bool,
    pub kappa: Option<f64>,
    pub shard: Option<Shard>,
    /// The artifact; finished layers are recorded beside it (`FILE.partial`) and a rerun resumes.
    pub out: Option<std::path::PathBuf>,
}

/// The `assess` command: loads the model and T_val*, assesses the layers (of the shard), resuming
/// from the partial artifact when there is one, writes the artifact atomically and returns it.
pub fn assess_model(model_path: &Path, config: &Config, options: &AssessOptions) -> Result<Assessment> {
    let kappa = options.kappa.unwrap_or(DEFAULT_KAPPA);
    let model = crate::analysis::load(model_path)?;
    let io = ModelIo::resolve(&model, &config.preprocess)?;
    let data = load_val_star(config)?;
    if data.is_empty() {
        return Err(Error::Config("the validation set is empty".into()));
    }
    let plan = Plan::choose(&model, config.assess.method, options.naive, kappa, config.data.seed, data.len())?;
    if config.assess.method == AssessMethod::Auto {
        crate::progress::info(&format!("assessment method: {} (auto)", plan.name()));
    }
    let backend = BackendOptions { kind: config.backend.kind, device: config.backend.device, threads: config.backend.threads };
    let total = assessable(&model)?.len();
    let layers = options.shard.map_or_else(|| (0..total).collect(), |s| s.layers(total));
    let model_sha256 = crate::units::spec::model_sha256(&model);
    let header = PartialHeader { model_sha256: model_sha256.clone(), data_fingerprint: data.fingerprint.clone(), images: data.len(), layers: layers.clone(), screen: plan.screen().cloned() };
    let partial = options.out.as_deref().map(partial_path);
    let done = partial.as_deref().map(|p| read_partial(p, &header)).unwrap_or_default();
    if !done.is_empty() {
        crate::progress::info(&format!("resuming: {} of {} layers already assessed", done.len(), layers.len()));
    }
    let mut writer = partial.map(|p| PartialWriter::create(p, &header, &done)).transpose()?;
    let start = Instant::now();
    let (counts, records) = assess_layers(&model, &io, &data, &backend, &plan, Some(&layers), done, &mut |layer| match writer.as_mut() {
        Some(w) => w.append(layer),
        None => Ok(()),
    })?;
    crate::progress::info(&format!("assessed in {:.1} s", start.elapsed().as_secs_f64()));
    let mut assessment = Assessment::from_counts(&counts, kappa, model_sha256, data.fingerprint, plan.name(), total)?;
    if let Some(settings) = plan.screen() {
        assessment = assessment.screened(settings, &records)?;
    }
    assessment.shard = options.shard;
    if let Some(out) = options.out.as_deref() {
        save(&assessment, out)?;
        drop(writer);
        let partial = partial_path(out);
        std::fs::remove_file(&partial).map_err(|e| Error::io(&partial, e))?;
    }
    Ok(assessment)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendKind;

    /// The bundled CIFAR-10 subset with the demo's preprocessing, `val` validation images.
    fn fixtures(val: usize) -> (Config, std::path::PathBuf) {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
        let mut config = Config::from_file(&fixtures.join("demo.yaml")).unwrap();
        config.data.val_size = Some(val);
        (config, fixtures.join("models"))
    }

    fn tract(threads: usize) -> BackendOptions {
        BackendOptions { kind: BackendKind::Tract, threads: Some(threads), ..BackendOptions::default() }
    }

    /// Sessions side by side (the masked images' chunks, T_val*'s batches) count exactly what one
    /// session counts: tiny_cnn's every filter (corrected and exact paths, several chunks per
    /// batch) and two ResNet20 layers (a residual block's first convolution, the last one).
    #[test]
    fn assess_counts_on_parallel_tract_sessions_equal_sequential() {
        let (config, models) = fixtures(10);
        let data = load_val_star(&config).unwrap();
        for (model, layers) in [("tiny_cnn_cifar10", None), ("resnet20_cifar10", Some(&[1, 18][..]))] {
            let model = crate::onnx::load_model(&models.join(format!("{model}.onnx"))).unwrap();
            let io = ModelIo::resolve(&model, &config.preprocess).unwrap();
            let sequential = fast(&model, &io, &data, &tract(1), layers).unwrap();
            assert!(sequential.layers.iter().any(|l| l.correct.iter().any(|&c| c != sequential.correct0)));
            for threads in [2, 3] {
                assert_eq!(fast(&model, &io, &data, &tract(threads), layers).unwrap(), sequential, "{threads} threads");
            }
        }
    }

    #[test]
    fn assess_naive_on_parallel_tract_sessions_equals_sequential() {
        let (config, models) = fixtures(10);
        let data = load_val_star(&config).unwrap();
        let model = crate::onnx::load_model(&models.join("tiny_cnn_cifar10.onnx")).unwrap();
        let io = ModelIo::resolve(&model, &config.preprocess).unwrap();
        let sequential = naive(&model, &io, &data, &tract(1), Some(&[0])).unwrap();
        assert_eq!(naive(&model, &io, &data, &tract(2), Some(&[0])).unwrap(), sequential);
        assert_eq!(fast(&model, &io, &data, &tract(2), Some(&[0])).unwrap(), sequential);
    }
}
