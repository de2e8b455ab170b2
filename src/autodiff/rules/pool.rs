//! MaxPool and AveragePool (pads, strides, dilations, ceil mode, count_include_pad either way). Both
//! send the output gradient back through a depthwise ConvTranspose with the forward geometry:
//! AveragePool with a kernel of ones after dividing by each window's divisor, MaxPool with one-hot
//! kernels that place each window's gradient on the element the runtime picked as its maximum.
//! Sizes and attributes come from the model: the arithmetic is checked (as everywhere in `autodiff`).

use super::conv::scatter;
use super::{extents, first, only, product, Builder, Ctx, Differentiable, Registry};
use crate::autodiff::emit::int;
use crate::analysis::geometry::{grid, Window};
use crate::error::Result;
use crate::onnx::graph::{attr_int, attr_ints};

pub(super) fn register(registry: &mut Registry) {
    registry.insert("MaxPool", Differentiable::Only(&[0]), max_pool);
    registry.insert("AveragePool", Differentiable::Only(&[0]), average_pool);
}

/// The window geometry and channel count of a pooling node.
fn geometry(ctx: &Ctx) -> Result<(Window, i64)> {
    let x = ctx.input(0);
    let rank = ctx.rank(x)?;
    if rank < 3 {
        return Err(ctx.error("the input needs a batch, a channel and a spatial axis"));
    }
    let dims = ctx.dims(x, 1..rank)?;
    let (channels, spatial) = dims.split_first().ok_or_else(|| ctx.error("the input has no channel axis"))?;
    let window = Window::new(ctx.node, spatial, attr_ints(ctx.node, "kernel_shape")).map_err(|m| ctx.error(m))?;
    Ok((window, *channels))
}

/// The flat index within one channel plane of `input` that kernel tap `tap` of the window at
/// output position `out` reads, or −1 when it reads padding; `None` on overflow.
fn tap_index(window: &Window, tap: &[i64], out: &[i64]) -> Option<i64> {
    let mut flat = 0i64;
    for (axis, (&t, &o)) in tap.iter().zip(out).enumerate() {
        let (stride, begin, dilation, size) =
            (*window.strides.get(axis)?, *window.begin.get(axis)?, *window.dilations.get(axis)?, *window.input.get(axis)?);
        let position = o.checked_mul(stride)?.checked_sub(begin)?.checked_add(t.checked_mul(dilation)?)?;
        if !(0..size).contains(&position) {
            return Some(-1);
        }
        flat = flat.checked_mul(size)?.checked_add(position)?;
    }
    Some(flat)
}

/// The gradient goes to the element each window took its maximum from: the runtime's own choice,
/// read from the Indices output of a copy of the node. A table gives, per kernel tap and output
/// position, the flat index (within one channel plane) that the tap reads; comparing it with the
/// indices gives one-hot masks, and a ConvTranspose with one-hot kernels adds the masked gradients
/// up at the input positions: exact, also where windows overlap.
fn max_pool(ctx: &Ctx, b: &mut Builder, dy: &[Option<String>], _: &[bool]) -> Result<Vec<Option<String>>> {
    let dy = first(ctx, dy)?;
    let (window, channels) = geometry(ctx)?;
    let dtype = ctx.float_type();
    let overflow = || ctx.error(format!("input {:?} with kernel_shape {:?}: the pooling table overflows", window.input, window.kernel));
    let plane = window.input.iter().try_fold(1i64, |p, &s| p.checked_mul(s)).ok_or_else(overflow)?;
    let taps = grid(&window.kernel);
    let outputs = grid(&window.output);

    let mut attributes: Vec<_> =
        ctx.node.attribute.iter().filter(|a| a.name.as_deref() != Some("storage_order")).cloned().collect();
    attributes.push(int("storage_order", 0));
    let indices = b.op_n("MaxPool", &[ctx.input(0)], attributes, 2).remove(1);
    // The index within the sample's channel plane (ONNX indices count the planes before).
    let plane_size = b.int64s(&[], &[plane]);
    let planes = b.op("Div", &[&indices, &plane_size], vec![]);
    let offset = b.op("Mul", &[&planes, &plane_size], vec![]);
    let within = b.op("Sub", &[&indices, &offset], vec![]);

    let table: Vec<i64> = taps
        .iter()
        .flat_map(|tap| outputs.iter().map(move |out| (tap, out)))
        .map(|(tap, out)| tap_index(&window, tap, out).ok_or_else(overflow))
        .collect::<Result<_>>()?;
    let output_shape = extents(ctx, "output", &window.output)?;
    let table_shape: Vec<usize> = std::iter::once(taps.len()).chain(output_shape.iter().copied()).collect();
    let table = b.int64s(&table_shape, &table);
    let expanded = b.unsqueeze(&within, &[2]);
    let chosen = b.op("Equal", &[&expanded, &table], vec![]);
    let spread = b.unsqueeze(&dy, &[2]);
    let masked = b.where_or_zero(&chosen, &spread, dtype)?;
    let count = i64::try_from(taps.len()).map_err(|_| overflow())?;
    let merged_channels = channels.checked_mul(count).ok_or_else(overflow)?;
    let merged = b.reshape(&masked, &[&[0, merged_channels], window.output.as_slice()].concat());

    // One kernel per (channel, tap): a one at the tap, zeros elsewhere.
    let kernel = extents(ctx, "kernel_shape", &window.kernel)?;
    let kernel_size = product(ctx, "kernel_shape", &kernel)?;
    let kernels = usize::try_from(merged_channels).map_err(|_| overflow())?;
    let mut one_hot = vec![0.0; product(ctx, "the one-hot kernel", &[kernels, kernel_size])?];
    for (k, hot) in one_hot.chunks_mut(kernel_size.max(1)).enumerate() {
        if let Some(one) = hot.get_mut(k.checked_rem(taps.len()).unwrap_or(0)) {
            *one = 1.0;
        }
    }
    let kernel_shape: Vec<usize> = [kernels, 1].into_iter().chain(kernel).collect();
    let kernel = b.floats(dtype, &kernel_shape, &one_hot)?;
    Ok(only(1, 0, scatter(ctx, b, &merged, &kernel, channels, &window)?))
}

/// How many of the taps of the window at output position `out` along `axis` lie in
/// `[floor, limit)`; `None` on overflow.
fn taps_inside(window: &Window, axis: usize, out: i64, floor: i64, limit: i64) -> Option<usize> {
    let start = out.checked_mul(*window.strides.get(axis)?)?.checked_sub(*window.begin.get(axis)?)?;
    let dilation = *window.dilations.get(axis)?;
    let mut inside = 0usize;
    for tap in 0..*window.kernel.get(axis)? {
        let position = tap.checked_mul(dilation)?.checked_add(start)?;
        if (floor..limit).contains(&position) {
            inside = inside.checked_add(1)?;
        }
    }
    Some(inside)
}

/// Each output is the sum of its window divided by a divisor that depends on its position (how
/// much of the window lies in the input, or in the input and its pads, with ceil mode cutting the
/// last windows short); the gradient divides by the same divisors and spreads with a kernel of ones.
fn average_pool(ctx: &Ctx, b: &mut Builder, dy: &[Option<String>], _: &[bool]) -> Result<Vec<Option<String>>> {
    let dy = first(ctx, dy)?;
    let (window, channels) = geometry(ctx)?;
    let dtype = ctx.float_type();
    let include_pad = attr_int(ctx.node, "count_include_pad", 0) != 0;
    let overflow = || ctx.error(format!("input {:?} with kernel_shape {:?}: a window position overflows", window.input, window.kernel));
    let divisor = |out: &[i64]| -> Option<f64> {
        let mut divisor = 1.0;
        for (axis, (&o, (&size, (&begin, &end)))) in out.iter().zip(window.input.iter().zip(window.begin.iter().zip(&window.end))).enumerate() {
            let (floor, limit) = if include_pad { (begin.checked_neg()?, size.checked_add(end)?) } else { (0, size) };
            divisor *= taps_inside(&window, axis, o, floor, limit)? as f64;
        }
        Some(divisor)
    };
    let divisors: Vec<f64> = grid(&window.output).iter().map(|out| divisor(out).ok_or_else(overflow)).collect::<Result<_>>()?;
    let divisor_shape = extents(ctx, "output", &window.output)?;
    let divisors = b.floats(dtype, &divisor_shape, &divisors)?;
    let shared = b.op("Div", &[&dy, &divisors], vec![]);
    let kernel_shape: Vec<usize> =
        extents(ctx, "channels", &[channels])?.into_iter().chain([1]).chain(extents(ctx, "kernel_shape", &window.kernel)?).collect();
    let ones = vec![1.0; product(ctx, "the kernel of ones", &kernel_shape)?];
    let kernel = b.floats(dtype, &kernel_shape, &ones)?;
    Ok(only(1, 0, scatter(ctx, b, &shared, &kernel, channels, &window)?))
}

#[cfg(test)]
mod tests {
    use crate::autodiff::emit::{int, ints};
    use crate::autodiff::testing::{check_with, Runs};
    use crate::onnx::proto::AttributeProto;

    fn pool_case(op: &str, x: &[usize], attributes: Vec<AttributeProto>) {
        // Float32 steps cross between the values of a max window; the gradient follows the
        // runtime's own choice of maximum anyway.
        let runs = Runs { float32_differences: op != "MaxPool", ..Runs::default() };
        check_with(runs, &["x"], |t| {
            let input = t.input("x", x);
            t.node(op, &[&input], attributes.clone())
        });
    }

    #[test]
    fn max_pool_overlapping_padded_dilated() {
        pool_case(
            "MaxPool",
            &[2, 3, 7, 7],
            vec![ints("kernel_shape", &[3, 3]), ints("strides", &[2, 2]), ints("pads", &[1, 1, 1, 1])],
        );
        pool_case("MaxPool", &[2, 2, 6, 6], vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])]);
        let dilated = vec![ints("kernel_shape", &[2, 3]), ints("dilations", &[2, 1]), ints("pads", &[0, 1, 1, 0])];
        pool_case("MaxPool", &[1, 2, 8, 7], dilated);
        let ceil = vec![ints("kernel_shape", &[3, 2]), ints("strides", &[2, 2]), int("ceil_mode", 1)];
        pool_case("MaxPool", &[2, 2, 8, 7], ceil);
    }

    #[test]
    fn average_pool_divisors() {
        for include in [0, 1] {
            let padded = vec![
                ints("kernel_shape", &[3, 3]),
                ints("strides", &[2, 2]),
                ints("pads", &[1, 0, 0, 1]),
                int("count_include_pad", include),
            ];
            pool_case("AveragePool", &[2, 3, 7, 6], padded);
            let ceil = vec![
                ints("kernel_shape", &[3, 2]),
                ints("strides", &[2, 2]),
                ints("pads", &[1, 1, 1, 1]),
                int("ceil_mode", 1),
                int("count_include_pad", include),
            ];
            pool_case("AveragePool", &[1, 2, 6, 7], ceil);
        }
        pool_case("AveragePool", &[2, 2, 5, 5], vec![ints("kernel_shape", &[2, 2])]);
    }
}
