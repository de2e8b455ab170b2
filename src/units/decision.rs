//! The γ decision subgraph: the Corrective Rate at the first patched layer (BRIEF §2.4) and the
//! per-sample adaptation flags derived from it.
//!
//! CR_n = |{neurons where exactly one of z⁻ > 0, z⁺ > 0}| / |z⁺|, with z⁻ the blamed original
//! channels and z⁺ the replacement channels, both after the layer's own BatchNormalization and
//! activation. z⁻ is read from the original model's own value, so it is bit-for-bit the value the
//! model computes; z⁺ is computed beside it from the replacement filters.

use super::spec::{Decision, Direction};
use super::PatchedParams;
use crate::analysis::site::Site;
use crate::analysis::ConvInfo;
use crate::error::Result;
use crate::onnx::builder::{int, Builder, BOOL, FLOAT};
use crate::onnx::proto::GraphProto;

/// Names of the decision's values.
pub struct DecisionValues {
    /// CR per sample, [N] float.
    pub cr: String,
    /// The adaptation flag per sample (rule and `deeppatch_decision`), [N] bool.
    pub adapted: String,
    /// Whether any sample is adapted, a bool scalar (the `If` condition).
    pub any: String,
}

/// Emits the CR and the decision for the layer at `site`, whose merged parameters are `params`.
/// `cr_name` and `adapted_name` are the names of the monitoring outputs.
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
    cr_name: &str,
    adapted_name: &str,
) -> Result<DecisionValues> {
    let channels = builder.ints(&blamed.iter().map(|&c| c as i64).collect::<Vec<_>>());
    let original = builder.op("Gather", &[&site.output, &channels], vec![int("axis", 1)]);

    // z⁺: the replacement filters alone where the convolution is not grouped (k filters, the
    // cheapest); otherwise the merged layer, then its blamed channels. BatchNormalization
    // parameters are taken at the blamed channels (a Gather of constants, folded at load time).
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
    if let Some(bn_position) = site.batchnorm {
        let bn = &graph.node[bn_position];
        let parameters: Vec<String> = match &params.batchnorm {
            Some((_, merged)) => merged.to_vec(),
            None => bn.input[1..5].to_vec(),
        };
        let mut inputs = vec![replacement];
        for parameter in &parameters {
            inputs.push(builder.op("Gather", &[parameter, &channels], vec![int("axis", 0)]));
        }
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        replacement = builder.op("BatchNormalization", &inputs, bn.attribute.clone());
    }
    if let Some(activation_position) = site.activation {
        let activation = &graph.node[activation_position];
        let mut inputs = vec![replacement.as_str()];
        inputs.extend(activation.input.iter().skip(1).map(String::as_str));
        replacement = builder.op(activation.op_type.as_deref().unwrap_or("Relu"), &inputs, activation.attribute.clone());
    }

    let zero = builder.scalar(FLOAT, 0.0)?;
    let original_active = builder.op("Greater", &[&original, &zero], vec![]);
    let replacement_active = builder.op("Greater", &[&replacement, &zero], vec![]);
    let disagree = builder.op("Xor", &[&original_active, &replacement_active], vec![]);
    let counts = builder.op("Cast", &[&disagree], vec![int("to", FLOAT as i64)]);
    let rank = conv.kernel.len() + 2;
    let axes: Vec<i64> = (1..rank as i64).collect();
    builder.reduce_named("ReduceMean", &counts, &axes, false, cr_name);

    let Decision::Cr { boundary, direction, .. } = decision;
    let boundary = builder.scalar(FLOAT, f64::from(*boundary))?;
    let comparison = match direction {
        Direction::Below => "Less",
        Direction::Above => "Greater",
    };
    let rule = builder.op(comparison, &[cr_name, &boundary], vec![]);
    builder.op_named("And", &[&rule, switch], vec![], adapted_name);
    let flags = builder.op("Cast", &[adapted_name], vec![int("to", FLOAT as i64)]);
    let most = builder.reduce("ReduceMax", &flags, &[], false);
    let any = builder.op("Cast", &[&most], vec![int("to", BOOL as i64)]);
    Ok(DecisionValues { cr: cr_name.to_string(), adapted: adapted_name.to_string(), any })
}
