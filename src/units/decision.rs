//! The γ decision subgraph, fed by the first patched layer (docs/specification.md §3.4): the Corrective Rate
//! (always computed, the `deeppatch_cr` monitoring output), the rule's score (CR itself, or the
//! probe's logit) and the per-sample adaptation flags derived from it.
//!
//! CR_n = |{neurons where exactly one of z⁻ > 0, z⁺ > 0}| / |z⁺|, with z⁻ the blamed original
//! channels and z⁺ the replacement channels, both after the layer's own BatchNormalization and
//! activation. Where the blamed and replacement filters fit one block of the runtime's blocked
//! convolution, one convolution over the layer's input computes both (z⁻ bit for bit the model's
//! value, see `joint_signs`); otherwise z⁻ is read from the model's own value and z⁺ computed
//! beside it from the replacement filters.
//!
//! Cost matters here: a clean batch pays for this subgraph and nothing else, so it uses as few
//! nodes as the contract allows (see docs/patching.md for the figures).

use super::spec::{Decision, Direction};
use super::PatchedParams;
use crate::analysis::facts::{Dim, Facts};
use crate::analysis::geometry::Window;
use crate::analysis::site::Site;
use crate::analysis::ConvInfo;
use crate::error::{Error, Result};
use crate::onnx::builder::{int, ints, Builder, FLOAT};
use crate::onnx::graph::GraphIndex;
use crate::onnx::proto::{AttributeProto, GraphProto, NodeProto};
use crate::onnx::tensor::to_f32;

/// The value holding the probe's raw features, [N, 4C] (see [`probe_logit`]); not a graph output,
/// calibration exposes it.
pub const PROBE_FEATURES: &str = "deeppatch_probe_features";

/// Names of the decision's values.
pub struct DecisionValues {
    /// CR per sample, [N] float.
    pub cr: String,
    /// The adaptation flag per sample (rule and `deeppatch_decision`), [N] bool.
    pub adapted: String,
    /// Whether any sample is adapted, a bool scalar (the `If` condition).
    pub any: String,
}

/// The names the decision gives its monitoring values.
pub struct OutputNames<'a> {
    pub cr: &'a str,
    pub adapted: &'a str,
    /// The probe's logit per sample (used by the probe rule only).
    pub logit: &'a str,
}

/// Emits the CR and the decision for the layer at `site`, whose merged parameters are `params`.
/// `switch` is the bool scalar that turns adaptation off.
#[allow(clippy::too_many_arguments)]
pub fn emit(
    builder: &mut Builder,
    graph: &GraphProto,
    site: &Site,
    conv: &ConvInfo,
    params: &PatchedParams,
    blamed: &[usize],
    decision: &Decision,
    switch: &str,
    names: &OutputNames,
) -> Result<DecisionValues> {
    if site.output.is_empty() {
        return Err(no_value(conv));
    }
    corrective_rate(builder, &FirstLayer { graph, site, conv, params, blamed }, names.cr)?;
    let any = match decision {
        Decision::Cr { boundary, direction, .. } => gate(builder, names.cr, *direction == Direction::Above, *boundary, switch, names.adapted)?,
        Decision::Probe { .. } => {
            probe_logit(builder, graph, site, conv, decision, names.logit)?;
            gate(builder, names.logit, true, 0.0, switch, names.adapted)?
        }
    };
    Ok(DecisionValues { cr: names.cr.to_string(), adapted: names.adapted.to_string(), any })
}

/// Output channels that onnxruntime's blocked (NCHWc) convolution computes together on AVX-512
/// CPUs: a convolution with fewer filters costs as much as one with this many.
const LANES: usize = 16;

/// The first patched convolution, as the decision reads it.
struct FirstLayer<'a> {
    graph: &'a GraphProto,
    site: &'a Site,
    conv: &'a ConvInfo,
    params: &'a PatchedParams,
    blamed: &'a [usize],
}

impl FirstLayer<'_> {
    /// The parameters (scale, bias, mean, var) of the BatchNormalization after the convolution,
    /// when there is one: the original ones, and those of the replacement channels (the
    /// `bn_adapt` statistics where the patch has them, else the original ones).
    fn batchnorm(&self) -> Option<(Vec<String>, Vec<String>)> {
        // `site` recognises a BatchNormalization with its five inputs only.
        let original = self.graph.node[self.site.batchnorm?].input.get(1..5)?.to_vec();
        let replacement = self.params.batchnorm.as_ref().map_or_else(|| original.clone(), |(_, merged)| merged.to_vec());
        Some((original, replacement))
    }
}

/// The refusal of a convolution that computes no value (no output, or an empty name): the
/// decision reads that value.
fn no_value(conv: &ConvInfo) -> Error {
    let message = "computes no value (no named output) for the decision to read".into();
    Error::Unsupported { node: conv.name.clone(), op_type: "Conv".into(), message }
}

/// Rows `indices` of `value`: a Gather on axis 0 (of constants, folded when a session is created).
fn rows(builder: &mut Builder, value: &str, indices: &str) -> String {
    builder.op("Gather", &[value, indices], vec![int("axis", 0)])
}

/// `cr_name` = ReduceMean(Cast(Xor(z⁻ > 0, z⁺ > 0))) over channels and pixels.
fn corrective_rate(builder: &mut Builder, layer: &FirstLayer, cr_name: &str) -> Result<()> {
    let (original_active, replacement_active) = if layer.conv.group == 1 && 2 * layer.blamed.len() <= LANES {
        joint_signs(builder, layer)?
    } else {
        separate_signs(builder, layer)?
    };
    let disagree = builder.op("Xor", &[&original_active, &replacement_active], vec![]);
    let counts = builder.op("Cast", &[&disagree], vec![int("to", FLOAT as i64)]);
    let rank = layer.conv.kernel.len() + 2;
    let axes: Vec<i64> = (1..rank as i64).collect();
    builder.reduce_named("ReduceMean", &counts, &axes, false, cr_name);
    Ok(())
}

/// z⁻ > 0 and z⁺ > 0 from one convolution over the layer's input, the blamed original filters
/// beside the replacement filters: 2k filters cost what k cost (one block of [`LANES`]), and the
/// model's own output is then not read, which spares onnxruntime a layout conversion of the whole
/// layer and a Gather. Where the lanes leave room, the filters are laid out in column phases
/// ([`column_phases`]), which cuts the multiplications further.
///
/// z⁻ is recomputed, not read, yet it is the model's value bit for bit: every output channel of a
/// convolution is computed on its own, and the phase kernels only add zero taps, which leave each
/// sum unchanged. The tests compare the CR with counts taken on the original model's own values.
fn joint_signs(builder: &mut Builder, layer: &FirstLayer) -> Result<(String, String)> {
    let FirstLayer { graph, site, conv, params, blamed } = *layer;
    let node = &graph.node[site.conv];
    let window = conv_window(graph, builder.opset(), node, conv)?;
    let phases = column_phases(window.as_ref(), 2 * blamed.len());
    let stride = window.as_ref().and_then(|w| w.strides.last().copied()).unwrap_or(1);
    let channels = builder.ints(&blamed.iter().map(|&c| c as i64).collect::<Vec<_>>());
    // Channel order: (part, phase, blamed filter), z⁻ first, so one Split pairs them.
    let tiled = builder.ints(&(0..phases).flat_map(|_| blamed.iter().map(|&c| c as i64)).collect::<Vec<_>>());
    let original_bias = node.input.get(2).filter(|b| !b.is_empty());
    let parts = [(&node.input[1], original_bias), (&params.weight, params.bias.as_ref().or(original_bias))];
    let rank = conv.kernel.len() + 2;
    let (mut weights, mut biases) = (Vec::new(), Vec::new());
    for (weight, bias) in parts {
        let filters = rows(builder, weight, &channels);
        for phase in 0..phases {
            let mut pads = vec![0i64; 2 * rank];
            pads[rank - 1] = phase as i64 * stride;
            pads[2 * rank - 1] = (phases - 1 - phase) as i64 * stride;
            weights.push(builder.pad(&filters, &pads));
        }
        if let Some(bias) = bias {
            biases.push(rows(builder, bias, &tiled));
        }
    }
    let weights: Vec<&str> = weights.iter().map(String::as_str).collect();
    let weight = builder.op("Concat", &weights, vec![int("axis", 0)]);
    let mut inputs = vec![site.input.clone(), weight];
    if !biases.is_empty() {
        let biases: Vec<&str> = biases.iter().map(String::as_str).collect();
        inputs.push(builder.op("Concat", &biases, vec![int("axis", 0)]));
    }
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let joint = builder.op("Conv", &inputs, phased_attributes(node, window.as_ref(), phases));

    let batchnorm = layer.batchnorm().map(|(original, replacement)| {
        let pairs = original.iter().zip(&replacement);
        pairs
            .map(|(minus, plus)| {
                let (minus, plus) = (rows(builder, minus, &tiled), rows(builder, plus, &tiled));
                builder.op("Concat", &[&minus, &plus], vec![int("axis", 0)])
            })
            .collect()
    });
    let activated = activated(builder, layer, joint, batchnorm);
    let zero = builder.scalar(FLOAT, 0.0)?;
    let active = builder.op("Greater", &[&activated, &zero], vec![]);
    let mut split = vec![int("axis", 1)];
    if builder.opset() >= 18 {
        split.push(int("num_outputs", 2));
    }
    let halves = builder.op_n("Split", &[&active], split, 2);
    Ok((halves[0].clone(), halves[1].clone()))
}

/// z⁻ > 0 from the model's own value and z⁺ > 0 from the replacement filters alone (k filters),
/// or, for a grouped convolution, from the merged layer's blamed channels.
fn separate_signs(builder: &mut Builder, layer: &FirstLayer) -> Result<(String, String)> {
    let FirstLayer { graph, site, conv, params, blamed } = *layer;
    let channels = builder.ints(&blamed.iter().map(|&c| c as i64).collect::<Vec<_>>());
    let original = builder.op("Gather", &[&site.output, &channels], vec![int("axis", 1)]);
    let conv_node = &graph.node[site.conv];
    let grouped = conv.group > 1;
    let (weight, bias) = if grouped {
        (params.weight.as_str(), params.bias.as_deref())
    } else {
        (params.replacement_weight.as_str(), params.replacement_bias.as_deref())
    };
    let mut inputs = vec![site.input.as_str(), weight];
    inputs.extend(bias);
    let mut replacement = builder.op("Conv", &inputs, conv_node.attribute.clone());
    if grouped {
        replacement = builder.op("Gather", &[&replacement, &channels], vec![int("axis", 1)]);
    }
    let batchnorm = layer.batchnorm().map(|(_, replacement)| replacement.iter().map(|p| rows(builder, p, &channels)).collect());
    let replacement = activated(builder, layer, replacement, batchnorm);
    let zero = builder.scalar(FLOAT, 0.0)?;
    let original_active = builder.op("Greater", &[&original, &zero], vec![]);
    let replacement_active = builder.op("Greater", &[&replacement, &zero], vec![]);
    Ok((original_active, replacement_active))
}

/// `value` (a convolution's output) through the layer's BatchNormalization, with the given
/// per-channel parameters, and its activation where that can move a value across zero (the sign
/// test needs nothing else).
fn activated(builder: &mut Builder, layer: &FirstLayer, mut value: String, batchnorm: Option<Vec<String>>) -> String {
    let FirstLayer { graph, site, .. } = *layer;
    if let (Some(position), Some(parameters)) = (site.batchnorm, batchnorm) {
        let mut inputs = vec![value.as_str()];
        inputs.extend(parameters.iter().map(String::as_str));
        value = builder.op("BatchNormalization", &inputs, graph.node[position].attribute.clone());
    }
    if let Some(activation) = site.activation.map(|p| &graph.node[p]).filter(|a| !keeps_sign(graph, a)) {
        let mut inputs = vec![value.as_str()];
        inputs.extend(activation.input.iter().skip(1).map(String::as_str));
        value = builder.op(activation.op_type.as_deref().unwrap_or("Relu"), &inputs, activation.attribute.clone());
    }
    value
}

/// How many column phases the joint convolution of `filters` filters is laid out in. With P
/// phases, output column x = P·X + q comes from filter copy q, whose kernel is the original one
/// shifted q·stride taps right in a kernel stride·(P − 1) taps wider, run at P times the stride:
/// P·filters channels of width W/P. That takes (kw + s(P − 1)) / (kw·P) of the multiplications
/// when P·filters fits in one block of [`LANES`], so phases are used while it does, the window is
/// known (static input size), the output width divides, the kernel is wider than its stride and
/// the last axis is undilated (so a shift is a Pad of the kernel).
fn column_phases(window: Option<&Window>, filters: usize) -> usize {
    let Some(window) = window else { return 1 };
    let last = window.kernel.len() - 1;
    if window.dilations[last] != 1 || window.kernel[last] <= window.strides[last] {
        return 1;
    }
    let mut phases = 1;
    while 2 * phases * filters <= LANES && window.output[last] % (2 * phases as i64) == 0 {
        phases *= 2;
    }
    phases
}

/// The Conv attributes for `phases` column phases: the last axis's kernel widened by
/// stride·(phases − 1) and its stride multiplied by `phases`, every pad explicit.
fn phased_attributes(node: &NodeProto, window: Option<&Window>, phases: usize) -> Vec<AttributeProto> {
    let Some(window) = window.filter(|_| phases > 1) else { return node.attribute.clone() };
    let last = window.kernel.len() - 1;
    let (mut kernel, mut strides) = (window.kernel.clone(), window.strides.clone());
    kernel[last] += window.strides[last] * (phases as i64 - 1);
    strides[last] *= phases as i64;
    let pads: Vec<i64> = window.begin.iter().chain(&window.end).copied().collect();
    let replaced = ["kernel_shape", "strides", "pads", "auto_pad"];
    let mut attributes: Vec<AttributeProto> =
        node.attribute.iter().filter(|a| !replaced.contains(&a.name.as_deref().unwrap_or(""))).cloned().collect();
    attributes.extend([ints("kernel_shape", &kernel), ints("strides", &strides), ints("pads", &pads)]);
    attributes
}

/// The Conv node's window with every pad explicit, when its input's spatial size is static.
fn conv_window(graph: &GraphProto, opset: i64, node: &NodeProto, conv: &ConvInfo) -> Result<Option<Window>> {
    let index = GraphIndex::new(graph)?;
    let facts = Facts::infer(graph, &index, opset);
    let spatial = facts
        .get(&node.input[0])
        .and_then(|f| f.shape.as_ref())
        .and_then(|shape| shape.get(2..)?.iter().map(Dim::value).collect::<Option<Vec<i64>>>());
    let kernel: Vec<i64> = conv.kernel.iter().map(|&k| k as i64).collect();
    Ok(spatial.and_then(|input| Window::new(node, &input, &kernel).ok()))
}

/// Whether `activation(x) > 0` exactly when `x > 0`, in floating point too, so the sign test can
/// read x: Relu; LeakyRelu and Elu with α > 0 (identity above zero, ≤ 0 below); Clip with constant
/// bounds lo ≤ 0 < hi. Not Tanh, Softsign or Selu (their results above zero go through arithmetic
/// that may round a tiny x to 0), nor HardSwish, HardSigmoid or Sigmoid.
pub fn keeps_sign(graph: &GraphProto, activation: &NodeProto) -> bool {
    let attribute = |name: &str, default: f32| {
        activation.attribute.iter().find(|a| a.name.as_deref() == Some(name)).and_then(|a| a.f).unwrap_or(default)
    };
    match activation.op_type.as_deref() {
        Some("Relu") => true,
        Some("LeakyRelu") => attribute("alpha", 0.01) > 0.0,
        Some("Elu") => attribute("alpha", 1.0) > 0.0,
        Some("Clip") => {
            // Opset 11 and newer: optional constant inputs; before: attributes.
            let bound = |slot: usize, name: &str, default: f32| -> Option<f32> {
                match activation.input.get(slot).filter(|n| !n.is_empty()) {
                    Some(value) => {
                        let tensor = graph.initializer.iter().find(|t| t.name.as_deref() == Some(value.as_str()))?;
                        to_f32(tensor).ok()?.iter().next().copied()
                    }
                    None => Some(attribute(name, default)),
                }
            };
            matches!((bound(1, "min", f32::NEG_INFINITY), bound(2, "max", f32::INFINITY)), (Some(lo), Some(hi)) if lo <= 0.0 && hi > 0.0)
        }
        _ => false,
    }
}

/// The probe's logit per sample, written to `logit_name`.
///
/// z is the first patched convolution's original output, after the BatchNormalization that
/// directly follows it (before any activation). Per channel c and sample, over H×W pixels:
/// - f1_c = mean of relu(z_c);
/// - f2_c = share of pixels with z_c > 0;
/// - f3_c = (mean over the H·(W−1) horizontal pairs of |z[h, w+1] − z[h, w]| + mean over the
///   (H−1)·W vertical pairs of |z[h+1, w] − z[h, w]|) / 2. Each difference comes from a
///   depthwise convolution with taps −1, +1 (one rounding, as a − b).
///
/// The raw features, [N, 4C] = [f1 (C), f2 (C), horizontal means (C), vertical means (C)], are the
/// value [`PROBE_FEATURES`]; the logit is `(F − m) / s · w + b` with the probe's mean, std and
/// weights laid out over that order (each f3 half standardised with 2σ, so the halves add up to
/// (f3 − μ)/σ).
pub fn probe_logit(builder: &mut Builder, graph: &GraphProto, site: &Site, conv: &ConvInfo, decision: &Decision, logit_name: &str) -> Result<()> {
    let Decision::Probe { mean, std, weights, bias } = decision else {
        return Err(Error::Internal("probe_logit called for a rule that is not the probe".into()));
    };
    let conv_node = &graph.node[site.conv];
    if conv.kernel.len() != 2 {
        return Err(Error::Unsupported {
            node: conv.name.clone(),
            op_type: "Conv".into(),
            message: format!("the probe decision needs a 2-D convolution, this one is {}-D", conv.kernel.len()),
        });
    }
    let channels = conv.filters;
    decision.validate(channels)?;
    let producer = site.batchnorm.map_or(conv_node, |bn| &graph.node[bn]);
    let z = producer.output.first().filter(|z| !z.is_empty()).cloned().ok_or_else(|| no_value(conv))?;
    // relu(z) is the model's own value when its activation is a Relu reading z.
    let relu = match site.activation.map(|p| &graph.node[p]) {
        Some(activation) if activation.op_type.as_deref() == Some("Relu") => site.output.clone(),
        _ => builder.op("Relu", &[&z], vec![]),
    };
    // Greater + Cast: onnxruntime's Sign is several times slower on large maps.
    let zero = builder.scalar(FLOAT, 0.0)?;
    let positive = builder.op("Greater", &[&relu, &zero], vec![]);
    let positive = builder.op("Cast", &[&positive], vec![int("to", FLOAT as i64)]);
    let mut pooled = vec![builder.reduce("ReduceMean", &relu, &[2, 3], false), builder.reduce("ReduceMean", &positive, &[2, 3], false)];
    // Depthwise convolutions with one filter per channel, so runtimes use their fast
    // depthwise kernels.
    for kernel_shape in [[1i64, 2], [2, 1]] {
        let taps: Vec<f64> = (0..channels).flat_map(|_| [-1.0, 1.0]).collect();
        let kernel = builder.floats(FLOAT, &[channels, 1, kernel_shape[0] as usize, kernel_shape[1] as usize], &taps)?;
        let differences = builder.op("Conv", &[&z, &kernel], vec![int("group", channels as i64), ints("kernel_shape", &kernel_shape)]);
        let magnitudes = builder.op("Abs", &[&differences], vec![]);
        pooled.push(builder.reduce("ReduceMean", &magnitudes, &[2, 3], false));
    }
    let pooled: Vec<&str> = pooled.iter().map(String::as_str).collect();
    builder.op_named("Concat", &pooled, vec![int("axis", 1)], PROBE_FEATURES);

    let (m, s, w) = probe_layout(mean, std, weights, channels);
    let m = builder.floats(FLOAT, &[m.len()], &m)?;
    let s = builder.floats(FLOAT, &[s.len()], &s)?;
    let w = builder.floats(FLOAT, &[w.len()], &w)?;
    let centred = builder.op("Sub", &[PROBE_FEATURES, &m], vec![]);
    let standardised = builder.op("Div", &[&centred, &s], vec![]);
    let dot = builder.op("MatMul", &[&standardised, &w], vec![]);
    let b = builder.scalar(FLOAT, f64::from(*bias))?;
    builder.op_named("Add", &[&dot, &b], vec![], logit_name);
    Ok(())
}

/// The probe's mean, std and weights (3C each) laid out over the raw features [f1, f2, f3
/// horizontal, f3 vertical] (4C each).
fn probe_layout(mean: &[f32], std: &[f32], weights: &[f32], channels: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let stretched = |values: &[f32], scale: f64| -> Vec<f64> {
        let difference = &values[2 * channels..];
        let first: Vec<f64> = values[..2 * channels].iter().map(|&v| f64::from(v)).collect();
        let halves = difference.iter().chain(difference).map(|&v| scale * f64::from(v));
        first.into_iter().chain(halves).collect()
    };
    (stretched(mean, 1.0), stretched(std, 2.0), stretched(weights, 1.0))
}

/// The flags `adapted_name` = (score on the adapted side of `threshold`) AND `switch`, and the
/// "any adapted" scalar. The switch gates the score once (a switched-off sample's score becomes
/// a value that never adapts), so the flags and "any" take two comparisons and one reduction.
fn gate(builder: &mut Builder, score: &str, adapt_above: bool, threshold: f32, switch: &str, adapted_name: &str) -> Result<String> {
    let (never, compare, extreme) =
        if adapt_above { (f64::NEG_INFINITY, "Greater", "ReduceMax") } else { (f64::INFINITY, "Less", "ReduceMin") };
    let never = builder.scalar(FLOAT, never)?;
    let threshold = builder.scalar(FLOAT, f64::from(threshold))?;
    let gated = builder.op("Where", &[switch, score, &never], vec![]);
    builder.op_named(compare, &[&gated, &threshold], vec![], adapted_name);
    let most = builder.reduce(extreme, &gated, &[], false);
    Ok(builder.op(compare, &[&most, &threshold], vec![]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::builder::float;
    use crate::onnx::tensor::from_f32;

    fn node(op: &str, inputs: &[&str]) -> NodeProto {
        NodeProto { op_type: Some(op.into()), input: inputs.iter().map(|s| s.to_string()).collect(), ..Default::default() }
    }

    #[test]
    fn sign_keeping_activations() {
        let mut graph = GraphProto::default();
        for (name, value) in [("zero", 0.0f32), ("six", 6.0), ("minus", -1.0)] {
            graph.initializer.push(from_f32(name, &ndarray::arr0(value).into_dyn().view()));
        }
        assert!(keeps_sign(&graph, &node("Relu", &["x"])));
        assert!(keeps_sign(&graph, &node("LeakyRelu", &["x"])));
        let mut negative_slope = node("LeakyRelu", &["x"]);
        negative_slope.attribute.push(float("alpha", -0.5));
        assert!(!keeps_sign(&graph, &negative_slope));
        assert!(keeps_sign(&graph, &node("Clip", &["x", "zero", "six"])));
        assert!(keeps_sign(&graph, &node("Clip", &["x", "minus"])));
        assert!(!keeps_sign(&graph, &node("Clip", &["x", "six"])), "lo > 0: every value is positive");
        assert!(!keeps_sign(&graph, &node("Clip", &["x", "runtime", "six"])), "bounds unknown at build time");
        assert!(keeps_sign(&graph, &node("Elu", &["x"])));
        for op in ["Tanh", "Sigmoid", "HardSigmoid", "HardSwish", "Selu"] {
            assert!(!keeps_sign(&graph, &node(op, &["x"])), "{op}");
        }
    }

    /// A Conv node with `attributes` and its window on a `size`×`size` input, 3×3 kernel.
    fn window(attributes: Vec<AttributeProto>, size: i64) -> (NodeProto, Window) {
        let conv = NodeProto { op_type: Some("Conv".into()), attribute: attributes, ..Default::default() };
        let window = Window::new(&conv, &[size, size], &[3, 3]).unwrap();
        (conv, window)
    }

    #[test]
    fn column_phases_fill_one_block() {
        let (_, stem) = window(vec![ints("pads", &[1, 1, 1, 1])], 32);
        assert_eq!(column_phases(Some(&stem), 8), 2, "2k = 8 filters: two phases fill 16 lanes");
        assert_eq!(column_phases(Some(&stem), 4), 4);
        assert_eq!(column_phases(Some(&stem), 9), 1, "two phases would need 18 lanes");
        assert_eq!(column_phases(None, 4), 1, "unknown input size");
        let (_, odd) = window(vec![ints("pads", &[1, 1, 1, 1])], 30);
        assert_eq!(column_phases(Some(&odd), 4), 2, "width 30 divides by 2, not by 4");
        let (_, dilated) = window(vec![ints("dilations", &[2, 2])], 32);
        assert_eq!(column_phases(Some(&dilated), 4), 1);
        let (_, strided) = window(vec![ints("strides", &[2, 2]), ints("pads", &[1, 1, 1, 1])], 32);
        assert_eq!(column_phases(Some(&strided), 8), 2, "kernel 3 is wider than stride 2");
        let (_, wide_stride) = window(vec![ints("strides", &[3, 3])], 33);
        assert_eq!(column_phases(Some(&wide_stride), 4), 1, "stride 3 ≥ kernel 3: no saving");
    }

    #[test]
    fn phased_attributes_make_every_pad_explicit() {
        let same = AttributeProto { name: Some("auto_pad".into()), s: Some(b"SAME_UPPER".to_vec()), r#type: Some(3), ..Default::default() };
        let (conv, strided) = window(vec![same, ints("strides", &[2, 2]), int("group", 1)], 32);
        let attributes = phased_attributes(&conv, Some(&strided), 2);
        let get = |name: &str| attributes.iter().find(|a| a.name.as_deref() == Some(name)).map(|a| a.ints.clone());
        assert_eq!(get("kernel_shape"), Some(vec![3, 5]), "widened by stride · (phases − 1)");
        assert_eq!(get("strides"), Some(vec![2, 4]));
        assert_eq!(get("pads"), Some(vec![0, 0, 1, 1]), "SAME_UPPER on 32 with stride 2: one pad after");
        assert!(attributes.iter().all(|a| a.name.as_deref() != Some("auto_pad")));
        assert!(attributes.iter().any(|a| a.name.as_deref() == Some("group")), "other attributes kept");
        assert_eq!(phased_attributes(&conv, Some(&strided), 1), conv.attribute, "one phase: the node's own attributes");
    }

    #[test]
    fn probe_layout_splits_the_difference_feature() {
        let (m, s, w) = probe_layout(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[0.5, 0.25, 1.0, 1.0, 4.0, 8.0], &[7.0; 6], 2);
        assert_eq!(m, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 5.0, 6.0]);
        assert_eq!(s, [0.5, 0.25, 1.0, 1.0, 8.0, 16.0, 8.0, 16.0]);
        assert_eq!(w, [7.0; 8]);
    }
}
