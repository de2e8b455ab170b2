//! The fast method for one layer: the upstream part once per batch, the downstream part on masked
//! copies of the frontier, several (channel, image) variants stacked along the batch axis per
//! call, and no run at all for a variant that is the original image.
//!
//! Skipping is exact, not a heuristic: when channel j of image i already holds at the cut, bit for
//! bit, what the α model writes there, the α model computes exactly what the original model
//! computes on image i (its other channels are the original ones: the mask multiplies them by one,
//! and runtimes fold it into the weights), so its prediction is the original prediction, which
//! [`Original`] holds. After a ReLU these are the channels an image leaves at zero everywhere:
//! 2–22 % of (channel, image) pairs in ResNet20's layers on blurred images.

use ndarray::{ArrayD, Axis, IxDyn, Slice};

use super::cut::{cut, downstream_model, upstream_model, Cut};
use super::{correct_rows, encode, output_position, Original, ValStar};
use crate::analysis::ConvInfo;
use crate::backend::{open_session, BackendOptions, Session};
use crate::error::{Error, Result};
use crate::eval::ModelIo;
use crate::onnx::proto::ModelProto;
use crate::tensor::Tensor;
use crate::units::alpha_model;

/// Masked images per downstream call.
const VARIANT_ROWS: usize = 256;

/// One masked image: (channel zeroed, image within the batch).
type Variant = (usize, usize);

/// Correct predictions per channel of `conv` on T_val*, and how many masked images the backend
/// ran (the rest kept their original prediction).
pub(super) fn layer(model: &ModelProto, conv: &ConvInfo, io: &ModelIo, data: &ValStar, options: &BackendOptions, original: &Original) -> Result<(Vec<usize>, usize)> {
    let graph = model.graph.as_ref().ok_or_else(|| Error::InvalidGraph("the model has no graph".into()))?;
    let cut = cut(graph, conv)?;
    let first = data.batches.first().ok_or_else(|| Error::Config("the validation set is empty".into()))?;
    let fill = fill(model, conv, &cut, io, first, options)?;
    let mut upstream = open_session(&encode(&upstream_model(model, &cut.frontier)?), options)?;
    let order: Vec<usize> = cut.frontier.iter().map(|f| output_position(upstream.as_ref(), f)).collect::<Result<_>>()?;
    let constant_integers = integers_ignore_the_batch(upstream.as_mut(), &order, io, first)?;
    let mut downstream: Option<(Box<dyn Session>, usize)> = None;
    let mut correct = vec![0usize; conv.filters];
    let mut rows_run = 0;
    for ((batch, labels), original) in data.batches.iter().zip(&data.labels).zip(&original.correct) {
        let mut outputs: Vec<Option<Tensor>> = upstream.run(&[(io.input.as_str(), batch)])?.into_iter().map(Some).collect();
        let frontier: Vec<Tensor> = order.iter().map(|&p| outputs[p].take().ok_or_else(|| Error::Internal("frontier value repeated".into()))).collect::<Result<_>>()?;
        let (session, logits) = match &mut downstream {
            Some(open) => open,
            None => {
                let session = open_session(&encode(&downstream_model(model, &cut, &frontier, &io.output, constant_integers)?), options)?;
                let logits = output_position(session.as_ref(), &io.output)?;
                downstream.insert((session, logits))
            }
        };
        let value = frontier[0].as_f32()?;
        let n = labels.len();
        if value.ndim() < 2 || value.len_of(Axis(0)) != n || value.shape()[1..] != *fill.shape() {
            return Err(Error::Unsupported {
                node: conv.name.clone(),
                op_type: "Conv".into(),
                message: format!("value '{}' has shape {:?}, expected [{n}, {:?}]", cut.value, value.shape(), fill.shape()),
            });
        }
        let changed = changed(value, &fill)?;
        // Integer frontier values (shape computations such as a shortcut's pads) are constants of
        // the downstream model; the others are fed, and stacking variants of different images
        // needs the batch axis on each of them.
        let fed_others: Vec<(&str, &Tensor)> =
            cut.frontier[1..].iter().map(String::as_str).zip(&frontier[1..]).filter(|(_, t)| !(constant_integers && matches!(t, Tensor::I64(_)))).collect();
        let stackable = fed_others.iter().all(|(_, t)| matches!(t, Tensor::F32(a) if a.ndim() > 0 && a.len_of(Axis(0)) == n));
        let mut rows: Vec<Variant> = Vec::new();
        for (j, images) in changed.iter().enumerate() {
            if stackable {
                for (i, &differs) in images.iter().enumerate() {
                    if differs {
                        rows.push((j, i));
                    } else {
                        correct[j] += usize::from(original[i]);
                    }
                }
            } else if images.contains(&true) {
                rows.extend((0..n).map(|i| (j, i)));
            } else {
                correct[j] += original.iter().filter(|&&c| c).count();
            }
        }
        // Without a batch axis on the other values, a call holds one channel's whole batch.
        let per_call = if stackable { VARIANT_ROWS } else { n.max(1) };
        for chunk in rows.chunks(per_call) {
            let masked = Tensor::F32(masked(value, &fill, chunk)?);
            let gathered: Vec<Tensor> =
                if stackable { fed_others.iter().map(|(_, t)| Ok(Tensor::F32(gather(t.as_f32()?, chunk)?))).collect::<Result<_>>()? } else { Vec::new() };
            let mut fed: Vec<(&str, &Tensor)> = vec![(cut.frontier[0].as_str(), &masked)];
            if stackable {
                fed.extend(fed_others.iter().map(|(name, _)| *name).zip(&gathered));
            } else {
                fed.extend(fed_others.iter().copied());
            }
            let outputs = session.run(&fed)?;
            let row_labels: Vec<i64> = chunk.iter().map(|&(_, i)| labels[i]).collect();
            for (&(j, _), ok) in chunk.iter().zip(correct_rows(&outputs[*logits], &row_labels)?) {
                correct[j] += usize::from(ok);
            }
        }
        rows_run += rows.len();
    }
    Ok((correct, rows_run))
}

/// What the α model computes at the cut for a zeroed channel, per channel (`[C, …]`): the
/// all-channels-zeroed α model run on one image (the chain after a zeroed convolution does not
/// depend on the image).
/// Whether the integer values at the frontier are the same for a batch and for its first image
/// alone: then they do not depend on the batch and can be constants of the downstream model.
fn integers_ignore_the_batch(upstream: &mut dyn Session, order: &[usize], io: &ModelIo, batch: &Tensor) -> Result<bool> {
    let integers = |outputs: Vec<Tensor>| -> Vec<Tensor> { order.iter().map(|&p| outputs[p].clone()).filter(|t| matches!(t, Tensor::I64(_))).collect() };
    let whole = integers(upstream.run(&[(io.input.as_str(), batch)])?);
    if whole.is_empty() {
        return Ok(true);
    }
    let first = Tensor::F32(batch.as_f32()?.slice_axis(Axis(0), Slice::from(0..1)).to_owned());
    Ok(integers(upstream.run(&[(io.input.as_str(), &first)])?) == whole)
}

fn fill(model: &ModelProto, conv: &ConvInfo, cut: &Cut, io: &ModelIo, batch: &Tensor, options: &BackendOptions) -> Result<ArrayD<f32>> {
    let all: Vec<usize> = (0..conv.filters).collect();
    let zeroed = upstream_model(&alpha_model(model, &conv.name, &all)?, std::slice::from_ref(&cut.value))?;
    let mut session = open_session(&encode(&zeroed), options)?;
    let image = Tensor::F32(batch.as_f32()?.slice_axis(Axis(0), Slice::from(0..1)).to_owned());
    let fill = session.run(&[(io.input.as_str(), &image)])?.remove(0).into_f32()?;
    if fill.ndim() < 2 || fill.shape()[0] != 1 || fill.shape()[1] != conv.filters {
        return Err(Error::Unsupported {
            node: conv.name.clone(),
            op_type: "Conv".into(),
            message: format!("value '{}' has shape {:?}, expected [1, {}, …]", cut.value, fill.shape(), conv.filters),
        });
    }
    Ok(fill.index_axis_move(Axis(0), 0))
}

/// `changed[j][i]`: whether channel j of image i in `value` (`[N, C, …]`) differs, in any bit,
/// from `fill[j]`.
fn changed(value: &ArrayD<f32>, fill: &ArrayD<f32>) -> Result<Vec<Vec<bool>>> {
    let value = value.as_standard_layout();
    let fill = fill.as_standard_layout();
    let (values, fills) = (standard(&value)?, standard(&fill)?);
    let channels = fill.len_of(Axis(0));
    let plane = fills.len() / channels.max(1);
    let per_image = fills.len();
    Ok((0..channels)
        .map(|j| {
            let target = &fills[j * plane..(j + 1) * plane];
            values.chunks_exact(per_image).map(|image| image[j * plane..(j + 1) * plane].iter().zip(target).any(|(a, b)| a.to_bits() != b.to_bits())).collect()
        })
        .collect())
}

/// The rows of `value` named by `rows` (their image), each with its channel overwritten by `fill`.
fn masked(value: &ArrayD<f32>, fill: &ArrayD<f32>, rows: &[Variant]) -> Result<ArrayD<f32>> {
    let mut out = gather(value, rows)?;
    let fill = fill.as_standard_layout();
    let fills = standard(&fill)?;
    let plane = fills.len() / fill.len_of(Axis(0)).max(1);
    let per_image = fills.len();
    let data = out.as_slice_mut().ok_or_else(|| Error::Internal("a gathered array is not contiguous".into()))?;
    for (image, &(j, _)) in data.chunks_exact_mut(per_image).zip(rows) {
        image[j * plane..(j + 1) * plane].copy_from_slice(&fills[j * plane..(j + 1) * plane]);
    }
    Ok(out)
}

/// The images of `rows`, in order, stacked along axis 0.
fn gather(value: &ArrayD<f32>, rows: &[Variant]) -> Result<ArrayD<f32>> {
    let value = value.as_standard_layout();
    let values = standard(&value)?;
    let per_image = values.len() / value.len_of(Axis(0)).max(1);
    let mut data = Vec::with_capacity(rows.len() * per_image);
    for &(_, i) in rows {
        data.extend_from_slice(&values[i * per_image..(i + 1) * per_image]);
    }
    let mut shape = value.shape().to_vec();
    shape[0] = rows.len();
    ArrayD::from_shape_vec(IxDyn(&shape), data).map_err(|e| Error::Internal(e.to_string()))
}

fn standard<'a>(array: &'a ndarray::CowArray<'_, f32, IxDyn>) -> Result<&'a [f32]> {
    array.as_slice().ok_or_else(|| Error::Internal("an array in standard layout has no slice".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_rows_copy_their_image_and_overwrite_one_channel() {
        // Two images, three channels of two values each.
        let value = ArrayD::from_shape_vec(IxDyn(&[2, 3, 2]), (0..12).map(|v| v as f32).collect()).unwrap();
        let fill = ArrayD::from_shape_vec(IxDyn(&[3, 2]), vec![-1.0, -2.0, -3.0, -4.0, -5.0, -6.0]).unwrap();
        let out = masked(&value, &fill, &[(1, 0), (0, 1), (2, 1)]).unwrap();
        assert_eq!(out.shape(), &[3, 3, 2]);
        assert_eq!(out.as_slice().unwrap(), &[0.0, 1.0, -3.0, -4.0, 4.0, 5.0, -1.0, -2.0, 8.0, 9.0, 10.0, 11.0, 6.0, 7.0, 8.0, 9.0, -5.0, -6.0]);
    }

    #[test]
    fn a_channel_changes_unless_every_bit_equals_the_fill() {
        let value = ArrayD::from_shape_vec(IxDyn(&[2, 2, 2]), vec![0.0, 0.0, 1.0, 0.0, -0.0, 0.0, 0.0, 0.0]).unwrap();
        let fill = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![0.0; 4]).unwrap();
        // Image 1's channel 0 holds -0.0: equal as a number, not as bits, so it is run.
        assert_eq!(changed(&value, &fill).unwrap(), vec![vec![false, true], vec![true, false]]);
    }
}
