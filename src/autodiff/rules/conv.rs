//! Conv with groups, strides, dilations, explicit or automatic pads and a bias. The input gradient
//! is a Conv with the flipped kernel (unit strides) or a ConvTranspose with the forward geometry;
//! the weight gradient is a product between the output gradient and the input positions each kernel
//! tap reads (one for all taps when few filters train).

use super::{extents, first, product, set, wants, Builder, Ctx, Differentiable, Registry};
use crate::autodiff::emit::{int, ints};
use crate::analysis::geometry::{grid, Window};
use crate::error::{Error, Result};
use crate::onnx::graph::{attr_int, attr_ints};

pub(super) fn register(registry: &mut Registry) {
    registry.insert("Conv", Differentiable::Only(&[0, 1, 2]), conv);
}

/// The error for a position or size of the window geometry that overflows an i64.
fn position_overflow(ctx: &Ctx, window: &Window) -> Error {
    ctx.error(format!("input {:?} with kernel {:?}: a position overflows", window.input, window.kernel))
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
    let overflow = || position_overflow(ctx, window);
    let (mut end, mut output_padding) = (Vec::new(), Vec::new());
    for axis in window.axes() {
        let reach = axis.reach().ok_or_else(overflow)?;
        if axis.begin > reach {
            return Err(ctx.error("pads larger than the windows' reach"));
        }
        // The input positions the windows cover, against the input's size.
        let covered = reach.checked_sub(axis.begin).ok_or_else(overflow)?;
        let (cut, extra) = if covered >= axis.input {
            (covered.checked_sub(axis.input), Some(0))
        } else {
            (Some(0), axis.input.checked_sub(covered))
        };
        end.push(cut.ok_or_else(overflow)?);
        output_padding.push(extra.ok_or_else(overflow)?);
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
    let [filters, _, kernel @ ..] = weight.as_slice() else {
        return Err(ctx.error("the weight needs a filter and a channel axis"));
    };
    if !attr_ints(ctx.node, "kernel_shape").is_empty() && attr_ints(ctx.node, "kernel_shape") != kernel {
        return Err(ctx.error("kernel_shape differs from the weight's shape"));
    }
    let group = attr_int(ctx.node, "group", 1);
    let (channels, filters) = (ctx.dim(x, 1)?, *filters);
    let per_group = |n: i64| if group >= 1 && n.checked_rem(group) == Some(0) { n.checked_div(group) } else { None };
    let (Some(channels_per_group), Some(filters_per_group)) = (per_group(channels), per_group(filters)) else {
        return Err(ctx.error(format!("group {group} does not divide {channels} channels and {filters} filters")));
    };
    let window = Window::new(ctx.node, &spatial, kernel).map_err(|m| ctx.error(m))?;
    let grouping = Grouping { groups: group, channels: channels_per_group, filters: filters_per_group };
    let mut result = vec![None; ctx.node.input.len()];
    if wants(wanted, 0) {
        set(&mut result, 0, input_gradient(ctx, b, &dy, &grouping, &window)?);
    }
    if wants(wanted, 1) {
        let dw = match ctx.needed_rows(1).filter(|_| group == 1) {
            // Only some filters train: their rows alone, scattered into zeros.
            Some(rows) => {
                let picked = b.ints(rows);
                let selected = b.op("Gather", &[&dy, &picked], vec![int("axis", 1)]);
                let trained = i64::try_from(rows.len()).map_err(|_| ctx.error("too many trained filters"))?;
                let only = Grouping { filters: trained, ..grouping };
                let rows_gradient = weight_gradient(ctx, b, &selected, &only, &window)?;
                let zeros = b.zeros_like(w, ctx.dtype(w))?;
                let positions = b.int64s(&[rows.len(), 1], rows);
                b.op("ScatterND", &[&zeros, &positions, &rows_gradient], vec![])
            }
            None => weight_gradient(ctx, b, &dy, &grouping, &window)?,
        };
        set(&mut result, 1, dw);
    }
    if wants(wanted, 2) {
        let others: Vec<usize> = std::iter::once(0).chain(2..rank).collect();
        set(&mut result, 2, b.reduce_sum(&dy, &others, false));
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
    let axes = window.axes();
    // Pads within the kernel's reach: at most extent − 1.
    let correlates = axes.iter().all(|a| a.stride == 1 && a.begin < a.extent && a.end < a.extent);
    if !correlates {
        return scatter(ctx, b, dy, w, grouping.groups, window);
    }
    let overflow = || position_overflow(ctx, window);
    let spatial = axes.len();
    let Grouping { groups, channels, filters } = *grouping;
    let split = b.reshape(w, &[&[groups, filters, channels], window.kernel.as_slice()].concat());
    let perm: Vec<usize> = [0, 2, 1].into_iter().chain((3..).take(spatial)).collect();
    let swapped = b.transpose(&split, &perm);
    let regrouped_channels = groups.checked_mul(channels).ok_or_else(overflow)?;
    let regrouped = b.reshape(&swapped, &[&[regrouped_channels, filters], window.kernel.as_slice()].concat());
    let kernel_axes: Vec<usize> = (2..).take(spatial).collect();
    let flipped = b.slice(&regrouped, &vec![-1; spatial], &vec![i64::MIN; spatial], &kernel_axes, &vec![-1; spatial])?;
    // The flipped kernel's pads: its reach (extent − 1) less the forward pads.
    let pad = |forward: i64, extent: i64| extent.checked_sub(1)?.checked_sub(forward);
    let pads: Vec<i64> = axes
        .iter()
        .map(|a| pad(a.begin, a.extent))
        .chain(axes.iter().map(|a| pad(a.end, a.extent)))
        .collect::<Option<_>>()
        .ok_or_else(overflow)?;
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
    let overflow = || position_overflow(ctx, window);
    let axes = window.axes();
    let inputs = channel_major(b, ctx.input(0), groups, channels, &window.input);
    let gradient = channel_major(b, dy, groups, filters, &window.output);
    // Per axis, how far the kernel reaches past the begin pads: extent − 1 − begin.
    let reach: Vec<i64> =
        axes.iter().map(|a| a.extent.checked_sub(1)?.checked_sub(a.begin)).collect::<Option<_>>().ok_or_else(overflow)?;
    // Elements copied per tap: a canvas window of the output gradient, or both operands' slices.
    let volume = |sizes: &[i64]| sizes.iter().try_fold(1i64, |n, &s| n.checked_mul(s));
    let canvas_copies = volume(&window.input).and_then(|n| n.checked_mul(filters));
    let slice_copies = volume(&window.output).and_then(|n| n.checked_mul(filters.checked_add(channels)?));
    let (canvas_copies, slice_copies) = canvas_copies.zip(slice_copies).ok_or_else(overflow)?;
    let use_canvas = canvas_copies < slice_copies && reach.iter().all(|&r| r >= 0);
    let taps = grid(&window.kernel);
    let tap_count = i64::try_from(taps.len()).map_err(|_| overflow())?;
    // Per axis, the input position that a tap reads for output position 0: tap · dilation − begin.
    let tap_offsets = |tap: &[i64]| -> Result<Vec<i64>> {
        tap.iter()
            .zip(&axes)
            .map(|(&t, a)| t.checked_mul(a.dilation)?.checked_sub(a.begin))
            .collect::<Option<_>>()
            .ok_or_else(overflow)
    };
    // [G, taps, M/G, C/G]
    let products = if use_canvas {
        let (canvas, size) = gradient_canvas(ctx, b, &gradient, grouping, window, &reach)?;
        let mut windows = Vec::with_capacity(taps.len());
        for tap in &taps {
            // Input position i reads the canvas at i − offset + reach.
            let ranges: Vec<(i64, i64, i64)> = tap_offsets(tap)?
                .iter()
                .zip(&reach)
                .zip(&window.input)
                .map(|((&offset, &r), &input)| {
                    let start = r.checked_sub(offset)?;
                    Some((start, start.checked_add(input)?, 1))
                })
                .collect::<Option<_>>()
                .ok_or_else(overflow)?;
            windows.push(slice_ranges(b, &canvas, 3, &ranges, &size)?);
        }
        let windows: Vec<&str> = windows.iter().map(String::as_str).collect();
        let stacked = concat(b, &windows, 1);
        let rows = tap_count.checked_mul(filters).ok_or_else(overflow)?;
        let product = transposed_product(b, &stacked, &inputs, groups, rows, channels);
        b.reshape(&product, &[groups, tap_count, filters, channels])
    } else {
        let mut products = Vec::with_capacity(taps.len());
        for tap in &taps {
            let offsets = tap_offsets(tap)?;
            // Per axis, the outputs [first, last] whose tap reads inside the input.
            let ranges: Vec<(i64, i64)> = offsets
                .iter()
                .zip(&axes)
                .map(|(&offset, a)| {
                    let first = offset.checked_neg()?.max(0).checked_add(a.stride)?.checked_sub(1)?.checked_div(a.stride)?;
                    let last_read = a.input.checked_sub(1)?.checked_sub(offset)?.checked_div_euclid(a.stride)?;
                    Some((first, a.output.checked_sub(1)?.min(last_read)))
                })
                .collect::<Option<_>>()
                .ok_or_else(overflow)?;
            let product = if ranges.iter().any(|(first, last)| first > last) {
                // The tap reads only padding.
                let shape = extents(ctx, "the weight gradient of a group", &[groups, filters, channels])?;
                let zeros = vec![0.0; product(ctx, "the weight gradient of a group", &shape)?];
                b.floats(ctx.float_type(), &shape, &zeros)?
            } else {
                let kept: Vec<(i64, i64, i64)> =
                    ranges.iter().map(|&(f, l)| Some((f, l.checked_add(1)?, 1))).collect::<Option<_>>().ok_or_else(overflow)?;
                let left = slice_ranges(b, &gradient, 3, &kept, &window.output)?;
                let reads: Vec<(i64, i64, i64)> = ranges
                    .iter()
                    .zip(&offsets)
                    .zip(&axes)
                    .map(|((&(first, last), &offset), a)| {
                        let start = first.checked_mul(a.stride)?.checked_add(offset)?;
                        let end = last.checked_mul(a.stride)?.checked_add(offset)?.checked_add(1)?;
                        Some((start, end, a.stride))
                    })
                    .collect::<Option<_>>()
                    .ok_or_else(overflow)?;
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
    let all_filters = groups.checked_mul(filters).ok_or_else(overflow)?;
    Ok(b.reshape(&per_filter, &[&[all_filters, channels], window.kernel.as_slice()].concat()))
}

/// `x` [N, G·per_group, *spatial] as [G, per_group, N, *spatial]. One group swaps the first two
/// axes alone, which runtimes copy as whole images (an axis of size 1 in the permutation makes
/// onnxruntime copy element by element, ten times slower).
fn channel_major(b: &mut Builder, x: &str, groups: i64, per_group: i64, spatial: &[i64]) -> String {
    if groups == 1 {
        let perm: Vec<usize> = [1, 0].into_iter().chain((2..).take(spatial.len())).collect();
        let swapped = b.transpose(x, &perm);
        return b.unsqueeze(&swapped, &[0]);
    }
    let split = b.reshape(x, &[&[0, groups, per_group], spatial].concat());
    let perm: Vec<usize> = [1, 2, 0].into_iter().chain((3..).take(spatial.len())).collect();
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
    match parts {
        [part] => part.to_string(),
        _ => b.op("Concat", parts, vec![int("axis", axis)]),
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
    let overflow = || position_overflow(ctx, window);
    let mut spread = gradient.to_string();
    let mut dims: Vec<Option<i64>> = [Some(grouping.groups), Some(grouping.filters), None]
        .into_iter()
        .chain(window.output.iter().map(|&o| Some(o)))
        .collect();
    let axes = window.axes();
    // The spread length of each spatial axis (the canvas axis after the first three).
    let mut lengths = Vec::with_capacity(axes.len());
    for (canvas_axis, a) in (3..).zip(&axes) {
        let mut length = a.output;
        if a.stride > 1 {
            spread = crate::autodiff::emit::interleave(b, &spread, canvas_axis, a.stride, &dims, ctx.float_type())
                .map_err(|m| ctx.error(m))?;
            length = a.output.checked_sub(1).and_then(|l| l.checked_mul(a.stride)?.checked_add(1)).ok_or_else(overflow)?;
            if let Some(dim) = dims.get_mut(canvas_axis) {
                *dim = Some(length);
            }
        }
        lengths.push(length);
    }
    let mut after = Vec::with_capacity(axes.len());
    let mut size = Vec::with_capacity(axes.len());
    for ((a, &length), &r) in axes.iter().zip(&lengths).zip(reach) {
        // The last read: input position size − 1 for the tap with the smallest offset (−begin).
        let pad = a.input.checked_add(a.begin).and_then(|n| n.checked_sub(length)).ok_or_else(overflow)?.max(0);
        size.push(r.checked_add(length).and_then(|n| n.checked_add(pad)).ok_or_else(overflow)?);
        after.push(pad);
    }
    // Nothing on the first three axes; `reach` before and `after` after the spatial ones.
    let pads: Vec<i64> = [0, 0, 0].into_iter().chain(reach.iter().copied()).chain([0, 0, 0]).chain(after).collect();
    Ok((b.pad(&spread, &pads), size))
}

/// `x` sliced to `(start, end, step)` on the consecutive axes from `first_axis` (whose sizes are
/// `sizes`); axes taken whole are left out, and nothing is emitted when all are.
fn slice_ranges(b: &mut Builder, x: &str, first_axis: usize, ranges: &[(i64, i64, i64)], sizes: &[i64]) -> Result<String> {
    let cuts: Vec<(usize, (i64, i64, i64))> = (first_axis..)
        .zip(ranges.iter().zip(sizes))
        .filter(|&(_, (&r, &size))| r != (0, size, 1))
        .map(|(axis, (&r, _))| (axis, r))
        .collect();
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
#[allow(clippy::arithmetic_side_effects, clippy::cast_possible_truncation, clippy::indexing_slicing)]
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
