//! Index arithmetic shared by shape inference and the backward rules, so that both agree with the
//! runtimes on the sizes they produce: sliding windows (Conv, pooling) and Slice ranges.

use crate::onnx::graph::{attr_int, attr_ints, attribute};
use crate::onnx::proto::NodeProto;

/// The geometry of a sliding-window operator along its spatial axes, with every pad explicit.
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
}

impl Window {
    /// Reads `strides`, `dilations`, `pads`, `auto_pad` and `ceil_mode` of `node` for an input of
    /// spatial size `input` and a kernel of spatial size `kernel`. In ceil mode a last window that
    /// would start in the end padding is dropped, as onnxruntime and PyTorch do.
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
        let ceil_mode = attr_int(node, "ceil_mode", 0) != 0;
        let auto_pad = attribute(node, "auto_pad").and_then(|a| a.s.as_deref()).unwrap_or(b"NOTSET");
        let mut window = Window {
            kernel: kernel.to_vec(),
            strides,
            dilations,
            begin: vec![0; rank],
            end: vec![0; rank],
            input: input.to_vec(),
            output: vec![0; rank],
        };
        // Sizes come from the model: the arithmetic is done in i128, where products of two i64
        // values cannot overflow, and a result that does not fit an i64 is refused.
        let narrow = |value: i128| i64::try_from(value).map_err(|_| format!("kernel {kernel:?} on input {input:?} overflows"));
        for axis in 0..rank {
            if kernel[axis] < 1 || input[axis] < 0 {
                return Err(format!("kernel {kernel:?} on input {input:?}"));
            }
            let (size, stride) = (i128::from(input[axis]), i128::from(window.strides[axis]));
            let extent = i128::from(kernel[axis] - 1) * i128::from(window.dilations[axis]) + 1;
            narrow(extent)?;
            let output = match auto_pad {
                b"SAME_UPPER" | b"SAME_LOWER" => {
                    let output = (size + stride - 1) / stride;
                    let total = ((output - 1) * stride + extent - size).max(0);
                    let small = total / 2;
                    let (begin, end) =
                        if auto_pad == b"SAME_UPPER" { (small, total - small) } else { (total - small, small) };
                    window.begin[axis] = narrow(begin)?;
                    window.end[axis] = narrow(end)?;
                    output
                }
                b"VALID" => (size - extent).div_euclid(stride) + 1,
                b"NOTSET" | b"" => {
                    let pads = attr_ints(node, "pads");
                    if !pads.is_empty() {
                        if pads.len() != 2 * rank || pads.iter().any(|&p| p < 0) {
                            return Err(format!("pads {pads:?} for {rank} spatial axes"));
                        }
                        window.begin[axis] = pads[axis];
                        window.end[axis] = pads[axis + rank];
                    }
                    let begin = i128::from(window.begin[axis]);
                    let span = size + begin + i128::from(window.end[axis]) - extent;
                    if ceil_mode && span >= 0 {
                        let output = (span + stride - 1) / stride + 1;
                        if (output - 1) * stride >= size + begin {
                            output - 1
                        } else {
                            output
                        }
                    } else {
                        span.div_euclid(stride) + 1
                    }
                }
                other => return Err(format!("auto_pad {}", String::from_utf8_lossy(other))),
            };
            if output < 1 {
                return Err(format!("the window does not fit: input {input:?}, kernel {kernel:?}"));
            }
            window.output[axis] = narrow(output)?;
            // Callers compute the last window's reach and its taps in i64.
            narrow((output - 1) * stride + extent)?;
        }
        Ok(window)
    }

    /// How far one window reaches along `axis`: (kernel − 1) · dilation + 1.
    pub fn extent(&self, axis: usize) -> i64 {
        (self.kernel[axis] - 1) * self.dilations[axis] + 1
    }

    /// Positions along `axis` (in unpadded input coordinates) of the taps of the window that
    /// produces output `out`.
    pub fn taps(&self, axis: usize, out: i64) -> impl Iterator<Item = i64> + '_ {
        let start = out * self.strides[axis] - self.begin[axis];
        (0..self.kernel[axis]).map(move |tap| start + tap * self.dilations[axis])
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
        // Elements in `distance` positions, rounded up; written so that no step overflows it.
        let count = |distance: i64| if distance <= 0 { 0 } else { (distance - 1) / step.saturating_abs() + 1 };
        let (start, len) = if step > 0 {
            let (start, end) = (start.clamp(0, size), end.clamp(0, size));
            (start, count(end - start))
        } else if size == 0 {
            // Nothing to take, and no index to start from.
            (0, 0)
        } else {
            let (start, end) = (start.clamp(0, size - 1), end.clamp(-1, size - 1));
            (start, count(start - end))
        };
        Ok(SliceAxis { axis, start, step, len })
    }

    /// Whether the slice keeps the whole axis of `size` elements in order.
    pub fn is_identity(&self, size: i64) -> bool {
        self.start == 0 && self.step == 1 && self.len == size
    }

    /// The smallest index taken (the last one for a negative step).
    pub fn lowest(&self) -> i64 {
        if self.step > 0 || self.len == 0 {
            self.start
        } else {
            self.start + (self.len - 1) * self.step
        }
    }
}

#[cfg(test)]
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
        assert_eq!(dilated.taps(0, 1).collect::<Vec<_>>(), vec![1, 3, 5]);
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
