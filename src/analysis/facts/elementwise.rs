//! Elementwise operators: unary ones keep their input's shape (Identity and Neg their small
//! integer values too, Cast its values when it casts to an integer type); binary and variadic ones
//! broadcast, and Add, Sub, Mul and Div evaluate small integer operands.

use ndarray::{ArrayD, IxDyn};

use super::{small, sizes, with_extra, Dim, Fact, Node, Registry, Symbols, BOOL, INT32, INT64};
use crate::onnx::graph::attr_int;

pub(super) fn register(registry: &mut Registry) {
    let unary = [
        "Relu",
        "Sigmoid",
        "Tanh",
        "Exp",
        "Log",
        "Abs",
        "Sqrt",
        "Reciprocal",
        "Erf",
        "Floor",
        "Ceil",
        "Round",
        "Clip",
        "LeakyRelu",
        "HardSigmoid",
        "HardSwish",
        "Elu",
        "Selu",
        "Softplus",
        "Softsign",
        "Gelu",
        "Sign",
        "PRelu",
    ];
    registry.insert(&unary, same_shape);
    registry.insert(&["Identity"], identity);
    registry.insert(&["Neg"], negate);
    registry.insert(&["Dropout"], dropout);
    registry.insert(&["Cast"], cast);
    registry.insert(&["Not", "IsNaN", "IsInf"], predicate);
    let broadcasting = [
        "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean", "Equal", "Less", "Greater", "LessOrEqual",
        "GreaterOrEqual", "And", "Or", "Xor", "Where",
    ];
    registry.insert(&broadcasting, broadcast);
}

/// The first input's type and shape, no values.
pub(super) fn same_shape(node: &Node, _: &mut Symbols) -> Vec<Fact> {
    vec![Fact::of(node.dtype(0), node.shape(0).map(<[Dim]>::to_vec))]
}

fn identity(node: &Node, _: &mut Symbols) -> Vec<Fact> {
    let value = node.fact(0).and_then(|f| f.value.clone());
    vec![Fact { value, ..Fact::of(node.dtype(0), node.shape(0).map(<[Dim]>::to_vec)) }]
}

fn negate(node: &Node, _: &mut Symbols) -> Vec<Fact> {
    let value = node.fact(0).and_then(|f| f.value.as_ref()).and_then(|v| {
        let negated: Option<Vec<Dim>> = v.iter().map(Dim::neg).collect();
        ArrayD::from_shape_vec(v.raw_dim(), negated?).ok()
    });
    vec![Fact { value, ..Fact::of(node.dtype(0), node.shape(0).map(<[Dim]>::to_vec)) }]
}

/// The output and, when asked for, the boolean mask of the same shape.
fn dropout(node: &Node, symbols: &mut Symbols) -> Vec<Fact> {
    let first = same_shape(node, symbols).remove(0);
    let mask = Fact::of(BOOL, first.shape.clone());
    with_extra(node, first, mask)
}

fn cast(node: &Node, _: &mut Symbols) -> Vec<Fact> {
    let to = i32::try_from(attr_int(node.proto, "to", 0)).unwrap_or(0);
    let value = node.fact(0).and_then(|f| f.value.clone()).filter(|_| to == INT64 || to == INT32);
    vec![Fact { value, ..Fact::of(to, node.shape(0).map(<[Dim]>::to_vec)) }]
}

fn predicate(node: &Node, _: &mut Symbols) -> Vec<Fact> {
    vec![Fact::of(BOOL, node.shape(0).map(<[Dim]>::to_vec))]
}

fn broadcast(node: &Node, symbols: &mut Symbols) -> Vec<Fact> {
    let dtype = match node.op {
        "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" | "Xor" => BOOL,
        "Where" => node.dtype(1),
        _ => node.dtype(0),
    };
    let shapes: Option<Vec<&[Dim]>> = node.inputs.iter().map(|f| f.as_ref()?.shape.as_deref()).collect();
    let Some(shapes) = shapes else { return vec![Fact::of(dtype, None)] };
    let shape = symbols.broadcast(&shapes);
    let combine: Option<fn(&Dim, &Dim) -> Option<Dim>> = match node.op {
        "Add" => Some(Dim::add),
        "Sub" => Some(|a, b| a.add(&b.neg()?)),
        "Mul" => Some(Dim::mul),
        "Div" => Some(Dim::div),
        _ => None,
    };
    let value = match (combine, node.inputs) {
        (Some(combine), [Some(a), Some(b)]) => a.value.as_ref().zip(b.value.as_ref()).and_then(|(a, b)| {
            let sizes = sizes(&shape)?;
            // Two small operands may still broadcast to a large result.
            if !small(&sizes) {
                return None;
            }
            let (a, b) = (a.broadcast(IxDyn(&sizes))?, b.broadcast(IxDyn(&sizes))?);
            let values: Option<Vec<Dim>> = a.iter().zip(b.iter()).map(|(x, y)| combine(x, y)).collect();
            ArrayD::from_shape_vec(IxDyn(&sizes), values?).ok()
        }),
        _ => None,
    };
    vec![Fact { dtype, shape: Some(shape), value, guessed: false }]
}

#[cfg(test)]
mod tests {
    use super::super::testing::{dims, fact_of, node};
    use super::*;

    #[test]
    fn integer_arithmetic_is_evaluated_and_broadcast() {
        let constants: [(&str, &[i64]); 2] = [("a", &[6, 8, 10]), ("b", &[2])];
        let quotient = fact_of(&constants, &[], node("Div", &["a", "b"], vec![]));
        assert_eq!(quotient.ints(), Some(vec![3, 4, 5]));
        let difference = fact_of(&constants, &[], node("Sub", &["a", "b"], vec![]));
        assert_eq!(difference.ints(), Some(vec![4, 6, 8]));
        let negated = fact_of(&constants, &[], node("Neg", &["a"], vec![]));
        assert_eq!(negated.ints(), Some(vec![-6, -8, -10]));
        let compared = fact_of(&constants, &[2, 1], node("Less", &["x", "a"], vec![]));
        assert_eq!((compared.dtype, dims(&compared)), (BOOL, Some(vec![Some(2), Some(3)])));
        assert!(compared.value.is_none());
    }
}
