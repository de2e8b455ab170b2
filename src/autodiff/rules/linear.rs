//! Gemm (with transA, transB, alpha, beta and a broadcast C) and MatMul (numpy semantics: batch
//! broadcasting and 1-D operands).

use super::{first, set, unbroadcast, wants, Builder, Ctx, Differentiable, Registry};
use crate::autodiff::emit::{float, int};
use crate::analysis::facts::Dim;
use crate::error::Result;
use crate::onnx::graph::{attr_int, attribute};

pub(super) fn register(registry: &mut Registry) {
    registry.insert("Gemm", Differentiable::Only(&[0, 1, 2]), gemm);
    registry.insert("MatMul", Differentiable::Only(&[0, 1]), matmul);
}

/// Y = alpha · A' · B' + beta · C with A' = Aᵀ when transA (B' likewise). The gradients are Gemms
/// again: dA' = alpha · dY · B'ᵀ and dB' = alpha · A'ᵀ · dY, transposed back when the operand was.
fn gemm(ctx: &Ctx, b: &mut Builder, dy: &[Option<String>], wanted: &[bool]) -> Result<Vec<Option<String>>> {
    let dy = first(ctx, dy)?;
    let alpha = attribute(ctx.node, "alpha").and_then(|a| a.f).unwrap_or(1.0);
    let beta = attribute(ctx.node, "beta").and_then(|a| a.f).unwrap_or(1.0);
    let trans_a = attr_int(ctx.node, "transA", 0) != 0;
    let trans_b = attr_int(ctx.node, "transB", 0) != 0;
    let (a, bm) = (ctx.input(0), ctx.input(1));
    let product = |b: &mut Builder, left: &str, right: &str, left_t: bool, right_t: bool| {
        let attributes =
            vec![float("alpha", alpha), int("transA", i64::from(left_t)), int("transB", i64::from(right_t))];
        b.op("Gemm", &[left, right], attributes)
    };
    let mut result = vec![None; ctx.node.input.len()];
    if wants(wanted, 0) {
        let da = if trans_a { product(b, bm, &dy, trans_b, true) } else { product(b, &dy, bm, false, !trans_b) };
        set(&mut result, 0, da);
    }
    if wants(wanted, 1) {
        let db = if trans_b { product(b, &dy, a, true, trans_a) } else { product(b, a, &dy, !trans_a, false) };
        set(&mut result, 1, db);
    }
    if wants(wanted, 2) {
        let scaled = b.scale(&dy, f64::from(beta), ctx.float_type())?;
        let c = ctx.input(2);
        set(&mut result, 2, unbroadcast(ctx, b, &scaled, ctx.shape(ctx.output(0))?, c, ctx.shape(c)?)?);
    }
    Ok(result)
}

/// Y = A · B. A 1-D operand is promoted to a matrix (a row for A, a column for B) and the output's
/// missing axes restored, so that dA = dY · Bᵀ and dB = Aᵀ · dY hold on the promoted operands; each
/// is then summed over the batch axes its operand was broadcast along.
fn matmul(ctx: &Ctx, b: &mut Builder, dy: &[Option<String>], wanted: &[bool]) -> Result<Vec<Option<String>>> {
    let dy = first(ctx, dy)?;
    let (a, bm) = (ctx.input(0), ctx.input(1));
    let (a_shape, b_shape) = (ctx.shape(a)?.to_vec(), ctx.shape(bm)?.to_vec());
    let one = Dim::known(1);
    let a_matrix = match a_shape.as_slice() {
        [] => return Err(ctx.error("MatMul of a scalar")),
        [k] => vec![one.clone(), k.clone()],
        _ => a_shape.clone(),
    };
    let b_matrix = match b_shape.as_slice() {
        [] => return Err(ctx.error("MatMul of a scalar")),
        [k] => vec![k.clone(), one.clone()],
        _ => b_shape.clone(),
    };
    let a2 = if a_shape.len() == 1 { b.unsqueeze(a, &[0]) } else { a.to_string() };
    let b2 = if b_shape.len() == 1 { b.unsqueeze(bm, &[1]) } else { bm.to_string() };
    // The output with the axes that 1-D operands dropped put back: the row before the column, the
    // column last.
    let mut out = ctx.shape(ctx.output(0))?.to_vec();
    if b_shape.len() == 1 {
        out.push(one.clone());
    }
    if a_shape.len() == 1 {
        let column = out.len().checked_sub(1).ok_or_else(|| ctx.error("the product has no column axis"))?;
        out.insert(column, one.clone());
    }
    let (batch, _) = out.split_last_chunk::<2>().ok_or_else(|| ctx.error("the product is not a matrix"))?;
    // The row and column axes follow the batch axes.
    let restored: Vec<usize> =
        (batch.len()..).zip([a_shape.len() == 1, b_shape.len() == 1]).filter_map(|(axis, dropped)| dropped.then_some(axis)).collect();
    let dy2 = b.unsqueeze(&dy, &restored);
    // A matrix operand with its last two axes swapped.
    let swap = |b: &mut Builder, x: &str, rank: usize| {
        let mut perm: Vec<usize> = (0..rank).collect();
        if let Some(matrix) = perm.last_chunk_mut::<2>() {
            matrix.reverse();
        }
        b.transpose(x, &perm)
    };
    // The gradient of a product as its operand's matrix axes after the batch axes.
    let with_batch = |matrix: &[Dim]| -> Result<Vec<Dim>> {
        let (_, axes) = matrix.split_last_chunk::<2>().ok_or_else(|| ctx.error("an operand is not a matrix"))?;
        Ok([batch, axes.as_slice()].concat())
    };
    let mut result = vec![None; 2];
    if wants(wanted, 0) {
        let bt = swap(b, &b2, b_matrix.len());
        let g = b.op("MatMul", &[&dy2, &bt], vec![]);
        set(&mut result, 0, unbroadcast(ctx, b, &g, &with_batch(&a_matrix)?, a, &a_matrix)?);
    }
    if wants(wanted, 1) {
        let at = swap(b, &a2, a_matrix.len());
        let g = b.op("MatMul", &[&at, &dy2], vec![]);
        set(&mut result, 1, unbroadcast(ctx, b, &g, &with_batch(&b_matrix)?, bm, &b_matrix)?);
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use crate::autodiff::emit::{float, int};
    use crate::autodiff::testing::check;

    #[test]
    fn gemm_with_every_transposition() {
        for (trans_a, trans_b) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            check(&["a", "b", "c"], |t| {
                let a = t.input("a", if trans_a == 1 { &[4, 3] } else { &[3, 4] });
                let b = t.param("b", if trans_b == 1 { &[5, 4] } else { &[4, 5] });
                let c = t.param("c", &[5]);
                let attributes =
                    vec![int("transA", trans_a), int("transB", trans_b), float("alpha", 0.7), float("beta", 1.3)];
                t.node("Gemm", &[&a, &b, &c], attributes)
            });
        }
        check(&["a", "b", "c"], |t| {
            let (a, b, c) = (t.input("a", &[3, 4]), t.param("b", &[4, 2]), t.param("c", &[3, 1]));
            t.node("Gemm", &[&a, &b, &c], vec![])
        });
    }

    #[test]
    fn matmul_with_batches_and_vectors() {
        check(&["a", "b"], |t| {
            let (a, b) = (t.input("a", &[2, 3, 4]), t.param("b", &[4, 5]));
            t.node("MatMul", &[&a, &b], vec![])
        });
        check(&["a", "b"], |t| {
            let (a, b) = (t.input("a", &[2, 1, 3, 4]), t.param("b", &[3, 4, 2]));
            t.node("MatMul", &[&a, &b], vec![])
        });
        check(&["a", "b"], |t| {
            let (a, b) = (t.input("a", &[4]), t.param("b", &[2, 4, 3]));
            t.node("MatMul", &[&a, &b], vec![])
        });
        check(&["a", "b"], |t| {
            let (a, b) = (t.input("a", &[2, 3, 4]), t.param("b", &[4]));
            t.node("MatMul", &[&a, &b], vec![])
        });
    }
}
