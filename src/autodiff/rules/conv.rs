//! Conv with groups, strides, dilations, explicit or automatic pads and a bias. The input gradient
//! is a Conv with the flipped kernel (unit strides) or a ConvTranspose with the forward geometry;
//! the weight gradient is a product between the output gradient and the input positions each kernel
//! tap reads (one for all taps when few filters train).

use super::{first, Builder, Ctx, Differentiable, Registry};
use crate::autodiff::emit::{int, ints};
use crate::analysis::geometry::{grid, Window};
use crate::error::Result;
use crate::onnx::graph::{attr_int, attr_ints};

pub(super) fn register(registry: &mut Registry) {
    registry.insert("Conv", Differentiable::Only(&[0, 1, 2]), conv);
}

/// Sends `g`, shaped like a window operator's output, back to the input positions of the windows:
/// a ConvTranspose with the forward geometry and `weight` ([channels of g, outputs per group,
/// *kernel]). Its end pads and output padding are chosen so that the result has exactly the input's
/// spatial size, the positions no window reached (a stride's remainder) included.
pub(super) fn scatter(
    ctx: &Ctx,
    b: &mut Builder,
    g: &str,
    weight: &str,
    group: i64,
    window: &Window,
) -> Result<String> {
    let rank = window.input.len();
    let (mut end, mut output_padding) = (vec![0; rank], vec![0; rank]);
    for axis in 0..rank {
        let reach = (window.output[axis] - 1) * window.strides[axis] + window.extent[axis];
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
        result[1] = Some(match ctx.needed_rows(1).filter(|_| group == 1) {
            // Only some filters train: their rows alone, scattered into zeros.
            Some(rows) => {
                let picked = b.ints(rows);
                let selected = b.op("Gather", &[&dy, &picked], vec![int("axis", 1)]);
                let only = Grouping { filters: rows.len() as i64, ..grouping };
                let rows_gradient = weight_gradient(ctx, b, &selected, &only, &window)?;
                let zeros = b.zeros_like(w, ctx.dtype(w))?;
                let positions = b.int64s(&[rows.len(), 1], rows);
                b.op("ScatterND", &[&zeros, &positions, &rows_gradient], vec![])
            }
            None => weight_gradient(ctx, b, &dy, &grouping, &window)?,
        });
    }
    if wanted.get(2).copied().unwrap_or(false) {
        let others: Vec<usize> = std::iter::once(0).chain(2..rank).collect();
        result[2] = Some(b.reduce_sum(&dy, &others, false));
    }
    Ok(result)
}

/// Groups, and input channels and filters per group.
#[derive(Clone, Copy)]
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
    let reach: Vec<i64> = (0..spatial).map(|a| window.extent[a] - 1).collect();
    let correlates = window.strides.iter().all(|&s| s == 1)
        && (0..spatial).all(|a| window.begin[a] <= reach[a] && window.end[a] <= reach[a]);
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
    let pads: Vec<i64> = (0..spatial)
        .map(|a| reach[a] - window.begin[a])
        .chain((0..spatial).map(|a| reach[a] - window.end[a]))
        .collect();
    let attributes = vec![ints("dilations", &window.dilations), ints("pads", &pads), int("group", groups)];
    Ok(b.op("Conv", &[dy, &flipped], attributes))
}

/// dW[m, c, k] = Σ_n Σ_o dY[n, m, o] · X[n, g·C/G + c, o·s + k·d − pad]: per group, products
/// between the output gradient and the input positions each kernel tap reads, summed over
/// (sample, position) pairs. Both operands are laid out channel-major ([G, channels, N, *spatial]),
/// a transpose that moves whole images and costs little, and every product is A·Bᵀ, so the input
/// is never transposed element by element. The pairs are lined up in whichever way copies fewer
/// elements:
/// - few filters (β units train a quarter of them): the output gradient is placed once, spread by
///   the strides, in a zero canvas; each tap takes a window of it the size of the input, the
///   windows are stacked, and one product against the whole input serves every tap;
/// - otherwise: per tap, both operands are sliced to the (sample, output position) pairs whose
///   input position lies inside the input.
///
/// Neither form feeds padded data into a product (which tract's optimiser splits into thousands
/// of pieces).
fn weight_gradient(ctx: &Ctx, b: &mut Builder, dy: &str, grouping: &Grouping, window: &Window) -> Result<String> {
    let Grouping { groups, channels, filters } = *grouping;
    let spatial = window.input.len();
    let inputs = channel_major(b, ctx.input(0), groups, channels, &window.input);
    let gradient = channel_major(b, dy, groups, filters, &window.output);
    let reach: Vec<i64> = (0..spatial).map(|a| window.extent[a] - 1 - window.begin[a]).collect();
    // Elements copied per tap: a canvas window of the output gradient, or both operands' slices.
    let (inputs_size, outputs_size) = (window.input.iter().product::<i64>(), window.output.iter().product::<i64>());
    let use_canvas = filters * inputs_size < (filters + channels) * outputs_size && reach.iter().all(|&r| r >= 0);
    let taps = grid(&window.kernel);
    let offsets = |tap: &[i64]| -> Vec<i64> { (0..spatial).map(|a| tap[a] * window.dilations[a] - window.begin[a]).collect() };
    // [G, taps, M/G, C/G]
    let products = if use_canvas {
        let (canvas, size) = gradient_canvas(ctx, b, &gradient, grouping, window, &reach)?;
        let mut windows = Vec::with_capacity(taps.len());
        for tap in &taps {
            // Input position i reads the canvas at i − offset + reach.
            let offsets = offsets(tap);
            let ranges: Vec<(i64, i64, i64)> =
                (0..spatial).map(|a| (reach[a] - offsets[a], reach[a] - offsets[a] + window.input[a], 1)).collect();
            windows.push(slice_ranges(b, &canvas, 3, &ranges, &size)?);
        }
        let windows: Vec<&str> = windows.iter().map(String::as_str).collect();
        let stacked = concat(b, &windows, 1);
        let rows = taps.len() as i64 * filters;
        let product = transposed_product(b, &stacked, &inputs, groups, rows, channels);
        b.reshape(&product, &[groups, taps.len() as i64, filters, channels])
    } else {
        let mut products = Vec::with_capacity(taps.len());
        for tap in &taps {
            let offsets = offsets(tap);
            // Per axis, the outputs [first, last] whose tap reads inside the input.
            let ranges: Vec<(i64, i64)> = (0..spatial)
                .map(|a| {
                    let stride = window.strides[a];
                    let first = ((-offsets[a]).max(0) + stride - 1) / stride;
                    let last = (window.output[a] - 1).min((window.input[a] - 1 - offsets[a]).div_euclid(stride));
                    (first, last)
                })
                .collect();
            let product = if ranges.iter().any(|(first, last)| first > last) {
                // The tap reads only padding.
                let zeros = vec![0.0; (groups * filters * channels) as usize];
                b.floats(ctx.float_type(), &[groups as usize, filters as usize, channels as usize], &zeros)?
            } else {
                let kept: Vec<(i64, i64, i64)> = ranges.iter().map(|&(f, l)| (f, l + 1, 1)).collect();
                let left = slice_ranges(b, &gradient, 3, &kept, &window.output)?;
                let reads: Vec<(i64, i64, i64)> = (0..spatial)
                    .map(|a| {
                        let (first, last) = ranges[a];
                        let stride = window.strides[a];
                        (first * stride + offsets[a], last * stride + offsets[a] + 1, stride)
                    })
                    .collect();
                let right = slice_ranges(b, &inputs, 3, &reads, &window.input)?;
                transposed_product(b, &left, &right, groups, filters, channels)
            };
            products.push(b.unsqueeze(&product, &[1]));
        }
        let products: Vec<&str> = products.iter().map(String::as_str).collect();
        concat(b, &products, 1)
    };
    let per_filter = b.transpose(&products, &[0, 2, 3, 1]);
    // [G, M/G, C/G, taps] is [M, C/G, *kernel] in row-major order.
    Ok(b.reshape(&per_filter, &[&[groups * filters, channels], window.kernel.as_slice()].concat()))
}

/// `x` [N, G·per_group, *spatial] as [G, per_group, N, *spatial]. One group swaps the first two
/// axes alone, which runtimes copy as whole images (an axis of size 1 in the permutation makes
/// onnxruntime copy element by element, ten times slower).
fn channel_major(b: &mut Builder, x: &str, groups: i64, per_group: i64, spatial: &[i64]) -> String {
    let rank = spatial.len() + 2;
    if groups == 1 {
        let perm: Vec<usize> = [1, 0].into_iter().chain(2..rank).collect();
        let swapped = b.transpose(x, &perm);
        return b.unsqueeze(&swapped, &[0]);
    }
    let split = b.reshape(x, &[&[0, groups, per_group], spatial].concat());
    let perm: Vec<usize> = [1, 2, 0].into_iter().chain(3..rank + 1).collect();
    b.transpose(&split, &perm)
}

/// Σ over the trailing axes of `left` [G, rows, …] times `right` [G, columns, …]: [G, rows, columns].
/// One group is a Gemm with the right operand transposed in the product itself; several groups
/// need a batched MatMul, whose right operand is transposed first.
fn transposed_product(b: &mut Builder, left: &str, right: &str, groups: i64, rows: i64, columns: i64) -> String {
    if groups == 1 {
        let left = b.reshape(left, &[rows, -1]);
        let right = b.reshape(right, &[columns, -1]);
        let product = b.op("Gemm", &[&left, &right], vec![int("transB", 1)]);
        b.reshape(&product, &[1, rows, columns])
    } else {
        let left = b.reshape(left, &[groups, rows, -1]);
        let right = b.reshape(right, &[groups, columns, -1]);
        let right = b.transpose(&right, &[0, 2, 1]);
        b.op("MatMul", &[&left, &right], vec![])
    }
}

/// `parts` joined on `axis`, or the single part itself.
fn concat(b: &mut Builder, parts: &[&str], axis: i64) -> String {
    if parts.len() == 1 {
        parts[0].to_string()
    } else {
        b.op("Concat", parts, vec![int("axis", axis)])
    }
}

/// The output gradient [G, M/G, N, *output] spread by the strides (element o at o · stride) and
/// padded with zeros so that every tap's view of the input lies inside: `reach` before, enough
/// after. Returns the canvas and its spatial size.
fn gradient_canvas(
    ctx: &Ctx,
    b: &mut Builder,
    gradient: &str,
    grouping: &Grouping,
    window: &Window,
    reach: &[i64],
) -> Result<(String, Vec<i64>)> {
    let spatial = window.input.len();
    let mut spread = gradient.to_string();
    let mut dims: Vec<Option<i64>> = [Some(grouping.groups), Some(grouping.filters), None]
        .into_iter()
        .chain(window.output.iter().map(|&o| Some(o)))
        .collect();
    for a in 0..spatial {
        if window.strides[a] > 1 {
            spread =
                crate::autodiff::emit::interleave(b, &spread, a + 3, window.strides[a], &dims, ctx.float_type()).map_err(|m| ctx.error(m))?;
            dims[a + 3] = Some((window.output[a] - 1) * window.strides[a] + 1);
        }
    }
    let mut pads = vec![0; 2 * (spatial + 3)];
    let mut size = Vec::with_capacity(spatial);
    for a in 0..spatial {
        let length = dims[a + 3].unwrap_or(0);
        // The last read: input position size − 1 for the tap with the smallest offset (−begin).
        let after = (window.input[a] + window.begin[a] - length).max(0);
        pads[a + 3] = reach[a];
        pads[spatial + 3 + a + 3] = after;
        size.push(reach[a] + length + after);
    }
    Ok((b.pad(&spread, &pads), size))
}

/// `x` sliced to `(start, end, step)` on the consecutive axes from `first_axis` (whose sizes are
/// `sizes`); axes taken whole are left out, and nothing is emitted when all are.
fn slice_ranges(b: &mut Builder, x: &str, first_axis: usize, ranges: &[(i64, i64, i64)], sizes: &[i64]) -> Result<String> {
    let cuts: Vec<(usize, (i64, i64, i64))> =
        ranges.iter().enumerate().filter(|&(a, &r)| r != (0, sizes[a], 1)).map(|(a, &r)| (first_axis + a, r)).collect();
    if cuts.is_empty() {
        return Ok(x.to_string());
    }
    let axes: Vec<usize> = cuts.iter().map(|c| c.0).collect();
    let starts: Vec<i64> = cuts.iter().map(|c| c.1 .0).collect();
    let ends: Vec<i64> = cuts.iter().map(|c| c.1 .1).collect();
    let steps: Vec<i64> = cuts.iter().map(|c| c.1 .2).collect();
    b.slice(x, &starts, &ends, &axes, &steps)
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
    fn conv_few_filters_over_many_channels() {
        // Fewer filters than channels: the weight gradient shifts a canvas of the output gradient.
        let attributes = vec![ints("strides", &[2, 3]), ints("dilations", &[1, 2]), ints("pads", &[1, 2, 0, 1])];
        conv_case(&[2, 9, 7, 8], &[2, 9, 3, 2], true, attributes);
        conv_case(&[2, 8, 5, 5], &[1, 8, 3, 3], false, vec![ints("pads", &[1, 1, 1, 1])]);
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
        conv_case(
            &[2, 3, 11],
            &[2, 3, 3],
            true,
            vec![ints("strides", &[3]), ints("dilations", &[2]), ints("pads", &[2, 1])],
        );
    }
}
