//! Operators that take or add parts of axes: Slice (small integer values sliced too), Pad and
//! Split, with the normalised operands that the backward rules share.

use ndarray::{Axis, Slice};

use super::{normalize_axis, Dim, Fact, Node, Registry, Symbols};
use crate::analysis::geometry::SliceAxis;
use crate::onnx::graph::{attr_int, attr_ints};
use crate::onnx::proto::NodeProto;

pub(super) fn register(registry: &mut Registry) {
    registry.insert(&["Slice"], slice);
    registry.insert(&["Pad"], pad);
    registry.insert(&["Split"], split);
}

fn slice(node: &Node, symbols: &mut Symbols) -> Vec<Fact> {
    let Some(data) = node.fact(0) else { return vec![Fact::default()] };
    let Some(shape) = data.shape.as_deref() else { return vec![Fact::of(data.dtype, None)] };
    let Some(axes) = slice_axes(node.proto, node.inputs, shape) else {
        let dims = (0..shape.len()).map(|_| symbols.fresh()).collect();
        return vec![Fact::of(data.dtype, Some(dims))];
    };
    let mut dims = shape.to_vec();
    for axis in &axes {
        if let Some(dim) = dims.get_mut(axis.axis) {
            *dim = Dim::known(axis.len);
        }
    }
    let value = data.value.as_ref().and_then(|v| {
        let mut view = v.view();
        for axis in &axes {
            // From the lowest to the highest index taken (a negative step walks it backwards):
            // an end past the axis would panic. The array is small, so its indices fit an isize.
            let range = match axis.len {
                0 => Slice::new(0, Some(0), 1),
                _ => {
                    let lowest = isize::try_from(axis.lowest()).ok()?;
                    let highest = isize::try_from(axis.highest()).ok()?;
                    Slice::new(lowest, Some(highest.checked_add(1)?), isize::try_from(axis.step).ok()?)
                }
            };
            view.slice_axis_inplace(Axis(axis.axis), range);
        }
        Some(view.as_standard_layout().into_owned())
    });
    vec![Fact { dtype: data.dtype, shape: Some(dims), value, guessed: false }]
}

fn pad(node: &Node, symbols: &mut Symbols) -> Vec<Fact> {
    let Some(data) = node.fact(0) else { return vec![Fact::default()] };
    let Some(shape) = data.shape.as_deref() else { return vec![Fact::of(data.dtype, None)] };
    let dims = match pad_amounts(node.proto, node.inputs, shape.len()) {
        Some((begin, end)) => shape
            .iter()
            .zip(begin.iter().zip(&end))
            .map(|(d, (before, after))| {
                let padding = before.checked_add(*after).map(Dim::known);
                padding.and_then(|p| d.add(&p)).unwrap_or_else(|| symbols.fresh())
            })
            .collect(),
        None => (0..shape.len()).map(|_| symbols.fresh()).collect(),
    };
    vec![Fact::of(data.dtype, Some(dims))]
}

fn split(node: &Node, _: &mut Symbols) -> Vec<Fact> {
    let count = node.outputs();
    let Some(data) = node.fact(0) else { return vec![Fact::default(); count] };
    let dtype = data.dtype;
    let Some(shape) = data.shape.as_deref() else { return vec![Fact::of(dtype, None); count] };
    let sizes = normalize_axis(attr_int(node.proto, "axis", 0), shape.len()).and_then(|axis| {
        let size = shape.get(axis)?.value()?;
        Some((axis, split_sizes(node, size, count)?))
    });
    let Some((axis, sizes)) = sizes else { return vec![Fact::of(dtype, None); count] };
    sizes
        .into_iter()
        .map(|size| {
            let mut dims = shape.to_vec();
            if let Some(dim) = dims.get_mut(axis) {
                *dim = Dim::known(size);
            }
            Fact::of(dtype, Some(dims))
        })
        .collect()
}

/// The normalised ranges of a Slice node over a value of shape `shape` (inputs since opset 10; the
/// attribute form of older opsets too), `inputs` the facts of its inputs. Axes left whole are
/// omitted.
pub(crate) fn slice_axes(node: &NodeProto, inputs: &[Option<&Fact>], shape: &[Dim]) -> Option<Vec<SliceAxis>> {
    let operand = |i: usize| inputs.get(i).copied().flatten().and_then(Fact::ints);
    let (starts, ends, axes, steps) = if node.input.len() >= 3 {
        let starts = operand(1)?;
        let axes = if node.input.get(3).is_some_and(|n| !n.is_empty()) { operand(3)? } else { (0..).take(starts.len()).collect() };
        let steps = if node.input.get(4).is_some_and(|n| !n.is_empty()) { operand(4)? } else { vec![1; starts.len()] };
        (starts, operand(2)?, axes, steps)
    } else {
        let starts = attr_ints(node, "starts").to_vec();
        let axes = match attr_ints(node, "axes") {
            [] => (0..).take(starts.len()).collect(),
            axes => axes.to_vec(),
        };
        let steps = vec![1; starts.len()];
        (starts, attr_ints(node, "ends").to_vec(), axes, steps)
    };
    if [ends.len(), axes.len(), steps.len()].iter().any(|&l| l != starts.len()) {
        return None;
    }
    let (mut ranges, mut seen) = (Vec::new(), Vec::new());
    for (((&start, &end), &axis), &step) in starts.iter().zip(&ends).zip(&axes).zip(&steps) {
        let axis = normalize_axis(axis, shape.len())?;
        // ONNX forbids repeated axes: a second range would index the first one's result.
        if seen.contains(&axis) {
            return None;
        }
        seen.push(axis);
        match shape.get(axis)?.value() {
            Some(size) => {
                let range = SliceAxis::new(axis, size, start, end, step).ok()?;
                if !range.is_identity(size) {
                    ranges.push(range);
                }
            }
            // A dynamic axis can only be taken whole.
            None if start == 0 && step == 1 && end >= i64::from(i32::MAX) => {}
            None => return None,
        }
    }
    Some(ranges)
}

/// The pads of a Pad node as (before, after) per axis: the `pads` input (opset 11+, with the
/// optional `axes` input of opset 18) or attribute; `inputs` are the facts of its inputs.
pub(crate) fn pad_amounts(node: &NodeProto, inputs: &[Option<&Fact>], rank: usize) -> Option<(Vec<i64>, Vec<i64>)> {
    let operand = |i: usize| inputs.get(i).copied().flatten().and_then(Fact::ints);
    let pads = if node.input.len() >= 2 { operand(1)? } else { attr_ints(node, "pads").to_vec() };
    let axes: Vec<usize> = match node.input.get(3).filter(|n| !n.is_empty()) {
        Some(_) => operand(3)?.iter().map(|&a| normalize_axis(a, rank)).collect::<Option<_>>()?,
        None => (0..rank).collect(),
    };
    if pads.len() != axes.len().checked_mul(2)? {
        return None;
    }
    let (mut begin, mut end) = (vec![0; rank], vec![0; rank]);
    let (before, after) = pads.split_at(axes.len());
    for ((&axis, &b), &e) in axes.iter().zip(before).zip(after) {
        *begin.get_mut(axis)? = b;
        *end.get_mut(axis)? = e;
    }
    Some((begin, end))
}

/// The sizes of a Split node's outputs along an axis of `size` elements.
fn split_sizes(node: &Node, size: i64, count: usize) -> Option<Vec<i64>> {
    let given = match node.fact(1) {
        Some(fact) => Some(fact.ints()?),
        None => Some(attr_ints(node.proto, "split").to_vec()).filter(|s| !s.is_empty()),
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
            let parts = i64::try_from(count.max(1)).ok()?;
            let chunk = if size == 0 { 0 } else { size.checked_sub(1)?.checked_div(parts)?.checked_add(1)? };
            Some((0..).take(count).map(|i: i64| size.saturating_sub(i.saturating_mul(chunk)).clamp(0, chunk)).collect())
        }
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::cast_possible_truncation, clippy::indexing_slicing)]
mod tests {
    use super::super::testing::{fact_of, node};

    #[test]
    fn model_controlled_sizes_stay_unknown() {
        // Split of an axis of i64::MAX elements into equal parts, and sizes that wrap around.
        let mut split = node("Split", &["x"], vec![]);
        split.output = vec!["y".into(), "z".into()];
        assert_eq!(fact_of(&[], &[i64::MAX], split.clone()).shape.unwrap()[0].value(), Some(1 << 62));
        split.input.push("sizes".into());
        assert!(fact_of(&[("sizes", &[-1, 5])], &[4], split.clone()).shape.is_none(), "a negative size");
        split.output.push("w".into());
        assert!(fact_of(&[("sizes", &[i64::MAX, i64::MAX, 3])], &[1], split).shape.is_none(), "sizes adding up to 2⁶⁴ + 1");
        // Padding by i64::MAX twice.
        let pad = fact_of(&[("pads", &[i64::MAX, i64::MAX])], &[2], node("Pad", &["x", "pads"], vec![]));
        assert!(pad.shape.unwrap()[0].value().is_none());
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
}
