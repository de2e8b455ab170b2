//! Reverse-mode differentiation of a graph, and the assembly of the result into one model.

use std::collections::{HashMap, HashSet};

use super::emit::Builder;
use crate::analysis::facts::{is_float, Dim, Facts, DOUBLE, FLOAT};
use super::rules::{Ctx, Registry};
use crate::error::{Error, Result};
use crate::onnx::default_opset;
use crate::onnx::graph::GraphIndex;
use crate::onnx::proto::tensor_shape_proto::{dimension, Dimension};
use crate::onnx::proto::{type_proto, GraphProto, ModelProto, NodeProto, TensorShapeProto, TypeProto, ValueInfoProto};

/// The oldest default-domain opset whose operators the emitted nodes can be written in.
const MIN_OPSET: i64 = 9;

/// A forward model with its indices and static facts.
pub(crate) struct Forward<'m> {
    pub model: &'m ModelProto,
    pub graph: &'m GraphProto,
    pub index: GraphIndex<'m>,
    pub facts: Facts<'m>,
}

impl<'m> Forward<'m> {
    pub fn new(model: &'m ModelProto) -> Result<Forward<'m>> {
        let graph = model.graph.as_ref().ok_or_else(|| Error::InvalidGraph("the model has no graph".into()))?;
        let opset = default_opset(model);
        if opset < MIN_OPSET {
            return Err(Error::Unsupported {
                node: "(model)".into(),
                op_type: format!("opset {opset}"),
                message: format!("gradients need default-domain opset {MIN_OPSET} or newer"),
            });
        }
        let index = GraphIndex::new(graph)?;
        let facts = Facts::infer(graph, &index, opset);
        Ok(Forward { model, graph, index, facts })
    }

    /// The nodes in topological order, with their positions in `graph.node`.
    fn nodes_in_order(&self) -> impl DoubleEndedIterator<Item = (usize, &'m NodeProto)> + '_ {
        self.index.topological_order().iter().filter_map(|&position| Some((position, self.graph.node.get(position)?)))
    }

    pub fn builder(&self) -> Builder {
        Builder::new(self.graph, self.facts.opset())
    }

    /// Checks that `name` is a float graph input or initializer, something a gradient can be taken
    /// with respect to.
    pub fn check_source(&self, name: &str) -> Result<()> {
        let defined = self.index.is_graph_input(name) || self.index.initializer(name).is_some();
        if !defined || self.index.producer(name).is_some() {
            return Err(Error::InvalidGraph(format!("'{name}' is neither an input nor an initializer of the model")));
        }
        let dtype = self.facts.get(name).map_or(0, |f| f.dtype);
        if dtype != FLOAT && dtype != DOUBLE {
            return Err(Error::InvalidGraph(format!(
                "'{name}' is not a float32 or float64 tensor (data type {dtype})"
            )));
        }
        Ok(())
    }

    /// A value description of `name` with its inferred type and shape.
    pub fn value_info(&self, name: &str, as_name: &str) -> ValueInfoProto {
        let fact = self.facts.get(name);
        value_info(as_name, fact.map_or(0, |f| f.dtype), fact.and_then(|f| f.shape.as_deref()), &self.facts)
    }
}

/// A value description; dimensions that are symbols of the graph inputs keep their names.
pub(crate) fn value_info(name: &str, dtype: i32, shape: Option<&[Dim]>, facts: &Facts) -> ValueInfoProto {
    let shape = shape.map(|dims| TensorShapeProto {
        dim: dims
            .iter()
            .map(|d| Dimension {
                value: match d.value() {
                    Some(v) => Some(dimension::Value::DimValue(v)),
                    None => facts.dim_param(d).map(|p| dimension::Value::DimParam(p.to_string())),
                },
                ..Default::default()
            })
            .collect(),
    });
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor { elem_type: Some(dtype), shape })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Every value a node reads, the outer-scope values of its subgraphs included.
fn reads(node: &NodeProto) -> Vec<&str> {
    let mut names: Vec<&str> = node.input.iter().map(String::as_str).filter(|n| !n.is_empty()).collect();
    for attribute in &node.attribute {
        for graph in attribute.g.iter().chain(&attribute.graphs) {
            names.extend(graph.node.iter().flat_map(reads));
            names.extend(graph.output.iter().filter_map(|o| o.name.as_deref()));
        }
    }
    names
}

/// One gradient from its contributions: none, one, or their Sum.
fn accumulate(b: &mut Builder, contributions: Option<Vec<String>>) -> Option<String> {
    match contributions {
        Some(mut terms) if terms.len() == 1 => terms.pop(),
        Some(terms) if !terms.is_empty() => {
            let terms: Vec<&str> = terms.iter().map(String::as_str).collect();
            Some(b.op("Sum", &terms, vec![]))
        }
        _ => None,
    }
}

/// Emits the gradients of the `seeds` (pairs of a forward value and the name of its gradient, both
/// already defined) with respect to the sources `wrt`, which the caller has checked. One entry per
/// source: `None` when no seed depends on it.
pub(crate) fn backpropagate(
    forward: &Forward,
    b: &mut Builder,
    seeds: &[(String, String)],
    wrt: &[String],
) -> Result<Vec<Option<String>>> {
    let carries = |value: &str| {
        let dtype = forward.facts.get(value).map_or(0, |f| f.dtype);
        dtype == 0 || is_float(dtype)
    };
    // Values that depend on a source through float values.
    let mut depends: HashSet<&str> = wrt.iter().map(String::as_str).collect();
    for (_, node) in forward.nodes_in_order() {
        if reads(node).iter().any(|r| depends.contains(r)) {
            depends.extend(node.output.iter().map(String::as_str).filter(|o| !o.is_empty() && carries(o)));
        }
    }
    // Values between a source and a seed; the nodes that compute them, consumers first.
    let mut needs: HashSet<&str> = seeds.iter().map(|(v, _)| v.as_str()).filter(|v| depends.contains(v)).collect();
    let mut active = Vec::new();
    for (position, node) in forward.nodes_in_order().rev() {
        if node.output.iter().any(|o| needs.contains(o.as_str())) {
            active.push((position, node));
            needs.extend(reads(node).into_iter().filter(|r| depends.contains(r)));
        }
    }

    let rows = needed_rows(forward, &needs);
    let registry = Registry::new();
    let mut grads: HashMap<String, Vec<String>> = HashMap::new();
    for (value, grad) in seeds {
        grads.entry(value.clone()).or_default().push(grad.clone());
    }
    for (position, node) in active {
        let ctx = Ctx::new(node, position, &forward.facts, &rows);
        let rule = match registry.get(ctx.op()) {
            Some(rule) if crate::onnx::graph::in_default_domain(node) => rule,
            _ => {
                return Err(ctx.error(
                    "no backward rule for this operator, which lies on the gradient path from a trainable tensor to the loss",
                ))
            }
        };
        let wanted: Vec<bool> = node.input.iter().map(|i| !i.is_empty() && needs.contains(i.as_str())).collect();
        let direct = node.input.iter().filter(|i| !i.is_empty()).count();
        if reads(node).iter().skip(direct).any(|r| needs.contains(r)) {
            return Err(ctx.error("gradients through subgraphs are not supported"));
        }
        for ((i, input), _) in node.input.iter().enumerate().zip(&wanted).filter(|(_, &w)| w) {
            if !rule.inputs.contains(i) {
                return Err(ctx.error(format!("no gradient with respect to its input {i} ('{input}')")));
            }
            let dtype = ctx.dtype(input);
            if dtype != FLOAT && dtype != DOUBLE {
                return Err(ctx.error(format!("gradients of '{input}' (data type {dtype}) are not supported")));
            }
        }
        b.set_scope(&format!("grad/{}", ctx.label.trim_start_matches('/')));
        let dy: Vec<Option<String>> = node.output.iter().map(|o| accumulate(b, grads.remove(o))).collect();
        let dx = (rule.backward)(&ctx, b, &dy, &wanted)?;
        for ((i, input), _) in node.input.iter().enumerate().zip(&wanted).filter(|(_, &w)| w) {
            let g = dx
                .get(i)
                .cloned()
                .flatten()
                .ok_or_else(|| Error::Internal(format!("the {} rule gave no gradient for input {i}", ctx.op())))?;
            grads.entry(input.clone()).or_default().push(g);
        }
    }
    b.set_scope("grad");
    Ok(wrt.iter().map(|w| accumulate(b, grads.remove(w))).collect())
}

/// Values whose gradient is read only at some rows: the output of a ScatterND without reduction
/// that writes whole rows (constant indices of shape [k, 1]) when only its updates need a
/// gradient. Its rule gathers the scattered rows and nothing else reads the value's gradient.
fn needed_rows(forward: &Forward, needs: &HashSet<&str>) -> HashMap<String, Vec<i64>> {
    let mut rows = HashMap::new();
    for node in &forward.graph.node {
        let [data, indices, updates] = node.input.as_slice() else { continue };
        let plain = node.attribute.iter().all(|a| a.name() != "reduction" || a.s.as_deref() == Some(b"none"));
        if node.op_type() != "ScatterND" || !plain || needs.contains(data.as_str()) || !needs.contains(updates.as_str())
        {
            continue;
        }
        let Some(fact) = forward.facts.get(indices) else { continue };
        let whole_rows = matches!(fact.shape.as_deref(), Some([_, index_length]) if index_length.value() == Some(1));
        if let (true, Some(selected), Some(output)) = (whole_rows, fact.ints(), node.output.first()) {
            rows.insert(output.clone(), selected);
        }
    }
    rows
}

/// What the assembled model exposes besides the forward inputs it still reads.
pub(crate) struct Interface {
    /// Initializers that become required inputs (the tensors differentiated or trained).
    pub promoted: Vec<String>,
    /// Inputs added after the forward ones.
    pub inputs: Vec<ValueInfoProto>,
    pub outputs: Vec<ValueInfoProto>,
}

/// The model made of the emitted nodes and the forward nodes they (transitively) read, in
/// topological order. Initializers and value descriptions nothing reads any more are dropped.
pub(crate) fn assemble(forward: &Forward, b: Builder, interface: Interface) -> ModelProto {
    let graph = forward.graph;
    let mut needed: HashSet<&str> = b.nodes.iter().flat_map(reads).collect();
    needed.extend(interface.outputs.iter().filter_map(|o| o.name.as_deref()));
    let mut kept = HashSet::new();
    for (position, node) in forward.nodes_in_order().rev() {
        if node.output.iter().any(|o| needed.contains(o.as_str())) {
            kept.insert(position);
            needed.extend(reads(node));
        }
    }
    let nodes: Vec<NodeProto> = forward
        .nodes_in_order()
        .filter(|(position, _)| kept.contains(position))
        .map(|(_, node)| node.clone())
        .chain(b.nodes.iter().cloned())
        .collect();
    let produced: HashSet<&str> = nodes.iter().flat_map(|n| n.output.iter().map(String::as_str)).collect();
    let promoted: HashSet<&str> = interface.promoted.iter().map(String::as_str).collect();
    let mut inputs: Vec<ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| {
            let name = i.name.as_deref().unwrap_or("");
            needed.contains(name) || forward.index.is_runtime_input(name)
        })
        .cloned()
        .collect();
    for name in &interface.promoted {
        if !inputs.iter().any(|i| i.name.as_deref() == Some(name.as_str())) {
            inputs.push(forward.value_info(name, name));
        }
    }
    inputs.extend(interface.inputs);
    let initializer = graph
        .initializer
        .iter()
        .filter(|t| t.name.as_deref().is_some_and(|n| needed.contains(n) && !promoted.contains(n)))
        .cloned()
        .chain(b.initializers.iter().cloned())
        .collect();
    let value_info =
        graph.value_info.iter().filter(|v| v.name.as_deref().is_some_and(|n| produced.contains(n))).cloned().collect();
    let model = forward.model;
    ModelProto {
        ir_version: model.ir_version,
        opset_import: model.opset_import.clone(),
        producer_name: model.producer_name.clone(),
        producer_version: model.producer_version.clone(),
        domain: model.domain.clone(),
        model_version: model.model_version,
        doc_string: model.doc_string.clone(),
        metadata_props: model.metadata_props.clone(),
        functions: model.functions.clone(),
        graph: Some(GraphProto {
            node: nodes,
            name: graph.name.clone(),
            initializer,
            input: inputs,
            output: interface.outputs,
            value_info,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A model that computes a value and its vector-Jacobian products.
#[derive(Debug, Clone)]
pub struct Vjp {
    /// Inputs: the forward model's, the differentiated initializers, then `seed`; outputs: the
    /// forward value, then one gradient per differentiated tensor.
    pub model: ModelProto,
    /// The input that takes the cotangent (shaped like the value).
    pub seed: String,
    /// The output names of the gradients, in the order of the tensors asked for.
    pub gradients: Vec<String>,
}

/// Differentiates `output` with respect to the float inputs or initializers `wrt`: the returned
/// model maps a cotangent `seed` to Σ seed ⊙ ∂output/∂w for every `w` (zeros where `output` does not
/// depend on `w`). Initializers in `wrt` become required inputs; all others stay constants.
pub fn vjp(model: &ModelProto, output: &str, wrt: &[&str]) -> Result<Vjp> {
    let forward = Forward::new(model)?;
    let dtype = forward.facts.get(output).map_or(0, |f| f.dtype);
    if forward.index.producer(output).is_none() || !(dtype == FLOAT || dtype == DOUBLE) {
        return Err(Error::InvalidGraph(format!("'{output}' is not a float32 or float64 value computed by the model")));
    }
    let wrt = sources(&forward, wrt)?;
    let mut b = forward.builder();
    let seed = b.fresh("seed");
    let found = backpropagate(&forward, &mut b, &[(output.to_string(), seed.clone())], &wrt)?;
    let mut gradients = Vec::new();
    let mut outputs = vec![forward.value_info(output, output)];
    for (w, g) in wrt.iter().zip(found) {
        let g = match g {
            Some(g) => g,
            None => b.zeros_like(w, forward.facts.get(w).map_or(FLOAT, |f| f.dtype))?,
        };
        let name = b.fresh(&format!("gradient/{w}"));
        b.op_named("Identity", &[&g], vec![], &name);
        outputs.push(forward.value_info(w, &name));
        gradients.push(name);
    }
    let promoted = wrt.iter().filter(|w| forward.index.initializer(w).is_some()).cloned().collect();
    let interface = Interface { promoted, inputs: vec![forward.value_info(output, &seed)], outputs };
    Ok(Vjp { model: assemble(&forward, b, interface), seed, gradients })
}

/// `names` checked as distinct differentiable sources.
pub(crate) fn sources(forward: &Forward, names: &[&str]) -> Result<Vec<String>> {
    let mut seen = HashSet::new();
    for name in names {
        forward.check_source(name)?;
        if !seen.insert(*name) {
            return Err(Error::InvalidGraph(format!("'{name}' is listed twice")));
        }
    }
    Ok(names.iter().map(|n| n.to_string()).collect())
}
