//! β units: every patched convolution on its replacement filters (training and DP-β).

use super::{merge_parameters, spec::PatchSpec, with_patched_inputs, PatchedParams};
use crate::error::{Error, Result};
use crate::onnx::builder::Builder;
use crate::onnx::default_opset;
use crate::onnx::proto::ModelProto;

/// A copy of `model` whose patched convolutions read the merged kernels; the replacement filters
/// are initializers of their own (named in the returned parameters), so a trainer can treat them
/// as the only trainable tensors.
pub fn beta_model(model: &ModelProto, spec: &PatchSpec) -> Result<(ModelProto, Vec<PatchedParams>)> {
    let convs = spec.validate(model)?;
    let layers: Vec<_> = convs.into_iter().zip(spec.layers.iter().cloned()).collect();
    let mut out = model.clone();
    let graph = out.graph.as_mut().ok_or_else(|| Error::InvalidGraph("the model has no graph".into()))?;
    let mut builder = Builder::new(graph, default_opset(model));
    let patched = merge_parameters(&mut builder, graph, &layers)?;
    let nodes: Vec<_> = graph.node.iter().enumerate().map(|(p, n)| with_patched_inputs(n, p, &patched)).collect();
    // The merges read the original parameters, which a Constant node may compute.
    graph.node = builder.nodes.drain(..).chain(nodes).collect();
    graph.initializer.append(&mut builder.initializers);
    crate::onnx::graph::sort_topologically(graph)?;
    Ok((out, patched))
}
