//! BatchNormalization in inference mode: y = scale · (x − mean) / √(var + ε) + B, per channel
//! (axis 1), with the running statistics as constants of the computation. Training mode (batch
//! statistics) is refused.

use super::{first, set, wants, Builder, Ctx, Differentiable, Registry};
use crate::error::Result;
use crate::onnx::graph::{attr_int, attribute};

pub(super) fn register(registry: &mut Registry) {
    registry.insert("BatchNormalization", Differentiable::Only(&[0, 1, 2, 3, 4]), batch_norm);
}

fn batch_norm(ctx: &Ctx, b: &mut Builder, dy: &[Option<String>], wanted: &[bool]) -> Result<Vec<Option<String>>> {
    let statistics_used = ctx.node.output.iter().skip(1).any(|o| !o.is_empty());
    if attr_int(ctx.node, "training_mode", 0) != 0 || statistics_used {
        return Err(ctx.error("only BatchNormalization in inference mode has a gradient rule"));
    }
    let dy = first(ctx, dy)?;
    let dtype = ctx.float_type();
    let rank = ctx.rank(ctx.input(0))?;
    let spatial = rank.checked_sub(2).ok_or_else(|| ctx.error("the input needs a channel axis"))?;
    let [x, scale, _, mean, var] = [0, 1, 2, 3, 4].map(|i| ctx.input(i));
    let epsilon = attribute(ctx.node, "epsilon").and_then(|a| a.f).unwrap_or(1e-5);
    // Per-channel vectors reshaped to [C, 1, …] broadcast against [N, C, …].
    let channel_shape: Vec<i64> = std::iter::once(-1).chain(std::iter::repeat_n(1, spatial)).collect();
    let per_channel = |b: &mut Builder, v: &str| b.reshape(v, &channel_shape);
    let others: Vec<usize> = std::iter::once(0).chain(2..rank).collect();

    let epsilon = b.scalar(dtype, f64::from(epsilon))?;
    let shifted = b.op("Add", &[var, &epsilon], vec![]);
    let deviation = b.op("Sqrt", &[&shifted], vec![]);
    let inverse = b.op("Reciprocal", &[&deviation], vec![]);
    let gain = b.op("Mul", &[scale, &inverse], vec![]);
    let total = (wants(wanted, 2) || wants(wanted, 3)).then(|| b.reduce_sum(&dy, &others, false));
    // Σ dy · (x − mean), shared by the scale and variance gradients.
    let moment = (wants(wanted, 1) || wants(wanted, 4)).then(|| {
        let centre = per_channel(b, mean);
        let centred = b.op("Sub", &[x, &centre], vec![]);
        let weighted = b.op("Mul", &[&dy, &centred], vec![]);
        b.reduce_sum(&weighted, &others, false)
    });

    let mut result = vec![None; 5];
    if wants(wanted, 0) {
        let gain = per_channel(b, &gain);
        set(&mut result, 0, b.op("Mul", &[&dy, &gain], vec![]));
    }
    if let Some(moment) = &moment {
        if wants(wanted, 1) {
            set(&mut result, 1, b.op("Mul", &[moment, &inverse], vec![]));
        }
        if wants(wanted, 4) {
            // d/dvar (var + ε)^(-1/2) = −½ · inverse³.
            let squared = b.op("Mul", &[&inverse, &inverse], vec![]);
            let cubed = b.op("Mul", &[&squared, &inverse], vec![]);
            let slope = b.scale(&cubed, -0.5, dtype)?;
            let scaled = b.op("Mul", &[moment, scale], vec![]);
            set(&mut result, 4, b.op("Mul", &[&scaled, &slope], vec![]));
        }
    }
    if let Some(total) = total {
        if wants(wanted, 3) {
            let shifted = b.op("Mul", &[&total, &gain], vec![]);
            set(&mut result, 3, b.op("Neg", &[&shifted], vec![]));
        }
        if wants(wanted, 2) {
            set(&mut result, 2, total);
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use crate::autodiff::emit::float;
    use crate::autodiff::testing::{check, check_with, Runs};
    use crate::backend::BackendKind;

    #[test]
    fn batch_norm_inference_in_every_parameter() {
        // tract only runs BatchNormalization with constant parameters.
        check(&["x"], |t| {
            let x = t.input("x", &[2, 3, 4, 5]);
            let (scale, bias, mean) = (t.param("scale", &[3]), t.param("bias", &[3]), t.param("mean", &[3]));
            let var = t.positive_param("var", &[3]);
            t.node("BatchNormalization", &[&x, &scale, &bias, &mean, &var], vec![])
        });
        let ort_only = Runs { runtimes: &[BackendKind::Ort], ..Runs::default() };
        check_with(ort_only, &["x", "scale", "bias", "mean", "var"], |t| {
            let x = t.input("x", &[2, 3, 4, 5]);
            let (scale, bias, mean) = (t.param("scale", &[3]), t.param("bias", &[3]), t.param("mean", &[3]));
            let var = t.positive_param("var", &[3]);
            t.node("BatchNormalization", &[&x, &scale, &bias, &mean, &var], vec![float("epsilon", 1e-3)])
        });
        let ort_only = Runs { opset: 11, runtimes: &[BackendKind::Ort], ..Runs::default() };
        check_with(ort_only, &["x", "scale"], |t| {
            let x = t.input("x", &[4, 3]);
            let (scale, bias, mean) = (t.param("scale", &[3]), t.param("bias", &[3]), t.param("mean", &[3]));
            let var = t.positive_param("var", &[3]);
            t.node("BatchNormalization", &[&x, &scale, &bias, &mean, &var], vec![])
        });
    }
}
