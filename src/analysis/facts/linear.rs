//! Gemm and MatMul: rows of the first operand by columns of the second, MatMul's batch axes
//! broadcast.

use super::{Dim, Fact, Node, Registry, Symbols};
use crate::onnx::graph::attr_int;

pub(super) fn register(registry: &mut Registry) {
    registry.insert(&["Gemm"], gemm);
    registry.insert(&["MatMul"], matmul);
}

fn gemm(node: &Node, _: &mut Symbols) -> Vec<Fact> {
    let pick = |shape: Option<&[Dim]>, transposed: bool, row: bool| match shape {
        Some([first, second]) => Some(if transposed == row { second.clone() } else { first.clone() }),
        _ => None,
    };
    let rows = pick(node.shape(0), attr_int(node.proto, "transA", 0) != 0, true);
    let cols = pick(node.shape(1), attr_int(node.proto, "transB", 0) != 0, false);
    vec![Fact::of(node.dtype(0), rows.zip(cols).map(|(m, n)| vec![m, n]))]
}

/// numpy's matmul: a vector operand gains an axis of 1 for the product and loses it after.
fn matmul(node: &Node, symbols: &mut Symbols) -> Vec<Fact> {
    let shape = match (node.shape(0), node.shape(1)) {
        (Some(a), Some(b)) => {
            let a2 = if let [k] = a { vec![Dim::known(1), k.clone()] } else { a.to_vec() };
            let b2 = if let [k] = b { vec![k.clone(), Dim::known(1)] } else { b.to_vec() };
            // A scalar operand has no matrix axes.
            match (a2.split_last_chunk::<2>(), b2.split_last_chunk::<2>()) {
                (Some((a_batch, [rows, _])), Some((b_batch, [_, columns]))) => {
                    let mut dims = symbols.broadcast(&[a_batch, b_batch]);
                    if a.len() > 1 {
                        dims.push(rows.clone());
                    }
                    if b.len() > 1 {
                        dims.push(columns.clone());
                    }
                    Some(dims)
                }
                _ => None,
            }
        }
        _ => None,
    };
    vec![Fact::of(node.dtype(0), shape)]
}

#[cfg(test)]
mod tests {
    use super::super::testing::{dims, fact_of, node};
    use crate::onnx::builder::int;

    #[test]
    fn products_take_rows_and_columns() {
        let w: [(&str, &[i64]); 1] = [("w", &[1, 2, 3, 4, 5, 6])];
        // w is a vector of 6: MatMul of [2, 3, 6] by it drops the last axis.
        let product = fact_of(&w, &[2, 3, 6], node("MatMul", &["x", "w"], vec![]));
        assert_eq!(dims(&product), Some(vec![Some(2), Some(3)]));
        let transposed = fact_of(&[], &[5, 7], node("Gemm", &["x", "x"], vec![int("transA", 1)]));
        assert_eq!(dims(&transposed), Some(vec![Some(7), Some(7)]));
    }
}
