//! The fast method for one layer: the upstream part once per batch, the downstream part on masked
//! copies of the frontier, several (channel, image) variants stacked along the batch axis per
//! call, and no run at all for a variant that is the original image.
//!
//! Skipping is exact, not a heuristic: when channel j of image i already holds at the cut, bit for
//! bit, what the α model writes there, the α model computes exactly what the original model
//! computes on image i (its other channels are the original ones: the mask multiplies them by one,
//! and runtimes fold it into the weights), so its prediction is the original prediction, which
//! [`Original`] holds. After a ReLU these are the channels an image leaves at zero everywhere:
//! 2–22 % of (channel, image) pairs in ResNet20's layers on blurred images.

use std::borrow::Cow;

use ndarray::{ArrayD, Axis, IxDyn, Slice};

use super::correct::{decided, Consumer, Correction};
use super::cut::{cut, downstream_model, upstream_model, Cut};
use super::{correct_rows, encode, output_position, Original, ValStar};
use crate::analysis::ConvInfo;
use crate::backend::{open_session, BackendOptions, Pool, Session};
use crate::error::{Error, Result};
use crate::eval::ModelIo;
use crate::onnx::graph::GraphIndex;
use crate::onnx::proto::ModelProto;
use crate::tensor::Tensor;
use crate::units::alpha_model;

/// Masked images per downstream call.
const VARIANT_ROWS: usize = 256;

/// At most this many bytes of one layer's upstream values are kept for the next layer ([`Kept`]).
const KEPT_BYTES: usize = 512 << 20;

/// One masked image: (channel zeroed, image within the batch).
type Variant = (usize, usize);

/// What the fast method did on one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FastRun {
    /// Correct predictions per channel (0 for a channel outside the subset run).
    pub correct: Vec<usize>,
    /// Per channel, the images (positions in T_val*, in order) whose prediction the masked model
    /// gets right where the original gets it wrong (`true`) or the reverse (`false`). Recorded only
    /// for a channel subset (the screen reads them); empty otherwise, so an exact run keeps no
    /// per-image record.
    pub flips: Vec<Vec<(usize, bool)>>,
    /// Masked images the backend ran (the others kept their original prediction), those of them
    /// that went through the consumer-convolution correction, and those of these rerun on the
    /// exact path because their logits were close to a tie.
    pub rows_run: usize,
    pub rows_corrected: usize,
    pub rows_rerun: usize,
}

impl FastRun {
    /// Counts the masked image of channel `j` and T_val* image `image`: `ok` its answer,
    /// `original` the original model's.
    fn tally(&mut self, j: usize, image: usize, ok: bool, original: bool) -> Result<()> {
        let correct = self.correct.get_mut(j).ok_or_else(|| Error::Internal(format!("channel {j} is not in the layer")))?;
        *correct += usize::from(ok);
        if let Some(flips) = self.flips.get_mut(j).filter(|_| ok != original) {
            flips.push((image, ok));
        }
        Ok(())
    }
}

/// Correct predictions per channel of `conv` on T_val*, and how the masked images were run; only
/// the channels `only` marks when given (a filter on the (channel, image) pairs, so every other
/// pair is run exactly as without it).
pub(super) fn layer(model: &ModelProto, conv: &ConvInfo, io: &ModelIo, data: &ValStar, options: &BackendOptions, original: &Original, only: Option<&[bool]>) -> Result<FastRun> {
    if only.is_some_and(|only| only.len() != conv.filters) {
        return Err(Error::Internal(format!("a channel subset for {} filters", conv.filters)));
    }
    let graph = model.graph.as_ref().ok_or_else(|| Error::InvalidGraph("the model has no graph".into()))?;
    let cut = cut(graph, conv)?;
    let first = data.batches.first().ok_or_else(|| Error::Config("the validation set is empty".into()))?;
    let fill = fill(model, conv, &cut, io, first, options)?.insert_axis(Axis(0));
    let correction = Correction::plan(graph, &cut, conv.filters)?;
    // The upstream part computes the exact path's frontier and what the corrected path needs.
    let mut names = cut.frontier.clone();
    for name in correction.iter().flat_map(Correction::upstream_values) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    // It starts from the values the previous layer's upstream part computed, where it can.
    let previous = std::mem::take(&mut *original.kept.lock().map_err(|_| Error::Internal("kept values poisoned".into()))?);
    let usable = previous.batches.len() == data.batches.len();
    let kept: Vec<(&str, &Tensor)> = match previous.batches.first() {
        Some(values) if usable => previous.names.iter().map(String::as_str).zip(values).collect(),
        _ => Vec::new(),
    };
    let upstream = match &correction {
        Some(correction) => correction.upstream(model, &cut, &fill, &names, &kept)?,
        None => upstream_model(model, &names, &kept)?,
    };
    let mut upstream = open_session(&encode(&upstream), options)?;
    let order: Vec<usize> = names.iter().map(|f| output_position(upstream.output_names(), f)).collect::<Result<_>>()?;
    // Per input of the upstream part: the image, or the position of a kept value.
    let inputs: Vec<(String, Option<usize>)> = upstream
        .input_names()
        .iter()
        .map(|name| match previous.names.iter().position(|k| k == name) {
            Some(k) => Ok((name.clone(), Some(k))),
            None if *name == io.input => Ok((name.clone(), None)),
            None => Err(Error::Internal(format!("the upstream part reads '{name}', which is neither the image nor kept"))),
        })
        .collect::<Result<_>>()?;
    // Runs batch `b`, or its first image alone.
    let mut run = |b: usize, first_image: bool| -> Result<Vec<Tensor>> {
        let values: Vec<Cow<Tensor>> = inputs
            .iter()
            .map(|(_, kept)| {
                let value = match kept {
                    Some(k) => &previous.batches[b][*k],
                    None => &data.batches[b],
                };
                Ok(match value {
                    Tensor::F32(a) if first_image && a.ndim() > 0 && a.len_of(Axis(0)) == data.labels[b].len() => Cow::Owned(Tensor::F32(a.slice_axis(Axis(0), Slice::from(0..1)).to_owned())),
                    _ => Cow::Borrowed(value),
                })
            })
            .collect::<Result<_>>()?;
        let fed: Vec<(&str, &Tensor)> = inputs.iter().map(|(name, _)| name.as_str()).zip(values.iter().map(|v| v.as_ref())).collect();
        ordered(upstream.run(&fed)?, &order)
    };
    let mut outputs = Some(run(0, false)?);
    let constant_integers = integers_ignore_the_batch(outputs.as_deref().unwrap_or_default(), || run(0, true))?;
    let mut layer = LayerRun {
        model,
        conv,
        cut: &cut,
        correction: correction.as_ref(),
        fill: &fill,
        names: &names,
        logits: &io.output,
        options,
        constant_integers,
        only,
        exact: None,
        corrected: None,
        run: FastRun { correct: vec![0; conv.filters], flips: if only.is_some() { vec![Vec::new(); conv.filters] } else { Vec::new() }, rows_run: 0, rows_corrected: 0, rows_rerun: 0 },
    };
    // This layer's values of the original graph, kept for the next layer within KEPT_BYTES.
    let index = GraphIndex::new(graph)?;
    let first_outputs = outputs.as_deref().unwrap_or_default();
    let keep: Vec<usize> = (0..names.len()).filter(|&p| index.producer(&names[p]).is_some() && matches!(first_outputs.get(p), Some(Tensor::F32(_)))).collect();
    let mut this = Kept { names: keep.iter().map(|&p| names[p].clone()).collect(), batches: Vec::new() };
    let (mut bytes, mut offset) = (0, 0);
    for (b, (labels, correct)) in data.labels.iter().zip(&original.correct).enumerate() {
        let outputs = match outputs.take() {
            Some(first) => first,
            None => run(b, false)?,
        };
        layer.images(&outputs, labels, correct, offset)?;
        offset += labels.len();
        bytes += keep.iter().map(|&p| outputs[p].shape().iter().product::<usize>() * 4).sum::<usize>();
        if bytes <= KEPT_BYTES {
            this.batches.push(keep.iter().map(|&p| outputs[p].clone()).collect());
        }
    }
    if this.batches.len() == data.batches.len() {
        *original.kept.lock().map_err(|_| Error::Internal("kept values poisoned".into()))? = this;
    }
    Ok(layer.run)
}

/// The values of the original graph an upstream part computed on every batch of T_val*, kept for
/// the next layer's upstream part to start from (a layer's upstream part would otherwise compute
/// them again from the image).
#[derive(Debug, Default)]
pub struct Kept {
    names: Vec<String>,
    batches: Vec<Vec<Tensor>>,
}

/// `outputs` at `order`.
fn ordered(outputs: Vec<Tensor>, order: &[usize]) -> Result<Vec<Tensor>> {
    let mut outputs: Vec<Option<Tensor>> = outputs.into_iter().map(Some).collect();
    order.iter().map(|&p| outputs.get_mut(p).and_then(Option::take).ok_or_else(|| Error::Internal("an upstream output is missing or repeated".into()))).collect()
}

/// Whether the integer values among `outputs` (the upstream part's on a batch) are the same for
/// the batch's first image alone (`first_image`): then they do not depend on the batch and can be constants of
/// the downstream part.
fn integers_ignore_the_batch(outputs: &[Tensor], first_image: impl FnOnce() -> Result<Vec<Tensor>>) -> Result<bool> {
    let integers = |outputs: &[Tensor]| -> Vec<Tensor> { outputs.iter().filter(|t| matches!(t, Tensor::I64(_))).cloned().collect() };
    let whole = integers(outputs);
    if whole.is_empty() {
        return Ok(true);
    }
    Ok(integers(&first_image()?) == whole)
}

/// The sessions of a downstream part and the position of the logits among its outputs.
struct Open {
    pool: Pool,
    logits: usize,
}

/// One layer's state while its batches are run.
struct LayerRun<'a> {
    model: &'a ModelProto,
    conv: &'a ConvInfo,
    cut: &'a Cut,
    correction: Option<&'a Correction>,
    /// The fill, `[1, C, …]`.
    fill: &'a ArrayD<f32>,
    /// The values the upstream part computes, in the order of its outputs as [`ordered`].
    names: &'a [String],
    logits: &'a str,
    options: &'a BackendOptions,
    constant_integers: bool,
    /// The channels to run (all when `None`).
    only: Option<&'a [bool]>,
    /// The downstream part from the cut, and the one after the corrected convolutions; opened
    /// when first needed.
    exact: Option<Open>,
    corrected: Option<Open>,
    run: FastRun,
}

/// How a frontier value is fed for a call's variants.
enum Feed<'a> {
    /// Each variant's image with its channel overwritten by the replacement (`[1 or N, C, …]`).
    Masked(&'a ArrayD<f32>, &'a ArrayD<f32>),
    /// Each variant's own channel of its image, `[rows, 1, …]`.
    Channel(&'a ArrayD<f32>),
    /// The consumer's weights for the call's channel (a call holds variants of one channel).
    Weights(&'a Consumer),
    /// Each variant's image (the value itself when the variants are its images in order).
    Gathered(&'a Tensor),
    /// A value without the batch axis, as it is (a call then holds one channel's whole batch).
    Whole(&'a Tensor),
}

impl Feed<'_> {
    /// Whether the fed value holds one row per variant.
    fn per_sample(&self) -> bool {
        matches!(self, Feed::Masked(..) | Feed::Channel(_) | Feed::Gathered(_))
    }

    fn rows(&self, rows: &[Variant]) -> Result<Cow<'_, Tensor>> {
        Ok(match self {
            Feed::Masked(value, replacement) => Cow::Owned(Tensor::F32(masked(value, replacement, rows)?)),
            Feed::Channel(value) => Cow::Owned(Tensor::F32(channels(value, rows)?)),
            Feed::Weights(consumer) => {
                let &(j, _) = rows.first().ok_or_else(|| Error::Internal("a call without variants".into()))?;
                Cow::Owned(Tensor::F32(consumer.channel_weight(j)?))
            }
            Feed::Gathered(value) if rows.iter().enumerate().all(|(k, &(_, i))| k == i) && value.shape().first() == Some(&rows.len()) => Cow::Borrowed(*value),
            Feed::Gathered(value) => Cow::Owned(Tensor::F32(gather(value.as_f32()?, rows)?)),
            Feed::Whole(value) => Cow::Borrowed(*value),
        })
    }
}

/// The upstream value `name` among `outputs` (named `names`).
fn value<'o>(outputs: &'o [Tensor], names: &[String], name: &str) -> Result<&'o Tensor> {
    let position = names.iter().position(|n| n == name).ok_or_else(|| Error::Internal(format!("value '{name}' is not computed upstream")))?;
    Ok(&outputs[position])
}

/// How the inputs `frontier` of a downstream part are fed, each with its name (integer
/// constants of the downstream part are not), `special` deciding first, else the upstream value
/// of that name; and whether every call can stack variants of different images (every value fed
/// from upstream has the batch axis).
fn feeds<'o>(
    outputs: &'o [Tensor],
    names: &[String],
    frontier: &'o [String],
    n: usize,
    constant_integers: bool,
    special: impl Fn(&str) -> Result<Option<Feed<'o>>>,
) -> Result<(Vec<(&'o str, Feed<'o>)>, bool)> {
    let mut fed = Vec::new();
    let mut stackable = true;
    for name in frontier {
        let feed = match special(name)? {
            Some(feed) => feed,
            None => match value(outputs, names, name)? {
                Tensor::I64(_) if constant_integers => continue,
                tensor @ Tensor::F32(a) if a.ndim() > 0 && a.len_of(Axis(0)) == n => Feed::Gathered(tensor),
                other => {
                    stackable = false;
                    Feed::Whole(other)
                }
            },
        };
        fed.push((name.as_str(), feed));
    }
    Ok((fed, stackable))
}

impl LayerRun<'_> {
    /// Counts the variants of one batch: `outputs` (the upstream part's, [`ordered`]), the labels,
    /// whether the original model classifies each image correctly and the batch's position in T_val*.
    fn images(&mut self, outputs: &[Tensor], labels: &[i64], original: &[bool], offset: usize) -> Result<()> {
        let n = labels.len();
        let (fill, cut) = (self.fill, self.cut);
        let at_cut = outputs[0].as_f32()?;
        if at_cut.ndim() < 2 || at_cut.len_of(Axis(0)) != n || at_cut.shape()[1..] != fill.shape()[1..] {
            return Err(Error::Unsupported {
                node: self.conv.name.clone(),
                op_type: "Conv".into(),
                message: format!("value '{}' has shape {:?}, expected [{n}, {:?}]", cut.value, at_cut.shape(), &fill.shape()[1..]),
            });
        }
        let changed = changed(at_cut, fill)?;
        let (exact, stackable) = feeds(outputs, self.names, &cut.frontier, n, self.constant_integers, |name| Ok((name == cut.value).then_some(Feed::Masked(at_cut, fill))))?;
        let mut rows: Vec<Variant> = Vec::new();
        let mut correct = vec![0usize; self.conv.filters];
        let only = self.only;
        for (j, images) in changed.iter().enumerate().filter(|(j, _)| only.is_none_or(|only| only.get(*j) == Some(&true))) {
            if stackable {
                for (i, &differs) in images.iter().enumerate() {
                    if differs {
                        rows.push((j, i));
                    } else {
                        correct[j] += usize::from(original[i]);
                    }
                }
            } else if images.contains(&true) {
                rows.extend((0..n).map(|i| (j, i)));
            } else {
                correct[j] += original.iter().filter(|&&c| c).count();
            }
        }
        self.run.rows_run += rows.len();
        for (total, c) in self.run.correct.iter_mut().zip(correct) {
            *total += c;
        }
        let rerun = match self.correction.filter(|_| stackable) {
            Some(correction) => self.corrected(correction, outputs, rows, labels, original, offset)?,
            None => rows,
        };
        // The exact path: without a batch axis on some value, a call holds one channel's batch.
        if !rerun.is_empty() {
            let (model, names, logits, constant_integers) = (self.model, self.names, self.logits, self.constant_integers);
            let open = open(&mut self.exact, self.options, logits, || {
                let examples: Vec<Tensor> = cut.frontier.iter().map(|f| value(outputs, names, f).cloned()).collect::<Result<_>>()?;
                downstream_model(model, &cut.downstream, &cut.frontier, &examples, logits, constant_integers)
            })?;
            let chunks: Vec<&[Variant]> = rerun.chunks(if stackable { VARIANT_ROWS } else { n.max(1) }).collect();
            let at = open.logits;
            let results = open.pool.map(&chunks, |session, chunk| {
                let row_labels: Vec<i64> = chunk.iter().map(|&(_, i)| labels[i]).collect();
                correct_rows(&call(session, at, &exact, chunk)?, &row_labels)
            })?;
            for (chunk, results) in chunks.iter().zip(results) {
                for (&(j, i), ok) in chunk.iter().zip(results) {
                    self.run.tally(j, offset + i, ok, original.get(i) == Some(&true))?;
                }
            }
        }
        Ok(())
    }

    /// Runs the variants `rows` (grouped by channel) on the corrected path, counting those
    /// decided beyond doubt; returns the others, for the exact path (all of them when some value
    /// lacks the batch axis).
    fn corrected(&mut self, correction: &Correction, outputs: &[Tensor], rows: Vec<Variant>, labels: &[i64], original: &[bool], offset: usize) -> Result<Vec<Variant>> {
        let (names, fill) = (self.names, self.fill);
        let replacement = match &correction.masked {
            Some(masked) => value(outputs, names, masked)?.as_f32()?,
            None => fill,
        };
        let (fed, stackable) = feeds(outputs, names, &correction.frontier, labels.len(), self.constant_integers, |name| {
            if name == correction.delta {
                return Ok(Some(Feed::Channel(value(outputs, names, name)?.as_f32()?)));
            }
            if name == correction.value {
                return Ok(Some(Feed::Masked(value(outputs, names, name)?.as_f32()?, replacement)));
            }
            if let Some(consumer) = correction.consumers.iter().find(|c| c.input == name) {
                return Ok(Some(Feed::Gathered(value(outputs, names, &consumer.output)?)));
            }
            Ok(correction.consumers.iter().find(|c| c.weight_input == name).map(Feed::Weights))
        })?;
        if !stackable {
            return Ok(rows);
        }
        let (model, logits, constant_integers) = (self.model, self.logits, self.constant_integers);
        let open = open(&mut self.corrected, self.options, logits, || {
            let examples: Vec<Tensor> = correction
                .frontier
                .iter()
                .map(|f| match correction.source(f) {
                    Some(source) => value(outputs, names, source).cloned(),
                    // A consumer's weights: typed after a real channel's, whatever the rank.
                    None => match correction.consumers.iter().find(|c| c.weight_input == *f) {
                        Some(consumer) => Ok(Tensor::F32(consumer.channel_weight(0)?)),
                        None => Err(Error::Internal(format!("no corrected convolution reads '{f}'"))),
                    },
                })
                .collect::<Result<_>>()?;
            correction.downstream(model, &examples, logits, constant_integers)
        })?;
        // A call holds variants of one channel (it is fed that channel's weights).
        let chunks: Vec<&[Variant]> = rows.chunk_by(|a, b| a.0 == b.0).flat_map(|channel| channel.chunks(VARIANT_ROWS)).collect();
        let at = open.logits;
        let results = open.pool.map(&chunks, |session, chunk| {
            let logits = call(session, at, &fed, chunk)?;
            let decisions = chunk.iter().zip(logits.as_f32()?.axis_iter(Axis(0))).map(|(&(_, i), row)| decided(&row.iter().copied().collect::<Vec<f32>>(), labels[i]));
            Ok(decisions.collect::<Vec<_>>())
        })?;
        let mut rerun = Vec::new();
        for (chunk, decisions) in chunks.iter().zip(results) {
            for (&(j, i), decision) in chunk.iter().zip(decisions) {
                match decision {
                    (ok, true) => self.run.tally(j, offset + i, ok, original.get(i) == Some(&true))?,
                    (_, false) => rerun.push((j, i)),
                }
            }
        }
        self.run.rows_corrected += rows.len();
        self.run.rows_rerun += rerun.len();
        Ok(rerun)
    }
}

/// The downstream sessions in `slot`, opened on first use from the model `build` makes.
fn open<'s>(slot: &'s mut Option<Open>, options: &BackendOptions, logits: &str, build: impl FnOnce() -> Result<ModelProto>) -> Result<&'s mut Open> {
    if let Some(open) = slot {
        return Ok(open);
    }
    let pool = Pool::open(&encode(&build()?), options)?;
    let logits = output_position(pool.output_names(), logits)?;
    Ok(slot.insert(Open { pool, logits }))
}

/// The logits (output `logits` of `session`) of the variants `rows`, their inputs built by `feeds`.
fn call(session: &mut dyn Session, logits: usize, feeds: &[(&str, Feed)], rows: &[Variant]) -> Result<Tensor> {
    let tensors: Vec<Cow<Tensor>> = feeds.iter().map(|(_, feed)| feed.rows(rows)).collect::<Result<_>>()?;
    let fed: Vec<(&str, &Tensor)> = feeds.iter().map(|(name, _)| *name).zip(tensors.iter().map(|t| t.as_ref())).collect();
    // A value without the batch axis may still hold the batch size (a shape): then the rows run together.
    let mut outputs = if feeds.iter().any(|(_, feed)| matches!(feed, Feed::Whole(_))) {
        session.run(&fed)?
    } else {
        let per_sample: Vec<&str> = feeds.iter().filter(|(_, feed)| feed.per_sample()).map(|(name, _)| *name).collect();
        session.run_samples(&fed, &per_sample)?
    };
    if logits >= outputs.len() {
        return Err(Error::Internal("the downstream part lost its logits".into()));
    }
    Ok(outputs.swap_remove(logits))
}

/// What the α model computes at the cut for a zeroed channel, per channel (`[C, …]`): the
/// all-channels-zeroed α model run on one image (the chain after a zeroed convolution does not
/// depend on the image).
fn fill(model: &ModelProto, conv: &ConvInfo, cut: &Cut, io: &ModelIo, batch: &Tensor, options: &BackendOptions) -> Result<ArrayD<f32>> {
    let all: Vec<usize> = (0..conv.filters).collect();
    let zeroed = upstream_model(&alpha_model(model, &conv.name, &all)?, std::slice::from_ref(&cut.value), &[])?;
    let mut session = open_session(&encode(&zeroed), options)?;
    let image = Tensor::F32(batch.as_f32()?.slice_axis(Axis(0), Slice::from(0..1)).to_owned());
    let fill = session.run(&[(io.input.as_str(), &image)])?.remove(0).into_f32()?;
    if fill.ndim() < 2 || fill.shape()[0] != 1 || fill.shape()[1] != conv.filters {
        return Err(Error::Unsupported {
            node: conv.name.clone(),
            op_type: "Conv".into(),
            message: format!("value '{}' has shape {:?}, expected [1, {}, …]", cut.value, fill.shape(), conv.filters),
        });
    }
    Ok(fill.index_axis_move(Axis(0), 0))
}

/// `changed[j][i]`: whether channel j of image i in `value` (`[N, C, …]`) differs, in any bit,
/// from channel j of `fill` (`[1, C, …]`).
fn changed(value: &ArrayD<f32>, fill: &ArrayD<f32>) -> Result<Vec<Vec<bool>>> {
    let value = value.as_standard_layout();
    let fill = fill.as_standard_layout();
    let (values, fills) = (standard(&value)?, standard(&fill)?);
    let channels = fill.shape().get(1).copied().unwrap_or(0);
    let plane = fills.len() / channels.max(1);
    let per_image = fills.len();
    Ok((0..channels)
        .map(|j| {
            let target = &fills[j * plane..(j + 1) * plane];
            values.chunks_exact(per_image).map(|image| image[j * plane..(j + 1) * plane].iter().zip(target).any(|(a, b)| a.to_bits() != b.to_bits())).collect()
        })
        .collect())
}

/// The rows of `value` (`[N, C, …]`) named by `rows` (their image), each with its channel j
/// overwritten by channel j of `replacement` (`[1, C, …]`: the same for every image, or
/// `[N, C, …]`: the image's own).
fn masked(value: &ArrayD<f32>, replacement: &ArrayD<f32>, rows: &[Variant]) -> Result<ArrayD<f32>> {
    let mut out = gather(value, rows)?;
    let images = replacement.len_of(Axis(0));
    let channels = replacement.shape().get(1).copied().unwrap_or(0);
    let replacement = replacement.as_standard_layout();
    let replacements = standard(&replacement)?;
    let per_image = replacements.len() / images.max(1);
    let plane = per_image / channels.max(1);
    if out.len() != rows.len() * per_image || (images != 1 && images != value.len_of(Axis(0))) {
        return Err(Error::Internal(format!("a replacement of shape {:?} does not fit values of shape {:?}", replacement.shape(), value.shape())));
    }
    let data = out.as_slice_mut().ok_or_else(|| Error::Internal("a gathered array is not contiguous".into()))?;
    for (image, &(j, i)) in data.chunks_exact_mut(per_image).zip(rows) {
        let source = if images == 1 { 0 } else { i };
        image[j * plane..(j + 1) * plane].copy_from_slice(&replacements[source * per_image + j * plane..][..plane]);
    }
    Ok(out)
}

/// Channel j of image i of `value` (`[N, C, …]`) for each variant (j, i) of `rows`, stacked
/// along axis 0 as single-channel images (`[rows, 1, …]`).
fn channels(value: &ArrayD<f32>, rows: &[Variant]) -> Result<ArrayD<f32>> {
    let value = value.as_standard_layout();
    let values = standard(&value)?;
    let per_image = values.len() / value.len_of(Axis(0)).max(1);
    let plane = per_image / value.shape().get(1).copied().unwrap_or(0).max(1);
    let mut data = Vec::with_capacity(rows.len() * plane);
    for &(j, i) in rows {
        data.extend_from_slice(&values[i * per_image + j * plane..][..plane]);
    }
    let mut shape = value.shape().to_vec();
    shape[0] = rows.len();
    shape[1] = 1;
    ArrayD::from_shape_vec(IxDyn(&shape), data).map_err(|e| Error::Internal(e.to_string()))
}

/// The images of `rows`, in order, stacked along axis 0.
fn gather(value: &ArrayD<f32>, rows: &[Variant]) -> Result<ArrayD<f32>> {
    let value = value.as_standard_layout();
    let values = standard(&value)?;
    let per_image = values.len() / value.len_of(Axis(0)).max(1);
    let mut data = Vec::with_capacity(rows.len() * per_image);
    for &(_, i) in rows {
        data.extend_from_slice(&values[i * per_image..(i + 1) * per_image]);
    }
    let mut shape = value.shape().to_vec();
    shape[0] = rows.len();
    ArrayD::from_shape_vec(IxDyn(&shape), data).map_err(|e| Error::Internal(e.to_string()))
}

fn standard<'a>(array: &'a ndarray::CowArray<'_, f32, IxDyn>) -> Result<&'a [f32]> {
    array.as_slice().ok_or_else(|| Error::Internal("an array in standard layout has no slice".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_rows_copy_their_image_and_overwrite_one_channel() {
        // Two images, three channels of two values each.
        let value = ArrayD::from_shape_vec(IxDyn(&[2, 3, 2]), (0..12).map(|v| v as f32).collect()).unwrap();
        let fill = ArrayD::from_shape_vec(IxDyn(&[1, 3, 2]), vec![-1.0, -2.0, -3.0, -4.0, -5.0, -6.0]).unwrap();
        let out = masked(&value, &fill, &[(1, 0), (0, 1), (2, 1)]).unwrap();
        assert_eq!(out.shape(), &[3, 3, 2]);
        assert_eq!(out.as_slice().unwrap(), &[0.0, 1.0, -3.0, -4.0, 4.0, 5.0, -1.0, -2.0, 8.0, 9.0, 10.0, 11.0, 6.0, 7.0, 8.0, 9.0, -5.0, -6.0]);
    }

    #[test]
    fn a_channel_changes_unless_every_bit_equals_the_fill() {
        let value = ArrayD::from_shape_vec(IxDyn(&[2, 2, 2]), vec![0.0, 0.0, 1.0, 0.0, -0.0, 0.0, 0.0, 0.0]).unwrap();
        let fill = ArrayD::from_shape_vec(IxDyn(&[1, 2, 2]), vec![0.0; 4]).unwrap();
        // Image 1's channel 0 holds -0.0: equal as a number, not as bits, so it is run.
        assert_eq!(changed(&value, &fill).unwrap(), vec![vec![false, true], vec![true, false]]);
    }
}
