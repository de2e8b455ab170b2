//! Where one layer's assessment splits the graph: the cut after the convolution's channel-wise
//! chain, the upstream part that computes the frontier once per batch, and the downstream part
//! that runs per masked variant.

use std::collections::HashSet;

use crate::analysis::ConvInfo;
use crate::error::{Error, Result};
use crate::onnx::builder::{BOOL, FLOAT, INT64};
use crate::onnx::graph::GraphIndex;
use crate::onnx::proto::{
    tensor_shape_proto::{dimension::Value as DimValue, Dimension},
    type_proto, GraphProto, ModelProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use crate::tensor::Tensor;

/// Operators that act on each channel separately, so a channel zeroed before them stays a
/// function of nothing but itself after them; the cut moves past them (see the module docs).
pub(super) const CHANNELWISE: &[&str] = &["BatchNormalization", "Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Identity"];

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

/// `model` reduced to what computes `outputs`, which become its only graph outputs, starting
/// from the values `kept` (typed after their tensors) where it needs them: those become graph
/// inputs and what computes them is left out.
pub fn upstream_model(model: &ModelProto, outputs: &[String], kept: &[(&str, &Tensor)]) -> Result<ModelProto> {
    let graph = model.graph.as_ref().ok_or_else(|| Error::InvalidGraph("the model has no graph".into()))?;
    let index = GraphIndex::new(graph)?;
    let mut needed: HashSet<String> = outputs.iter().cloned().collect();
    let is_kept = |value: &str| kept.iter().any(|(k, _)| *k == value);
    let mut keep = vec![false; graph.node.len()];
    for &position in index.topological_order().iter().rev() {
        let node = &graph.node[position];
        if node.output.iter().any(|o| needed.contains(o) && !is_kept(o)) {
            keep[position] = true;
            needed.extend(node.input.iter().filter(|i| !i.is_empty()).cloned());
        }
    }
    let mut out = model.clone();
    let g = out.graph.as_mut().ok_or_else(|| Error::Internal("graph vanished".into()))?;
    g.node = graph.node.iter().zip(&keep).filter(|(_, k)| **k).map(|(n, _)| n.clone()).collect();
    g.input.retain(|i| i.name.as_deref().is_some_and(|n| needed.contains(n) && !is_kept(n)));
    g.input.extend(kept.iter().filter(|(k, _)| needed.contains(*k)).map(|(k, t)| input_info(k, t)));
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
        .map(|d| Dimension { value: Some(DimValue::DimParam(format!("deeppatch_d{d}"))), denotation: None })
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

/// The nodes `downstream` (positions in `model`'s graph, topological order) as a model whose
/// inputs are the values they read from above, `frontier` (typed after `examples`), and whose
/// output is the logits: [`Cut::downstream`] and [`Cut::frontier`], or the part after the
/// consumer convolutions when they are corrected.
pub fn downstream_model(model: &ModelProto, downstream: &[usize], frontier: &[String], examples: &[Tensor], logits: &str, constant_integers: bool) -> Result<ModelProto> {
    let graph = model.graph.as_ref().ok_or_else(|| Error::InvalidGraph("the model has no graph".into()))?;
    let computes_logits = downstream.iter().any(|&p| graph.node[p].output.iter().any(|o| o == logits));
    if !computes_logits {
        return Err(Error::Unsupported {
            node: frontier.first().cloned().unwrap_or_default(),
            op_type: "Conv".into(),
            message: format!("the output '{logits}' does not depend on this value"),
        });
    }
    let mut out = model.clone();
    let g = out.graph.as_mut().ok_or_else(|| Error::Internal("graph vanished".into()))?;
    g.node = downstream.iter().map(|&p| graph.node[p].clone()).collect();
    // With `constant_integers`, integer values at the frontier (shape computations such as a
    // shortcut's pads, checked by the caller to be the same for every batch) become constants,
    // which tract needs where an operator takes them as attributes.
    let constant = |t: &Tensor| constant_integers && matches!(t, Tensor::I64(_));
    g.input = frontier.iter().zip(examples).filter(|(_, t)| !constant(t)).map(|(name, t)| input_info(name, t)).collect();
    for (name, example) in frontier.iter().zip(examples) {
        if let (true, Tensor::I64(values)) = (constant(example), example) {
            let values: Vec<i64> = values.iter().copied().collect();
            g.initializer.push(crate::onnx::tensor::from_i64(name, example.shape(), &values));
        }
    }
    g.output = vec![value_info(graph, logits)];
    // Intermediate shapes recorded for the whole graph may not hold for stacked variants.
    g.value_info.clear();
    Ok(out)
}
