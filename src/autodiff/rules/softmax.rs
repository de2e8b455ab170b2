//! Softmax and LogSoftmax. From opset 13 they normalise along `axis` (default −1); before, the
//! input is read as a matrix whose rows end at `axis` (default 1), i.e. over all axes from `axis`.

use super::{first, only, Builder, Ctx, Differentiable, Registry};
use crate::analysis::facts::normalize_axis;
use crate::error::Result;
use crate::onnx::graph::attr_int;

pub(super) fn register(registry: &mut Registry) {
    registry.insert("Softmax", Differentiable::Only(&[0]), softmax);
    registry.insert("LogSoftmax", Differentiable::Only(&[0]), softmax);
}

/// The axes one normalisation runs over.
fn normalised_axes(ctx: &Ctx) -> Result<Vec<usize>> {
    let rank = ctx.rank(ctx.input(0))?;
    let modern = ctx.facts.opset() >= 13;
    let axis = attr_int(ctx.node, "axis", if modern { -1 } else { 1 });
    let axis = normalize_axis(axis, rank).ok_or_else(|| ctx.error("axis out of range"))?;
    Ok(if modern { vec![axis] } else { (axis..rank).collect() })
}

/// Softmax: dx = y ⊙ (dy − Σ dy ⊙ y). LogSoftmax: dx = dy − exp(y) ⊙ Σ dy.
fn softmax(ctx: &Ctx, b: &mut Builder, dy: &[Option<String>], _: &[bool]) -> Result<Vec<Option<String>>> {
    let (dy, y) = (first(ctx, dy)?, ctx.output(0));
    let axes = normalised_axes(ctx)?;
    let dx = if ctx.op() == "Softmax" {
        let weighted = b.op("Mul", &[&dy, y], vec![]);
        let total = b.reduce_sum(&weighted, &axes, true);
        let centred = b.op("Sub", &[&dy, &total], vec![]);
        b.op("Mul", &[y, &centred], vec![])
    } else {
        let total = b.reduce_sum(&dy, &axes, true);
        let probabilities = b.op("Exp", &[y], vec![]);
        let spread = b.op("Mul", &[&probabilities, &total], vec![]);
        b.op("Sub", &[&dy, &spread], vec![])
    };
    Ok(only(1, 0, dx))
}

#[cfg(test)]
mod tests {
    use crate::autodiff::emit::int;
    use crate::autodiff::testing::{check, check_opset};

    #[test]
    fn softmax_and_log_softmax_across_opsets() {
        for op in ["Softmax", "LogSoftmax"] {
            check(&["x"], |t| {
                let x = t.input("x", &[2, 3, 4]);
                t.node(op, &[&x], vec![int("axis", 1)])
            });
            check_opset(11, &["x"], |t| {
                let x = t.input("x", &[2, 3, 4]);
                t.node(op, &[&x], vec![int("axis", 1)])
            });
        }
    }
}
