//! Index arithmetic shared by shape inference and the backward rules, so that both agree with the
//! runtimes on the sizes they produce: sliding windows (Conv, pooling) and Slice ranges. Every
//! size here comes from the model, so the arithmetic is checked (as everywhere in `analysis`).

use crate::onnx::graph::{attr_int, attr_ints, attribute};
use crate::onnx::proto::NodeProto;

/// The geometry of a sliding-window operator along its spatial axes, with every pad explicit.
/// [`Window::new`] checks that every position it describes fits an i64: the last window's reach
/// and every tap, in padded and unpadded coordinates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Window {
    pub kernel: Vec<i64>,
    pub strides: Vec<i64>,
    pub dilations: Vec<i64>,
    /// Pads before and after each spatial axis.
    pub begin: Vec<i64>,
    pub end: Vec<i64>,
    /// Spatial sizes of the input and of the output.
    pub input: Vec<i64>,
    pub output: Vec<i64>,
    /// How far one window reaches along each axis: (kernel − 1) · dilation + 1.
    pub extent: Vec<i64>,
}

/// One spatial axis of a [`Window`], its numbers side by side (the kernel's size is in `extent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WindowAxis {
    pub stride: i64,
    pub dilation: i64,
    pub begin: i64,
    pub end: i64,
    pub input: i64,
    pub output: i64,
    pub extent: i64,
}

impl WindowAxis {
    /// How far the last window reaches in padded coordinates, (output − 1) · stride + extent: an
    /// i64, as [`Window::new`] checked, so `None` only for a window built otherwise.
    pub fn reach(&self) -> Option<i64> {
        self.output.checked_sub(1)?.checked_mul(self.stride)?.checked_add(self.extent)
    }
}

/// How an axis is padded.
#[derive(Clone, Copy)]
enum Padding {
    /// `auto_pad` SAME_UPPER (the odd pad after) or SAME_LOWER (before).
    Same { upper: bool },
    Valid,
    /// `pads` (before, after), zero without the attribute.
    Explicit(i64, i64),
}

/// One axis of a window: its pads, output size and extent.
struct Axis {
    begin: i64,
    end: i64,
    output: i64,
    extent: i64,
}

impl Axis {
    /// The geometry along one axis of `size` elements. Sizes come from the model: the arithmetic
    /// is done in i128, where products of two i64 values cannot overflow, and checked all the
    /// same; `None` when a result does not fit an i64 or the window does not fit the input.
    fn new(size: i64, kernel: i64, stride: i64, dilation: i64, padding: Padding, ceil_mode: bool) -> Option<Axis> {
        let (size, stride) = (i128::from(size), i128::from(stride));
        let extent = i128::from(kernel).checked_sub(1)?.checked_mul(i128::from(dilation))?.checked_add(1)?;
        let (begin, end, output) = match padding {
            Padding::Same { upper } => {
                let output = size.checked_add(stride)?.checked_sub(1)?.checked_div(stride)?;
                let reach = output.checked_sub(1)?.checked_mul(stride)?.checked_add(extent)?;
                let total = reach.checked_sub(size)?.max(0);
                let small = total.checked_div(2)?;
                let large = total.checked_sub(small)?;
                let (begin, end) = if upper { (small, large) } else { (large, small) };
                (begin, end, output)
            }
            Padding::Valid => (0, 0, size.checked_sub(extent)?.checked_div_euclid(stride)?.checked_add(1)?),
            Padding::Explicit(begin, end) => {
                let (begin, end) = (i128::from(begin), i128::from(end));
                let span = size.checked_add(begin)?.checked_add(end)?.checked_sub(extent)?;
                let output = if ceil_mode && span >= 0 {
                    // A last window that would start in the end padding is dropped.
                    let output = span.checked_add(stride)?.checked_sub(1)?.checked_div(stride)?.checked_add(1)?;
                    let last_start = output.checked_sub(1)?.checked_mul(stride)?;
                    if last_start >= size.checked_add(begin)? {
                        output.checked_sub(1)?
                    } else {
                        output
                    }
                } else {
                    span.checked_div_euclid(stride)?.checked_add(1)?
                };
                (begin, end, output)
            }
        };
        if output < 1 {
            return None;
        }
        // Callers compute the last window's reach and its taps in i64.
        i64::try_from(output.checked_sub(1)?.checked_mul(stride)?.checked_add(extent)?).ok()?;
        Some(Axis {
            begin: i64::try_from(begin).ok()?,
            end: i64::try_from(end).ok()?,
            output: i64::try_from(output).ok()?,
            extent: i64::try_from(extent).ok()?,
        })
    }
}

impl Window {
    /// Reads `strides`, `dilations`, `pads`, `auto_pad` and `ceil_mode` of `node` for an input of
    /// spatial size `input` and a kernel of spatial size `kernel`. In ceil mode a last window that
    /// would start in the end padding is dropped, as onnxruntime and PyTorch do. The message of an
    /// error names the attribute or size at fault.
    pub fn new(node: &NodeProto, input: &[i64], kernel: &[i64]) -> Result<Window, String> {
        let rank = input.len();
        if kernel.len() != rank {
            return Err(format!("kernel of rank {} for {rank} spatial axes", kernel.len()));
        }
        let per_axis = |name: &str| -> Result<Vec<i64>, String> {
            match attr_ints(node, name) {
                [] => Ok(vec![1; rank]),
                values if values.len() == rank && values.iter().all(|&v| v >= 1) => Ok(values.to_vec()),
                values => Err(format!("{name} {values:?} for {rank} spatial axes")),
            }
        };
        let strides = per_axis("strides")?;
        let dilations = per_axis("dilations")?;
        if rank == 0 {
            // No spatial axis: nothing to pad, nothing to slide.
            return Ok(Window { kernel: Vec::new(), strides, dilations, begin: Vec::new(), end: Vec::new(), input: Vec::new(), output: Vec::new(), extent: Vec::new() });
        }
        let ceil_mode = attr_int(node, "ceil_mode", 0) != 0;
        let auto_pad = attribute(node, "auto_pad").and_then(|a| a.s.as_deref()).unwrap_or(b"NOTSET");
        let padding: Vec<Padding> = match auto_pad {
            b"SAME_UPPER" | b"SAME_LOWER" => vec![Padding::Same { upper: auto_pad == b"SAME_UPPER" }; rank],
            b"VALID" => vec![Padding::Valid; rank],
            b"NOTSET" | b"" => match attr_ints(node, "pads") {
                [] => vec![Padding::Explicit(0, 0); rank],
                pads if Some(pads.len()) == rank.checked_mul(2) && pads.iter().all(|&p| p >= 0) => {
                    let (before, after) = pads.split_at(rank);
                    before.iter().zip(after).map(|(&b, &e)| Padding::Explicit(b, e)).collect()
                }
                pads => return Err(format!("pads {pads:?} for {rank} spatial axes")),
            },
            other => return Err(format!("auto_pad {}", String::from_utf8_lossy(other))),
        };
        let mut window = Window {
            kernel: kernel.to_vec(),
            strides,
            dilations,
            begin: Vec::with_capacity(rank),
            end: Vec::with_capacity(rank),
            input: input.to_vec(),
            output: Vec::with_capacity(rank),
            extent: Vec::with_capacity(rank),
        };
        let axes = kernel.iter().zip(input).zip(&window.strides).zip(&window.dilations).zip(&padding);
        let mut computed = Vec::with_capacity(rank);
        for ((((&k, &size), &stride), &dilation), &padding) in axes {
            if k < 1 || size < 0 {
                return Err(format!("kernel {kernel:?} on input {input:?}"));
            }
            let axis = Axis::new(size, k, stride, dilation, padding, ceil_mode)
                .ok_or_else(|| format!("kernel {kernel:?} on input {input:?} does not fit or overflows"))?;
            computed.push(axis);
        }
        for axis in computed {
            window.begin.push(axis.begin);
            window.end.push(axis.end);
            window.output.push(axis.output);
            window.extent.push(axis.extent);
        }
        Ok(window)
    }

    /// The spatial axes one by one.
    pub fn axes(&self) -> Vec<WindowAxis> {
        let per_axis = self.strides.iter().zip(&self.dilations).zip(&self.begin).zip(&self.end).zip(&self.input);
        per_axis
            .zip(&self.output)
            .zip(&self.extent)
            .map(|((((((&stride, &dilation), &begin), &end), &input), &output), &extent)| WindowAxis {
                stride,
                dilation,
                begin,
                end,
                input,
                output,
                extent,
            })
            .collect()
    }
}

/// Every multi-index of a box of `sizes`, in row-major order (kernel taps, output positions).
pub(crate) fn grid(sizes: &[i64]) -> Vec<Vec<i64>> {
    sizes.iter().fold(vec![Vec::new()], |prefixes, &size| {
        prefixes.iter().flat_map(|p| (0..size).map(move |t| [p.as_slice(), &[t]].concat())).collect()
    })
}

/// One axis of a Slice, normalised as ONNX defines it: the elements `start + j · step` for
/// `j < len`, all inside `[0, size)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SliceAxis {
    pub axis: usize,
    pub start: i64,
    pub step: i64,
    pub len: i64,
}

impl SliceAxis {
    /// Clamps `start` and `end` to an axis of `size` elements (negative values count from the end).
    pub fn new(axis: usize, size: i64, start: i64, end: i64, step: i64) -> Result<SliceAxis, String> {
        if step == 0 {
            return Err("a Slice step of 0".into());
        }
        if size < 0 {
            return Err(format!("an axis of {size} elements"));
        }
        let resolve = |v: i64| if v < 0 { v.saturating_add(size) } else { v };
        let (start, end) = (resolve(start), resolve(end));
        // Elements in `distance` positions, rounded up; written so that no step overflows it
        // (both ends lie in [-1, size], so their distance fits).
        let count = |from: i64, to: i64| match to.saturating_sub(from) {
            distance if distance <= 0 => 0,
            distance => distance.saturating_sub(1).checked_div(step.saturating_abs()).unwrap_or(0).saturating_add(1),
        };
        let (start, len) = if step > 0 {
            let (start, end) = (start.clamp(0, size), end.clamp(0, size));
            (start, count(start, end))
        } else if size == 0 {
            // Nothing to take, and no index to start from.
            (0, 0)
        } else {
            let last = size.saturating_sub(1);
            let (start, end) = (start.clamp(0, last), end.clamp(-1, last));
            (start, count(end, start))
        };
        Ok(SliceAxis { axis, start, step, len })
    }

    /// Whether the slice keeps the whole axis of `size` elements in order.
    pub fn is_identity(&self, size: i64) -> bool {
        self.start == 0 && self.step == 1 && self.len == size
    }

    /// The index of the last element taken (`start` when none is): inside the axis, so the
    /// arithmetic cannot overflow.
    fn last(&self) -> i64 {
        self.len.saturating_sub(1).max(0).saturating_mul(self.step).saturating_add(self.start)
    }

    /// The smallest index taken (the last one for a negative step).
    pub fn lowest(&self) -> i64 {
        self.start.min(self.last())
    }

    /// The largest index taken (the first one for a negative step).
    pub fn highest(&self) -> i64 {
        self.start.max(self.last())
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::onnx::proto::AttributeProto;

    fn node(attributes: Vec<AttributeProto>) -> NodeProto {
        NodeProto { op_type: Some("MaxPool".into()), attribute: attributes, ..Default::default() }
    }

    fn ints(name: &str, values: &[i64]) -> AttributeProto {
        AttributeProto { name: Some(name.into()), ints: values.to_vec(), r#type: Some(7), ..Default::default() }
    }

    fn int(name: &str, value: i64) -> AttributeProto {
        AttributeProto { name: Some(name.into()), i: Some(value), r#type: Some(2), ..Default::default() }
    }

    #[test]
    fn windows_follow_onnxruntime_sizes() {
        let plain = Window::new(&node(vec![ints("strides", &[2]), ints("pads", &[1, 0])]), &[7], &[3]).unwrap();
        assert_eq!((plain.output[0], plain.begin[0], plain.end[0]), (3, 1, 0));
        // Ceil mode: a window starting in the end padding is dropped (measured on onnxruntime 1.32).
        let ceil = node(vec![ints("strides", &[2]), ints("pads", &[0, 1]), int("ceil_mode", 1)]);
        assert_eq!(Window::new(&ceil, &[4], &[2]).unwrap().output, vec![2]);
        assert_eq!(Window::new(&ceil, &[5], &[2]).unwrap().output, vec![3]);
        let same =
            AttributeProto { name: Some("auto_pad".into()), s: Some(b"SAME_LOWER".to_vec()), ..Default::default() };
        let lower = Window::new(&node(vec![same, ints("strides", &[2])]), &[6], &[5]).unwrap();
        assert_eq!((lower.output[0], lower.begin[0], lower.end[0]), (3, 2, 1));
        let dilated = Window::new(&node(vec![ints("dilations", &[2])]), &[9], &[3]).unwrap();
        assert_eq!(dilated.output, vec![5]);
        assert_eq!(dilated.extent, vec![5]);
        assert!(Window::new(&node(vec![]), &[2], &[3]).is_err());
    }

    #[test]
    fn slices_clamp_like_onnx() {
        let reverse = SliceAxis::new(0, 5, -1, i64::MIN, -1).unwrap();
        assert_eq!((reverse.start, reverse.len, reverse.lowest()), (4, 5, 0));
        let stepped = SliceAxis::new(1, 32, 0, i64::MAX, 2).unwrap();
        assert_eq!((stepped.start, stepped.len), (0, 16));
        let odd = SliceAxis::new(0, 10, 7, 1, -3).unwrap();
        assert_eq!((odd.start, odd.len, odd.lowest()), (7, 2, 4));
        assert_eq!(SliceAxis::new(0, 4, 5, 9, 1).unwrap().len, 0);
        assert!(SliceAxis::new(0, 4, 0, 4, 1).unwrap().is_identity(4));
    }

    #[test]
    fn slices_of_empty_axes_and_extreme_steps() {
        let empty = SliceAxis::new(0, 0, -1, i64::MIN, -1).unwrap();
        assert_eq!((empty.start, empty.len, empty.lowest()), (0, 0, 0));
        assert_eq!(SliceAxis::new(0, 0, 0, 5, 1).unwrap().len, 0);
        assert_eq!(SliceAxis::new(0, 5, 0, 5, i64::MAX).unwrap().len, 1);
        assert_eq!(SliceAxis::new(0, 5, 4, -9, i64::MIN).unwrap().len, 1);
        assert!(SliceAxis::new(0, -3, 0, 1, 1).is_err(), "a negative size");
    }

    #[test]
    fn huge_windows_are_refused() {
        let dilated = node(vec![ints("dilations", &[i64::MAX])]);
        assert!(Window::new(&dilated, &[9], &[3]).is_err());
        let padded = node(vec![ints("pads", &[i64::MAX, i64::MAX])]);
        assert!(Window::new(&padded, &[i64::MAX], &[1]).is_err(), "3 · i64::MAX outputs");
        let same = AttributeProto { name: Some("auto_pad".into()), s: Some(b"SAME_UPPER".to_vec()), ..Default::default() };
        assert_eq!(Window::new(&node(vec![same, ints("strides", &[i64::MAX])]), &[i64::MAX], &[1]).unwrap().output, vec![1]);
    }
}
