//! Stage 3 of DeepPatch (docs/specification.md §3.3): retrain the replacement filters of the β model, every
//! original weight frozen, on T_train° (drawn afresh each epoch), SGD with momentum and weight decay
//! on a cosine schedule; the epoch with the best accuracy on T_val° is kept.
//!
//! Each step runs the training-step graph that [`crate::autodiff::training_step`] generates from the
//! β model; the replacement weights and their momentum buffers are carried from step to step by the
//! backend (in device memory on a GPU). After every epoch a checkpoint is written to the run folder,
//! and a rerun with the same inputs resumes from it.

mod bn_adapt;
mod checkpoint;
mod draw;
mod schedule;
mod sensei;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ndarray::{ArrayD, IxDyn};
use prost::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use draw::epoch_draw;
pub use schedule::cosine;

use crate::assess::{self, Assessment};
use crate::autodiff::{training_step, StepOptions, TrainingStep};
use crate::backend::stepping::{open_stepping_session, Carried, SteppingSession};
use crate::backend::{BackendOptions, Pool};
use crate::config::{Config, LearningRate, ReplacementInit, Selection, AUTO_LEARNING_RATES};
use crate::data::split::{stratified_split, ValSize};
use crate::data::corruption::{tagged_fingerprint, training_groups, TrainingGroups};
use crate::data::{load_split, BatchStream, Corruption, Dataset, Preprocess, Split};
use crate::error::{Error, Result};
use crate::eval::{evaluate, preprocess_for, ModelIo, TestSet};
use crate::onnx::proto::ModelProto;
use crate::progress::{self, Progress};
use crate::tensor::Tensor;
use crate::units::spec::{find_conv, init_replacement, model_sha256};
use crate::units::{beta_model, Decision, PatchSpec, PatchedParams};

/// The training data: the training split without T_val, T_val itself, and the chosen corruptions'
/// variants of T_val (T_val*; T_val° is T_val clean and those variants) and draws for T_train°.
pub struct TrainData {
    /// The training split, with the training images of any folder corruption appended.
    pub images: Arc<Dataset>,
    /// T_train: the images trained on.
    pub train: Vec<usize>,
    /// T_val: the stratified validation split, the one assessment uses.
    pub val: Vec<usize>,
    /// The corruptions' validation levels and training draws.
    pub corrupted: TrainingGroups,
    pub preprocess: Preprocess,
    /// Fingerprint of T_val under the corruptions (see `corruption::tagged_fingerprint`).
    pub fingerprint: String,
}

impl TrainData {
    /// Loads the training split named by `config`, checked against the model's classes, and splits
    /// it as assessment does.
    pub fn load(model: &ModelProto, config: &Config) -> Result<TrainData> {
        let data = TrainData::load_data(config)?;
        ModelIo::resolve(model, &config.preprocess)?.check_classes(model, &data.images)?;
        Ok(data)
    }

    /// Loads the training split named by `config`, draws T_val (stratified, seeded) and builds the
    /// corruptions' levels on it.
    pub fn load_data(config: &Config) -> Result<TrainData> {
        let mut images = load_split(config.data_root()?, Split::Train, config.data.format)?;
        let size = config.data.val_size.map_or(ValSize::Fraction(config.data.val_fraction), ValSize::Count);
        let (train, val) = stratified_split(&images.labels, size, config.data.seed)?;
        let preprocess = preprocess_for(&config.preprocess, &images)?;
        if train.is_empty() {
            return Err(Error::Config(format!(
                "data: no training images are left once T_val ({} images) is held out of {}; lower data.val_size or data.val_fraction",
                val.len(),
                images.len()
            )));
        }
        let base = images.len();
        let val_fingerprint = images.subset(&val).fingerprint();
        let corrupted = training_groups(&config.data.corruption, &mut images, &train, &val, config.data.seed)?;
        let fingerprint = tagged_fingerprint(val_fingerprint, &config.data.corruption, &images, base);
        Ok(TrainData { images: Arc::new(images), train, val, corrupted, preprocess, fingerprint })
    }

    /// Images of T_val°: T_val clean and every corrupted level.
    pub fn val_images(&self) -> usize {
        self.val.len() + self.corrupted.val.iter().map(|g| g.items().count()).sum::<usize>()
    }

    /// The (image, corruption) pairs of T_train° in epoch `epoch` (see [`epoch_draw`]).
    pub fn epoch_draw(&self, seed: u64, epoch: usize) -> Vec<(usize, Corruption)> {
        epoch_draw(&self.train, seed, epoch, &self.corrupted.draws, self.images.images.height(), self.images.images.width())
    }

    /// T_val° as a test set: T_val clean, then every corrupted level.
    pub fn val_set(&self, batch_size: usize) -> TestSet<'_> {
        TestSet { data: self.images.clone(), indices: &self.val, groups: &self.corrupted.val, preprocess: &self.preprocess, batch_size }
    }
}

/// The patch to train: per assessed layer the first ⌊κ·m⌋ filters of its ranking blamed, with fresh
/// Kaiming-uniform replacements drawn from `seed` or, with `ReplacementInit::Original`, copies of
/// the blamed filters.
pub fn initial_spec(model: &ModelProto, assessment: &Assessment, kappa: f64, seed: u64, init: ReplacementInit) -> Result<PatchSpec> {
    if !(0.0..=1.0).contains(&kappa) {
        return Err(Error::Config(format!("kappa: {kappa} is not in [0, 1]")));
    }
    let sha = model_sha256(model);
    if assessment.model_sha256 != sha {
        return Err(Error::Config("the assessment was made for another model (its model_sha256 differs)".into()));
    }
    // A screen settles the boundary of one κ only; the rest of its ranking is estimated.
    if let Some(screen) = assessment.screen.as_ref().filter(|s| s.kappa != kappa) {
        return Err(Error::Config(format!("the screened assessment settled the blamed filters for κ = {}, not {kappa}; assess again with --kappa {kappa} or --method exact", screen.kappa)));
    }
    let convs = crate::analysis::convolutions(model)?;
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
    let mut layers = Vec::new();
    for layer in &assessment.layers {
        let blamed = assess::blamed(&layer.ranking, kappa);
        if !blamed.is_empty() {
            let conv = find_conv(&convs, &layer.name)?;
            let mut patch = init_replacement(conv, blamed, &mut rng);
            if init == ReplacementInit::Original {
                copy_blamed_filters(model, conv, &mut patch)?;
            }
            layers.push(patch);
        }
    }
    if layers.is_empty() {
        return Err(Error::Config(format!("kappa {kappa} blames no filter in any assessed layer")));
    }
    Ok(PatchSpec {
        format: crate::units::spec::SPEC_FORMAT,
        model_sha256: Some(sha),
        kappa,
        layers,
        decision: Decision::adapt_all(),
        metadata: BTreeMap::new(),
    })
}

/// Sets the replacement filters (and biases) of `patch` to the convolution's own blamed filters.
fn copy_blamed_filters(model: &ModelProto, conv: &crate::analysis::ConvInfo, patch: &mut crate::units::LayerPatch) -> Result<()> {
    let graph = model.graph.as_ref().ok_or_else(|| Error::InvalidGraph("the model has no graph".into()))?;
    let index = crate::onnx::graph::GraphIndex::new(graph)?;
    let node = &graph.node[conv.position];
    let original = |position: usize| -> Result<ArrayD<f32>> {
        let tensor = index.constant(&node.input[position]).ok_or_else(|| Error::Unsupported {
            node: conv.name.clone(),
            op_type: "Conv".into(),
            message: "its weights are not constant".into(),
        })?;
        Ok(crate::onnx::tensor::to_f32(tensor)?.select(ndarray::Axis(0), &patch.blamed))
    };
    patch.weight = original(1)?;
    if patch.bias.is_some() {
        patch.bias = Some(original(2)?);
    }
    Ok(())
}

/// One line of the training log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    pub learning_rate: f64,
    /// Mean cross-entropy and accuracy (percent) over the epoch's T_train° batches, each measured
    /// before that batch's update.
    pub loss: f64,
    pub train_accuracy: f64,
    /// Accuracy (percent) of the β model on T_val° after the epoch.
    pub val_accuracy: f64,
    pub seconds: f64,
    /// Training images per second (steps only, validation excluded).
    pub images_per_second: f64,
}

/// What a training run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    pub backend: String,
    pub train_images: usize,
    pub val_images: usize,
    pub data_fingerprint: String,
    /// Accuracy (percent) of the original model on T_val°.
    pub original_val_accuracy: f64,
    pub best_epoch: Option<usize>,
    pub best_val_accuracy: f64,
    /// Whether the patch (the best epoch, with `bn_adapt` its re-estimated statistics) beats the
    /// original model on T_val°; if it does not, the patch must not be used.
    pub improved: bool,
    /// With `bn_adapt`: the layers whose replacement statistics were re-estimated, and the T_val°
    /// accuracy of the best epoch's weights with them.
    pub bn_adapted_layers: Option<usize>,
    pub bn_adapt_val_accuracy: Option<f64>,
    /// Recoveries from a diverging loss (each: where, and the learning-rate factor after it).
    #[serde(default)]
    pub recoveries: Vec<String>,
    /// With `learning_rate: auto`: each candidate rate and its T_val° accuracy after the trial.
    #[serde(default)]
    pub learning_rate_trials: Vec<RateTrial>,
    pub epochs: Vec<EpochRecord>,
}

/// A trained patch: the best epoch's replacement weights (decision: adapt every sample, the DP-β
/// model, until calibration sets it) and the summary.
pub struct Trained {
    pub spec: PatchSpec,
    pub summary: TrainSummary,
}

/// Files of a run folder.
pub fn spec_path(run: &Path) -> PathBuf {
    run.join("spec.json")
}

/// The files a training run writes at the top of its folder (for the output policy's checks).
pub fn run_files(run: &Path) -> Vec<PathBuf> {
    ["spec.json", "spec.npz", "train.json", "train.csv", "checkpoint.json"].iter().map(|name| run.join(name)).collect()
}

/// Trains `initial`'s replacement filters on `data` as `config.train` says, checkpointing to and
/// resuming from `run`; writes `run/spec.json` (+ `.npz`), `run/train.csv` and `run/train.json`.
pub fn train(model: &ModelProto, initial: &PatchSpec, data: &TrainData, config: &Config, run: &Path) -> Result<Trained> {
    let settings = &config.train;
    let io = ModelIo::resolve(model, &config.preprocess)?;
    let options = BackendOptions { kind: config.backend.kind, device: config.backend.device, threads: config.backend.threads };
    let StepGraph { step, slots, .. } = step_graph(model, initial, config, &io)?;
    let identity = identity(model, initial, data, config);

    let saved = checkpoint::load(run, &identity)?;
    std::fs::create_dir_all(run).map_err(|e| Error::io(run, e))?;
    let (mut current, mut momentum, mut best, mut log) = match saved {
        Some(saved) => {
            progress::info(&format!("resuming from {} after epoch {}", run.join("checkpoint.json").display(), saved.checkpoint.epochs_done));
            (saved.current, saved.momentum, saved.best, saved.checkpoint)
        }
        None => {
            let original_correct = val_correct(model, data, config, &io, &options)?;
            let log = checkpoint::Checkpoint {
                format: 0,
                identity: identity.clone(),
                epochs_done: 0,
                original_correct,
                val_images: data.val_images(),
                best_epoch: None,
                best_correct: 0,
                records: Vec::new(),
                learning_rate_scale: 1.0,
                recoveries: Vec::new(),
                learning_rate: None,
                learning_rate_trials: Vec::new(),
                current: String::new(),
                momentum: String::new(),
                best: String::new(),
                sha256: String::new(),
            };
            (initial.clone(), BTreeMap::new(), initial.clone(), log)
        }
    };

    let open = |current: &PatchSpec, momentum: &BTreeMap<String, ArrayD<f32>>| {
        open_stepping_session(&step.model.encode_to_vec(), &options, carried(&slots, current, momentum)?)
    };
    let mut session = open(&current, &momentum)?;
    let outputs = Outputs::find(session.as_ref(), &step)?;
    let base_rate = match (settings.learning_rate, log.learning_rate) {
        (LearningRate::Fixed(rate), _) | (LearningRate::Auto, Some(rate)) => rate,
        (LearningRate::Auto, None) => {
            let trials = rate_trials(&|| open(initial, &BTreeMap::new()), model, initial, &step, &outputs, &slots, data, config, log.val_images)?;
            let chosen = chosen_rate(&trials);
            progress::info(&format!("learning rate: {chosen} chosen (train.learning_rate: auto)"));
            log.learning_rate_trials = trials;
            chosen
        }
    };
    log.learning_rate = Some(base_rate);
    let mut epoch = log.epochs_done;
    while epoch < settings.epochs {
        let started = Instant::now();
        let learning_rate = cosine(base_rate, epoch, settings.t_max) * log.learning_rate_scale;
        let items = epoch_items(model, &current, data, config, epoch, None)?;
        let (loss, correct) = match run_epoch(session.as_mut(), &step, &outputs, data, config, items, epoch, learning_rate, None)? {
            EpochEnd::Finished { loss, correct } => (loss, correct),
            EpochEnd::Diverged { batch, loss } => {
                let what = format!("epoch {}, batch {batch}: the loss is {loss:.4e} at learning rate {learning_rate:.3e}", epoch + 1);
                if log.recoveries.len() >= MAX_RECOVERIES {
                    let kept = match log.epochs_done {
                        0 => "no epoch finished, so there is no checkpoint".to_string(),
                        done => format!("the last good checkpoint (epoch {done}) is kept in {}", run.join("checkpoint.json").display()),
                    };
                    return Err(Error::Training(format!(
                        "{what}, still diverging after {MAX_RECOVERIES} recoveries ({}); lower train.learning_rate; {kept}",
                        log.recoveries.join("; ")
                    )));
                }
                // Back to the state at the start of the epoch (weights and momenta), a tenth of the rate.
                log.learning_rate_scale *= RECOVERY_FACTOR;
                let line = format!("{what}: restarting the epoch from its start with the learning rate × {:.0e}", log.learning_rate_scale);
                progress::info(&format!("recovering from a diverging loss: {line}"));
                log.recoveries.push(line);
                session = open(&current, &momentum)?;
                continue;
            }
        };
        let steps_seconds = started.elapsed().as_secs_f64();
        (current, momentum) = read_state(session.as_ref(), &slots, &current)?;
        let val = val_correct(&beta_model(model, &current)?.0, data, config, &io, &options)?;
        let percent = |count: usize, total: usize| 100.0 * count as f64 / total.max(1) as f64;
        if log.best_epoch.is_none() || val > log.best_correct {
            best = current.clone();
            log.best_epoch = Some(epoch + 1);
            log.best_correct = val;
        }
        log.records.push(EpochRecord {
            epoch: epoch + 1,
            learning_rate,
            loss,
            train_accuracy: percent(correct, data.train.len()),
            val_accuracy: percent(val, log.val_images),
            seconds: started.elapsed().as_secs_f64(),
            images_per_second: data.train.len() as f64 / steps_seconds.max(1e-9),
        });
        log.epochs_done = epoch + 1;
        let record = &log.records[log.records.len() - 1];
        progress::info(&format!(
            "epoch {}/{}: loss {:.4}, train {:.2} %, T_val° {:.2} % (original {:.2} %), {:.0} img/s",
            record.epoch,
            settings.epochs,
            record.loss,
            record.train_accuracy,
            record.val_accuracy,
            percent(log.original_correct, log.val_images),
            record.images_per_second
        ));
        checkpoint::save(run, log.clone(), &current, &momentum, &best)?;
        write_log(run, &log.records)?;
        epoch += 1;
    }

    let percent = |count: usize| 100.0 * count as f64 / log.val_images.max(1) as f64;
    let mut spec = best;
    let (mut bn_adapted_layers, mut bn_adapt_val_accuracy) = (None, None);
    let mut final_correct = log.best_correct;
    if settings.bn_adapt {
        let layers = bn_adapt::adapt(model, &mut spec, data, config, &io, &options)?;
        let correct = val_correct(&beta_model(model, &spec)?.0, data, config, &io, &options)?;
        final_correct = correct;
        progress::info(&format!(
            "bn_adapt: {layers} layers re-estimated; T_val° {:.2} % (before {:.2} %)",
            percent(correct),
            percent(log.best_correct)
        ));
        bn_adapted_layers = Some(layers);
        bn_adapt_val_accuracy = Some(percent(correct));
    }
    let improved = log.best_epoch.is_some() && final_correct > log.original_correct;
    if !improved {
        progress::info("no epoch beat the original model on T_val°: the patch must not be used (the pipeline keeps the original model)");
    }
    let summary = TrainSummary {
        backend: format!("{} ({})", config.backend.kind, config.backend.device),
        train_images: data.train.len(),
        val_images: log.val_images,
        data_fingerprint: data.fingerprint.clone(),
        original_val_accuracy: percent(log.original_correct),
        best_epoch: log.best_epoch,
        best_val_accuracy: percent(log.best_correct),
        improved,
        bn_adapted_layers,
        bn_adapt_val_accuracy,
        recoveries: log.recoveries.clone(),
        learning_rate_trials: log.learning_rate_trials.clone(),
        epochs: log.records.clone(),
    };
    spec.metadata.insert("training".into(), format!(
        "{} epochs on {}, best epoch {:?}: T_val° {:.2} % (original {:.2} %)",
        log.epochs_done, summary.backend, summary.best_epoch, summary.best_val_accuracy, summary.original_val_accuracy
    ));
    spec.metadata.insert("data_fingerprint".into(), data.fingerprint.clone());
    spec.save(&spec_path(run))?;
    let json = serde_json::to_string_pretty(&summary).map_err(|e| Error::Internal(e.to_string()))?;
    crate::onnx::io::write_atomically(&run.join("train.json"), format!("{json}\n").as_bytes())?;
    Ok(Trained { spec, summary })
}

/// The training step of a patch's β model, its replacement tensors the only trainable ones.
pub struct StepGraph {
    pub beta: ModelProto,
    pub step: TrainingStep,
    slots: Vec<Slot>,
}

impl StepGraph {
    /// The carried tensors that start training from `spec`'s replacement weights, momenta zero.
    pub fn carried(&self, spec: &PatchSpec) -> Result<Vec<Carried>> {
        carried(&self.slots, spec, &BTreeMap::new())
    }
}

/// Builds the step graph of `spec`'s β model with the SGD settings of `config.train`.
pub fn step_graph(model: &ModelProto, spec: &PatchSpec, config: &Config, io: &ModelIo) -> Result<StepGraph> {
    let (beta, params) = beta_model(model, spec)?;
    let trainable: Vec<&str> =
        params.iter().flat_map(|p| std::iter::once(p.replacement_weight.as_str()).chain(p.replacement_bias.as_deref())).collect();
    let t = &config.train;
    let options = StepOptions { momentum: t.momentum, weight_decay: t.weight_decay, logits: Some(io.output.clone()) };
    let step = training_step(&beta, &trainable, &options)?;
    let slots = slots(&params, &step)?;
    Ok(StepGraph { beta, step, slots })
}

/// One trained tensor: its key in spec files (`layer<i>.weight`/`.bias`) and its step interface.
struct Slot {
    layer: usize,
    bias: bool,
    parameter: crate::autodiff::Parameter,
}

impl Slot {
    fn key(&self) -> String {
        format!("layer{}.{}", self.layer, if self.bias { "bias" } else { "weight" })
    }

    fn value<'s>(&self, spec: &'s PatchSpec) -> Result<&'s ArrayD<f32>> {
        let layer = &spec.layers[self.layer];
        if self.bias { layer.bias.as_ref().ok_or_else(|| Error::Internal(format!("{}: no bias", layer.conv))) } else { Ok(&layer.weight) }
    }
}

fn slots(params: &[PatchedParams], step: &TrainingStep) -> Result<Vec<Slot>> {
    let find = |name: &str| {
        step.parameters
            .iter()
            .find(|p| p.name == name)
            .cloned()
            .ok_or_else(|| Error::Internal(format!("the step graph does not train '{name}'")))
    };
    let mut slots = Vec::new();
    for (layer, p) in params.iter().enumerate() {
        slots.push(Slot { layer, bias: false, parameter: find(&p.replacement_weight)? });
        if let Some(bias) = &p.replacement_bias {
            slots.push(Slot { layer, bias: true, parameter: find(bias)? });
        }
    }
    Ok(slots)
}

/// The carried tensors of the step: every trained tensor and its momentum buffer (zeros at first,
/// which reproduces PyTorch's first step exactly).
fn carried(slots: &[Slot], spec: &PatchSpec, momentum: &BTreeMap<String, ArrayD<f32>>) -> Result<Vec<Carried>> {
    let mut carried = Vec::new();
    for slot in slots {
        let value = slot.value(spec)?;
        let buffer = momentum.get(&slot.key()).cloned().unwrap_or_else(|| ArrayD::zeros(value.raw_dim()));
        if buffer.shape() != value.shape() {
            return Err(Error::Internal(format!("{}: momentum buffer of shape {:?}", slot.key(), buffer.shape())));
        }
        carried.push(Carried { input: slot.parameter.name.clone(), output: slot.parameter.updated.clone(), value: Tensor::F32(value.clone()) });
        carried.push(Carried {
            input: slot.parameter.momentum.clone(),
            output: slot.parameter.updated_momentum.clone(),
            value: Tensor::F32(buffer),
        });
    }
    Ok(carried)
}

/// The session's carried state as a spec (the weights) and momentum buffers.
fn read_state(session: &dyn SteppingSession, slots: &[Slot], template: &PatchSpec) -> Result<(PatchSpec, BTreeMap<String, ArrayD<f32>>)> {
    let mut state: BTreeMap<String, Tensor> = session.state()?.into_iter().collect();
    let mut take = |name: &str| -> Result<ArrayD<f32>> {
        state.remove(name).ok_or_else(|| Error::Internal(format!("the session lost '{name}'")))?.into_f32()
    };
    let mut spec = template.clone();
    let mut momentum = BTreeMap::new();
    for slot in slots {
        let value = take(&slot.parameter.name)?;
        let layer = &mut spec.layers[slot.layer];
        if slot.bias {
            layer.bias = Some(value);
        } else {
            layer.weight = value;
        }
        momentum.insert(slot.key(), take(&slot.parameter.momentum)?);
    }
    Ok((spec, momentum))
}

/// Positions of the loss and the correct count among the step's returned outputs.
struct Outputs {
    loss: usize,
    correct: usize,
}

impl Outputs {
    fn find(session: &dyn SteppingSession, step: &TrainingStep) -> Result<Outputs> {
        let position = |name: &str| {
            session.output_names().iter().position(|n| n == name).ok_or_else(|| Error::Internal(format!("the step lost output '{name}'")))
        };
        Ok(Outputs { loss: position(&step.loss)?, correct: position(&step.correct)? })
    }
}

/// One candidate of `learning_rate: auto`: its T_val° accuracy (percent) after training from the
/// initial patch for [`TRIAL_SHARE`] of an epoch, `None` when its loss diverged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateTrial {
    pub learning_rate: f64,
    pub val_accuracy: Option<f64>,
}

/// The share of an epoch each candidate rate trains for.
pub const TRIAL_SHARE: f64 = 0.25;

/// Trains a copy of the initial patch with each of [`AUTO_LEARNING_RATES`] for [`TRIAL_SHARE`] of
/// the first epoch and measures it on T_val°. The trials are thrown away: training proper starts
/// from the initial patch, so a run is the same whether its rate was given or chosen.
#[allow(clippy::too_many_arguments)]
fn rate_trials(
    open: &dyn Fn() -> Result<Box<dyn SteppingSession>>,
    model: &ModelProto,
    initial: &PatchSpec,
    step: &TrainingStep,
    outputs: &Outputs,
    slots: &[Slot],
    data: &TrainData,
    config: &Config,
    val_images: usize,
) -> Result<Vec<RateTrial>> {
    let io = ModelIo::resolve(model, &config.preprocess)?;
    let options = BackendOptions { kind: config.backend.kind, device: config.backend.device, threads: config.backend.threads };
    let batches = ((data.train.len() as f64 * TRIAL_SHARE) / config.train.batch_size as f64).ceil().max(1.0) as usize;
    let mut trials = Vec::new();
    for rate in AUTO_LEARNING_RATES {
        let mut session = open()?;
        let items = epoch_items(model, initial, data, config, 0, Some(batches.saturating_mul(config.train.batch_size)))?;
        let val_accuracy = match run_epoch(session.as_mut(), step, outputs, data, config, items, 0, rate, Some(batches))? {
            EpochEnd::Finished { .. } => {
                let (trained, _) = read_state(session.as_ref(), slots, initial)?;
                let correct = val_correct(&beta_model(model, &trained)?.0, data, config, &io, &options)?;
                Some(100.0 * correct as f64 / val_images.max(1) as f64)
            }
            EpochEnd::Diverged { .. } => None,
        };
        let outcome = val_accuracy.map_or("the loss diverged".to_string(), |a| format!("T_val° {a:.2} %"));
        progress::info(&format!("learning-rate trial {rate}: {outcome} after {batches} batches"));
        trials.push(RateTrial { learning_rate: rate, val_accuracy });
    }
    Ok(trials)
}

/// The trial rate best on T_val°; on a tie the smaller rate, and the smallest when all diverged.
fn chosen_rate(trials: &[RateTrial]) -> f64 {
    let smallest = trials.iter().map(|t| t.learning_rate).fold(f64::INFINITY, f64::min);
    trials
        .iter()
        .filter_map(|t| Some((t.val_accuracy?, t.learning_rate)))
        .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)))
        .map_or(smallest, |(_, rate)| rate)
}

/// How many times a diverging loss is recovered from before training gives up.
pub const MAX_RECOVERIES: usize = 3;
/// The factor on the learning rate at each recovery.
pub const RECOVERY_FACTOR: f64 = 0.1;
/// A batch loss this many times the epoch's first batch loss (at least ln 2) counts as diverging.
const EXPLOSION_FACTOR: f64 = 5.0;

/// How an epoch ended.
enum EpochEnd {
    /// The mean loss and the number of correct predictions.
    Finished { loss: f64, correct: usize },
    /// A batch (1-based) whose loss is not finite or exploded; the session's state is spoiled.
    Diverged { batch: usize, loss: f64 },
}

/// The T_train° pairs of epoch `epoch`: the draw, and with `train.selection: sensei` each spatial
/// variant replaced by the worst of its candidates under the β model of `spec`.
/// Only the first `limit` pairs are kept (and selected among) when a limit is given.
fn epoch_items(model: &ModelProto, spec: &PatchSpec, data: &TrainData, config: &Config, epoch: usize, limit: Option<usize>) -> Result<Vec<(usize, Corruption)>> {
    let mut items = data.epoch_draw(config.data.seed, epoch);
    items.truncate(limit.unwrap_or(usize::MAX));
    if config.train.selection == Selection::Sensei {
        let io = ModelIo::resolve(model, &config.preprocess)?;
        let options = BackendOptions { kind: config.backend.kind, device: config.backend.device, threads: config.backend.threads };
        sensei::select(&mut items, &beta_model(model, spec)?.0, data, config, &io, &options, epoch)?;
    }
    Ok(items)
}

/// One epoch over T_train°, the pairs `items` (image, corruption) in training order.
#[allow(clippy::too_many_arguments)]
fn run_epoch(
    session: &mut dyn SteppingSession,
    step: &TrainingStep,
    outputs: &Outputs,
    data: &TrainData,
    config: &Config,
    mut items: Vec<(usize, Corruption)>,
    epoch: usize,
    learning_rate: f64,
    batch_limit: Option<usize>,
) -> Result<EpochEnd> {
    let task = match batch_limit {
        Some(batches) => {
            items.truncate(batches.saturating_mul(config.train.batch_size));
            format!("learning-rate trial {learning_rate}")
        }
        None => format!("epoch {}/{}", epoch + 1, config.train.epochs),
    };
    let total = items.len();
    let stream = BatchStream::mixed(data.images.clone(), items, data.preprocess.clone(), config.train.batch_size);
    let rate = Tensor::F32(ArrayD::from_elem(IxDyn(&[]), learning_rate as f32));
    let mut progress = Progress::new(task, total);
    let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
    let mut first_loss = None;
    for (number, batch) in stream.enumerate() {
        let batch = batch?;
        let count = batch.labels.len();
        let images = Tensor::F32(batch.input);
        let labels = Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[count]), batch.labels).map_err(|e| Error::Internal(e.to_string()))?);
        let results = session.step(&[(&step.images, &images), (&step.labels, &labels), (&step.learning_rate, &rate)])?;
        let loss = f64::from(results[outputs.loss].as_f32()?.iter().next().copied().unwrap_or(f32::NAN));
        let reference = *first_loss.get_or_insert(loss);
        if !loss.is_finite() || loss > EXPLOSION_FACTOR * reference.max(std::f64::consts::LN_2) {
            progress.finish();
            return Ok(EpochEnd::Diverged { batch: number + 1, loss });
        }
        loss_sum += loss * count as f64;
        correct += results[outputs.correct].as_i64()?.iter().sum::<i64>().max(0) as usize;
        seen += count;
        progress.advance(count);
        progress.set_detail(format!("loss {:.4}, accuracy {:.2} %", loss_sum / seen as f64, 100.0 * correct as f64 / seen as f64));
    }
    progress.finish();
    Ok(EpochEnd::Finished { loss: loss_sum / seen.max(1) as f64, correct })
}

/// Correct predictions of `model` on T_val° (T_val clean and every corrupted level).
fn val_correct(model: &ModelProto, data: &TrainData, config: &Config, io: &ModelIo, options: &BackendOptions) -> Result<usize> {
    let mut pool = Pool::open(&model.encode_to_vec(), options)?;
    Ok(evaluate(&mut pool, io, &data.val_set(config.eval.batch_size))?.total_correct())
}

/// What makes two runs the same run, hashed: the model, the initial patch (filters and weights),
/// T_val and T_train, and every setting but the number of epochs.
fn identity(model: &ModelProto, initial: &PatchSpec, data: &TrainData, config: &Config) -> String {
    let mut hash = Sha256::new();
    hash.update(model_sha256(model));
    for layer in &initial.layers {
        hash.update(layer.conv.as_bytes());
        layer.blamed.iter().for_each(|b| hash.update((*b as u64).to_le_bytes()));
        layer.weight.iter().chain(layer.bias.iter().flatten()).for_each(|v| hash.update(v.to_le_bytes()));
    }
    hash.update(&data.fingerprint);
    hash.update((data.train.len() as u64).to_le_bytes());
    let t = &config.train;
    hash.update(format!(
        "{} {} {} {} {} {} {} {:?}",
        t.batch_size, t.learning_rate, t.momentum, t.weight_decay, t.t_max, config.data.seed, config.backend.kind, config.preprocess
    ));
    // Random selection, the default, adds nothing: the identity of runs made before the choice existed holds.
    if t.selection != Selection::Random {
        hash.update(format!(" selection {:?}", t.selection));
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes the log as CSV.
fn write_log(run: &Path, records: &[EpochRecord]) -> Result<()> {
    let mut text = String::from("epoch,learning_rate,loss,train_accuracy,val_accuracy,seconds,images_per_second\n");
    for r in records {
        text += &format!(
            "{},{},{:.6},{:.4},{:.4},{:.2},{:.1}\n",
            r.epoch, r.learning_rate, r.loss, r.train_accuracy, r.val_accuracy, r.seconds, r.images_per_second
        );
    }
    crate::onnx::io::write_atomically(&run.join("train.csv"), text.as_bytes())
}

/// Loads the model, the assessment and the data named by `config`, and trains (see [`train`]).
pub fn train_model(model_path: &Path, assessment_path: &Path, kappa: f64, config: &Config, run: &Path) -> Result<Trained> {
    let model = crate::analysis::load(model_path)?;
    let assessment = assess::load(assessment_path)?;
    let data = TrainData::load(&model, config)?;
    if assessment.data_fingerprint != data.fingerprint {
        progress::info("note: the assessment was made on other validation data than this training run's T_val");
    }
    let initial = initial_spec(&model, &assessment, kappa, config.data.seed, config.train.init)?;
    train(&model, &initial, &data, config, run)
}
