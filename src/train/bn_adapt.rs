//! `bn_adapt` (docs/specification.md §3.3): after training, the BatchNormalization statistics of the replacement
//! channels are re-estimated on T_train° and stored as the replacement path's own parameters
//! (`LayerPatch::batchnorm`); the original channels keep theirs.
//!
//! As PyTorch does when it re-estimates statistics in training mode with `momentum=None`: one pass
//! over T_train° in which every patched layer's replacement channels are normalised with the batch's
//! own mean and (biased) variance, downstream layers seeing those values; the running mean is the
//! average of the batch means, the running variance the average of the batches' unbiased variances.
//! Layers without a BatchNormalization directly after the convolution (folded models) have nothing
//! to re-estimate and are left as they are.

use ndarray::{Array1, ArrayD, Axis};
use prost::Message;

use super::TrainData;
use crate::analysis::site::batchnorm_after;
use crate::backend::{open_session, BackendOptions};
use crate::config::Config;
use crate::data::BatchStream;
use crate::error::{Error, Result};
use crate::eval::ModelIo;
use crate::onnx::builder::{int, Builder, FLOAT};
use crate::onnx::default_opset;
use crate::onnx::graph::{attribute, GraphIndex};
use crate::onnx::proto::ModelProto;
use crate::onnx::tensor::to_f32;
use crate::progress::Progress;
use crate::tensor::Tensor;
use crate::units::{beta_model, PatchSpec};

/// One layer's statistics outputs in the statistics model.
struct Probe {
    layer: usize,
    mean: String,
    variance: String,
    shape: String,
    /// The BatchNormalization's scale and bias at the blamed channels.
    scale: ArrayD<f32>,
    bias: ArrayD<f32>,
}

/// Re-estimates the replacement channels' statistics of every patched layer followed by a
/// BatchNormalization, on the T_train° draw that would follow the last epoch; returns the number of
/// layers adapted.
pub fn adapt(model: &ModelProto, spec: &mut PatchSpec, data: &TrainData, config: &Config, io: &ModelIo, options: &BackendOptions) -> Result<usize> {
    let (statistics_model, probes) = statistics_model(model, spec)?;
    if probes.is_empty() {
        return Ok(0);
    }
    let mut session = open_session(&statistics_model.encode_to_vec(), options)?;
    let names = session.output_names().to_vec();
    let position = |name: &str| names.iter().position(|n| n == name).ok_or_else(|| Error::Internal(format!("lost output '{name}'")));
    let items = data.epoch_draw(config.data.seed, config.train.epochs);
    let stream = BatchStream::mixed(data.images.clone(), items, data.preprocess.clone(), config.train.batch_size);
    let mut sums: Vec<(Array1<f64>, Array1<f64>)> =
        probes.iter().map(|p| (Array1::zeros(p.scale.len()), Array1::zeros(p.scale.len()))).collect();
    let mut batches = 0usize;
    let mut progress = Progress::new("bn_adapt", data.train.len());
    for batch in stream {
        let batch = batch?;
        let count = batch.labels.len();
        let outputs = session.run(&[(io.input.as_str(), &Tensor::F32(batch.input))])?;
        for (probe, (mean_sum, var_sum)) in probes.iter().zip(&mut sums) {
            let mean = outputs[position(&probe.mean)?].as_f32()?;
            let variance = outputs[position(&probe.variance)?].as_f32()?;
            let shape = outputs[position(&probe.shape)?].as_i64()?;
            // Elements per channel in this batch: N·H·W (every axis but the channel axis).
            let per_channel: i64 = shape.iter().enumerate().filter(|(axis, _)| *axis != 1).map(|(_, d)| *d).product();
            let unbiased = if per_channel > 1 { per_channel as f64 / (per_channel - 1) as f64 } else { 1.0 };
            *mean_sum += &mean.iter().map(|&m| f64::from(m)).collect::<Array1<f64>>();
            *var_sum += &variance.iter().map(|&v| f64::from(v) * unbiased).collect::<Array1<f64>>();
        }
        batches += 1;
        progress.advance(count);
    }
    progress.finish();
    for (probe, (mean_sum, var_sum)) in probes.iter().zip(sums) {
        let average = |sum: Array1<f64>| sum.mapv(|s| (s / batches.max(1) as f64) as f32).into_dyn();
        spec.layers[probe.layer].batchnorm = Some([probe.scale.clone(), probe.bias.clone(), average(mean_sum), average(var_sum)]);
    }
    Ok(probes.len())
}

/// The β model with every patched layer's replacement channels normalised by batch statistics,
/// and those statistics (per channel mean and biased variance, and the shape they were taken over)
/// as extra outputs.
fn statistics_model(model: &ModelProto, spec: &PatchSpec) -> Result<(ModelProto, Vec<Probe>)> {
    let original = model.graph.as_ref().ok_or_else(|| Error::InvalidGraph("the model has no graph".into()))?;
    let original_index = GraphIndex::new(original)?;
    let convs = spec.validate(model)?;
    let (mut beta, _) = beta_model(model, spec)?;
    let graph = beta.graph.as_mut().ok_or_else(|| Error::InvalidGraph("the β model has no graph".into()))?;
    let mut builder = Builder::new(graph, default_opset(model));
    builder.set_scope("bn_adapt/");
    let mut probes = Vec::new();
    let mut outputs = Vec::new();
    for (layer, (conv, patch)) in convs.iter().zip(&spec.layers).enumerate() {
        let Some(bn_position) = batchnorm_after(original, conv.position) else { continue };
        let bn_original = &original.node[bn_position];
        // The β graph keeps the original nodes and names; its BatchNormalization reads the same value.
        let Some(bn) = graph.node.iter_mut().find(|n| n.op_type.as_deref() == Some("BatchNormalization") && n.input.first() == bn_original.input.first())
        else {
            return Err(Error::Internal(format!("the β model lost the BatchNormalization after '{}'", patch.conv)));
        };
        let epsilon = attribute(bn, "epsilon").and_then(|a| a.f).unwrap_or(1e-5);
        let constant = |i: usize| -> Result<ArrayD<f32>> {
            let tensor = original_index.constant(&bn_original.input[i]).ok_or_else(|| Error::Unsupported {
                node: bn_original.name.clone().unwrap_or_default(),
                op_type: "BatchNormalization".into(),
                message: "bn_adapt needs constant scale and bias".into(),
            })?;
            Ok(to_f32(tensor)?.select(Axis(0), &patch.blamed).into_owned())
        };
        let (scale, bias) = (constant(1)?, constant(2)?);
        let inference = builder.fresh("inference");
        let normalised = std::mem::replace(&mut bn.output[0], inference.clone());
        let x = bn.input[0].clone();

        let k = patch.blamed.len();
        let blamed = builder.ints(&patch.blamed.iter().map(|&c| c as i64).collect::<Vec<_>>());
        let channels = builder.op("Gather", &[&x, &blamed], vec![int("axis", 1)]);
        let axes = [0i64, 2, 3];
        let mean = builder.reduce("ReduceMean", &channels, &axes, true);
        let centred = builder.op("Sub", &[&channels, &mean], vec![]);
        let squared = builder.op("Mul", &[&centred, &centred], vec![]);
        let variance = builder.reduce("ReduceMean", &squared, &axes, true);
        let eps = builder.scalar(FLOAT, f64::from(epsilon))?;
        let shifted = builder.op("Add", &[&variance, &eps], vec![]);
        let deviation = builder.op("Sqrt", &[&shifted], vec![]);
        let standard = builder.op("Div", &[&centred, &deviation], vec![]);
        let scale_name = builder.floats(FLOAT, &[1, k, 1, 1], &scale.iter().map(|&v| f64::from(v)).collect::<Vec<_>>())?;
        let bias_name = builder.floats(FLOAT, &[1, k, 1, 1], &bias.iter().map(|&v| f64::from(v)).collect::<Vec<_>>())?;
        let scaled = builder.op("Mul", &[&standard, &scale_name], vec![]);
        let adapted = builder.op("Add", &[&scaled, &bias_name], vec![]);
        let index = builder.int64s(&[1, k, 1, 1], &patch.blamed.iter().map(|&c| c as i64).collect::<Vec<_>>());
        let shape = builder.shape(&adapted);
        let indices = builder.op("Expand", &[&index, &shape], vec![]);
        builder.op_named("ScatterElements", &[&inference, &indices, &adapted], vec![int("axis", 1)], &normalised);
        let flat_mean = builder.reshape(&mean, &[-1]);
        let flat_variance = builder.reshape(&variance, &[-1]);
        outputs.push(flat_mean.clone());
        outputs.push(flat_variance.clone());
        outputs.push(shape.clone());
        probes.push(Probe { layer, mean: flat_mean, variance: flat_variance, shape, scale, bias });
    }
    // The new nodes read values of the graph and feed later ones: the graph is sorted again.
    graph.node.append(&mut builder.nodes);
    graph.initializer.append(&mut builder.initializers);
    let index = GraphIndex::new(graph)?;
    let nodes: Vec<_> = index.topological_order().iter().map(|&p| graph.node[p].clone()).collect();
    graph.node = nodes;
    for name in outputs {
        graph.output.push(crate::onnx::proto::ValueInfoProto { name: Some(name), ..Default::default() });
    }
    Ok((beta, probes))
}
