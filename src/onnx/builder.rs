//! Building graph pieces: nodes and constants under fresh `deeppatch/` names, with the opset
//! differences of operators whose axes moved from attributes to inputs handled in one place.

use std::collections::HashMap;

use super::graph::NameGen;
use super::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::Dimension, type_proto, AttributeProto,
    GraphProto, NodeProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use crate::error::{Error, Result};

/// ONNX element types used by the rewrites.
pub const FLOAT: i32 = DataType::Float as i32;
pub const DOUBLE: i32 = DataType::Double as i32;
pub const INT64: i32 = DataType::Int64 as i32;
pub const BOOL: i32 = DataType::Bool as i32;

/// The prefix of every added name.
pub const PREFIX: &str = "deeppatch/";

/// Accumulates added nodes and initializers; the caller decides where they go.
pub struct Builder {
    names: NameGen,
    opset: i64,
    /// Prefix of the names given to the nodes being emitted.
    scope: String,
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<TensorProto>,
    shapes: HashMap<String, String>,
    constants: HashMap<(i32, Vec<usize>, Vec<u8>), String>,
}

impl Builder {
    /// A builder for additions to `graph`, whose default-domain opset is `opset`.
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

    pub fn opset(&self) -> i64 {
        self.opset
    }

    /// Marks names (outside the prefix) that the caller will use verbatim.
    pub fn reserve(&mut self, names: &[&str]) {
        self.names.reserve(names);
    }

    /// A fresh name `deeppatch/<base>`.
    pub fn fresh(&mut self, base: &str) -> String {
        self.names.fresh(base)
    }

    /// Names the following nodes after `scope` (e.g. the forward node they differentiate).
    pub fn set_scope(&mut self, scope: &str) {
        self.scope = scope.trim_start_matches('/').to_string();
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

    /// Emits one node whose single output is `output` (a fresh or reserved name).
    pub fn op_named(&mut self, op: &str, inputs: &[&str], attributes: Vec<AttributeProto>, output: &str) {
        self.push(op, inputs, attributes, vec![output.to_string()]);
    }

    fn push(&mut self, op: &str, inputs: &[&str], attributes: Vec<AttributeProto>, outputs: Vec<String>) {
        let name = outputs.first().map(|o| if o.starts_with(PREFIX) { o.clone() } else { self.names.fresh(o) });
        self.nodes.push(NodeProto {
            name,
            op_type: Some(op.to_string()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs,
            attribute: attributes,
            ..Default::default()
        });
    }

    /// An initializer holding the given bytes, shared with an identical earlier one.
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

    /// A bool scalar constant.
    pub fn boolean(&mut self, value: bool) -> String {
        self.constant(BOOL, &[], vec![u8::from(value)])
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
        self.reduce("ReduceSum", x, &axes, keepdims)
    }

    /// A reduction over `axes` (empty: over all axes).
    pub fn reduce(&mut self, op: &str, x: &str, axes: &[i64], keepdims: bool) -> String {
        let output = self.fresh(op);
        self.reduce_named(op, x, axes, keepdims, &output);
        output
    }

    /// A reduction over `axes` (empty: over all axes) whose output is `output`.
    pub fn reduce_named(&mut self, op: &str, x: &str, axes: &[i64], keepdims: bool, output: &str) {
        let keep = int("keepdims", i64::from(keepdims));
        self.with_axes(op, x, axes, vec![keep], output);
    }

    /// `x` with size-1 axes inserted at `axes` (positions in the result).
    pub fn unsqueeze(&mut self, x: &str, axes: &[usize]) -> String {
        if axes.is_empty() {
            return x.to_string();
        }
        let axes: Vec<i64> = axes.iter().map(|&a| a as i64).collect();
        let output = self.fresh("Unsqueeze");
        self.with_axes("Unsqueeze", x, &axes, vec![], &output);
        output
    }

    /// `x` without its size-1 axes `axes`.
    pub fn squeeze(&mut self, x: &str, axes: &[usize]) -> String {
        let axes: Vec<i64> = axes.iter().map(|&a| a as i64).collect();
        let output = self.fresh("Squeeze");
        self.with_axes("Squeeze", x, &axes, vec![], &output);
        output
    }

    /// Operators whose `axes` became an input: ReduceSum, Squeeze and Unsqueeze at opset 13, the
    /// other reductions at opset 18. An empty `axes` is left out (reduce over all axes).
    fn with_axes(&mut self, op: &str, x: &str, axes: &[i64], mut attributes: Vec<AttributeProto>, output: &str) {
        let since = if matches!(op, "ReduceSum" | "Squeeze" | "Unsqueeze") { 13 } else { 18 };
        if self.opset >= since {
            if axes.is_empty() {
                self.op_named(op, &[x], attributes, output);
            } else {
                let axes = self.ints(axes);
                self.op_named(op, &[x, &axes], attributes, output);
            }
        } else {
            if !axes.is_empty() {
                attributes.push(ints("axes", axes));
            }
            self.op_named(op, &[x], attributes, output);
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

    /// `x` where the condition holds, zero elsewhere (for finite `x`), as `x · Cast(condition)`:
    /// onnxruntime runs that five times faster than `Where(condition, x, 0)`, whose kernel is
    /// written for any broadcast.
    pub fn where_or_zero(&mut self, condition: &str, x: &str, dtype: i32) -> Result<String> {
        let mask = self.op("Cast", &[condition], vec![int("to", i64::from(dtype))]);
        Ok(self.op("Mul", &[x, &mask], vec![]))
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
pub fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(AttributeType::Int as i32), i: Some(value), ..Default::default() }
}

/// An integer-list attribute.
pub fn ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(AttributeType::Ints as i32), ints: values.to_vec(), ..Default::default() }
}

/// A float attribute.
pub fn float(name: &str, value: f32) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(AttributeType::Float as i32), f: Some(value), ..Default::default() }
}

/// A tensor attribute.
pub fn tensor(name: &str, value: TensorProto) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(AttributeType::Tensor as i32), t: Some(value), ..Default::default() }
}

/// A graph attribute (the branches of If, the body of Loop).
pub fn graph_attribute(name: &str, value: GraphProto) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(AttributeType::Graph as i32), g: Some(value), ..Default::default() }
}

/// A tensor value description: element type and dimensions.
pub fn tensor_info(name: &str, element_type: i32, dims: Vec<Dimension>) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(element_type),
                shape: Some(TensorShapeProto { dim: dims }),
            })),
            denotation: None,
        }),
        ..Default::default()
    }
}

/// Fixed dimensions (the unit tests' models).
#[cfg(test)]
pub(crate) fn static_dims(shape: &[usize]) -> Vec<Dimension> {
    shape.iter().map(|&d| Dimension { value: Some(crate::onnx::proto::tensor_shape_proto::dimension::Value::DimValue(d as i64)), denotation: None }).collect()
}
