//! `strip`: a γ-patched model back to the original computation, with bitwise-equal weights.

use std::collections::HashMap;

use super::gamma::LAYOUT_KEY;
use crate::error::{Error, Result};
use crate::onnx::graph::renamed_values;
use crate::onnx::metadata;
use crate::onnx::proto::ModelProto;

/// What the γ rewrite recorded about the original model's place in the patched graph.
#[derive(serde::Deserialize)]
struct Layout {
    merge_nodes: usize,
    original_nodes: usize,
    initializers: usize,
    inputs: usize,
    outputs: usize,
    renamed: HashMap<String, String>,
}

/// The original model inside a γ-patched one: its nodes, initializers, inputs and outputs as they
/// were, and every DeepPatch metadata entry removed.
pub fn strip(patched: &ModelProto) -> Result<ModelProto> {
    let text = metadata(patched, LAYOUT_KEY)
        .ok_or_else(|| Error::Config(format!("not a model patched by onnx-deeppatch (no '{LAYOUT_KEY}' metadata)")))?;
    let layout: Layout = serde_json::from_str(text).map_err(|e| Error::InvalidGraph(format!("metadata '{LAYOUT_KEY}': {e}")))?;
    let mut model = patched.clone();
    let graph = model.graph.as_mut().ok_or_else(|| Error::InvalidGraph("the model has no graph".into()))?;
    let end = layout.merge_nodes + layout.original_nodes;
    if end > graph.node.len() || layout.initializers > graph.initializer.len() || layout.inputs > graph.input.len() || layout.outputs > graph.output.len() {
        return Err(Error::InvalidGraph(format!("metadata '{LAYOUT_KEY}' does not match the graph")));
    }
    let original_names: HashMap<String, String> = layout.renamed.into_iter().map(|(o, r)| (r, o)).collect();
    graph.node = graph.node[layout.merge_nodes..end].iter().map(|n| renamed_values(n, &original_names)).collect();
    graph.initializer.truncate(layout.initializers);
    graph.input.truncate(layout.inputs);
    graph.output.truncate(layout.outputs);
    model.metadata_props.retain(|p| !p.key.as_deref().unwrap_or("").starts_with("deeppatch"));
    Ok(model)
}
