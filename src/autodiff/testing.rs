//! Test support: small random models built with the protobuf types, and the finite-difference
//! check every backward rule goes through.
//!
//! [`check`] builds the model twice from the same random draws (float32 numbers). In float64 it
//! runs the gradient graph on every runtime that implements its operators in double precision
//! (onnxruntime has no float64 Conv or AveragePool, tract no float64 Sigmoid, LeakyRelu or
//! BatchNormalization) and compares it with central finite differences of Σ seed ⊙ output (step
//! 2⁻²⁰, relative tolerance 1e-6 of the gradient's largest entry). In float32 it runs the gradient
//! graph on onnxruntime and on tract and compares with the float64 result (relative tolerance
//! 1e-4), which checks that both runtimes execute the emitted graph; on a runtime without the
//! operators in float64 (onnxruntime's Conv and pooling, HardSwish anywhere) it also compares with
//! float32 finite differences (step 2⁻⁷, tolerance 1e-3), so that each runtime's own semantics are
//! checked.
// Test support may panic by design, and rounds float64 draws to float32 on purpose.
#![allow(clippy::arithmetic_side_effects, clippy::cast_possible_truncation, clippy::indexing_slicing)]

use std::collections::HashMap;

use ndarray::{ArrayD, IxDyn};
use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::analysis::facts::{Facts, DOUBLE, FLOAT};
use super::vjp;
use crate::backend::{open_session, BackendKind, BackendOptions};
use crate::onnx::graph::GraphIndex;
use crate::onnx::proto::{
    attribute_proto::AttributeType, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, TypeProto, ValueInfoProto,
};
use crate::tensor::Tensor;

pub(crate) use super::emit::float;

/// A string attribute.
pub(crate) fn string(name: &str, value: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::String as i32),
        s: Some(value.as_bytes().to_vec()),
        ..Default::default()
    }
}

/// A model under construction, with the values of its runtime inputs.
pub(crate) struct TestModel {
    dtype: i32,
    opset: i64,
    rng: ChaCha8Rng,
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    initializers: Vec<TensorProto>,
    /// Float64 values of the runtime inputs and float initializers, before rounding to `dtype`.
    values: HashMap<String, ArrayD<f64>>,
}

impl TestModel {
    pub fn new(dtype: i32, opset: i64) -> TestModel {
        TestModel {
            dtype,
            opset,
            rng: ChaCha8Rng::seed_from_u64(2022),
            nodes: Vec::new(),
            inputs: Vec::new(),
            initializers: Vec::new(),
            values: HashMap::new(),
        }
    }

    /// Standard normal draws, rounded to float32 so that both precisions see the same numbers.
    fn normal(&mut self, shape: &[usize]) -> ArrayD<f64> {
        ArrayD::from_shape_simple_fn(IxDyn(shape), || {
            let (u, v): (f64, f64) = (self.rng.gen_range(1e-12..1.0), self.rng.gen());
            f64::from(((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32)
        })
    }

    /// A runtime input of standard normal values.
    pub fn input(&mut self, name: &str, shape: &[usize]) -> String {
        self.scaled_input(name, shape, 1.0)
    }

    /// A runtime input of normal values with standard deviation `scale`.
    pub fn scaled_input(&mut self, name: &str, shape: &[usize], scale: f64) -> String {
        let values = self.normal(shape).mapv(|v| f64::from((v * scale) as f32));
        self.inputs.push(tensor_info(name, self.dtype, shape));
        self.values.insert(name.into(), values);
        name.into()
    }

    /// A float initializer of standard normal values.
    pub fn param(&mut self, name: &str, shape: &[usize]) -> String {
        let values = self.normal(shape);
        self.float_initializer(name, values)
    }

    /// A float initializer of values in [0.5, 3).
    pub fn positive_param(&mut self, name: &str, shape: &[usize]) -> String {
        let values = self.normal(shape).mapv(|v| f64::from((0.5 + v.abs().min(2.5)) as f32));
        self.float_initializer(name, values)
    }

    /// A float scalar initializer.
    pub fn scalar(&mut self, name: &str, value: f64) -> String {
        self.float_initializer(name, ArrayD::from_elem(IxDyn(&[]), value))
    }

    fn float_initializer(&mut self, name: &str, values: ArrayD<f64>) -> String {
        self.initializers.push(float_tensor(name, self.dtype, &values));
        self.values.insert(name.into(), values);
        name.into()
    }

    /// A 1-D int64 initializer.
    pub fn ints(&mut self, name: &str, values: &[i64]) -> String {
        self.int_tensor(name, &[values.len()], values)
    }

    /// An int64 initializer of the given shape.
    pub fn int_tensor(&mut self, name: &str, shape: &[usize], values: &[i64]) -> String {
        self.initializers.push(crate::onnx::tensor::from_i64(name, shape, values));
        name.into()
    }

    /// Adds a node with one output and returns it.
    pub fn node(&mut self, op: &str, inputs: &[&str], attributes: Vec<AttributeProto>) -> String {
        self.node_n(op, inputs, attributes, 1).remove(0)
    }

    pub fn node_n(
        &mut self,
        op: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
        outputs: usize,
    ) -> Vec<String> {
        let names: Vec<String> = (0..outputs).map(|k| format!("{op}_{}_{k}", self.nodes.len())).collect();
        self.nodes.push(NodeProto {
            name: Some(format!("{op}_{}", self.nodes.len())),
            op_type: Some(op.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: names.clone(),
            attribute: attributes,
            ..Default::default()
        });
        names
    }

    pub fn model(&self, output: &str) -> ModelProto {
        let output_info = ValueInfoProto {
            name: Some(output.into()),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: Some(self.dtype),
                    shape: None,
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        ModelProto {
            ir_version: Some(8),
            opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(self.opset) }],
            graph: Some(GraphProto {
                node: self.nodes.clone(),
                name: Some("test".into()),
                initializer: self.initializers.clone(),
                input: self.inputs.clone(),
                output: vec![output_info],
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// A value description with a static shape.
pub(crate) fn tensor_info(name: &str, dtype: i32, shape: &[usize]) -> ValueInfoProto {
    crate::onnx::builder::tensor_info(name, dtype, crate::onnx::builder::static_dims(shape))
}

/// A float32 or float64 initializer holding `values`.
pub(crate) fn float_tensor(name: &str, dtype: i32, values: &ArrayD<f64>) -> TensorProto {
    let raw = match dtype {
        DOUBLE => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        _ => values.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect(),
    };
    TensorProto {
        name: Some(name.into()),
        data_type: Some(dtype),
        dims: values.shape().iter().map(|&d| d as i64).collect(),
        raw_data: Some(raw),
        ..Default::default()
    }
}

/// `model` (float64 inputs and outputs) behind float32 ones, so that the crate's float32 backends
/// evaluate it in double precision: every float64 input `x` becomes `x.hi` + `x.lo` (two float32
/// inputs whose sum is exact) and every float64 output `y` the pair `y.hi`, `y.lo` with
/// `y.hi + y.lo` equal to `y` within 2⁻⁴⁸ relative.
fn behind_float32(model: &ModelProto) -> ModelProto {
    let mut model = model.clone();
    let graph = model.graph.as_mut().unwrap();
    let cast = |input: &str, output: &str, to: i32| NodeProto {
        op_type: Some("Cast".into()),
        input: vec![input.into()],
        output: vec![output.into()],
        attribute: vec![super::emit::int("to", i64::from(to))],
        ..Default::default()
    };
    let binary = |op: &str, a: &str, b: &str, output: &str| NodeProto {
        op_type: Some(op.into()),
        input: vec![a.into(), b.into()],
        output: vec![output.into()],
        ..Default::default()
    };
    let mut front = Vec::new();
    let mut inputs = Vec::new();
    for input in &graph.input {
        let name = input.name();
        let (hi, lo) = (format!("{name}.hi"), format!("{name}.lo"));
        front.push(cast(&hi, &format!("wrap/{hi}"), DOUBLE));
        front.push(cast(&lo, &format!("wrap/{lo}"), DOUBLE));
        front.push(binary("Add", &format!("wrap/{hi}"), &format!("wrap/{lo}"), name));
        for half in [hi, lo] {
            let mut info = input.clone();
            info.name = Some(half);
            if let Some(type_proto::Value::TensorType(tensor)) = info.r#type.as_mut().and_then(|t| t.value.as_mut()) {
                tensor.elem_type = Some(FLOAT);
            }
            inputs.push(info);
        }
    }
    let mut outputs = Vec::new();
    for output in &graph.output {
        let name = output.name();
        let (hi, lo, back, rest) =
            (format!("{name}.hi"), format!("{name}.lo"), format!("wrap/{name}.back"), format!("wrap/{name}.rest"));
        graph.node.push(cast(name, &hi, FLOAT));
        graph.node.push(cast(&hi, &back, DOUBLE));
        graph.node.push(binary("Sub", name, &back, &rest));
        graph.node.push(cast(&rest, &lo, FLOAT));
        for half in [hi, lo] {
            outputs.push(ValueInfoProto { name: Some(half), r#type: None, ..Default::default() });
        }
    }
    front.append(&mut graph.node);
    graph.node = front;
    graph.input = inputs;
    graph.output = outputs;
    model
}

/// Checks the gradients of the model `build` makes with respect to `wrt` (see the module doc), at
/// opset 17, on both runtimes.
pub(crate) fn check(wrt: &[&str], build: impl Fn(&mut TestModel) -> String) {
    check_with(Runs::default(), wrt, build)
}

pub(crate) fn check_opset(opset: i64, wrt: &[&str], build: impl Fn(&mut TestModel) -> String) {
    check_with(Runs { opset, ..Runs::default() }, wrt, build)
}

/// Where and how a check runs.
pub(crate) struct Runs {
    pub opset: i64,
    pub runtimes: &'static [BackendKind],
    /// Whether float32 finite differences are meaningful (not for MaxPool, whose windows hold
    /// values closer than the float32 step).
    pub float32_differences: bool,
}

impl Default for Runs {
    fn default() -> Self {
        Runs { opset: 17, runtimes: &[BackendKind::Ort, BackendKind::Tract], float32_differences: true }
    }
}

/// "name error, …" for the report.
fn listed(names: &[&str], errors: &[f64]) -> String {
    names.iter().zip(errors).map(|(n, e)| format!("{n} {e:.1e}")).collect::<Vec<_>>().join(", ")
}

/// The largest absolute entry.
fn max_abs(values: &ArrayD<f64>) -> f64 {
    values.iter().fold(0.0f64, |m, v| m.max(v.abs()))
}

/// Runs a model on named float64 values (in whatever precision the runtime computes).
pub(crate) type Evaluate<'a> = Box<dyn FnMut(&HashMap<String, ArrayD<f64>>) -> crate::Result<Vec<ArrayD<f64>>> + 'a>;

/// Opens the gradient model on `kind` and evaluates it once: in float64 through [`behind_float32`],
/// or as the float32 model it is.
pub(crate) fn evaluator<'a>(model: &ModelProto, kind: BackendKind, double: bool) -> crate::Result<Evaluate<'a>> {
    let inputs: Vec<String> = model.graph.as_ref().unwrap().input.iter().map(|i| i.name().to_string()).collect();
    let bytes = if double { behind_float32(model) } else { model.clone() }.encode_to_vec();
    let mut session = open_session(&bytes, &BackendOptions { kind, ..Default::default() })?;
    Ok(Box::new(move |values: &HashMap<String, ArrayD<f64>>| {
        let mut feeds = Vec::new();
        for name in &inputs {
            let value = &values[name];
            let hi = value.mapv(|v| v as f32);
            if double {
                let lo = ndarray::Zip::from(value).and(&hi).map_collect(|&v, &h| (v - f64::from(h)) as f32);
                assert!(ndarray::Zip::from(value).and(&hi).and(&lo).all(|&v, &h, &l| f64::from(h) + f64::from(l) == v));
                feeds.push((format!("{name}.hi"), Tensor::F32(hi)));
                feeds.push((format!("{name}.lo"), Tensor::F32(lo)));
            } else {
                feeds.push((name.clone(), Tensor::F32(hi)));
            }
        }
        let feeds: Vec<(&str, &Tensor)> = feeds.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let outputs: Vec<ArrayD<f64>> =
            session.run(&feeds)?.iter().map(|t| t.as_f32().unwrap().mapv(f64::from)).collect();
        Ok(if double { outputs.chunks(2).map(|pair| &pair[0] + &pair[1]).collect() } else { outputs })
    }))
}

/// The largest difference between the analytic gradients and central finite differences of
/// Σ seed ⊙ output with step `step`, relative to each gradient's largest entry, per tensor.
fn finite_differences(
    evaluate: &mut Evaluate,
    values: &HashMap<String, ArrayD<f64>>,
    seed: &ArrayD<f64>,
    wrt: &[&str],
    analytic: &[ArrayD<f64>],
    step: f64,
) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    wrt.iter()
        .zip(analytic)
        .map(|(name, analytic)| {
            let size = values[*name].len();
            let picks: Vec<usize> =
                if size <= 48 { (0..size).collect() } else { (0..48).map(|_| rng.gen_range(0..size)).collect() };
            let mut worst: f64 = 0.0;
            for &i in &picks {
                let mut objective = |delta: f64| {
                    let mut moved = values.clone();
                    moved.get_mut(*name).unwrap().as_slice_mut().unwrap()[i] += delta;
                    (&evaluate(&moved).unwrap()[0] * seed).sum()
                };
                let fd = (objective(step) - objective(-step)) / (2.0 * step);
                worst = worst.max((fd - analytic.as_slice().unwrap()[i]).abs());
            }
            worst / max_abs(analytic).max(1e-300)
        })
        .collect()
}

pub(crate) fn check_with(runs: Runs, wrt: &[&str], build: impl Fn(&mut TestModel) -> String) {
    let opset = runs.opset;
    let mut double = TestModel::new(DOUBLE, opset);
    let output = build(&mut double);
    let model = double.model(&output);
    let ops: Vec<String> = model.graph.as_ref().unwrap().node.iter().map(|n| n.op_type().to_string()).collect();
    let label = format!("{} (opset {opset})", ops.join("+"));
    let graph = vjp(&model, &output, wrt).unwrap_or_else(|e| panic!("{label}: {e}"));

    let index = GraphIndex::new(model.graph.as_ref().unwrap()).unwrap();
    let facts = Facts::infer(model.graph.as_ref().unwrap(), &index, opset);
    let output_shape: Vec<usize> =
        facts.get(&output).and_then(|f| f.shape.clone()).unwrap().iter().map(|d| d.value().unwrap() as usize).collect();
    let seed = double.normal(&output_shape);
    let mut values = double.values.clone();
    values.insert(graph.seed.clone(), seed.clone());

    // Float64 on every runtime that implements the operators in double precision.
    let mut reference = None;
    let mut report = Vec::new();
    let mut without_double = Vec::new();
    for &kind in runs.runtimes {
        let opened = evaluator(&graph.model, kind, true).and_then(|mut e| e(&values).map(|out| (e, out)));
        let (mut evaluate, mut outputs) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                report.push(format!("{kind}: no float64 ({})", e.to_string().lines().next().unwrap_or("")));
                without_double.push(kind);
                continue;
            }
        };
        let analytic = outputs.split_off(1);
        let errors = finite_differences(&mut evaluate, &values, &seed, wrt, &analytic, 2f64.powi(-20));
        for (name, error) in wrt.iter().zip(&errors) {
            assert!(*error < 1e-6, "{label} on {kind}: float64 gradient for {name} is off by {error:.2e} (relative)");
        }
        report.push(format!("{kind}: float64 finite differences, relative error {}", listed(wrt, &errors)));
        reference.get_or_insert(analytic);
    }

    // Float32, the precision the tool trains in, on every runtime: against the float64 gradient,
    // and against float32 finite differences where the runtime had no float64 (so that its own
    // semantics, e.g. of pooling divisors, are checked too).
    assert!(reference.is_some() || runs.float32_differences, "{label}: nothing to compare with: {report:?}");
    let mut single = TestModel::new(FLOAT, opset);
    let output32 = build(&mut single);
    let graph32 = vjp(&single.model(&output32), &output32, wrt).unwrap();
    for &kind in runs.runtimes {
        let mut evaluate = evaluator(&graph32.model, kind, false).unwrap_or_else(|e| panic!("{label}: {e}"));
        let analytic = evaluate(&values).unwrap_or_else(|e| panic!("{label} on {kind}: {e}")).split_off(1);
        if let Some(reference) = &reference {
            let errors: Vec<f64> = analytic
                .iter()
                .zip(reference)
                .map(|(got, want)| max_abs(&(got - want)) / max_abs(want).max(1e-300))
                .collect();
            for (name, error) in wrt.iter().zip(&errors) {
                assert!(
                    *error < 1e-4,
                    "{label} on {kind}: float32 gradient for {name} is off by {error:.2e} (relative)"
                );
            }
            report.push(format!("{kind}: float32 vs float64, relative error {}", listed(wrt, &errors)));
        }
        if runs.float32_differences && without_double.contains(&kind) {
            let errors = finite_differences(&mut evaluate, &values, &seed, wrt, &analytic, 2f64.powi(-7));
            for (name, error) in wrt.iter().zip(&errors) {
                assert!(
                    *error < 1e-3,
                    "{label} on {kind}: float32 finite differences for {name} are off by {error:.2e}"
                );
            }
            report.push(format!("{kind}: float32 finite differences, relative error {}", listed(wrt, &errors)));
        }
    }
    eprintln!("{label}: {}", report.join("; "));
}

/// `model` computing in float64: float32 initializers, constants, casts and value types widened.
/// Gemm becomes Transpose, MatMul and Add, because tract's float64 Gemm with a constant C fails.
pub(crate) fn to_double(model: &ModelProto) -> ModelProto {
    fn widen(tensor: &mut TensorProto) {
        if tensor.data_type == Some(FLOAT) {
            let values = crate::onnx::tensor::to_f32(tensor).unwrap().mapv(f64::from);
            *tensor = TensorProto { name: tensor.name.clone(), ..float_tensor("", DOUBLE, &values) };
        }
    }
    fn widen_info(info: &mut ValueInfoProto) {
        if let Some(type_proto::Value::TensorType(tensor)) = info.r#type.as_mut().and_then(|t| t.value.as_mut()) {
            if tensor.elem_type == Some(FLOAT) {
                tensor.elem_type = Some(DOUBLE);
            }
        }
    }
    let mut model = model.clone();
    let graph = model.graph.as_mut().unwrap();
    graph.initializer.iter_mut().for_each(widen);
    graph.input.iter_mut().chain(&mut graph.output).chain(&mut graph.value_info).for_each(widen_info);
    let mut nodes = Vec::new();
    for node in std::mem::take(&mut graph.node) {
        if node.op_type() != "Gemm" {
            nodes.push(node);
            continue;
        }
        assert!(node.attribute.iter().all(|a| !matches!(a.name(), "alpha" | "beta") || a.f == Some(1.0)));
        let operand = |i: usize, flag: &str, nodes: &mut Vec<NodeProto>| {
            if crate::onnx::graph::attr_int(&node, flag, 0) == 0 {
                return node.input[i].clone();
            }
            let transposed = format!("{}/{flag}", node.output[0]);
            nodes.push(NodeProto {
                op_type: Some("Transpose".into()),
                input: vec![node.input[i].clone()],
                output: vec![transposed.clone()],
                ..Default::default()
            });
            transposed
        };
        let (a, b) = (operand(0, "transA", &mut nodes), operand(1, "transB", &mut nodes));
        let product = format!("{}/product", node.output[0]);
        nodes.push(NodeProto {
            op_type: Some("MatMul".into()),
            input: vec![a, b],
            output: vec![product.clone()],
            ..Default::default()
        });
        nodes.push(NodeProto {
            op_type: Some("Add".into()),
            input: vec![product, node.input[2].clone()],
            output: node.output.clone(),
            ..Default::default()
        });
    }
    graph.node = nodes;
    for node in &mut graph.node {
        for attribute in &mut node.attribute {
            attribute.t.iter_mut().for_each(widen);
            if node.op_type.as_deref() == Some("Cast")
                && attribute.name.as_deref() == Some("to")
                && attribute.i == Some(i64::from(FLOAT))
            {
                attribute.i = Some(i64::from(DOUBLE));
            }
        }
    }
    model
}

/// `model` with the initializers `names` turned into graph inputs, so that they can be varied.
pub(crate) fn promote(model: &ModelProto, names: &[&str]) -> ModelProto {
    let mut model = model.clone();
    let graph = model.graph.as_mut().unwrap();
    for name in names {
        let at = graph.initializer.iter().position(|t| t.name() == *name).unwrap();
        let tensor = graph.initializer.remove(at);
        let shape: Vec<usize> = tensor.dims.iter().map(|&d| d as usize).collect();
        graph.input.push(tensor_info(name, tensor.data_type(), &shape));
    }
    model
}
