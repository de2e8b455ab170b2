//! Conv with groups, strides, dilations, explicit or automatic pads and a bias. The input gradient
//! is a Conv with the flipped kernel (unit strides) or a ConvTranspose with the forward geometry;
//! the weight gradient is one matrix product per kernel tap between the output gradient and the
//! input positions the tap reads.

use super::{first, Builder, Ctx, Differentiable, Registry};
use crate::autodiff::emit::{int, ints};
use crate::autodiff::geometry::{grid, Window};
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
    let channels = ctx.dims(x, 1..2)?[0];
    let filters = weight[0];
    if group < 1 || channels % group != 0 || filters % group != 0 {
        return Err(ctx.error(format!("group {group} does not divide {channels} channels and {filters} filters")));
    }
    let window = Window::new(ctx.node, &spatial, kernel).map_err(|m| ctx.error(m))?;
    let grouping = Grouping { groups: group, channels: channels / group, filters: filters / group };
    let mut result = vec![None; ctx.node.input.len()];
    if wanted[0] {
        result[0] = Some(input_gradient(ctx, b, &dy, &grouping, &window)?);
    }
    if wanted[1] {
        result[1] = Some(weight_gradient(ctx, b, &dy, &grouping, &window)?);
    }
    if wanted.get(2).copied().unwrap_or(false) {
        let others: Vec<usize> = std::iter::once(0).chain(2..rank).collect();
        result[2] = Some(b.reduce_sum(&dy, &others, false));
    }
    Ok(result)
}

/// Groups, and input channels and filters per group.
struct Grouping {
    groups: i64,
    channels: i64,
    filters: i64,
}

/// dX. With unit strides and pads within the kernel's reach this is a plain Conv of the output
/// gradient with the kernel flipped in space and its channel axes swapped per group (runtimes
/// execute Conv several times faster than ConvTranspose); otherwise a ConvTranspose.
fn input_gradient(ctx: &Ctx, b: &mut Builder, dy: &str, grouping: &Grouping, window: &Window) -> Result<String> {
    let w = ctx.input(1);
    let spatial = window.input.len();
    let reach: Vec<i64> = (0..spatial).map(|a| window.extent(a) - 1).collect();
    let correlates =
        window.strides.iter().all(|&s| s == 1) && (0..spatial).all(|a| window.begin[a] <= reach[a] && window.end[a] <= reach[a]);
    if !correlates {
        return scatter(ctx, b, dy, w, grouping.groups, window);
    }
    let Grouping { groups, channels, filters } = *grouping;
    let split = b.reshape(w, &[&[groups, filters, channels], window.kernel.as_slice()].concat());
    let perm: Vec<usize> = [0, 2, 1].into_iter().chain(3..spatial + 3).collect();
    let swapped = b.transpose(&split, &perm);
    let regrouped = b.reshape(&swapped, &[&[groups * channels, filters], window.kernel.as_slice()].concat());
    let axes: Vec<usize> = (2..spatial + 2).collect();
    let flipped = b.slice(&regrouped, &vec![-1; spatial], &vec![i64::MIN; spatial], &axes, &vec![-1; spatial])?;
    let pads: Vec<i64> = (0..spatial).map(|a| reach[a] - window.begin[a]).chain((0..spatial).map(|a| reach[a] - window.end[a])).collect();
    let attributes = vec![ints("dilations", &window.dilations), ints("pads", &pads), int("group", groups)];
    Ok(b.op("Conv", &[dy, &flipped], attributes))
}

/// dW[m, c, k] = Σ_n Σ_o dY[n, m, o] · Xpad[n, g·C/G + c, o·s + k·d]: for each kernel tap k, one
/// matrix product per group over the N·|positions| terms, between the output gradient and the
/// input positions the tap reads. Those pairs are lined up in one of two ways, whichever copies
/// fewer elements per tap: slicing the (channels-last) padded input at the tap, or, with unit
/// strides, shifting the output gradient by the tap inside a canvas the size of the padded input
/// (cheaper when few filters train). Dense products run several times faster on the runtimes than
/// a convolution whose kernel would be the output gradient.
fn weight_gradient(ctx: &Ctx, b: &mut Builder, dy: &str, grouping: &Grouping, window: &Window) -> Result<String> {
    let x = ctx.input(0);
    let Grouping { groups, channels, filters } = *grouping;
    let spatial = window.input.len();
    let rank = spatial + 2;
    let padded_size: Vec<i64> = (0..spatial).map(|a| window.input[a] + window.begin[a] + window.end[a]).collect();
    // The padded input as [G, N, *padded, C/G] and the output gradient as [G, M/G, N, *output].
    let pads = [&[0, 0], window.begin.as_slice(), &[0, 0], window.end.as_slice()].concat();
    let padded = b.pad(x, &pads);
    let split = b.reshape(&padded, &[&[0, groups, channels], padded_size.as_slice()].concat());
    let perm: Vec<usize> = [1, 0].into_iter().chain(3..rank + 1).chain([2]).collect();
    let inputs = b.transpose(&split, &perm);
    let split = b.reshape(dy, &[&[0, groups, filters], window.output.as_slice()].concat());
    let perm: Vec<usize> = [1, 2, 0].into_iter().chain(3..rank + 1).collect();
    let gradient = b.transpose(&split, &perm);

    let shift_gradient = window.strides.iter().all(|&s| s == 1)
        && filters * padded_size.iter().product::<i64>() < channels * window.output.iter().product::<i64>();
    let (whole_gradient, whole_inputs) = if shift_gradient {
        (None, Some(b.reshape(&inputs, &[groups, -1, channels])))
    } else {
        (Some(b.reshape(&gradient, &[groups, filters, -1])), None)
    };
    let mut products = Vec::new();
    for tap in grid(&window.kernel) {
        let starts: Vec<i64> = (0..spatial).map(|a| tap[a] * window.dilations[a]).collect();
        let left = match &whole_gradient {
            Some(whole) => whole.clone(),
            None => {
                let mut pads = vec![0; 2 * (rank + 1)];
                for a in 0..spatial {
                    pads[a + 3] = starts[a];
                    pads[rank + 1 + a + 3] = padded_size[a] - starts[a] - window.output[a];
                }
                let shifted = b.pad(&gradient, &pads);
                b.reshape(&shifted, &[groups, filters, -1])
            }
        };
        let right = match &whole_inputs {
            Some(whole) => whole.clone(),
            None => {
                let ends: Vec<i64> = (0..spatial).map(|a| starts[a] + (window.output[a] - 1) * window.strides[a] + 1).collect();
                let axes: Vec<usize> = (2..rank).collect();
                let read = b.slice(&inputs, &starts, &ends, &axes, &window.strides)?;
                b.reshape(&read, &[groups, -1, channels])
            }
        };
        let product = b.op("MatMul", &[&left, &right], vec![]);
        products.push(b.unsqueeze(&product, &[3]));
    }
    let products: Vec<&str> = products.iter().map(String::as_str).collect();
    let taps = if products.len() == 1 { products[0].to_string() } else { b.op("Concat", &products, vec![int("axis", 3)]) };
    // [G, M/G, C/G, taps] is [M, C/G, *kernel] in row-major order.
    Ok(b.reshape(&taps, &[&[groups * filters, channels], window.kernel.as_slice()].concat()))
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
    fn conv_unit_stride_as_a_flipped_correlation() {
        // Grouped and dilated with asymmetric pads: the Conv form of the input gradient.
        let attributes = vec![int("group", 2), ints("dilations", &[2, 1]), ints("pads", &[2, 0, 1, 1])];
        conv_case(&[2, 4, 7, 6], &[6, 2, 3, 2], true, attributes);
        // Pads beyond the kernel's reach fall back to ConvTranspose.
        conv_case(&[1, 2, 5, 5], &[3, 2, 2, 2], false, vec![ints("pads", &[2, 0, 0, 3])]);
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
