//! Backward rules, one module per operator family. Each family registers its operators with
//! [`Registry`]; a rule receives the gradients of the node's outputs and returns the gradients of
//! the inputs it was asked for, built from the forward values (which the training graph keeps).

mod activation;
mod conv;
mod elementwise;
mod linear;
mod normalization;
mod pool;
mod reduce;
mod shape;
mod softmax;

use std::collections::HashMap;

use super::emit::Builder;
use crate::analysis::facts::{Dim, Fact, Facts};
use crate::error::{Error, Result};
use crate::onnx::graph::node_label;
use crate::onnx::proto::NodeProto;

/// The inputs a rule can differentiate.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Differentiable {
    /// Every input (variadic operators).
    All,
    Only(&'static [usize]),
}

impl Differentiable {
    pub fn contains(self, input: usize) -> bool {
        match self {
            Differentiable::All => true,
            Differentiable::Only(inputs) => inputs.contains(&input),
        }
    }
}

/// Builds the input gradients of one node: `dy[k]` is the gradient of output `k` (absent when
/// nothing downstream needs it), `wanted[i]` says whether input `i` needs a gradient. Returns one
/// entry per input, `Some` for every wanted one.
pub(crate) type Backward = fn(&Ctx, &mut Builder, &[Option<String>], &[bool]) -> Result<Vec<Option<String>>>;

#[derive(Clone, Copy)]
pub(crate) struct Rule {
    pub inputs: Differentiable,
    pub backward: Backward,
}

/// Backward rules by operator type (default ONNX domain).
pub(crate) struct Registry(HashMap<&'static str, Rule>);

impl Registry {
    pub fn new() -> Registry {
        let mut registry = Registry(HashMap::new());
        activation::register(&mut registry);
        conv::register(&mut registry);
        elementwise::register(&mut registry);
        linear::register(&mut registry);
        normalization::register(&mut registry);
        pool::register(&mut registry);
        reduce::register(&mut registry);
        shape::register(&mut registry);
        softmax::register(&mut registry);
        registry
    }

    fn insert(&mut self, op: &'static str, inputs: Differentiable, backward: Backward) {
        self.0.insert(op, Rule { inputs, backward });
    }

    pub fn get(&self, op: &str) -> Option<Rule> {
        self.0.get(op).copied()
    }
}

/// What a rule knows about the node it differentiates.
pub(crate) struct Ctx<'a> {
    pub node: &'a NodeProto,
    pub label: String,
    pub facts: &'a Facts<'a>,
    /// Values of which only some rows (indices along axis 0) need a gradient.
    rows: &'a HashMap<String, Vec<i64>>,
}

impl<'a> Ctx<'a> {
    pub fn new(node: &'a NodeProto, position: usize, facts: &'a Facts<'a>, rows: &'a HashMap<String, Vec<i64>>) -> Ctx<'a> {
        Ctx { node, label: node_label(node, position), facts, rows }
    }

    /// The rows of input `i` whose gradient anything reads, when that is not all of them (β units
    /// scatter a few trained filters into a frozen kernel); the other rows may be left zero.
    pub fn needed_rows(&self, i: usize) -> Option<&'a [i64]> {
        self.rows.get(self.input(i)).map(Vec::as_slice)
    }

    pub fn op(&self) -> &str {
        self.node.op_type.as_deref().unwrap_or("")
    }

    /// The error for this node.
    pub fn error(&self, message: impl Into<String>) -> Error {
        Error::Unsupported { node: self.label.clone(), op_type: self.op().to_string(), message: message.into() }
    }

    /// Input `i` (empty when absent).
    pub fn input(&self, i: usize) -> &'a str {
        self.node.input.get(i).map_or("", String::as_str)
    }

    pub fn output(&self, i: usize) -> &'a str {
        self.node.output.get(i).map_or("", String::as_str)
    }

    pub fn dtype(&self, value: &str) -> i32 {
        self.facts.get(value).map_or(0, |f| f.dtype)
    }

    /// The (possibly symbolic) shape of `value`.
    pub fn shape(&self, value: &str) -> Result<&'a [Dim]> {
        self.facts
            .get(value)
            .and_then(|f| f.shape.as_deref())
            .ok_or_else(|| self.error(format!("the shape of '{value}' cannot be inferred statically")))
    }

    pub fn rank(&self, value: &str) -> Result<usize> {
        Ok(self.shape(value)?.len())
    }

    /// The dimensions of `value` on `axes`, which must be static.
    pub fn dims(&self, value: &str, axes: std::ops::Range<usize>) -> Result<Vec<i64>> {
        let shape = self.shape(value)?;
        let dims = shape.get(axes.clone()).ok_or_else(|| self.error(format!("'{value}' has rank {}", shape.len())))?;
        dims.iter()
            .map(|d| d.value())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| self.error(format!("dimensions {axes:?} of '{value}' must be static")))
    }

    /// The dimension of `value` on `axis`, which must be static.
    pub fn dim(&self, value: &str, axis: usize) -> Result<i64> {
        let shape = self.shape(value)?;
        let dim = shape.get(axis).ok_or_else(|| self.error(format!("'{value}' has rank {}", shape.len())))?;
        dim.value().ok_or_else(|| self.error(format!("dimension {axis} of '{value}' must be static")))
    }

    /// The facts of the node's inputs, in order.
    pub fn input_facts(&self) -> Vec<Option<&'a Fact>> {
        self.node.input.iter().map(|name| self.facts.get(name)).collect()
    }

    /// The data type of the gradient of the node's first output.
    pub fn float_type(&self) -> i32 {
        self.dtype(self.output(0))
    }
}

/// The first output's gradient, which every single-output rule receives.
fn first(ctx: &Ctx, dy: &[Option<String>]) -> Result<String> {
    dy.first().cloned().flatten().ok_or_else(|| ctx.error("called without the gradient of its output"))
}

/// Whether input `i` needs a gradient (`wanted` has one entry per input of the node).
fn wants(wanted: &[bool], i: usize) -> bool {
    wanted.get(i).copied().unwrap_or(false)
}

/// Stores `gradient` as input `i`'s in `result`, which has one slot per input of the node. A slot
/// past the end stays unset: the caller then reports the wanted gradient as missing.
fn set(result: &mut [Option<String>], i: usize, gradient: String) {
    if let Some(slot) = result.get_mut(i) {
        *slot = Some(gradient);
    }
}

/// `g`, the gradient of a value of shape `from` that numpy-broadcasting produced from `target`
/// (whose shape, aligned to the right, is `target_shape`), summed back over the broadcast axes and
/// reshaped to `target`'s runtime shape when the ranks differ.
fn unbroadcast(
    ctx: &Ctx,
    b: &mut Builder,
    g: &str,
    from: &[Dim],
    target: &str,
    target_shape: &[Dim],
) -> Result<String> {
    let lead = from.len().checked_sub(target_shape.len()).ok_or_else(|| ctx.error("an operand outranks the result"))?;
    let mut axes: Vec<usize> = (0..lead).collect();
    let aligned = from.iter().enumerate().skip(lead);
    for (i, (dim, (axis, from_dim))) in target_shape.iter().zip(aligned).enumerate() {
        if dim == from_dim {
            continue;
        }
        if dim.value() != Some(1) {
            return Err(ctx.error(format!("cannot tell statically whether '{target}' broadcasts along axis {i}")));
        }
        axes.push(axis);
    }
    let summed = b.reduce_sum(g, &axes, true);
    if ctx.rank(target)? == from.len() {
        Ok(summed)
    } else {
        Ok(b.reshape_like(&summed, target))
    }
}

/// Sizes read from the model as array extents; an error naming `what` when one is negative or too
/// large.
fn extents(ctx: &Ctx, what: &str, sizes: &[i64]) -> Result<Vec<usize>> {
    sizes.iter().map(|&s| usize::try_from(s).map_err(|_| ctx.error(format!("{what} {sizes:?}: a size out of range")))).collect()
}

/// The product of `sizes`; an error naming `what` when it overflows.
fn product(ctx: &Ctx, what: &str, sizes: &[usize]) -> Result<usize> {
    sizes.iter().try_fold(1usize, |p, &s| p.checked_mul(s)).ok_or_else(|| ctx.error(format!("{what} {sizes:?}: too many elements")))
}

/// A result with `gradient` for input `i` and nothing else.
fn only(count: usize, i: usize, gradient: String) -> Vec<Option<String>> {
    let mut result = vec![None; count];
    set(&mut result, i, gradient);
    result
}
