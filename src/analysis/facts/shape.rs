//! The operators of shape subgraphs, evaluated on small integer values: constants, Shape and
//! Size, ConstantOfShape, Range, Concat and the gathers (scatters keep their data's shape).

use ndarray::{ArrayD, Axis, IxDyn};

use super::dim::product;
use super::elementwise::same_shape;
use super::{normalize_axis, sizes, small, Dim, Fact, Node, Registry, Symbols, BOOL, FLOAT, INT32, INT64, VALUE_LIMIT};
use crate::onnx::graph::{attr_int, attribute};
use crate::onnx::proto::{NodeProto, TensorProto};
use crate::onnx::tensor::to_tensor;
use crate::tensor::Tensor;

pub(super) fn register(registry: &mut Registry) {
    registry.insert(&["Constant"], constant);
    registry.insert(&["Shape"], shape);
    registry.insert(&["Size"], size);
    registry.insert(&["ConstantOfShape"], constant_of_shape);
    registry.insert(&["Range"], range);
    registry.insert(&["Concat"], concat);
    registry.insert(&["Gather"], gather);
    registry.insert(&["GatherND"], gather_nd);
    registry.insert(&["GatherElements"], gather_elements);
    registry.insert(&["ScatterND", "ScatterElements"], same_shape);
}

/// The fact of a constant tensor; integer tensors up to the size limit keep their elements.
pub(super) fn tensor_fact(tensor: &TensorProto) -> Fact {
    let dtype = tensor.data_type.unwrap_or(0);
    let small = crate::onnx::tensor::element_count_of(tensor) <= VALUE_LIMIT;
    if [INT64, INT32, BOOL].contains(&dtype) && small {
        match to_tensor(tensor) {
            Ok(Tensor::I64(values)) => return Fact::with_value(dtype, values.mapv(Dim::known)),
            Ok(Tensor::Bool(values)) => return Fact::with_value(dtype, values.mapv(|v| Dim::known(i64::from(v)))),
            _ => {}
        }
    }
    Fact::of(dtype, Some(tensor.dims.iter().map(|&d| Dim::known(d)).collect()))
}

/// A vector of known elements.
fn vector(dtype: i32, values: Vec<Dim>) -> Fact {
    Fact::with_value(dtype, ArrayD::from_shape_vec(IxDyn(&[values.len()]), values).unwrap_or_default())
}

/// The output of a Constant node, whichever attribute holds the value.
fn constant(node: &Node, _: &mut Symbols) -> Vec<Fact> {
    let fact = match node.proto.attribute.first() {
        None => Fact::default(),
        Some(attr) => match attr.name.as_deref() {
            Some("value") => attr.t.as_ref().map(tensor_fact).unwrap_or_default(),
            Some("value_int") => Fact::with_value(INT64, ArrayD::from_elem(IxDyn(&[]), Dim::known(attr.i.unwrap_or(0)))),
            Some("value_ints") => vector(INT64, attr.ints.iter().map(|&v| Dim::known(v)).collect()),
            Some("value_float") => Fact::of(FLOAT, Some(Vec::new())),
            Some("value_floats") => Fact::of(FLOAT, Some(vec![Dim::known(i64::try_from(attr.floats.len()).unwrap_or(i64::MAX))])),
            _ => Fact::default(),
        },
    };
    vec![fact]
}

/// The input's dimensions from `start` to `end` (opset 15), as values.
fn shape(node: &Node, symbols: &mut Symbols) -> Vec<Fact> {
    let fact = match node.shape(0) {
        Some(shape) => {
            let (start, end) = shape_range(node.proto, shape.len());
            vector(INT64, shape.get(start..end.max(start)).unwrap_or(&[]).to_vec())
        }
        None => Fact::of(INT64, Some(vec![symbols.fresh()])),
    };
    vec![fact]
}

/// Shape's `start` and `end` clamped to `[0, rank]`, negative values counting from the end.
fn shape_range(node: &NodeProto, rank: usize) -> (usize, usize) {
    let rank = i64::try_from(rank).unwrap_or(i64::MAX);
    let clamp = |v: i64| {
        let v = if v < 0 { v.saturating_add(rank) } else { v };
        usize::try_from(v.clamp(0, rank)).unwrap_or(0)
    };
    (clamp(attr_int(node, "start", 0)), clamp(attr_int(node, "end", rank)))
}

fn size(node: &Node, _: &mut Symbols) -> Vec<Fact> {
    let fact = match node.shape(0).and_then(product) {
        Some(size) => Fact::with_value(INT64, ArrayD::from_elem(IxDyn(&[]), size)),
        None => Fact::of(INT64, Some(Vec::new())),
    };
    vec![fact]
}

fn constant_of_shape(node: &Node, _: &mut Symbols) -> Vec<Fact> {
    let tensor = attribute(node.proto, "value").and_then(|a| a.t.as_ref());
    let dtype = tensor.and_then(|t| t.data_type).unwrap_or(FLOAT);
    let Some(dims) = node.fact(0).and_then(|f| f.value.as_ref()) else { return vec![Fact::of(dtype, None)] };
    let shape: Vec<Dim> = dims.iter().cloned().collect();
    let filled = tensor.map(tensor_fact).and_then(|f| f.value).and_then(|v| v.iter().next().cloned());
    let fact = match (filled, sizes(&shape)) {
        (Some(element), Some(sizes)) if small(&sizes) => Fact::with_value(dtype, ArrayD::from_elem(IxDyn(&sizes), element)),
        _ => Fact::of(dtype, Some(shape)),
    };
    vec![fact]
}

fn range(node: &Node, symbols: &mut Symbols) -> Vec<Fact> {
    let dtype = node.dtype(0);
    let scalar = |i: usize| node.fact(i).and_then(Fact::ints).and_then(|v| v.first().copied());
    let known = match (scalar(0), scalar(1), scalar(2)) {
        (Some(start), Some(limit), Some(delta)) => range_length(start, limit, delta).map(|count| (start, delta, count)),
        _ => None,
    };
    let Some((start, delta, count)) = known else { return vec![Fact::of(dtype, Some(vec![symbols.fresh()]))] };
    let fact = match usize::try_from(count).ok().filter(|&n| n <= VALUE_LIMIT) {
        // Exact despite the wrapping: every element lies between start and limit.
        Some(n) => vector(dtype, (0..).take(n).map(|i: i64| Dim::known(start.wrapping_add(i.wrapping_mul(delta)))).collect()),
        None => {
            let length = i64::try_from(count).map_or_else(|_| symbols.fresh(), Dim::known);
            Fact::of(dtype, Some(vec![length]))
        }
    };
    vec![fact]
}

/// The number of elements of a Range, ⌈(limit − start) / delta⌉ or 0, in 128 bits, where the span
/// of two i64 values fits; `None` for a delta of 0.
fn range_length(start: i64, limit: i64, delta: i64) -> Option<u128> {
    if delta == 0 {
        return None;
    }
    let span = i128::from(limit).checked_sub(i128::from(start))?;
    if span == 0 || (span > 0) != (delta > 0) {
        return Some(0);
    }
    span.unsigned_abs().checked_sub(1)?.checked_div(u128::from(delta.unsigned_abs()))?.checked_add(1)
}

fn concat(node: &Node, symbols: &mut Symbols) -> Vec<Fact> {
    let facts: Option<Vec<&Fact>> = node.inputs.iter().copied().collect();
    let Some(facts @ [first, ..]) = facts.as_deref() else { return vec![Fact::default()] };
    let dtype = first.dtype;
    let shapes: Option<Vec<&[Dim]>> = facts.iter().map(|f| f.shape.as_deref()).collect();
    let Some(shapes @ [first_shape, ..]) = shapes.as_deref() else { return vec![Fact::of(dtype, None)] };
    let rank = first_shape.len();
    // ONNX concatenates values of one rank; values of several ranks have no known result.
    if shapes.iter().any(|s| s.len() != rank) {
        return vec![Fact::of(dtype, None)];
    }
    let Some(axis) = normalize_axis(attr_int(node.proto, "axis", 0), rank) else { return vec![Fact::of(dtype, None)] };
    let mut dims = first_shape.to_vec();
    let joined = shapes.iter().try_fold(Dim::known(0), |sum, s| sum.add(s.get(axis)?)).unwrap_or_else(|| symbols.fresh());
    if let Some(dim) = dims.get_mut(axis) {
        *dim = joined;
    }
    let values: Option<Vec<_>> = facts.iter().map(|f| f.value.as_ref().map(|v| v.view())).collect();
    let value = values
        .filter(|v| v.iter().all(|v| v.ndim() == rank) && v.iter().map(|v| v.len()).sum::<usize>() <= VALUE_LIMIT)
        .and_then(|v| ndarray::concatenate(Axis(axis), &v).ok());
    vec![Fact { dtype, shape: Some(dims), value, guessed: false }]
}

fn gather(node: &Node, _: &mut Symbols) -> Vec<Fact> {
    let (Some(data), Some(indices)) = (node.fact(0), node.fact(1)) else { return vec![Fact::default()] };
    let (Some(shape), Some(index_shape)) = (data.shape.as_deref(), indices.shape.as_deref()) else {
        return vec![Fact::of(data.dtype, None)];
    };
    let axis = normalize_axis(attr_int(node.proto, "axis", 0), shape.len());
    let Some((axis, (before, [_, after @ ..]))) = axis.and_then(|a| Some((a, shape.split_at_checked(a)?))) else {
        return vec![Fact::of(data.dtype, None)];
    };
    let dims: Vec<Dim> = [before, index_shape, after].concat();
    let value = data.value.as_ref().zip(indices.ints()).and_then(|(values, picks)| {
        // Many picks of a small value may still make a large one.
        let sizes = sizes(&dims)?;
        if !small(&sizes) {
            return None;
        }
        let size = i64::try_from(*values.shape().get(axis)?).ok()?;
        let picks: Vec<usize> = picks
            .iter()
            .map(|&i| {
                let i = if i < 0 { i.checked_add(size)? } else { i };
                usize::try_from(i).ok().filter(|_| i < size)
            })
            .collect::<Option<_>>()?;
        let taken = values.select(Axis(axis), &picks);
        taken.as_standard_layout().into_owned().into_shape_with_order(IxDyn(&sizes)).ok()
    });
    vec![Fact { dtype: data.dtype, shape: Some(dims), value, guessed: false }]
}

/// The output shape needs only the indices' shape: their leading axes, then the data axes after
/// the batch axes and the k indexed ones (k: the indices' last axis).
fn gather_nd(node: &Node, _: &mut Symbols) -> Vec<Fact> {
    let batch = usize::try_from(attr_int(node.proto, "batch_dims", 0)).ok();
    let shape = match (node.shape(0), node.shape(1), batch) {
        (Some(data), Some(indices), Some(batch)) => indices.split_last().and_then(|(k, leading)| {
            let k = usize::try_from(k.value()?).ok()?;
            let rest = data.get(batch.checked_add(k)?..)?;
            Some([leading, rest].concat())
        }),
        _ => None,
    };
    vec![Fact::of(node.dtype(0), shape)]
}

fn gather_elements(node: &Node, _: &mut Symbols) -> Vec<Fact> {
    vec![Fact::of(node.dtype(0), node.shape(1).map(<[Dim]>::to_vec))]
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::cast_possible_truncation, clippy::indexing_slicing)]
mod tests {
    use super::super::testing::{dims, fact_of, node};
    use crate::onnx::builder::int;

    #[test]
    fn concatenated_values_need_one_rank() {
        // A Concat of a vector and a scalar has no shape.
        let mixed = fact_of(&[("vector", &[1, 2])], &[], node("Concat", &["vector", "x"], vec![int("axis", 0)]));
        assert!(mixed.shape.is_none() && mixed.value.is_none());
        let joined = fact_of(&[("a", &[1, 2]), ("b", &[3])], &[], node("Concat", &["a", "b"], vec![int("axis", 0)]));
        assert_eq!(joined.ints(), Some(vec![1, 2, 3]));
    }

    #[test]
    fn ranges_over_the_whole_line() {
        // In a few steps, and in 2⁶⁴ − 1 (no elements, no length).
        let range = |step: i64| {
            let bounds: [(&str, &[i64]); 3] = [("lo", &[i64::MIN]), ("hi", &[i64::MAX]), ("step", &[step])];
            fact_of(&bounds, &[], node("Range", &["lo", "hi", "step"], vec![]))
        };
        assert_eq!(range(1 << 62).ints(), Some(vec![i64::MIN, -(1 << 62), 0, 1 << 62]));
        let endless = range(1);
        assert!(endless.value.is_none() && endless.shape.unwrap()[0].value().is_none());
    }

    #[test]
    fn shape_values_are_gathered() {
        let shape = fact_of(&[], &[2, 3, 4], node("Shape", &["x"], vec![int("start", -2)]));
        assert_eq!(shape.ints(), Some(vec![3, 4]));
        let picked = fact_of(&[("data", &[5, 6, 7]), ("at", &[-1])], &[], node("Gather", &["data", "at"], vec![]));
        assert_eq!(picked.ints(), Some(vec![7]));
        let outside = fact_of(&[("data", &[5, 6, 7]), ("at", &[3])], &[], node("Gather", &["data", "at"], vec![]));
        assert!(outside.value.is_none());
    }

    #[test]
    fn gather_nd_keeps_the_axes_it_does_not_index() {
        let gathered = fact_of(&[("index", &[0, 1])], &[2, 3, 4, 5], node("GatherND", &["x", "index"], vec![]));
        assert_eq!(dims(&gathered), Some(vec![Some(4), Some(5)]));
        let too_deep = fact_of(&[("index", &[0, 1, 2, 3])], &[2, 3], node("GatherND", &["x", "index"], vec![]));
        assert_eq!(dims(&too_deep), None);
    }
}
