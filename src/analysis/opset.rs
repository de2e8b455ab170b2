//! Raising a model's default-domain opset to [`PATCHABLE_OPSET`] before it is rewritten.
//!
//! The rewrites merge replacement filters with `ScatterND` (opset 11), so a model of opset 7 to
//! 10 is raised first. Only operators whose meaning is the same at opset 11 are accepted; the
//! four whose attributes became inputs (Clip, Pad, Slice, and Scatter, renamed ScatterElements)
//! are converted with initializers, so node positions do not change. Anything else (Upsample,
//! Resize, TopK before 10, Scan before 9, non-spatial BatchNormalization) is refused by name:
//! the tool never writes a model whose original computation it may have changed.

use super::facts::Facts;
use crate::error::{Error, Result};
use crate::onnx::builder::{Builder, DOUBLE, FLOAT};
use crate::onnx::graph::{attr_ints, attribute, node_label, GraphIndex};
use crate::onnx::proto::{ModelProto, NodeProto};
use crate::onnx::{default_opset, validate::OPSETS};

/// The opset the rewrites need (ScatterND).
pub const PATCHABLE_OPSET: i64 = 11;
/// IR version 6 came with opset 11.
const PATCHABLE_IR: i64 = 6;

/// Operators whose every version between opset 7 and 11 computes the same thing for what the
/// older form accepts (later versions only add types, negative axes or optional inputs).
const UNCHANGED: &[&str] = &[
    "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh", "AveragePool", "Cast", "Ceil",
    "Compress", "Concat", "Constant", "ConstantOfShape", "Conv", "ConvInteger", "ConvTranspose", "Cos", "Cosh", "DepthToSpace",
    "DequantizeLinear", "Div", "Dropout", "Elu", "Equal", "Erf", "Exp", "Expand", "EyeLike", "Flatten", "Floor", "Gather", "Gemm",
    "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "Greater", "HardSigmoid", "Hardmax", "Identity", "If", "InstanceNormalization",
    "IsInf", "IsNaN", "LRN", "LeakyRelu", "Less", "Log", "LogSoftmax", "Loop", "LpNormalization", "LpPool", "MatMul", "MatMulInteger",
    "Max", "MaxPool", "MaxUnpool", "Mean", "MeanVarianceNormalization", "Min", "Mod", "Mul", "Neg", "NonZero", "Not", "OneHot", "Or",
    "PRelu", "Pow", "QLinearConv", "QLinearMatMul", "QuantizeLinear", "Reciprocal", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape",
    "Selu", "Shape", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Size", "Softmax", "Softplus", "Softsign", "SpaceToDepth", "Split",
    "Sqrt", "Squeeze", "Sub", "Sum", "Tan", "Tanh", "ThresholdedRelu", "Tile", "Transpose", "Unsqueeze", "Where", "Xor",
];

/// `model` at an opset the rewrites can extend: unchanged when it already is, else raised to
/// [`PATCHABLE_OPSET`] (with a log line), or an error naming the operator that prevents it.
pub fn patchable(model: ModelProto) -> Result<ModelProto> {
    let opset = default_opset(&model);
    if opset >= PATCHABLE_OPSET || opset == 0 {
        return Ok(model);
    }
    let raised = raise(model, opset)?;
    crate::progress::info(&format!("opset {opset} raised to {PATCHABLE_OPSET} for the rewrite (every operator of the model means the same there)"));
    Ok(raised)
}

fn raise(mut model: ModelProto, opset: i64) -> Result<ModelProto> {
    if !OPSETS.contains(&opset) {
        return Err(Error::UnsupportedModel(format!("opset {opset} is older than the oldest this tool reads ({})", OPSETS.start())));
    }
    let graph = model.graph.as_mut().ok_or_else(|| Error::InvalidGraph("the model has no graph".into()))?;
    let index = GraphIndex::new(graph)?;
    let facts = Facts::infer(graph, &index, opset);
    let dtypes: Vec<Option<i32>> =
        graph.node.iter().map(|n| n.input.first().and_then(|x| facts.get(x)).map(|f| f.dtype).filter(|&d| d != 0)).collect();
    let mut builder = Builder::new(graph, PATCHABLE_OPSET);
    builder.set_scope("opset11/");
    for ((position, node), &dtype) in graph.node.iter_mut().enumerate().zip(&dtypes) {
        convert(node, position, opset, Some((dtype, &mut builder)))?;
    }
    graph.initializer.append(&mut builder.initializers);
    for import in &mut model.opset_import {
        if matches!(import.domain.as_deref(), None | Some("") | Some("ai.onnx")) {
            import.version = Some(PATCHABLE_OPSET);
        }
    }
    model.ir_version = Some(model.ir_version.unwrap_or(0).max(PATCHABLE_IR));
    Ok(model)
}

/// Rewrites one node (and the nodes of its subgraphs) to the opset-11 form, or refuses it.
/// `main` holds the element type of the node's first input and the builder of new initializers;
/// it is `None` inside subgraphs, where conversions that need new values are refused.
fn convert(node: &mut NodeProto, position: usize, opset: i64, main: Option<(Option<i32>, &mut Builder)>) -> Result<()> {
    for attribute in &mut node.attribute {
        for subgraph in attribute.g.iter_mut().chain(attribute.graphs.iter_mut()) {
            for (inner, child) in subgraph.node.iter_mut().enumerate() {
                convert(child, inner, opset, None)?;
            }
        }
    }
    if !crate::onnx::graph::in_default_domain(node) {
        return Ok(());
    }
    let op = node.op_type.clone().unwrap_or_default();
    let label = node_label(node, position);
    let refuse = |why: &str| Error::Unsupported {
        node: label.clone(),
        op_type: op.clone(),
        message: format!(
            "the model's opset {opset} must be raised to {PATCHABLE_OPSET} for the rewrite, and {why}; convert the model to opset {PATCHABLE_OPSET} or newer first"
        ),
    };
    let needs_inputs = matches!(op.as_str(), "Clip" | "Pad") || (op == "Slice" && opset < 10);
    let (dtype, builder) = match main {
        Some((dtype, builder)) => (dtype, builder),
        None if needs_inputs => return Err(refuse("its attributes become inputs, which this tool converts only in the main graph")),
        None => return check_unchanged(node, opset, &refuse),
    };
    let float_type = || dtype.filter(|&d| d == FLOAT || d == DOUBLE).ok_or_else(|| refuse("its input is not known to be float32 or float64"));
    match op.as_str() {
        "Clip" => {
            let dtype = float_type()?;
            let bound = |name: &str, default: f32| f64::from(attribute(node, name).and_then(|a| a.f).unwrap_or(default));
            let (min, max) = (bound("min", f32::MIN), bound("max", f32::MAX));
            node.input.truncate(1);
            node.input.push(builder.scalar(dtype, min)?);
            node.input.push(builder.scalar(dtype, max)?);
            drop_attributes(node, &["min", "max"]);
        }
        "Pad" => {
            let dtype = float_type()?;
            let pads = attr_ints(node, "pads").to_vec();
            let value = f64::from(attribute(node, "value").and_then(|a| a.f).unwrap_or(0.0));
            node.input.truncate(1);
            node.input.push(builder.ints(&pads));
            node.input.push(builder.scalar(dtype, value)?);
            drop_attributes(node, &["pads", "value"]);
        }
        "Slice" if opset < 10 => {
            let [starts, ends, axes] = ["starts", "ends", "axes"].map(|name| attr_ints(node, name).to_vec());
            node.input.truncate(1);
            node.input.push(builder.ints(&starts));
            node.input.push(builder.ints(&ends));
            if !axes.is_empty() {
                node.input.push(builder.ints(&axes));
            }
            drop_attributes(node, &["starts", "ends", "axes"]);
        }
        _ => check_unchanged(node, opset, &refuse)?,
    }
    Ok(())
}

/// Operators that need no new inputs: renamed, stripped of a dropped attribute, or refused.
fn check_unchanged(node: &mut NodeProto, opset: i64, refuse: &dyn Fn(&str) -> Error) -> Result<()> {
    match node.op_type.as_deref().unwrap_or("") {
        "Scatter" => node.op_type = Some("ScatterElements".into()),
        "Slice" if opset >= 10 => {}
        "Scan" if opset < 9 => return Err(refuse("Scan changed its inputs at opset 9")),
        "Scan" => {}
        "TopK" if opset < 10 => return Err(refuse("TopK's k became an input at opset 10")),
        "TopK" => {}
        "BatchNormalization" => {
            if attribute(node, "spatial").and_then(|a| a.i) == Some(0) {
                return Err(refuse("BatchNormalization with spatial = 0 has no opset-11 form"));
            }
            drop_attributes(node, &["spatial"]);
        }
        op if UNCHANGED.contains(&op) => {}
        _ => return Err(refuse("this tool does not know whether the operator means the same at opset 11")),
    }
    Ok(())
}

fn drop_attributes(node: &mut NodeProto, names: &[&str]) {
    node.attribute.retain(|a| !names.contains(&a.name.as_deref().unwrap_or("")));
}
