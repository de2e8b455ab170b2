//! α units: a convolution's chosen output channels forced to zero (filter assessment, docs/specification.md §3.1).

use ndarray::{ArrayD, IxDyn};

use super::spec::find_conv;
use crate::analysis::convolutions;
use crate::error::{Error, Result};
use crate::onnx::graph::NameGen;
use crate::onnx::proto::{ModelProto, NodeProto};
use crate::onnx::tensor::from_f32;

/// A copy of `model` in which the output channels `channels` of convolution `conv` are zero: its
/// output is multiplied by a constant mask [1, m, 1, …], so every reader sees the zeroed channels.
pub fn alpha_model(model: &ModelProto, conv: &str, channels: &[usize]) -> Result<ModelProto> {
    let convs = convolutions(model)?;
    let info = find_conv(&convs, conv)?;
    if let Some(&bad) = channels.iter().find(|&&c| c >= info.filters) {
        return Err(Error::Config(format!("convolution '{conv}' has {} filters; channel {bad} does not exist", info.filters)));
    }
    let mut out = model.clone();
    let graph = out.graph.as_mut().ok_or_else(|| Error::InvalidGraph("the model has no graph".into()))?;
    let mut names = NameGen::new(graph, super::PREFIX);
    let scope = info.name.trim_start_matches('/').to_string();
    let unmasked = names.fresh(&format!("{scope}/unmasked"));
    let mask = names.fresh(&format!("{scope}/alpha_mask"));
    let mut shape = vec![1, info.filters, 1];
    shape.extend(std::iter::repeat_n(1, info.kernel.len().saturating_sub(1)));
    let kept: Vec<f32> = (0..info.filters).map(|c| if channels.contains(&c) { 0.0 } else { 1.0 }).collect();
    let values = ArrayD::from_shape_vec(IxDyn(&shape), kept).map_err(|e| Error::Internal(e.to_string()))?;
    graph.initializer.push(from_f32(&mask, &values.view()));
    let output = std::mem::replace(&mut graph.node[info.position].output[0], unmasked.clone());
    let multiply = NodeProto {
        name: Some(names.fresh(&format!("{scope}/alpha"))),
        op_type: Some("Mul".into()),
        input: vec![unmasked, mask],
        output: vec![output],
        ..Default::default()
    };
    graph.node.insert(info.position + 1, multiply);
    Ok(out)
}
