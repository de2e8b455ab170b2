//! Operators that move elements without computing: Flatten, Reshape, Squeeze, Unsqueeze, Identity,
//! Dropout (inference), Transpose, Concat, Split, Slice (steps, negative steps and axes) and Pad
//! (constant, edge and reflect modes).

use super::{first, only, set, wants, Builder, Ctx, Differentiable, Registry};
use crate::autodiff::emit::int;
use crate::analysis::facts::{normalize_axis, pad_amounts, slice_axes, transpose_perm, Dim};
use crate::error::Result;
use crate::onnx::graph::{attr_int, attribute};

pub(super) fn register(registry: &mut Registry) {
    let x = Differentiable::Only(&[0]);
    for op in ["Flatten", "Reshape", "Squeeze", "Unsqueeze"] {
        registry.insert(op, x, reshape_back);
    }
    registry.insert("Identity", x, identity);
    registry.insert("Dropout", x, dropout);
    registry.insert("Transpose", x, transpose);
    registry.insert("Concat", Differentiable::All, concat);
    registry.insert("Split", x, split);
    registry.insert("Slice", x, slice);
    registry.insert("Pad", x, pad);
    registry.insert("ScatterND", Differentiable::Only(&[0, 2]), scatter_nd);
}

/// The gradient has the output's elements in the input's shape.
fn reshape_back(ctx: &Ctx, b: &mut Builder, dy: &[Option<String>], _: &[bool]) -> Result<Vec<Option<String>>> {
    let dy = first(ctx, dy)?;
    Ok(only(ctx.node.input.len(), 0, b.reshape_like(&dy, ctx.input(0))))
}

fn identity(ctx: &Ctx, _: &mut Builder, dy: &[Option<String>], _: &[bool]) -> Result<Vec<Option<String>>> {
    Ok(only(1, 0, first(ctx, dy)?))
}

/// Dropout is the identity in inference; a graph that trains with it is refused.
fn dropout(ctx: &Ctx, _: &mut Builder, dy: &[Option<String>], _: &[bool]) -> Result<Vec<Option<String>>> {
    if let Some(mode) = ctx.node.input.get(2).filter(|n| !n.is_empty()) {
        if ctx.facts.get(mode).and_then(|f| f.ints()) != Some(vec![0]) {
            return Err(ctx.error("only Dropout in inference mode (training_mode a constant false) has a gradient"));
        }
    }
    Ok(only(ctx.node.input.len(), 0, first(ctx, dy)?))
}

fn transpose(ctx: &Ctx, b: &mut Builder, dy: &[Option<String>], _: &[bool]) -> Result<Vec<Option<String>>> {
    let dy = first(ctx, dy)?;
    let perm = transpose_perm(ctx.node, ctx.rank(ctx.input(0))?);
    let mut inverse = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        *inverse.get_mut(p).ok_or_else(|| ctx.error(format!("invalid perm {perm:?}")))? = i;
    }
    Ok(only(1, 0, b.transpose(&dy, &inverse)))
}

/// Each input gets its own stretch of the gradient along the axis.
fn concat(ctx: &Ctx, b: &mut Builder, dy: &[Option<String>], wanted: &[bool]) -> Result<Vec<Option<String>>> {
    let dy = first(ctx, dy)?;
    let rank = ctx.rank(ctx.output(0))?;
    let axis = normalize_axis(attr_int(ctx.node, "axis", 0), rank).ok_or_else(|| ctx.error("axis out of range"))?;
    let mut result = vec![None; ctx.node.input.len()];
    let mut offset = 0i64;
    for (i, input) in ctx.node.input.iter().enumerate() {
        let size = ctx.dim(input, axis).map_err(|_| ctx.error("the concatenation axis must be static"))?;
        let end = offset.checked_add(size).ok_or_else(|| ctx.error("the concatenated sizes overflow"))?;
        if wants(wanted, i) {
            set(&mut result, i, b.slice(&dy, &[offset], &[end], &[axis], &[1])?);
        }
        offset = end;
    }
    Ok(result)
}

/// The outputs' gradients concatenated back, zeros for outputs nothing downstream uses.
fn split(ctx: &Ctx, b: &mut Builder, dy: &[Option<String>], _: &[bool]) -> Result<Vec<Option<String>>> {
    let axis = attr_int(ctx.node, "axis", 0);
    let dtype = ctx.dtype(ctx.input(0));
    let pieces = ctx
        .node
        .output
        .iter()
        .enumerate()
        .map(|(k, output)| match dy.get(k).cloned().flatten() {
            Some(g) => Ok(g),
            None => b.zeros_like(output, dtype),
        })
        .collect::<Result<Vec<_>>>()?;
    let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
    Ok(only(ctx.node.input.len(), 0, b.op("Concat", &pieces, vec![int("axis", axis)])))
}

/// Scatters the gradient back to the sliced positions, axis by axis: reverse a negative step,
/// spread a step s > 1 by interleaving s − 1 zeros, then pad to place the block at its offset.
fn slice(ctx: &Ctx, b: &mut Builder, dy: &[Option<String>], _: &[bool]) -> Result<Vec<Option<String>>> {
    let (x, count) = (ctx.input(0), ctx.node.input.len());
    let shape = ctx.shape(x)?;
    let ranges = slice_axes(ctx.node, &ctx.input_facts(), shape)
        .ok_or_else(|| ctx.error("the Slice bounds must be constants and the sliced axes static"))?;
    if ranges.iter().any(|r| r.len == 0) {
        return Ok(only(count, 0, b.zeros_like(x, ctx.dtype(x))?));
    }
    let mut g = first(ctx, dy)?;
    let mut dims: Vec<Option<i64>> = ctx.shape(ctx.output(0))?.iter().map(Dim::value).collect();
    let overflow = || ctx.error(format!("Slice of '{x}': a position overflows"));
    for range in ranges {
        let axis = range.axis;
        let size = shape.get(axis).and_then(Dim::value).ok_or_else(|| ctx.error("a sliced axis must be static"))?;
        if range.step < 0 {
            g = b.slice(&g, &[-1], &[i64::MIN], &[axis], &[-1])?;
        }
        let mut len = range.len;
        // A step of i64::MIN has no i64 magnitude but takes one element at most: nothing to spread.
        if let Some(step) = range.step.checked_abs().filter(|&s| s > 1) {
            g = crate::autodiff::emit::interleave(b, &g, axis, step, &dims, ctx.dtype(x)).map_err(|m| ctx.error(m))?;
            len = len.checked_sub(1).and_then(|l| l.checked_mul(step)?.checked_add(1)).ok_or_else(overflow)?;
        }
        let lowest = range.lowest();
        let after = size.checked_sub(lowest).and_then(|rest| rest.checked_sub(len)).ok_or_else(overflow)?;
        g = b.pad(&g, &pads_on(shape.len(), axis, lowest, after));
        if let Some(dim) = dims.get_mut(axis) {
            *dim = Some(size);
        }
    }
    Ok(only(count, 0, g))
}

/// Constant padding: the gradient is the centre. Edge and reflect padding also send the padded
/// positions' gradients to the input elements they copied.
fn pad(ctx: &Ctx, b: &mut Builder, dy: &[Option<String>], _: &[bool]) -> Result<Vec<Option<String>>> {
    let x = ctx.input(0);
    let rank = ctx.rank(x)?;
    let (begin, end) =
        pad_amounts(ctx.node, &ctx.input_facts(), rank).ok_or_else(|| ctx.error("the pads must be constants"))?;
    if begin.iter().chain(&end).any(|&p| p < 0) {
        return Err(ctx.error("negative pads (cropping) have no gradient rule"));
    }
    let mode = attribute(ctx.node, "mode").and_then(|a| a.s.as_deref()).unwrap_or(b"constant").to_vec();
    let overflow = || ctx.error(format!("Pad of '{x}': a position overflows"));
    let mut g = first(ctx, dy)?;
    for (axis, (&before, &after)) in begin.iter().zip(&end).enumerate().filter(|(_, (&b, &e))| b > 0 || e > 0) {
        // after > 0 here, so its negation cannot saturate.
        let centre_end = if after > 0 { after.saturating_neg() } else { i64::MAX };
        let centre = b.slice(&g, &[before], &[centre_end], &[axis], &[1])?;
        g = match mode.as_slice() {
            b"constant" => centre,
            b"edge" | b"reflect" => {
                let size = ctx.dim(x, axis)?;
                let tail = before.checked_add(size).ok_or_else(overflow)?;
                let mut total = centre;
                for at_start in [true, false] {
                    let amount = if at_start { before } else { after };
                    if amount == 0 {
                        continue;
                    }
                    let (from, to) = if at_start { (0, before) } else { (tail, tail.checked_add(after).ok_or_else(overflow)?) };
                    let border = b.slice(&g, &[from], &[to], &[axis], &[1])?;
                    // Where the border's gradient lands: one edge element, or the mirrored run
                    // next to the edge (reversed so that it lines up).
                    let (folded, width) = if mode == b"edge" {
                        (b.reduce_sum(&border, &[axis], true), 1)
                    } else {
                        if amount >= size {
                            return Err(ctx.error("reflect padding wider than the input"));
                        }
                        (b.slice(&border, &[-1], &[i64::MIN], &[axis], &[-1])?, amount)
                    };
                    let last = size.checked_sub(1).ok_or_else(overflow)?;
                    let offset = match (mode.as_slice(), at_start) {
                        (b"edge", true) => Some(0),
                        (b"edge", false) => Some(last),
                        (_, true) => Some(1),
                        (_, false) => last.checked_sub(amount),
                    };
                    let offset = offset.ok_or_else(overflow)?;
                    let rest = size.checked_sub(offset).and_then(|r| r.checked_sub(width)).ok_or_else(overflow)?;
                    let placed = b.pad(&folded, &pads_on(rank, axis, offset, rest));
                    total = b.op("Add", &[&total, &placed], vec![]);
                }
                total
            }
            other => {
                return Err(ctx.error(format!("Pad mode '{}' has no gradient rule", String::from_utf8_lossy(other))))
            }
        };
    }
    Ok(only(ctx.node.input.len(), 0, g))
}

/// The pads of a value of rank `rank` that add `before` and `after` elements on `axis` alone (the
/// begins of all axes, then their ends).
fn pads_on(rank: usize, axis: usize, before: i64, after: i64) -> Vec<i64> {
    let on_axis = |amount: i64| (0..rank).map(move |a| if a == axis { amount } else { 0 });
    on_axis(before).chain(on_axis(after)).collect()
}

/// ScatterND without reduction (how β units merge replacement filters into a kernel): the updates
/// receive the gradient at their indices, the data everywhere else. Indices are distinct, as ONNX
/// requires for this reduction.
fn scatter_nd(ctx: &Ctx, b: &mut Builder, dy: &[Option<String>], wanted: &[bool]) -> Result<Vec<Option<String>>> {
    if attribute(ctx.node, "reduction").and_then(|a| a.s.as_deref()).is_some_and(|r| r != b"none") {
        return Err(ctx.error("only ScatterND without reduction has a gradient rule"));
    }
    let dy = first(ctx, dy)?;
    let (indices, updates) = (ctx.input(1), ctx.input(2));
    let mut result = vec![None; ctx.node.input.len()];
    if wants(wanted, 0) {
        let cleared = b.zeros_like(updates, ctx.dtype(updates))?;
        set(&mut result, 0, b.op("ScatterND", &[&dy, indices, &cleared], vec![]));
    }
    if wants(wanted, 2) {
        set(&mut result, 2, b.op("GatherND", &[&dy, indices], vec![]));
    }
    Ok(result)
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::cast_possible_truncation, clippy::indexing_slicing)]
mod tests {
    use crate::autodiff::emit::{int, ints};
    use crate::autodiff::testing::{check, check_opset, string};

    #[test]
    fn reshapes_and_transpose() {
        check(&["x"], |t| {
            let x = t.input("x", &[2, 3, 2, 2]);
            let flat = t.node("Flatten", &[&x], vec![int("axis", 2)]);
            let shape = t.ints("shape", &[3, -1]);
            let reshaped = t.node("Reshape", &[&flat, &shape], vec![]);
            let axes = t.ints("axes", &[0]);
            let unsqueezed = t.node("Unsqueeze", &[&reshaped, &axes], vec![]);
            let moved = t.node("Transpose", &[&unsqueezed], vec![ints("perm", &[2, 0, 1])]);
            let middle = t.ints("middle", &[1]);
            let squeezed = t.node("Squeeze", &[&moved, &middle], vec![]);
            let kept = t.node("Identity", &[&squeezed], vec![]);
            t.node("Dropout", &[&kept], vec![])
        });
        check_opset(11, &["x"], |t| {
            let x = t.input("x", &[3, 1, 4]);
            let squeezed = t.node("Squeeze", &[&x], vec![ints("axes", &[1])]);
            t.node("Unsqueeze", &[&squeezed], vec![ints("axes", &[0])])
        });
    }

    #[test]
    fn concat_and_split() {
        check(&["a", "b"], |t| {
            let (a, b) = (t.input("a", &[2, 3, 4]), t.param("b", &[2, 2, 4]));
            t.node("Concat", &[&a, &b, &a], vec![int("axis", -2)])
        });
        check(&["x"], |t| {
            let x = t.input("x", &[2, 7]);
            let sizes = t.ints("sizes", &[2, 4, 1]);
            let parts = t.node_n("Split", &[&x, &sizes], vec![int("axis", 1)], 3);
            // The middle part is unused: its gradient is zero.
            t.node("Mul", &[&parts[0], &parts[2]], vec![])
        });
        check_opset(11, &["x"], |t| {
            let x = t.input("x", &[6, 2]);
            let parts = t.node_n("Split", &[&x], vec![ints("split", &[1, 5])], 2);
            t.node("Identity", &[&parts[1]], vec![])
        });
    }

    #[test]
    fn slices_with_steps_and_negative_axes() {
        check(&["x"], |t| {
            let x = t.input("x", &[2, 3, 9, 8]);
            let (starts, ends) = (t.ints("starts", &[1, 7, 0]), t.ints("ends", &[i64::MAX, 0, 3]));
            let (axes, steps) = (t.ints("axes", &[-2, -1, 1]), t.ints("steps", &[3, -2, 2]));
            t.node("Slice", &[&x, &starts, &ends, &axes, &steps], vec![])
        });
        check(&["x"], |t| {
            // ResNet20's option-A shortcut: x[:, :, ::2, ::2].
            let x = t.input("x", &[2, 2, 6, 6]);
            let (starts, ends) = (t.ints("starts", &[0, 0]), t.ints("ends", &[i64::MAX, i64::MAX]));
            let (axes, steps) = (t.ints("axes", &[2, 3]), t.ints("steps", &[2, 2]));
            t.node("Slice", &[&x, &starts, &ends, &axes, &steps], vec![])
        });
        check(&["x"], |t| {
            let x = t.input("x", &[4, 5]);
            let (starts, ends, axes) = (t.ints("starts", &[-1]), t.ints("ends", &[-6]), t.ints("axes", &[0]));
            let steps = t.ints("steps", &[-1]);
            t.node("Slice", &[&x, &starts, &ends, &axes, &steps], vec![])
        });
    }

    #[test]
    fn scatter_nd_as_in_a_beta_unit() {
        // Replacement filters 1 and 3 merged into a kernel, then convolved.
        check(&["x", "kernel", "replacement"], |t| {
            let x = t.input("x", &[2, 3, 5, 5]);
            let (kernel, replacement) = (t.param("kernel", &[4, 3, 3, 3]), t.param("replacement", &[2, 3, 3, 3]));
            let blamed = t.int_tensor("blamed", &[2, 1], &[1, 3]);
            let merged = t.node("ScatterND", &[&kernel, &blamed, &replacement], vec![]);
            t.node("Conv", &[&x, &merged], vec![ints("pads", &[1, 1, 1, 1])])
        });
    }

    #[test]
    fn pads_in_every_mode() {
        for mode in ["constant", "edge", "reflect"] {
            check(&["x"], |t| {
                let x = t.input("x", &[2, 3, 4, 5]);
                let pads = t.ints("pads", &[0, 1, 2, 0, 0, 0, 1, 3]);
                t.node("Pad", &[&x, &pads], vec![string("mode", mode)])
            });
        }
        check_opset(10, &["x"], |t| {
            let x = t.input("x", &[2, 3]);
            t.node("Pad", &[&x], vec![ints("pads", &[1, 0, 0, 2])])
        });
    }
}
