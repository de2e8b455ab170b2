//! Static element types and shapes of a graph's values, with symbolic dimensions.
//!
//! Backward rules need ranks, spatial sizes and which axes broadcast, while the batch size stays
//! dynamic. A dimension is a monomial `coef · s₁ · s₂ …` over symbols (the graph inputs' named
//! dimensions, and a fresh symbol for anything that cannot be derived), so that `Flatten` of
//! `[N, 64, 1, 1]` followed by `Reshape [N, -1]` still gives `[N, 64]`. Small integer tensors (shape
//! subgraphs: Shape, Gather, Concat, Slice, Cast, …) are evaluated with the same symbolic elements,
//! so that Reshape targets and Pad amounts computed by a subgraph are known. Inference is
//! best-effort: what cannot be derived stays unknown, and a rule that needs it reports an error.
//!
//! One rule per operator, grouped by family as the backward rules are (`autodiff/rules/`), each
//! family beside its tests; [`Registry`] maps an operator type to its rule. An operator without a
//! rule is taken to keep its first input's element type (marked as a guess), its shape unknown.

mod dim;
mod elementwise;
mod linear;
mod normalization;
mod reduce;
mod reshape;
mod shape;
mod slice;
mod window;

use std::sync::OnceLock;

use ndarray::{ArrayD, IxDyn};

pub(crate) use dim::Dim;
pub(crate) use reduce::reduced_axes;
pub(crate) use reshape::transpose_perm;
pub(crate) use slice::{pad_amounts, slice_axes};

use crate::onnx::graph::{attr_ints, in_default_domain, FastMap, GraphIndex};
use crate::onnx::proto::tensor_proto::DataType;
use crate::onnx::proto::tensor_shape_proto::dimension::Value as DimValue;
use crate::onnx::proto::{type_proto, GraphProto, NodeProto};

/// Integer tensors larger than this are not evaluated (shape subgraphs are tiny).
const VALUE_LIMIT: usize = 4096;

/// Shapes of higher rank are not tracked: no model has them, while a rank read from the model (a
/// Reshape target's length, a declared shape) may be anything.
const MAX_RANK: usize = 64;

pub(crate) use crate::onnx::builder::{BOOL, DOUBLE, FLOAT, INT64};
const INT32: i32 = DataType::Int32 as i32;

/// Whether values of `dtype` carry gradients.
pub(crate) fn is_float(dtype: i32) -> bool {
    [FLOAT, DOUBLE, DataType::Float16 as i32, DataType::Bfloat16 as i32].contains(&dtype)
}

/// What is known about one value.
#[derive(Clone, Debug, Default)]
pub(crate) struct Fact {
    /// ONNX `TensorProto.DataType` code; 0 when unknown.
    pub dtype: i32,
    pub shape: Option<Vec<Dim>>,
    /// The elements of a small integer tensor.
    pub value: Option<ArrayD<Dim>>,
    /// Whether `dtype` is assumed rather than derived: an operator without a rule here is taken
    /// to keep its first input's type, and whatever is computed from such a value inherits the
    /// doubt.
    pub guessed: bool,
}

impl Fact {
    fn of(dtype: i32, shape: Option<Vec<Dim>>) -> Fact {
        Fact { dtype, shape, value: None, guessed: false }
    }

    fn with_value(dtype: i32, value: ArrayD<Dim>) -> Fact {
        let shape = value.shape().iter().map(|&d| Dim::known(i64::try_from(d).unwrap_or(i64::MAX))).collect();
        Fact { dtype, shape: Some(shape), value: Some(value), guessed: false }
    }

    /// The fact without its shape and value when their rank exceeds [`MAX_RANK`].
    fn bounded(self) -> Fact {
        if self.shape.as_ref().is_some_and(|s| s.len() > MAX_RANK) {
            Fact { shape: None, value: None, ..self }
        } else {
            self
        }
    }

    /// The elements when they are all known numbers.
    pub fn ints(&self) -> Option<Vec<i64>> {
        self.value.as_ref()?.iter().map(Dim::value).collect()
    }
}

/// The symbols of one graph: its inputs' named dimensions, and fresh ones for what cannot be
/// derived.
#[derive(Default)]
struct Symbols<'g> {
    names: FastMap<&'g str, u32>,
    next: u32,
}

impl<'g> Symbols<'g> {
    /// A symbol never seen before.
    fn fresh(&mut self) -> Dim {
        let id = self.next;
        self.next = next_symbol(id);
        Dim::symbol(id)
    }

    /// A dimension as a graph input declares it: a number, a named symbol (one per name), or a
    /// fresh symbol when it is neither.
    fn declared(&mut self, value: Option<&'g DimValue>) -> Dim {
        match value {
            Some(DimValue::DimValue(v)) if *v >= 0 => Dim::known(*v),
            Some(DimValue::DimParam(name)) if !name.is_empty() => {
                let next = self.next;
                let id = *self.names.entry(name.as_str()).or_insert(next);
                if id == next {
                    self.next = next_symbol(next);
                }
                Dim::symbol(id)
            }
            _ => self.fresh(),
        }
    }

    /// Numpy broadcasting of several shapes; a dimension that cannot be decided becomes fresh.
    fn broadcast(&mut self, shapes: &[&[Dim]]) -> Vec<Dim> {
        let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
        (0..rank)
            .map(|axis| {
                let dims: Vec<&Dim> = shapes
                    .iter()
                    .filter_map(|s| axis.checked_add(s.len())?.checked_sub(rank).and_then(|i| s.get(i)))
                    .filter(|d| d.value() != Some(1))
                    .collect();
                // A known size d ≠ 1 fixes the axis: every other operand is 1 or d in a valid model,
                // whatever its symbol (as onnxruntime unifies them).
                let mut known = dims.iter().filter_map(|d| d.value());
                match (known.next(), dims.first()) {
                    (Some(d), _) if known.all(|k| k == d) => Dim::known(d),
                    (None, None) => Dim::known(1),
                    (None, Some(first)) if dims.iter().all(|d| d == first) => (*first).clone(),
                    _ => self.fresh(),
                }
            })
            .collect()
    }
}

/// The symbol after `id`. Every symbol is the dimension of a value held in memory, and 2³² of
/// them do not fit: the count never saturates.
fn next_symbol(id: u32) -> u32 {
    id.saturating_add(1)
}

/// One node as its rule sees it: the node and the facts of its inputs (`None` for an absent
/// input or one nothing is known about).
struct Node<'a> {
    pub proto: &'a NodeProto,
    pub op: &'a str,
    inputs: &'a [Option<&'a Fact>],
}

impl<'a> Node<'a> {
    fn fact(&self, i: usize) -> Option<&'a Fact> {
        self.inputs.get(i).copied().flatten()
    }

    fn dtype(&self, i: usize) -> i32 {
        self.fact(i).map_or(0, |f| f.dtype)
    }

    fn shape(&self, i: usize) -> Option<&'a [Dim]> {
        self.fact(i)?.shape.as_deref()
    }

    /// The axes of a Reduce*/Squeeze/Unsqueeze node (see [`Facts::axes`]).
    fn axes(&self) -> Option<Vec<i64>> {
        axes(self.proto, || self.fact(1))
    }

    /// The number of outputs.
    fn outputs(&self) -> usize {
        self.proto.output.len()
    }
}

/// Computes the facts of a node's outputs, in order (fewer when the rest are unknown).
type Rule = fn(&Node, &mut Symbols) -> Vec<Fact>;

/// Inference rules by operator type (default ONNX domain).
struct Registry(FastMap<&'static str, Rule>);

impl Registry {
    /// The rules of every family, built once.
    fn get() -> &'static Registry {
        static REGISTRY: OnceLock<Registry> = OnceLock::new();
        REGISTRY.get_or_init(|| {
            let mut registry = Registry(FastMap::default());
            elementwise::register(&mut registry);
            linear::register(&mut registry);
            normalization::register(&mut registry);
            reduce::register(&mut registry);
            reshape::register(&mut registry);
            shape::register(&mut registry);
            slice::register(&mut registry);
            window::register(&mut registry);
            registry
        })
    }

    fn insert(&mut self, ops: &[&'static str], rule: Rule) {
        for &op in ops {
            self.0.insert(op, rule);
        }
    }

    /// The facts of `node`'s outputs.
    fn infer(&self, node: &Node, symbols: &mut Symbols) -> Vec<Fact> {
        match self.0.get(node.op) {
            Some(rule) => rule(node, symbols),
            None => vec![Fact { guessed: true, ..Fact::of(node.dtype(0), None) }],
        }
    }
}

/// `first` followed by `extra` for each further output.
fn with_extra(node: &Node, first: Fact, extra: Fact) -> Vec<Fact> {
    let mut outputs = vec![first];
    outputs.resize(node.outputs().max(1), extra);
    outputs
}

/// Facts about every value of one graph.
pub(crate) struct Facts<'g> {
    facts: FastMap<&'g str, Fact>,
    symbols: Symbols<'g>,
    opset: i64,
}

impl<'g> Facts<'g> {
    /// Infers the facts of every value of `graph`, whose default-domain opset is `opset`.
    pub fn infer(graph: &'g GraphProto, index: &GraphIndex, opset: i64) -> Facts<'g> {
        // A hint: the lengths of three lists in memory add up to far less than usize::MAX.
        let capacity = graph.input.len().saturating_add(graph.initializer.len()).saturating_add(graph.node.len());
        let mut facts = FastMap::with_capacity_and_hasher(capacity, Default::default());
        let mut symbols = Symbols::default();
        for input in &graph.input {
            let Some(name) = input.name.as_deref() else { continue };
            let Some(type_proto::Value::TensorType(tensor)) = input.r#type.as_ref().and_then(|t| t.value.as_ref())
            else {
                continue;
            };
            let shape = tensor.shape.as_ref().map(|shape| shape.dim.iter().map(|d| symbols.declared(d.value.as_ref())).collect());
            facts.insert(name, Fact::of(tensor.elem_type.unwrap_or(0), shape).bounded());
        }
        for tensor in &graph.initializer {
            if let Some(name) = tensor.name.as_deref() {
                let mut fact = shape::tensor_fact(tensor);
                // An initializer that is also a graph input is only a default: its value may change.
                if index.is_graph_input(name) {
                    fact.value = None;
                }
                facts.insert(name, fact.bounded());
            }
        }
        let registry = Registry::get();
        for &position in index.topological_order() {
            let Some(proto) = graph.node.get(position) else { continue };
            let inputs: smallvec::SmallVec<[Option<&Fact>; 4]> =
                proto.input.iter().map(|name| if name.is_empty() { None } else { facts.get(name.as_str()) }).collect();
            let doubt = inputs.iter().flatten().any(|f| f.guessed);
            let op = proto.op_type.as_deref().filter(|_| in_default_domain(proto)).unwrap_or("");
            let outputs = registry.infer(&Node { proto, op, inputs: &inputs }, &mut symbols);
            // The inputs borrow the facts that the outputs join.
            drop(inputs);
            for (name, mut fact) in proto.output.iter().zip(outputs) {
                fact.guessed |= doubt;
                if !name.is_empty() {
                    facts.insert(name.as_str(), fact.bounded());
                }
            }
        }
        Facts { facts, symbols, opset }
    }

    pub fn get(&self, name: &str) -> Option<&Fact> {
        self.facts.get(name)
    }

    pub fn opset(&self) -> i64 {
        self.opset
    }

    /// The name of the graph-input dimension that `dim` is, if it is exactly one.
    pub fn dim_param(&self, dim: &Dim) -> Option<&str> {
        let symbol = dim.as_symbol()?;
        self.symbols.names.iter().find(|(_, id)| **id == symbol).map(|(name, _)| *name)
    }

    /// The axes of a Reduce*/Squeeze/Unsqueeze node: input 1 when present (newer opsets), else the
    /// `axes` attribute (possibly empty). `None` when input 1 is not a known constant.
    pub fn axes(&self, node: &NodeProto) -> Option<Vec<i64>> {
        axes(node, || self.get(node.input.get(1)?))
    }
}

/// The axes of `node` (see [`Facts::axes`]), `operand` giving the fact of input 1.
fn axes<'f>(node: &NodeProto, operand: impl FnOnce() -> Option<&'f Fact>) -> Option<Vec<i64>> {
    match node.input.get(1).filter(|n| !n.is_empty()) {
        Some(_) => operand()?.ints(),
        None => Some(attr_ints(node, "axes").to_vec()),
    }
}

/// `axis` in `[0, rank)`, counting negative values from the end.
pub(crate) fn normalize_axis(axis: i64, rank: usize) -> Option<usize> {
    let rank = i64::try_from(rank).ok()?;
    let axis = if axis < 0 { axis.checked_add(rank)? } else { axis };
    (0..rank).contains(&axis).then(|| usize::try_from(axis).ok()).flatten()
}

/// Whether a box of `sizes` holds at most [`VALUE_LIMIT`] elements, empty axes counting as one so
/// that the other axes are bounded too (an array's non-empty axes must fit an isize).
fn small(sizes: &[usize]) -> bool {
    sizes.iter().try_fold(1usize, |n, &s| n.checked_mul(s.max(1))).is_some_and(|n| n <= VALUE_LIMIT)
}

/// The sizes of `dims` when they are all known numbers.
fn sizes(dims: &[Dim]) -> Option<Vec<usize>> {
    dims.iter().map(|d| usize::try_from(d.value()?).ok()).collect()
}

/// `values` reshaped to `dims`, when they are all known.
fn reshape_value(values: &ArrayD<Dim>, dims: &[Dim]) -> Option<ArrayD<Dim>> {
    values.as_standard_layout().into_owned().into_shape_with_order(IxDyn(&sizes(dims)?)).ok()
}

#[cfg(test)]
mod testing {
    use super::*;
    use crate::onnx::builder::tensor_info;
    use crate::onnx::proto::tensor_shape_proto::Dimension;
    use crate::onnx::tensor::from_i64;

    pub fn node(op: &str, inputs: &[&str], attributes: Vec<crate::onnx::proto::AttributeProto>) -> NodeProto {
        let input = inputs.iter().map(|s| s.to_string()).collect();
        NodeProto { op_type: Some(op.into()), input, output: vec!["y".into()], attribute: attributes, ..Default::default() }
    }

    /// The fact of `y`, computed by `node` from the int64 constants `constants` and the int64
    /// input `x` of dimensions `x`.
    pub fn fact_of(constants: &[(&str, &[i64])], x: &[i64], node: NodeProto) -> Fact {
        let initializer = constants.iter().map(|(name, values)| from_i64(name, &[values.len()], values)).collect();
        let dims = x.iter().map(|&d| Dimension { value: Some(DimValue::DimValue(d)), denotation: None }).collect();
        let input = vec![tensor_info("x", INT64, dims)];
        let graph = GraphProto { node: vec![node], initializer, input, ..Default::default() };
        let facts = Facts::infer(&graph, &GraphIndex::new(&graph).unwrap(), 17);
        facts.get("y").unwrap().clone()
    }

    /// The known sizes of a fact's shape.
    pub fn dims(fact: &Fact) -> Option<Vec<Option<i64>>> {
        fact.shape.as_ref().map(|s| s.iter().map(Dim::value).collect())
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::cast_possible_truncation, clippy::indexing_slicing)]
mod tests {
    use super::testing::{fact_of, node};
    use super::*;

    #[test]
    fn broadcasting_keeps_what_any_operand_knows() {
        let mut symbols = Symbols::default();
        let (n, c, d) = (symbols.fresh(), symbols.fresh(), symbols.fresh());
        let known = |v: i64| Dim::known(v);
        // An unknown channel count added to 64 channels is 64 (or the model is invalid).
        let sum = symbols.broadcast(&[&[n.clone(), c.clone()], &[n.clone(), known(64)]]);
        assert_eq!(sum, vec![n.clone(), known(64)]);
        assert_eq!(symbols.broadcast(&[&[known(1), c.clone()], &[known(7), known(1)]]), vec![known(7), c.clone()]);
        // Two different symbols, or two different sizes: nothing is known.
        let unknown = symbols.broadcast(&[std::slice::from_ref(&c), std::slice::from_ref(&d)]);
        assert!(unknown[0].value().is_none() && unknown[0] != c && unknown[0] != d);
        assert!(symbols.broadcast(&[&[known(3)], &[known(5)]])[0].value().is_none());
    }

    #[test]
    fn a_node_of_another_domain_has_no_rule() {
        let foreign = NodeProto { domain: Some("fuzz.custom".into()), ..node("Reshape", &["data", "x"], vec![]) };
        let fact = fact_of(&[("data", &[1, 2])], &[3], foreign);
        assert!(fact.shape.is_none() && fact.guessed && fact.dtype == INT64);
    }

    #[test]
    fn infers_resnet20_shapes_with_a_dynamic_batch() {
        let path = crate::test_support::fixture_model("resnet20_cifar10");
        let model = crate::onnx::load_model(&path).unwrap();
        let graph = model.graph.as_ref().unwrap();
        let index = GraphIndex::new(graph).unwrap();
        let facts = Facts::infer(graph, &index, crate::onnx::default_opset(&model));
        let batch = facts.get("input").unwrap().shape.clone().unwrap()[0].clone();
        assert_eq!(batch.value(), None);
        for node in &graph.node {
            for output in &node.output {
                let shape = facts.get(output).and_then(|f| f.shape.clone());
                assert!(shape.is_some(), "no shape for {output} ({:?})", node.op_type);
            }
        }
        let logits = facts.get("logits").unwrap().shape.clone().unwrap();
        assert_eq!(logits, vec![batch.clone(), Dim::known(10)]);
        // The option-A shortcut: Slice with step 2, then Pad computed by a shape subgraph.
        let pad = graph.node.iter().find(|n| n.op_type.as_deref() == Some("Pad")).unwrap();
        let padded = facts.get(&pad.output[0]).unwrap().shape.clone().unwrap();
        assert_eq!(padded, vec![batch, Dim::known(32), Dim::known(16), Dim::known(16)]);
    }
}
