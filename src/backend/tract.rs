//! The tract backend. tract optimises best for concrete shapes, so a session keeps one optimised
//! plan per set of fed input shapes (the batch size changes between calls: 1, 7, 64, 256, the last
//! partial batch) and builds it on first use.

use std::any::Any;
use std::borrow::Cow;
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

use ndarray::ArrayD;
use prost::Message;
use tract_onnx::pb;
use tract_onnx::prelude::{
    Datum, DatumType, Framework, InferenceFact, InferenceModelExt, IntoRunnable, IntoTValue, IntoTensor, TValue, TVec,
    TractResult, TypedSimpleState,
};

use super::{Session, Signature};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Plans kept per session: enough for the few batch sizes of one evaluation or training run.
const PLAN_CACHE: usize = 8;

/// What a plan is specialised for: per fed input, its position in the signature, element type and
/// shape, in signature order.
type PlanKey = Vec<(usize, &'static str, Vec<usize>)>;

/// A model on tract.
pub(super) struct TractSession {
    signature: Signature,
    proto: pb::ModelProto,
    framework: tract_onnx::Onnx,
    /// Least recently used first.
    plans: Vec<(PlanKey, TypedSimpleState)>,
}

impl TractSession {
    /// Decodes the model for tract; plans are built by the runs that need them.
    pub(super) fn open(model: &[u8], signature: Signature) -> Result<Self> {
        let mut proto = pb::ModelProto::decode(model).map_err(|e| backend(format!("cannot decode the model: {e}")))?;
        if let Some(graph) = proto.graph.as_mut() {
            forget_inner_shapes(graph);
        }
        Ok(TractSession { signature, proto, framework: tract_onnx::onnx(), plans: Vec::new() })
    }

    /// The state of the plan for `key`, built on first use; the most recently used plan moves last.
    fn plan(&mut self, key: PlanKey, fed: &[(usize, TValue)]) -> Result<&mut TypedSimpleState> {
        match self.plans.iter().position(|(k, _)| *k == key) {
            Some(found) => {
                let entry = self.plans.remove(found);
                self.plans.push(entry);
            }
            None => {
                let state = self.build(fed)?;
                if self.plans.len() == PLAN_CACHE {
                    self.plans.remove(0);
                }
                self.plans.push((key, state));
            }
        }
        match self.plans.last_mut() {
            Some((_, state)) => Ok(state),
            None => Err(Error::Internal("the tract plan cache is empty after an insertion".into())),
        }
    }

    /// Parses the model with the fed inputs as sources of their exact type and shape, and
    /// optimises it. A fed input that has a default becomes a source by dropping its initializer;
    /// the defaults left unfed stay constants, which tract folds.
    fn build(&self, fed: &[(usize, TValue)]) -> Result<TypedSimpleState> {
        let overridden: Vec<&str> = fed
            .iter()
            .filter(|(position, _)| self.signature.has_default[*position])
            .map(|(position, _)| self.signature.inputs[*position].as_str())
            .collect();
        let proto = if overridden.is_empty() {
            Cow::Borrowed(&self.proto)
        } else {
            let mut proto = self.proto.clone();
            if let Some(graph) = proto.graph.as_mut() {
                graph.initializer.retain(|tensor| !overridden.contains(&tensor.name.as_str()));
            }
            Cow::Owned(proto)
        };
        let described = fed
            .iter()
            .map(|(position, value)| {
                format!("{} {:?}{:?}", self.signature.inputs[*position], value.datum_type(), value.shape())
            })
            .collect::<Vec<_>>()
            .join(", ");
        guarded(&format!("preparing the model for inputs {described}"), || {
            let mut model = self.framework.model_for_proto_model(&proto)?;
            let sources: Vec<&str> = model.inputs.iter().map(|outlet| model.node(outlet.node).name.as_str()).collect();
            let expected: Vec<&str> =
                fed.iter().map(|(position, _)| self.signature.inputs[*position].as_str()).collect();
            anyhow::ensure!(sources == expected, "tract sees the inputs {sources:?} where {expected:?} are fed");
            for (index, (_, value)) in fed.iter().enumerate() {
                model.set_input_fact(index, InferenceFact::dt_shape_from_tensor(value))?;
            }
            let plan = model.into_optimized()?.into_runnable()?;
            TypedSimpleState::new(&plan)
        })
    }
}

impl Session for TractSession {
    fn input_names(&self) -> &[String] {
        &self.signature.inputs
    }

    fn output_names(&self) -> &[String] {
        &self.signature.outputs
    }

    fn run(&mut self, inputs: &[(&str, &Tensor)]) -> Result<Vec<Tensor>> {
        let positions = self.signature.bind(inputs)?;
        let mut fed: Vec<(usize, &Tensor)> = positions.into_iter().zip(inputs.iter().map(|(_, t)| *t)).collect();
        fed.sort_by_key(|(position, _)| *position);
        let key: PlanKey = fed.iter().map(|(position, t)| (*position, t.type_name(), t.shape().to_vec())).collect();
        let fed =
            fed.into_iter().map(|(position, tensor)| Ok((position, to_tract(tensor)?))).collect::<Result<Vec<_>>>()?;
        let state = self.plan(key, &fed)?;
        let values: TVec<TValue> = fed.into_iter().map(|(_, value)| value).collect();
        let outputs = guarded("running the model", || state.run(values));
        let outputs = match outputs {
            Ok(outputs) => outputs,
            Err(e) => {
                // A failed run may leave the state half-written: rebuild it on the next call.
                self.plans.pop();
                return Err(e);
            }
        };
        outputs.into_iter().zip(&self.signature.outputs).map(|(value, name)| from_tract(value, name)).collect()
    }

    /// One sample at a time (the whole batch at once where an output has no row per sample): for
    /// a single image tract gathers convolution patches lazily instead
    /// of materialising them, which on ResNet20 runs 2.7 times as many images per second as
    /// batches of 200 (494 against 182 on one core); the results are joined row by row.
    fn run_samples(&mut self, inputs: &[(&str, &Tensor)], per_sample: &[&str]) -> Result<Vec<Tensor>> {
        let rows = inputs.iter().find(|(name, _)| per_sample.contains(name)).and_then(|(_, t)| t.shape().first().copied());
        let Some(rows) = rows.filter(|&rows| rows > 1) else { return self.run(inputs) };
        if let Some((name, tensor)) = inputs.iter().find(|(name, t)| per_sample.contains(name) && t.shape().first() != Some(&rows)) {
            return Err(Error::Internal(format!("input '{name}' of shape {:?} does not hold {rows} samples", tensor.shape())));
        }
        let mut outputs: Vec<Vec<Tensor>> = vec![Vec::with_capacity(rows); self.signature.outputs.len()];
        for row in 0..rows {
            let sliced: Vec<Cow<Tensor>> = inputs
                .iter()
                .map(|(name, tensor)| if per_sample.contains(name) { tensor.row(row).map(Cow::Owned) } else { Ok(Cow::Borrowed(*tensor)) })
                .collect::<Result<_>>()?;
            let fed: Vec<(&str, &Tensor)> = inputs.iter().map(|(name, _)| *name).zip(sliced.iter().map(|t| t.as_ref())).collect();
            let results = self.run(&fed)?;
            if results.iter().any(|output| output.shape().first() != Some(&1)) {
                // An output without a row per sample: the graph is not what the caller said.
                return self.run(inputs);
            }
            for (parts, output) in outputs.iter_mut().zip(results) {
                parts.push(output);
            }
        }
        outputs.iter().map(|parts| Tensor::concatenate(parts)).collect()
    }
}

/// Copies a tensor into tract's aligned storage.
fn to_tract(tensor: &Tensor) -> Result<TValue> {
    fn copy<T: Datum + Copy>(array: &ArrayD<T>) -> Result<TValue> {
        let standard = array.as_standard_layout();
        let data = standard
            .as_slice()
            .ok_or_else(|| Error::Internal("an array in standard layout is not contiguous".into()))?;
        let tensor = tract_onnx::prelude::Tensor::from_shape(array.shape(), data)
            .map_err(|e| backend(format!("cannot copy an input: {e:#}")))?;
        Ok(tensor.into_tvalue())
    }
    match tensor {
        Tensor::F32(array) => copy(array),
        Tensor::I64(array) => copy(array),
        Tensor::Bool(array) => copy(array),
    }
}

/// Takes a graph output out of tract. Integer outputs computed from shapes come out as symbolic
/// dimensions (TDim) and are read as int64.
fn from_tract(value: TValue, name: &str) -> Result<Tensor> {
    let tensor = value.into_tensor();
    let read = |e: anyhow::Error| backend(format!("cannot read output '{name}': {e:#}"));
    match tensor.datum_type() {
        DatumType::F32 => tensor.into_plain_array::<f32>().map(Tensor::F32).map_err(read),
        DatumType::I64 | DatumType::TDim => tensor
            .cast_to::<i64>()
            .and_then(|t| t.into_owned().into_plain_array::<i64>())
            .map(Tensor::I64)
            .map_err(read),
        DatumType::Bool => tensor.into_plain_array::<bool>().map(Tensor::Bool).map_err(read),
        other => Err(backend(format!(
            "output '{name}' has element type {other:?}; only float32, int64 and bool outputs are read"
        ))),
    }
}

/// Drops the shapes a graph declares for its intermediate values (and its subgraphs'): exporters
/// write them with the input's symbolic batch (`batch`), which tract cannot unify with the
/// concrete batch a plan is built for. They are hints; tract infers every shape itself.
fn forget_inner_shapes(graph: &mut pb::GraphProto) {
    graph.value_info.clear();
    for node in &mut graph.node {
        for attribute in &mut node.attribute {
            for subgraph in attribute.g.iter_mut().chain(attribute.graphs.iter_mut()) {
                forget_inner_shapes(subgraph);
            }
        }
    }
}

thread_local! {
    /// Whether this thread is inside [`guarded`], whose panics are reported as errors instead.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Installs, once, a panic hook that stays silent for panics inside [`guarded`] (they become one
/// error line) and prints every other panic as the default hook does.
fn install_quiet_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(Cell::get) {
                default(info);
            }
        }));
    });
}

/// Runs tract code, turning its errors and its panics into one-line errors naming the model as
/// what tract cannot run: tract asserts (panics) on some malformed models instead of returning
/// an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> TractResult<T>) -> Result<T> {
    install_quiet_hook();
    let outer = GUARDED.with(|g| g.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(outer));
    let rejected = |message: String| Error::ModelRejected { backend: "tract", message: message.replace('\n', " ") };
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(rejected(format!("{what}: {e:#}"))),
        Err(payload) => Err(rejected(format!("{what}: tract panicked: {}", panic_message(payload.as_ref())))),
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}

fn backend(message: String) -> Error {
    Error::Backend { backend: "tract", message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_tract_panics_become_errors() {
        let e = guarded("probing", || -> TractResult<()> { panic!("boom {}", 7) }).unwrap_err();
        assert_eq!(e.to_string(), "backend tract cannot run the model: probing: tract panicked: boom 7");
        assert_eq!(e.exit_code(), 3);
        let e = guarded("probing", || -> TractResult<()> { anyhow::bail!("bad\nline") }).unwrap_err();
        assert_eq!(e.to_string(), "backend tract cannot run the model: probing: bad line");
    }

    #[test]
    fn backend_tract_copies_non_contiguous_inputs() {
        let array = ndarray::Array2::from_shape_vec((2, 3), vec![1f32, 2., 3., 4., 5., 6.]).unwrap();
        let transposed = Tensor::F32(array.t().to_owned().into_dyn());
        let view = Tensor::F32(array.reversed_axes().into_dyn());
        let a = to_tract(&transposed).unwrap();
        let b = to_tract(&view).unwrap();
        assert_eq!(a.shape(), &[3, 2]);
        assert_eq!(a.to_plain_array_view::<f32>().unwrap(), b.to_plain_array_view::<f32>().unwrap());
        assert_eq!(from_tract(b, "y").unwrap(), transposed);
    }
}
