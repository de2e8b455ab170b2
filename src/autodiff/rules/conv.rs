//! Conv with groups, strides, dilations, explicit or automatic pads and a bias. The input gradient
//! is a ConvTranspose with the forward geometry; the weight gradient is a grouped Conv that
//! correlates the input with the output gradient, with the batch as the reduction channel.

use super::{first, Builder, Ctx, Differentiable, Registry};
use crate::autodiff::emit::{int, ints};
use crate::autodiff::geometry::Window;
use crate::error::Result;
use crate::onnx::graph::{attr_int, attr_ints};

pub(super) fn register(registry: &mut Registry) {
    registry.insert("Conv", Differentiable::Only(&[0, 1, 2]), conv);
}

/// Sends `g`, shaped like a window operator's output, back to the input positions of the windows:
/// a ConvTranspose with the forward geometry and `weight` ([channels of g, outputs per group,
/// *kernel]). Its end pads and output padding are chosen so that the result has exactly the input's
/// spatial size, the positions no window reached (a stride's remainder) included.
pub(super) fn scatter(ctx: &Ctx, b: &mut Builder, g: &str, weight: &str, group: i64, window: &Window) -> Result<String> {
    let rank = window.input.len();
    let (mut end, mut output_padding) = (vec![0; rank], vec![0; rank]);
    for axis in 0..rank {
        let reach = (window.output[axis] - 1) * window.strides[axis] + window.extent(axis);
        let (begin, size) = (window.begin[axis], window.input[axis]);
        if begin > reach {
            return Err(ctx.error("pads larger than the windows' reach"));
        }
        if reach - begin >= size {
            end[axis] = reach - begin - size;
        } else {
            output_padding[axis] = begin + size - reach;
        }
    }
    let mut attributes = vec![
        ints("strides", &window.strides),
        ints("dilations", &window.dilations),
        ints("pads", &[window.begin.as_slice(), &end].concat()),
        int("group", group),
    ];
    if output_padding.iter().any(|&p| p > 0) {
        attributes.push(ints("output_padding", &output_padding));
    }
    Ok(b.op("ConvTranspose", &[g, weight], attributes))
}

fn conv(ctx: &Ctx, b: &mut Builder, dy: &[Option<String>], wanted: &[bool]) -> Result<Vec<Option<String>>> {
    let dy = first(ctx, dy)?;
    let (x, w) = (ctx.input(0), ctx.input(1));
    let rank = ctx.rank(x)?;
    if rank < 3 {
        return Err(ctx.error("the input needs a batch, a channel and a spatial axis"));
    }
    let spatial = ctx.dims(x, 2..rank)?;
    let weight = ctx.dims(w, 0..rank)?;
    let kernel = &weight[2..];
    if !attr_ints(ctx.node, "kernel_shape").is_empty() && attr_ints(ctx.node, "kernel_shape") != kernel {
        return Err(ctx.error("kernel_shape differs from the weight's shape"));
    }
    let group = attr_int(ctx.node, "group", 1);
    let window = Window::new(ctx.node, &spatial, kernel).map_err(|m| ctx.error(m))?;
    let mut result = vec![None; ctx.node.input.len()];
    if wanted[0] {
        result[0] = Some(scatter(ctx, b, &dy, w, group, &window)?);
    }
    if wanted[1] {
        result[1] = Some(weight_gradient(ctx, b, &dy, group, &window, weight[0])?);
    }
    if wanted.get(2).copied().unwrap_or(false) {
        let others: Vec<usize> = std::iter::once(0).chain(2..rank).collect();
        result[2] = Some(b.reduce_sum(&dy, &others, false));
    }
    Ok(result)
}

/// dW[m, c, k] = Σ_n Σ_o dY[n, m, o] · X[n, g·C/G + c, o·s + k·d − pad]: a Conv whose "batch" is
/// the input channel within the group, whose channels are (group, sample) pairs and whose kernel is
/// dY with samples as input channels; strides and dilations swap roles. Its output can exceed the
/// kernel when the forward windows left a remainder; the excess is cut off.
fn weight_gradient(ctx: &Ctx, b: &mut Builder, dy: &str, group: i64, window: &Window, filters: i64) -> Result<String> {
    let x = ctx.input(0);
    let rank = window.input.len() + 2;
    let channels = ctx.dims(x, 1..2)?[0];
    if group < 1 || channels % group != 0 || filters % group != 0 {
        return Err(ctx.error(format!("group {group} does not divide {channels} channels and {filters} filters")));
    }
    let per_group = channels / group;
    let swap_first: Vec<usize> = [1, 0].into_iter().chain(2..rank).collect();
    let inputs = if group == 1 {
        b.transpose(x, &swap_first)
    } else {
        let split = b.reshape(x, &[&[0, group, per_group], window.input.as_slice()].concat());
        let perm: Vec<usize> = [2, 1, 0].into_iter().chain(3..rank + 1).collect();
        let moved = b.transpose(&split, &perm);
        b.reshape(&moved, &[&[per_group, -1], window.input.as_slice()].concat())
    };
    let kernel = b.transpose(dy, &swap_first);
    let attributes = vec![
        ints("strides", &window.dilations),
        ints("dilations", &window.strides),
        ints("pads", &[window.begin.as_slice(), &window.end].concat()),
        int("group", group),
    ];
    let correlation = b.op("Conv", &[&inputs, &kernel], attributes);
    let spatial = rank - 2;
    let reach: Vec<i64> = (0..spatial)
        .map(|a| {
            let span = window.input[a] + window.begin[a] + window.end[a] - ((window.output[a] - 1) * window.strides[a] + 1);
            span / window.dilations[a] + 1
        })
        .collect();
    let trimmed = if reach == window.kernel {
        correlation
    } else {
        let axes: Vec<usize> = (2..rank).collect();
        b.slice(&correlation, &vec![0; spatial], &window.kernel, &axes, &vec![1; spatial])?
    };
    Ok(b.transpose(&trimmed, &swap_first))
}

#[cfg(test)]
mod tests {
    use crate::autodiff::emit::{int, ints};
    use crate::autodiff::testing::{check, string};
    use crate::onnx::proto::AttributeProto;

    fn conv_case(x: &[usize], w: &[usize], bias: bool, attributes: Vec<AttributeProto>) {
        let wrt: &[&str] = if bias { &["x", "w", "b"] } else { &["x", "w"] };
        check(wrt, |t| {
            let input = t.input("x", x);
            let weight = t.param("w", w);
            let mut inputs = vec![input, weight];
            if bias {
                inputs.push(t.param("b", &w[..1]));
            }
            let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
            t.node("Conv", &inputs, attributes.clone())
        });
    }

    #[test]
    fn conv_plain_with_bias() {
        conv_case(&[2, 3, 6, 5], &[4, 3, 3, 3], true, vec![ints("pads", &[1, 1, 1, 1])]);
    }

    #[test]
    fn conv_grouped_strided_dilated_with_asymmetric_pads_and_a_remainder() {
        let attributes =
            vec![int("group", 2), ints("strides", &[2, 3]), ints("dilations", &[2, 1]), ints("pads", &[0, 1, 2, 0])];
        conv_case(&[2, 4, 10, 9], &[6, 2, 3, 2], true, attributes);
    }

    #[test]
    fn conv_depthwise_strided() {
        let attributes = vec![int("group", 4), ints("strides", &[2, 2]), ints("pads", &[1, 1, 1, 1])];
        conv_case(&[2, 4, 7, 7], &[4, 1, 3, 3], false, attributes);
        let multiplier = vec![int("group", 3), ints("kernel_shape", &[3, 3])];
        conv_case(&[1, 3, 5, 6], &[6, 1, 3, 3], true, multiplier);
    }

    #[test]
    fn conv_auto_pads() {
        for mode in ["SAME_UPPER", "SAME_LOWER", "VALID"] {
            let attributes = vec![string("auto_pad", mode), ints("strides", &[2, 2])];
            conv_case(&[2, 2, 7, 6], &[3, 2, 4, 3], false, attributes);
        }
    }

    #[test]
    fn conv_one_dimensional() {
        conv_case(&[2, 3, 11], &[2, 3, 3], true, vec![ints("strides", &[3]), ints("dilations", &[2]), ints("pads", &[2, 1])]);
    }
}
