//! The consumer-convolution correction: the first convolutions that read the layer's masked
//! value are not run over the whole masked value per variant, only over the channel that differs.
//!
//! Below the cut, a variant differs from the original image only in channel j, also past an
//! elementwise chain (a residual block's Add with its skip input, then Relu): there channel j is
//! a function of the cut's channel j and of values above the cut. A convolution that reads such a
//! value `a` is linear in it, so with channel j replaced by `a'_j`
//!
//! ```text
//! conv(a with channel j = a'_j) = conv(a) − conv(a_j − a'_j, W[:, j])
//! ```
//!
//! (`W[:, j]` nonzero only for the output channels of j's group). Per image, the upstream part
//! computes `z = conv(a)` (the model's own node) and `δ = a − a'`, where `a'` is `a` with every
//! channel masked (the chain run on the fill). The corrected downstream part starts with
//! `z − conv(δ_j, W[:, j])` per consumer: one input channel instead of C, the weights fed per call
//! (a call holds variants of one channel). That is the model's arithmetic up to the floating-point
//! summation order; [`decided`] says when the logits are too close to a tie for that to be trusted,
//! and such variants are rerun on the exact path.

use std::collections::{HashMap, HashSet};

use ndarray::{ArrayD, Axis, IxDyn};

use super::cut::{downstream_model, upstream_model, Cut, CHANNELWISE};
use crate::error::{Error, Result};
use crate::onnx::builder::{FLOAT, PREFIX};
use crate::onnx::graph::{attr_int, renamed_values, GraphIndex, NameGen};
use crate::onnx::proto::{type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, TypeProto, ValueInfoProto};
use crate::onnx::tensor::{from_f32, shape_of, to_f32};
use crate::tensor::Tensor;

/// Binary operators that act elementwise, so with one operand not depending on the cut, channel j
/// of their output depends on the cut's channel j alone.
const ELEMENTWISE: &[&str] = &["Add", "Sub", "Mul"];

/// A decision on corrected logits is trusted when the label's margin over the best other logit
/// is at least this much, plus [`GUARD_RELATIVE`] times the largest |logit|; the correction's
/// measured error on ResNet20 is about 100 times smaller (docs/assessment.md).
const GUARD_ABSOLUTE: f32 = 1e-3;
const GUARD_RELATIVE: f32 = 1e-4;

/// A convolution that reads the masked value, corrected instead of run.
#[derive(Debug, Clone)]
pub(super) struct Consumer {
    /// Its output `z`, or the end of a chain of Adds of values from above below it (a residual
    /// block's skip Add): computed by the upstream part, and in the corrected downstream part by
    /// `input − conv(δ_j, weight_input)`.
    pub output: String,
    /// Inputs of the corrected downstream part: the variants' rows of `z`, and channel j's weights.
    pub input: String,
    pub weight_input: String,
    node: NodeProto,
    /// `[M, C/g, k…]`.
    weight: ArrayD<f32>,
    group: usize,
}

impl Consumer {
    /// Input channel j's weights `[M, 1, k…]`: `W[m, j mod (C/g)]` for the output channels m of
    /// j's group, zero for the others.
    pub fn channel_weight(&self, j: usize) -> Result<ArrayD<f32>> {
        let (outputs, inputs_per_group) = (self.weight.shape()[0], self.weight.shape()[1]);
        let per_group = outputs / self.group.max(1);
        let (group, c) = (j / inputs_per_group.max(1), j % inputs_per_group.max(1));
        let mut shape = self.weight.shape().to_vec();
        shape[1] = 1;
        let mut out = ArrayD::zeros(IxDyn(&shape));
        for m in group * per_group..((group + 1) * per_group).min(outputs) {
            out.index_axis_mut(Axis(0), m).index_axis_mut(Axis(0), 0).assign(&self.weight.index_axis(Axis(0), m).index_axis(Axis(0), c));
        }
        Ok(out)
    }
}

/// How a layer's downstream part starts after the convolutions that read the masked value.
#[derive(Debug, Clone)]
pub(super) struct Correction {
    /// The value in which only channel j differs: the cut value or the end of the chain below it.
    pub value: String,
    /// The chain from the cut value to `value` (positions in `graph.node`).
    chain: Vec<usize>,
    pub consumers: Vec<Consumer>,
    /// `value` minus `value` with every channel masked: an upstream output and an input of the
    /// corrected downstream part (`[N, C, …]`; fed one channel per variant).
    pub delta: String,
    /// The upstream output holding `value` with every channel masked, when the chain is not empty
    /// and the downstream part reads `value` (else the fill is the masked value).
    pub masked: Option<String>,
    /// The downstream part without the chain and the consumers (positions).
    downstream: Vec<usize>,
    /// The inputs of the corrected downstream part: `delta`, the consumers' weights and rows of
    /// `z`, then the values the rest of it reads from above.
    pub frontier: Vec<String>,
}

impl Correction {
    /// The correction for `cut` of a convolution with `channels` output channels, when some
    /// convolution with constant weights reads the masked value; `None` otherwise.
    pub fn plan(graph: &GraphProto, cut: &Cut, channels: usize) -> Result<Option<Correction>> {
        let index = GraphIndex::new(graph)?;
        let outputs: HashSet<&str> = graph.output.iter().filter_map(|o| o.name.as_deref()).collect();
        let dependent: HashSet<&str> = cut.downstream.iter().flat_map(|&p| graph.node[p].output.iter().map(String::as_str)).collect();
        let mut value = cut.value.clone();
        let mut chain = Vec::new();
        loop {
            let consumers: Vec<_> = index.consumers(&value).collect();
            let [(position, node)] = consumers.as_slice() else { break };
            let op = node.op_type.as_deref().unwrap_or("");
            let single_output = node.output.len() == 1 && !node.output[0].is_empty();
            let channelwise = CHANNELWISE.contains(&op) && node.input.first() == Some(&value);
            let elementwise = ELEMENTWISE.contains(&op)
                && node.input.len() == 2
                && node.input.iter().filter(|i| **i == value).count() == 1
                && node.input.iter().all(|i| *i == value || !dependent.contains(i.as_str()));
            if outputs.contains(value.as_str()) || !single_output || !(channelwise || elementwise) {
                break;
            }
            chain.push(*position);
            value = node.output[0].clone();
        }
        if outputs.contains(value.as_str()) {
            return Ok(None);
        }
        let mut names = NameGen::new(graph, PREFIX);
        let mut consumers = Vec::new();
        let mut replaced = Vec::new();
        for (position, node) in index.consumers(&value) {
            let Some(mut consumer) = consumer(&index, node, &value, channels, &mut names)? else { continue };
            replaced.push(position);
            // Past an Add of a value from above (or a Sub of one from it), the correction is still
            // the same subtraction: (z − c) + s = (z + s) − c.
            loop {
                let next: Vec<_> = index.consumers(&consumer.output).collect();
                let [(position, node)] = next.as_slice() else { break };
                let z = consumer.output.as_str();
                let linear = match node.op_type.as_deref() {
                    Some("Add") => node.input.iter().filter(|i| *i == z).count() == 1,
                    Some("Sub") => node.input.first().map(String::as_str) == Some(z) && node.input.get(1).map(String::as_str) != Some(z),
                    _ => false,
                };
                let from_above = node.input.len() == 2 && node.input.iter().all(|i| i == z || !dependent.contains(i.as_str()));
                if outputs.contains(z) || !linear || !from_above || node.output.len() != 1 || node.output[0].is_empty() {
                    break;
                }
                replaced.push(*position);
                consumer.output = node.output[0].clone();
            }
            consumers.push(consumer);
        }
        if consumers.is_empty() {
            return Ok(None);
        }
        let removed: HashSet<usize> = chain.iter().chain(&replaced).copied().collect();
        let downstream: Vec<usize> = cut.downstream.iter().copied().filter(|p| !removed.contains(p)).collect();
        let mut produced: HashSet<&str> = downstream.iter().flat_map(|&p| graph.node[p].output.iter().map(String::as_str)).collect();
        produced.extend(consumers.iter().map(|c| c.output.as_str()));
        let delta = names.fresh("delta");
        let mut frontier = vec![delta.clone()];
        frontier.extend(consumers.iter().map(|c| c.weight_input.clone()));
        frontier.extend(consumers.iter().map(|c| c.input.clone()));
        for &position in &downstream {
            for input in &graph.node[position].input {
                if !input.is_empty() && !produced.contains(input.as_str()) && index.initializer(input).is_none() && !frontier.contains(input) {
                    frontier.push(input.clone());
                }
            }
        }
        let masked = (!chain.is_empty() && frontier.contains(&value)).then(|| names.fresh("masked"));
        Ok(Some(Correction { value, chain, consumers, delta, masked, downstream, frontier }))
    }

    /// The upstream value a corrected downstream input is fed from: a consumer's `z` for its rows
    /// input, none for its weights, else the input itself.
    pub fn source<'s>(&'s self, input: &'s str) -> Option<&'s str> {
        if self.consumers.iter().any(|c| c.weight_input == input) {
            return None;
        }
        Some(self.consumers.iter().find(|c| c.input == input).map_or(input, |c| c.output.as_str()))
    }

    /// The values the upstream part computes for the corrected path: those the corrected
    /// downstream part is fed from, and the masked value.
    pub fn upstream_values(&self) -> Vec<String> {
        let mut values: Vec<String> = self.frontier.iter().filter_map(|f| self.source(f)).map(str::to_string).collect();
        values.extend(self.masked.iter().cloned());
        values
    }

    /// The upstream part computing `outputs`, among them [`Correction::upstream_values`], given
    /// the fill at the cut (`[1, C, …]`), starting from the values `kept` (see [`upstream_model`]).
    pub fn upstream(&self, model: &ModelProto, cut: &Cut, fill: &ArrayD<f32>, outputs: &[String], kept: &[(&str, &Tensor)]) -> Result<ModelProto> {
        let mut model = model.clone();
        let graph = model.graph.as_mut().ok_or_else(|| Error::InvalidGraph("the model has no graph".into()))?;
        let mut names = NameGen::new(graph, PREFIX);
        names.reserve(&[self.delta.as_str()]);
        if let Some(masked) = &self.masked {
            names.reserve(&[masked.as_str()]);
        }
        // The chain once more, from the fill instead of the cut value: `value` with every channel
        // masked.
        let fill_name = names.fresh("fill");
        graph.initializer.push(from_f32(&fill_name, &fill.view()));
        let mut renames: HashMap<String, String> = HashMap::from([(cut.value.clone(), fill_name.clone())]);
        let mut masked = fill_name;
        for &position in &self.chain {
            let original = &graph.node[position];
            let output = match (&self.masked, original.output.first()) {
                (Some(name), Some(o)) if *o == self.value => name.clone(),
                _ => names.fresh("masked"),
            };
            renames.insert(original.output[0].clone(), output.clone());
            let mut copy = renamed_values(original, &renames);
            copy.name = Some(names.fresh("node"));
            graph.node.push(copy);
            masked = output;
        }
        graph.node.push(node("Sub", &[&self.value, &masked], &self.delta, Vec::new(), &mut names));
        graph.value_info.push(float_value(&self.delta));
        if let Some(masked) = &self.masked {
            graph.value_info.push(float_value(masked));
        }
        upstream_model(&model, outputs, kept)
    }

    /// The corrected downstream part, its inputs typed after `examples` (one per
    /// [`Correction::frontier`] value): per consumer `z − conv(δ_j, W_j)`, then the rest.
    pub fn downstream(&self, model: &ModelProto, examples: &[Tensor], logits: &str, constant_integers: bool) -> Result<ModelProto> {
        let mut model = model.clone();
        let graph = model.graph.as_mut().ok_or_else(|| Error::InvalidGraph("the model has no graph".into()))?;
        let mut names = NameGen::new(graph, PREFIX);
        let mut positions = Vec::new();
        for consumer in &self.consumers {
            let attributes: Vec<AttributeProto> = consumer.node.attribute.iter().filter(|a| a.name.as_deref() != Some("group")).cloned().collect();
            let contribution = names.fresh("contribution");
            positions.extend([graph.node.len(), graph.node.len() + 1]);
            graph.node.push(node("Conv", &[&self.delta, &consumer.weight_input], &contribution, attributes, &mut names));
            graph.node.push(node("Sub", &[&consumer.input, &contribution], &consumer.output, Vec::new(), &mut names));
        }
        positions.extend(&self.downstream);
        downstream_model(&model, &positions, &self.frontier, examples, logits, constant_integers)
    }
}

/// A float tensor of unknown shape.
fn float_value(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto { value: Some(type_proto::Value::TensorType(type_proto::Tensor { elem_type: Some(FLOAT), shape: None })), denotation: None }),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>, names: &mut NameGen) -> NodeProto {
    NodeProto {
        name: Some(names.fresh(op)),
        op_type: Some(op.to_string()),
        input: inputs.iter().map(|i| i.to_string()).collect(),
        output: vec![output.to_string()],
        attribute,
        ..Default::default()
    }
}

/// `node` as a [`Consumer`] of `value` (`channels` channels), when it is a convolution reading
/// `value` as its data input only, with constant weights of a shape that fits.
fn consumer(index: &GraphIndex, node: &NodeProto, value: &str, channels: usize, names: &mut NameGen) -> Result<Option<Consumer>> {
    let reads_once = node.input.first().map(String::as_str) == Some(value) && node.input.iter().filter(|i| *i == value).count() == 1;
    if node.op_type.as_deref() != Some("Conv") || !reads_once || node.output.first().is_none_or(String::is_empty) {
        return Ok(None);
    }
    let Some(weight) = node.input.get(1).and_then(|w| index.constant(w)) else { return Ok(None) };
    let group = usize::try_from(attr_int(node, "group", 1)).unwrap_or(0);
    let shape = shape_of(weight)?;
    if group == 0 || shape.len() < 3 || shape[1] * group != channels || shape[0] % group != 0 {
        return Ok(None);
    }
    Ok(Some(Consumer {
        output: node.output[0].clone(),
        input: names.fresh("z"),
        weight_input: names.fresh("channel_weight"),
        node: node.clone(),
        weight: to_f32(weight)?.to_owned(),
        group,
    }))
}

/// Whether `logits` predicts `label`, and whether that answer is beyond doubt: every logit finite
/// and the label's margin over the best other logit outside the guard band.
pub(super) fn decided(logits: &[f32], label: i64) -> (bool, bool) {
    let Some(own) = usize::try_from(label).ok().and_then(|l| logits.get(l).copied()) else { return (false, true) };
    if logits.iter().any(|v| !v.is_finite()) {
        return (false, false);
    }
    let other = logits.iter().enumerate().filter(|(k, _)| Some(*k) != usize::try_from(label).ok()).map(|(_, &v)| v).fold(f32::NEG_INFINITY, f32::max);
    let largest = logits.iter().fold(0f32, |m, v| m.max(v.abs()));
    let margin = own - other;
    (margin > 0.0, margin.abs() >= GUARD_ABSOLUTE + GUARD_RELATIVE * largest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain 2-D convolution (no padding, stride 1) of `x` `[C, H, W]` with `w` `[M, C/g, k, k]`.
    fn conv(x: &ArrayD<f32>, w: &ArrayD<f32>, group: usize) -> ArrayD<f32> {
        let (c, h, wd) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let (m, cg, k) = (w.shape()[0], w.shape()[1], w.shape()[2]);
        let (oh, ow) = (h - k + 1, wd - k + 1);
        let mg = m / group;
        assert_eq!(cg * group, c);
        let mut out = ArrayD::zeros(IxDyn(&[m, oh, ow]));
        for o in 0..m {
            let g = o / mg;
            for ci in 0..cg {
                for y in 0..oh {
                    for xx in 0..ow {
                        for dy in 0..k {
                            for dx in 0..k {
                                out[[o, y, xx]] += w[[o, ci, dy, dx]] * x[[g * cg + ci, y + dy, xx + dx]];
                            }
                        }
                    }
                }
            }
        }
        out
    }

    fn values(shape: &[usize], seed: u32) -> ArrayD<f32> {
        let n: usize = shape.iter().product();
        ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(|v| (((v as u32).wrapping_mul(2654435761) ^ seed) % 17) as f32 / 4.0 - 2.0).collect()).unwrap()
    }

    fn consumer(weight: ArrayD<f32>, group: usize) -> Consumer {
        Consumer { output: "z".into(), input: "z_in".into(), weight_input: "w".into(), node: NodeProto::default(), weight, group }
    }

    #[test]
    fn the_correction_equals_the_convolution_of_the_masked_input() {
        // Plain and grouped (g = 2) convolutions; the image's channel j replaced by a masked value.
        for group in [1, 2] {
            let (c, m) = (4, 6);
            let w = values(&[m, c / group, 2, 2], 7);
            let a = values(&[c, 4, 5], 3);
            let a_masked = values(&[c, 4, 5], 11);
            let z = conv(&a, &w, group);
            let consumer = consumer(w.clone(), group);
            for j in 0..c {
                let delta = (&a.index_axis(Axis(0), j) - &a_masked.index_axis(Axis(0), j)).insert_axis(Axis(0));
                let corrected = &z - &conv(&delta, &consumer.channel_weight(j).unwrap(), 1);
                let mut variant = a.clone();
                variant.index_axis_mut(Axis(0), j).assign(&a_masked.index_axis(Axis(0), j));
                // Values are multiples of 1/16 with small sums: exact in f32.
                assert_eq!(corrected, conv(&variant, &w, group), "group {group}, channel {j}");
            }
        }
    }

    #[test]
    fn channel_weights_are_zero_outside_the_group() {
        // M = 4, g = 2, C/g = 1: input channel 1 feeds output channels 2 and 3.
        let w = ArrayD::from_shape_vec(IxDyn(&[4, 1, 1]), vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(consumer(w, 2).channel_weight(1).unwrap().as_slice().unwrap(), &[0.0, 0.0, 3.0, 4.0]);
        // M = 2, g = 1, C = 2: channel j's weights are W[:, j].
        let w = ArrayD::from_shape_vec(IxDyn(&[2, 2, 1]), vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(consumer(w, 1).channel_weight(1).unwrap().as_slice().unwrap(), &[2.0, 4.0]);
    }

    #[test]
    fn near_ties_are_not_decided() {
        assert_eq!(decided(&[0.0, 2.0, 1.0], 1), (true, true));
        assert_eq!(decided(&[0.0, 2.0, 1.0], 2), (false, true));
        assert_eq!(decided(&[0.0, 1.0, 1.0005], 1), (false, false));
        assert_eq!(decided(&[0.0, 1.0005, 1.0], 1), (true, false));
        // The band grows with the logits' scale.
        assert_eq!(decided(&[0.0, 100.0, 100.005], 2), (true, false));
        assert_eq!(decided(&[0.0, f32::NAN, 1.0], 2), (false, false));
        // A label outside the logits is never predicted.
        assert_eq!(decided(&[0.0, 1.0], 5), (false, true));
    }
}
