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
    let rank = dims.len();
    let len = dims[axis].ok_or("the strided axis must be static")?;
    let target: Vec<i64> = (0..rank)
        .map(|j| match j.cmp(&axis) {
            std::cmp::Ordering::Less => 0,
            std::cmp::Ordering::Equal => len * step,
            std::cmp::Ordering::Greater => dims[j].unwrap_or(-1),
        })
        .collect();
    if target.iter().filter(|&&d| d == -1).count() > 1 {
        return Err("the axes after a strided one must be static".into());
    }
    let widened = b.unsqueeze(x, &[axis + 1]);
    let mut mask_shape = vec![step as usize];
    mask_shape.resize(rank - axis, 1);
    let mut mask = vec![0.0; step as usize];
    mask[0] = 1.0;
    let mask = b.floats(dtype, &mask_shape, &mask).map_err(|e| e.to_string())?;
    let spread = b.op("Mul", &[&widened, &mask], vec![]);
    let merged = b.reshape(&spread, &target);
    b.slice(&merged, &[0], &[(len - 1) * step + 1], &[axis], &[1]).map_err(|e| e.to_string())
}

