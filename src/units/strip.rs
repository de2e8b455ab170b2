//! `strip`: a γ-patched model back to the original computation, with bitwise-equal weights; and
//! the patch a γ-patched model carries, read back as a spec for its β model.

use std::collections::{BTreeMap, HashMap};

use ndarray::ArrayD;

use super::gamma::LAYOUT_KEY;
use super::spec::{model_sha256, Decision, LayerPatch, PatchSpec, SPEC_FORMAT};
use crate::analysis::{convolutions, site::batchnorm_after};
use crate::error::{Error, Result};
use crate::onnx::graph::renamed_values;
use crate::onnx::metadata;
use crate::onnx::proto::{ModelProto, NodeProto, TensorProto};
use crate::onnx::tensor::{to_f32, to_tensor};
use crate::Tensor;

/// What the γ rewrite recorded about the original model's place in the patched graph.
#[derive(serde::Deserialize)]
struct Layout {
    /// Files of version 0.1 put the merges before the original nodes.
    #[serde(default = "merges_first_by_default")]
    merges_first: bool,
    merge_nodes: usize,
    original_nodes: usize,
    initializers: usize,
    inputs: usize,
    outputs: usize,
    renamed: HashMap<String, String>,
}

/// Whether `model` is a γ-patched model (it carries the layout `strip` needs).
pub fn is_patched(model: &ModelProto) -> bool {
    metadata(model, LAYOUT_KEY).is_some()
}

fn merges_first_by_default() -> bool {
    true
}

impl Layout {
    /// Positions of the merge nodes and of the original nodes in the patched graph.
    fn ranges(&self) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let (merges, original) = (self.merge_nodes, self.original_nodes);
        if self.merges_first {
            (0..merges, merges..merges + original)
        } else {
            (original..original + merges, 0..original)
        }
    }
}

fn layout(patched: &ModelProto) -> Result<Layout> {
    let text = metadata(patched, LAYOUT_KEY)
        .ok_or_else(|| Error::Config(format!("not a model patched by onnx-deeppatch (no '{LAYOUT_KEY}' metadata)")))?;
    serde_json::from_str(text).map_err(|e| Error::InvalidGraph(format!("metadata '{LAYOUT_KEY}': {e}")))
}

/// The original model inside a γ-patched one: its nodes, initializers, inputs and outputs as they
/// were, and every DeepPatch metadata entry removed.
pub fn strip(patched: &ModelProto) -> Result<ModelProto> {
    let layout = layout(patched)?;
    // Every form keeps the original nodes where the layout says; an unknown one (a newer tool's)
    // may not.
    super::target::form_of(patched)?;
    let mut model = patched.clone();
    let graph = model.graph.as_mut().ok_or_else(|| Error::InvalidGraph("the model has no graph".into()))?;
    let (_, original) = layout.ranges();
    if layout.merge_nodes + layout.original_nodes > graph.node.len() || layout.initializers > graph.initializer.len() || layout.inputs > graph.input.len() || layout.outputs > graph.output.len() {
        return Err(Error::InvalidGraph(format!("metadata '{LAYOUT_KEY}' does not match the graph")));
    }
    let original_names: HashMap<String, String> = layout.renamed.into_iter().map(|(o, r)| (r, o)).collect();
    graph.node = graph.node[original].iter().map(|n| renamed_values(n, &original_names)).collect();
    graph.initializer.truncate(layout.initializers);
    graph.input.truncate(layout.inputs);
    graph.output.truncate(layout.outputs);
    model.metadata_props.retain(|p| !p.key.as_deref().unwrap_or("").starts_with("deeppatch"));
    Ok(model)
}

/// The patch inside a γ-patched model as a spec for its β model (`beta_model(&strip(m)?, &spec)`):
/// blamed channels and replacement arrays read back from the `ScatterND` merges (one group per
/// layer, sharing the blamed indices), checked against `deeppatch.blamed`, κ from the metadata.
/// The decision is adapt-all, which is what β means; the served rule stays in the patched model,
/// whichever it is.
pub fn beta_spec(patched: &ModelProto) -> Result<PatchSpec> {
    let layout = layout(patched)?;
    let original = strip(patched)?;
    let graph = patched.graph.as_ref().ok_or_else(|| Error::InvalidGraph("the model has no graph".into()))?;
    let original_graph = original.graph.as_ref().ok_or_else(|| Error::InvalidGraph("the model has no graph".into()))?;
    let fail = |message: String| Error::InvalidGraph(format!("γ-patched model: {message}"));
    let blamed: BTreeMap<String, Vec<usize>> = metadata(patched, "deeppatch.blamed")
        .ok_or_else(|| fail("no 'deeppatch.blamed' metadata".into()))
        .and_then(|text| serde_json::from_str(text).map_err(|e| fail(format!("metadata 'deeppatch.blamed': {e}"))))?;
    let kappa: f64 = metadata(patched, "deeppatch.kappa")
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| fail("no numeric 'deeppatch.kappa' metadata".into()))?;
    let initializers: HashMap<&str, &TensorProto> = graph.initializer.iter().filter_map(|t| Some((t.name.as_deref()?, t))).collect();
    let initializer = |name: &str| initializers.get(name).copied().ok_or_else(|| fail(format!("merge input '{name}' is not an initializer")));

    // The merges of one layer share its blamed indices (their second input), in emission order.
    let mut groups: Vec<(&str, Vec<&NodeProto>)> = Vec::new();
    for node in graph.node.get(layout.ranges().0).ok_or_else(|| fail(format!("metadata '{LAYOUT_KEY}' does not match the graph")))? {
        if node.op_type.as_deref() != Some("ScatterND") || node.input.len() != 3 {
            return Err(fail(format!("node '{}' is not a ScatterND merge", node.name.as_deref().unwrap_or(""))));
        }
        match groups.iter_mut().find(|(indices, _)| *indices == node.input[1]) {
            Some((_, members)) => members.push(node),
            None => groups.push((&node.input[1], vec![node])),
        }
    }
    if groups.len() != blamed.len() {
        return Err(fail(format!("{} merged layers but {} in 'deeppatch.blamed'", groups.len(), blamed.len())));
    }

    let convs = convolutions(&original)?;
    let mut layers = Vec::new();
    for (indices, members) in groups {
        let merge_of = |value: &str| members.iter().find(|n| n.input[0] == value);
        let mut matching = convs.iter().filter(|c| blamed.contains_key(&c.name) && merge_of(&c.weight).is_some());
        let conv = match (matching.next(), matching.next()) {
            (Some(conv), None) => conv,
            _ => return Err(fail(format!("the merges reading indices '{indices}' match no single patched convolution"))),
        };
        let replacement = |value: &str| -> Result<Option<ArrayD<f32>>> {
            merge_of(value).map(|n| Ok(to_f32(initializer(&n.input[2])?)?.into_owned())).transpose()
        };
        let channels = match to_tensor(initializer(indices)?)? {
            Tensor::I64(values) => values.iter().map(|&c| usize::try_from(c).map_err(|_| fail(format!("'{indices}' holds channel {c}")))).collect::<Result<Vec<_>>>()?,
            other => return Err(fail(format!("'{indices}' is {}, expected int64", other.type_name()))),
        };
        if channels != blamed[&conv.name] {
            return Err(fail(format!("convolution '{}': merged channels {channels:?} differ from the metadata's {:?}", conv.name, blamed[&conv.name])));
        }
        let node = &original_graph.node[conv.position];
        let weight = replacement(&conv.weight)?.ok_or_else(|| fail(format!("convolution '{}' has no weight merge", conv.name)))?;
        let bias = match node.input.get(2).filter(|b| !b.is_empty()) {
            Some(bias) => replacement(bias)?,
            None => None,
        };
        let batchnorm = match batchnorm_after(original_graph, conv.position) {
            Some(position) => {
                let bn = &original_graph.node[position];
                let [scale, shift, mean, var] = [1, 2, 3, 4].map(|i| bn.input.get(i).map_or(Ok(None), |v| replacement(v)));
                match (scale?, shift?, mean?, var?) {
                    (Some(a), Some(b), Some(c), Some(d)) => Some([a, b, c, d]),
                    (None, None, None, None) => None,
                    _ => return Err(fail(format!("convolution '{}': some but not all BatchNormalization parameters are merged", conv.name))),
                }
            }
            None => None,
        };
        let used = 1 + usize::from(bias.is_some()) + if batchnorm.is_some() { 4 } else { 0 };
        if used != members.len() {
            return Err(fail(format!("convolution '{}': {} merges, {used} of them recognised", conv.name, members.len())));
        }
        layers.push(LayerPatch { conv: conv.name.clone(), blamed: channels, weight, bias, batchnorm });
    }
    Ok(PatchSpec {
        format: SPEC_FORMAT,
        model_sha256: Some(model_sha256(&original)),
        kappa,
        layers,
        decision: Decision::adapt_all(),
        metadata: BTreeMap::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::{beta_model, gamma_model, spec::random_spec};
    use ndarray::IxDyn;

    fn fixture(name: &str) -> ModelProto {
        crate::onnx::load_model(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/models").join(name)).unwrap()
    }

    /// The spec read back from the γ model builds the same β model as the spec it was made from.
    fn round_trip(model: &ModelProto, spec: &PatchSpec) {
        let patched = gamma_model(model, spec).unwrap();
        assert!(is_patched(&patched) && !is_patched(model));
        let recovered = beta_spec(&patched).unwrap();
        assert_eq!(recovered.layers, spec.layers);
        assert_eq!(recovered.kappa, spec.kappa);
        assert_eq!(recovered.decision, Decision::adapt_all());
        assert_eq!(beta_model(&strip(&patched).unwrap(), &recovered).unwrap().0, beta_model(model, spec).unwrap().0);
    }

    #[test]
    fn beta_spec_reads_weights_and_biases_back() {
        let model = fixture("tiny_vgg_cifar10.onnx");
        let spec = random_spec(&model, 0.25, 3, Decision::adapt_none()).unwrap();
        assert!(spec.layers.iter().all(|l| l.bias.is_some()));
        round_trip(&model, &spec);
    }

    #[test]
    fn beta_spec_reads_adapted_batchnorm_back() {
        let model = fixture("tiny_cnn_cifar10.onnx");
        let mut spec = random_spec(&model, 0.5, 4, Decision::adapt_all()).unwrap();
        for (i, layer) in spec.layers.iter_mut().enumerate() {
            let k = layer.blamed.len();
            let values = |offset: f32| ArrayD::from_shape_fn(IxDyn(&[k]), |ix| offset + i as f32 + ix[0] as f32 / 8.0);
            layer.batchnorm = Some([values(1.0), values(0.1), values(-0.2), values(0.5)]);
        }
        round_trip(&model, &spec);
    }

    #[test]
    fn beta_spec_rejects_a_plain_model_and_a_tampered_patch() {
        let model = fixture("tiny_cnn_cifar10.onnx");
        assert!(matches!(beta_spec(&model), Err(Error::Config(_))));
        let spec = random_spec(&model, 0.25, 5, Decision::adapt_all()).unwrap();
        let mut patched = gamma_model(&model, &spec).unwrap();
        let entry = patched.metadata_props.iter_mut().find(|p| p.key.as_deref() == Some("deeppatch.blamed")).unwrap();
        entry.value = Some(entry.value.as_deref().unwrap().replacen("[0,", "[1,", 1));
        let message = beta_spec(&patched).unwrap_err().to_string();
        assert!(message.contains("differ from the metadata"), "{message}");
    }
}
