//! Where a convolution's activations are: the BatchNormalization that directly follows it, the
//! activation function after that, and the value the Corrective Rate reads (docs/specification.md §3.4).

use crate::onnx::graph::GraphIndex;
use crate::onnx::proto::{GraphProto, NodeProto};

/// Element-wise activations that may follow a convolution (or its BatchNormalization).
pub const ACTIVATIONS: [&str; 9] = ["Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Elu", "Selu", "Tanh"];

/// The activations of one convolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// Position of the Conv node, and the value it reads.
    pub conv: usize,
    pub input: String,
    /// The BatchNormalization node reading the convolution's output, when it is its only reader.
    pub batchnorm: Option<usize>,
    /// The activation node after the convolution (or its BatchNormalization), when it is the only
    /// reader.
    pub activation: Option<usize>,
    /// The value whose positive entries are the activated neurons: the activation's output, else
    /// the BatchNormalization's, else the convolution's.
    pub output: String,
}

/// The only node reading `value`, if exactly one node reads it and it is not a graph output.
fn sole_reader<'g>(index: &GraphIndex<'g>, value: &str) -> Option<(usize, &'g NodeProto)> {
    if index.graph().output.iter().any(|o| o.name.as_deref() == Some(value)) {
        return None;
    }
    let mut readers = index.consumers(value);
    let first = readers.next()?;
    readers.next().is_none().then_some(first)
}

/// The site of the Conv node at `position`. `output` is empty when the convolution computes no
/// (named) value, which only a broken model has, or when there is no node at `position`; the
/// decision refuses such a site.
pub fn site(index: &GraphIndex, position: usize) -> Site {
    let conv = index.graph().node.get(position);
    let mut output = conv.and_then(|c| c.output.first()).cloned().unwrap_or_default();
    // Five inputs (X, scale, B, mean, var): the rewrites read all four parameters.
    let batchnorm = follower(index, &output, |op, node| op == "BatchNormalization" && node.input.len() == 5).map(|(p, next)| {
        output = next;
        p
    });
    let activation = follower(index, &output, |op, _| ACTIVATIONS.contains(&op)).map(|(p, next)| {
        output = next;
        p
    });
    let input = conv.and_then(|c| c.input.first()).cloned().unwrap_or_default();
    Site { conv: position, input, batchnorm, activation, output }
}

/// The sole reader of `value`, with the value it computes, when it is a default-domain node that
/// `accepts` (given its op type), reads `value` as its first input and names its first output.
/// A node of another domain only shares the op type's name, not its meaning.
fn follower(index: &GraphIndex, value: &str, accepts: impl Fn(&str, &NodeProto) -> bool) -> Option<(usize, String)> {
    if value.is_empty() {
        return None;
    }
    let (position, node) = sole_reader(index, value)?;
    let op = node.op_type.as_deref().filter(|_| crate::onnx::graph::in_default_domain(node))?;
    if !accepts(op, node) || node.input.first().map(String::as_str) != Some(value) {
        return None;
    }
    let next = node.output.first().filter(|o| !o.is_empty())?;
    Some((position, next.clone()))
}

/// The BatchNormalization directly after the Conv node at `position`, if any.
pub fn batchnorm_after(graph: &GraphProto, position: usize) -> Option<usize> {
    let index = GraphIndex::new(graph).ok()?;
    site(&index, position).batchnorm
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::cast_possible_truncation, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::onnx::load_model;
    use crate::onnx::proto::ValueInfoProto;

    fn first_site(name: &str) -> (Site, Vec<String>) {
        let model = load_model(&crate::test_support::fixture("models").join(name)).unwrap();
        let graph = model.graph.as_ref().unwrap();
        let index = GraphIndex::new(graph).unwrap();
        let first = crate::analysis::convolutions(&model).unwrap()[0].position;
        let s = site(&index, first);
        let ops = [s.batchnorm, s.activation].iter().flatten().map(|&p| graph.node[p].op_type.clone().unwrap()).collect();
        (s, ops)
    }

    fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
        let names = |values: &[&str]| values.iter().map(|v| v.to_string()).collect();
        NodeProto { op_type: Some(op.into()), input: names(inputs), output: names(outputs), ..Default::default() }
    }

    /// The site of the first node of a graph whose inputs are x, w and the BatchNormalization's
    /// parameters.
    fn site_of(nodes: Vec<NodeProto>) -> Site {
        let declared = ["x", "w", "scale", "bias", "mean", "var"];
        let input = declared.iter().map(|n| ValueInfoProto { name: Some(n.to_string()), ..Default::default() });
        let graph = GraphProto { node: nodes, input: input.collect(), ..Default::default() };
        site(&GraphIndex::new(&graph).unwrap(), 0)
    }

    #[test]
    fn reads_only_default_domain_nodes_with_their_values() {
        let conv = || node("Conv", &["x", "w"], &["c"]);
        let batchnorm = || node("BatchNormalization", &["c", "scale", "bias", "mean", "var"], &["b"]);
        let full = site_of(vec![conv(), batchnorm(), node("Relu", &["b"], &["r"])]);
        assert_eq!((full.batchnorm, full.activation, full.output.as_str()), (Some(1), Some(2), "r"));
        // Another domain's BatchNormalization (here with three inputs) is an unknown operator.
        let three = node("BatchNormalization", &["c", "scale", "bias"], &["b"]);
        let foreign = NodeProto { domain: Some("fuzz.custom".into()), ..three };
        let site = site_of(vec![conv(), foreign, node("Relu", &["b"], &["r"])]);
        assert_eq!((site.batchnorm, site.activation, site.output.as_str()), (None, None, "c"));
        let short = site_of(vec![conv(), node("BatchNormalization", &["c", "scale", "bias"], &["b"])]);
        assert_eq!((short.batchnorm, short.output.as_str()), (None, "c"));
        // Nodes without outputs: the site ends before them, or is empty for the Conv itself.
        let silent = site_of(vec![conv(), batchnorm(), node("Relu", &["b"], &[])]);
        assert_eq!((silent.batchnorm, silent.activation, silent.output.as_str()), (Some(1), None, "b"));
        let empty = site_of(vec![node("Conv", &["x", "w"], &[]), node("Relu", &["x"], &["r"])]);
        assert_eq!((empty.batchnorm, empty.activation, empty.output.as_str()), (None, None, ""));
    }

    #[test]
    fn finds_batchnorm_and_activation() {
        assert_eq!(first_site("tiny_cnn_cifar10.onnx").1, vec!["BatchNormalization", "Relu"]);
        assert_eq!(first_site("resnet20_cifar10.onnx").1, vec!["Relu"]);
        assert_eq!(first_site("tiny_dw_cifar10.onnx").1, vec!["Clip"]);
        let (vgg, ops) = first_site("tiny_vgg_cifar10.onnx");
        assert_eq!(ops, vec!["Relu"]);
        assert_eq!(vgg.input, "input");
    }
}
