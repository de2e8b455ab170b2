//! Gradient-specific graph pieces on top of the shared builder (`crate::onnx::builder`).

pub(crate) use crate::onnx::builder::{float, int, ints, Builder};

/// `x` with `step − 1` zeros between consecutive elements along `axis`, so that element j sits
/// at j · step ((len − 1) · step + 1 elements): a new axis after `axis` multiplied by the mask
/// [1, 0, …, 0] (one broadcasting Mul, which runtimes execute fast), merged back. `dims` are
/// x's dimensions, `None` where dynamic; the axis must be static, and so must all but one of
/// the axes after it.
pub(crate) fn interleave(
    b: &mut Builder,
    x: &str,
    axis: usize,
    step: i64,
    dims: &[Option<i64>],
    dtype: i32,
) -> std::result::Result<String, String> {
    let len = dims.get(axis).copied().flatten().ok_or("the strided axis must be static")?;
    let overflow = || format!("an axis of {len} elements strided by {step} overflows");
    let spread_len = len.checked_mul(step).ok_or_else(overflow)?;
    let target: Vec<i64> = dims
        .iter()
        .enumerate()
        .map(|(j, dim)| match j.cmp(&axis) {
            std::cmp::Ordering::Less => 0,
            std::cmp::Ordering::Equal => spread_len,
            std::cmp::Ordering::Greater => dim.unwrap_or(-1),
        })
        .collect();
    if target.iter().filter(|&&d| d == -1).count() > 1 {
        return Err("the axes after a strided one must be static".into());
    }
    // `axis` indexes `dims`, a list in memory, so the axis after it cannot saturate.
    let widened = b.unsqueeze(x, &[axis.saturating_add(1)]);
    let mask_len = usize::try_from(step).map_err(|_| format!("a stride of {step}"))?;
    // One axis per axis of x from `axis` on: the step, then ones.
    let mask_shape: Vec<usize> = dims.iter().skip(axis).enumerate().map(|(k, _)| if k == 0 { mask_len } else { 1 }).collect();
    let mask: Vec<f64> = (0..mask_len).map(|k| if k == 0 { 1.0 } else { 0.0 }).collect();
    let mask = b.floats(dtype, &mask_shape, &mask).map_err(|e| e.to_string())?;
    let spread = b.op("Mul", &[&widened, &mask], vec![]);
    let merged = b.reshape(&spread, &target);
    let end = len.checked_sub(1).and_then(|l| l.checked_mul(step)?.checked_add(1)).ok_or_else(overflow)?;
    b.slice(&merged, &[0], &[end], &[axis], &[1]).map_err(|e| e.to_string())
}
