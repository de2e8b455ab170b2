//! Reductions (Reduce*, ArgMax, ArgMin): the reduced axes kept as 1 or dropped.

use super::{normalize_axis, Dim, Fact, Node, Registry, Symbols, INT64};
use crate::onnx::graph::attr_int;

pub(super) fn register(registry: &mut Registry) {
    let reductions = [
        "ReduceMean",
        "ReduceSum",
        "ReduceMax",
        "ReduceMin",
        "ReduceProd",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceSumSquare",
        "ArgMax",
        "ArgMin",
    ];
    registry.insert(&reductions, reduce);
}

fn reduce(node: &Node, _: &mut Symbols) -> Vec<Fact> {
    let arg = node.op.starts_with("Arg");
    let axes = if arg { Some(vec![attr_int(node.proto, "axis", 0)]) } else { node.axes() };
    let keep = attr_int(node.proto, "keepdims", 1) != 0;
    let noop = !arg && attr_int(node.proto, "noop_with_empty_axes", 0) != 0;
    let dtype = if arg { INT64 } else { node.dtype(0) };
    let shape = node.shape(0).zip(axes).and_then(|(shape, axes)| {
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
    vec![Fact::of(dtype, shape)]
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

#[cfg(test)]
mod tests {
    use super::super::testing::{dims, fact_of, node};
    use super::*;
    use crate::onnx::builder::{int, ints};

    #[test]
    fn reduced_axes_are_kept_or_dropped() {
        let kept = fact_of(&[("axes", &[-1, 1])], &[2, 3, 4], node("ReduceSum", &["x", "axes"], vec![]));
        assert_eq!(dims(&kept), Some(vec![Some(2), Some(1), Some(1)]));
        let dropped = fact_of(&[], &[2, 3, 4], node("ReduceMean", &["x"], vec![ints("axes", &[0]), int("keepdims", 0)]));
        assert_eq!(dims(&dropped), Some(vec![Some(3), Some(4)]));
        let arg = fact_of(&[], &[2, 3], node("ArgMax", &["x"], vec![int("axis", 1)]));
        assert_eq!((arg.dtype, dims(&arg)), (INT64, Some(vec![Some(2), Some(1)])));
        assert_eq!(reduced_axes(&[], 3, true), Some(vec![]));
        assert_eq!(reduced_axes(&[3], 3, false), None);
    }
}
