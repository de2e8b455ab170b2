//! Model analysis: which convolutions a model has, their filters and parameters, where their
//! activations are, and what is statically known about every value (element types, symbolic
//! shapes, sliding-window geometry), which the gradient builder and the rewrites share.
//!
//! Every size here comes from the model, a hostile one included: the arithmetic is checked and
//! nothing is indexed unchecked, so that no model can make the analysis panic (the lints below
//! enforce it in every submodule).
#![deny(clippy::arithmetic_side_effects, clippy::cast_possible_truncation, clippy::indexing_slicing)]

pub mod conform;
pub(crate) mod facts;
pub(crate) mod geometry;
pub mod opset;
pub mod site;

use crate::error::{Error, Result};
use crate::onnx::graph::{attr_int, node_label, GraphIndex};
use crate::onnx::proto::{type_proto::Value as Type, GraphProto, ModelProto, ValueInfoProto};
use crate::onnx::tensor::{element_count_of, shape_of};

/// One convolution of the main graph.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ConvInfo {
    /// Position of the node in `graph.node`.
    pub position: usize,
    /// The node's name (or `Conv#<position>` when it has none).
    pub name: String,
    /// The value the convolution computes.
    pub output: String,
    /// The weight input; `constant` says whether it is a fixed initializer.
    pub weight: String,
    pub constant: bool,
    /// Output channels (filters), input channels per group and kernel size.
    pub filters: usize,
    pub channels_per_group: usize,
    pub kernel: Vec<usize>,
    pub group: usize,
    pub has_bias: bool,
    /// Weights plus bias.
    pub parameters: usize,
}

/// The convolutions of the main graph, in topological order; those the tool added itself (named
/// under `deeppatch/`) are not the model's own and are left out.
pub fn convolutions(model: &ModelProto) -> Result<Vec<ConvInfo>> {
    let Some(graph) = model.graph.as_ref() else { return Ok(Vec::new()) };
    let index = GraphIndex::new(graph)?;
    let mut convs = Vec::new();
    for &position in index.topological_order() {
        let Some(node) = graph.node.get(position) else { continue };
        let added = node.name.as_deref().is_some_and(|n| n.starts_with(crate::onnx::builder::PREFIX));
        if added || node.op_type.as_deref() != Some("Conv") || node.domain.as_deref().is_some_and(|d| !d.is_empty()) {
            continue;
        }
        let weight = node.input.get(1).cloned().unwrap_or_default();
        let constant = index.constant(&weight);
        let shape = match constant {
            Some(tensor) => shape_of(tensor)?,
            None => Vec::new(),
        };
        let bias = node.input.get(2).filter(|b| !b.is_empty());
        let bias_count = bias.and_then(|b| index.constant(b)).map(element_count_of).unwrap_or(0);
        let refuse = |message: String| Error::Unsupported { node: node_label(node, position), op_type: "Conv".into(), message };
        let group = attr_int(node, "group", 1).max(1);
        let group = usize::try_from(group).map_err(|_| refuse(format!("group {group} out of range")))?;
        let weights = if shape.is_empty() { Some(0) } else { shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) };
        let parameters = weights
            .and_then(|w| w.checked_add(bias_count))
            .ok_or_else(|| refuse(format!("weight {shape:?}: too many parameters")))?;
        convs.push(ConvInfo {
            position,
            name: node_label(node, position),
            output: node.output.first().cloned().unwrap_or_default(),
            constant: constant.is_some(),
            filters: shape.first().copied().unwrap_or(0),
            channels_per_group: shape.get(1).copied().unwrap_or(0),
            kernel: shape.iter().skip(2).copied().collect(),
            group,
            has_bias: bias.is_some(),
            parameters,
            weight,
        });
    }
    Ok(convs)
}

/// Loads, validates and, when the model's opset is older than the rewrites need, raises it
/// ([`opset::patchable`]): the model every stage of the tool works on.
pub fn load(path: &std::path::Path) -> Result<ModelProto> {
    opset::patchable(load_as_is(path)?).map_err(|e| in_file(path, e))
}

/// Loads and validates a model, its types and shapes included ([`conform::check`]), as the file
/// holds it (its opset unchanged): what `inspect` shows.
pub fn load_as_is(path: &std::path::Path) -> Result<ModelProto> {
    let model = crate::onnx::io::read_model(path)?;
    validate(&model, path)?;
    Ok(model)
}

/// Everything [`load_as_is`] checks on a decoded model: its structure
/// ([`crate::onnx::validate::check_indexed`]) and its types and shapes ([`conform::check_indexed`]),
/// over one index of its graph. `path` names the model in errors.
pub fn validate(model: &ModelProto, path: &std::path::Path) -> Result<()> {
    let structural = |e: Error| Error::model(path, e.to_string());
    let graph = model.graph.as_ref().ok_or_else(|| Error::model(path, "the model has no graph"))?;
    let index = GraphIndex::new(graph).map_err(structural)?;
    crate::onnx::validate::check_indexed(model, &index).map_err(structural)?;
    conform::check_indexed(model, &index).map_err(|e| in_file(path, e))
}

/// A model-level error, named after the file.
fn in_file(path: &std::path::Path, e: Error) -> Error {
    match e {
        Error::Unsupported { .. } | Error::UnsupportedModel(_) | Error::InvalidGraph(_) => Error::model(path, e.to_string()),
        other => other,
    }
}

/// The model's image input: its only runtime input (an input without a default initializer). The
/// tool feeds one batch of images and the γ rewrite routes samples along the first axis, so a
/// second runtime input (weights fed at run time, say) and a declared rank other than 4
/// ([N, C, H, W]) are refused.
pub fn image_input(graph: &GraphProto) -> Result<&ValueInfoProto> {
    let initialized: std::collections::HashSet<&str> = graph.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
    let runtime: Vec<&ValueInfoProto> = graph.input.iter().filter(|v| !initialized.contains(v.name.as_deref().unwrap_or(""))).collect();
    let name = |v: &ValueInfoProto| v.name.clone().unwrap_or_default();
    let input = match runtime.as_slice() {
        [input] => *input,
        [] => return Err(Error::UnsupportedModel("the model has no runtime input to feed images to".into())),
        several => {
            let names: Vec<String> = several.iter().map(|v| name(v)).collect();
            return Err(Error::UnsupportedModel(format!(
                "the model has {} runtime inputs ({}); the tool feeds one image input (make weights initializers, not graph inputs)",
                names.len(),
                names.join(", ")
            )));
        }
    };
    if let Some(Type::TensorType(tensor)) = input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        if let Some(shape) = tensor.shape.as_ref().filter(|s| s.dim.len() != 4) {
            return Err(Error::UnsupportedModel(format!(
                "input '{}' has rank {}; the tool needs a batched [N, C, H, W] image input (export the model with a batch dimension)",
                name(input),
                shape.dim.len()
            )));
        }
    }
    Ok(input)
}

/// Number of parameters in all initializers of the main graph.
pub fn parameter_count(model: &ModelProto) -> usize {
    model.graph.as_ref().map(|g| g.initializer.iter().map(element_count_of).sum()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> ModelProto {
        crate::onnx::load_model(&crate::test_support::fixture("models").join(name)).unwrap()
    }

    #[test]
    fn resnet20_has_19_convolutions_with_688_filters() {
        let model = fixture("resnet20_cifar10.onnx");
        let convs = convolutions(&model).unwrap();
        assert_eq!(convs.len(), 19);
        assert_eq!(convs.iter().map(|c| c.filters).sum::<usize>(), 688);
        assert!(convs.iter().all(|c| c.constant && c.kernel == vec![3, 3]));
    }

    #[test]
    fn depthwise_groups_are_read() {
        let model = fixture("tiny_dw_cifar10.onnx");
        let convs = convolutions(&model).unwrap();
        assert_eq!(convs.len(), 5);
        assert_eq!(convs.iter().map(|c| c.filters).sum::<usize>(), 160);
        assert!(convs.iter().any(|c| c.group > 1 && c.group == c.filters && c.channels_per_group == 1));
    }
}
