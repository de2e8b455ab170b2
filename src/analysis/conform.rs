//! Type and shape consistency of the main graph, as `onnx.checker`'s full check (strict type and
//! shape inference) demands it: a model that fails these is refused rather than patched, since
//! its patched file would fail the checker too.
//!
//! On the facts of [`Facts`] (derived from the graph inputs and the weights, never from the
//! file's declarations), three kinds of checks:
//! - element types: every input of a default-domain node of a type its schema allows, and inputs
//!   that share a type parameter of one type;
//! - the ranks and axes the operators the tool meets need (convolutions and pools, Gemm, MatMul,
//!   Transpose, Flatten, Reshape, Squeeze, Unsqueeze, Concat, Gather, Slice, the reductions, the softmaxes,
//!   BatchNormalization, broadcasting);
//! - the declared types and shapes of value_info and graph outputs against the derived ones.
//!
//! Only what is derived for certain is compared: an unknown dimension, and any element type that
//! flows from an operator without a rule of its own, are left alone.

use super::facts::{normalize_axis, Dim, Fact, Facts};
use crate::error::{Error, Result};
use crate::onnx::graph::{attr_int, attr_ints, attribute, node_label, GraphIndex};
use crate::onnx::proto::tensor_proto::DataType;
use crate::onnx::proto::{type_proto, ModelProto, NodeProto, ValueInfoProto};
use crate::onnx::schema::{self, Presence};

/// Checks `model`'s main graph (see the module documentation).
pub fn check(model: &ModelProto) -> Result<()> {
    let Some(graph) = model.graph.as_ref() else { return Ok(()) };
    check_indexed(model, &GraphIndex::new(graph)?)
}

/// [`check`] over an index of the model's graph that the caller built.
pub fn check_indexed(model: &ModelProto, index: &GraphIndex) -> Result<()> {
    let graph = index.graph();
    let opset = crate::onnx::default_opset(model);
    let facts = Facts::infer(graph, index, opset);
    for &position in index.topological_order() {
        let Some(node) = graph.node.get(position) else { continue };
        if !crate::onnx::graph::in_default_domain(node) {
            continue;
        }
        let fail = |message: String| Error::Unsupported { node: node_label(node, position), op_type: node.op_type.clone().unwrap_or_default(), message };
        check_types(node, opset, &facts).map_err(fail)?;
        check_shapes(node, &facts).map_err(fail)?;
    }
    for declared in graph.value_info.iter().chain(&graph.output) {
        check_declared(declared, &facts)?;
    }
    Ok(())
}

/// The name of an element type code.
fn type_name(code: i32) -> String {
    DataType::try_from(code).map_or_else(|_| code.to_string(), |t| format!("{t:?}").to_lowercase())
}

/// The fact of value `name` when its element type is derived for certain.
fn typed<'f>(facts: &'f Facts, name: &str) -> Option<&'f Fact> {
    facts.get(name).filter(|f| f.dtype != 0 && !f.guessed)
}

fn check_types(node: &NodeProto, opset: i64, facts: &Facts) -> std::result::Result<(), String> {
    let op = node.op_type.as_deref().unwrap_or("");
    let Some(schema) = schema::lookup(op, opset) else { return Ok(()) };
    // Per type constraint: the first input seen with it, and its element type.
    let mut seen: Vec<(usize, &str, i32)> = Vec::new();
    for (i, name) in node.input.iter().enumerate() {
        let (Some(formal), Some(fact)) = (schema.formal_input(i), typed(facts, name)) else { continue };
        if formal.allowed == 0 {
            continue;
        }
        if formal.allowed & (1u64 << (fact.dtype & 63)) == 0 || !(0..64).contains(&fact.dtype) {
            let allowed: Vec<String> = (0..64).filter(|k| formal.allowed & (1u64 << k) != 0).map(type_name).collect();
            return Err(format!("input {i} '{name}' has element type {}; {op} takes {}", type_name(fact.dtype), allowed.join(", ")));
        }
        let homogeneous = formal.presence != Presence::Variadic || formal.homogeneous;
        match seen.iter().find(|(constraint, ..)| *constraint == formal.constraint) {
            Some((_, first, dtype)) if homogeneous && *dtype != fact.dtype => {
                return Err(format!(
                    "inputs '{first}' ({}) and '{name}' ({}) must have one element type",
                    type_name(*dtype),
                    type_name(fact.dtype)
                ))
            }
            Some(_) => {}
            None => seen.push((formal.constraint, name, fact.dtype)),
        }
    }
    Ok(())
}

/// The shape of input `i` when derived.
fn shape<'f>(node: &NodeProto, facts: &'f Facts, i: usize) -> Option<&'f [Dim]> {
    facts.get(node.input.get(i).filter(|n| !n.is_empty())?)?.shape.as_deref()
}

/// The name of input `i` for a message (empty when absent).
fn input_name(node: &NodeProto, i: usize) -> &str {
    node.input.get(i).map_or("", String::as_str)
}

/// Whether `axis` is within `[-rank, rank)` (`[-rank, rank]` when `inclusive`).
fn axis_fits(axis: i64, rank: usize, inclusive: bool) -> bool {
    normalize_axis(axis, rank).is_some() || (inclusive && usize::try_from(axis) == Ok(rank))
}

/// A Reshape target against its input: a 0 copies an input dimension that must exist (unless
/// `allowzero`), and the sizes must account for the input's elements when they are all known.
fn check_reshape_target(input: &[Dim], target: &[i64], allowzero: bool) -> std::result::Result<(), String> {
    let mut sizes = Vec::with_capacity(target.len());
    for (i, &d) in target.iter().enumerate() {
        sizes.push(match d {
            0 if !allowzero => match input.get(i) {
                Some(dim) => dim.value(),
                None => return Err(format!("target shape {target:?} copies dimension {i} with a 0, but the input has rank {}", input.len())),
            },
            -1 => None,
            d => Some(d),
        });
    }
    let elements = input.iter().map(Dim::value).try_fold(1i64, |n, d| n.checked_mul(d?));
    let known = sizes.iter().zip(target).filter(|(_, &d)| d != -1).map(|(s, _)| *s).try_fold(1i64, |n, d| n.checked_mul(d?));
    if let (Some(elements), Some(known)) = (elements, known) {
        let fits = if target.contains(&-1) { known != 0 && elements.checked_rem(known) == Some(0) } else { known == elements };
        if !fits {
            return Err(format!("target shape {target:?} does not hold the input's {elements} elements"));
        }
    }
    Ok(())
}

/// A Conv's weight has no empty axis (a filter, a channel and a kernel element at least), and its
/// bias one value per filter: computed parameters can break both (fuzz seed 99, case 75: a Slice
/// empties a bias, and onnxruntime's inference, which disagrees on its length, refuses the γ model).
fn check_conv_parameters(node: &NodeProto, weight: Option<&[Dim]>, bias: Option<&[Dim]>) -> std::result::Result<(), String> {
    if let Some(axis) = weight.and_then(|w| w.iter().position(|d| d.value() == Some(0))) {
        return Err(format!("weight '{}' is empty along axis {axis}", input_name(node, 1)));
    }
    let filters = weight.and_then(|w| w.first()?.value());
    match (bias, filters) {
        (Some([b]), Some(m)) if b.value().is_some_and(|b| b != m) => {
            Err(format!("bias '{}' holds {} values for {m} filters", input_name(node, 2), b.value().unwrap_or_default()))
        }
        (Some([_]) | None, _) => Ok(()),
        (Some(dims), _) => Err(format!("bias '{}' has rank {}; one value per filter (rank 1) is needed", input_name(node, 2), dims.len())),
    }
}

fn check_shapes(node: &NodeProto, facts: &Facts) -> std::result::Result<(), String> {
    let op = node.op_type.as_deref().unwrap_or("");
    let rank = |i: usize| shape(node, facts, i).map(<[Dim]>::len);
    match op {
        "Conv" | "ConvTranspose" | "MaxPool" | "AveragePool" | "LpPool" => {
            if let Some(r) = rank(0) {
                if r < 3 {
                    return Err(format!("input '{}' has rank {r}; {op} needs [N, C, spatial…] (rank 3 or more)", input_name(node, 0)));
                }
                let kernel = attr_ints(node, "kernel_shape");
                if !kernel.is_empty() && kernel.len().checked_add(2) != Some(r) {
                    return Err(format!("attribute 'kernel_shape' {kernel:?} does not fit input '{}' of rank {r}", input_name(node, 0)));
                }
                if let Some(w) = rank(1).filter(|&w| op.starts_with("Conv") && w != r) {
                    return Err(format!("weight '{}' has rank {w}, input '{}' rank {r}: they must agree", input_name(node, 1), input_name(node, 0)));
                }
                // Conv: the input's channels are the weight's channels per group times the groups.
                let channel = |i: usize| shape(node, facts, i).and_then(|s| s.get(1)?.value());
                if let (true, Some(c), Some(per_group)) = (op == "Conv", channel(0), channel(1)) {
                    let group = attr_int(node, "group", 1);
                    if per_group.checked_mul(group) != Some(c) {
                        return Err(format!("input '{}' has {c} channels, weight '{}' takes {per_group} per group in {group} groups", input_name(node, 0), input_name(node, 1)));
                    }
                }
            }
            if op == "Conv" {
                check_conv_parameters(node, shape(node, facts, 1), shape(node, facts, 2))?;
            }
        }
        "Gemm" => {
            for i in 0..2 {
                if let Some(r) = rank(i).filter(|&r| r != 2) {
                    return Err(format!("input {i} '{}' has rank {r}; Gemm takes matrices (rank 2)", input_name(node, i)));
                }
            }
            // The inner dimension: A's columns (rows when transposed) against B's rows.
            let inner = |i: usize, transposed: bool| shape(node, facts, i).and_then(|s| s.get(usize::from(transposed != (i == 0)))?.value());
            if let (Some(a), Some(b)) = (inner(0, attr_int(node, "transA", 0) != 0), inner(1, attr_int(node, "transB", 0) != 0)) {
                if a != b {
                    return Err(format!("inner dimensions {a} of '{}' and {b} of '{}' differ", input_name(node, 0), input_name(node, 1)));
                }
            }
        }
        "BatchNormalization" | "InstanceNormalization" => {
            let channels = shape(node, facts, 0).and_then(|s| s.get(1)?.value());
            for i in 1..node.input.len() {
                let Some(dims) = shape(node, facts, i) else { continue };
                match (dims, channels) {
                    ([d], Some(c)) if d.value().is_some_and(|d| d != c) => {
                        return Err(format!("input {i} '{}' holds {} values for {c} channels", input_name(node, i), d.value().unwrap_or_default()))
                    }
                    ([_], _) => {}
                    _ => return Err(format!("input {i} '{}' has rank {}; one value per channel (rank 1) is needed", input_name(node, i), dims.len())),
                }
            }
        }
        "MatMul" => {
            if let (Some(a), Some(b)) = (shape(node, facts, 0), shape(node, facts, 1)) {
                // The inner dimension: A's last, B's only or second to last.
                let (Some(k_a), [k_b] | [.., k_b, _]) = (a.last(), b) else {
                    return Err("MatMul takes inputs of rank 1 or more".into());
                };
                if let (Some(x), Some(y)) = (k_a.value(), k_b.value()) {
                    if x != y {
                        return Err(format!("inner dimensions {x} and {y} of '{}' and '{}' differ", input_name(node, 0), input_name(node, 1)));
                    }
                }
            }
        }
        "Transpose" => {
            if let (Some(perm), Some(r)) = (attribute(node, "perm").map(|a| a.ints.len()), rank(0)) {
                if perm != r {
                    return Err(format!("attribute 'perm' has {perm} axes, input '{}' rank {r}", input_name(node, 0)));
                }
            }
        }
        "Flatten" => {
            if let Some(r) = rank(0) {
                let axis = attr_int(node, "axis", 1);
                if !axis_fits(axis, r, true) {
                    return Err(format!("attribute 'axis' {axis} is outside [-{r}, {r}] for input '{}'", input_name(node, 0)));
                }
            }
        }
        "Squeeze" | "Unsqueeze" => {
            let axes = facts.axes(node).unwrap_or_default();
            if let Some(dims) = shape(node, facts, 0) {
                let r = if op == "Unsqueeze" { dims.len().checked_add(axes.len()).ok_or("too many axes")? } else { dims.len() };
                for &axis in &axes {
                    if !axis_fits(axis, r, false) {
                        return Err(format!("axis {axis} is outside [-{r}, {r}) for input '{}'", input_name(node, 0)));
                    }
                    match normalize_axis(axis, r).and_then(|at| dims.get(at)).and_then(Dim::value) {
                        Some(d) if op == "Squeeze" && d != 1 => return Err(format!("axis {axis} of input '{}' has size {d}, not 1", input_name(node, 0))),
                        _ => {}
                    }
                }
            }
        }
        "Concat" => {
            let shapes: Vec<&[Dim]> = (0..node.input.len()).filter_map(|i| shape(node, facts, i)).collect();
            if let Some(first) = shapes.first() {
                if let Some(other) = shapes.iter().find(|s| s.len() != first.len()) {
                    return Err(format!("its inputs have ranks {} and {}", first.len(), other.len()));
                }
                let axis = attr_int(node, "axis", 0);
                if !axis_fits(axis, first.len(), false) {
                    return Err(format!("attribute 'axis' {axis} is outside [-{0}, {0})", first.len()));
                }
            }
        }
        "Slice" | "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL1" | "ReduceL2" | "ReduceLogSum"
        | "ReduceLogSumExp" | "ReduceSumSquare" => {
            let axes = if op == "Slice" {
                match node.input.get(3).filter(|a| !a.is_empty()) {
                    Some(name) => facts.get(name).and_then(Fact::ints).unwrap_or_default(),
                    None => Vec::new(),
                }
            } else {
                facts.axes(node).unwrap_or_default()
            };
            if let Some(r) = rank(0) {
                if let Some(axis) = axes.iter().find(|&&a| !axis_fits(a, r, false)) {
                    return Err(format!("axis {axis} is outside [-{r}, {r}) for input '{}'", input_name(node, 0)));
                }
                let normalized: std::collections::HashSet<usize> = axes.iter().filter_map(|&a| normalize_axis(a, r)).collect();
                if normalized.len() != axes.len() {
                    return Err(format!("axes {axes:?} name an axis twice"));
                }
            }
        }
        "Reshape" => {
            let target = node.input.get(1).and_then(|t| facts.get(t)).and_then(Fact::ints).unwrap_or_default();
            if target.iter().filter(|&&d| d == -1).count() > 1 || target.iter().any(|&d| d < -1) {
                return Err(format!("target shape {target:?}: at most one -1 and no other negative size"));
            }
            let known_target = node.input.get(1).and_then(|t| facts.get(t)).and_then(Fact::ints);
            if let (Some(input), Some(target)) = (shape(node, facts, 0), known_target) {
                check_reshape_target(input, &target, attr_int(node, "allowzero", 0) != 0)?;
            }
        }
        "Gather" | "Softmax" | "LogSoftmax" | "Hardmax" => {
            if let Some(r) = rank(0) {
                let default = if op == "Gather" { 0 } else { -1 };
                let axis = attr_int(node, "axis", default);
                if !axis_fits(axis, r, false) {
                    return Err(format!("attribute 'axis' {axis} is outside [-{r}, {r}) for input '{}'", input_name(node, 0)));
                }
            }
        }
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Sum" | "Max" | "Min" | "Mean" | "Where" | "Equal" | "Less" | "Greater" | "LessOrEqual"
        | "GreaterOrEqual" | "And" | "Or" | "Xor" | "PRelu" => {
            let shapes: Vec<&[Dim]> = (0..node.input.len()).filter_map(|i| shape(node, facts, i)).collect();
            let longest = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
            for back in 1..=longest {
                let sizes: Vec<i64> = shapes.iter().filter_map(|s| s.len().checked_sub(back).and_then(|a| s.get(a)?.value())).filter(|&d| d != 1).collect();
                if sizes.first().is_some_and(|first| sizes.iter().any(|d| d != first)) {
                    return Err(format!("its inputs do not broadcast: sizes {sizes:?} meet on axis -{back}"));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// A declared value_info or graph output against the derived fact.
fn check_declared(declared: &ValueInfoProto, facts: &Facts) -> Result<()> {
    let name = declared.name.as_deref().unwrap_or("");
    let Some(type_proto::Value::TensorType(tensor)) = declared.r#type.as_ref().and_then(|t| t.value.as_ref()) else { return Ok(()) };
    let Some(fact) = facts.get(name) else { return Ok(()) };
    let fail = |message: String| Err(Error::InvalidGraph(format!("value '{name}': {message}")));
    let dtype = tensor.elem_type.unwrap_or(0);
    if dtype != 0 && fact.dtype != 0 && !fact.guessed && dtype != fact.dtype {
        return fail(format!("declared element type {} but computed as {}", type_name(dtype), type_name(fact.dtype)));
    }
    let (Some(shape), Some(derived)) = (tensor.shape.as_ref(), fact.shape.as_ref()) else { return Ok(()) };
    if shape.dim.len() != derived.len() {
        return fail(format!("declared with rank {} but computed with rank {}", shape.dim.len(), derived.len()));
    }
    use crate::onnx::proto::tensor_shape_proto::dimension::Value;
    for (axis, (dim, computed)) in shape.dim.iter().zip(derived).enumerate() {
        if let (Some(Value::DimValue(d)), Some(c)) = (dim.value.as_ref(), computed.value()) {
            if *d != c {
                return fail(format!("axis {axis} declared {d} but computed {c}"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::cast_possible_truncation, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::onnx::builder;

    fn fixture(name: &str) -> ModelProto {
        crate::onnx::load_model(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/models").join(name)).unwrap()
    }

    #[test]
    fn the_bundled_models_conform() {
        for name in ["resnet20_cifar10.onnx", "tiny_dw_cifar10.onnx", "branchy_cnn.onnx", "legacy_opset8.onnx", "decision_dynamic.onnx"] {
            check(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn conv_parameters_have_no_empty_axis_and_a_bias_per_filter() {
        // Fuzz seed 99, case 75 reduced: a Slice with step i64::MIN empties a Conv's bias.
        let dims = |d: &[i64]| d.iter().map(|&v| Dim::known(v)).collect::<Vec<_>>();
        let conv = NodeProto { op_type: Some("Conv".into()), input: vec!["x".into(), "w".into(), "b".into()], ..Default::default() };
        let check = |weight: &[i64], bias: &[i64]| check_conv_parameters(&conv, Some(&dims(weight)), Some(&dims(bias)));
        assert!(check(&[16, 16, 3, 3], &[16]).is_ok());
        assert_eq!(check(&[16, 16, 3, 3], &[0]).unwrap_err(), "bias 'b' holds 0 values for 16 filters");
        assert_eq!(check(&[16, 16, 3, 0], &[16]).unwrap_err(), "weight 'w' is empty along axis 3");
        assert!(check(&[16, 16, 3, 3], &[16, 1]).unwrap_err().contains("rank 2"));
    }

    #[test]
    fn an_emptied_axis_reaches_the_classifier() {
        // Fuzz seed 90, case 765, reduced: a Slice empties the channels, a shape subgraph reshapes
        // the pooled [N, 0, 1, 1] to [N, -1], and the Gemm takes 16 inputs. onnxruntime refused the
        // ResNet20 mutant; the tool patched it with exit 0 while the -1 stayed unknown.
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fuzz/gemm-after-empty-reshape-minus-one.onnx");
        let message = check(&crate::onnx::load_model(&path).unwrap()).unwrap_err().to_string();
        assert!(message.contains("inner dimensions 0 of 'flat' and 16 of 'w_fc' differ"), "{message}");
    }

    #[test]
    fn reshape_targets_must_fit_their_input() {
        let dims = |d: &[i64]| d.iter().map(|&v| Dim::known(v)).collect::<Vec<_>>();
        // A scalar: no dimension for a 0 to copy (fuzz seed 94), and one element is not a multiple of 2 (seed 92).
        assert!(check_reshape_target(&[], &[0, -1], false).unwrap_err().contains("copies dimension 0"));
        assert!(check_reshape_target(&[], &[1, -1, 2], false).unwrap_err().contains("1 elements"));
        assert!(check_reshape_target(&dims(&[2, 3, 4]), &[0, 5], false).is_err());
        for ok in [&[0, -1][..], &[2, 12], &[-1], &[0, 3, 2, 2]] {
            check_reshape_target(&dims(&[2, 3, 4]), ok, false).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
        assert!(check_reshape_target(&dims(&[2, 3, 4]), &[0, 24], true).is_err());
    }

    /// The error for the tiny CNN after `edit`.
    fn edited(edit: impl FnOnce(&mut crate::onnx::proto::GraphProto)) -> String {
        let mut model = fixture("tiny_cnn_cifar10.onnx");
        edit(model.graph.as_mut().unwrap());
        check(&model).unwrap_err().to_string()
    }

    #[test]
    fn types_ranks_and_declarations_are_checked() {
        // A Conv weight of another element type than its input.
        let message = edited(|g| {
            let conv = g.node.iter().position(|n| n.op_type() == "Conv").unwrap();
            let weight = g.node[conv].input[1].clone();
            let cast = NodeProto {
                op_type: Some("Cast".into()),
                input: vec![weight],
                output: vec!["w16".into()],
                attribute: vec![builder::int("to", DataType::Float16 as i64)],
                ..Default::default()
            };
            g.node.insert(conv, cast);
            g.node[conv + 1].input[1] = "w16".into();
        });
        assert!(message.contains("must have one element type"), "{message}");
        // A Gemm fed a rank-1 value.
        let message = edited(|g| {
            let gemm = g.node.iter().position(|n| n.op_type() == "Gemm").unwrap();
            let bias = g.node[gemm].input[2].clone();
            g.node[gemm].input[0] = bias;
        });
        assert!(message.contains("Gemm takes matrices"), "{message}");
        // A declared output whose rank differs from the computed one.
        let message = edited(|g| {
            let logits = g.output[0].r#type.as_mut().and_then(|t| t.value.as_mut());
            if let Some(type_proto::Value::TensorType(t)) = logits {
                t.shape.as_mut().unwrap().dim.pop();
            }
        });
        assert!(message.contains("declared with rank 1 but computed with rank 2"), "{message}");
    }
}
