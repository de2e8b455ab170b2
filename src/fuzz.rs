//! Structure-aware fuzzing of the model loader and the rewrites (issue 13; docs/fuzzing.md).
//!
//! A mutant is one of the bundled models with one to three mutations applied over the protobuf
//! schema — tensor shapes, types and data, attributes, edges, op types, initializers, declared
//! shapes, opsets, metadata, subgraphs ([`MUTATIONS`]). A mutant is a function of the seed and its
//! case index, so any case can be drawn again alone. Two runs use them:
//! - [`smoke`]: in this process, every mutant through decode → inspect → random spec → γ and β
//!   rewrites → re-decode → strip, panics caught and grouped by location (the test suite's smoke
//!   test, `tests/fuzz.rs`);
//! - [`long_run`]: the `fuzz` command, this very binary run on each mutant in child processes under
//!   a time and an address-space limit, optionally on the backends and through onnx.checker, with
//!   every bad case kept.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use prost::Message;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

use crate::backend::BackendKind;
use crate::error::{Error, Result};
use crate::onnx::builder::{float, graph_attribute, int, ints, tensor, tensor_info, FLOAT};
use crate::onnx::graph::node_label;
use crate::onnx::io::{decode_model, write_atomically};
use crate::onnx::proto::attribute_proto::AttributeType;
use crate::onnx::proto::tensor_proto::DataLocation;
use crate::onnx::proto::tensor_shape_proto::{dimension::Value as DimValue, Dimension};
use crate::onnx::proto::{
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, SparseTensorProto,
    StringStringEntryProto, TensorProto, ValueInfoProto,
};
use crate::onnx::tensor::from_i64;
use crate::progress::Progress;
use crate::units;

type Rand = ChaCha8Rng;

/// A mutation kind: changes `model` and says how, or returns `None`, the model untouched, when the
/// model has nothing it applies to.
type Mutate = fn(&mut ModelProto, &mut Rand) -> Option<String>;

/// Every mutation kind by name. A mutant applies one to three, each drawn from this table.
pub const MUTATIONS: &[(&str, Mutate)] = &[
    ("tensor-dims", tensor_dims),
    ("tensor-data-type", tensor_data_type),
    ("tensor-raw-data", tensor_raw_data),
    ("tensor-typed-data", tensor_typed_data),
    ("tensor-non-finite", tensor_non_finite),
    ("tensor-external", tensor_external),
    ("attribute-value", attribute_value),
    ("attribute-type", attribute_type),
    ("node-inputs", node_inputs),
    ("node-outputs", node_outputs),
    ("edge-rename", edge_rename),
    ("node-op", node_op),
    ("node-order", node_order),
    ("insert-node", insert_node),
    ("transpose-perm", transpose_perm),
    ("batchnorm-inputs", batchnorm_inputs),
    ("subgraph", subgraph),
    ("initializer-remove", initializer_remove),
    ("initializer-to-input", initializer_to_input),
    ("initializer-to-constant", initializer_to_constant),
    ("initializer-to-sparse", initializer_to_sparse),
    ("input-rank", input_rank),
    ("shape-dims", shape_dims),
    ("opset-import", opset_import),
    ("ir-version", ir_version),
    ("metadata", metadata),
];

// ---------------------------------------------------------------------------------------------
// Mutants

/// A model the mutants start from.
#[derive(Debug, Clone)]
pub struct Base {
    /// File name without `.onnx`.
    pub name: String,
    pub model: ModelProto,
}

/// Every `*.onnx` in `dir`, by file name (the order, and so the mutants, do not depend on the
/// file system).
pub fn load_bases(dir: &Path) -> Result<Vec<Base>> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(Error::Config(format!("{}: no .onnx models to mutate", dir.display())));
    }
    paths
        .iter()
        .map(|path| {
            let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            Ok(Base { name, model: crate::onnx::load_model(path)? })
        })
        .collect()
}

/// One fuzz case: the encoded mutant and how it was made.
#[derive(Debug, Clone, Serialize)]
pub struct Mutant {
    pub case: u64,
    pub base: String,
    /// `kind: what changed`, in the order applied.
    pub mutations: Vec<String>,
    /// The encoded model (its size in reports).
    #[serde(rename = "size", serialize_with = "byte_count")]
    pub bytes: Vec<u8>,
}

fn byte_count<S: serde::Serializer>(bytes: &[u8], serializer: S) -> std::result::Result<S::Ok, S::Error> {
    serializer.serialize_u64(bytes.len() as u64)
}

impl Mutant {
    /// Smaller is a better reproducer: fewer mutations, then fewer bytes.
    fn rank(&self) -> (usize, usize, u64) {
        (self.mutations.len(), self.bytes.len(), self.case)
    }

    /// One line: case, base model and mutations.
    pub fn describe(&self) -> String {
        format!("case {} of {}: {}", self.case, self.base, self.mutations.join("; "))
    }
}

/// Case `case` of `seed`: a base model drawn from `bases` (not empty, as [`load_bases`] returns
/// them) with one to three mutations. Each case has its own ChaCha stream, so it does not depend on
/// the cases before it.
pub fn mutant(bases: &[Base], seed: u64, case: u64) -> Mutant {
    let mut rng = Rand::seed_from_u64(seed);
    rng.set_stream(case);
    let base = &bases[rng.gen_range(0..bases.len())];
    let mut model = base.model.clone();
    let mut mutations = Vec::new();
    for _ in 0..rng.gen_range(1..=3) {
        // A kind that does not apply to this model leaves it untouched; draw another.
        for _ in 0..16 {
            let (name, mutate) = MUTATIONS[rng.gen_range(0..MUTATIONS.len())];
            if let Some(change) = mutate(&mut model, &mut rng) {
                mutations.push(format!("{name}: {change}"));
                break;
            }
        }
    }
    Mutant { case, base: base.name.clone(), mutations, bytes: model.encode_to_vec() }
}

// ---------------------------------------------------------------------------------------------
// Mutation kinds and their helpers

/// Integers at the edges of what a field can hold.
const EDGE_INTS: [i64; 10] = [0, -1, 1, 2, -2, 1 << 30, 1 << 31, 1 << 62, i64::MAX, i64::MIN];

fn one_of<T: Copy>(rng: &mut Rand, items: &[T]) -> T {
    items[rng.gen_range(0..items.len())]
}

/// An edge value, or a neighbour of `original`.
fn edge_int(rng: &mut Rand, original: i64) -> i64 {
    match rng.gen_range(0..4) {
        0 => original.saturating_add(1),
        1 => original.saturating_neg(),
        _ => one_of(rng, &EDGE_INTS),
    }
}

fn fresh(rng: &mut Rand, what: &str) -> String {
    format!("fuzz/{what}{}", rng.gen::<u16>())
}

fn node(op: &str, inputs: &[&str], outputs: &[&str], attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute,
        ..Default::default()
    }
}

fn name_of(tensor: &TensorProto) -> &str {
    tensor.name.as_deref().unwrap_or("")
}

/// Positions of the nodes that satisfy `keep`.
fn nodes_where(graph: &GraphProto, keep: impl Fn(&NodeProto) -> bool) -> Vec<usize> {
    graph.node.iter().enumerate().filter(|(_, n)| keep(n)).map(|(p, _)| p).collect()
}

fn pick_node(graph: &GraphProto, rng: &mut Rand, keep: impl Fn(&NodeProto) -> bool) -> Option<usize> {
    nodes_where(graph, keep).choose(rng).copied()
}

fn is_op(node: &NodeProto, op: &str) -> bool {
    node.op_type.as_deref() == Some(op)
}

/// The tensors of the main graph: initializers, values of Constant nodes, sparse initializers.
fn tensors(graph: &mut GraphProto) -> Vec<&mut TensorProto> {
    let constants = graph.node.iter_mut().flat_map(|n| n.attribute.iter_mut()).filter_map(|a| a.t.as_mut());
    let sparse = graph.sparse_initializer.iter_mut().filter_map(|s| s.values.as_mut());
    graph.initializer.iter_mut().chain(constants).chain(sparse).collect()
}

fn pick_tensor<'m>(model: &'m mut ModelProto, rng: &mut Rand, keep: fn(&TensorProto) -> bool) -> Option<&'m mut TensorProto> {
    let mut all: Vec<&mut TensorProto> = tensors(model.graph.as_mut()?).into_iter().filter(|t| keep(t)).collect();
    let at = (!all.is_empty()).then(|| rng.gen_range(0..all.len()))?;
    Some(all.swap_remove(at))
}

fn any_tensor(_: &TensorProto) -> bool {
    true
}

/// Elements the dimensions declare, capped (a mutant's dimensions may be anything).
fn declared_elements(dims: &[i64], cap: u64) -> u64 {
    dims.iter().map(|&d| u64::try_from(d).unwrap_or(0)).fold(1u64, |acc, d| acc.saturating_mul(d)).min(cap)
}

fn tensor_dims(model: &mut ModelProto, rng: &mut Rand) -> Option<String> {
    let tensor = pick_tensor(model, rng, any_tensor)?;
    let before = tensor.dims.clone();
    let dims = &mut tensor.dims;
    match rng.gen_range(0..4) {
        0 if !dims.is_empty() => {
            let at = rng.gen_range(0..dims.len());
            dims[at] = edge_int(rng, dims[at]);
        }
        1 => dims.insert(rng.gen_range(0..=dims.len()), one_of(rng, &[0, 1, 2, 1 << 30])),
        2 if !dims.is_empty() => {
            dims.remove(rng.gen_range(0..dims.len()));
        }
        _ => dims.clear(),
    }
    Some(format!("tensor '{}' dims {before:?} → {:?}", name_of(tensor), tensor.dims))
}

fn tensor_data_type(model: &mut ModelProto, rng: &mut Rand) -> Option<String> {
    let tensor = pick_tensor(model, rng, any_tensor)?;
    let before = tensor.data_type.unwrap_or(0);
    // 0 undefined, then float, uint8, int8, int32, int64, string, bool, float16, double, bfloat16,
    // and codes no version of ONNX defines.
    tensor.data_type = Some(one_of(rng, &[0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 16, 99, -1]));
    Some(format!("tensor '{}' data_type {before} → {}", name_of(tensor), tensor.data_type.unwrap_or(0)))
}

fn tensor_raw_data(model: &mut ModelProto, rng: &mut Rand) -> Option<String> {
    let tensor = pick_tensor(model, rng, any_tensor)?;
    let length = tensor.raw_data.as_ref().map_or(0, Vec::len);
    let what = match rng.gen_range(0..4) {
        0 if length > 0 => {
            let keep = rng.gen_range(0..length);
            tensor.raw_data.get_or_insert_with(Vec::new).truncate(keep);
            format!("raw_data truncated from {length} to {keep} bytes")
        }
        1 => {
            let extra = rng.gen_range(1..=9);
            tensor.raw_data.get_or_insert_with(Vec::new).extend(std::iter::repeat_n(0x7f, extra));
            format!("raw_data of {length} bytes extended by {extra}")
        }
        2 => {
            tensor.raw_data = None;
            format!("raw_data of {length} bytes removed")
        }
        _ => {
            tensor.raw_data = Some(Vec::new());
            format!("raw_data of {length} bytes emptied")
        }
    };
    Some(format!("tensor '{}' {what}", name_of(tensor)))
}

fn tensor_typed_data(model: &mut ModelProto, rng: &mut Rand) -> Option<String> {
    let tensor = pick_tensor(model, rng, any_tensor)?;
    let needed = declared_elements(&tensor.dims, 1 << 16) as usize;
    let count = one_of(rng, &[needed, needed + 1, needed.saturating_sub(1), 0, 2 * needed]);
    tensor.raw_data = None;
    let field = match rng.gen_range(0..4) {
        0 => {
            tensor.float_data = vec![0.5; count];
            "float_data"
        }
        1 => {
            tensor.int64_data = vec![1; count];
            "int64_data"
        }
        2 => {
            tensor.int32_data = vec![1; count];
            "int32_data"
        }
        _ => {
            tensor.double_data = vec![0.5; count];
            "double_data"
        }
    };
    Some(format!("tensor '{}' data moved to {field} with {count} values (dims {:?})", name_of(tensor), tensor.dims))
}

fn tensor_non_finite(model: &mut ModelProto, rng: &mut Rand) -> Option<String> {
    let tensor = pick_tensor(model, rng, |t| {
        t.data_type == Some(FLOAT) && t.raw_data.as_ref().map_or(!t.float_data.is_empty(), |r| r.len() >= 4)
    })?;
    let value = one_of(rng, &[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN_POSITIVE / 2.0]);
    let everywhere = rng.gen_bool(0.3);
    let count = tensor.raw_data.as_ref().map_or(tensor.float_data.len(), |r| r.len() / 4);
    let at = rng.gen_range(0..count);
    let chosen = |i: usize| everywhere || i == at;
    match tensor.raw_data.as_mut() {
        Some(raw) => raw.chunks_exact_mut(4).enumerate().filter(|(i, _)| chosen(*i)).for_each(|(_, c)| c.copy_from_slice(&value.to_le_bytes())),
        None => tensor.float_data.iter_mut().enumerate().filter(|(i, _)| chosen(*i)).for_each(|(_, v)| *v = value),
    }
    let place = if everywhere { "every element".to_string() } else { format!("element {at}") };
    Some(format!("tensor '{}' {place} set to {value}", name_of(tensor)))
}

fn tensor_external(model: &mut ModelProto, rng: &mut Rand) -> Option<String> {
    let tensor = pick_tensor(model, rng, any_tensor)?;
    let location = one_of(rng, &["missing.bin", "../outside.bin", "/etc/hostname", ""]);
    let offset = one_of(rng, &["0", "-1", "99999999999", "x"]);
    let entry = |key: &str, value: &str| StringStringEntryProto { key: Some(key.into()), value: Some(value.into()) };
    tensor.data_location = Some(DataLocation::External as i32);
    tensor.external_data = vec![entry("location", location), entry("offset", offset)];
    if rng.gen_bool(0.5) {
        tensor.raw_data = None;
    }
    Some(format!("tensor '{}' external at '{location}' offset {offset}", name_of(tensor)))
}

/// Attributes a mutation may give a node of an op type besides those it has.
const OP_ATTRIBUTES: &[(&str, &[&str])] = &[
    ("Conv", &["group", "kernel_shape", "strides", "pads", "dilations", "auto_pad"]),
    ("MaxPool", &["kernel_shape", "strides", "pads", "dilations", "ceil_mode", "auto_pad"]),
    ("AveragePool", &["kernel_shape", "strides", "pads", "count_include_pad"]),
    ("Transpose", &["perm"]),
    ("Concat", &["axis"]),
    ("Flatten", &["axis"]),
    ("Gather", &["axis"]),
    ("Softmax", &["axis"]),
    ("Unsqueeze", &["axes"]),
    ("Gemm", &["transA", "transB", "alpha", "beta"]),
    ("BatchNormalization", &["epsilon", "momentum", "training_mode"]),
    ("LeakyRelu", &["alpha"]),
    ("Cast", &["to"]),
    ("Pad", &["mode"]),
];
const INTS_ATTRIBUTES: [&str; 7] = ["kernel_shape", "strides", "pads", "dilations", "perm", "axes", "output_padding"];
const FLOAT_ATTRIBUTES: [&str; 6] = ["alpha", "beta", "epsilon", "momentum", "min", "max"];
const STRING_ATTRIBUTES: [&str; 2] = ["auto_pad", "mode"];
const STRING_VALUES: [&str; 6] = ["SAME_UPPER", "SAME_LOWER", "VALID", "NOTSET", "BOGUS", ""];

fn set_attribute(node: &mut NodeProto, attribute: AttributeProto) {
    match node.attribute.iter_mut().find(|a| a.name == attribute.name) {
        Some(existing) => *existing = attribute,
        None => node.attribute.push(attribute),
    }
}

fn show_attribute(a: &AttributeProto) -> String {
    let value = match AttributeType::try_from(a.r#type.unwrap_or(0)) {
        Ok(AttributeType::Int) => format!("{:?}", a.i),
        Ok(AttributeType::Ints) => format!("{:?}", a.ints),
        Ok(AttributeType::Float) => format!("{:?}", a.f),
        Ok(AttributeType::String) => format!("{:?}", String::from_utf8_lossy(a.s.as_deref().unwrap_or_default())),
        Ok(other) => other.as_str_name().to_lowercase(),
        Err(_) => format!("type {}", a.r#type.unwrap_or(0)),
    };
    format!("{} = {value}", a.name.as_deref().unwrap_or(""))
}

fn attribute_value(model: &mut ModelProto, rng: &mut Rand) -> Option<String> {
    let graph = model.graph.as_mut()?;
    let known = |n: &NodeProto| OP_ATTRIBUTES.iter().any(|(op, _)| is_op(n, op));
    let position = pick_node(graph, rng, |n| !n.attribute.is_empty() || known(n))?;
    let node = &mut graph.node[position];
    let mut names: Vec<String> = node.attribute.iter().filter_map(|a| a.name.clone()).collect();
    names.extend(OP_ATTRIBUTES.iter().filter(|(op, _)| is_op(node, op)).flat_map(|(_, n)| n.iter().map(|s| s.to_string())));
    names.sort();
    names.dedup();
    let name = names.choose(rng)?.clone();
    let existing = node.attribute.iter().find(|a| a.name.as_deref() == Some(&name)).cloned().unwrap_or_default();
    let attribute = if INTS_ATTRIBUTES.contains(&name.as_str()) || !existing.ints.is_empty() {
        let old = &existing.ints;
        let length = one_of(rng, &[old.len(), old.len() + 1, old.len().saturating_sub(1), 0, 8]);
        let values: Vec<i64> = (0..length)
            .map(|i| {
                let kept = old.get(i).copied().unwrap_or(1);
                if rng.gen_bool(0.5) { kept } else { edge_int(rng, kept) }
            })
            .collect();
        ints(&name, &values)
    } else if FLOAT_ATTRIBUTES.contains(&name.as_str()) || existing.f.is_some() {
        float(&name, one_of(rng, &[f32::NAN, f32::INFINITY, -1.0, 0.0, 1e30]))
    } else if STRING_ATTRIBUTES.contains(&name.as_str()) || existing.s.is_some() {
        let value = one_of(rng, &STRING_VALUES);
        AttributeProto { name: Some(name), r#type: Some(AttributeType::String as i32), s: Some(value.into()), ..Default::default() }
    } else {
        int(&name, edge_int(rng, existing.i.unwrap_or(1)))
    };
    let change = format!("node '{}' attribute {}", node_label(node, position), show_attribute(&attribute));
    set_attribute(node, attribute);
    Some(change)
}

/// An attribute of any type, holding a small value.
fn typed_attribute(rng: &mut Rand, name: &str) -> AttributeProto {
    use AttributeType as T;
    let kind = one_of(rng, &[T::Undefined, T::Float, T::Int, T::String, T::Tensor, T::Graph, T::Floats, T::Ints, T::Strings]);
    let mut a = AttributeProto { name: Some(name.into()), r#type: Some(kind as i32), ..Default::default() };
    match kind {
        T::Float => a.f = Some(1.5),
        T::Int => a.i = Some(3),
        T::String => a.s = Some(b"3".to_vec()),
        T::Tensor => a.t = Some(from_i64("", &[1], &[3])),
        T::Graph => a.g = Some(GraphProto::default()),
        T::Floats => a.floats = vec![1.5, 2.5],
        T::Ints => a.ints = vec![3, 3, 3],
        T::Strings => a.strings = vec![b"3".to_vec()],
        _ => {}
    }
    a
}

fn attribute_type(model: &mut ModelProto, rng: &mut Rand) -> Option<String> {
    let graph = model.graph.as_mut()?;
    let position = pick_node(graph, rng, |n| !n.attribute.is_empty())?;
    let node = &mut graph.node[position];
    let at = rng.gen_range(0..node.attribute.len());
    let name = node.attribute[at].name.clone().unwrap_or_default();
    let what = match rng.gen_range(0..3) {
        0 => {
            node.attribute[at] = typed_attribute(rng, &name);
            format!("replaced by {}", show_attribute(&node.attribute[at]))
        }
        1 => {
            let tag = one_of(rng, &[0, 1, 2, 3, 7, 10, 99]);
            node.attribute[at].r#type = Some(tag);
            format!("type tag set to {tag}, value kept")
        }
        _ => {
            let copy = typed_attribute(rng, &name);
            let change = format!("given twice, again as {}", show_attribute(&copy));
            node.attribute.push(copy);
            change
        }
    };
    Some(format!("node '{}' attribute '{name}' {what}", node_label(node, position)))
}

fn node_inputs(model: &mut ModelProto, rng: &mut Rand) -> Option<String> {
    let graph = model.graph.as_mut()?;
    let extra = graph.initializer.choose(rng).map(|t| name_of(t).to_string()).unwrap_or_default();
    let position = pick_node(graph, rng, |n| !n.input.is_empty())?;
    let node = &mut graph.node[position];
    let count = node.input.len();
    let at = rng.gen_range(0..count);
    let what = match rng.gen_range(0..5) {
        0 => format!("input {at} '{}' removed", node.input.remove(at)),
        1 => {
            let value = node.input[at].clone();
            node.input.push(value.clone());
            format!("input '{value}' given again at the end")
        }
        2 => {
            let other = rng.gen_range(0..count);
            node.input.swap(at, other);
            format!("inputs {at} and {other} swapped")
        }
        3 => {
            node.input[at].clear();
            format!("input {at} left out (empty name)")
        }
        _ => {
            node.input.push(extra.clone());
            format!("extra input '{extra}'")
        }
    };
    Some(format!("node '{}' {what}", node_label(node, position)))
}

fn node_outputs(model: &mut ModelProto, rng: &mut Rand) -> Option<String> {
    let graph = model.graph.as_mut()?;
    let position = pick_node(graph, rng, |n| !n.output.is_empty())?;
    let other = graph.node.choose(rng).and_then(|n| n.output.first().cloned()).unwrap_or_default();
    let label = node_label(&graph.node[position], position);
    let outputs = &mut graph.node[position].output;
    let at = rng.gen_range(0..outputs.len());
    let what = match rng.gen_range(0..4) {
        0 => format!("output {at} '{}' removed", outputs.remove(at)),
        1 => {
            let name = fresh(rng, "extra");
            outputs.push(name.clone());
            format!("extra output '{name}'")
        }
        2 => {
            outputs[at] = other.clone();
            format!("output {at} renamed to '{other}' (produced twice unless its own)")
        }
        _ => {
            outputs[at].clear();
            format!("output {at} left out (empty name)")
        }
    };
    Some(format!("node '{label}' {what}"))
}

fn edge_rename(model: &mut ModelProto, rng: &mut Rand) -> Option<String> {
    let graph = model.graph.as_mut()?;
    let dangling = fresh(rng, "dangling");
    match rng.gen_range(0..4) {
        0 => {
            let output = graph.output.choose_mut(rng)?;
            let before = output.name.replace(dangling.clone());
            Some(format!("graph output '{}' renamed to '{dangling}'", before.unwrap_or_default()))
        }
        1 => {
            let input = graph.input.choose_mut(rng)?;
            let before = input.name.replace(dangling.clone());
            Some(format!("graph input '{}' renamed to '{dangling}'", before.unwrap_or_default()))
        }
        _ => {
            let position = pick_node(graph, rng, |n| n.input.iter().any(|i| !i.is_empty()))?;
            // Dangling, the node's own output (a self-loop) or a later node's output (a cycle
            // when that node depends on this one).
            let target = match rng.gen_range(0..3) {
                0 => dangling,
                1 => graph.node[position].output.first().cloned().unwrap_or(dangling),
                _ => graph.node[rng.gen_range(position..graph.node.len())].output.first().cloned().unwrap_or(dangling),
            };
            let node = &mut graph.node[position];
            let at = rng.gen_range(0..node.input.len());
            let before = std::mem::replace(&mut node.input[at], target.clone());
            Some(format!("node '{}' input {at} '{before}' now reads '{target}'", node_label(node, position)))
        }
    }
}

const OP_TYPES: [&str; 20] = [
    "Conv", "ConvTranspose", "QLinearConv", "Relu", "Gemm", "MatMul", "BatchNormalization", "Transpose", "Reshape", "If", "Loop",
    "Scan", "Constant", "Identity", "Add", "Flatten", "MaxPool", "Unsqueeze", "NoSuchOp", "",
];

fn node_op(model: &mut ModelProto, rng: &mut Rand) -> Option<String> {
    let graph = model.graph.as_mut()?;
    let position = pick_node(graph, rng, |_| true)?;
    let other_name = graph.node.choose(rng).and_then(|n| n.name.clone()).unwrap_or_default();
    let label = node_label(&graph.node[position], position);
    let node = &mut graph.node[position];
    let what = match rng.gen_range(0..3) {
        0 => {
            let op = one_of(rng, &OP_TYPES);
            node.op_type = Some(op.into());
            format!("op_type → '{op}'")
        }
        1 => {
            let domain = one_of(rng, &["", "ai.onnx", "com.microsoft", "ai.onnx.ml", "fuzz.custom"]);
            node.domain = Some(domain.into());
            format!("domain → '{domain}'")
        }
        _ => {
            // The tool's own prefix (its rewrites skip such nodes), or another node's name.
            let name = one_of(rng, &["deeppatch/fuzz", other_name.as_str(), ""]).to_string();
            let change = format!("name → '{name}'");
            node.name = Some(name);
            change
        }
    };
    Some(format!("node '{label}' {what}"))
}

fn node_order(model: &mut ModelProto, rng: &mut Rand) -> Option<String> {
    let nodes = &mut model.graph.as_mut()?.node;
    if nodes.len() < 2 {
        return None;
    }
    let (a, b) = (rng.gen_range(0..nodes.len()), rng.gen_range(0..nodes.len()));
    Some(match rng.gen_range(0..3) {
        0 => {
            nodes.swap(a, b);
            format!("nodes {a} and {b} swapped")
        }
        1 => {
            nodes.reverse();
            "nodes reversed".to_string()
        }
        _ => {
            let moved = nodes.remove(a);
            nodes.insert(0, moved);
            format!("node {a} moved first")
        }
    })
}

/// Reroutes a random node input through the node `make(input, output)` inserted just before its
/// reader, so the graph stays in order.
fn insert_on_edge(graph: &mut GraphProto, rng: &mut Rand, make: impl FnOnce(&str, &str) -> NodeProto) -> Option<String> {
    let edges: Vec<(usize, usize)> = graph
        .node
        .iter()
        .enumerate()
        .flat_map(|(p, n)| n.input.iter().enumerate().filter(|(_, v)| !v.is_empty()).map(move |(i, _)| (p, i)))
        .collect();
    let &(position, at) = edges.choose(rng)?;
    let input = graph.node[position].input[at].clone();
    let output = fresh(rng, "edge");
    let inserted = make(&input, &output);
    let change = format!("{} inserted on '{input}' before node '{}'", inserted.op_type.as_deref().unwrap_or(""), node_label(&graph.node[position], position));
    graph.node[position].input[at] = output;
    graph.node.insert(position, inserted);
    Some(change)
}

fn insert_node(model: &mut ModelProto, rng: &mut Rand) -> Option<String> {
    let graph = model.graph.as_mut()?;
    // Slice and Reshape read their parameters from initializers, which shape inference evaluates.
    let mut parameters: Vec<(&str, Vec<i64>)> = Vec::new();
    let (op, attributes) = match rng.gen_range(0..7) {
        // Unsqueeze and Squeeze change the rank (an unbatched or doubly batched value).
        0 => ("Unsqueeze", vec![ints("axes", &[0])]),
        1 => ("Squeeze", vec![ints("axes", &[0])]),
        2 => ("Flatten", vec![int("axis", one_of(rng, &[0, 1, 3, -1, 7]))]),
        3 => ("Cast", vec![int("to", one_of(rng, &[1, 7, 9, 10, 11]))]),
        4 => {
            let edges = [0, 1, -1, i64::MAX, i64::MIN];
            parameters.extend([
                ("starts", vec![one_of(rng, &edges)]),
                ("ends", vec![one_of(rng, &edges)]),
                ("axes", vec![one_of(rng, &[0, 1, 2, 3, -1, 7])]),
                ("steps", vec![one_of(rng, &[1, 2, -1, -2, 0, i64::MIN])]),
            ]);
            ("Slice", vec![])
        }
        5 => {
            let shape: &[i64] = one_of(rng, &[&[-1][..], &[0, -1], &[1, -1, 2], &[-1, -1], &[0], &[i64::MAX]]);
            parameters.push(("shape", shape.to_vec()));
            ("Reshape", vec![])
        }
        _ => ("Identity", vec![]),
    };
    let names: Vec<String> = parameters.iter().map(|(what, _)| fresh(rng, what)).collect();
    let shown: Vec<String> = parameters.iter().map(|(what, values)| format!("{what} {values:?}")).collect();
    let change = insert_on_edge(graph, rng, |input, output| {
        let inputs: Vec<&str> = std::iter::once(input).chain(names.iter().map(String::as_str)).collect();
        node(op, &inputs, &[output], attributes)
    })?;
    for ((_, values), name) in parameters.iter().zip(&names) {
        graph.initializer.push(from_i64(name, &[values.len()], values));
    }
    Some(if shown.is_empty() { change } else { format!("{change} ({})", shown.join(", ")) })
}

const PERMS: [&[i64]; 8] = [&[1, 1], &[0, 0, 0, 0], &[3, 2, 1, 0, 5], &[], &[-1, 0, 1, 2], &[0, 1, 2, i64::MAX], &[1, 0], &[0, 2, 3, 1]];

fn transpose_perm(model: &mut ModelProto, rng: &mut Rand) -> Option<String> {
    let graph = model.graph.as_mut()?;
    let perm = ints("perm", one_of(rng, &PERMS));
    match pick_node(graph, rng, |n| is_op(n, "Transpose")).filter(|_| rng.gen_bool(0.5)) {
        Some(position) => {
            let change = format!("node '{}' {}", node_label(&graph.node[position], position), show_attribute(&perm));
            set_attribute(&mut graph.node[position], perm);
            Some(change)
        }
        None => {
            let shown = show_attribute(&perm);
            insert_on_edge(graph, rng, |input, output| node("Transpose", &[input], &[output], vec![perm])).map(|c| format!("{c} with {shown}"))
        }
    }
}

fn batchnorm_inputs(model: &mut ModelProto, rng: &mut Rand) -> Option<String> {
    let graph = model.graph.as_mut()?;
    let position = pick_node(graph, rng, |n| is_op(n, "BatchNormalization") && !n.input.is_empty())?;
    let node = &mut graph.node[position];
    let before = node.input.len();
    let what = if rng.gen_bool(0.75) {
        node.input.truncate(rng.gen_range(1..before.max(2)));
        format!("inputs cut from {before} to {}", node.input.len())
    } else {
        let first = node.input[0].clone();
        node.input.push(first);
        format!("a {}th input", before + 1)
    };
    Some(format!("node '{}' {what}", node_label(node, position)))
}

/// A subgraph that is wrong in one of several ways.
fn garbage_body(rng: &mut Rand) -> (GraphProto, &'static str) {
    let value = |name: &str| tensor_info(name, FLOAT, vec![]);
    match rng.gen_range(0..4) {
        0 => (GraphProto::default(), "an empty body"),
        1 => (
            GraphProto { node: vec![node("Relu", &["fuzz/undefined"], &["y"], vec![])], output: vec![value("y")], ..Default::default() },
            "a body reading an undefined value",
        ),
        2 => (
            GraphProto { node: vec![node("Conv", &["x"], &["y"], vec![])], input: vec![value("x")], output: vec![value("z")], ..Default::default() },
            "a body whose output nothing computes",
        ),
        _ => {
            let inner = node("If", &["c"], &["y"], vec![graph_attribute("then_branch", GraphProto::default())]);
            (GraphProto { node: vec![inner], input: vec![value("c")], output: vec![value("y")], ..Default::default() }, "a body holding an If without else_branch")
        }
    }
}

fn subgraph(model: &mut ModelProto, rng: &mut Rand) -> Option<String> {
    let graph = model.graph.as_mut()?;
    let (body, what) = garbage_body(rng);
    if rng.gen_bool(0.3) {
        let position = pick_node(graph, rng, |_| true)?;
        let name = one_of(rng, &["body", "then_branch"]);
        graph.node[position].attribute.push(graph_attribute(name, body));
        return Some(format!("node '{}' given graph attribute '{name}', {what}", node_label(&graph.node[position], position)));
    }
    let op = one_of(rng, &["If", "Loop", "Scan"]);
    insert_on_edge(graph, rng, |input, output| match op {
        "If" => node(op, &[input], &[output], vec![graph_attribute("then_branch", body.clone()), graph_attribute("else_branch", body)]),
        "Loop" => node(op, &["", "", input], &[output], vec![graph_attribute("body", body)]),
        _ => node(op, &[input], &[output], vec![graph_attribute("body", body), int("num_scan_inputs", 1)]),
    })
    .map(|change| format!("{change}, {what}"))
}

fn pick_initializer(graph: &mut GraphProto, rng: &mut Rand) -> Option<TensorProto> {
    let at = (!graph.initializer.is_empty()).then(|| rng.gen_range(0..graph.initializer.len()))?;
    Some(graph.initializer.remove(at))
}

fn initializer_remove(model: &mut ModelProto, rng: &mut Rand) -> Option<String> {
    let removed = pick_initializer(model.graph.as_mut()?, rng)?;
    Some(format!("initializer '{}' removed", name_of(&removed)))
}

fn initializer_to_input(model: &mut ModelProto, rng: &mut Rand) -> Option<String> {
    let graph = model.graph.as_mut()?;
    let tensor = pick_initializer(graph, rng)?;
    let dims = tensor.dims.iter().map(|&d| Dimension { value: Some(DimValue::DimValue(d)), denotation: None }).collect();
    graph.input.push(tensor_info(name_of(&tensor), tensor.data_type.unwrap_or(0), dims));
    let name = name_of(&tensor).to_string();
    // Kept as a default, the weights may be overridden at run time; removed, they must be fed.
    if rng.gen_bool(0.5) {
        graph.initializer.push(tensor);
        Some(format!("initializer '{name}' also a graph input (a default)"))
    } else {
        Some(format!("initializer '{name}' replaced by a graph input"))
    }
}

fn initializer_to_constant(model: &mut ModelProto, rng: &mut Rand) -> Option<String> {
    let graph = model.graph.as_mut()?;
    let value = pick_initializer(graph, rng)?;
    let name = name_of(&value).to_string();
    graph.node.insert(0, node("Constant", &[], &[&name], vec![tensor("value", value)]));
    Some(format!("initializer '{name}' now a Constant node"))
}

fn initializer_to_sparse(model: &mut ModelProto, rng: &mut Rand) -> Option<String> {
    let graph = model.graph.as_mut()?;
    let values = pick_initializer(graph, rng)?;
    let name = name_of(&values).to_string();
    let indices = one_of(rng, &[&[0i64][..], &[-1], &[i64::MAX], &[]]);
    graph.sparse_initializer.push(SparseTensorProto {
        indices: Some(from_i64("", &[indices.len()], indices)),
        dims: values.dims.clone(),
        values: Some(values),
    });
    Some(format!("initializer '{name}' now a sparse initializer with indices {indices:?}"))
}

/// The declared dimensions of a tensor value, when it declares a tensor type.
fn declared_dims(value: &mut ValueInfoProto) -> Option<&mut Vec<Dimension>> {
    match value.r#type.as_mut()?.value.as_mut()? {
        type_proto::Value::TensorType(t) => Some(&mut t.shape.get_or_insert_with(Default::default).dim),
        _ => None,
    }
}

fn show_dims(dims: &[Dimension]) -> String {
    let shown: Vec<String> = dims
        .iter()
        .map(|d| match &d.value {
            Some(DimValue::DimValue(v)) => v.to_string(),
            Some(DimValue::DimParam(p)) => format!("'{p}'"),
            None => "?".into(),
        })
        .collect();
    format!("[{}]", shown.join(", "))
}

fn input_rank(model: &mut ModelProto, rng: &mut Rand) -> Option<String> {
    let graph = model.graph.as_mut()?;
    let initialized: Vec<String> = graph.initializer.iter().map(|t| name_of(t).to_string()).collect();
    let runtime: Vec<usize> = (0..graph.input.len()).filter(|&i| !initialized.iter().any(|n| Some(n.as_str()) == graph.input[i].name.as_deref())).collect();
    let input = &mut graph.input[*runtime.choose(rng)?];
    let name = input.name.clone().unwrap_or_default();
    let choice = rng.gen_range(0..5);
    if choice == 4 {
        input.r#type = None;
        return Some(format!("graph input '{name}' without a type"));
    }
    let dims = declared_dims(input)?;
    let before = show_dims(dims);
    match choice {
        // Unbatched: the leading dimension dropped.
        0 if !dims.is_empty() => {
            dims.remove(0);
        }
        1 => dims.insert(0, Dimension { value: Some(DimValue::DimValue(1)), denotation: None }),
        2 if !dims.is_empty() => {
            dims.pop();
        }
        _ => dims.clear(),
    }
    Some(format!("graph input '{name}' shape {before} → {}", show_dims(dims)))
}

fn shape_dims(model: &mut ModelProto, rng: &mut Rand) -> Option<String> {
    let graph = model.graph.as_mut()?;
    if rng.gen_bool(0.25) {
        let value = graph.node.choose(rng)?.output.first()?.clone();
        let dims: Vec<Dimension> = (0..rng.gen_range(0..5)).map(|_| Dimension { value: Some(DimValue::DimValue(edge_int(rng, 1))), denotation: None }).collect();
        let change = format!("value_info for '{value}' declared {}", show_dims(&dims));
        graph.value_info.push(tensor_info(&value, one_of(rng, &[FLOAT, 7, 0]), dims));
        return Some(change);
    }
    let mut values: Vec<&mut ValueInfoProto> = graph.input.iter_mut().chain(graph.output.iter_mut()).chain(graph.value_info.iter_mut()).collect();
    let at = (!values.is_empty()).then(|| rng.gen_range(0..values.len()))?;
    let value = values.swap_remove(at);
    let name = value.name.clone().unwrap_or_default();
    let dims = declared_dims(value)?;
    let before = show_dims(dims);
    let new = match rng.gen_range(0..3) {
        0 => Some(DimValue::DimValue(edge_int(rng, 1))),
        1 => Some(DimValue::DimParam(one_of(rng, &["", "N", "batch", "fuzz"]).into())),
        _ => None,
    };
    match dims.choose_mut(rng) {
        Some(dim) => dim.value = new,
        None => dims.push(Dimension { value: new, denotation: None }),
    }
    Some(format!("'{name}' shape {before} → {}", show_dims(dims)))
}

fn opset_import(model: &mut ModelProto, rng: &mut Rand) -> Option<String> {
    let is_default = |o: &OperatorSetIdProto| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx"));
    Some(match rng.gen_range(0..4) {
        0 => {
            let version = rng.gen_range(1..=25);
            model.opset_import.retain(|o| !is_default(o));
            model.opset_import.push(OperatorSetIdProto { domain: Some(String::new()), version: Some(version) });
            format!("default opset version {version}")
        }
        1 => {
            model.opset_import.retain(|o| !is_default(o));
            "default opset import removed".into()
        }
        2 => {
            let domain = one_of(rng, &["com.microsoft", "ai.onnx.ml", "ai.onnx", "", "fuzz.custom"]);
            let version = one_of(rng, &[1, 3, 99, -1]);
            model.opset_import.push(OperatorSetIdProto { domain: Some(domain.into()), version: Some(version) });
            format!("extra opset import '{domain}' version {version}")
        }
        _ => {
            let version = edge_int(rng, 13);
            model.opset_import.iter_mut().filter(|o| is_default(o)).for_each(|o| o.version = Some(version));
            format!("default opset version set to {version}")
        }
    })
}

fn ir_version(model: &mut ModelProto, rng: &mut Rand) -> Option<String> {
    let version = one_of(rng, &[None, Some(0), Some(1), Some(2), Some(3), Some(4), Some(7), Some(9), Some(10), Some(11), Some(12), Some(100), Some(-1), Some(i64::MAX)]);
    let before = std::mem::replace(&mut model.ir_version, version);
    Some(format!("ir_version {before:?} → {version:?}"))
}

/// Metadata the tool reads back (its own keys), with values that are wrong.
const METADATA: [(&str, &str); 9] = [
    ("deeppatch.layout", "{"),
    ("deeppatch.layout", r#"{"merge_nodes":99999,"original_nodes":0,"initializers":0,"inputs":0,"outputs":0,"renamed":{}}"#),
    ("deeppatch.blamed", "not json"),
    ("deeppatch.blamed", r#"{"Conv_0":[18446744073709551615]}"#),
    ("deeppatch.kappa", "NaN"),
    ("deeppatch.boundary", "-inf"),
    ("deeppatch.direction", "sideways"),
    ("deeppatch.decision", ""),
    ("", ""),
];

fn metadata(model: &mut ModelProto, rng: &mut Rand) -> Option<String> {
    let (key, value) = one_of(rng, &METADATA);
    model.metadata_props.push(StringStringEntryProto { key: Some(key.into()), value: Some(value.into()) });
    Some(format!("metadata '{key}' = '{value}'"))
}

// ---------------------------------------------------------------------------------------------
// The in-process run

/// Tensors declaring more elements than this are not rewritten in process: the random spec draws
/// replacement filters by the declared shape, and one hostile shape would exhaust the memory of
/// the whole test run. The long run, in child processes under a memory limit, covers them.
const IN_PROCESS_ELEMENTS: u64 = 1 << 24;

/// How a mutant went through the library in process.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Both rewrites built models that decode and strip again.
    Accepted,
    /// A stage returned an error: the expected end of most mutants.
    Rejected { stage: &'static str, message: String },
    /// Accepted by the loader, but declaring tensors too large to rewrite in process.
    Oversized,
    /// A stage panicked.
    Panicked { stage: &'static str, location: String, message: String },
    /// A rewrite's output does not decode or strip again.
    Malformed { stage: &'static str, message: String },
}

impl Verdict {
    /// The outcome's label in counts.
    fn label(&self) -> String {
        match self {
            Verdict::Accepted => "accepted".into(),
            Verdict::Rejected { stage, .. } => format!("rejected by {stage}"),
            Verdict::Oversized => "oversized (rewrites left to the long run)".into(),
            Verdict::Panicked { .. } => "PANICKED".into(),
            Verdict::Malformed { .. } => "MALFORMED OUTPUT".into(),
        }
    }

    /// For a failure: the site that groups it and what to show.
    pub fn failure(&self) -> Option<(String, String)> {
        match self {
            Verdict::Panicked { stage, location, message } => Some((format!("panic at {location}"), format!("panic in {stage} at {location}: {message}"))),
            Verdict::Malformed { stage, message } => Some((format!("{stage}: {}", normalized(message)), format!("{stage}: {message}"))),
            _ => None,
        }
    }
}

thread_local! {
    /// Set while [`check`] runs on this thread: the panic hook records the panic here instead of
    /// printing it.
    static CAUGHT: RefCell<Option<Option<(String, String)>>> = const { RefCell::new(None) };
}

/// Runs `f`, turning a panic into its location and message.
fn catching<T>(f: impl FnOnce() -> T) -> std::result::Result<T, (String, String)> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let recorded = CAUGHT.with(|slot| match slot.borrow_mut().as_mut() {
                Some(caught) => {
                    let location = info.location().map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column())).unwrap_or_default();
                    // A panic inside the standard library or a dependency is placed by its caller here.
                    let trace = if location.starts_with("src/") { String::new() } else { std::backtrace::Backtrace::force_capture().to_string() };
                    *caught = Some((panic_site(&location, &trace), panic_message(info.payload())));
                    true
                }
                None => false,
            });
            if !recorded {
                previous(info);
            }
        }));
    });
    CAUGHT.with(|slot| *slot.borrow_mut() = Some(None));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    let caught = CAUGHT.with(|slot| slot.borrow_mut().take()).flatten();
    result.map_err(|payload| caught.unwrap_or_else(|| ("unknown location".into(), panic_message(payload.as_ref()))))
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| payload.downcast_ref::<String>().cloned()).unwrap_or_else(|| "(no message)".into())
}

/// A source path without the cargo registry's or the toolchain's prefix (`ndarray-0.17.1/src/…`,
/// `library/alloc/src/…`).
fn short_path(path: &str) -> String {
    let after = |marker: &str| path.find(marker).and_then(|at| path[at + marker.len()..].split_once('/')).map(|(_, rest)| rest.to_string());
    after("/registry/src/").or_else(|| after("/rustc/")).unwrap_or_else(|| path.to_string())
}

/// Where a panic belongs: its location when that is in this crate's `src/`, else the innermost
/// frame of this crate in `backtrace` (as std prints it), followed by the location.
fn panic_site(location: &str, backtrace: &str) -> String {
    let location = short_path(location);
    if location.starts_with("src/") {
        return location;
    }
    let ours = backtrace.lines().filter_map(|l| l.trim().strip_prefix("at ")).find_map(|path| {
        // The hook's own frames (this file) come first in an in-process trace.
        let foreign = ["/rustc/", "/registry/", "/library/", "src/fuzz.rs"].iter().any(|p| path.contains(p));
        (!foreign).then(|| path.rfind("/src/").map(|at| &path[at + 1..])).flatten()
    });
    match ours {
        Some(frame) => format!("{frame} (via {location})"),
        None => location,
    }
}

/// The start of a message with quoted names and numbers blanked: the part of a site's key that
/// groups one failure shown with different names.
fn normalized(message: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    for c in message.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push_str(if quoted { "'…" } else { "'" });
            }
            _ if quoted => {}
            '0'..='9' if out.ends_with('#') => {}
            '0'..='9' => out.push('#'),
            _ => out.push(c),
        }
    }
    out.chars().take(90).collect()
}

/// Runs one encoded model through the library's model entry points: decode → conform → opset raising → inspect → (strip,
/// when it claims to be patched) → random spec → γ and β rewrites, each output decoded again, and
/// the γ output stripped.
pub fn check(bytes: &[u8]) -> Verdict {
    let stage = std::cell::Cell::new("decode");
    match catching(|| pipeline(bytes, &stage)) {
        Ok(verdict) => verdict,
        Err((location, message)) => Verdict::Panicked { stage: stage.get(), location, message },
    }
}

fn pipeline(bytes: &[u8], stage: &std::cell::Cell<&'static str>) -> Verdict {
    let rejected = |stage: &'static str, e: Error| Verdict::Rejected { stage, message: e.to_string() };
    let mut model = match decode_model(bytes, Path::new("mutant.onnx")) {
        Ok(model) => model,
        Err(e) => return rejected("decode", e),
    };
    stage.set("conform");
    if let Err(e) = crate::analysis::conform::check(&model) {
        return rejected("conform", e);
    }
    // As every command does: an opset older than the rewrites need is raised first.
    stage.set("opset");
    model = match crate::analysis::opset::patchable(model) {
        Ok(model) => model,
        Err(e) => return rejected("opset", e),
    };
    stage.set("inspect");
    if let Err(e) = crate::inspect::inspect(&model).map(|i| i.text()) {
        return rejected("inspect", e);
    }
    if units::strip::is_patched(&model) {
        stage.set("strip of the mutant");
        // Its metadata may be anything: an error is a fine answer, only a panic is not.
        let _ = units::strip(&model);
    }
    if oversized(&mut model) {
        return Verdict::Oversized;
    }
    stage.set("random spec");
    let spec = match units::spec::random_spec(&model, 0.25, 2022, units::Decision::adapt_all()) {
        Ok(spec) => spec,
        Err(e) => return rejected("random spec", e),
    };
    // A malformed output does not stop the run, so that a panic in a later stage still shows.
    let (mut first_rejection, mut malformed) = (None, None);
    type Rewrite = fn(&ModelProto, &units::PatchSpec) -> Result<ModelProto>;
    let rewrites: [(&str, Rewrite); 2] = [("gamma", units::gamma_model), ("beta", |m, s| units::beta_model(m, s).map(|b| b.0))];
    for (name, rewrite) in rewrites {
        stage.set(name);
        let output = match rewrite(&model, &spec) {
            Ok(output) => output,
            Err(e) => {
                first_rejection.get_or_insert(rejected(name, e));
                continue;
            }
        };
        if name == "gamma" {
            stage.set("strip of the gamma output");
            if let Err(e) = units::strip(&output) {
                malformed.get_or_insert(Verdict::Malformed { stage: stage.get(), message: e.to_string() });
            }
        }
        stage.set(if name == "gamma" { "decode of the gamma output" } else { "decode of the beta output" });
        let decoded = decode_model(&output.encode_to_vec(), Path::new("rewritten.onnx"));
        if let Err(e) = decoded.and_then(|output| crate::analysis::conform::check(&output)) {
            malformed.get_or_insert(Verdict::Malformed { stage: stage.get(), message: e.to_string() });
        }
    }
    malformed.or(first_rejection).unwrap_or(Verdict::Accepted)
}

/// Whether a tensor declares more elements than the in-process run may allocate for.
fn oversized(model: &mut ModelProto) -> bool {
    model.graph.as_mut().is_some_and(|g| tensors(g).iter().any(|t| declared_elements(&t.dims, u64::MAX) > IN_PROCESS_ELEMENTS))
}

/// Failures grouped by site, each with its count and its smallest reproducer.
#[derive(Debug, Default, Serialize)]
pub struct Findings(BTreeMap<String, Finding>);

/// One site.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// What its smallest reproducer shows: the panic's location and message, or the step,
    /// outcome and message.
    pub detail: String,
    pub count: u64,
    /// The smallest mutant that shows it (fewest mutations, then fewest bytes).
    pub example: Mutant,
}

impl Findings {
    fn add(&mut self, key: String, detail: String, mutant: &Mutant) {
        match self.0.get_mut(&key) {
            Some(entry) => {
                entry.count += 1;
                if mutant.rank() < entry.example.rank() {
                    *entry = Finding { detail, count: entry.count, example: mutant.clone() };
                }
            }
            None => {
                self.0.insert(key, Finding { detail, count: 1, example: mutant.clone() });
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    fn text(&self) -> String {
        self.0
            .values()
            .map(|f| format!("  [{}×] {}\n      smallest: {} ({} bytes)\n", f.count, f.detail, f.example.describe(), f.example.bytes.len()))
            .collect()
    }

    /// Writes each site's smallest reproducer into `dir`, named after the site; returns the paths.
    pub fn save_examples(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        self.0
            .iter()
            .map(|(key, finding)| {
                let stem: String = key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' }).take(100).collect();
                let path = dir.join(format!("{stem}.onnx"));
                write_atomically(&path, &finding.example.bytes)?;
                Ok(path)
            })
            .collect()
    }
}

/// What an in-process run found.
#[derive(Debug, Default)]
pub struct SmokeReport {
    pub cases: u64,
    /// How many mutants ended in each way.
    pub outcomes: BTreeMap<String, u64>,
    pub findings: Findings,
}

impl SmokeReport {
    /// Outcome counts and every site with its smallest reproducer.
    pub fn text(&self) -> String {
        let counts: String = self.outcomes.iter().map(|(label, n)| format!("  {n:>6}  {label}\n")).collect();
        format!("{} mutants:\n{counts}{} distinct failure sites:\n{}", self.cases, self.findings.len(), self.findings.text())
    }
}

/// Runs cases `cases` of `seed` in process (on rayon's threads) and groups the failures.
pub fn smoke(bases: &[Base], seed: u64, cases: std::ops::Range<u64>) -> SmokeReport {
    let report = Mutex::new(SmokeReport::default());
    cases.into_par_iter().for_each(|case| {
        let mutant = mutant(bases, seed, case);
        let verdict = check(&mutant.bytes);
        let mut report = report.lock().unwrap_or_else(|e| e.into_inner());
        report.cases += 1;
        *report.outcomes.entry(verdict.label()).or_default() += 1;
        if let Some((key, detail)) = verdict.failure() {
            report.findings.add(key, detail, &mutant);
        }
    });
    report.into_inner().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// The long run: this binary in child processes

/// Options of the `fuzz` command.
#[derive(Debug, Clone, clap::Args)]
pub struct FuzzOptions {
    /// Mutants to generate and run.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub cases: u64,
    /// Seed of the mutants: the same seed and models give the same cases.
    #[arg(long, default_value_t = 13)]
    pub seed: u64,
    /// Folder for the failing cases (cases/) and summary.json.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Folder of the models to mutate (every *.onnx in it).
    #[arg(long, value_name = "DIR", default_value = "fixtures/models")]
    pub models: PathBuf,
    /// Wall-clock limit of each child process, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 20)]
    pub timeout_s: u64,
    /// Address-space limit of each child process in MiB (0: none).
    #[arg(long, value_name = "MIB", default_value_t = 4096)]
    pub memory_mib: u64,
    /// Child processes at a time [default: the available cores].
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Also evaluate each mutant and its γ model on 10 images of this configuration, on every
    /// backend of --backends (backend preparation and a forward pass).
    #[arg(long, value_name = "CONFIG")]
    pub eval: Option<PathBuf>,
    /// Backends of --eval.
    #[arg(long, value_delimiter = ',', default_value = "tract")]
    pub backends: Vec<BackendKind>,
    /// Check each mutant and its γ model with onnx.checker (full check) and an onnxruntime
    /// session, with this Python interpreter.
    #[arg(long, value_name = "PYTHON")]
    pub checker: Option<PathBuf>,
    /// The onnx-deeppatch executable the children run (default: the running one).
    #[arg(skip)]
    pub program: Option<PathBuf>,
}

/// How one child process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    /// Exit 0.
    Ok,
    /// A one-line `error: …` with exit 2, 3 or 4 (or 1 from a backend step): the model refused.
    Error,
    /// A one-line error with exit 1 where the model should have been refused (2, 3, 4).
    Internal,
    Panic,
    Timeout,
    /// Aborted on a failed allocation (the address-space limit).
    OutOfMemory,
    /// Killed by another signal (a stack overflow, a crash in a native library).
    Signal,
    /// A failure whose standard error is not one `error:` line.
    Noisy,
    /// A step on the tool's own output (its γ model) failed.
    RefusedOwnOutput,
    /// onnx.checker or onnxruntime rejects a mutant the tool patched without complaint.
    AcceptedInvalid,
    /// onnx.checker or onnxruntime accepts the mutant but rejects its γ model.
    RewriteInvalid,
    /// The checker itself crashed or answered nonsense (not the tool's fault).
    CheckerCrash,
}

impl Class {
    /// The name in summary.json.
    fn name(self) -> String {
        serde_json::to_value(self).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
    }

    /// Whether the run shows a problem of the tool.
    pub fn is_bad(self) -> bool {
        !matches!(self, Class::Ok | Class::Error | Class::CheckerCrash)
    }
}

/// Classifies a finished child: `status` is `None` when it was killed for its time limit.
/// `backend`: exit 1 is a backend refusing the model, a fine answer; `own_output`: the input was
/// the tool's own output, which must be accepted.
pub fn classify(status: Option<ExitStatus>, stderr: &str, backend: bool, own_output: bool) -> (Class, String) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let first = lines.first().copied().unwrap_or("").to_string();
    let Some(status) = status else { return (Class::Timeout, "no exit within the time limit".into()) };
    if let Some(at) = lines.iter().position(|l| l.contains(" panicked at ")) {
        let location = lines[at].split(" panicked at ").nth(1).unwrap_or("").trim_end_matches(':').to_string();
        let message = lines.get(at + 1).copied().unwrap_or("");
        return (Class::Panic, format!("{} : {message}", panic_site(&location, stderr)));
    }
    if stderr.contains("memory allocation of") || stderr.contains("std::bad_alloc") {
        return (Class::OutOfMemory, first);
    }
    let code = match status.code() {
        Some(code) => code,
        None => {
            #[cfg(unix)]
            let signal = std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0);
            #[cfg(not(unix))]
            let signal = 0;
            return (Class::Signal, format!("signal {signal}: {first}"));
        }
    };
    let clean = lines.len() == 1 && first.starts_with("error: ");
    let class = match code {
        0 => Class::Ok,
        _ if !clean => Class::Noisy,
        _ if own_output => Class::RefusedOwnOutput,
        2..=4 => Class::Error,
        1 if backend => Class::Error,
        _ => Class::Internal,
    };
    let detail = if class == Class::Noisy { format!("exit {code}: {}", lines.join(" / ")) } else { first };
    (class, detail.chars().take(400).collect())
}

/// One child process of a case.
#[derive(Debug, Clone, Serialize)]
pub struct StepOutcome {
    pub step: String,
    pub class: Class,
    pub detail: String,
    pub seconds: f64,
}

/// A failing step of a case, as the summary lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub case: u64,
    pub base: String,
    pub mutations: Vec<String>,
    pub step: String,
    pub class: Class,
    pub detail: String,
    /// The mutant, under the output folder.
    pub file: String,
}

/// What the long run found; also written as `summary.json`.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub seed: u64,
    pub cases: u64,
    pub models: Vec<String>,
    pub seconds: f64,
    /// Per step, how many runs ended in each class.
    pub steps: BTreeMap<String, BTreeMap<Class, u64>>,
    pub failures: Vec<Failure>,
    /// Failures grouped by site (panic location, else step, class and message), each with its
    /// count and smallest reproducer.
    pub sites: Findings,
    #[serde(skip)]
    out: PathBuf,
}

impl Summary {
    /// Counts per step and every site.
    pub fn text(&self) -> String {
        let mut text = format!("{} mutants (seed {}) in {:.0} s:\n", self.cases, self.seed, self.seconds);
        for (step, classes) in &self.steps {
            let counts: Vec<String> = classes.iter().map(|(class, n)| format!("{n} {}", class.name())).collect();
            text += &format!("  {step:<16} {}\n", counts.join(", "));
        }
        text += &format!("{} failing runs, {} distinct sites:\n{}", self.failures.len(), self.sites.len(), self.sites.text());
        text
    }

    /// An error when a run failed, naming where the cases are.
    pub fn verdict(&self) -> Result<()> {
        if self.failures.is_empty() {
            return Ok(());
        }
        Err(Error::Internal(format!(
            "fuzzing found {} failing runs at {} sites; mutants in {}, details in {}",
            self.failures.len(),
            self.sites.len(),
            self.out.join("cases").display(),
            self.out.join("summary.json").display()
        )))
    }
}

/// The checker's script: one line per model, `ok` or the first line of the error.
const CHECKER: &str = r#"
import sys, onnx, onnxruntime
def check(path):
    try:
        onnx.checker.check_model(onnx.load(path), full_check=True)
        onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return "ok"
    except Exception as e:
        line = (type(e).__name__ + ": " + str(e)).splitlines()[0]
        # Nested runtime errors put the cause last.
        return line if len(line) <= 400 else line[:150] + " … " + line[-250:]
for path in sys.argv[1:]:
    print(check(path))
"#;

/// Runs `program args` with the time and memory limits, its output in files under `work`; returns
/// how it ended, its standard output and its standard error.
fn run_child(program: &Path, args: &[OsString], options: &FuzzOptions, work: &Path, step: &str) -> Result<(Option<ExitStatus>, String, String)> {
    let file = |suffix: &str| -> Result<(PathBuf, fs::File)> {
        let path = work.join(format!("{step}.{suffix}"));
        let file = fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        Ok((path, file))
    };
    let ((out_path, out), (err_path, err)) = (file("out")?, file("err")?);
    let mut command = Command::new(program);
    // A backtrace places panics inside std or a dependency (see `panic_site`); errors need none.
    command.args(args).stdin(Stdio::null()).stdout(out).stderr(err).env("RUST_BACKTRACE", "1").env("RUST_LIB_BACKTRACE", "0");
    let limits = crate::isolate::Limits {
        time: Duration::from_secs(options.timeout_s),
        memory: (options.memory_mib > 0).then_some(options.memory_mib << 20),
    };
    let status = crate::isolate::run_limited(command, &limits).map_err(|e| Error::io(program, e))?;
    // Paths inside the case's folder are shown by file name, so that messages group across cases.
    let prefix = format!("{}/", work.display());
    let read = |path: &Path| fs::read(path).map(|b| String::from_utf8_lossy(&b).replace(&prefix, "")).unwrap_or_default();
    Ok((status, read(&out_path), read(&err_path)))
}

/// The steps of one case, run in order; the later ones only where an earlier one wrote a model.
fn run_case(mutant: &Mutant, options: &FuzzOptions, program: &Path, work: &Path) -> Result<Vec<StepOutcome>> {
    let model = work.join("mutant.onnx");
    fs::write(&model, &mutant.bytes).map_err(|e| Error::io(&model, e))?;
    let gamma = work.join("gamma.onnx");
    let mut outcomes = Vec::new();
    let mut step = |name: String, args: Vec<OsString>, backend: bool, own_output: bool| -> Result<()> {
        let start = Instant::now();
        let mut full: Vec<OsString> = vec!["--quiet".into()];
        full.extend(args);
        let (status, _, stderr) = run_child(program, &full, options, work, &name)?;
        let (class, detail) = classify(status, &stderr, backend, own_output);
        outcomes.push(StepOutcome { step: name, class, detail, seconds: start.elapsed().as_secs_f64() });
        Ok(())
    };
    let os = |items: &[&dyn AsRef<std::ffi::OsStr>]| -> Vec<OsString> { items.iter().map(|i| i.as_ref().to_os_string()).collect() };
    step("inspect".into(), os(&[&"inspect", &model]), false, false)?;
    step("patch".into(), os(&[&"patch", &model, &gamma, &"--random-spec"]), false, false)?;
    step("patch-beta".into(), os(&[&"patch", &model, &work.join("beta.onnx"), &"--random-spec", &"--beta"]), false, false)?;
    let patched = gamma.exists();
    if patched {
        step("inspect-gamma".into(), os(&[&"inspect", &gamma]), false, true)?;
        step("strip-gamma".into(), os(&[&"strip", &gamma, &work.join("stripped.onnx")]), false, true)?;
    }
    if let Some(config) = &options.eval {
        for backend in &options.backends {
            let models: &[(&str, &Path)] = if patched { &[("eval", model.as_path()), ("eval-gamma", gamma.as_path())] } else { &[("eval", model.as_path())] };
            for (name, path) in models {
                let args = os(&[&"eval", path, &"--config", config, &"--limit", &"10", &"--sigmas", &"1", &"--threads", &"1", &"--backend", &backend.name()]);
                step(format!("{name}-{backend}"), args, true, false)?;
            }
        }
    }
    if let (Some(python), true) = (&options.checker, patched) {
        let start = Instant::now();
        let args = os(&[&"-c", &CHECKER, &model, &gamma]);
        let (status, stdout, stderr) = run_child(python, &args, options, work, "checker")?;
        let (class, detail) = checker_class(status, &stdout, &stderr);
        outcomes.push(StepOutcome { step: "checker".into(), class, detail, seconds: start.elapsed().as_secs_f64() });
    }
    Ok(outcomes)
}

/// The checker's verdict on the mutant and its γ model.
fn checker_class(status: Option<ExitStatus>, stdout: &str, stderr: &str) -> (Class, String) {
    let lines: Vec<&str> = stdout.lines().collect();
    match (status.map(|s| s.success()), lines.as_slice()) {
        (Some(true), ["ok", "ok"]) => (Class::Ok, String::new()),
        (Some(true), ["ok", gamma]) => (Class::RewriteInvalid, gamma.to_string()),
        (Some(true), [mutant, _]) => (Class::AcceptedInvalid, mutant.to_string()),
        _ => (Class::CheckerCrash, stderr.lines().last().unwrap_or("no answer").chars().take(300).collect()),
    }
}

/// The site a failing step belongs to.
fn site_key(outcome: &StepOutcome) -> String {
    let kind = outcome.class.name();
    match outcome.class {
        Class::Panic => format!("panic at {}", outcome.detail.split(" : ").next().unwrap_or("")),
        // Nothing says where: one site per step (the smallest reproducer tells the cause).
        Class::Timeout => format!("{} {kind}", outcome.step),
        // The message's start (an allocation's size, a runtime's log prefix) tells the kind.
        _ => format!("{} {kind}: {}", outcome.step, normalized(&outcome.detail)),
    }
}

/// The `fuzz` command: cases `0..cases` of `seed` through the binary in child processes, every bad
/// case kept in `out/cases/`, `out/summary.json` written.
pub fn long_run(options: &FuzzOptions) -> Result<Summary> {
    let start = Instant::now();
    let bases = load_bases(&options.models)?;
    let program = match &options.program {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(|e| Error::Internal(format!("cannot find the running executable: {e}")))?,
    };
    let kept = options.out.join("cases");
    fs::create_dir_all(&kept).map_err(|e| Error::io(&kept, e))?;
    let work = tempfile::Builder::new().prefix("work-").tempdir_in(&options.out).map_err(|e| Error::io(&options.out, e))?;
    let jobs = options.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);

    let next = AtomicU64::new(0);
    let results: Mutex<Vec<(Mutant, Vec<StepOutcome>)>> = Mutex::new(Vec::new());
    let progress = Mutex::new(Progress::new("fuzz", options.cases as usize));
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let case = next.fetch_add(1, Ordering::Relaxed);
                if case >= options.cases || first_error.lock().map_or(true, |e| e.is_some()) {
                    return;
                }
                let mutant = mutant(&bases, options.seed, case);
                let dir = work.path().join(format!("case-{case}"));
                let outcome = fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e)).and_then(|_| run_case(&mutant, options, &program, &dir));
                let kept_mutant = outcome.as_ref().is_ok_and(|steps| steps.iter().any(|s| s.class.is_bad()));
                let saved = if kept_mutant { keep_case(&mutant, &dir, &kept) } else { Ok(()) };
                let _ = fs::remove_dir_all(&dir);
                match outcome.and_then(|steps| saved.map(|_| steps)) {
                    Ok(steps) => results.lock().unwrap_or_else(|e| e.into_inner()).push((mutant, steps)),
                    Err(e) => {
                        first_error.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
                    }
                }
                progress.lock().unwrap_or_else(|e| e.into_inner()).advance(1);
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    progress.into_inner().unwrap_or_else(|e| e.into_inner()).finish();

    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|(m, _)| m.case);
    let mut summary = Summary {
        seed: options.seed,
        cases: options.cases,
        models: bases.iter().map(|b| b.name.clone()).collect(),
        seconds: 0.0,
        steps: BTreeMap::new(),
        failures: Vec::new(),
        sites: Findings::default(),
        out: options.out.clone(),
    };
    for (mutant, steps) in &results {
        for outcome in steps {
            *summary.steps.entry(outcome.step.clone()).or_default().entry(outcome.class).or_default() += 1;
            if outcome.class.is_bad() {
                summary.sites.add(site_key(outcome), format!("{}: {}", outcome.step, outcome.detail), mutant);
                summary.failures.push(Failure {
                    case: mutant.case,
                    base: mutant.base.clone(),
                    mutations: mutant.mutations.clone(),
                    step: outcome.step.clone(),
                    class: outcome.class,
                    detail: outcome.detail.clone(),
                    file: format!("cases/{}", case_file(mutant.case)),
                });
            }
        }
    }
    summary.seconds = start.elapsed().as_secs_f64();
    let json = serde_json::to_string_pretty(&summary).map_err(|e| Error::Internal(e.to_string()))?;
    write_atomically(&options.out.join("summary.json"), format!("{json}\n").as_bytes())?;
    Ok(summary)
}

fn case_file(case: u64) -> String {
    format!("case-{case:06}.onnx")
}

/// Keeps a bad case's mutant, and its γ model when one was written (for the checker's verdicts).
fn keep_case(mutant: &Mutant, work: &Path, kept: &Path) -> Result<()> {
    let path = kept.join(case_file(mutant.case));
    fs::write(&path, &mutant.bytes).map_err(|e| Error::io(&path, e))?;
    let gamma = work.join("gamma.onnx");
    if gamma.exists() {
        let target = path.with_extension("gamma.onnx");
        fs::copy(&gamma, &target).map_err(|e| Error::io(&target, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bases() -> Vec<Base> {
        load_bases(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/models")).unwrap()
    }

    #[test]
    fn the_same_seed_and_case_give_the_same_bytes() {
        let bases = bases();
        for case in [0, 1, 77, 4096] {
            let (a, b) = (mutant(&bases, 5, case), mutant(&bases, 5, case));
            assert_eq!(a.bytes, b.bytes);
            assert_eq!(a.mutations, b.mutations);
            assert!(!a.mutations.is_empty() && a.mutations.len() <= 3, "{:?}", a.mutations);
        }
        assert_ne!(mutant(&bases, 5, 0).bytes, mutant(&bases, 6, 0).bytes);
    }

    #[test]
    fn every_mutation_kind_applies_and_changes_the_model() {
        let bases = bases();
        for (name, mutate) in MUTATIONS {
            let mut applied = 0;
            for (i, base) in bases.iter().enumerate() {
                for seed in 0..20 {
                    let mut rng = Rand::seed_from_u64(seed * 31 + i as u64);
                    let mut model = base.model.clone();
                    match mutate(&mut model, &mut rng) {
                        Some(_) => applied += 1,
                        None => assert_eq!(model, base.model, "{name} declined but changed the model"),
                    }
                }
            }
            assert!(applied > 0, "{name} never applies to the fixture models");
        }
        // And every kind is drawn by the mutant generator.
        let drawn: std::collections::HashSet<String> =
            (0..600).flat_map(|case| mutant(&bases, 1, case).mutations).filter_map(|m| m.split(':').next().map(String::from)).collect();
        for (name, _) in MUTATIONS {
            assert!(drawn.contains(*name), "{name} never drawn in 600 cases");
        }
    }

    #[test]
    fn panics_are_caught_with_their_location() {
        let result = catching(|| -> u32 { panic!("boom {}", 7) });
        let (location, message) = result.unwrap_err();
        assert!(location.starts_with("src/fuzz.rs:"), "{location}");
        assert_eq!(message, "boom 7");
        assert_eq!(catching(|| 3), Ok(3));
    }

    #[test]
    fn messages_group_without_names_and_numbers() {
        assert_eq!(normalized("node 'Conv_12' reads 'x.3', which nothing defines (7 of 12)"), "node '…' reads '…', which nothing defines (# of #)");
        assert_eq!(short_path("/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ndarray-0.17.1/src/lib.rs:1:2"), "ndarray-0.17.1/src/lib.rs:1:2");
        let trace = "  4: alloc::raw_vec::capacity_overflow\n      at /rustc/abc/library/alloc/src/raw_vec/mod.rs:28:5\n  5: f\n      at /work/main/src/analysis/facts.rs:9:1\n";
        assert_eq!(panic_site("/rustc/abc/library/alloc/src/raw_vec/mod.rs:28:5", trace), "src/analysis/facts.rs:9:1 (via library/alloc/src/raw_vec/mod.rs:28:5)");
        assert_eq!(panic_site("src/units/gamma.rs:1:2", trace), "src/units/gamma.rs:1:2");
    }

    #[cfg(unix)]
    #[test]
    fn child_outcomes_are_classified() {
        use std::os::unix::process::ExitStatusExt;
        let exit = |code: i32| Some(ExitStatus::from_raw(code << 8));
        assert_eq!(classify(exit(0), "", false, false).0, Class::Ok);
        assert_eq!(classify(exit(3), "error: m.onnx: bad\n", false, false), (Class::Error, String::from("error: m.onnx: bad")));
        assert_eq!(classify(exit(3), "error: m.onnx: bad\n", false, true).0, Class::RefusedOwnOutput);
        assert_eq!(classify(exit(1), "error: internal error: x\n", false, false).0, Class::Internal);
        assert_eq!(classify(exit(1), "error: backend tract: x\n", true, false).0, Class::Error);
        assert_eq!(classify(exit(3), "error: a\nmore\n", false, false).0, Class::Noisy);
        let panic = "\nthread 'main' panicked at src/units/gamma.rs:10:5:\nindex out of bounds\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(classify(exit(101), panic, false, false), (Class::Panic, String::from("src/units/gamma.rs:10:5 : index out of bounds")));
        assert_eq!(classify(Some(ExitStatus::from_raw(6)), "memory allocation of 8589934592 bytes failed\n", false, false).0, Class::OutOfMemory);
        assert_eq!(classify(Some(ExitStatus::from_raw(11)), "", false, false).0, Class::Signal);
        assert_eq!(classify(None, "", false, false).0, Class::Timeout);
        assert_eq!(checker_class(exit(0), "ok\nok\n", "").0, Class::Ok);
        assert_eq!(checker_class(exit(0), "ok\nValidationError: x\n", "").0, Class::RewriteInvalid);
        assert_eq!(checker_class(exit(0), "ValidationError: y\nok\n", "").0, Class::AcceptedInvalid);
        assert_eq!(checker_class(Some(ExitStatus::from_raw(11)), "", "").0, Class::CheckerCrash);
    }
}
