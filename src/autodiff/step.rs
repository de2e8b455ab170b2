//! The training-step graph: forward pass, mean softmax cross-entropy, its gradient with respect to
//! the trainable tensors, and one step of `torch.optim.SGD` (momentum, weight decay, no dampening,
//! no Nesterov).

use super::backprop::{assemble, backpropagate, sources, value_info, Forward, Interface};
use super::emit::{int, Builder};
use crate::analysis::facts::{DOUBLE, FLOAT, INT64};
use crate::error::{Error, Result};
use crate::onnx::proto::ModelProto;

/// How the step is built.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOptions {
    /// SGD momentum μ (0 disables it).
    pub momentum: f64,
    /// L2 weight decay added to the gradient (0 disables it).
    pub weight_decay: f64,
    /// The logits output ([N, classes]); the model's first output when `None`.
    pub logits: Option<String>,
}

impl Default for StepOptions {
    /// DeepPatch's retraining defaults (docs/specification.md §3.3): momentum 0.9, weight decay 5e-4.
    fn default() -> Self {
        StepOptions { momentum: 0.9, weight_decay: 5e-4, logits: None }
    }
}

/// One trainable tensor's inputs and outputs in the step graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parameter {
    /// The tensor's name, also the input that takes its current value.
    pub name: String,
    /// The input that takes its momentum buffer (zeros before the first step).
    pub momentum: String,
    /// The outputs with the updated tensor and momentum buffer.
    pub updated: String,
    pub updated_momentum: String,
    /// Whether the loss depends on the tensor. When it does not, the step returns the tensor and its
    /// buffer unchanged, as PyTorch skips a parameter without a gradient.
    pub reaches_loss: bool,
}

/// A training-step model and the names of its interface.
#[derive(Debug, Clone)]
pub struct TrainingStep {
    pub model: ModelProto,
    /// The image batch (the forward model's input, dynamic batch).
    pub images: String,
    /// int64 labels [N].
    pub labels: String,
    /// The learning rate, a float scalar.
    pub learning_rate: String,
    /// Outputs: the mean cross-entropy (float scalar) and the number of samples whose arg-max logit
    /// is their label (int64 scalar), both for the weights before the update.
    pub loss: String,
    pub correct: String,
    pub parameters: Vec<Parameter>,
}

/// Builds one SGD step on the mean softmax cross-entropy of `model`'s logits, training the float
/// initializers `trainable`; every other initializer stays a constant. With gradient g, PyTorch's
/// SGD computes d = g + wd · p, buf = μ · buf + d (buf = d on the first step, which a zero buffer
/// reproduces exactly), p ← p − lr · buf; so does this graph, in the tensors' precision. Only the
/// operators the model already uses and opset-9 operators are added, so the opset is kept.
pub fn training_step(model: &ModelProto, trainable: &[&str], options: &StepOptions) -> Result<TrainingStep> {
    let forward = Forward::new(model)?;
    let trainable = sources(&forward, trainable)?;
    if let Some(name) = trainable.iter().find(|t| forward.index.initializer(t).is_none()) {
        return Err(Error::InvalidGraph(format!("trainable tensor '{name}' is not an initializer of the model")));
    }
    let logits = match &options.logits {
        Some(name) => name.clone(),
        None => forward
            .graph
            .output
            .first()
            .and_then(|o| o.name.clone())
            .ok_or_else(|| Error::InvalidGraph("the model has no output".into()))?,
    };
    let images = forward
        .graph
        .input
        .iter()
        .filter_map(|i| i.name.clone())
        .find(|name| forward.index.is_runtime_input(name))
        .ok_or_else(|| Error::InvalidGraph("the model has no input without a default".into()))?;
    let fact = forward
        .facts
        .get(&logits)
        .filter(|f| (f.dtype == FLOAT || f.dtype == DOUBLE) && forward.index.producer(&logits).is_some());
    let (dtype, shape) = match fact.and_then(|f| Some((f.dtype, f.shape.as_deref()?))) {
        Some((dtype, [batch, classes])) => (dtype, [batch.clone(), classes.clone()]),
        _ => {
            return Err(Error::InvalidGraph(format!(
                "'{logits}' is not a float [batch, classes] value computed by the model"
            )))
        }
    };
    let classes = shape[1]
        .value()
        .ok_or_else(|| Error::InvalidGraph(format!("the number of classes of '{logits}' is not static")))?;

    let mut b = forward.builder();
    let labels = b.fresh("labels");
    let learning_rate = b.fresh("learning_rate");
    let head = loss_head(&mut b, &logits, &labels, dtype, classes)?;
    let found = backpropagate(&forward, &mut b, &[(logits.clone(), head.seed)], &trainable)?;

    let mut parameters = Vec::new();
    let mut inputs = vec![value_info(&labels, INT64, Some(&shape[..1]), &forward.facts)];
    let mut outputs = vec![
        value_info(&head.loss, dtype, Some(&[]), &forward.facts),
        value_info(&head.correct, INT64, Some(&[]), &forward.facts),
    ];
    for (name, gradient) in trainable.iter().zip(found) {
        let momentum = b.fresh(&format!("momentum/{name}"));
        let updated = b.fresh(&format!("updated/{name}"));
        let updated_momentum = b.fresh(&format!("updated_momentum/{name}"));
        b.set_scope(&format!("sgd/{name}"));
        let parameter =
            Parameter { name: name.clone(), momentum, updated, updated_momentum, reaches_loss: gradient.is_some() };
        let param_dtype = forward.facts.get(name).map_or(dtype, |f| f.dtype);
        match gradient {
            Some(gradient) => sgd(&mut b, options, param_dtype, &parameter, &gradient, &learning_rate)?,
            None => {
                b.op_named("Identity", &[name], vec![], &parameter.updated);
                b.op_named("Identity", &[&parameter.momentum], vec![], &parameter.updated_momentum);
            }
        }
        let param_shape = forward.facts.get(name).and_then(|f| f.shape.clone());
        let describe = |value: &str| value_info(value, param_dtype, param_shape.as_deref(), &forward.facts);
        inputs.push(describe(&parameter.momentum));
        outputs.push(describe(&parameter.updated));
        outputs.push(describe(&parameter.updated_momentum));
        parameters.push(parameter);
    }
    inputs.push(value_info(&learning_rate, dtype, Some(&[]), &forward.facts));
    let interface = Interface { promoted: trainable.clone(), inputs, outputs };
    Ok(TrainingStep {
        model: assemble(&forward, b, interface),
        images,
        labels,
        learning_rate,
        loss: head.loss,
        correct: head.correct,
        parameters,
    })
}

/// The loss, the count of correct predictions and the loss's gradient with respect to the logits.
struct Head {
    loss: String,
    correct: String,
    seed: String,
}

/// Mean softmax cross-entropy of `logits` [N, classes] against int64 `labels` [N], whose gradient
/// is (softmax − one-hot) / N; and the number of samples whose first arg-max is the label.
fn loss_head(b: &mut Builder, logits: &str, labels: &str, dtype: i32, classes: i64) -> Result<Head> {
    b.set_scope("loss");
    let log_probabilities = b.op("LogSoftmax", &[logits], vec![int("axis", 1)]);
    let column = b.unsqueeze(labels, &[1]);
    let class_ids: Vec<i64> = (0..classes).collect();
    let class_ids = b.ints(&class_ids);
    let matches = b.op("Equal", &[&column, &class_ids], vec![]);
    let one_hot = b.op("Cast", &[&matches], vec![int("to", i64::from(dtype))]);
    let picked = b.op("Mul", &[&one_hot, &log_probabilities], vec![]);
    let per_sample = b.reduce_sum(&picked, &[1], false);
    let mean = b.op("ReduceMean", &[&per_sample], vec![int("keepdims", 0)]);
    let loss = b.fresh("loss");
    b.op_named("Neg", &[&mean], vec![], &loss);

    let shape = b.shape(logits);
    let first = b.int64s(&[], &[0]);
    let batch = b.op("Gather", &[&shape, &first], vec![]);
    let batch = b.op("Cast", &[&batch], vec![int("to", i64::from(dtype))]);
    let probabilities = b.op("Exp", &[&log_probabilities], vec![]);
    let residual = b.op("Sub", &[&probabilities, &one_hot], vec![]);
    let seed = b.op("Div", &[&residual, &batch], vec![]);

    let predicted = b.op("ArgMax", &[logits], vec![int("axis", 1), int("keepdims", 0)]);
    let hits = b.op("Equal", &[&predicted, labels], vec![]);
    let hits = b.op("Cast", &[&hits], vec![int("to", i64::from(INT64))]);
    let correct = b.fresh("correct");
    b.op_named("ReduceSum", &[&hits], vec![int("keepdims", 0)], &correct);
    Ok(Head { loss, correct, seed })
}

/// `torch.optim.SGD`'s update of one tensor of element type `dtype`, given its `gradient`.
fn sgd(
    b: &mut Builder,
    options: &StepOptions,
    dtype: i32,
    parameter: &Parameter,
    gradient: &str,
    lr: &str,
) -> Result<()> {
    let param = parameter.name.as_str();
    let direction = if options.weight_decay != 0.0 {
        let decay = b.scale(param, options.weight_decay, dtype)?;
        b.op("Add", &[gradient, &decay], vec![])
    } else {
        gradient.to_string()
    };
    if options.momentum != 0.0 {
        let kept = b.scale(&parameter.momentum, options.momentum, dtype)?;
        b.op_named("Add", &[&kept, &direction], vec![], &parameter.updated_momentum);
    } else {
        b.op_named("Identity", &[&direction], vec![], &parameter.updated_momentum);
    }
    let change = b.op("Mul", &[lr, &parameter.updated_momentum], vec![]);
    b.op_named("Sub", &[param, &change], vec![], &parameter.updated);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::cast_possible_truncation, clippy::indexing_slicing)]
mod tests {
    use std::collections::HashMap;

    use ndarray::{ArrayD, Axis, IxDyn};
    use prost::Message;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::autodiff::testing::{evaluator, promote, to_double};
    use crate::backend::{open_session, BackendKind, BackendOptions};
    use crate::onnx::tensor::to_f32;
    use crate::tensor::Tensor;
    use crate::test_support::fixture;

    /// The first `count` images of the preprocessed CIFAR-10 reference batch.
    fn images(count: usize) -> ArrayD<f32> {
        let array = crate::data::npy::read_npy(&fixture("reference/cifar10_test64_nchw.npy")).unwrap();
        let crate::data::npy::NpyData::F32(all) = array.data else { panic!("float32 expected") };
        let values = all[..count * 3 * 32 * 32].to_vec();
        ArrayD::from_shape_vec(IxDyn(&[count, 3, 32, 32]), values).unwrap()
    }

    /// Mean softmax cross-entropy, in float64.
    fn cross_entropy(logits: &ArrayD<f64>, labels: &[i64]) -> f64 {
        let rows: Vec<f64> = logits
            .axis_iter(Axis(0))
            .zip(labels)
            .map(|(row, &label)| {
                let max = row.fold(f64::MIN, |m, &v| m.max(v));
                let log_sum = row.mapv(|v| (v - max).exp()).sum().ln() + max;
                log_sum - row[label as usize]
            })
            .collect();
        rows.iter().sum::<f64>() / rows.len() as f64
    }

    #[test]
    fn resnet20_gradients_match_finite_differences() {
        // ResNet20's β model as retraining sees it: κ = 0.25, fresh replacement filters.
        let original = crate::onnx::load_model(&fixture("models/resnet20_cifar10.onnx")).unwrap();
        let spec = crate::units::spec::random_spec(&original, 0.25, 7, crate::units::Decision::adapt_all()).unwrap();
        let (model, params) = crate::units::beta_model(&original, &spec).unwrap();
        let kernels: Vec<String> = params.iter().map(|p| p.replacement_weight.clone()).collect();
        let biases: Vec<String> = params.iter().filter_map(|p| p.replacement_bias.clone()).collect();
        let replacements: Vec<String> = kernels.iter().chain(&biases).cloned().collect();
        let graph = model.graph.as_ref().unwrap();
        // Every replacement kernel and bias trains, as in DeepPatch's retraining.
        let trainable: Vec<&str> = replacements.iter().map(String::as_str).collect();
        let options = StepOptions { momentum: 0.0, weight_decay: 0.0, logits: None };
        let step = training_step(&model, &trainable, &options).unwrap();

        let (images, labels) = (images(8), vec![3i64, 8, 0, 6, 1, 9, 5, 7]);
        let initial: HashMap<&str, ArrayD<f32>> = trainable
            .iter()
            .map(|name| {
                (*name, to_f32(graph.initializer.iter().find(|t| t.name() == *name).unwrap()).unwrap().into_owned())
            })
            .collect();
        let mut feeds = vec![
            (step.images.clone(), Tensor::F32(images.clone())),
            (step.labels.clone(), Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[labels.len()]), labels.clone()).unwrap())),
            (step.learning_rate.clone(), Tensor::F32(ArrayD::zeros(IxDyn(&[])))),
        ];
        for parameter in &step.parameters {
            let value = &initial[parameter.name.as_str()];
            feeds.push((parameter.name.clone(), Tensor::F32(value.clone())));
            feeds.push((parameter.momentum.clone(), Tensor::F32(ArrayD::zeros(value.raw_dim()))));
        }
        let feeds: Vec<(&str, &Tensor)> = feeds.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let bytes = step.model.encode_to_vec();
        // Without momentum and weight decay the new momentum buffer is the gradient itself.
        let mut runs: Vec<HashMap<String, ArrayD<f64>>> = Vec::new();
        for kind in [BackendKind::Ort, BackendKind::Tract] {
            let mut session = open_session(&bytes, &BackendOptions { kind, ..Default::default() }).unwrap();
            let names = session.output_names().to_vec();
            let outputs = session.run(&feeds).unwrap();
            let by_name: HashMap<String, ArrayD<f64>> = names
                .into_iter()
                .zip(outputs)
                .filter_map(|(n, t)| Some((n, t.as_f32().ok()?.mapv(f64::from))))
                .collect();
            runs.push(by_name);
        }
        let (ort, tract) = (&runs[0], &runs[1]);
        for parameter in &step.parameters {
            let (a, b) = (&ort[&parameter.updated_momentum], &tract[&parameter.updated_momentum]);
            let scale = a.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let gap = (a - b).iter().fold(0.0f64, |m, v| m.max(v.abs()));
            assert!(
                gap <= 1e-4 * scale,
                "{}: onnxruntime and tract differ by {gap:.2e} (scale {scale:.2e})",
                parameter.name
            );
        }

        // Finite differences of the loss in float64, on tract (onnxruntime has no float64 Conv).
        let forward = promote(&to_double(&model), &trainable);
        let mut evaluate = evaluator(&forward, BackendKind::Tract, true).unwrap();
        let mut values: HashMap<String, ArrayD<f64>> =
            trainable.iter().map(|name| (name.to_string(), initial[name].mapv(f64::from))).collect();
        values.insert(step.images.clone(), images.mapv(f64::from));
        let mut loss = |values: &HashMap<String, ArrayD<f64>>| cross_entropy(&evaluate(values).unwrap()[0], &labels);
        let reported = ort[&step.loss].first().copied().unwrap();
        let exact = loss(&values);
        assert!((reported - exact).abs() < 1e-5 * exact, "loss {reported} against {exact}");

        let mut rng = ChaCha8Rng::seed_from_u64(20);
        let step_size = 2f64.powi(-20);
        let mut worst: f64 = 0.0;
        // 16 kernel and 4 bias coordinates, from tensors spread over the network.
        // One kernel per patched layer comes first, then the biases.
        let (kernels, biases): (Vec<usize>, Vec<usize>) = (0..trainable.len()).partition(|&i| i < params.len());
        let tensors =
            (0..16).map(|k| kernels[k * kernels.len() / 16]).chain((0..4).map(|k| biases[k * biases.len() / 4]));
        for tensor in tensors {
            let name = trainable[tensor];
            let gradient = ort[&step.parameters[tensor].updated_momentum].as_slice().unwrap();
            // A coordinate whose gradient is not exactly zero (a filter whose ReLU never fires on
            // the batch would make the comparison trivial).
            let pick =
                std::iter::repeat_with(|| rng.gen_range(0..gradient.len())).find(|&i| gradient[i] != 0.0).unwrap();
            let mut objective = |delta: f64| {
                let mut moved = values.clone();
                moved.get_mut(name).unwrap().as_slice_mut().unwrap()[pick] += delta;
                loss(&moved)
            };
            let fd = (objective(step_size) - objective(-step_size)) / (2.0 * step_size);
            let analytic = gradient[pick];
            let error = (analytic - fd).abs() / fd.abs().max(1e-4);
            eprintln!(
                "{name}[{pick}]: analytic {analytic:+.6e}, finite differences {fd:+.6e}, relative error {error:.1e}"
            );
            worst = worst.max(error);
        }
        eprintln!("ResNet20: worst relative error over 20 coordinates {worst:.2e}");
        assert!(worst < 1e-2);
    }
}
