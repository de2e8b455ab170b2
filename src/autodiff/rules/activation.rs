//! Pointwise activations: Relu, LeakyRelu, Clip, Sigmoid, HardSigmoid, HardSwish. At a kink the
//! gradient is PyTorch's: the flat side (0 for Relu at 0, the inside of Clip's range only).

use super::{first, only, Builder, Ctx, Differentiable, Registry};
use crate::error::Result;
use crate::onnx::graph::attribute;

pub(super) fn register(registry: &mut Registry) {
    let x = Differentiable::Only(&[0]);
    registry.insert("Relu", x, relu);
    registry.insert("LeakyRelu", x, leaky_relu);
    registry.insert("Clip", x, clip);
    registry.insert("Sigmoid", x, sigmoid);
    registry.insert("HardSigmoid", x, hard_sigmoid);
    registry.insert("HardSwish", x, hard_swish);
}

fn float_attr(ctx: &Ctx, name: &str, default: f32) -> f64 {
    f64::from(attribute(ctx.node, name).and_then(|a| a.f).unwrap_or(default))
}

/// `dy` where `x > 0`, zero elsewhere.
fn relu(ctx: &Ctx, b: &mut Builder, dy: &[Option<String>], _: &[bool]) -> Result<Vec<Option<String>>> {
    let (dy, dtype) = (first(ctx, dy)?, ctx.float_type());
    let zero = b.scalar(dtype, 0.0)?;
    let positive = b.op("Greater", &[ctx.input(0), &zero], vec![]);
    Ok(only(ctx.node.input.len(), 0, b.where_or_zero(&positive, &dy, dtype)?))
}

/// `dy` where `x > 0`, `alpha · dy` elsewhere.
fn leaky_relu(ctx: &Ctx, b: &mut Builder, dy: &[Option<String>], _: &[bool]) -> Result<Vec<Option<String>>> {
    let (dy, dtype) = (first(ctx, dy)?, ctx.float_type());
    let zero = b.scalar(dtype, 0.0)?;
    let positive = b.op("Greater", &[ctx.input(0), &zero], vec![]);
    let leaked = b.scale(&dy, float_attr(ctx, "alpha", 0.01), dtype)?;
    Ok(only(1, 0, b.op("Where", &[&positive, &dy, &leaked], vec![])))
}

/// `dy` strictly inside `(min, max)`: the bounds are inputs from opset 11 on, attributes before.
fn clip(ctx: &Ctx, b: &mut Builder, dy: &[Option<String>], _: &[bool]) -> Result<Vec<Option<String>>> {
    let (dy, dtype) = (first(ctx, dy)?, ctx.float_type());
    let bound = |b: &mut Builder, index: usize, name: &str| -> Result<Option<String>> {
        match ctx.node.input.get(index).filter(|n| !n.is_empty()) {
            Some(input) => Ok(Some(input.clone())),
            None => match attribute(ctx.node, name).and_then(|a| a.f) {
                Some(value) => Ok(Some(b.scalar(dtype, f64::from(value))?)),
                None => Ok(None),
            },
        }
    };
    let x = ctx.input(0);
    let above = bound(b, 1, "min")?.map(|min| b.op("Greater", &[x, &min], vec![]));
    let below = bound(b, 2, "max")?.map(|max| b.op("Less", &[x, &max], vec![]));
    let inside = match (above, below) {
        (Some(above), Some(below)) => Some(b.op("And", &[&above, &below], vec![])),
        (one, other) => one.or(other),
    };
    let dx = match inside {
        Some(inside) => b.where_or_zero(&inside, &dy, dtype)?,
        None => dy,
    };
    Ok(only(ctx.node.input.len(), 0, dx))
}

/// `dy · y · (1 − y)`.
fn sigmoid(ctx: &Ctx, b: &mut Builder, dy: &[Option<String>], _: &[bool]) -> Result<Vec<Option<String>>> {
    let (dy, y) = (first(ctx, dy)?, ctx.output(0));
    let one = b.scalar(ctx.float_type(), 1.0)?;
    let complement = b.op("Sub", &[&one, y], vec![]);
    let slope = b.op("Mul", &[y, &complement], vec![]);
    Ok(only(1, 0, b.op("Mul", &[&dy, &slope], vec![])))
}

/// `alpha · dy` where the output is strictly between 0 and 1.
fn hard_sigmoid(ctx: &Ctx, b: &mut Builder, dy: &[Option<String>], _: &[bool]) -> Result<Vec<Option<String>>> {
    let (dy, y, dtype) = (first(ctx, dy)?, ctx.output(0), ctx.float_type());
    let (zero, one) = (b.scalar(dtype, 0.0)?, b.scalar(dtype, 1.0)?);
    let above = b.op("Greater", &[y, &zero], vec![]);
    let below = b.op("Less", &[y, &one], vec![]);
    let inside = b.op("And", &[&above, &below], vec![]);
    let scaled = b.scale(&dy, float_attr(ctx, "alpha", 0.2), dtype)?;
    Ok(only(1, 0, b.where_or_zero(&inside, &scaled, dtype)?))
}

/// `y = x · clip(x/6 + 1/2, 0, 1)`: slope 0 below −3, `x/3 + 1/2` up to 3, 1 above (PyTorch's
/// hardswish_backward).
fn hard_swish(ctx: &Ctx, b: &mut Builder, dy: &[Option<String>], _: &[bool]) -> Result<Vec<Option<String>>> {
    let (dy, x, dtype) = (first(ctx, dy)?, ctx.input(0), ctx.float_type());
    let (three, minus_three, half, one) =
        (b.scalar(dtype, 3.0)?, b.scalar(dtype, -3.0)?, b.scalar(dtype, 0.5)?, b.scalar(dtype, 1.0)?);
    let third = b.scale(x, 1.0 / 3.0, dtype)?;
    let ramp = b.op("Add", &[&third, &half], vec![]);
    let high = b.op("Greater", &[x, &three], vec![]);
    let upper = b.op("Where", &[&high, &one, &ramp], vec![]);
    let low = b.op("Less", &[x, &minus_three], vec![]);
    let zero = b.scalar(dtype, 0.0)?;
    let slope = b.op("Where", &[&low, &zero, &upper], vec![]);
    Ok(only(1, 0, b.op("Mul", &[&dy, &slope], vec![])))
}

#[cfg(test)]
mod tests {
    use crate::autodiff::testing::{check, check_opset, float};

    #[test]
    fn relu_and_leaky_relu() {
        check(&["x"], |t| {
            let x = t.input("x", &[2, 3, 4]);
            t.node("Relu", &[&x], vec![])
        });
        check(&["x"], |t| {
            let x = t.input("x", &[2, 5]);
            t.node("LeakyRelu", &[&x], vec![float("alpha", 0.3)])
        });
    }

    #[test]
    fn clip_with_inputs_and_attributes() {
        check(&["x"], |t| {
            let x = t.scaled_input("x", &[3, 8], 4.0);
            let (low, high) = (t.scalar("low", -1.5), t.scalar("high", 2.0));
            t.node("Clip", &[&x, &low, &high], vec![])
        });
        check(&["x"], |t| {
            let x = t.scaled_input("x", &[3, 8], 8.0);
            let high = t.scalar("six", 6.0);
            t.node("Clip", &[&x, "", &high], vec![])
        });
        check_opset(10, &["x"], |t| {
            let x = t.scaled_input("x", &[3, 8], 4.0);
            t.node("Clip", &[&x], vec![float("min", -1.0), float("max", 0.5)])
        });
    }

    #[test]
    fn sigmoid_family() {
        check(&["x"], |t| {
            let x = t.scaled_input("x", &[4, 6], 3.0);
            t.node("Sigmoid", &[&x], vec![])
        });
        check(&["x"], |t| {
            let x = t.scaled_input("x", &[4, 6], 4.0);
            t.node("HardSigmoid", &[&x], vec![float("alpha", 0.3), float("beta", 0.4)])
        });
        check(&["x"], |t| {
            let x = t.scaled_input("x", &[4, 8], 5.0);
            t.node("HardSwish", &[&x], vec![])
        });
    }
}
