//! Structural validation of a decoded model, before anything allocates, rewrites or runs it.
//!
//! A model file is untrusted input: dimensions, attribute values and edges are checked here so
//! that later stages may believe them. What is checked:
//! - every tensor (initializers, constant attributes, sparse parts, in subgraphs too): a known
//!   data type, non-negative dimensions whose product and byte size fit the memory budget, and
//!   exactly the data its shape needs;
//! - every node of the default domain against its operator's schema at the model's opset
//!   ([`schema::check_node`]: the operator exists there, counts, empty inputs, attributes);
//! - the operators the tool analyses and rewrites (Conv, the pools, BatchNormalization,
//!   Transpose): arity, attribute types and ranges, kernels that agree with their weights;
//! - the default opset against the range this tool knows, each domain imported once at a real
//!   version, each metadata key once;
//! - float weights for NaN and infinity (refused unless [`allow_nonfinite`] was called).

use std::sync::atomic::{AtomicBool, Ordering};

use super::graph::{attribute, in_default_domain, node_label, FastMap, FastSet, GraphIndex};
use super::schema;
use super::proto::{
    attribute_proto::AttributeType, tensor_proto::DataLocation, tensor_proto::DataType, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
    ModelProto, NodeProto, TensorProto, ValueInfoProto,
};
use crate::error::{Error, Result};

/// The largest tensor accepted, in bytes: beyond it a model is refused before any copy is made.
pub const MAX_TENSOR_BYTES: u64 = 16 << 30;
/// The largest kernel, stride, dilation or pad along one axis (a guard against values that make
/// runtimes overflow; real networks stay far below it).
pub const MAX_WINDOW: i64 = 1 << 16;
/// The newest IR version this tool knows.
pub const MAX_IR_VERSION: i64 = 14;
/// The opsets of the default domain this tool knows the operators of.
pub const OPSETS: std::ops::RangeInclusive<i64> = 7..=23;

static ALLOW_NONFINITE: AtomicBool = AtomicBool::new(false);

/// Accept float weights that hold NaN or infinity (a warning instead of an error); set once by the
/// command line's `--allow-nonfinite`.
pub fn allow_nonfinite(allow: bool) {
    ALLOW_NONFINITE.store(allow, Ordering::Relaxed);
}

/// Bits per element of a data type, `None` for types without a fixed size (strings, undefined).
fn element_bits(data_type: DataType) -> Option<u64> {
    use DataType::*;
    Some(match data_type {
        Undefined | String => return None,
        Uint2 | Int2 => 2,
        Uint4 | Int4 | Float4e2m1 => 4,
        Float6e2m3 | Float6e3m2 => 6,
        Uint8 | Int8 | Bool | Float8e4m3fn | Float8e4m3fnuz | Float8e5m2 | Float8e5m2fnuz | Float8e8m0 => 8,
        Uint16 | Int16 | Float16 | Bfloat16 => 16,
        Float | Int32 | Uint32 => 32,
        Int64 | Uint64 | Double | Complex64 => 64,
        Complex128 => 128,
    })
}

/// Elements and bytes a tensor's shape needs, checked for overflow and against the budget. The
/// data itself is not looked at, so this serves for external data before it is read.
pub fn tensor_extent(tensor: &TensorProto) -> Result<(u64, u64)> {
    let fail = |message: String| tensor_error(tensor, message);
    let data_type = tensor.data_type.unwrap_or(0);
    let known = DataType::try_from(data_type).map_err(|_| fail(format!("unknown data type {data_type}")))?;
    let mut count: u64 = 1;
    for &d in &tensor.dims {
        let d = u64::try_from(d).map_err(|_| fail(format!("negative dimension {d} in {:?}", tensor.dims)))?;
        count = count.checked_mul(d).ok_or_else(|| fail(format!("dimensions {:?} overflow", tensor.dims)))?;
    }
    let bytes = match element_bits(known) {
        Some(bits) => count.checked_mul(bits).map(|b| b.div_ceil(8)),
        None if known == DataType::String => Some(0),
        None => return Err(fail("data type UNDEFINED".into())),
    };
    match bytes {
        Some(bytes) if bytes <= MAX_TENSOR_BYTES => Ok((count, bytes)),
        _ => Err(fail(format!("dimensions {:?} need more than the {} GiB a tensor may hold", tensor.dims, MAX_TENSOR_BYTES >> 30))),
    }
}

/// Checks one tensor: its extent, and that the data present is exactly what the shape needs.
fn check_tensor(tensor: &TensorProto) -> Result<()> {
    let (count, bytes) = tensor_extent(tensor)?;
    if tensor.segment.is_some() {
        return Err(tensor_error(tensor, "segmented tensors are not supported".into()));
    }
    if tensor.data_location == Some(DataLocation::External as i32) {
        // Checked when the data is read (`io::load_model`), against the same extent.
        return Ok(());
    }
    let data_type = DataType::try_from(tensor.data_type.unwrap_or(0)).unwrap_or(DataType::Undefined);
    let (found, needed, field) = if let Some(raw) = &tensor.raw_data {
        if data_type == DataType::String {
            return Err(tensor_error(tensor, "a string tensor cannot use raw_data".into()));
        }
        (raw.len() as u64, bytes, "raw_data bytes")
    } else {
        use DataType::*;
        match data_type {
            Float => (tensor.float_data.len() as u64, count, "float_data values"),
            Complex64 => (tensor.float_data.len() as u64, count * 2, "float_data values"),
            Double => (tensor.double_data.len() as u64, count, "double_data values"),
            Complex128 => (tensor.double_data.len() as u64, count * 2, "double_data values"),
            Int64 => (tensor.int64_data.len() as u64, count, "int64_data values"),
            Uint32 | Uint64 => (tensor.uint64_data.len() as u64, count, "uint64_data values"),
            String => (tensor.string_data.len() as u64, count, "string_data values"),
            Int32 | Int16 | Int8 | Uint16 | Uint8 | Bool | Float16 | Bfloat16 | Float8e4m3fn | Float8e4m3fnuz | Float8e5m2 | Float8e5m2fnuz
            | Float8e8m0 => (tensor.int32_data.len() as u64, count, "int32_data values"),
            _ => (tensor.int32_data.len() as u64, bytes.div_ceil(4), "int32_data words"),
        }
    };
    if found != needed {
        return Err(tensor_error(tensor, format!("holds {found} {field}, its dimensions {:?} need {needed}", tensor.dims)));
    }
    Ok(())
}

fn tensor_error(tensor: &TensorProto, message: String) -> Error {
    Error::InvalidGraph(format!("tensor '{}': {message}", tensor.name.as_deref().unwrap_or("")))
}

/// Validates `model` (see the module documentation). External data must already be inlined for
/// the non-finite check to see it; its extent is checked either way.
pub fn check_model(model: &ModelProto) -> Result<()> {
    match model.graph.as_ref() {
        Some(graph) => check_indexed(model, &GraphIndex::new(graph)?),
        None => check_model_level(model),
    }
}

/// [`check_model`] with the index of the model's graph already built (by a caller that needs it
/// too): every value defined once, no cycle.
pub fn check_indexed(model: &ModelProto, index: &GraphIndex) -> Result<()> {
    check_model_level(model)?;
    let graph = index.graph();
    let opset = super::default_opset(model);
    let ir = model.ir_version.unwrap_or(0);
    if ir < 4 {
        check_initializers_are_inputs(graph, ir)?;
    }
    let domains = Domains::of(model);
    check_graph(graph, opset)?;
    // The index's order is the file's own exactly when the file is sorted; subgraphs are checked
    // against the values defined before their node, which only the walk over the file keeps.
    let sorted = index.topological_order().iter().enumerate().all(|(i, &p)| i == p);
    let nested = graph.node.iter().flat_map(|n| &n.attribute).any(|a| a.g.is_some() || !a.graphs.is_empty());
    let order = if sorted && !nested { Order::Known } else { Order::Check(FastSet::default()) };
    check_order_and_domains(graph, &domains, order)?;
    for function in &model.functions {
        for node in &function.node {
            check_attributes(node, opset)?;
        }
    }
    check_finite(graph)
}

/// What holds for the whole model, graph or not: the IR version, the default opset, the imports
/// and the metadata.
fn check_model_level(model: &ModelProto) -> Result<()> {
    let ir = model.ir_version.unwrap_or(0);
    if ir > MAX_IR_VERSION {
        return Err(Error::InvalidGraph(format!("IR version {ir} is newer than this tool knows ({MAX_IR_VERSION})")));
    }
    let opset = super::default_opset(model);
    if !OPSETS.contains(&opset) {
        return Err(Error::InvalidGraph(format!(
            "default-domain opset {opset} is outside the opsets this tool knows ({}..={}); a model must import the default domain",
            OPSETS.start(),
            OPSETS.end()
        )));
    }
    check_imports_and_metadata(model)
}

/// Before IR version 4 an initializer only gives a graph input its default value, so every
/// initializer must be a graph input too (`onnx.checker` refuses the model otherwise).
fn check_initializers_are_inputs(graph: &GraphProto, ir: i64) -> Result<()> {
    let inputs: FastSet<&str> = graph.input.iter().filter_map(|v| v.name.as_deref()).collect();
    match graph.initializer.iter().filter_map(|t| t.name.as_deref()).find(|name| !inputs.contains(name)) {
        Some(name) => Err(Error::InvalidGraph(format!(
            "initializer '{name}' is not a graph input, which IR version {ir} requires (from IR version 4 on it need not be)"
        ))),
        None => Ok(()),
    }
}

/// Operator domains besides the default one whose newest version runtimes know (onnxruntime refuses
/// a model importing a newer one).
const KNOWN_DOMAINS: [(&str, i64); 3] = [("ai.onnx.ml", 5), ("com.microsoft", 1), ("ai.onnx.preview.training", 1)];

/// Each domain imported once, at a real version ('ai.onnx' and '' are one domain); each metadata
/// key once.
fn check_imports_and_metadata(model: &ModelProto) -> Result<()> {
    let mut domains = FastSet::default();
    for import in &model.opset_import {
        let domain = import.domain.as_deref().unwrap_or("");
        let version = import.version.unwrap_or(0);
        if version < 1 {
            return Err(Error::InvalidGraph(format!("opset import of domain '{domain}' has version {version}")));
        }
        if let Some((_, newest)) = KNOWN_DOMAINS.iter().find(|(d, _)| *d == domain).filter(|(_, newest)| version > *newest) {
            return Err(Error::InvalidGraph(format!("domain '{domain}' is imported at version {version}, newer than runtimes know ({newest})")));
        }
        if !domains.insert(if domain == "ai.onnx" { "" } else { domain }) {
            return Err(Error::InvalidGraph(format!("domain '{domain}' is imported more than once")));
        }
    }
    let mut keys = FastSet::default();
    if let Some(key) = model.metadata_props.iter().map(|p| p.key.as_deref().unwrap_or("")).find(|key| !keys.insert(*key)) {
        return Err(Error::InvalidGraph(format!("metadata key '{key}' is given more than once")));
    }
    Ok(())
}

fn check_graph(graph: &GraphProto, opset: i64) -> Result<()> {
    let mut inputs = FastSet::default();
    if let Some(name) = graph.input.iter().filter_map(|v| v.name.as_deref()).find(|name| !inputs.insert(*name)) {
        return Err(Error::InvalidGraph(format!("graph input '{name}' is declared twice")));
    }
    for value in graph.input.iter().chain(&graph.output).chain(&graph.value_info) {
        check_declared_dims(value)?;
    }
    if let Some(sparse) = graph.sparse_initializer.first() {
        let name = sparse.values.as_ref().and_then(|v| v.name.as_deref()).unwrap_or("");
        return Err(Error::InvalidGraph(format!("sparse initializer '{name}': sparse initializers are not supported")));
    }
    for tensor in &graph.initializer {
        check_tensor(tensor)?;
    }
    let constants = Constants::of(graph);
    for sparse in &graph.sparse_initializer {
        for tensor in [sparse.values.as_ref(), sparse.indices.as_ref()].into_iter().flatten() {
            check_tensor(tensor)?;
        }
    }
    for (position, node) in graph.node.iter().enumerate() {
        check_attributes(node, opset)?;
        if in_default_domain(node) {
            check_operator(&constants, node, position, opset)?;
        }
    }
    Ok(())
}

/// Declared dimensions a runtime can hold: shape inference adds and multiplies them, so values near
/// the i64 limit overflow in `onnx.checker` (and no tensor has 2⁴⁰ elements along one axis).
fn check_declared_dims(value: &ValueInfoProto) -> Result<()> {
    const LARGEST: i64 = 1 << 40;
    let Some(type_proto::Value::TensorType(tensor)) = value.r#type.as_ref().and_then(|t| t.value.as_ref()) else { return Ok(()) };
    let sizes = tensor.shape.iter().flat_map(|s| &s.dim).filter_map(|d| match d.value {
        Some(tensor_shape_proto::dimension::Value::DimValue(v)) => Some(v),
        _ => None,
    });
    match sizes.into_iter().find(|v| !(0..=LARGEST).contains(v)) {
        Some(v) => Err(Error::InvalidGraph(format!("value '{}' declares a dimension of {v}, outside [0, 2^40]", value.name.as_deref().unwrap_or("")))),
        None => Ok(()),
    }
}

/// A node's attributes: each name once, and the tensors and subgraphs they hold.
fn check_attributes(node: &NodeProto, opset: i64) -> Result<()> {
    for (i, attribute) in node.attribute.iter().enumerate() {
        let name = attribute.name.as_deref().unwrap_or("");
        if node.attribute[..i].iter().any(|a| a.name.as_deref().unwrap_or("") == name) {
            let times = node.attribute.iter().filter(|a| a.name.as_deref().unwrap_or("") == name).count();
            return Err(Error::InvalidGraph(format!(
                "node '{}' ({}): attribute '{name}' is given {times} times",
                node.name.as_deref().unwrap_or(""),
                node.op_type.as_deref().unwrap_or("")
            )));
        }
        if attribute.ref_attr_name.is_none() {
            check_attribute_type(node, attribute)?;
        }
        for tensor in attribute.t.iter().chain(&attribute.tensors) {
            check_tensor(tensor)?;
        }
        for sparse in attribute.sparse_tensor.iter().chain(&attribute.sparse_tensors) {
            for tensor in [sparse.values.as_ref(), sparse.indices.as_ref()].into_iter().flatten() {
                check_tensor(tensor)?;
            }
        }
        for graph in attribute.g.iter().chain(&attribute.graphs) {
            check_graph(graph, opset)?;
        }
    }
    Ok(())
}

/// An attribute holds exactly the value its declared type names (runtimes read by the type).
fn check_attribute_type(node: &NodeProto, attribute: &AttributeProto) -> Result<()> {
    use AttributeType as T;
    let present = [
        (attribute.i.is_some(), T::Int),
        (attribute.f.is_some(), T::Float),
        (attribute.s.is_some(), T::String),
        (attribute.t.is_some(), T::Tensor),
        (attribute.g.is_some(), T::Graph),
        (attribute.sparse_tensor.is_some(), T::SparseTensor),
        (attribute.tp.is_some(), T::TypeProto),
        (!attribute.ints.is_empty(), T::Ints),
        (!attribute.floats.is_empty(), T::Floats),
        (!attribute.strings.is_empty(), T::Strings),
        (!attribute.tensors.is_empty(), T::Tensors),
        (!attribute.graphs.is_empty(), T::Graphs),
        (!attribute.sparse_tensors.is_empty(), T::SparseTensors),
        (!attribute.type_protos.is_empty(), T::TypeProtos),
    ];
    let declared = AttributeType::try_from(attribute.r#type.unwrap_or(0)).unwrap_or(T::Undefined);
    let single = matches!(declared, T::Int | T::Float | T::String | T::Tensor | T::Graph | T::SparseTensor | T::TypeProto);
    let holds = |kind: T| present.iter().any(|&(set, k)| set && k == kind);
    let others = present.iter().any(|&(set, kind)| set && kind != declared);
    if declared == T::Undefined || others || (single && !holds(declared)) {
        return Err(Error::InvalidGraph(format!(
            "node '{}' ({}): attribute '{}' is declared {declared:?} but holds {:?}",
            node.name.as_deref().unwrap_or(""),
            node.op_type.as_deref().unwrap_or(""),
            attribute.name.as_deref().unwrap_or(""),
            present.iter().filter(|(set, _)| *set).map(|(_, kind)| *kind).collect::<Vec<_>>()
        )));
    }
    Ok(())
}

/// Attributes the tool cannot do without (the schema's count, attribute and emptiness checks are
/// [`schema::check_node`]'s).
fn check_required(node: &NodeProto, position: usize) -> Result<()> {
    let op = node.op_type.as_deref().unwrap_or("");
    let needs_kernel = matches!(op, "MaxPool" | "AveragePool" | "LpPool");
    if needs_kernel && attribute(node, "kernel_shape").is_none() {
        return Err(unsupported(node, position, format!("{op} needs the attribute 'kernel_shape'")));
    }
    if op == "Constant" {
        typed(node, position, "value", AttributeType::Tensor)?;
    }
    Ok(())
}

/// Control flow: If has both branches, Loop and Scan a body, each with as many outputs as the node
/// needs; no other operator of the default domain takes a graph.
fn check_subgraphs(node: &NodeProto, position: usize) -> Result<()> {
    let fail = |message: String| unsupported(node, position, message);
    let op = node.op_type.as_deref().unwrap_or("");
    let expected: &[&str] = match op {
        "If" => &["then_branch", "else_branch"],
        "Loop" | "Scan" => &["body"],
        _ => &[],
    };
    for attribute in &node.attribute {
        let name = attribute.name.as_deref().unwrap_or("");
        if !attribute.graphs.is_empty() || (attribute.g.is_some() && !expected.contains(&name)) {
            return Err(fail(format!("attribute '{name}' holds a graph, which {op} does not take")));
        }
    }
    for name in expected {
        let Some(body) = attribute(node, name).and_then(|a| a.g.as_ref()) else {
            return Err(fail(format!("has no graph attribute '{name}'")));
        };
        let (inputs, outputs) = (node.input.len(), node.output.len());
        let fits = match op {
            "If" => body.output.len() == outputs,
            // Loop: the body reads the iteration number, the condition and the carried values, and
            // gives the condition, the carried values and the scan outputs.
            "Loop" => body.input.len() == inputs && body.output.len() == outputs + 1,
            // Scan before opset 9 had a sequence-length input the body does not see.
            _ => (body.input.len() == inputs || body.input.len() + 1 == inputs) && body.output.len() == outputs,
        };
        if !fits {
            return Err(fail(format!(
                "its '{name}' has {} inputs and {} outputs, which do not fit the node's {inputs} inputs and {outputs} outputs",
                body.input.len(),
                body.output.len()
            )));
        }
    }
    Ok(())
}

/// The operator domains a model may use: those it imports, and its own functions by (domain, name).
struct Domains<'m> {
    imported: FastSet<&'m str>,
    functions: FastSet<(&'m str, &'m str)>,
}

impl<'m> Domains<'m> {
    fn of(model: &'m ModelProto) -> Self {
        Domains {
            imported: model.opset_import.iter().map(|o| o.domain.as_deref().unwrap_or("")).collect(),
            functions: model.functions.iter().map(|f| (f.domain.as_deref().unwrap_or(""), f.name.as_deref().unwrap_or(""))).collect(),
        }
    }

    /// Whether the model imports the domain a node names. 'ai.onnx' names the default domain, but
    /// a node that spells it needs an import that does.
    fn imports(&self, domain: &str) -> bool {
        self.imported.contains(domain) || (domain.is_empty() && self.imported.contains("ai.onnx"))
    }
}

/// Nodes in topological order (every input computed before a node reads it, as ONNX requires: the
/// rewrites keep the original order), each of a domain the model imports, in subgraphs too. Outside
/// the default domain only the model's own functions are accepted: the tool can neither check nor
/// run another domain's operators, and a runtime without them refuses the whole file.
fn check_order_and_domains<'g>(graph: &'g GraphProto, domains: &Domains, mut order: Order<'g>) -> Result<()> {
    if let Order::Check(defined) = &mut order {
        defined.extend(graph.initializer.iter().filter_map(|t| t.name.as_deref()));
        defined.extend(graph.input.iter().filter_map(|v| v.name.as_deref()));
    }
    let mut names: FastSet<&str> = FastSet::with_capacity_and_hasher(graph.node.len(), Default::default());
    for (position, node) in graph.node.iter().enumerate() {
        if let Some(name) = node.name.as_deref().filter(|n| !n.is_empty()) {
            if !names.insert(name) {
                return Err(unsupported(node, position, "another node of the graph has the same name".into()));
            }
        }
        let domain = node.domain.as_deref().unwrap_or("");
        if !domains.imports(domain) {
            return Err(unsupported(node, position, format!("its domain '{domain}' is not among the model's opset imports")));
        }
        let op = node.op_type.as_deref().unwrap_or("");
        if !in_default_domain(node) && !domains.functions.contains(&(domain, op)) {
            return Err(unsupported(
                node,
                position,
                format!("'{op}' of domain '{domain}' is not a function of the model; the tool checks, patches and runs default-domain operators only"),
            ));
        }
        let Order::Check(defined) = &mut order else { continue };
        if let Some(input) = node.input.iter().find(|i| !i.is_empty() && !defined.contains(i.as_str())) {
            return Err(unsupported(node, position, format!("reads '{input}' before any node computes it (nodes must be in topological order)")));
        }
        for attribute in &node.attribute {
            for subgraph in attribute.g.iter().chain(&attribute.graphs) {
                check_order_and_domains(subgraph, domains, Order::Check(defined.clone()))?;
            }
        }
        defined.extend(node.output.iter().map(String::as_str).filter(|o| !o.is_empty()));
    }
    Ok(())
}

/// Whether [`check_order_and_domains`] must check the nodes' order, with the values defined so far.
enum Order<'g> {
    /// Known to be topological (the graph index found the file's order to be one).
    Known,
    Check(FastSet<&'g str>),
}

/// A node-level problem, naming node, field and value.
fn unsupported(node: &NodeProto, position: usize, message: String) -> Error {
    Error::Unsupported { node: node_label(node, position), op_type: node.op_type.clone().unwrap_or_default(), message }
}

/// An integer attribute: of type INT when present.
fn int_attribute(node: &NodeProto, position: usize, name: &str) -> Result<Option<i64>> {
    typed(node, position, name, AttributeType::Int).map(|a| a.map(|a| a.i.unwrap_or(0)))
}

/// An integer-list attribute: of type INTS when present.
fn ints_attribute<'n>(node: &'n NodeProto, position: usize, name: &str) -> Result<Option<&'n [i64]>> {
    typed(node, position, name, AttributeType::Ints).map(|a| a.map(|a| a.ints.as_slice()))
}

/// The attribute `name` when present, of type `expected` (an attribute's value already matches
/// its declared type: [`check_attribute_type`] runs first).
fn typed<'n>(node: &'n NodeProto, position: usize, name: &str, expected: AttributeType) -> Result<Option<&'n AttributeProto>> {
    match attribute(node, name) {
        None => Ok(None),
        Some(a) if a.r#type == Some(expected as i32) => Ok(Some(a)),
        Some(a) => {
            let found = AttributeType::try_from(a.r#type.unwrap_or(0)).unwrap_or(AttributeType::Undefined);
            Err(unsupported(node, position, format!("attribute '{name}' has type {found:?}, expected {expected:?}")))
        }
    }
}

/// Checks the operators whose attributes the tool reads or that backends have been seen to abort
/// on when the values are out of range.
fn check_operator(constants: &Constants, node: &NodeProto, position: usize, opset: i64) -> Result<()> {
    let fail = |message: String| unsupported(node, position, message);
    let op = node.op_type.as_deref().unwrap_or("");
    if node.output.first().is_none_or(String::is_empty) {
        return Err(fail("has no output".into()));
    }
    schema::check_node(node, position, opset)?;
    check_required(node, position)?;
    check_subgraphs(node, position)?;
    check_modes(node, position, opset)?;
    check_flags(node, position)?;
    match op {
        "Conv" | "ConvTranspose" | "MaxPool" | "AveragePool" | "LpPool" | "ConvInteger" | "QLinearConv" => {
            check_window(node, position)?;
            if op == "Conv" {
                check_conv(constants, node, position)?;
            }
        }
        "BatchNormalization" => {
            if node.input.len() != 5 || node.input.iter().any(String::is_empty) {
                return Err(fail(format!("has {} inputs, BatchNormalization needs 5 (X, scale, B, mean, var)", node.input.len())));
            }
            let lengths: Vec<Option<u64>> = node.input[1..].iter().map(|v| constants.get(v).and_then(|t| tensor_extent(t).ok()).map(|(count, _)| count)).collect();
            let known: Vec<u64> = lengths.iter().flatten().copied().collect();
            if known.windows(2).any(|w| w[0] != w[1]) {
                return Err(fail(format!("its scale, B, mean and var have different lengths {lengths:?}")));
            }
        }
        "ConstantOfShape" => {
            if let Some(value) = attribute(node, "value").and_then(|a| a.t.as_ref()).filter(|t| t.dims != [1]) {
                return Err(fail(format!("attribute 'value' has dimensions {:?}; ConstantOfShape takes one value ([1])", value.dims)));
            }
        }
        "Slice" => {
            if let Some(steps) = node.input.get(4).and_then(|s| constants.get(s)) {
                if let Ok(crate::Tensor::I64(values)) = super::tensor::to_tensor(steps) {
                    if values.iter().any(|&s| s == 0) {
                        return Err(fail(format!("its steps {:?} hold a zero", values.iter().collect::<Vec<_>>())));
                    }
                }
            }
        }
        "Transpose" => {
            if let Some(perm) = ints_attribute(node, position, "perm")? {
                let mut seen = vec![false; perm.len()];
                for &p in perm {
                    match usize::try_from(p).ok().filter(|&p| p < perm.len()) {
                        Some(p) if !seen[p] => seen[p] = true,
                        _ => return Err(fail(format!("attribute 'perm' {perm:?} is not a permutation"))),
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// String attributes that name a mode: one of the values the operator defines (runtimes refuse
/// the model otherwise).
fn check_modes(node: &NodeProto, position: usize, opset: i64) -> Result<()> {
    let op = node.op_type.as_deref().unwrap_or("");
    let allowed: &[&str] = match op {
        "Pad" if opset >= 19 => &["constant", "reflect", "edge", "wrap"],
        "Pad" => &["constant", "reflect", "edge"],
        _ => &["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"],
    };
    let name = if op == "Pad" { "mode" } else { "auto_pad" };
    let Some(value) = attribute(node, name).and_then(|a| a.s.as_deref()) else { return Ok(()) };
    if allowed.iter().any(|a| a.as_bytes() == value) {
        return Ok(());
    }
    Err(unsupported(node, position, format!("attribute '{name}' is \"{}\"; {op} takes {}", String::from_utf8_lossy(value), allowed.join(", "))))
}

/// Integer attributes that are switches: 0 or 1 (runtimes disagree on what other values mean, some
/// reading only the low 32 bits).
fn check_flags(node: &NodeProto, position: usize) -> Result<()> {
    const FLAGS: [&str; 9] = ["transA", "transB", "keepdims", "noop_with_empty_axes", "training_mode", "ceil_mode", "count_include_pad", "select_last_index", "allowzero"];
    for name in FLAGS {
        if let Some(value) = int_attribute(node, position, name)?.filter(|v| !(0..=1).contains(v)) {
            return Err(unsupported(node, position, format!("attribute '{name}' is {value}; it takes 0 or 1")));
        }
    }
    Ok(())
}

/// Sliding-window attributes: positive kernels, strides and dilations, non-negative pads, all of
/// one spatial rank and within [`MAX_WINDOW`].
fn check_window(node: &NodeProto, position: usize) -> Result<()> {
    let fail = |message: String| unsupported(node, position, message);
    let kernel = ints_attribute(node, position, "kernel_shape")?;
    let rank = kernel.map(<[i64]>::len);
    let auto_pad = attribute(node, "auto_pad").and_then(|a| a.s.as_deref()).unwrap_or(b"NOTSET");
    if auto_pad != b"NOTSET" && attribute(node, "pads").is_some() {
        return Err(fail(format!("attribute 'auto_pad' {} comes with explicit 'pads'", String::from_utf8_lossy(auto_pad))));
    }
    for (name, least, per_axis) in [("kernel_shape", 1, 1), ("strides", 1, 1), ("dilations", 1, 1), ("pads", 0, 2), ("output_padding", 0, 1)] {
        let Some(values) = ints_attribute(node, position, name)? else { continue };
        if values.is_empty() {
            return Err(fail(format!("attribute '{name}' is empty")));
        }
        if let Some(bad) = values.iter().find(|&&v| !(least..=MAX_WINDOW).contains(&v)) {
            return Err(fail(format!("attribute '{name}' {values:?}: {bad} is not in [{least}, {MAX_WINDOW}]")));
        }
        if let Some(rank) = rank.filter(|&r| values.len() != r * per_axis) {
            return Err(fail(format!("attribute '{name}' {values:?} does not fit a kernel of rank {rank}")));
        }
    }
    if let Some(group) = int_attribute(node, position, "group")? {
        if group < 1 {
            return Err(fail(format!("attribute 'group' {group} is not positive")));
        }
    }
    Ok(())
}

/// A Conv whose weight is a constant: a kernel of rank ≥ 3 agreeing with `kernel_shape`, filters
/// divisible by `group`, a bias of one value per filter.
fn check_conv(constants: &Constants, node: &NodeProto, position: usize) -> Result<()> {
    let fail = |message: String| unsupported(node, position, message);
    if node.input.len() < 2 || node.input.len() > 3 || node.input[..2].iter().any(String::is_empty) {
        return Err(fail(format!("has inputs {:?}; Conv needs X, W and an optional B", node.input)));
    }
    let Some(weight) = constants.get(&node.input[1]) else { return Ok(()) };
    let dims = &weight.dims;
    if dims.len() < 3 {
        return Err(fail(format!("weight '{}' has dimensions {dims:?}; a kernel needs [M, C/group, k…]", node.input[1])));
    }
    if dims.iter().any(|&d| d < 1) {
        return Err(fail(format!("weight '{}' has an empty dimension in {dims:?}", node.input[1])));
    }
    if let Some(kernel) = ints_attribute(node, position, "kernel_shape")? {
        if kernel != &dims[2..] {
            return Err(fail(format!("attribute 'kernel_shape' {kernel:?} disagrees with weight dimensions {dims:?}")));
        }
    }
    let spatial = dims.len() - 2;
    for (name, per_axis) in [("strides", 1), ("dilations", 1), ("pads", 2)] {
        if let Some(values) = ints_attribute(node, position, name)?.filter(|v| v.len() != spatial * per_axis) {
            return Err(fail(format!("attribute '{name}' {values:?} does not fit the weight's {spatial} spatial axes")));
        }
    }
    let group = int_attribute(node, position, "group")?.unwrap_or(1);
    if dims[0] % group != 0 {
        return Err(fail(format!("{} filters cannot be split into {group} groups", dims[0])));
    }
    if let Some(bias) = node.input.get(2).filter(|b| !b.is_empty()).and_then(|b| constants.get(b)) {
        if bias.dims != [dims[0]] {
            return Err(fail(format!("bias '{}' has dimensions {:?}, expected [{}]", node.input[2], bias.dims, dims[0])));
        }
    }
    Ok(())
}

/// The constant tensors of one graph by value name: initializers and Constant nodes' values.
struct Constants<'g>(FastMap<&'g str, &'g TensorProto>);

impl<'g> Constants<'g> {
    fn of(graph: &'g GraphProto) -> Self {
        let nodes = graph.node.iter().filter(|n| n.op_type.as_deref() == Some("Constant")).filter_map(|n| {
            Some((n.output.first()?.as_str(), attribute(n, "value")?.t.as_ref()?))
        });
        let initializers = graph.initializer.iter().filter_map(|t| Some((t.name.as_deref()?, t)));
        Constants(nodes.chain(initializers).collect())
    }

    fn get(&self, value: &str) -> Option<&'g TensorProto> {
        self.0.get(value).copied()
    }
}

/// Refuses float initializers holding NaN or infinity: every result computed from them would be
/// meaningless, and backends disagree on how they propagate. The constants a patch adds (under
/// the tool's prefix: an adapt-none boundary is +∞) are not the model's weights.
fn check_finite(graph: &GraphProto) -> Result<()> {
    for tensor in &graph.initializer {
        let added = tensor.name.as_deref().is_some_and(|n| n.starts_with(super::builder::PREFIX));
        if added || tensor.data_type != Some(DataType::Float as i32) || tensor.data_location == Some(DataLocation::External as i32) {
            continue;
        }
        let bad = match &tensor.raw_data {
            Some(raw) => nonfinite_in_raw(raw),
            None => tensor.float_data.iter().filter(|v| !v.is_finite()).count(),
        };
        if bad == 0 {
            continue;
        }
        let message = format!("tensor '{}' holds {bad} non-finite value(s) (NaN or infinity)", tensor.name.as_deref().unwrap_or(""));
        if !ALLOW_NONFINITE.load(Ordering::Relaxed) {
            return Err(Error::InvalidGraph(format!("{message}; fix the weights, or pass --allow-nonfinite to go on anyway")));
        }
        crate::progress::info(&format!("warning: {message}"));
    }
    Ok(())
}

/// Non-finite values among little-endian f32 bits, without decoding them: an all-ones exponent
/// means NaN or infinity. This runs over every weight of every model loaded, so a first pass only
/// asks whether any is there, 16 words at a time in a form the compiler vectorises (about 4 times
/// as fast as counting word by word); the count is for the message.
fn nonfinite_in_raw(raw: &[u8]) -> usize {
    const EXPONENT: u32 = 0x7f80_0000;
    let word = |c: &[u8]| u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    let is_bad = |w: u32| w & EXPONENT == EXPONENT;
    let blocks = raw.chunks_exact(64);
    let tail = blocks.remainder();
    let any = blocks.into_iter().any(|block| {
        let mut words = [0u32; 16];
        for (w, c) in words.iter_mut().zip(block.chunks_exact(4)) {
            *w = word(c);
        }
        words.iter().fold(0u32, |bad, &w| bad | u32::from(is_bad(w))) != 0
    }) || tail.chunks_exact(4).any(|c| is_bad(word(c)));
    if any {
        raw.chunks_exact(4).filter(|c| is_bad(word(c))).count()
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::tensor::{from_f32, from_i64};
    use ndarray::ArrayD;
    use prost::Message;

    fn weight(dims: &[usize]) -> TensorProto {
        from_f32("w", &ArrayD::<f32>::zeros(dims.to_vec()).view())
    }

    #[test]
    fn data_must_match_the_dimensions() {
        let mut tensor = weight(&[2, 3]);
        assert!(check_tensor(&tensor).is_ok());
        tensor.dims = vec![2, 4];
        let message = check_tensor(&tensor).unwrap_err().to_string();
        assert!(message.contains("holds 24 raw_data bytes") && message.contains("need 32"), "{message}");
        tensor.dims = vec![1 << 30, 1 << 30];
        assert!(check_tensor(&tensor).unwrap_err().to_string().contains("GiB"));
        tensor.dims = vec![-1, 2];
        assert!(check_tensor(&tensor).unwrap_err().to_string().contains("negative dimension -1"));
        tensor.dims = vec![i64::MAX, i64::MAX];
        assert!(check_tensor(&tensor).unwrap_err().to_string().contains("overflow"));
        tensor.data_type = Some(999);
        assert!(check_tensor(&tensor).unwrap_err().to_string().contains("unknown data type 999"));
        let typed = TensorProto { raw_data: None, int64_data: vec![1, 2], ..from_i64("s", &[3], &[1, 2, 3]) };
        assert!(check_tensor(&typed).unwrap_err().to_string().contains("holds 2 int64_data values"));
    }

    fn conv(attributes: Vec<AttributeProto>, inputs: &[&str]) -> (GraphProto, NodeProto) {
        let node = NodeProto {
            op_type: Some("Conv".into()),
            name: Some("c".into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec!["y".into()],
            attribute: attributes,
            ..Default::default()
        };
        (GraphProto { initializer: vec![weight(&[4, 3, 3, 3])], node: vec![node.clone()], ..Default::default() }, node)
    }

    fn ints(name: &str, values: &[i64]) -> AttributeProto {
        AttributeProto { name: Some(name.into()), r#type: Some(AttributeType::Ints as i32), ints: values.to_vec(), ..Default::default() }
    }

    #[test]
    fn conv_attributes_are_checked_against_the_weight() {
        let check = |attributes: Vec<AttributeProto>| {
            let (graph, node) = conv(attributes, &["x", "w"]);
            check_operator(&Constants::of(&graph), &node, 0, 13).map_err(|e| e.to_string())
        };
        assert!(check(vec![ints("kernel_shape", &[3, 3]), ints("pads", &[1, 1, 1, 1])]).is_ok());
        assert!(check(vec![ints("kernel_shape", &[1 << 32, 3])]).unwrap_err().contains("kernel_shape"));
        assert!(check(vec![ints("kernel_shape", &[5, 5])]).unwrap_err().contains("disagrees"));
        assert!(check(vec![ints("kernel_shape", &[3, 3]), ints("pads", &[1, 1])]).unwrap_err().contains("rank 2"));
        assert!(check(vec![ints("strides", &[0, 1])]).unwrap_err().contains("'strides'"));
        let group = AttributeProto { name: Some("group".into()), r#type: Some(AttributeType::Int as i32), i: Some(3), ..Default::default() };
        assert!(check(vec![group.clone()]).unwrap_err().contains("3 groups"));
        let float_group = AttributeProto { r#type: Some(AttributeType::Float as i32), i: None, f: Some(1.0), ..group };
        assert!(check(vec![float_group]).unwrap_err().contains("type Float, Conv takes Int"));
    }

    #[test]
    fn batchnorm_arity_and_transpose_perm() {
        let node = |op: &str, inputs: usize, attribute: Vec<AttributeProto>| NodeProto {
            op_type: Some(op.into()),
            input: (0..inputs).map(|i| format!("v{i}")).collect(),
            output: vec!["y".into()],
            attribute,
            ..Default::default()
        };
        let graph = GraphProto::default();
        let graph = Constants::of(&graph);
        let message = check_operator(&graph, &node("BatchNormalization", 1, vec![]), 7, 13).unwrap_err().to_string();
        assert!(message.contains("BatchNormalization#7") && message.contains("has 1 inputs; BatchNormalization-9 takes 5 to 5"), "{message}");
        assert!(check_operator(&graph, &node("Transpose", 1, vec![ints("perm", &[0, 2, 1])]), 0, 13).is_ok());
        assert!(check_operator(&graph, &node("Transpose", 1, vec![ints("perm", &[1, 1])]), 0, 13).unwrap_err().to_string().contains("permutation"));
    }

    #[test]
    fn imports_metadata_and_modes_are_checked() {
        use crate::onnx::proto::{OperatorSetIdProto, StringStringEntryProto};
        let import = |domain: &str, version| OperatorSetIdProto { domain: Some(domain.into()), version: Some(version) };
        let model = |imports: Vec<OperatorSetIdProto>, keys: &[&str]| ModelProto {
            opset_import: imports,
            metadata_props: keys.iter().map(|k| StringStringEntryProto { key: Some(k.to_string()), value: Some("v".into()) }).collect(),
            ..Default::default()
        };
        let check = |m: ModelProto| check_imports_and_metadata(&m).map_err(|e| e.to_string());
        assert!(check(model(vec![import("", 13), import("com.microsoft", 1)], &["a", "b"])).is_ok());
        assert!(check(model(vec![import("", 13), import("ai.onnx", 13)], &[])).unwrap_err().contains("imported more than once"));
        assert!(check(model(vec![import("", 13), import("x", -1)], &[])).unwrap_err().contains("'x' has version -1"));
        assert!(check(model(vec![import("", 13), import("com.microsoft", 99)], &[])).unwrap_err().contains("newer than runtimes know (1)"));
        assert!(check(model(vec![import("", 13)], &["a", "a"])).unwrap_err().contains("'a' is given more than once"));
        let string = |name: &str, value: &str| AttributeProto {
            name: Some(name.into()),
            r#type: Some(AttributeType::String as i32),
            s: Some(value.as_bytes().to_vec()),
            ..Default::default()
        };
        let pad = |mode: &str| NodeProto { op_type: Some("Pad".into()), attribute: vec![string("mode", mode)], ..Default::default() };
        assert!(check_modes(&pad("reflect"), 0, 13).is_ok());
        assert!(check_modes(&pad("wrap"), 0, 13).unwrap_err().to_string().contains("Pad takes constant, reflect, edge"));
        assert!(check_modes(&pad("wrap"), 0, 19).is_ok());
        let (_, conv) = conv(vec![string("auto_pad", "SAME")], &["x", "w"]);
        assert!(check_modes(&conv, 0, 13).unwrap_err().to_string().contains("'auto_pad' is \"SAME\""));
    }

    #[test]
    fn other_domains_serve_only_the_models_own_functions() {
        use crate::onnx::proto::{FunctionProto, OperatorSetIdProto};
        // Fuzz seed 99, case 706: a Flatten moved to 'com.microsoft', which onnxruntime does not register.
        let path = crate::test_support::fixture_model("decision_dynamic");
        let mut model = crate::onnx::proto::ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap();
        model.opset_import.push(OperatorSetIdProto { domain: Some("com.microsoft".into()), version: Some(1) });
        let graph = model.graph.as_mut().unwrap();
        let flatten = graph.node.iter_mut().find(|n| n.op_type.as_deref() == Some("Flatten")).unwrap();
        flatten.domain = Some("com.microsoft".into());
        let message = check_model(&model).unwrap_err().to_string();
        assert!(message.contains("'Flatten' of domain 'com.microsoft' is not a function of the model"), "{message}");
        // The same node calling a function the model defines is the model's own business.
        let function = FunctionProto { name: Some("Flatten".into()), domain: Some("com.microsoft".into()), ..Default::default() };
        model.functions.push(function);
        check_model(&model).unwrap();
    }

    #[test]
    fn nonfinite_weights_are_refused() {
        let mut values = ArrayD::<f32>::zeros(vec![3]);
        values[[1]] = f32::NAN;
        let graph = GraphProto { initializer: vec![from_f32("w", &values.view())], ..Default::default() };
        let message = check_finite(&graph).unwrap_err().to_string();
        assert!(message.contains("'w' holds 1 non-finite") && message.contains("--allow-nonfinite"), "{message}");
    }

    #[test]
    fn graph_inputs_are_declared_once_with_dimensions_a_runtime_can_hold() {
        let input = |name: &str, size: i64| ValueInfoProto {
            name: Some(name.into()),
            r#type: Some(crate::onnx::proto::TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: Some(DataType::Float as i32),
                    shape: Some(crate::onnx::proto::TensorShapeProto {
                        dim: vec![tensor_shape_proto::Dimension { value: Some(tensor_shape_proto::dimension::Value::DimValue(size)), ..Default::default() }],
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        let twice = GraphProto { input: vec![input("b", 3), input("b", 3)], ..Default::default() };
        assert!(check_graph(&twice, 13).unwrap_err().to_string().contains("graph input 'b' is declared twice"));
        let huge = GraphProto { input: vec![input("x", i64::MAX)], ..Default::default() };
        assert!(check_graph(&huge, 13).unwrap_err().to_string().contains("outside [0, 2^40]"));
        assert!(check_graph(&GraphProto { input: vec![input("x", 32)], ..Default::default() }, 13).is_ok());
    }

    #[test]
    fn before_ir_4_initializers_must_be_graph_inputs() {
        let graph = GraphProto { initializer: vec![weight(&[2])], ..Default::default() };
        let message = check_initializers_are_inputs(&graph, 3).unwrap_err().to_string();
        assert!(message.contains("initializer 'w' is not a graph input") && message.contains("IR version 3"), "{message}");
        let declared = GraphProto { input: vec![ValueInfoProto { name: Some("w".into()), ..Default::default() }], ..graph };
        assert!(check_initializers_are_inputs(&declared, 3).is_ok());
    }

    #[test]
    fn nonfinite_values_are_counted_in_whole_blocks_and_in_the_tail() {
        let raw = |values: &[f32]| values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
        let mut values = vec![1.0f32; 37];
        assert_eq!(nonfinite_in_raw(&raw(&values)), 0);
        values[3] = f32::INFINITY;
        values[20] = f32::NEG_INFINITY;
        values[36] = f32::NAN;
        assert_eq!(nonfinite_in_raw(&raw(&values)), 3);
        values[3] = f32::MAX;
        values[20] = f32::MIN_POSITIVE / 2.0;
        assert_eq!(nonfinite_in_raw(&raw(&values)), 1);
    }
}
