//! Filter assessment (BRIEF §2.1): for every convolution with constant weights and every output
//! channel j, the number of T_val* images classified correctly when channel j is zeroed (an α unit),
//! against the original model's count.
//!
//! [`naive`] is the oracle and the benchmark baseline: one α model and one full pass over T_val*
//! per filter. [`fast`] gives the same integer counts without recomputing what a zeroed channel
//! cannot change: per layer it runs the part of the graph above the layer once, caches the values
//! the rest of the graph reads from it (the *frontier*: the layer's output and e.g. residual skip
//! inputs), and per channel runs only the downstream part on the cached tensors with that channel
//! overwritten.
//!
//! Exactness: runtimes fuse a convolution with the per-channel operators that follow it
//! (BatchNormalization, activations) and with the α unit's mask. So the cut is placed after that
//! channel-wise chain, and the zeroed channel is overwritten with what the α model itself computes
//! there (measured once per layer by running the all-channels-zeroed α model), not with a value
//! computed here.

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use ndarray::{ArrayD, Axis, Slice};
use serde::{Deserialize, Serialize};

use crate::analysis::{convolutions, ConvInfo};
use crate::backend::{open_session, BackendOptions, Session};
use crate::config::{Config, SIGMAS};
use crate::data::split::{stratified_split, ValSize};
use crate::data::{make_batch, load_split, Corruption, Split};
use crate::error::{Error, Result};
use crate::eval::{argmax, preprocess_for, ModelIo};
use crate::onnx::builder::{BOOL, FLOAT, INT64};
use crate::onnx::graph::GraphIndex;
use crate::onnx::proto::{
    tensor_shape_proto::{dimension::Value as Dim, Dimension},
    type_proto, GraphProto, ModelProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use crate::progress::Progress;
use crate::tensor::Tensor;
use crate::units::alpha_model;

/// Default blamed ratio κ.
pub const DEFAULT_KAPPA: f64 = 0.25;

/// Operators that act on each channel separately, so a channel zeroed before them stays a
/// function of nothing but itself after them; the cut moves past them (see the module docs).
const CHANNELWISE: &[&str] = &["BatchNormalization", "Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Identity"];

/// T_val*: the validation images blurred at every σ, preprocessed into batches once.
pub struct ValStar {
    /// Input batches (the model's image input).
    pub batches: Vec<Tensor>,
    /// True labels per batch.
    pub labels: Vec<Vec<i64>>,
    /// Validation images (before blurring).
    pub images: usize,
    /// Fingerprint of the validation images and labels (see `Dataset::fingerprint`).
    pub fingerprint: String,
}

impl ValStar {
    /// Number of images of T_val* (six per validation image).
    pub fn len(&self) -> usize {
        self.labels.iter().map(Vec::len).sum()
    }

    /// Whether T_val* is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Loads the training split named by `config`, draws T_val (stratified, seeded) and builds T_val*.
pub fn load_val_star(config: &Config) -> Result<ValStar> {
    let root = config.data_root()?;
    let train = load_split(root, Split::Train, config.data.format)?;
    let size = config.data.val_size.map_or(ValSize::Fraction(config.data.val_fraction), ValSize::Count);
    let (_, val) = stratified_split(&train.labels, size, config.data.seed)?;
    let preprocess = preprocess_for(&config.preprocess, &train)?;
    let batch_size = config.eval.batch_size.max(1);
    let mut batches = Vec::new();
    let mut labels = Vec::new();
    for &sigma in &SIGMAS {
        for chunk in val.chunks(batch_size) {
            batches.push(Tensor::F32(make_batch(&train, chunk, &Corruption::Blur(sigma), &preprocess)?));
            labels.push(chunk.iter().map(|&i| train.labels[i]).collect());
        }
    }
    Ok(ValStar { batches, labels, images: val.len(), fingerprint: train.subset(&val).fingerprint() })
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

/// Position of `name` among the session's outputs.
fn output_position(session: &dyn Session, name: &str) -> Result<usize> {
    session.output_names().iter().position(|n| n == name).ok_or_else(|| Error::Internal(format!("backend lost output '{name}'")))
}

/// Correct predictions in each block of `labels.len()` rows of `logits` (one block per masked
/// variant stacked along the batch axis).
fn count_blocks(logits: &Tensor, labels: &[i64], counts: &mut [usize]) -> Result<()> {
    let logits = logits.as_f32()?;
    let rows = logits.len_of(Axis(0));
    if rows != labels.len() * counts.len() {
        return Err(Error::Internal(format!("{rows} logit rows for {} variants of {} images", counts.len(), labels.len())));
    }
    for (row, values) in logits.axis_iter(Axis(0)).enumerate() {
        let label = labels[row % labels.len()];
        counts[row / labels.len()] += usize::from(argmax(values.iter().copied()) == label);
    }
    Ok(())
}

/// Correct predictions of `model` over all of T_val*.
fn count_model(model: &ModelProto, io: &ModelIo, data: &ValStar, options: &BackendOptions) -> Result<usize> {
    let mut session = open_session(&encode(model), options)?;
    let position = output_position(session.as_ref(), &io.output)?;
    let mut count = [0usize];
    for (batch, labels) in data.batches.iter().zip(&data.labels) {
        let outputs = session.run(&[(io.input.as_str(), batch)])?;
        count_blocks(&outputs[position], labels, &mut count)?;
    }
    Ok(count[0])
}

/// The oracle: one α model and one full pass over T_val* per filter of every selected layer
/// (`layers`: indices into [`assessable`], all when `None`).
pub fn naive(model: &ModelProto, io: &ModelIo, data: &ValStar, options: &BackendOptions, layers: Option<&[usize]>) -> Result<Counts> {
    assess_layers(model, io, data, options, Method::Naive, layers, Vec::new(), &mut |_| Ok(()))
}

/// One layer of [`naive`].
fn naive_layer(model: &ModelProto, conv: &ConvInfo, io: &ModelIo, data: &ValStar, options: &BackendOptions, progress: &mut Progress) -> Result<Vec<usize>> {
    let mut correct = Vec::with_capacity(conv.filters);
    for j in 0..conv.filters {
        correct.push(count_model(&alpha_model(model, &conv.name, &[j])?, io, data, options)?);
        progress.advance(1);
    }
    Ok(correct)
}

/// Assesses the selected layers (all when `None`) with `method`, skipping those in `done` (a
/// resumed run) and handing each newly finished layer to `finished` (which records it) before
/// the next starts.
#[allow(clippy::too_many_arguments)]
pub fn assess_layers(
    model: &ModelProto,
    io: &ModelIo,
    data: &ValStar,
    options: &BackendOptions,
    method: Method,
    layers: Option<&[usize]>,
    done: Vec<LayerCounts>,
    finished: &mut dyn FnMut(&LayerCounts) -> Result<()>,
) -> Result<Counts> {
    let convs = selected(model, layers)?;
    let correct0 = count_model(model, io, data, options)?;
    let todo: Vec<&(usize, ConvInfo)> = convs.iter().filter(|(i, _)| !done.iter().any(|d| d.index == *i)).collect();
    let label = match method {
        Method::Naive => "assessing filters (naive)",
        Method::Fast => "assessing filters",
    };
    let mut progress = Progress::new(label, todo.iter().map(|(_, c)| c.filters).sum());
    let mut out = done;
    for (index, conv) in todo {
        let correct = match method {
            Method::Naive => naive_layer(model, conv, io, data, options, &mut progress)?,
            Method::Fast => {
                let correct = fast_layer(model, conv, io, data, options)?;
                progress.advance(conv.filters);
                correct
            }
        };
        let layer = LayerCounts { index: *index, name: conv.name.clone(), filters: conv.filters, correct };
        finished(&layer)?;
        out.push(layer);
    }
    progress.finish();
    out.retain(|l| convs.iter().any(|(i, _)| *i == l.index));
    out.sort_by_key(|l| l.index);
    Ok(Counts { total: data.len(), correct0, layers: out })
}

/// How one layer's assessment splits the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// The value whose channels are overwritten: the convolution's output, or the end of the
    /// channel-wise chain that follows it.
    pub value: String,
    /// Values the downstream part reads from the upstream part (`value` first).
    pub frontier: Vec<String>,
    /// Positions (in `graph.node`) of the downstream nodes, in topological order.
    pub downstream: Vec<usize>,
}

/// Splits `graph` below convolution `conv`: the channel-wise chain after it, everything that
/// depends on the end of that chain, and the frontier values it reads from above. Constant
/// producers (`Constant` nodes) read by the downstream part join it instead of the frontier.
pub fn cut(graph: &GraphProto, conv: &ConvInfo) -> Result<Cut> {
    let index = GraphIndex::new(graph)?;
    let outputs: HashSet<&str> = graph.output.iter().filter_map(|o| o.name.as_deref()).collect();
    let mut value = conv.output.clone();
    loop {
        let consumers: Vec<_> = index.consumers(&value).collect();
        match consumers.as_slice() {
            [(_, node)]
                if !outputs.contains(value.as_str())
                    && CHANNELWISE.contains(&node.op_type.as_deref().unwrap_or(""))
                    && node.input.first() == Some(&value)
                    && !node.output.is_empty()
                    && node.output.iter().skip(1).all(String::is_empty) =>
            {
                value = node.output[0].clone();
            }
            _ => break,
        }
    }
    // Forward closure from the cut value.
    let mut produced: HashSet<String> = HashSet::from([value.clone()]);
    let mut downstream = Vec::new();
    for &position in index.topological_order() {
        let node = &graph.node[position];
        if node.input.iter().any(|i| produced.contains(i)) {
            downstream.push(position);
            produced.extend(node.output.iter().filter(|o| !o.is_empty()).cloned());
        }
    }
    // Constant-only producers read downstream move into the downstream part.
    let mut extra = Vec::new();
    for &position in &downstream {
        for input in graph.node[position].input.iter().filter(|i| !i.is_empty() && !produced.contains(*i)) {
            if let Some((p, node)) = index.producer(input) {
                if node.op_type.as_deref() == Some("Constant") && !extra.contains(&p) {
                    extra.push(p);
                }
            }
        }
    }
    for p in &extra {
        produced.extend(graph.node[*p].output.iter().cloned());
    }
    let mut nodes: HashSet<usize> = downstream.iter().copied().collect();
    nodes.extend(extra);
    let downstream: Vec<usize> = index.topological_order().iter().copied().filter(|p| nodes.contains(p)).collect();
    let mut frontier = vec![value.clone()];
    for &position in &downstream {
        for input in &graph.node[position].input {
            if !input.is_empty() && !produced.contains(input) && index.initializer(input).is_none() && !frontier.contains(input) {
                frontier.push(input.clone());
            }
        }
    }
    Ok(Cut { value, frontier, downstream })
}

/// `model` reduced to what computes `outputs`, which become its only graph outputs.
pub fn upstream_model(model: &ModelProto, outputs: &[String]) -> Result<ModelProto> {
    let graph = model.graph.as_ref().ok_or_else(|| Error::InvalidGraph("the model has no graph".into()))?;
    let index = GraphIndex::new(graph)?;
    let mut needed: HashSet<String> = outputs.iter().cloned().collect();
    let mut keep = vec![false; graph.node.len()];
    for &position in index.topological_order().iter().rev() {
        let node = &graph.node[position];
        if node.output.iter().any(|o| needed.contains(o)) {
            keep[position] = true;
            needed.extend(node.input.iter().filter(|i| !i.is_empty()).cloned());
        }
    }
    let mut out = model.clone();
    let g = out.graph.as_mut().ok_or_else(|| Error::Internal("graph vanished".into()))?;
    g.node = graph.node.iter().zip(&keep).filter(|(_, k)| **k).map(|(n, _)| n.clone()).collect();
    g.output = outputs.iter().map(|name| value_info(graph, name)).collect();
    Ok(out)
}

/// The declared type of `name` (graph output or value_info), else an untyped value.
fn value_info(graph: &GraphProto, name: &str) -> ValueInfoProto {
    graph
        .output
        .iter()
        .chain(&graph.value_info)
        .chain(&graph.input)
        .find(|v| v.name.as_deref() == Some(name))
        .cloned()
        .unwrap_or_else(|| ValueInfoProto { name: Some(name.to_string()), ..Default::default() })
}

/// A graph input for a cached tensor: its element type and rank, every dimension symbolic.
fn input_info(name: &str, tensor: &Tensor) -> ValueInfoProto {
    let elem_type = match tensor {
        Tensor::F32(_) => FLOAT,
        Tensor::I64(_) => INT64,
        Tensor::Bool(_) => BOOL,
    };
    let dim = (0..tensor.shape().len())
        .map(|d| Dimension { value: Some(Dim::DimParam(format!("deeppatch_d{d}"))), denotation: None })
        .collect();
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor { elem_type: Some(elem_type), shape: Some(TensorShapeProto { dim }) })),
            denotation: None,
        }),
        ..Default::default()
    }
}

/// The downstream part of `model` as a model whose inputs are the frontier values (typed after
/// `examples`) and whose output is the logits.
pub fn downstream_model(model: &ModelProto, cut: &Cut, examples: &[Tensor], logits: &str) -> Result<ModelProto> {
    let graph = model.graph.as_ref().ok_or_else(|| Error::InvalidGraph("the model has no graph".into()))?;
    let computes_logits = cut.downstream.iter().any(|&p| graph.node[p].output.iter().any(|o| o == logits));
    if !computes_logits {
        return Err(Error::Unsupported {
            node: cut.value.clone(),
            op_type: "Conv".into(),
            message: format!("the output '{logits}' does not depend on this value"),
        });
    }
    let mut out = model.clone();
    let g = out.graph.as_mut().ok_or_else(|| Error::Internal("graph vanished".into()))?;
    g.node = cut.downstream.iter().map(|&p| graph.node[p].clone()).collect();
    g.input = cut.frontier.iter().zip(examples).map(|(name, t)| input_info(name, t)).collect();
    g.output = vec![value_info(graph, logits)];
    // Intermediate shapes recorded for the whole graph may not hold for stacked variants.
    g.value_info.clear();
    Ok(out)
}

/// Slice `[start, start + len)` of axis 0.
fn rows(tensor: &Tensor, start: usize, len: usize) -> Tensor {
    let s = Slice::from(start..start + len);
    match tensor {
        Tensor::F32(a) => Tensor::F32(a.slice_axis(Axis(0), s).to_owned()),
        Tensor::I64(a) => Tensor::I64(a.slice_axis(Axis(0), s).to_owned()),
        Tensor::Bool(a) => Tensor::Bool(a.slice_axis(Axis(0), s).to_owned()),
    }
}

/// `copies` copies of `tensor` stacked along axis 0.
fn stacked(tensor: &Tensor, copies: usize) -> Result<Tensor> {
    fn tile<T: Clone>(a: &ArrayD<T>, copies: usize) -> Result<ArrayD<T>> {
        let views: Vec<_> = (0..copies).map(|_| a.view()).collect();
        ndarray::concatenate(Axis(0), &views).map_err(|e| Error::Internal(e.to_string()))
    }
    Ok(match tensor {
        Tensor::F32(a) => Tensor::F32(tile(a, copies)?),
        Tensor::I64(a) => Tensor::I64(tile(a, copies)?),
        Tensor::Bool(a) => Tensor::Bool(tile(a, copies)?),
    })
}

/// Rows of T_val* per downstream call that stacking masked variants aims for.
const VARIANT_ROWS: usize = 256;

/// Same counts as [`naive`], computed layer by layer on cached upstream values (module docs).
pub fn fast(model: &ModelProto, io: &ModelIo, data: &ValStar, options: &BackendOptions, layers: Option<&[usize]>) -> Result<Counts> {
    assess_layers(model, io, data, options, Method::Fast, layers, Vec::new(), &mut |_| Ok(()))
}

/// One layer of [`fast`].
fn fast_layer(model: &ModelProto, conv: &ConvInfo, io: &ModelIo, data: &ValStar, options: &BackendOptions) -> Result<Vec<usize>> {
    let graph = model.graph.as_ref().ok_or_else(|| Error::InvalidGraph("the model has no graph".into()))?;
    let cut = cut(graph, conv)?;
    let first = data.batches.first().ok_or_else(|| Error::Config("the validation set is empty".into()))?;
    // What the α model computes at the cut for a zeroed channel (one image; broadcast per batch).
    let all: Vec<usize> = (0..conv.filters).collect();
    let zeroed = upstream_model(&alpha_model(model, &conv.name, &all)?, std::slice::from_ref(&cut.value))?;
    let mut session = open_session(&encode(&zeroed), options)?;
    let fill = session.run(&[(io.input.as_str(), &rows(first, 0, 1))])?.remove(0).into_f32()?;
    drop(session);
    if fill.ndim() < 2 || fill.shape()[1] != conv.filters {
        return Err(Error::Unsupported {
            node: conv.name.clone(),
            op_type: "Conv".into(),
            message: format!("value '{}' has shape {:?}, expected [N, {}, …]", cut.value, fill.shape(), conv.filters),
        });
    }
    // Cache the frontier over T_val*.
    let mut upstream = open_session(&encode(&upstream_model(model, &cut.frontier)?), options)?;
    let order: Vec<usize> = cut.frontier.iter().map(|f| output_position(upstream.as_ref(), f)).collect::<Result<_>>()?;
    let mut cache: Vec<Vec<Tensor>> = Vec::with_capacity(data.batches.len());
    for batch in &data.batches {
        let mut outputs: Vec<Option<Tensor>> = upstream.run(&[(io.input.as_str(), batch)])?.into_iter().map(Some).collect();
        cache.push(order.iter().map(|&p| outputs[p].take().ok_or_else(|| Error::Internal("frontier value repeated".into()))).collect::<Result<_>>()?);
    }
    drop(upstream);
    let mut downstream = open_session(&encode(&downstream_model(model, &cut, &cache[0], &io.output)?), options)?;
    let logits = output_position(downstream.as_ref(), &io.output)?;
    // Stacking variants along the batch axis needs every frontier value to have one.
    let stackable = cache[0].iter().all(|t| matches!(t, Tensor::F32(_)) && !t.shape().is_empty());
    let mut correct = vec![0usize; conv.filters];
    for (frontier, labels) in cache.iter().zip(&data.labels) {
        let n = labels.len();
        let per_call = if stackable { (VARIANT_ROWS / n.max(1)).max(1) } else { 1 };
        let others: Vec<Tensor> = frontier[1..].iter().map(|t| stacked(t, per_call)).collect::<Result<_>>()?;
        let cut_value = frontier[0].as_f32()?;
        for channels in all.chunks(per_call) {
            let k = channels.len();
            let mut masked = ndarray::concatenate(Axis(0), &vec![cut_value.view(); k]).map_err(|e| Error::Internal(e.to_string()))?;
            for (variant, &j) in channels.iter().enumerate() {
                let mut block = masked.slice_axis_mut(Axis(0), Slice::from(variant * n..(variant + 1) * n));
                let source = fill.index_axis(Axis(1), j).index_axis(Axis(0), 0).to_owned();
                for mut image in block.axis_iter_mut(Axis(0)) {
                    image.index_axis_mut(Axis(0), j).assign(&source);
                }
            }
            let masked = Tensor::F32(masked);
            let trimmed: Vec<Tensor> = if k == per_call { Vec::new() } else { others.iter().map(|t| rows(t, 0, k * n)).collect() };
            let others = if k == per_call { &others } else { &trimmed };
            let mut fed: Vec<(&str, &Tensor)> = vec![(cut.frontier[0].as_str(), &masked)];
            fed.extend(cut.frontier[1..].iter().map(String::as_str).zip(others.iter()));
            let outputs = downstream.run(&fed)?;
            count_blocks(&outputs[logits], labels, &mut correct[channels[0]..channels[0] + k])?;
        }
    }
    Ok(correct)
}

/// One layer of the artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerScores {
    /// Position among the [`assessable`] convolutions.
    pub index: usize,
    pub name: String,
    pub filters: usize,
    /// δ_j = acc_j − acc₀, in percent.
    pub scores: Vec<f64>,
    /// Correct predictions with channel j zeroed (the exact values behind `scores`).
    pub correct: Vec<usize>,
    /// Channels by δ descending, ties by index.
    pub ranking: Vec<usize>,
    /// The first ⌊κ·m⌋ of `ranking`, ascending.
    pub blamed: Vec<usize>,
}

/// The `assess` artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assessment {
    pub model_sha256: String,
    pub data_fingerprint: String,
    /// Size of T_val* and the original model's correct predictions and accuracy (percent) on it.
    pub images: usize,
    pub correct0: usize,
    pub acc0: f64,
    pub kappa: f64,
    /// `naive` or `fast`.
    pub method: String,
    /// Assessable convolutions of the model; `layers` holds all of them unless `shard` is set.
    pub layers_total: usize,
    /// The part of the layers this artifact holds (absent: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
    pub layers: Vec<LayerScores>,
}

/// Channels sorted by `correct` descending (δ descending), ties by index. Integer counts rank
/// exactly where rounded percentages could tie or cross.
pub fn ranking(correct: &[usize]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..correct.len()).collect();
    order.sort_by(|&a, &b| correct[b].cmp(&correct[a]).then(a.cmp(&b)));
    order
}

/// The first ⌊κ·m⌋ channels of `ranking`, ascending.
pub fn blamed(ranking: &[usize], kappa: f64) -> Vec<usize> {
    let count = ((kappa * ranking.len() as f64).floor().max(0.0) as usize).min(ranking.len());
    let mut chosen = ranking[..count].to_vec();
    chosen.sort_unstable();
    chosen
}

/// Percent of `total`.
fn percent(count: usize, total: usize) -> f64 {
    if total == 0 { 0.0 } else { 100.0 * count as f64 / total as f64 }
}

impl Assessment {
    /// Scores, rankings and blamed filters from exact counts.
    pub fn from_counts(counts: &Counts, kappa: f64, model_sha256: String, data_fingerprint: String, method: &str, layers_total: usize) -> Result<Assessment> {
        if !(0.0..=1.0).contains(&kappa) {
            return Err(Error::Config(format!("kappa {kappa} is not in [0, 1]")));
        }
        let acc0 = percent(counts.correct0, counts.total);
        let layers = counts
            .layers
            .iter()
            .map(|l| {
                let ranking = ranking(&l.correct);
                LayerScores {
                    index: l.index,
                    name: l.name.clone(),
                    filters: l.filters,
                    scores: l.correct.iter().map(|&c| percent(c, counts.total) - acc0).collect(),
                    correct: l.correct.clone(),
                    blamed: blamed(&ranking, kappa),
                    ranking,
                }
            })
            .collect();
        Ok(Assessment {
            model_sha256,
            data_fingerprint,
            images: counts.total,
            correct0: counts.correct0,
            acc0,
            kappa,
            method: method.into(),
            layers_total,
            shard: None,
            layers,
        })
    }

    /// A terminal summary: acc₀ and per layer the best and worst δ and the blamed filters.
    pub fn summary(&self) -> String {
        let mut text = format!("acc0 {:.2} % on {} T_val* images ({} correct), κ = {}\n", self.acc0, self.images, self.correct0, self.kappa);
        text += &format!("{:<32} {:>7} {:>9} {:>9}  blamed\n", "layer", "filters", "best δ", "worst δ");
        for l in &self.layers {
            let best = l.ranking.first().map_or(0.0, |&j| l.scores[j]);
            let worst = l.ranking.last().map_or(0.0, |&j| l.scores[j]);
            let blamed: Vec<String> = l.blamed.iter().map(usize::to_string).collect();
            text += &format!("{:<32} {:>7} {:>+9.3} {:>+9.3}  {}\n", l.name, l.filters, best, worst, blamed.join(","));
        }
        text
    }
}

/// Which implementation computes the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Naive,
    Fast,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Naive => "naive",
            Method::Fast => "fast",
        }
    }
}

/// One part of the layers, `index/count` (0-based): layer k belongs to shard k mod count, so the
/// parts get early, wide and late layers alike. Lets an orchestrator fan `assess` out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The layer indices of this shard among `total`.
    pub fn layers(self, total: usize) -> Vec<usize> {
        (0..total).filter(|k| k % self.count == self.index).collect()
    }
}

impl std::str::FromStr for Shard {
    type Err = Error;
    fn from_str(text: &str) -> Result<Shard> {
        let bad = || Error::Config(format!("shard '{text}': expected i/n with 0 ≤ i < n"));
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let (index, count) = (i.trim().parse::<usize>().map_err(|_| bad())?, n.trim().parse::<usize>().map_err(|_| bad())?);
        if index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Serialize for Shard {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Shard {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

/// First line of a partial artifact: what the recorded layers were computed for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PartialHeader {
    model_sha256: String,
    data_fingerprint: String,
    images: usize,
    layers: Vec<usize>,
}

/// Where a run with `--out FILE` records finished layers: `FILE.partial`, JSON lines.
pub fn partial_path(out: &Path) -> std::path::PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".partial");
    name.into()
}

/// The layers a previous run recorded for the same model, data and layers; a torn last line (the
/// run was killed while writing it) and records of another run are dropped.
fn read_partial(path: &Path, header: &PartialHeader) -> Vec<LayerCounts> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    let mut lines = text.lines();
    match lines.next().map(serde_json::from_str::<PartialHeader>) {
        Some(Ok(found)) if found == *header => {}
        _ => return Vec::new(),
    }
    lines.map_while(|l| serde_json::from_str::<LayerCounts>(l).ok()).filter(|l| header.layers.contains(&l.index)).collect()
}

/// Appends JSON lines to the partial artifact, each on disk before the next layer starts.
struct PartialWriter {
    file: std::fs::File,
    path: std::path::PathBuf,
}

impl PartialWriter {
    /// Rewrites the partial artifact with `header` and the `done` layers, then keeps it open.
    fn create(path: std::path::PathBuf, header: &PartialHeader, done: &[LayerCounts]) -> Result<PartialWriter> {
        let mut text = json_line(header)?;
        for layer in done {
            text += &json_line(layer)?;
        }
        crate::onnx::io::write_atomically(&path, text.as_bytes())?;
        let file = std::fs::OpenOptions::new().append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        Ok(PartialWriter { file, path })
    }

    fn append(&mut self, layer: &LayerCounts) -> Result<()> {
        use std::io::Write;
        self.file.write_all(json_line(layer)?.as_bytes()).map_err(|e| Error::io(&self.path, e))?;
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
    }
}

fn json_line(value: &impl Serialize) -> Result<String> {
    Ok(serde_json::to_string(value).map_err(|e| Error::Internal(e.to_string()))? + "\n")
}

/// Writes `assessment` as pretty JSON, atomically.
pub fn save(assessment: &Assessment, path: &Path) -> Result<()> {
    let text = serde_json::to_string_pretty(assessment).map_err(|e| Error::Internal(e.to_string()))? + "\n";
    crate::onnx::io::write_atomically(path, text.as_bytes())
}

/// Reads an artifact written by [`save`].
pub fn load(path: &Path) -> Result<Assessment> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::data(path, format!("not an assessment artifact: {e}")))
}

/// What one `assess` run does besides the data and backend of the configuration.
#[derive(Debug, Clone, Default)]
pub struct AssessOptions {
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
    let method = if options.naive { Method::Naive } else { Method::Fast };
    let model = crate::onnx::load_model(model_path)?;
    let io = ModelIo::resolve(&model, &config.preprocess)?;
    let data = load_val_star(config)?;
    if data.is_empty() {
        return Err(Error::Config("the validation set is empty".into()));
    }
    let backend = BackendOptions { kind: config.backend.kind, device: config.backend.device, threads: config.backend.threads };
    let total = assessable(&model)?.len();
    let layers = options.shard.map_or_else(|| (0..total).collect(), |s| s.layers(total));
    let model_sha256 = crate::units::spec::model_sha256(&model);
    let header = PartialHeader { model_sha256: model_sha256.clone(), data_fingerprint: data.fingerprint.clone(), images: data.len(), layers: layers.clone() };
    let partial = options.out.as_deref().map(partial_path);
    let done = partial.as_deref().map(|p| read_partial(p, &header)).unwrap_or_default();
    if !done.is_empty() {
        crate::progress::info(&format!("resuming: {} of {} layers already assessed", done.len(), layers.len()));
    }
    let mut writer = partial.map(|p| PartialWriter::create(p, &header, &done)).transpose()?;
    let start = Instant::now();
    let counts = assess_layers(&model, &io, &data, &backend, method, Some(&layers), done, &mut |layer| match writer.as_mut() {
        Some(w) => w.append(layer),
        None => Ok(()),
    })?;
    crate::progress::info(&format!("assessed in {:.1} s", start.elapsed().as_secs_f64()));
    let mut assessment = Assessment::from_counts(&counts, kappa, model_sha256, data.fingerprint, method.name(), total)?;
    assessment.shard = options.shard;
    if let Some(out) = options.out.as_deref() {
        save(&assessment, out)?;
        drop(writer);
        let partial = partial_path(out);
        std::fs::remove_file(&partial).map_err(|e| Error::io(&partial, e))?;
    }
    Ok(assessment)
}

/// Joins shard artifacts of one model, data and κ into the artifact of an unsharded run.
pub fn merge(parts: &[Assessment]) -> Result<Assessment> {
    let first = parts.first().ok_or_else(|| Error::Config("nothing to merge".into()))?;
    let mut merged = Assessment { shard: None, layers: Vec::new(), ..first.clone() };
    for part in parts {
        let same = part.model_sha256 == first.model_sha256
            && part.data_fingerprint == first.data_fingerprint
            && part.images == first.images
            && part.correct0 == first.correct0
            && part.kappa == first.kappa
            && part.layers_total == first.layers_total;
        if !same {
            return Err(Error::Config("the artifacts to merge differ in model, data, κ or acc0".into()));
        }
        if part.method != merged.method {
            merged.method = "mixed".into();
        }
        for layer in &part.layers {
            if merged.layers.iter().any(|l| l.index == layer.index) {
                return Err(Error::Config(format!("layer {} ({}) is in more than one artifact", layer.index, layer.name)));
            }
            merged.layers.push(layer.clone());
        }
    }
    merged.layers.sort_by_key(|l| l.index);
    if let Some(missing) = (0..merged.layers_total).find(|k| merged.layers.get(*k).is_none_or(|l| l.index != *k)) {
        return Err(Error::Config(format!("layer {missing} is in none of the artifacts (missing shard?)")));
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranking_sorts_by_score_then_index() {
        let correct = [5, 7, 5, 9, 7, 1, 5, 7];
        assert_eq!(ranking(&correct), vec![3, 1, 4, 7, 0, 2, 6, 5]);
        // κ = 0.25 of 8 filters blames 2: the two best, ascending.
        assert_eq!(blamed(&ranking(&correct), 0.25), vec![1, 3]);
        // ⌊0.5·8⌋ = 4: the tie among 1, 4, 7 at score 7 is broken by index, all three in.
        assert_eq!(blamed(&ranking(&correct), 0.5), vec![1, 3, 4, 7]);
        // ⌊0.3·8⌋ = 2; ⌊0.2·3⌋ = 0.
        assert_eq!(blamed(&ranking(&correct), 0.3), vec![1, 3]);
        assert_eq!(blamed(&ranking(&[4, 4, 4]), 0.2), Vec::<usize>::new());
        // Ties among equal counts go to the lower index.
        assert_eq!(blamed(&ranking(&[4, 4, 4, 4]), 0.5), vec![0, 1]);
    }

    #[test]
    fn scores_are_percent_differences() {
        let counts = Counts { total: 200, correct0: 100, layers: vec![LayerCounts { index: 0, name: "c".into(), filters: 4, correct: vec![100, 102, 99, 102] }] };
        let a = Assessment::from_counts(&counts, 0.25, "m".into(), "d".into(), "fast", 1).unwrap();
        assert_eq!(a.acc0, 50.0);
        assert_eq!(a.layers[0].scores, vec![0.0, 1.0, -0.5, 1.0]);
        assert_eq!(a.layers[0].ranking, vec![1, 3, 0, 2]);
        assert_eq!(a.layers[0].blamed, vec![1]);
        assert!(Assessment::from_counts(&counts, 1.5, "m".into(), "d".into(), "fast", 1).is_err());
    }
}
