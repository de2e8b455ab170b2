//! The patching units as ONNX rewrites (docs/specification.md §3, §4).
//!
//! - α: zero chosen output channels of one convolution (filter assessment).
//! - β: every patched convolution runs its replacement filters (training, DP-β).
//! - γ: the deliverable — the original model untouched, a per-sample decision at the first patched
//!   layer, and the β computation for the adapted samples only, behind an `If`.
//!
//! In every form a patched convolution reads the kernel `ScatterND(W, blamed, W⊕)`: the original
//! kernel with the blamed filters replaced, computed from initializers, so runtimes fold it into a
//! constant at load time and the file stores only the replacement filters.

pub mod alpha;
pub mod beta;
pub mod decision;
pub mod gamma;
pub mod spec;
pub mod strip;
pub mod target;

pub use alpha::alpha_model;
pub use beta::beta_model;
pub use gamma::{gamma_model, gamma_model_for};
pub use spec::{Boundary, Decision, Direction, LayerPatch, PatchSpec};
pub use strip::strip;
pub use target::{Form, Target};

use crate::analysis::ConvInfo;
use crate::error::Result;
use crate::onnx::builder::Builder;
use crate::onnx::proto::{GraphProto, NodeProto};
use crate::onnx::tensor::{from_f32, from_i64};

/// Prefix of every name the rewrites add.
pub const PREFIX: &str = "deeppatch/";
/// The graph input that switches adaptation off (FALSE ⇒ the original model).
pub const DECISION_INPUT: &str = "deeppatch_decision";
/// Monitoring outputs: which samples took the replacement path, and their Corrective Rate.
pub const ADAPTED_OUTPUT: &str = "deeppatch_adapted";
pub const CR_OUTPUT: &str = "deeppatch_cr";
/// Monitoring output of the probe rule: its logit per sample (adapted when > 0).
pub const PROBE_LOGIT_OUTPUT: &str = "deeppatch_probe_logit";

/// The values a patched convolution reads instead of its original parameters.
#[derive(Debug, Clone)]
pub struct PatchedParams {
    /// The Conv node's position in the original graph.
    pub position: usize,
    pub weight: String,
    pub bias: Option<String>,
    /// Replacement BatchNormalization parameters (scale, bias, mean, var) for the BatchNormalization
    /// node at the given position, when `bn_adapt` produced them.
    pub batchnorm: Option<(usize, [String; 4])>,
    /// The replacement filters alone and the blamed indices, as initializers.
    pub replacement_weight: String,
    pub replacement_bias: Option<String>,
    pub blamed: String,
}

/// Adds, for every layer of a patch, the replacement initializers and the `ScatterND` nodes that
/// merge them into the original parameters.
pub fn merge_parameters(
    builder: &mut Builder,
    graph: &GraphProto,
    layers: &[(ConvInfo, LayerPatch)],
) -> Result<Vec<PatchedParams>> {
    let mut merged = Vec::new();
    for (conv, layer) in layers {
        let node = &graph.node[conv.position];
        let scope = format!("{}/", layer.conv.trim_start_matches('/'));
        let blamed: Vec<i64> = layer.blamed.iter().map(|&c| c as i64).collect();
        let indices = builder.fresh(&format!("{scope}blamed"));
        builder.initializers.push(from_i64(&indices, &[blamed.len(), 1], &blamed));
        let replacement_weight = builder.fresh(&format!("{scope}weight"));
        builder.initializers.push(from_f32(&replacement_weight, &layer.weight.view()));
        let weight = builder.op("ScatterND", &[&node.input[1], &indices, &replacement_weight], vec![]);
        let (bias, replacement_bias) = match (&layer.bias, node.input.get(2).filter(|b| !b.is_empty())) {
            (Some(values), Some(original)) => {
                let name = builder.fresh(&format!("{scope}bias"));
                builder.initializers.push(from_f32(&name, &values.view()));
                (Some(builder.op("ScatterND", &[original, &indices, &name], vec![])), Some(name))
            }
            _ => (None, None),
        };
        let batchnorm = match (&layer.batchnorm, crate::analysis::site::batchnorm_after(graph, conv.position)) {
            (Some(params), Some(bn_position)) => {
                let bn = &graph.node[bn_position];
                let mut names: [String; 4] = Default::default();
                for (i, (param, suffix)) in params.iter().zip(["bn_scale", "bn_bias", "bn_mean", "bn_var"]).enumerate() {
                    let name = builder.fresh(&format!("{scope}{suffix}"));
                    builder.initializers.push(from_f32(&name, &param.view()));
                    names[i] = builder.op("ScatterND", &[&bn.input[i + 1], &indices, &name], vec![]);
                }
                Some((bn_position, names))
            }
            _ => None,
        };
        merged.push(PatchedParams { position: conv.position, weight, bias, batchnorm, replacement_weight, replacement_bias, blamed: indices });
    }
    Ok(merged)
}

/// A copy of `node` reading the merged parameters where it is a patched convolution or the
/// BatchNormalization after one.
pub fn with_patched_inputs(node: &NodeProto, position: usize, patched: &[PatchedParams]) -> NodeProto {
    let mut copy = node.clone();
    for p in patched {
        if p.position == position {
            copy.input[1] = p.weight.clone();
            if let Some(bias) = &p.bias {
                copy.input[2] = bias.clone();
            }
        }
        if let Some((bn_position, names)) = &p.batchnorm {
            if *bn_position == position {
                for (i, name) in names.iter().enumerate() {
                    copy.input[i + 1] = name.clone();
                }
            }
        }
    }
    copy
}
