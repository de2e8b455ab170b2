//! Emission of the nodes and constants the gradient graph adds, every name fresh under the
//! `deeppatch/` prefix, with the opset differences (ReduceSum and Unsqueeze take their axes as an
//! attribute before opset 13 and as an input from 13 on) handled in one place.

use std::collections::HashMap;

use super::facts::{DOUBLE, FLOAT, INT64};
use crate::error::{Error, Result};
use crate::onnx::graph::NameGen;
use crate::onnx::proto::{attribute_proto::AttributeType, AttributeProto, GraphProto, NodeProto, TensorProto};

/// The prefix of every added name.
pub(crate) const PREFIX: &str = "deeppatch/";

/// Accumulates the added nodes and initializers.
pub(crate) struct Builder {
    names: NameGen,
    opset: i64,
    /// Prefix of the names given to the nodes being emitted (the node being differentiated).
    scope: String,
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<TensorProto>,
    shapes: HashMap<String, String>,
    constants: HashMap<(i32, Vec<usize>, Vec<u8>), String>,
}

impl Builder {
    pub fn new(graph: &GraphProto, opset: i64) -> Builder {
        Builder {
            names: NameGen::new(graph, PREFIX),
            opset,
            scope: String::new(),
            nodes: Vec::new(),
            initializers: Vec::new(),
            shapes: HashMap::new(),
            constants: HashMap::new(),
        }
    }

    /// A fresh name `deeppatch/<base>`.
    pub fn fresh(&mut self, base: &str) -> String {
        self.names.fresh(base)
    }

    /// Names the following nodes after `scope` (e.g. the forward node they differentiate).
    pub fn set_scope(&mut self, scope: &str) {
        self.scope = scope.to_string();
    }

    /// Emits one node with a single output and returns that output.
    pub fn op(&mut self, op: &str, inputs: &[&str], attributes: Vec<AttributeProto>) -> String {
        self.op_n(op, inputs, attributes, 1).remove(0)
    }

    /// Emits one node with `outputs` outputs.
    pub fn op_n(&mut self, op: &str, inputs: &[&str], attributes: Vec<AttributeProto>, outputs: usize) -> Vec<String> {
        let base = if self.scope.is_empty() { op.to_string() } else { format!("{}/{op}", self.scope) };
        let names: Vec<String> = (0..outputs).map(|_| self.names.fresh(&base)).collect();
        self.push(op, inputs, attributes, names.clone());
        names
    }

    /// Emits one node whose single output is `output`, a name obtained from [`Builder::fresh`].
    pub fn op_named(&mut self, op: &str, inputs: &[&str], attributes: Vec<AttributeProto>, output: &str) {
        self.push(op, inputs, attributes, vec![output.to_string()]);
    }

    fn push(&mut self, op: &str, inputs: &[&str], attributes: Vec<AttributeProto>, outputs: Vec<String>) {
        self.nodes.push(NodeProto {
            name: outputs.first().cloned(),
            op_type: Some(op.to_string()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs,
            attribute: attributes,
            ..Default::default()
        });
    }

    /// An initializer holding `tensor` (named here), shared with an identical earlier one.
    fn constant(&mut self, data_type: i32, shape: &[usize], raw: Vec<u8>) -> String {
        let key = (data_type, shape.to_vec(), raw);
        if let Some(name) = self.constants.get(&key) {
            return name.clone();
        }
        let name = self.names.fresh("const");
        self.initializers.push(TensorProto {
            name: Some(name.clone()),
            data_type: Some(data_type),
            dims: shape.iter().map(|&d| d as i64).collect(),
            raw_data: Some(key.2.clone()),
            ..Default::default()
        });
        self.constants.insert(key, name.clone());
        name
    }

    /// An int64 constant of the given shape.
    pub fn int64s(&mut self, shape: &[usize], values: &[i64]) -> String {
        self.constant(INT64, shape, values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    /// A 1-D int64 constant.
    pub fn ints(&mut self, values: &[i64]) -> String {
        self.int64s(&[values.len()], values)
    }

    /// A float constant of element type `dtype` (float32 or float64).
    pub fn floats(&mut self, dtype: i32, shape: &[usize], values: &[f64]) -> Result<String> {
        let raw = encode_floats(dtype, values)?;
        Ok(self.constant(dtype, shape, raw))
    }

    /// A scalar float constant of element type `dtype`.
    pub fn scalar(&mut self, dtype: i32, value: f64) -> Result<String> {
        self.floats(dtype, &[], &[value])
    }

    /// `Shape(value)`, emitted once per value.
    pub fn shape(&mut self, value: &str) -> String {
        if let Some(shape) = self.shapes.get(value) {
            return shape.clone();
        }
        let shape = self.op("Shape", &[value], vec![]);
        self.shapes.insert(value.to_string(), shape.clone());
        shape
    }

    /// `x` reshaped to the runtime shape of `like`.
    pub fn reshape_like(&mut self, x: &str, like: &str) -> String {
        let shape = self.shape(like);
        self.op("Reshape", &[x, &shape], vec![])
    }

    /// `x` reshaped to `dims` (ONNX Reshape conventions: 0 copies, -1 infers).
    pub fn reshape(&mut self, x: &str, dims: &[i64]) -> String {
        let shape = self.ints(dims);
        self.op("Reshape", &[x, &shape], vec![])
    }

    pub fn transpose(&mut self, x: &str, perm: &[usize]) -> String {
        let perm: Vec<i64> = perm.iter().map(|&p| p as i64).collect();
        self.op("Transpose", &[x], vec![ints("perm", &perm)])
    }

    /// Sum over `axes` (none: `x` itself).
    pub fn reduce_sum(&mut self, x: &str, axes: &[usize], keepdims: bool) -> String {
        if axes.is_empty() {
            return x.to_string();
        }
        let axes: Vec<i64> = axes.iter().map(|&a| a as i64).collect();
        self.with_axes("ReduceSum", x, &axes, vec![int("keepdims", i64::from(keepdims))])
    }

    /// `x` with size-1 axes inserted at `axes` (positions in the result).
    pub fn unsqueeze(&mut self, x: &str, axes: &[usize]) -> String {
        if axes.is_empty() {
            return x.to_string();
        }
        let axes: Vec<i64> = axes.iter().map(|&a| a as i64).collect();
        self.with_axes("Unsqueeze", x, &axes, vec![])
    }

    /// ReduceSum and Unsqueeze take `axes` as an attribute before opset 13, as an input after.
    fn with_axes(&mut self, op: &str, x: &str, axes: &[i64], mut attributes: Vec<AttributeProto>) -> String {
        if self.opset >= 13 {
            let axes = self.ints(axes);
            self.op(op, &[x, &axes], attributes)
        } else {
            attributes.push(ints("axes", axes));
            self.op(op, &[x], attributes)
        }
    }

    /// `Slice(x, starts, ends, axes, steps)` with constant operands (attributes before opset 10,
    /// where steps other than 1 do not exist).
    pub fn slice(&mut self, x: &str, starts: &[i64], ends: &[i64], axes: &[usize], steps: &[i64]) -> Result<String> {
        let axes: Vec<i64> = axes.iter().map(|&a| a as i64).collect();
        if self.opset < 10 {
            if steps.iter().any(|&s| s != 1) {
                return Err(Error::Internal(format!("a Slice with steps {steps:?} needs opset 10")));
            }
            return Ok(self.op("Slice", &[x], vec![ints("starts", starts), ints("ends", ends), ints("axes", &axes)]));
        }
        let operands = [self.ints(starts), self.ints(ends), self.ints(&axes), self.ints(steps)];
        Ok(self.op("Slice", &[x, &operands[0], &operands[1], &operands[2], &operands[3]], vec![]))
    }

    /// `x` with `step − 1` zeros between consecutive elements along `axis`, so that element j sits
    /// at j · step ((len − 1) · step + 1 elements): a new axis after `axis` multiplied by the mask
    /// [1, 0, …, 0] (one broadcasting Mul, which runtimes execute fast), merged back. `dims` are
    /// x's dimensions, `None` where dynamic; the axis must be static, and so must all but one of
    /// the axes after it.
    pub fn interleave(&mut self, x: &str, axis: usize, step: i64, dims: &[Option<i64>], dtype: i32) -> std::result::Result<String, String> {
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
        let widened = self.unsqueeze(x, &[axis + 1]);
        let mut mask_shape = vec![step as usize];
        mask_shape.resize(rank - axis, 1);
        let mut mask = vec![0.0; step as usize];
        mask[0] = 1.0;
        let mask = self.floats(dtype, &mask_shape, &mask).map_err(|e| e.to_string())?;
        let spread = self.op("Mul", &[&widened, &mask], vec![]);
        let merged = self.reshape(&spread, &target);
        self.slice(&merged, &[0], &[(len - 1) * step + 1], &[axis], &[1]).map_err(|e| e.to_string())
    }

    /// Zero padding: `pads` lists the amounts before every axis, then after every axis (an
    /// attribute before opset 11, an input after).
    pub fn pad(&mut self, x: &str, pads: &[i64]) -> String {
        if pads.iter().all(|&p| p == 0) {
            return x.to_string();
        }
        if self.opset < 11 {
            return self.op("Pad", &[x], vec![ints("pads", pads)]);
        }
        let pads = self.ints(pads);
        self.op("Pad", &[x, &pads], vec![])
    }

    /// A tensor of zeros of `dtype` with the runtime shape of `like`.
    pub fn zeros_like(&mut self, like: &str, dtype: i32) -> Result<String> {
        let shape = self.shape(like);
        let zero = TensorProto { data_type: Some(dtype), dims: vec![1], raw_data: Some(encode_floats(dtype, &[0.0])?), ..Default::default() };
        Ok(self.op("ConstantOfShape", &[&shape], vec![tensor("value", zero)]))
    }

    /// `Where(condition, x, 0)`: `x` where the condition holds, zero elsewhere.
    pub fn where_or_zero(&mut self, condition: &str, x: &str, dtype: i32) -> Result<String> {
        let zero = self.scalar(dtype, 0.0)?;
        Ok(self.op("Where", &[condition, x, &zero], vec![]))
    }

    /// `a · b` with `b` a scalar constant; `a` itself when `b` is 1.
    pub fn scale(&mut self, a: &str, b: f64, dtype: i32) -> Result<String> {
        if b == 1.0 {
            return Ok(a.to_string());
        }
        let b = self.scalar(dtype, b)?;
        Ok(self.op("Mul", &[a, &b], vec![]))
    }
}

/// Little-endian bytes of `values` as float32 or float64.
fn encode_floats(dtype: i32, values: &[f64]) -> Result<Vec<u8>> {
    match dtype {
        FLOAT => Ok(values.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect()),
        DOUBLE => Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        other => Err(Error::Internal(format!("float constants of data type {other} are not supported"))),
    }
}

/// An integer attribute.
pub(crate) fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(AttributeType::Int as i32), i: Some(value), ..Default::default() }
}

/// An integer-list attribute.
pub(crate) fn ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(AttributeType::Ints as i32), ints: values.to_vec(), ..Default::default() }
}

/// A float attribute.
pub(crate) fn float(name: &str, value: f32) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(AttributeType::Float as i32), f: Some(value), ..Default::default() }
}

/// A tensor attribute.
pub(crate) fn tensor(name: &str, value: TensorProto) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(AttributeType::Tensor as i32), t: Some(value), ..Default::default() }
}
