//! The γ-patched model: the deliverable (docs/specification.md §4).
//!
//! Main graph, in order:
//! 1. the original nodes, untouched except that graph outputs are renamed `deeppatch/original/…`;
//! 2. the `ScatterND` merges of the replacement parameters (constants, folded at load time; after
//!    the original nodes because a `Constant` node may compute the parameters they read);
//! 3. the decision at the first patched layer (CR, per-sample flags, "any adapted");
//! 4. `If(any adapted)`: the else branch passes the original outputs through (clean batches pay
//!    only for the decision); the then branch runs the adapted samples through a copy of the model
//!    on the merged parameters, in the target's form ([`Form`]): a `Scan` over the batch whose body
//!    is an `If` on the sample's flag, a `Loop` over the adapted rows, or the copy over the whole
//!    batch with its rows chosen by `Where`.
//!
//! The original computation is never altered, so a non-adapted sample's output is bit-identical
//! to the original model's; in the Scan and Loop forms every sample's output depends only on that
//! sample (each adapted sample runs alone).

use std::collections::HashMap;

use serde_json::json;

use super::target::{Form, Target, FORM_KEY, TARGET_KEY};
use super::{decision, merge_parameters, spec::PatchSpec, with_patched_inputs, ADAPTED_OUTPUT, CR_OUTPUT, DECISION_INPUT, PROBE_LOGIT_OUTPUT};
use crate::analysis::site::site;
use crate::error::{Error, Result};
use crate::onnx::builder::{graph_attribute, int, tensor_info, Builder, BOOL, FLOAT, INT64};
use crate::onnx::graph::{renamed_values, GraphIndex};
use crate::onnx::proto::{
    tensor_shape_proto::{dimension::Value as DimValue, Dimension},
    type_proto, GraphProto, ModelProto, NodeProto, StringStringEntryProto, ValueInfoProto,
};
use crate::onnx::tensor::from_bool;

/// Metadata key under which the rewrite records what `strip` needs to undo it.
pub const LAYOUT_KEY: &str = "deeppatch.layout";

/// Builds the γ-patched model of `model` for `spec` in the default target's form.
pub fn gamma_model(model: &ModelProto, spec: &PatchSpec) -> Result<ModelProto> {
    gamma_model_for(model, spec, Target::default())
}

/// Builds the γ-patched model of `model` for `spec`, routed in `target`'s form: the steps of the
/// module documentation, each built by its own function (merges, original graph, decision,
/// routing), then assembled.
pub fn gamma_model_for(model: &ModelProto, spec: &PatchSpec, target: Target) -> Result<ModelProto> {
    let graph = model.graph.as_ref().ok_or_else(|| Error::InvalidGraph("the model has no graph".into()))?;
    if graph.input.iter().any(|i| i.name.as_deref() == Some(DECISION_INPUT)) {
        return Err(Error::Config(format!("the model is already patched (it has the input '{DECISION_INPUT}'); strip it first")));
    }
    if model.ir_version.unwrap_or(0) < 4 {
        return Err(Error::InvalidGraph("IR version 4 or newer is needed (an input with a default initializer)".into()));
    }
    let image = crate::analysis::image_input(graph)?;
    let convs = spec.validate(model)?;
    let index = GraphIndex::new(graph)?;
    let ranks = check_batch_first(graph, &index, crate::onnx::default_opset(model), image)?;
    let first = first_patched(model, &convs)?;
    let runtime_inputs: Vec<&ValueInfoProto> =
        graph.input.iter().filter(|i| index.is_runtime_input(i.name.as_deref().unwrap_or(""))).collect();

    let mut builder = Builder::new(graph, crate::onnx::default_opset(model));
    builder.reserve(&[DECISION_INPUT, ADAPTED_OUTPUT, CR_OUTPUT, PROBE_LOGIT_OUTPUT, decision::PROBE_FEATURES]);
    let layers: Vec<_> = convs.iter().cloned().zip(spec.layers.iter().cloned()).collect();
    let patched = merge_parameters(&mut builder, graph, &layers)?;
    let merges = std::mem::take(&mut builder.nodes);
    let original = Original::new(&mut builder, graph);
    let names = decision::OutputNames { cr: CR_OUTPUT, adapted: ADAPTED_OUTPUT, logit: PROBE_LOGIT_OUTPUT };
    let first_site = site(&index, convs[first].position);
    let decision =
        decision::emit(&mut builder, graph, &first_site, &convs[first], &patched[first], &spec.layers[first].blamed, &spec.decision, DECISION_INPUT, &names)?;
    let decision_nodes = std::mem::take(&mut builder.nodes);
    let sample = Sample { graph, runtime_inputs: &runtime_inputs, original: &original, patched: &patched, ranks: &ranks };
    let route = route(&mut builder, &sample, &decision, target.form())?;

    let mut out = model.clone();
    let g = out.graph.as_mut().ok_or_else(|| Error::Internal("graph vanished".into()))?;
    let layout = json!({
        "merges_first": false,
        "merge_nodes": merges.len(),
        "original_nodes": original.nodes.len(),
        "initializers": g.initializer.len(),
        "inputs": g.input.len(),
        "outputs": g.output.len(),
        "renamed": original.renamed,
    });
    let batch = batch_dimension(&runtime_inputs);
    g.node = original.nodes.into_iter().chain(merges).chain(decision_nodes).chain(std::iter::once(route)).collect();
    g.initializer.append(&mut builder.initializers);
    g.initializer.push(from_bool(DECISION_INPUT, &[], &[true]));
    g.input.push(tensor_info(DECISION_INPUT, BOOL, vec![]));
    g.output.push(tensor_info(ADAPTED_OUTPUT, BOOL, vec![batch.clone()]));
    g.output.push(tensor_info(CR_OUTPUT, FLOAT, vec![batch.clone()]));
    if matches!(spec.decision, super::Decision::Probe { .. }) {
        g.output.push(tensor_info(PROBE_LOGIT_OUTPUT, FLOAT, vec![batch]));
    }
    set_metadata(&mut out, spec, &convs, layout, target);
    Ok(out)
}

/// Step 1: the original nodes, untouched except that the graph outputs are renamed, so that the
/// routing `If` can produce the real names.
struct Original {
    nodes: Vec<NodeProto>,
    /// Graph output → its name inside the patched model.
    renamed: HashMap<String, String>,
    /// The renamed outputs, in the order of the graph's outputs.
    outputs: Vec<String>,
}

impl Original {
    fn new(builder: &mut Builder, graph: &GraphProto) -> Original {
        let renamed: HashMap<String, String> = graph
            .output
            .iter()
            .filter_map(|o| o.name.clone())
            .map(|name| {
                let fresh = scoped(builder, "original", &name);
                (name, fresh)
            })
            .collect();
        let nodes = graph.node.iter().map(|n| renamed_values(n, &renamed)).collect();
        let outputs = graph.output.iter().map(|o| renamed[o.name.as_deref().unwrap_or_default()].clone()).collect();
        Original { nodes, renamed, outputs }
    }
}

/// What routing needs to know: the graph, its runtime inputs, the original outputs, the merged
/// parameters and the outputs' ranks (where known).
struct Sample<'a> {
    graph: &'a GraphProto,
    runtime_inputs: &'a [&'a ValueInfoProto],
    original: &'a Original,
    patched: &'a [super::PatchedParams],
    ranks: &'a [Option<usize>],
}

/// Step 4: `If(any adapted)`. The else branch passes the original outputs through (a clean batch
/// pays only for the decision); the then branch runs the adapted samples in `form`.
fn route(builder: &mut Builder, sample: &Sample, decision: &decision::DecisionValues, form: Form) -> Result<NodeProto> {
    let outputs = &sample.graph.output;
    let (then_nodes, then_outputs) = match form {
        Form::Scan => {
            let (scan, outputs) = each_sample(builder, sample, &decision.adapted);
            (vec![scan], outputs)
        }
        Form::Loop => adapted_rows(builder, sample, &decision.adapted),
        Form::Batch => whole_batch(builder, sample, &decision.adapted)?,
    };
    let else_outputs: Vec<ValueInfoProto> = outputs
        .iter()
        .zip(&sample.original.outputs)
        .map(|(output, original)| retyped(output, &builder.op("Identity", &[original], vec![])))
        .collect();
    let else_nodes = std::mem::take(&mut builder.nodes);
    let then_branch = GraphProto { name: Some(builder.fresh("adapted")), node: then_nodes, output: then_outputs, ..Default::default() };
    let else_branch = GraphProto { name: Some(builder.fresh("original")), node: else_nodes, output: else_outputs, ..Default::default() };
    let name = builder.fresh("route");
    Ok(if_node(name, &decision.any, outputs, then_branch, else_branch))
}

/// The then branch of the route: a `Scan` over the batch whose body is an `If` on the sample's
/// flag, so that an adapted sample goes alone through the merged parameters (its output never
/// depends on its batch: runtimes pick kernels by batch size, and the merged parameters live
/// outside the branch where they are not pre-packed) and any other passes its original output
/// through; a mixed batch pays the replacement path for its adapted samples only. (A sub-batch of
/// the adapted rows, NonZero + GatherND, is not supported by tract inside If.) Returns the Scan
/// and the outputs of the branch.
fn each_sample(builder: &mut Builder, sample: &Sample, adapted: &str) -> (NodeProto, Vec<ValueInfoProto>) {
    let (runtime_inputs, outputs) = (sample.runtime_inputs, &sample.graph.output);
    let scan_inputs: Vec<String> = runtime_inputs
        .iter()
        .map(|i| i.name.clone().unwrap_or_default())
        .chain(sample.original.outputs.iter().cloned())
        .chain(std::iter::once(adapted.to_string()))
        .collect();
    let body = sample_body(builder, sample);
    let then_outputs: Vec<ValueInfoProto> =
        outputs.iter().map(|o| retyped(o, &scoped(builder, "routed", o.name.as_deref().unwrap_or("output")))).collect();
    let scan_count = runtime_inputs.len() + outputs.len() + 1;
    let scan = NodeProto {
        name: Some(builder.fresh("each_sample")),
        op_type: Some("Scan".into()),
        input: scan_inputs,
        output: then_outputs.iter().map(|o| o.name.clone().unwrap_or_default()).collect(),
        attribute: vec![graph_attribute("body", body), int("num_scan_inputs", i64::try_from(scan_count).unwrap_or(i64::MAX))],
        ..Default::default()
    };
    (scan, then_outputs)
}

/// The Scan body: one sample's runtime inputs, original outputs and flag in; `If(flag)` between
/// [`adapted_sample`] and [`original_sample`].
fn sample_body(builder: &mut Builder, sample: &Sample) -> GraphProto {
    let outputs = &sample.graph.output;
    let mut body_inputs = Vec::new();
    // The runtime inputs of the adapted copy: each sample with its batch axis restored.
    let mut adapted_names: HashMap<String, String> = HashMap::new();
    for input in sample.runtime_inputs {
        let name = input.name.clone().unwrap_or_default();
        let one = scoped(builder, "sample", &name);
        body_inputs.push(without_batch(input, &one));
        adapted_names.insert(name, builder.unsqueeze(&one, &[0]));
    }
    let original_samples: Vec<String> = sample.original.outputs.iter().map(|o| scoped(builder, "sample", o)).collect();
    for (output, one) in outputs.iter().zip(&original_samples) {
        body_inputs.push(without_batch(output, one));
    }
    let flag = builder.fresh("sample/adapted");
    body_inputs.push(tensor_info(&flag, BOOL, vec![]));

    let (adapted_nodes, adapted_outputs) = adapted_sample(builder, sample, adapted_names);
    let (kept_nodes, kept_outputs) = original_sample(builder, outputs, &original_samples);
    let body_outputs: Vec<ValueInfoProto> =
        outputs.iter().map(|o| without_batch(o, &scoped(builder, "sample", o.name.as_deref().unwrap_or("output")))).collect();
    let name = builder.fresh("route_sample");
    let then_branch = GraphProto { name: Some(builder.fresh("adapted_sample")), node: adapted_nodes, output: adapted_outputs, ..Default::default() };
    let else_branch = GraphProto { name: Some(builder.fresh("original_sample")), node: kept_nodes, output: kept_outputs, ..Default::default() };
    let per_sample_route = if_node(name, &flag, &body_outputs, then_branch, else_branch);
    GraphProto { name: Some(builder.fresh("per_sample")), node: vec![per_sample_route], input: body_inputs, output: body_outputs, ..Default::default() }
}

/// An adapted sample: [`adapted_copy`] on the sample's inputs (`names`), its outputs without the
/// batch axis again. Returns the nodes (those already in `builder` first) and the outputs.
fn adapted_sample(builder: &mut Builder, sample: &Sample, names: HashMap<String, String>) -> (Vec<NodeProto>, Vec<ValueInfoProto>) {
    let (mut nodes, copied) = adapted_copy(builder, sample, names);
    let outputs: Vec<ValueInfoProto> =
        sample.graph.output.iter().zip(&copied).map(|(output, value)| without_batch(output, &builder.squeeze(value, &[0]))).collect();
    nodes.append(&mut builder.nodes);
    (nodes, outputs)
}

/// A copy of the model on the merged parameters, its values renamed under `adapted/`, reading the
/// values `names` maps each runtime input to. Returns the nodes (those already in `builder`
/// first) and the copy's outputs, in the order of the graph's outputs.
fn adapted_copy(builder: &mut Builder, sample: &Sample, mut names: HashMap<String, String>) -> (Vec<NodeProto>, Vec<String>) {
    let graph = sample.graph;
    for node in &graph.node {
        for output in node.output.iter().filter(|o| !o.is_empty()) {
            let fresh = scoped(builder, "adapted", output);
            names.insert(output.clone(), fresh);
        }
    }
    let mut nodes = std::mem::take(&mut builder.nodes);
    for (position, node) in graph.node.iter().enumerate() {
        let mut copy = renamed_values(&with_patched_inputs(node, position, sample.patched), &names);
        let label = node.name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| format!("{}_{position}", node.op_type.as_deref().unwrap_or("node")));
        copy.name = Some(scoped(builder, "adapted", &label));
        nodes.push(copy);
    }
    let outputs = graph.output.iter().map(|output| names[output.name.as_deref().unwrap_or_default()].clone()).collect();
    (nodes, outputs)
}

/// The then branch in the Loop form (OpenVINO has no Scan): a `Loop` over the rows of the adapted
/// samples (`NonZero` of the flags) carrying the original outputs; each iteration runs one sample
/// alone through [`adapted_copy`] and writes its outputs over its rows with `ScatterND`. The
/// other rows are never written, so they stay the original outputs bit for bit; a clean sample
/// costs no iteration. Returns the nodes and the outputs of the branch.
fn adapted_rows(builder: &mut Builder, sample: &Sample, adapted: &str) -> (Vec<NodeProto>, Vec<ValueInfoProto>) {
    let outputs = &sample.graph.output;
    let found = builder.op("NonZero", &[adapted], vec![]);
    let rows = builder.reshape(&found, &[-1]);
    let shape = builder.shape(&rows);
    let first = builder.int64s(&[], &[0]);
    let count = builder.op("Gather", &[&shape, &first], vec![int("axis", 0)]);
    // An explicit TRUE condition: onnx.reference runs no iteration when it is left out.
    let keep_going = builder.boolean(true);
    let branch_nodes = std::mem::take(&mut builder.nodes);

    let iteration = builder.fresh("loop/iteration");
    let condition = builder.fresh("loop/condition");
    let carried: Vec<String> = sample.original.outputs.iter().map(|o| scoped(builder, "loop", o)).collect();
    let step = builder.unsqueeze(&iteration, &[0]);
    let row = builder.op("Gather", &[&rows, &step], vec![int("axis", 0)]);
    let names: HashMap<String, String> = sample
        .runtime_inputs
        .iter()
        .map(|input| {
            let name = input.name.clone().unwrap_or_default();
            let one = builder.op("Gather", &[&name, &row], vec![int("axis", 0)]);
            (name, one)
        })
        .collect();
    let (mut body_nodes, copied) = adapted_copy(builder, sample, names);
    let index = builder.unsqueeze(&row, &[1]);
    let written: Vec<String> = carried.iter().zip(&copied).map(|(all, one)| builder.op("ScatterND", &[all, &index, one], vec![])).collect();
    let condition_out = builder.op("Identity", &[&condition], vec![]);
    body_nodes.append(&mut builder.nodes);
    let mut body_inputs = vec![tensor_info(&iteration, INT64, vec![]), tensor_info(&condition, BOOL, vec![])];
    body_inputs.extend(outputs.iter().zip(&carried).map(|(output, name)| without_shape(output, name)));
    let mut body_outputs = vec![tensor_info(&condition_out, BOOL, vec![])];
    body_outputs.extend(outputs.iter().zip(&written).map(|(output, name)| without_shape(output, name)));
    let body = GraphProto { name: Some(builder.fresh("adapted_rows")), node: body_nodes, input: body_inputs, output: body_outputs, ..Default::default() };

    let then_outputs: Vec<ValueInfoProto> =
        outputs.iter().map(|o| retyped(o, &scoped(builder, "routed", o.name.as_deref().unwrap_or("output")))).collect();
    let mut inputs = vec![count, keep_going];
    inputs.extend(sample.original.outputs.iter().cloned());
    let looped = NodeProto {
        name: Some(builder.fresh("each_adapted_sample")),
        op_type: Some("Loop".into()),
        input: inputs,
        output: then_outputs.iter().map(|o| o.name.clone().unwrap_or_default()).collect(),
        attribute: vec![graph_attribute("body", body)],
        ..Default::default()
    };
    let mut nodes = branch_nodes;
    nodes.push(looped);
    (nodes, then_outputs)
}

/// The then branch in the Batch form, which needs neither Scan nor Loop: [`adapted_copy`] over the
/// whole batch, and each output's rows chosen by the flags (`Where`), so non-adapted rows are the
/// original outputs bit for bit. An adapted sample's output may depend on the batch size in its
/// last bits (runtimes pick kernels by batch size). Returns the nodes and the outputs.
fn whole_batch(builder: &mut Builder, sample: &Sample, adapted: &str) -> Result<(Vec<NodeProto>, Vec<ValueInfoProto>)> {
    let names = sample.runtime_inputs.iter().filter_map(|i| i.name.clone()).map(|n| (n.clone(), n)).collect();
    let (mut nodes, copied) = adapted_copy(builder, sample, names);
    let mut outputs = Vec::new();
    for (((output, rank), copy), original) in sample.graph.output.iter().zip(sample.ranks).zip(&copied).zip(&sample.original.outputs) {
        let name = output.name.as_deref().unwrap_or_default();
        let rank = rank.ok_or_else(|| {
            Error::UnsupportedModel(format!("the rank of output '{name}' is unknown; the batch form broadcasts the flags over it"))
        })?;
        let axes: Vec<usize> = (1..rank).collect();
        let flags = builder.unsqueeze(adapted, &axes);
        let routed = scoped(builder, "routed", name);
        builder.op_named("Where", &[&flags, copy, original], vec![], &routed);
        outputs.push(retyped(output, &routed));
    }
    nodes.append(&mut builder.nodes);
    Ok((nodes, outputs))
}

/// A sample that is not adapted: its original outputs (`samples`) passed through.
fn original_sample(builder: &mut Builder, outputs: &[ValueInfoProto], samples: &[String]) -> (Vec<NodeProto>, Vec<ValueInfoProto>) {
    let kept: Vec<ValueInfoProto> =
        outputs.iter().zip(samples).map(|(output, sample)| without_batch(output, &builder.op("Identity", &[sample], vec![]))).collect();
    (std::mem::take(&mut builder.nodes), kept)
}

/// An `If` named `name` on `condition` producing `outputs`.
fn if_node(name: String, condition: &str, outputs: &[ValueInfoProto], then_branch: GraphProto, else_branch: GraphProto) -> NodeProto {
    NodeProto {
        name: Some(name),
        op_type: Some("If".into()),
        input: vec![condition.to_string()],
        output: outputs.iter().map(|o| o.name.clone().unwrap_or_default()).collect(),
        attribute: vec![graph_attribute("then_branch", then_branch), graph_attribute("else_branch", else_branch)],
        ..Default::default()
    }
}

/// Every graph output keeps the batch as its first axis, as routing assumes: by the inferred
/// shapes, else by the declared ones (the same dimension as the image input's first). Returns the
/// outputs' ranks, inferred or declared, where known.
fn check_batch_first(graph: &GraphProto, index: &GraphIndex, opset: i64, image: &ValueInfoProto) -> Result<Vec<Option<usize>>> {
    let facts = crate::analysis::facts::Facts::infer(graph, index, opset);
    let image_name = image.name.as_deref().unwrap_or_default();
    let batch = facts.get(image_name).and_then(|f| f.shape.as_ref()?.first().cloned());
    let declared = |value: &ValueInfoProto| match value.r#type.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(t) => t.shape.clone(),
        _ => None,
    };
    let declared_first = |value: &ValueInfoProto| declared(value)?.dim.first()?.value.clone();
    let mut ranks = Vec::new();
    for output in &graph.output {
        let name = output.name.as_deref().unwrap_or_default();
        let shape = facts.get(name).and_then(|f| f.shape.as_ref());
        ranks.push(shape.map(Vec::len).or_else(|| declared(output).map(|s| s.dim.len())));
        let inferred = shape.and_then(|s| s.first().cloned());
        let keeps_batch = match (&batch, inferred) {
            (Some(batch), Some(first)) => *batch == first,
            _ => declared_first(output).is_some() && declared_first(output) == declared_first(image),
        };
        if !keeps_batch {
            return Err(Error::UnsupportedModel(format!(
                "output '{name}' does not keep the batch of input '{image_name}' as its first axis; the patched model routes samples along it"
            )));
        }
    }
    Ok(ranks)
}

/// The position in `patched` (a spec's validated convolutions) of the one closest to the input:
/// the layer the γ decision reads.
pub fn first_patched(model: &ModelProto, patched: &[crate::analysis::ConvInfo]) -> Result<usize> {
    crate::analysis::convolutions(model)?
        .iter()
        .find_map(|c| patched.iter().position(|p| p.position == c.position))
        .ok_or_else(|| Error::Config("patch spec: no layers".into()))
}

/// A fresh name for `name` under `scope/` (its leading slash dropped).
fn scoped(builder: &mut Builder, scope: &str, name: &str) -> String {
    builder.fresh(&format!("{scope}/{}", name.trim_start_matches('/')))
}

/// `output`'s type under a new name.
fn retyped(output: &ValueInfoProto, name: &str) -> ValueInfoProto {
    ValueInfoProto { name: Some(name.to_string()), r#type: output.r#type.clone(), ..Default::default() }
}

/// `value`'s element type without a shape, under a new name: a Loop's carried value, whose
/// batch is the graph's but, inside the body, not its symbol.
fn without_shape(value: &ValueInfoProto, name: &str) -> ValueInfoProto {
    let mut info = retyped(value, name);
    if let Some(type_proto::Value::TensorType(t)) = info.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        t.shape = None;
    }
    info
}

/// `value`'s type without its first (batch) dimension, under a new name: one sample's value.
/// Symbolic dimensions are left unnamed: inside the Scan body they are not the graph's symbols
/// (tract would otherwise fail to unify them with the sizes it sees).
fn without_batch(value: &ValueInfoProto, name: &str) -> ValueInfoProto {
    let mut info = retyped(value, name);
    if let Some(type_proto::Value::TensorType(t)) = info.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        if let Some(shape) = t.shape.as_mut() {
            if !shape.dim.is_empty() {
                shape.dim.remove(0);
            }
            for dim in &mut shape.dim {
                if matches!(dim.value, Some(DimValue::DimParam(_))) {
                    dim.value = None;
                }
            }
        }
    }
    info
}

/// The batch dimension of the first runtime input (its symbol, or "N").
fn batch_dimension(inputs: &[&ValueInfoProto]) -> Dimension {
    inputs
        .first()
        .and_then(|i| match i.r#type.as_ref()?.value.as_ref()? {
            type_proto::Value::TensorType(t) => t.shape.as_ref()?.dim.first().cloned(),
            _ => None,
        })
        .unwrap_or(Dimension { value: Some(DimValue::DimParam("N".into())), denotation: None })
}

fn set_metadata(model: &mut ModelProto, spec: &PatchSpec, convs: &[crate::analysis::ConvInfo], layout: serde_json::Value, target: Target) {
    let blamed: serde_json::Map<String, serde_json::Value> =
        convs.iter().zip(&spec.layers).map(|(c, l)| (c.name.clone(), json!(l.blamed))).collect();
    let mut entries = vec![
        ("deeppatch.version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
        ("deeppatch.kappa".to_string(), spec.kappa.to_string()),
        ("deeppatch.blamed".to_string(), serde_json::Value::Object(blamed).to_string()),
        ("deeppatch.rule".to_string(), spec.decision.rule().to_string()),
        ("deeppatch.decision".to_string(), serde_json::to_string(&spec.decision).unwrap_or_default()),
        (LAYOUT_KEY.to_string(), layout.to_string()),
        (TARGET_KEY.to_string(), target.name().to_string()),
        (FORM_KEY.to_string(), target.form().name().to_string()),
    ];
    if let super::Decision::Cr { boundary, direction, mu_clean, mu_aug } = &spec.decision {
        entries.push(("deeppatch.boundary".to_string(), boundary.to_string()));
        let direction = serde_json::to_value(direction).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        entries.push(("deeppatch.direction".to_string(), direction));
        for (key, value) in [("deeppatch.mu_clean", mu_clean), ("deeppatch.mu_aug", mu_aug)] {
            if let Some(v) = value {
                entries.push((key.to_string(), v.to_string()));
            }
        }
    }
    // The spec's own entries, except one naming the key the model's target already took.
    let own = |key: &String| !entries.iter().any(|(k, _)| k == key);
    let from_spec: Vec<(String, String)> = spec.metadata.iter().map(|(k, v)| (format!("deeppatch.{k}"), v.clone())).filter(|(k, _)| own(k)).collect();
    entries.extend(from_spec);
    model.metadata_props.retain(|p| !p.key.as_deref().unwrap_or("").starts_with("deeppatch"));
    model.metadata_props.extend(entries.into_iter().map(|(k, v)| StringStringEntryProto { key: Some(k), value: Some(v) }));
}
