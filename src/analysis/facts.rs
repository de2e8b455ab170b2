//! Static element types and shapes of a graph's values, with symbolic dimensions.
//!
//! Backward rules need ranks, spatial sizes and which axes broadcast, while the batch size stays
//! dynamic. A dimension is a monomial `coef · s₁ · s₂ …` over symbols (the graph inputs' named
//! dimensions, and a fresh symbol for anything that cannot be derived), so that `Flatten` of
//! `[N, 64, 1, 1]` followed by `Reshape [N, -1]` still gives `[N, 64]`. Small integer tensors (shape
//! subgraphs: Shape, Gather, Concat, Slice, Cast, …) are evaluated with the same symbolic elements,
//! so that Reshape targets and Pad amounts computed by a subgraph are known. Inference is
//! best-effort: what cannot be derived stays unknown, and a rule that needs it reports an error.

use std::collections::HashMap;

use ndarray::{ArrayD, Axis, IxDyn, Slice};

use super::geometry::{SliceAxis, Window};
use crate::onnx::graph::{attr_int, attr_ints, attribute, GraphIndex};
use crate::onnx::proto::tensor_proto::DataType;
use crate::onnx::proto::{type_proto, GraphProto, NodeProto, TensorProto};
use crate::onnx::tensor::to_tensor;
use crate::tensor::Tensor;

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

/// A dimension: `coef` times the product of `symbols` (sorted, with repetition).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub(crate) struct Dim {
    coef: i64,
    symbols: Vec<u32>,
}

impl Dim {
    pub fn known(value: i64) -> Dim {
        Dim { coef: value, symbols: Vec::new() }
    }

    fn symbol(id: u32) -> Dim {
        Dim { coef: 1, symbols: vec![id] }
    }

    /// The value when it does not depend on a symbol.
    pub fn value(&self) -> Option<i64> {
        self.symbols.is_empty().then_some(self.coef)
    }

    fn normalized(coef: i64, symbols: Vec<u32>) -> Dim {
        if coef == 0 {
            Dim::known(0)
        } else {
            Dim { coef, symbols }
        }
    }

    fn mul(&self, other: &Dim) -> Option<Dim> {
        let mut symbols = [self.symbols.as_slice(), other.symbols.as_slice()].concat();
        symbols.sort_unstable();
        Some(Dim::normalized(self.coef.checked_mul(other.coef)?, symbols))
    }

    /// Exact division of monomials (integer truncation when both are known, as ONNX's Div).
    fn div(&self, other: &Dim) -> Option<Dim> {
        if other.coef == 0 {
            return None;
        }
        if self.symbols.is_empty() && other.symbols.is_empty() {
            return Some(Dim::known(self.coef.checked_div(other.coef)?));
        }
        if self.coef.checked_rem(other.coef)? != 0 {
            return None;
        }
        let mut symbols = self.symbols.clone();
        for symbol in &other.symbols {
            let at = symbols.iter().position(|s| s == symbol)?;
            symbols.remove(at);
        }
        Some(Dim::normalized(self.coef.checked_div(other.coef)?, symbols))
    }

    fn add(&self, other: &Dim) -> Option<Dim> {
        if self.coef == 0 {
            return Some(other.clone());
        }
        if other.coef == 0 {
            return Some(self.clone());
        }
        if self.symbols != other.symbols {
            return None;
        }
        Some(Dim::normalized(self.coef.checked_add(other.coef)?, self.symbols.clone()))
    }

    fn neg(&self) -> Option<Dim> {
        Some(Dim::normalized(self.coef.checked_neg()?, self.symbols.clone()))
    }
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
        let shape = value.shape().iter().map(|&d| Dim::known(d as i64)).collect();
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

/// Facts about every value of one graph.
pub(crate) struct Facts {
    facts: HashMap<String, Fact>,
    symbols: HashMap<String, u32>,
    next_symbol: u32,
    opset: i64,
}

impl Facts {
    /// Infers the facts of every value of `graph`, whose default-domain opset is `opset`.
    pub fn infer(graph: &GraphProto, index: &GraphIndex, opset: i64) -> Facts {
        let mut facts = Facts { facts: HashMap::new(), symbols: HashMap::new(), next_symbol: 0, opset };
        for input in &graph.input {
            let Some(name) = input.name.clone() else { continue };
            let Some(type_proto::Value::TensorType(tensor)) = input.r#type.as_ref().and_then(|t| t.value.as_ref())
            else {
                continue;
            };
            let shape = tensor
                .shape
                .as_ref()
                .map(|shape| shape.dim.iter().map(|d| facts.declared_dim(d.value.as_ref())).collect());
            facts.facts.insert(name, Fact::of(tensor.elem_type.unwrap_or(0), shape).bounded());
        }
        for tensor in &graph.initializer {
            if let Some(name) = &tensor.name {
                let overridable = graph.input.iter().any(|i| i.name.as_ref() == Some(name));
                let mut fact = tensor_fact(tensor);
                if overridable {
                    fact.value = None;
                }
                facts.facts.insert(name.clone(), fact.bounded());
            }
        }
        for &position in index.topological_order() {
            let node = &graph.node[position];
            let inputs: Vec<Option<Fact>> = node
                .input
                .iter()
                .map(|name| (!name.is_empty()).then(|| facts.facts.get(name).cloned()).flatten())
                .collect();
            let doubt = inputs.iter().flatten().any(|f| f.guessed);
            let outputs = facts.infer_node(node, &inputs);
            for (name, mut fact) in node.output.iter().zip(outputs) {
                fact.guessed |= doubt;
                if !name.is_empty() {
                    facts.facts.insert(name.clone(), fact.bounded());
                }
            }
        }
        facts
    }

    pub fn get(&self, name: &str) -> Option<&Fact> {
        self.facts.get(name)
    }

    pub fn opset(&self) -> i64 {
        self.opset
    }

    /// The name of the graph-input dimension that `dim` is, if it is exactly one.
    pub fn dim_param(&self, dim: &Dim) -> Option<&str> {
        match (dim.coef, dim.symbols.as_slice()) {
            (1, [symbol]) => self.symbols.iter().find(|(_, id)| *id == symbol).map(|(name, _)| name.as_str()),
            _ => None,
        }
    }

    fn declared_dim(&mut self, value: Option<&crate::onnx::proto::tensor_shape_proto::dimension::Value>) -> Dim {
        use crate::onnx::proto::tensor_shape_proto::dimension::Value;
        match value {
            Some(Value::DimValue(v)) if *v >= 0 => Dim::known(*v),
            Some(Value::DimParam(name)) if !name.is_empty() => {
                let next = self.next_symbol;
                let id = *self.symbols.entry(name.clone()).or_insert(next);
                if id == next {
                    self.next_symbol += 1;
                }
                Dim::symbol(id)
            }
            _ => self.fresh(),
        }
    }

    fn fresh(&mut self) -> Dim {
        self.next_symbol += 1;
        Dim::symbol(self.next_symbol - 1)
    }

    /// The axes of a Reduce*/Squeeze/Unsqueeze node: input 1 when present (newer opsets), else the
    /// `axes` attribute (possibly empty). `None` when input 1 is not a known constant.
    pub fn axes(&self, node: &NodeProto) -> Option<Vec<i64>> {
        match node.input.get(1).filter(|n| !n.is_empty()) {
            Some(name) => self.get(name)?.ints(),
            None => Some(attr_ints(node, "axes").to_vec()),
        }
    }

    fn infer_node(&mut self, node: &NodeProto, inputs: &[Option<Fact>]) -> Vec<Fact> {
        // A node of another domain only shares the op type's name, not its meaning.
        let default_domain = node.domain.as_deref().is_none_or(|d| d.is_empty() || d == "ai.onnx");
        let op = node.op_type.as_deref().filter(|_| default_domain).unwrap_or("");
        let dtype_of = |i: usize| inputs.get(i).and_then(|f| f.as_ref()).map_or(0, |f| f.dtype);
        let shape_of = |i: usize| inputs.get(i).and_then(|f| f.as_ref()).and_then(|f| f.shape.clone());
        let fact_of = |i: usize| inputs.get(i).and_then(|f| f.as_ref());
        let count = node.output.len();
        let first = match op {
            "Constant" => constant_fact(node),
            "Identity"
            | "Dropout"
            | "Relu"
            | "Sigmoid"
            | "Tanh"
            | "Exp"
            | "Log"
            | "Neg"
            | "Abs"
            | "Sqrt"
            | "Reciprocal"
            | "Erf"
            | "Floor"
            | "Ceil"
            | "Round"
            | "Clip"
            | "LeakyRelu"
            | "HardSigmoid"
            | "HardSwish"
            | "Softmax"
            | "LogSoftmax"
            | "Elu"
            | "Selu"
            | "Softplus"
            | "Softsign"
            | "Gelu"
            | "Sign"
            | "BatchNormalization"
            | "LRN"
            | "InstanceNormalization"
            | "LayerNormalization"
            | "PRelu"
            | "ScatterND"
            | "ScatterElements" => {
                let value = match op {
                    "Identity" => fact_of(0).and_then(|f| f.value.clone()),
                    "Neg" => fact_of(0).and_then(|f| f.value.as_ref()).and_then(|v| map_values(v, Dim::neg)),
                    _ => None,
                };
                Fact { dtype: dtype_of(0), shape: shape_of(0), value, guessed: false }
            }
            "Cast" => {
                let to = attr_int(node, "to", 0) as i32;
                let value = fact_of(0).and_then(|f| f.value.clone()).filter(|_| to == INT64 || to == INT32);
                Fact { dtype: to, shape: shape_of(0), value, guessed: false }
            }
            "Not" | "IsNaN" | "IsInf" => Fact::of(BOOL, shape_of(0)),
            "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Mod" | "Max" | "Min" | "Sum" | "Mean" | "Equal" | "Less"
            | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" | "Xor" | "Where" => {
                self.broadcast_node(op, inputs)
            }
            "Shape" => match shape_of(0) {
                Some(shape) => {
                    let rank = shape.len() as i64;
                    let clamp = |v: i64| (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize;
                    let (start, end) = (clamp(attr_int(node, "start", 0)), clamp(attr_int(node, "end", rank)));
                    let dims = shape.get(start..end.max(start)).unwrap_or(&[]).to_vec();
                    Fact::with_value(INT64, ArrayD::from_shape_vec(IxDyn(&[dims.len()]), dims).unwrap_or_default())
                }
                None => Fact::of(INT64, Some(vec![self.fresh()])),
            },
            "Size" => match shape_of(0).and_then(|s| product(&s)) {
                Some(size) => Fact::with_value(INT64, ArrayD::from_elem(IxDyn(&[]), size)),
                None => Fact::of(INT64, Some(Vec::new())),
            },
            "Gather" => self.gather(node, inputs),
            // The output shape needs only the indices' shape: their leading axes, then the data
            // axes after the batch axes and the k indexed ones (k: the indices' last axis).
            "GatherND" => {
                let batch = usize::try_from(attr_int(node, "batch_dims", 0)).ok();
                let shape = match (shape_of(0), shape_of(1), batch) {
                    (Some(data), Some(indices), Some(batch)) => indices.split_last().and_then(|(k, leading)| {
                        let k = usize::try_from(k.value()?).ok()?;
                        let rest = data.get(batch.checked_add(k)?..)?;
                        Some([leading, rest].concat())
                    }),
                    _ => None,
                };
                Fact::of(dtype_of(0), shape)
            }
            "GatherElements" => Fact::of(dtype_of(0), shape_of(1)),
            "Unsqueeze" | "Squeeze" => self.squeeze(node, op == "Unsqueeze", inputs),
            "Concat" => self.concat(node, inputs),
            "Reshape" => self.reshape(node, inputs),
            "Flatten" => match shape_of(0) {
                Some(shape) => {
                    let axis = normalize_axis(attr_int(node, "axis", 1), shape.len() + 1).unwrap_or(1);
                    let (outer, inner) = shape.split_at(axis.min(shape.len()));
                    let dims = [product(outer), product(inner)].map(|d| d.unwrap_or_else(|| self.fresh()));
                    Fact::of(dtype_of(0), Some(dims.to_vec()))
                }
                None => Fact::of(dtype_of(0), None),
            },
            "Transpose" => match fact_of(0) {
                Some(Fact { dtype, shape: Some(shape), value, .. }) => {
                    let perm = transpose_perm(node, shape.len());
                    let mut sorted = perm.clone();
                    sorted.sort_unstable();
                    // Anything but a reordering of the axes (refused by validation, but only for
                    // checked models) transposes nothing the facts can follow.
                    if sorted.into_iter().eq(0..shape.len()) {
                        let shape = perm.iter().map(|&p| shape[p].clone()).collect();
                        let value = value
                            .as_ref()
                            .filter(|v| v.ndim() == perm.len())
                            .map(|v| v.view().permuted_axes(IxDyn(&perm)).as_standard_layout().into_owned());
                        Fact { dtype: *dtype, shape: Some(shape), value, guessed: false }
                    } else {
                        Fact::of(*dtype, None)
                    }
                }
                Some(fact) => Fact::of(fact.dtype, None),
                None => Fact::default(),
            },
            "Slice" => self.slice(node, inputs),
            "Pad" => self.pad(node, inputs),
            "ConstantOfShape" => {
                let tensor = attribute(node, "value").and_then(|a| a.t.as_ref());
                let dtype = tensor.and_then(|t| t.data_type).unwrap_or(FLOAT);
                match fact_of(0).and_then(|f| f.value.clone()) {
                    Some(dims) => {
                        let shape: Vec<Dim> = dims.iter().cloned().collect();
                        let filled =
                            tensor.map(tensor_fact).and_then(|f| f.value).and_then(|v| v.iter().next().cloned());
                        let sizes: Option<Vec<usize>> =
                            shape.iter().map(|d| usize::try_from(d.value()?).ok()).collect();
                        match (filled, sizes) {
                            (Some(element), Some(sizes)) if small(&sizes) => {
                                Fact::with_value(dtype, ArrayD::from_elem(IxDyn(&sizes), element))
                            }
                            _ => Fact::of(dtype, Some(shape)),
                        }
                    }
                    None => Fact::of(dtype, None),
                }
            }
            "Range" => {
                let scalar = |i: usize| fact_of(i).and_then(Fact::ints).and_then(|v| v.first().copied());
                match (scalar(0), scalar(1), scalar(2)) {
                    (Some(start), Some(limit), Some(delta)) if delta != 0 => {
                        // ⌈(limit − start) / delta⌉ in i128, where the span of two i64 values fits.
                        let (span, step) = (i128::from(limit) - i128::from(start), i128::from(delta));
                        let count = if span * step.signum() <= 0 { 0 } else { (span.abs() - 1) / step.abs() + 1 };
                        match usize::try_from(count).ok().filter(|&n| n <= VALUE_LIMIT) {
                            Some(n) => {
                                // Exact despite the wrapping: every element lies between start and limit.
                                let values: Vec<Dim> =
                                    (0..n as i64).map(|i| Dim::known(start.wrapping_add(i.wrapping_mul(delta)))).collect();
                                Fact::with_value(dtype_of(0), ArrayD::from_shape_vec(IxDyn(&[n]), values).unwrap_or_default())
                            }
                            None => {
                                let length = i64::try_from(count).map_or_else(|_| self.fresh(), Dim::known);
                                Fact::of(dtype_of(0), Some(vec![length]))
                            }
                        }
                    }
                    _ => Fact::of(dtype_of(0), Some(vec![self.fresh()])),
                }
            }
            "Expand" => {
                let target = fact_of(1).and_then(|f| f.value.as_ref()).map(|v| v.iter().cloned().collect::<Vec<_>>());
                let shape = match (shape_of(0), target) {
                    (Some(shape), Some(target)) => Some(self.broadcast(&[shape, target])),
                    _ => None,
                };
                Fact::of(dtype_of(0), shape)
            }
            "Tile" => {
                let shape = match (shape_of(0), fact_of(1).and_then(Fact::ints)) {
                    (Some(shape), Some(repeats)) if repeats.len() == shape.len() => {
                        shape.iter().zip(repeats).map(|(d, r)| d.mul(&Dim::known(r))).collect::<Option<Vec<_>>>()
                    }
                    _ => None,
                };
                Fact::of(dtype_of(0), shape)
            }
            "Conv" | "MaxPool" | "AveragePool" | "LpPool" => {
                let kernel = match op {
                    "Conv" if attr_ints(node, "kernel_shape").is_empty() => shape_of(1)
                        .and_then(|w| w.get(2..).map(|k| k.iter().map(Dim::value).collect::<Option<Vec<_>>>()))
                        .flatten(),
                    _ => Some(attr_ints(node, "kernel_shape").to_vec()),
                };
                let channels = if op == "Conv" { shape_of(1).and_then(|w| w.first().cloned()) } else { None };
                match shape_of(0) {
                    Some(shape) if shape.len() >= 2 => {
                        let spatial: Option<Vec<i64>> = shape[2..].iter().map(Dim::value).collect();
                        let window = spatial.zip(kernel).and_then(|(s, k)| Window::new(node, &s, &k).ok());
                        // A pool keeps the channels; a Conv has one per filter, unknown without its weight.
                        let channels = match channels {
                            Some(filters) => filters,
                            None if op == "Conv" => self.fresh(),
                            None => shape[1].clone(),
                        };
                        let mut dims = vec![shape[0].clone(), channels];
                        for axis in 0..shape.len() - 2 {
                            dims.push(window.as_ref().map_or_else(|| self.fresh(), |w| Dim::known(w.output[axis])));
                        }
                        Fact::of(dtype_of(0), Some(dims))
                    }
                    _ => Fact::of(dtype_of(0), None),
                }
            }
            "GlobalAveragePool" | "GlobalMaxPool" => {
                let shape = shape_of(0).filter(|s| s.len() >= 2).map(|s| {
                    let mut dims = s[..2].to_vec();
                    dims.resize(s.len(), Dim::known(1));
                    dims
                });
                Fact::of(dtype_of(0), shape)
            }
            "Gemm" => {
                let pick = |shape: Option<Vec<Dim>>, transposed: bool, row: bool| {
                    shape.filter(|s| s.len() == 2).map(|s| s[usize::from(transposed == row)].clone())
                };
                let rows = pick(shape_of(0), attr_int(node, "transA", 0) != 0, true);
                let cols = pick(shape_of(1), attr_int(node, "transB", 0) != 0, false);
                let shape = rows.zip(cols).map(|(m, n)| vec![m, n]);
                Fact::of(dtype_of(0), shape)
            }
            "MatMul" => {
                let shape = match (shape_of(0), shape_of(1)) {
                    (Some(a), Some(b)) if !a.is_empty() && !b.is_empty() => {
                        let a2 = if a.len() == 1 { vec![Dim::known(1), a[0].clone()] } else { a.clone() };
                        let b2 = if b.len() == 1 { vec![b[0].clone(), Dim::known(1)] } else { b.clone() };
                        let batch = self.broadcast(&[a2[..a2.len() - 2].to_vec(), b2[..b2.len() - 2].to_vec()]);
                        let mut dims = batch;
                        if a.len() > 1 {
                            dims.push(a2[a2.len() - 2].clone());
                        }
                        if b.len() > 1 {
                            dims.push(b2[b2.len() - 1].clone());
                        }
                        Some(dims)
                    }
                    _ => None,
                };
                Fact::of(dtype_of(0), shape)
            }
            "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL1" | "ReduceL2"
            | "ReduceLogSum" | "ReduceLogSumExp" | "ReduceSumSquare" | "ArgMax" | "ArgMin" => {
                let arg = op.starts_with("Arg");
                let axes = if arg { Some(vec![attr_int(node, "axis", 0)]) } else { self.axes(node) };
                let keep = attr_int(node, "keepdims", 1) != 0;
                let noop = !arg && attr_int(node, "noop_with_empty_axes", 0) != 0;
                let dtype = if arg { INT64 } else { dtype_of(0) };
                let shape = shape_of(0).zip(axes).and_then(|(shape, axes)| {
                    let axes = reduced_axes(&axes, shape.len(), noop)?;
                    let dims = shape
                        .iter()
                        .enumerate()
                        .filter_map(|(i, d)| match (axes.contains(&i), keep) {
                            (false, _) => Some(d.clone()),
                            (true, true) => Some(Dim::known(1)),
                            (true, false) => None,
                        })
                        .collect();
                    Some(dims)
                });
                Fact::of(dtype, shape)
            }
            "Split" => return self.split(node, inputs),
            _ => Fact { guessed: true, ..Fact::of(dtype_of(0), None) },
        };
        let extra = match op {
            "MaxPool" => Fact::of(INT64, first.shape.clone()),
            "Dropout" => Fact::of(BOOL, first.shape.clone()),
            _ => Fact::default(),
        };
        let mut outputs = vec![first];
        outputs.resize(count.max(1), extra);
        outputs
    }

    /// Numpy broadcasting of several shapes; a dimension that cannot be decided becomes fresh.
    fn broadcast(&mut self, shapes: &[Vec<Dim>]) -> Vec<Dim> {
        let rank = shapes.iter().map(Vec::len).max().unwrap_or(0);
        (0..rank)
            .map(|axis| {
                let dims: Vec<&Dim> = shapes
                    .iter()
                    .filter_map(|s| (axis + s.len()).checked_sub(rank).map(|i| &s[i]))
                    .filter(|d| d.value() != Some(1))
                    .collect();
                match dims.first() {
                    None => Dim::known(1),
                    Some(first) if dims.iter().all(|d| d == first) => (*first).clone(),
                    Some(_) => self.fresh(),
                }
            })
            .collect()
    }

    fn broadcast_node(&mut self, op: &str, inputs: &[Option<Fact>]) -> Fact {
        let dtype = match op {
            "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" | "Xor" => BOOL,
            "Where" => inputs.get(1).and_then(|f| f.as_ref()).map_or(0, |f| f.dtype),
            _ => inputs.first().and_then(|f| f.as_ref()).map_or(0, |f| f.dtype),
        };
        let shapes: Option<Vec<Vec<Dim>>> = inputs.iter().map(|f| f.as_ref()?.shape.clone()).collect();
        let Some(shapes) = shapes else { return Fact::of(dtype, None) };
        let shape = self.broadcast(&shapes);
        let combine: Option<fn(&Dim, &Dim) -> Option<Dim>> = match op {
            "Add" => Some(Dim::add),
            "Sub" => Some(|a, b| a.add(&b.neg()?)),
            "Mul" => Some(Dim::mul),
            "Div" => Some(Dim::div),
            _ => None,
        };
        let value = match (combine, inputs) {
            (Some(combine), [Some(a), Some(b)]) => a.value.as_ref().zip(b.value.as_ref()).and_then(|(a, b)| {
                let sizes: Vec<usize> =
                    shape.iter().map(|d| usize::try_from(d.value()?).ok()).collect::<Option<_>>()?;
                // Two small operands may still broadcast to a large result.
                if !small(&sizes) {
                    return None;
                }
                let (a, b) = (a.broadcast(IxDyn(&sizes))?, b.broadcast(IxDyn(&sizes))?);
                let values: Option<Vec<Dim>> = a.iter().zip(b.iter()).map(|(x, y)| combine(x, y)).collect();
                ArrayD::from_shape_vec(IxDyn(&sizes), values?).ok()
            }),
            _ => None,
        };
        Fact { dtype, shape: Some(shape), value, guessed: false }
    }

    fn gather(&mut self, node: &NodeProto, inputs: &[Option<Fact>]) -> Fact {
        let (Some(Some(data)), Some(Some(indices))) = (inputs.first(), inputs.get(1)) else { return Fact::default() };
        let (Some(shape), Some(index_shape)) = (&data.shape, &indices.shape) else { return Fact::of(data.dtype, None) };
        let Some(axis) = normalize_axis(attr_int(node, "axis", 0), shape.len()) else {
            return Fact::of(data.dtype, None);
        };
        let dims: Vec<Dim> = [&shape[..axis], index_shape.as_slice(), &shape[axis + 1..]].concat();
        let value = data.value.as_ref().zip(indices.ints()).and_then(|(values, picks)| {
            // Many picks of a small value may still make a large one.
            let sizes: Vec<usize> = dims.iter().map(|d| usize::try_from(d.value()?).ok()).collect::<Option<_>>()?;
            if !small(&sizes) {
                return None;
            }
            let size = *values.shape().get(axis)? as i64;
            let picks: Vec<usize> = picks
                .iter()
                .map(|&i| usize::try_from(if i < 0 { i + size } else { i }).ok().filter(|&i| (i as i64) < size))
                .collect::<Option<_>>()?;
            let taken = values.select(Axis(axis), &picks);
            taken.as_standard_layout().into_owned().into_shape_with_order(IxDyn(&sizes)).ok()
        });
        Fact { dtype: data.dtype, shape: Some(dims), value, guessed: false }
    }

    fn squeeze(&mut self, node: &NodeProto, unsqueeze: bool, inputs: &[Option<Fact>]) -> Fact {
        let Some(Some(data)) = inputs.first() else { return Fact::default() };
        let Some(shape) = &data.shape else { return Fact::of(data.dtype, None) };
        let Some(axes) = self.axes(node) else { return Fact::of(data.dtype, None) };
        let dims: Option<Vec<Dim>> = if unsqueeze {
            let rank = shape.len() + axes.len();
            let axes: Option<Vec<usize>> = axes.iter().map(|&a| normalize_axis(a, rank)).collect();
            axes.map(|axes| {
                let mut rest = shape.iter();
                (0..rank)
                    .map(|i| if axes.contains(&i) { Dim::known(1) } else { rest.next().cloned().unwrap_or_default() })
                    .collect()
            })
        } else if axes.is_empty() {
            Some(shape.iter().filter(|d| d.value() != Some(1)).cloned().collect())
        } else {
            let axes: Option<Vec<usize>> = axes.iter().map(|&a| normalize_axis(a, shape.len())).collect();
            axes.map(|axes| {
                shape.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, d)| d.clone()).collect()
            })
        };
        let value = data.value.as_ref().zip(dims.as_ref()).and_then(|(v, dims)| reshape_value(v, dims));
        Fact { dtype: data.dtype, shape: dims, value, guessed: false }
    }

    fn concat(&mut self, node: &NodeProto, inputs: &[Option<Fact>]) -> Fact {
        let facts: Option<Vec<&Fact>> = inputs.iter().map(Option::as_ref).collect();
        let Some(facts) = facts.filter(|f| !f.is_empty()) else { return Fact::default() };
        let dtype = facts[0].dtype;
        let shapes: Option<Vec<&Vec<Dim>>> = facts.iter().map(|f| f.shape.as_ref()).collect();
        let Some(shapes) = shapes else { return Fact::of(dtype, None) };
        let rank = shapes[0].len();
        // ONNX concatenates values of one rank; values of several ranks have no known result.
        if shapes.iter().any(|s| s.len() != rank) {
            return Fact::of(dtype, None);
        }
        let Some(axis) = normalize_axis(attr_int(node, "axis", 0), rank) else {
            return Fact::of(dtype, None);
        };
        let mut dims = shapes[0].clone();
        dims[axis] = shapes.iter().try_fold(Dim::known(0), |sum, s| sum.add(&s[axis])).unwrap_or_else(|| self.fresh());
        let values: Option<Vec<_>> = facts.iter().map(|f| f.value.as_ref().map(|v| v.view())).collect();
        let value = values
            .filter(|v| v.iter().all(|v| v.ndim() == rank) && v.iter().map(|v| v.len()).sum::<usize>() <= VALUE_LIMIT)
            .and_then(|v| ndarray::concatenate(Axis(axis), &v).ok());
        Fact { dtype, shape: Some(dims), value, guessed: false }
    }

    fn reshape(&mut self, node: &NodeProto, inputs: &[Option<Fact>]) -> Fact {
        let Some(Some(data)) = inputs.first() else { return Fact::default() };
        let target = inputs.get(1).and_then(|f| f.as_ref()).and_then(|f| f.value.clone());
        let Some(target) = target else {
            // The target's length is the output's rank, whatever the model says it is.
            let rank = inputs.get(1).and_then(|f| f.as_ref()?.shape.as_ref()?.first()?.value());
            let rank = rank.and_then(|r| usize::try_from(r).ok()).filter(|&r| r <= MAX_RANK);
            let dims = rank.map(|r| (0..r).map(|_| self.fresh()).collect());
            return Fact::of(data.dtype, dims);
        };
        let allow_zero = attr_int(node, "allowzero", 0) != 0;
        let mut dims: Vec<Option<Dim>> = target
            .iter()
            .enumerate()
            .map(|(i, d)| match d.value() {
                Some(0) if !allow_zero => data.shape.as_ref().and_then(|s| s.get(i).cloned()),
                Some(-1) => None,
                _ => Some(d.clone()),
            })
            .collect();
        if let Some(missing) = target.iter().position(|d| d.value() == Some(-1)) {
            let known = dims.iter().flatten().try_fold(Dim::known(1), |p, d| p.mul(d));
            let total = data.shape.as_ref().and_then(|s| product(s));
            dims[missing] = total.zip(known).and_then(|(t, k)| t.div(&k));
        }
        let dims: Vec<Dim> = dims.into_iter().map(|d| d.unwrap_or_else(|| self.fresh())).collect();
        let value = data.value.as_ref().and_then(|v| reshape_value(v, &dims));
        Fact { dtype: data.dtype, shape: Some(dims), value, guessed: false }
    }

    fn slice(&mut self, node: &NodeProto, inputs: &[Option<Fact>]) -> Fact {
        let Some(Some(data)) = inputs.first() else { return Fact::default() };
        let Some(shape) = data.shape.clone() else { return Fact::of(data.dtype, None) };
        let Some(axes) = slice_axes(node, inputs, &shape) else {
            let dims = (0..shape.len()).map(|_| self.fresh()).collect();
            return Fact::of(data.dtype, Some(dims));
        };
        let mut dims = shape.clone();
        for axis in &axes {
            dims[axis.axis] = Dim::known(axis.len);
        }
        let value = data.value.as_ref().map(|v| {
            let mut view = v.view();
            for axis in &axes {
                // From the lowest to the highest index taken (a negative step walks it backwards):
                // an end past the axis would panic.
                let range = match axis.len {
                    0 => Slice::new(0, Some(0), 1),
                    len => {
                        let last = axis.start + (len - 1) * axis.step;
                        Slice::new(axis.start.min(last) as isize, Some(axis.start.max(last) as isize + 1), axis.step as isize)
                    }
                };
                view.slice_axis_inplace(Axis(axis.axis), range);
            }
            view.as_standard_layout().into_owned()
        });
        Fact { dtype: data.dtype, shape: Some(dims), value, guessed: false }
    }

    fn pad(&mut self, node: &NodeProto, inputs: &[Option<Fact>]) -> Fact {
        let Some(Some(data)) = inputs.first() else { return Fact::default() };
        let Some(shape) = data.shape.clone() else { return Fact::of(data.dtype, None) };
        let dims = match pad_amounts(node, inputs, shape.len()) {
            Some((begin, end)) => shape
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let padding = begin[i].checked_add(end[i]).map(Dim::known);
                    padding.and_then(|p| d.add(&p)).unwrap_or_else(|| self.fresh())
                })
                .collect(),
            None => (0..shape.len()).map(|_| self.fresh()).collect(),
        };
        Fact::of(data.dtype, Some(dims))
    }

    fn split(&mut self, node: &NodeProto, inputs: &[Option<Fact>]) -> Vec<Fact> {
        let count = node.output.len();
        let Some(Some(data)) = inputs.first() else { return vec![Fact::default(); count] };
        let dtype = data.dtype;
        let sizes = data.shape.as_ref().and_then(|shape| {
            let axis = normalize_axis(attr_int(node, "axis", 0), shape.len())?;
            Some((axis, split_sizes(node, inputs, shape[axis].value()?, count)?))
        });
        (0..count)
            .map(|i| match (&data.shape, &sizes) {
                (Some(shape), Some((axis, sizes))) => {
                    let mut dims = shape.clone();
                    dims[*axis] = Dim::known(sizes[i]);
                    Fact::of(dtype, Some(dims))
                }
                _ => Fact::of(dtype, None),
            })
            .collect()
    }
}

/// The normalised ranges of a Slice node over a value of shape `shape` (inputs since opset 10; the
/// attribute form of older opsets too). Axes left whole are omitted.
pub(crate) fn slice_axes(node: &NodeProto, inputs: &[Option<Fact>], shape: &[Dim]) -> Option<Vec<SliceAxis>> {
    let operand = |i: usize| inputs.get(i).and_then(|f| f.as_ref()).and_then(Fact::ints);
    let (starts, ends, axes, steps) = if node.input.len() >= 3 {
        let starts = operand(1)?;
        let axes = if node.input.get(3).is_some_and(|n| !n.is_empty()) {
            operand(3)?
        } else {
            (0..starts.len() as i64).collect()
        };
        let steps = if node.input.get(4).is_some_and(|n| !n.is_empty()) { operand(4)? } else { vec![1; starts.len()] };
        (starts, operand(2)?, axes, steps)
    } else {
        let starts = attr_ints(node, "starts").to_vec();
        let axes = match attr_ints(node, "axes") {
            [] => (0..starts.len() as i64).collect(),
            axes => axes.to_vec(),
        };
        let steps = vec![1; starts.len()];
        (starts, attr_ints(node, "ends").to_vec(), axes, steps)
    };
    if [ends.len(), axes.len(), steps.len()].iter().any(|&l| l != starts.len()) {
        return None;
    }
    let (mut ranges, mut seen) = (Vec::new(), Vec::new());
    for i in 0..starts.len() {
        let axis = normalize_axis(axes[i], shape.len())?;
        // ONNX forbids repeated axes: a second range would index the first one's result.
        if seen.contains(&axis) {
            return None;
        }
        seen.push(axis);
        match shape[axis].value() {
            Some(size) => {
                let range = SliceAxis::new(axis, size, starts[i], ends[i], steps[i]).ok()?;
                if !range.is_identity(size) {
                    ranges.push(range);
                }
            }
            // A dynamic axis can only be taken whole.
            None if starts[i] == 0 && steps[i] == 1 && ends[i] >= i64::from(i32::MAX) => {}
            None => return None,
        }
    }
    Some(ranges)
}

/// The pads of a Pad node as (before, after) per axis: the `pads` input (opset 11+, with the
/// optional `axes` input of opset 18) or attribute.
pub(crate) fn pad_amounts(node: &NodeProto, inputs: &[Option<Fact>], rank: usize) -> Option<(Vec<i64>, Vec<i64>)> {
    let operand = |i: usize| inputs.get(i).and_then(|f| f.as_ref()).and_then(Fact::ints);
    let pads = if node.input.len() >= 2 { operand(1)? } else { attr_ints(node, "pads").to_vec() };
    let axes: Vec<usize> = match node.input.get(3).filter(|n| !n.is_empty()) {
        Some(_) => operand(3)?.iter().map(|&a| normalize_axis(a, rank)).collect::<Option<_>>()?,
        None => (0..rank).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return None;
    }
    let (mut begin, mut end) = (vec![0; rank], vec![0; rank]);
    for (i, &axis) in axes.iter().enumerate() {
        begin[axis] = pads[i];
        end[axis] = pads[i + axes.len()];
    }
    Some((begin, end))
}

/// The sizes of a Split node's outputs along an axis of `size` elements.
fn split_sizes(node: &NodeProto, inputs: &[Option<Fact>], size: i64, count: usize) -> Option<Vec<i64>> {
    let given = match inputs.get(1).and_then(|f| f.as_ref()) {
        Some(fact) => Some(fact.ints()?),
        None => Some(attr_ints(node, "split").to_vec()).filter(|s| !s.is_empty()),
    };
    if size < 0 {
        return None;
    }
    match given {
        Some(sizes) => {
            let total = sizes.iter().try_fold(0i64, |sum, &s| sum.checked_add(s).filter(|_| s >= 0));
            (sizes.len() == count && total == Some(size)).then_some(sizes)
        }
        None => {
            // ⌈size / count⌉, written so that a size near i64::MAX does not overflow.
            let parts = count.max(1) as i64;
            let chunk = if size == 0 { 0 } else { (size - 1) / parts + 1 };
            Some((0..count as i64).map(|i| (size - i.saturating_mul(chunk)).clamp(0, chunk)).collect())
        }
    }
}

/// The axes a Reduce* node reduces, sorted; `None` when one is out of range.
pub(crate) fn reduced_axes(axes: &[i64], rank: usize, noop_with_empty_axes: bool) -> Option<Vec<usize>> {
    if axes.is_empty() {
        return Some(if noop_with_empty_axes { Vec::new() } else { (0..rank).collect() });
    }
    let mut axes: Vec<usize> = axes.iter().map(|&a| normalize_axis(a, rank)).collect::<Option<_>>()?;
    axes.sort_unstable();
    axes.dedup();
    Some(axes)
}

/// The permutation of a Transpose node (reversal by default).
pub(crate) fn transpose_perm(node: &NodeProto, rank: usize) -> Vec<usize> {
    match attr_ints(node, "perm") {
        [] => (0..rank).rev().collect(),
        perm => perm.iter().map(|&p| p.max(0) as usize).collect(),
    }
}

/// `axis` in `[0, rank)`, counting negative values from the end.
pub(crate) fn normalize_axis(axis: i64, rank: usize) -> Option<usize> {
    let rank = rank as i64;
    let axis = if axis < 0 { axis + rank } else { axis };
    (0..rank).contains(&axis).then_some(axis as usize)
}

/// Whether a box of `sizes` holds at most [`VALUE_LIMIT`] elements, empty axes counting as one so
/// that the other axes are bounded too (an array's non-empty axes must fit an isize).
fn small(sizes: &[usize]) -> bool {
    sizes.iter().try_fold(1usize, |n, &s| n.checked_mul(s.max(1))).is_some_and(|n| n <= VALUE_LIMIT)
}

fn product(dims: &[Dim]) -> Option<Dim> {
    dims.iter().try_fold(Dim::known(1), |p, d| p.mul(d))
}

fn map_values(values: &ArrayD<Dim>, f: fn(&Dim) -> Option<Dim>) -> Option<ArrayD<Dim>> {
    let mapped: Option<Vec<Dim>> = values.iter().map(f).collect();
    ArrayD::from_shape_vec(values.raw_dim(), mapped?).ok()
}

fn reshape_value(values: &ArrayD<Dim>, dims: &[Dim]) -> Option<ArrayD<Dim>> {
    let sizes: Vec<usize> = dims.iter().map(|d| usize::try_from(d.value()?).ok()).collect::<Option<_>>()?;
    values.as_standard_layout().into_owned().into_shape_with_order(IxDyn(&sizes)).ok()
}

/// The fact of a constant tensor; integer tensors up to the size limit keep their elements.
fn tensor_fact(tensor: &TensorProto) -> Fact {
    let dtype = tensor.data_type.unwrap_or(0);
    let shape = tensor.dims.iter().map(|&d| Dim::known(d)).collect();
    let small = crate::onnx::tensor::element_count_of(tensor) <= VALUE_LIMIT;
    if [INT64, INT32, BOOL].contains(&dtype) && small {
        match to_tensor(tensor) {
            Ok(Tensor::I64(values)) => return Fact::with_value(dtype, values.mapv(Dim::known)),
            Ok(Tensor::Bool(values)) => return Fact::with_value(dtype, values.mapv(|v| Dim::known(i64::from(v)))),
            _ => {}
        }
    }
    Fact::of(dtype, Some(shape))
}

/// The fact of a Constant node's output, whichever attribute holds the value.
fn constant_fact(node: &NodeProto) -> Fact {
    let Some(attr) = node.attribute.first() else { return Fact::default() };
    match attr.name.as_deref() {
        Some("value") => attr.t.as_ref().map(tensor_fact).unwrap_or_default(),
        Some("value_int") => Fact::with_value(INT64, ArrayD::from_elem(IxDyn(&[]), Dim::known(attr.i.unwrap_or(0)))),
        Some("value_ints") => {
            let values: Vec<Dim> = attr.ints.iter().map(|&v| Dim::known(v)).collect();
            Fact::with_value(INT64, ArrayD::from_shape_vec(IxDyn(&[values.len()]), values).unwrap_or_default())
        }
        Some("value_float") => Fact::of(FLOAT, Some(Vec::new())),
        Some("value_floats") => Fact::of(FLOAT, Some(vec![Dim::known(attr.floats.len() as i64)])),
        _ => Fact::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::builder::{int, ints, tensor_info};
    use crate::onnx::proto::tensor_shape_proto::{dimension::Value, Dimension};
    use crate::onnx::tensor::from_i64;

    fn node(op: &str, inputs: &[&str], attributes: Vec<crate::onnx::proto::AttributeProto>) -> NodeProto {
        let input = inputs.iter().map(|s| s.to_string()).collect();
        NodeProto { op_type: Some(op.into()), input, output: vec!["y".into()], attribute: attributes, ..Default::default() }
    }

    /// The fact of `y`, computed by `node` from the int64 constants `constants` and the int64
    /// input `x` of dimensions `x`.
    fn fact_of(constants: &[(&str, &[i64])], x: &[i64], node: NodeProto) -> Fact {
        let initializer = constants.iter().map(|(name, values)| from_i64(name, &[values.len()], values)).collect();
        let dims = x.iter().map(|&d| Dimension { value: Some(Value::DimValue(d)), denotation: None }).collect();
        let input = vec![tensor_info("x", INT64, dims)];
        let graph = GraphProto { node: vec![node], initializer, input, ..Default::default() };
        let facts = Facts::infer(&graph, &GraphIndex::new(&graph).unwrap(), 17);
        facts.get("y").unwrap().clone()
    }

    #[test]
    fn model_controlled_sizes_stay_unknown_or_bounded() {
        // A Reshape target of unknown elements and i64::MAX of them: no shape, no allocation.
        let huge = fact_of(&[("data", &[1, 2])], &[i64::MAX], node("Reshape", &["data", "x"], vec![]));
        assert!(huge.shape.is_none());
        let ranked = fact_of(&[("data", &[1, 2])], &[3], node("Reshape", &["data", "x"], vec![]));
        assert_eq!(ranked.shape.map(|s| s.len()), Some(3));
        // A Concat of a vector and a scalar has no shape.
        let mixed = fact_of(&[("vector", &[1, 2])], &[], node("Concat", &["vector", "x"], vec![int("axis", 0)]));
        assert!(mixed.shape.is_none() && mixed.value.is_none());
        let joined = fact_of(&[("a", &[1, 2]), ("b", &[3])], &[], node("Concat", &["a", "b"], vec![int("axis", 0)]));
        assert_eq!(joined.ints(), Some(vec![1, 2, 3]));
        // Ranges over the whole i64 line: in a few steps, and in 2⁶⁴ − 1 (no elements, no length).
        let range = |step: i64| {
            let bounds: [(&str, &[i64]); 3] = [("lo", &[i64::MIN]), ("hi", &[i64::MAX]), ("step", &[step])];
            fact_of(&bounds, &[], node("Range", &["lo", "hi", "step"], vec![]))
        };
        assert_eq!(range(1 << 62).ints(), Some(vec![i64::MIN, -(1 << 62), 0, 1 << 62]));
        let endless = range(1);
        assert!(endless.value.is_none() && endless.shape.unwrap()[0].value().is_none());
        // Split of an axis of i64::MAX elements into equal parts, and sizes that wrap around.
        let mut split = node("Split", &["x"], vec![]);
        split.output = vec!["y".into(), "z".into()];
        assert_eq!(fact_of(&[], &[i64::MAX], split.clone()).shape.unwrap()[0].value(), Some(1 << 62));
        split.input.push("sizes".into());
        assert!(fact_of(&[("sizes", &[-1, 5])], &[4], split.clone()).shape.is_none(), "a negative size");
        split.output.push("w".into());
        assert!(fact_of(&[("sizes", &[i64::MAX, i64::MAX, 3])], &[1], split).shape.is_none(), "sizes adding up to 2⁶⁴ + 1");
        // Padding by i64::MAX twice, a Transpose whose perm repeats an axis.
        let pad = fact_of(&[("pads", &[i64::MAX, i64::MAX])], &[2], node("Pad", &["x", "pads"], vec![]));
        assert!(pad.shape.unwrap()[0].value().is_none());
        let repeated = fact_of(&[("a", &[1, 2])], &[], node("Transpose", &["a"], vec![ints("perm", &[0, 0])]));
        assert!(repeated.shape.is_none());
        // A node of another domain is no Reshape.
        let foreign = NodeProto { domain: Some("fuzz.custom".into()), ..node("Reshape", &["data", "x"], vec![]) };
        assert!(fact_of(&[("data", &[1, 2])], &[3], foreign).shape.is_none());
    }

    #[test]
    fn gather_nd_keeps_the_axes_it_does_not_index() {
        let dims = |fact: Fact| fact.shape.map(|s| s.iter().map(|d| d.value()).collect::<Vec<_>>());
        let gathered = fact_of(&[("index", &[0, 1])], &[2, 3, 4, 5], node("GatherND", &["x", "index"], vec![]));
        assert_eq!(dims(gathered), Some(vec![Some(4), Some(5)]));
        let too_deep = fact_of(&[("index", &[0, 1, 2, 3])], &[2, 3], node("GatherND", &["x", "index"], vec![]));
        assert_eq!(dims(too_deep), None);
    }

    #[test]
    fn sliced_values_stay_inside_their_axis() {
        let slice = |data: &[i64], start: i64, end: i64, step: i64| {
            let constants: [(&str, &[i64]); 4] = [("data", data), ("starts", &[start]), ("ends", &[end]), ("steps", &[step])];
            fact_of(&constants, &[], node("Slice", &["data", "starts", "ends", "", "steps"], vec![])).ints()
        };
        let data = [10, 11, 12, 13, 14];
        assert_eq!(slice(&data, 0, 5, 2), Some(vec![10, 12, 14]), "the last step ends past the axis");
        assert_eq!(slice(&data, -1, i64::MIN, -2), Some(vec![14, 12, 10]));
        assert_eq!(slice(&data, 2, 4, -1), Some(vec![]), "a negative step from below the end");
        assert_eq!(slice(&data, 0, 5, i64::MIN), Some(vec![]));
        assert_eq!(slice(&[], -1, i64::MIN, -1), Some(vec![]), "a negative step on an empty axis");
        let twice: [(&str, &[i64]); 4] = [("data", &[10, 11, 12]), ("starts", &[0, 2]), ("ends", &[1, 3]), ("axes", &[0, 0])];
        let repeated = fact_of(&twice, &[], node("Slice", &["data", "starts", "ends", "axes"], vec![]));
        assert!(repeated.value.is_none(), "a repeated axis");
    }

    #[test]
    fn monomials_divide_out_the_batch() {
        let n = Dim::symbol(0);
        let total = n.mul(&Dim::known(64)).unwrap();
        assert_eq!(total.div(&n), Some(Dim::known(64)));
        assert_eq!(total.div(&Dim::known(64)), Some(n.clone()));
        assert_eq!(total.div(&Dim::known(7)), None);
        assert_eq!(n.add(&n), Some(Dim { coef: 2, symbols: vec![0] }));
        assert_eq!(n.add(&Dim::known(1)), None);
        assert_eq!(Dim::known(7).div(&Dim::known(2)), Some(Dim::known(3)));
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
