//! Reverse-mode differentiation of ONNX graphs, emitted as ONNX: ONNX Runtime's training API is not
//! available in maintained builds (docs/specification.md §5), so the tool writes the backward pass itself and any
//! backend runs it. [`training_step`] builds the graph of one SGD step (forward, mean softmax
//! cross-entropy, gradients, `torch.optim.SGD` update); [`vjp`] exposes the underlying
//! vector-Jacobian product for any value.
//!
//! Design:
//! - **Facts first.** Element types and shapes of every forward value are inferred statically with
//!   symbolic dimensions (`analysis::facts`), so rules know ranks, spatial sizes and broadcast axes while the
//!   batch stays dynamic. Small integer tensors are evaluated, which makes the pads and Reshape
//!   targets that shape subgraphs compute known constants.
//! - **Pruning.** A value *depends* on the trainable tensors if a float path leads from one to it;
//!   it is *needed* if, in addition, the loss is reachable from it. Only nodes with a needed output
//!   are differentiated, and only their needed inputs get gradients. Integer and boolean values
//!   never carry gradients, so shape subgraphs (Shape, Gather on shapes, Unsqueeze, Concat of
//!   shapes, ConstantOfShape, Cast, Range, …) and comparisons drop out on their own, whatever
//!   operators they use. A needed node without a rule, or a needed input its rule cannot
//!   differentiate, is an `Error::Unsupported` naming the node and operator. Within a tensor, when
//!   only some rows of a kernel's gradient are read (a β unit's ScatterND of a few trained filters
//!   into a frozen kernel), the Conv rule computes those rows only.
//! - **Accumulation.** Nodes are visited in reverse topological order, so every consumer of a value
//!   has contributed before the value's producer is processed; a value read by several consumers
//!   (or twice by one) gets the `Sum` of its contributions.
//! - **Rules** (`rules/`, one module per operator family) emit backward nodes from the forward
//!   values, which the step graph keeps: forward nodes that neither the loss nor a backward node
//!   reads are dropped. Every added name comes from `NameGen` under `deeppatch/`. The emitted
//!   operators all exist in opset 9 (ReduceSum, Unsqueeze, Slice and Pad are written in the form of
//!   the model's opset; ScatterND and GatherND appear only for models that already use ScatterND),
//!   so the model's opset is never raised; opsets below 9 are refused.
//!
//! Shapes, attributes and inputs come from the model, a hostile one included: the arithmetic is
//! checked and nothing is indexed unchecked, so that no model can make a rule panic (the lints
//! below enforce it in every submodule).
#![deny(clippy::arithmetic_side_effects, clippy::cast_possible_truncation, clippy::indexing_slicing)]

mod backprop;
mod emit;
mod rules;
mod step;
#[cfg(test)]
mod testing;

pub use backprop::{vjp, Vjp};
pub use step::{training_step, Parameter, StepOptions, TrainingStep};
