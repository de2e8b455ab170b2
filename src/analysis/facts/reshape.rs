//! Operators that rearrange a value's elements: Reshape, Flatten, Squeeze, Unsqueeze, Transpose,
//! Expand and Tile. Small integer values follow the rearrangement.

use ndarray::IxDyn;

use super::dim::product;
use super::{normalize_axis, reshape_value, Dim, Fact, Node, Registry, Symbols, MAX_RANK};
use crate::onnx::graph::{attr_int, attr_ints};
use crate::onnx::proto::NodeProto;

pub(super) fn register(registry: &mut Registry) {
    registry.insert(&["Reshape"], reshape);
    registry.insert(&["Flatten"], flatten);
    registry.insert(&["Squeeze"], squeeze);
    registry.insert(&["Unsqueeze"], unsqueeze);
    registry.insert(&["Transpose"], transpose);
    registry.insert(&["Expand"], expand);
    registry.insert(&["Tile"], tile);
}

fn reshape(node: &Node, symbols: &mut Symbols) -> Vec<Fact> {
    let Some(data) = node.fact(0) else { return vec![Fact::default()] };
    let Some(target) = node.fact(1).and_then(|f| f.value.as_ref()) else {
        // The target's length is the output's rank, whatever the model says it is.
        let rank = node.shape(1).and_then(|s| s.first()?.value());
        let rank = rank.and_then(|r| usize::try_from(r).ok()).filter(|&r| r <= MAX_RANK);
        let dims = rank.map(|r| (0..r).map(|_| symbols.fresh()).collect());
        return vec![Fact::of(data.dtype, dims)];
    };
    let allow_zero = attr_int(node.proto, "allowzero", 0) != 0;
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
        let total = data.shape.as_deref().and_then(product);
        if let Some(slot) = dims.get_mut(missing) {
            *slot = total.zip(known).and_then(|(t, k)| t.div(&k));
        }
    }
    let dims: Vec<Dim> = dims.into_iter().map(|d| d.unwrap_or_else(|| symbols.fresh())).collect();
    let value = data.value.as_ref().and_then(|v| reshape_value(v, &dims));
    vec![Fact { dtype: data.dtype, shape: Some(dims), value, guessed: false }]
}

fn flatten(node: &Node, symbols: &mut Symbols) -> Vec<Fact> {
    let shape = node.shape(0).map(|shape| {
        // The axis may also be the rank: everything in the outer product.
        let axis = shape.len().checked_add(1).and_then(|rank| normalize_axis(attr_int(node.proto, "axis", 1), rank)).unwrap_or(1);
        let (outer, inner) = shape.split_at(axis.min(shape.len()));
        [product(outer), product(inner)].map(|d| d.unwrap_or_else(|| symbols.fresh())).to_vec()
    });
    vec![Fact::of(node.dtype(0), shape)]
}

fn unsqueeze(node: &Node, symbols: &mut Symbols) -> Vec<Fact> {
    rearranged(node, symbols, usize::checked_add, |shape, axes| {
        let rank = shape.len().checked_add(axes.len())?;
        let axes: Vec<usize> = axes.iter().map(|&a| normalize_axis(a, rank)).collect::<Option<_>>()?;
        let mut rest = shape.iter();
        Some((0..rank).map(|i| if axes.contains(&i) { Dim::known(1) } else { rest.next().cloned().unwrap_or_default() }).collect())
    })
}

fn squeeze(node: &Node, symbols: &mut Symbols) -> Vec<Fact> {
    rearranged(node, symbols, usize::checked_sub, |shape, axes| {
        if axes.is_empty() {
            return Some(shape.iter().filter(|d| d.value() != Some(1)).cloned().collect());
        }
        let axes: Vec<usize> = axes.iter().map(|&a| normalize_axis(a, shape.len())).collect::<Option<_>>()?;
        Some(shape.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, d)| d.clone()).collect())
    })
}

/// The fact of a Squeeze or Unsqueeze, whose new shape `dims` computes from the input's shape and
/// the node's axes. When the axes are computed (their values unknown) but their number is known,
/// the output's rank still is (`rank` of the input's rank and that number), its sizes unknown: a
/// later node that needs another rank is then refused instead of failing at run time.
fn rearranged(
    node: &Node,
    symbols: &mut Symbols,
    rank: fn(usize, usize) -> Option<usize>,
    dims: impl FnOnce(&[Dim], &[i64]) -> Option<Vec<Dim>>,
) -> Vec<Fact> {
    let Some(data) = node.fact(0) else { return vec![Fact::default()] };
    let Some(shape) = data.shape.as_deref() else { return vec![Fact::of(data.dtype, None)] };
    let Some(axes) = node.axes() else {
        let count = node.shape(1).and_then(|s| s.iter().try_fold(1usize, |n, d| n.checked_mul(usize::try_from(d.value()?).ok()?)));
        let dims = count.and_then(|count| rank(shape.len(), count)).filter(|&r| r <= MAX_RANK).map(|r| (0..r).map(|_| symbols.fresh()).collect());
        return vec![Fact::of(data.dtype, dims)];
    };
    let dims = dims(shape, &axes);
    let value = data.value.as_ref().zip(dims.as_ref()).and_then(|(v, dims)| reshape_value(v, dims));
    vec![Fact { dtype: data.dtype, shape: dims, value, guessed: false }]
}

fn transpose(node: &Node, _: &mut Symbols) -> Vec<Fact> {
    let fact = match node.fact(0) {
        Some(Fact { dtype, shape: Some(shape), value, .. }) => {
            let perm = transpose_perm(node.proto, shape.len());
            let mut sorted = perm.clone();
            sorted.sort_unstable();
            // Anything but a reordering of the axes (refused by validation, but only for
            // checked models) transposes nothing the facts can follow.
            if sorted.into_iter().eq(0..shape.len()) {
                let shape = perm.iter().filter_map(|&p| shape.get(p).cloned()).collect();
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
    };
    vec![fact]
}

/// The permutation of a Transpose node (reversal by default).
pub(crate) fn transpose_perm(node: &NodeProto, rank: usize) -> Vec<usize> {
    match attr_ints(node, "perm") {
        [] => (0..rank).rev().collect(),
        perm => perm.iter().map(|&p| usize::try_from(p).unwrap_or(0)).collect(),
    }
}

fn expand(node: &Node, symbols: &mut Symbols) -> Vec<Fact> {
    let target: Option<Vec<Dim>> = node.fact(1).and_then(|f| f.value.as_ref()).map(|v| v.iter().cloned().collect());
    let shape = node.shape(0).zip(target).map(|(shape, target)| symbols.broadcast(&[shape, target.as_slice()]));
    vec![Fact::of(node.dtype(0), shape)]
}

fn tile(node: &Node, _: &mut Symbols) -> Vec<Fact> {
    let shape = match (node.shape(0), node.fact(1).and_then(Fact::ints)) {
        (Some(shape), Some(repeats)) if repeats.len() == shape.len() => {
            shape.iter().zip(repeats).map(|(d, r)| d.mul(&Dim::known(r))).collect::<Option<Vec<_>>>()
        }
        _ => None,
    };
    vec![Fact::of(node.dtype(0), shape)]
}

#[cfg(test)]
mod tests {
    use super::super::testing::{dims, fact_of, node};
    use crate::onnx::builder::ints;

    #[test]
    fn model_controlled_targets_stay_unknown_or_bounded() {
        // A Reshape target of unknown elements and i64::MAX of them: no shape, no allocation.
        let huge = fact_of(&[("data", &[1, 2])], &[i64::MAX], node("Reshape", &["data", "x"], vec![]));
        assert!(huge.shape.is_none());
        let ranked = fact_of(&[("data", &[1, 2])], &[3], node("Reshape", &["data", "x"], vec![]));
        assert_eq!(ranked.shape.map(|s| s.len()), Some(3));
        // A Transpose whose perm repeats an axis.
        let repeated = fact_of(&[("a", &[1, 2])], &[], node("Transpose", &["a"], vec![ints("perm", &[0, 0])]));
        assert!(repeated.shape.is_none());
    }

    #[test]
    fn rearranged_values_follow_their_elements() {
        let constants: [(&str, &[i64]); 2] = [("data", &[1, 2, 3, 4, 5, 6]), ("shape", &[3, -1])];
        let reshaped = fact_of(&constants, &[], node("Reshape", &["data", "shape"], vec![]));
        assert_eq!(dims(&reshaped), Some(vec![Some(3), Some(2)]));
        assert_eq!(reshaped.ints(), Some(vec![1, 2, 3, 4, 5, 6]));
        let flat = fact_of(&[], &[2, 3, 4], node("Flatten", &["x"], vec![]));
        assert_eq!(dims(&flat), Some(vec![Some(2), Some(12)]));
        let lifted = fact_of(&[("axes", &[0, -1])], &[3], node("Unsqueeze", &["x", "axes"], vec![]));
        assert_eq!(dims(&lifted), Some(vec![Some(1), Some(3), Some(1)]));
        let tiled = fact_of(&[("repeats", &[2, 1])], &[3, 4], node("Tile", &["x", "repeats"], vec![]));
        assert_eq!(dims(&tiled), Some(vec![Some(6), Some(4)]));
    }

    /// Fuzz seed 105, case 791: a ResNet20 whose shape subgraph's Unsqueeze had its inputs swapped
    /// (the axes computed from the batch size, a scalar). The values stay unknown, but one axis is
    /// added, so the rank is known, and the Concat after it can be checked.
    #[test]
    fn computed_axes_still_give_the_rank() {
        let lifted = fact_of(&[("data", &[0])], &[], node("Unsqueeze", &["data", "x"], vec![]));
        assert_eq!(dims(&lifted), Some(vec![None, None]));
        let dropped = fact_of(&[("data", &[0])], &[1], node("Squeeze", &["data", "x"], vec![]));
        assert_eq!(dims(&dropped), Some(vec![]));
        let unknown_count = fact_of(&[("data", &[0])], &[-1], node("Unsqueeze", &["data", "x"], vec![]));
        assert!(unknown_count.shape.is_none());
    }
}
