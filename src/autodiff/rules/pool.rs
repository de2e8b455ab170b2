//! MaxPool and AveragePool (pads, strides, dilations, ceil mode, count_include_pad either way). Both
//! send the output gradient back through a depthwise ConvTranspose with the forward geometry:
//! AveragePool with a kernel of ones after dividing by each window's divisor, MaxPool with one-hot
//! kernels that place each window's gradient on the element the runtime picked as its maximum.

use super::conv::scatter;
use super::{first, only, Builder, Ctx, Differentiable, Registry};
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
    let window = Window::new(ctx.node, &dims[1..], attr_ints(ctx.node, "kernel_shape")).map_err(|m| ctx.error(m))?;
    Ok((window, dims[0]))
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
    let spatial = window.input.len();
    let plane: i64 = window.input.iter().product();
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

    let mut table = Vec::with_capacity(taps.len() * outputs.len());
    for tap in &taps {
        for out in &outputs {
            let mut flat = 0;
            for axis in 0..spatial {
                let position =
                    out[axis] * window.strides[axis] - window.begin[axis] + tap[axis] * window.dilations[axis];
                if !(0..window.input[axis]).contains(&position) {
                    flat = -1;
                    break;
                }
                flat = flat * window.input[axis] + position;
            }
            table.push(flat);
        }
    }
    let table_shape: Vec<usize> =
        std::iter::once(taps.len()).chain(window.output.iter().map(|&o| o as usize)).collect();
    let table = b.int64s(&table_shape, &table);
    let expanded = b.unsqueeze(&within, &[2]);
    let chosen = b.op("Equal", &[&expanded, &table], vec![]);
    let spread = b.unsqueeze(&dy, &[2]);
    let masked = b.where_or_zero(&chosen, &spread, dtype)?;
    let count = taps.len() as i64;
    let merged = b.reshape(&masked, &[&[0, channels * count], window.output.as_slice()].concat());

    let kernel_size: usize = window.kernel.iter().map(|&k| k as usize).product();
    let mut one_hot = vec![0.0; channels as usize * taps.len() * kernel_size];
    for c in 0..channels as usize {
        for t in 0..taps.len() {
            one_hot[(c * taps.len() + t) * kernel_size + t] = 1.0;
        }
    }
    let kernel_shape: Vec<usize> =
        [channels as usize * taps.len(), 1].into_iter().chain(window.kernel.iter().map(|&k| k as usize)).collect();
    let kernel = b.floats(dtype, &kernel_shape, &one_hot)?;
    Ok(only(1, 0, scatter(ctx, b, &merged, &kernel, channels, &window)?))
}

/// Each output is the sum of its window divided by a divisor that depends on its position (how
/// much of the window lies in the input, or in the input and its pads, with ceil mode cutting the
/// last windows short); the gradient divides by the same divisors and spreads with a kernel of ones.
fn average_pool(ctx: &Ctx, b: &mut Builder, dy: &[Option<String>], _: &[bool]) -> Result<Vec<Option<String>>> {
    let dy = first(ctx, dy)?;
    let (window, channels) = geometry(ctx)?;
    let dtype = ctx.float_type();
    let include_pad = attr_int(ctx.node, "count_include_pad", 0) != 0;
    let divisors: Vec<f64> = grid(&window.output)
        .iter()
        .map(|out| {
            (0..window.input.len())
                .map(|axis| {
                    let limit = if include_pad { window.input[axis] + window.end[axis] } else { window.input[axis] };
                    let floor = if include_pad { -window.begin[axis] } else { 0 };
                    window.taps(axis, out[axis]).filter(|p| (floor..limit).contains(p)).count() as f64
                })
                .product()
        })
        .collect();
    let divisor_shape: Vec<usize> = window.output.iter().map(|&o| o as usize).collect();
    let divisors = b.floats(dtype, &divisor_shape, &divisors)?;
    let shared = b.op("Div", &[&dy, &divisors], vec![]);
    let kernel_shape: Vec<usize> =
        [channels as usize, 1].into_iter().chain(window.kernel.iter().map(|&k| k as usize)).collect();
    let ones = vec![1.0; kernel_shape.iter().product()];
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
