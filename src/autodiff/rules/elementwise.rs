//! Broadcasting binary arithmetic (Add, Sub, Mul, Div) and Where: each operand's gradient is summed
//! over the axes along which it was broadcast.

use super::{first, set, unbroadcast, Builder, Ctx, Differentiable, Registry};
use crate::error::Result;

pub(super) fn register(registry: &mut Registry) {
    let both = Differentiable::Only(&[0, 1]);
    registry.insert("Add", both, add_sub);
    registry.insert("Sub", both, add_sub);
    registry.insert("Mul", both, mul);
    registry.insert("Div", both, div);
    registry.insert("Where", Differentiable::Only(&[1, 2]), select);
}

/// Sums `g` (shaped like the output) back to the shape of input `i`.
fn to_input(ctx: &Ctx, b: &mut Builder, g: &str, i: usize) -> Result<String> {
    let (out, target) = (ctx.shape(ctx.output(0))?, ctx.input(i));
    unbroadcast(ctx, b, g, out, target, ctx.shape(target)?)
}

/// Computes the gradient of every wanted input with `local(b, i)` (in the output's shape), then
/// sums it back to that input's shape.
fn per_input(
    ctx: &Ctx,
    b: &mut Builder,
    wanted: &[bool],
    mut local: impl FnMut(&mut Builder, usize) -> Result<String>,
) -> Result<Vec<Option<String>>> {
    let mut result = vec![None; ctx.node.input.len()];
    for (i, _) in wanted.iter().enumerate().filter(|(_, &w)| w) {
        let g = local(b, i)?;
        set(&mut result, i, to_input(ctx, b, &g, i)?);
    }
    Ok(result)
}

fn add_sub(ctx: &Ctx, b: &mut Builder, dy: &[Option<String>], wanted: &[bool]) -> Result<Vec<Option<String>>> {
    let dy = first(ctx, dy)?;
    let negate = ctx.op() == "Sub";
    per_input(ctx, b, wanted, |b, i| Ok(if i == 1 && negate { b.op("Neg", &[&dy], vec![]) } else { dy.clone() }))
}

/// d(a·b)/da = b and d(a·b)/db = a.
fn mul(ctx: &Ctx, b: &mut Builder, dy: &[Option<String>], wanted: &[bool]) -> Result<Vec<Option<String>>> {
    let dy = first(ctx, dy)?;
    per_input(ctx, b, wanted, |b, i| {
        let other = if i == 0 { ctx.input(1) } else { ctx.input(0) };
        Ok(b.op("Mul", &[&dy, other], vec![]))
    })
}

/// d(a/b)/da = 1/b and d(a/b)/db = −(a/b)/b.
fn div(ctx: &Ctx, b: &mut Builder, dy: &[Option<String>], wanted: &[bool]) -> Result<Vec<Option<String>>> {
    let dy = first(ctx, dy)?;
    let denominator = ctx.input(1);
    per_input(ctx, b, wanted, |b, i| {
        if i == 0 {
            return Ok(b.op("Div", &[&dy, denominator], vec![]));
        }
        let scaled = b.op("Mul", &[&dy, ctx.output(0)], vec![]);
        let quotient = b.op("Div", &[&scaled, denominator], vec![]);
        Ok(b.op("Neg", &[&quotient], vec![]))
    })
}

/// `Where(c, a, b)`: `dy` goes to `a` where `c` holds, to `b` elsewhere.
fn select(ctx: &Ctx, b: &mut Builder, dy: &[Option<String>], wanted: &[bool]) -> Result<Vec<Option<String>>> {
    let (dy, dtype) = (first(ctx, dy)?, ctx.float_type());
    let condition = ctx.input(0);
    per_input(ctx, b, wanted, |b, i| {
        let zero = b.scalar(dtype, 0.0)?;
        let branches = if i == 1 { [dy.as_str(), zero.as_str()] } else { [zero.as_str(), dy.as_str()] };
        Ok(b.op("Where", &[condition, branches[0], branches[1]], vec![]))
    })
}

#[cfg(test)]
mod tests {
    use crate::autodiff::testing::check;

    #[test]
    fn add_and_sub_with_broadcasting() {
        check(&["a", "b"], |t| {
            let a = t.input("a", &[2, 3, 4, 5]);
            let b = t.param("b", &[3, 1, 1]);
            t.node("Add", &[&a, &b], vec![])
        });
        check(&["a", "b"], |t| {
            let a = t.param("a", &[4, 1]);
            let b = t.input("b", &[2, 1, 5]);
            t.node("Sub", &[&a, &b], vec![])
        });
    }

    #[test]
    fn mul_and_div_with_broadcasting() {
        check(&["a", "b"], |t| {
            let a = t.input("a", &[2, 3, 4]);
            let b = t.param("b", &[4]);
            t.node("Mul", &[&a, &b], vec![])
        });
        check(&["a", "b"], |t| {
            let a = t.input("a", &[2, 1, 4]);
            let b = t.positive_param("b", &[3, 1]);
            t.node("Div", &[&a, &b], vec![])
        });
        // The same value on both sides: the two contributions are summed.
        check(&["a"], |t| {
            let a = t.input("a", &[3, 4]);
            t.node("Mul", &[&a, &a], vec![])
        });
    }

    #[test]
    fn where_routes_the_gradient() {
        check(&["a", "b"], |t| {
            let a = t.input("a", &[2, 3, 4]);
            let b = t.param("b", &[3, 1]);
            let zero = t.scalar("zero", 0.0);
            let condition = t.node("Greater", &[&a, &zero], vec![]);
            t.node("Where", &[&condition, &a, &b], vec![])
        });
    }
}
