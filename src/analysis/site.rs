//! Where a convolution's activations are: the BatchNormalization that directly follows it, the
//! activation function after that, and the value the Corrective Rate reads (BRIEF §2.4).

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

/// The site of the Conv node at `position`.
pub fn site(index: &GraphIndex, position: usize) -> Site {
    let conv = &index.graph().node[position];
    let mut output = conv.output[0].clone();
    let batchnorm = sole_reader(index, &output)
        .filter(|(_, n)| n.op_type.as_deref() == Some("BatchNormalization") && n.input.first() == Some(&output))
        .map(|(p, n)| {
            output = n.output[0].clone();
            p
        });
    let activation = sole_reader(index, &output)
        .filter(|(_, n)| ACTIVATIONS.contains(&n.op_type.as_deref().unwrap_or("")) && n.input.first() == Some(&output))
        .map(|(p, n)| {
            output = n.output[0].clone();
            p
        });
    Site { conv: position, input: conv.input[0].clone(), batchnorm, activation, output }
}

/// The BatchNormalization directly after the Conv node at `position`, if any.
pub fn batchnorm_after(graph: &GraphProto, position: usize) -> Option<usize> {
    let index = GraphIndex::new(graph).ok()?;
    site(&index, position).batchnorm
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::load_model;
    use std::path::Path;

    fn first_site(name: &str) -> (Site, Vec<String>) {
        let model = load_model(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models").join(name)).unwrap();
        let graph = model.graph.as_ref().unwrap();
        let index = GraphIndex::new(graph).unwrap();
        let first = crate::analysis::convolutions(&model).unwrap()[0].position;
        let s = site(&index, first);
        let ops = [s.batchnorm, s.activation].iter().flatten().map(|&p| graph.node[p].op_type.clone().unwrap()).collect();
        (s, ops)
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
