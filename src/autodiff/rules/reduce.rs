//! Reductions: ReduceSum, ReduceMean and GlobalAveragePool. The gradient is the output gradient
//! broadcast back over the reduced axes (divided by their element count for the means).

use super::{first, only, Builder, Ctx, Differentiable, Registry};
use crate::analysis::facts::reduced_axes;
use crate::error::Result;
use crate::onnx::graph::attr_int;

pub(super) fn register(registry: &mut Registry) {
    let x = Differentiable::Only(&[0]);
    registry.insert("ReduceSum", x, reduce);
    registry.insert("ReduceMean", x, reduce);
    registry.insert("GlobalAveragePool", x, global_average_pool);
}

/// The axes come from input 1 (ReduceSum from opset 13, ReduceMean from 18) or the attribute.
fn reduce(ctx: &Ctx, b: &mut Builder, dy: &[Option<String>], _: &[bool]) -> Result<Vec<Option<String>>> {
    let rank = ctx.rank(ctx.input(0))?;
    let axes = ctx.facts.axes(ctx.node).ok_or_else(|| ctx.error("the axes must be constants"))?;
    let noop = attr_int(ctx.node, "noop_with_empty_axes", 0) != 0;
    let axes = reduced_axes(&axes, rank, noop).ok_or_else(|| ctx.error("axes out of range"))?;
    let keepdims = attr_int(ctx.node, "keepdims", 1) != 0;
    spread(ctx, b, &first(ctx, dy)?, &axes, keepdims, ctx.op() == "ReduceMean")
}

fn global_average_pool(ctx: &Ctx, b: &mut Builder, dy: &[Option<String>], _: &[bool]) -> Result<Vec<Option<String>>> {
    let rank = ctx.rank(ctx.input(0))?;
    let axes: Vec<usize> = (2..rank).collect();
    spread(ctx, b, &first(ctx, dy)?, &axes, true, true)
}

/// Broadcasts `dy` back over `axes` of the input, divided by their element count for a mean.
fn spread(
    ctx: &Ctx,
    b: &mut Builder,
    dy: &str,
    axes: &[usize],
    keepdims: bool,
    mean: bool,
) -> Result<Vec<Option<String>>> {
    let x = ctx.input(0);
    let count = ctx.node.input.len();
    if axes.is_empty() {
        return Ok(only(count, 0, dy.to_string()));
    }
    let kept = if keepdims { dy.to_string() } else { b.unsqueeze(dy, axes) };
    let scaled = if mean {
        let shape = ctx.shape(x)?;
        let size = axes.iter().try_fold(1i64, |n, &a| n.checked_mul(shape.get(a)?.value()?));
        let size = size.ok_or_else(|| ctx.error("the reduced axes must be static"))?;
        b.scale(&kept, 1.0 / size as f64, ctx.float_type())?
    } else {
        kept
    };
    let shape = b.shape(x);
    Ok(only(count, 0, b.op("Expand", &[&scaled, &shape], vec![])))
}

#[cfg(test)]
mod tests {
    use crate::autodiff::emit::{int, ints};
    use crate::autodiff::testing::{check, check_opset};

    #[test]
    fn reduce_mean_and_sum_across_opsets() {
        check(&["x"], |t| {
            let x = t.input("x", &[2, 3, 4]);
            t.node("ReduceMean", &[&x], vec![ints("axes", &[-1, 0]), int("keepdims", 0)])
        });
        check_opset(18, &["x"], |t| {
            let x = t.input("x", &[2, 3, 4]);
            let axes = t.ints("axes", &[1]);
            t.node("ReduceMean", &[&x, &axes], vec![])
        });
        check(&["x"], |t| {
            let x = t.input("x", &[2, 3, 4]);
            let axes = t.ints("axes", &[2, 1]);
            t.node("ReduceSum", &[&x, &axes], vec![int("keepdims", 0)])
        });
        check_opset(11, &["x"], |t| {
            let x = t.input("x", &[2, 3, 4]);
            t.node("ReduceSum", &[&x], vec![])
        });
    }

    #[test]
    fn global_average_pool() {
        check(&["x"], |t| {
            let x = t.input("x", &[2, 3, 4, 5]);
            t.node("GlobalAveragePool", &[&x], vec![])
        });
    }
}
