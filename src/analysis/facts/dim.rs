//! Symbolic dimensions: monomials `coef · s₁ · s₂ …` over symbols, with the exact arithmetic that
//! shape subgraphs need (an unknown result is `None`, never a wrong one).

use smallvec::{smallvec, SmallVec};

/// The symbols one dimension multiplies. Almost every dimension has none or one (the batch), and a fact
/// holds one `Dim` per axis of every value, so they live inline rather than on the heap.
type Factors = SmallVec<[u32; 2]>;

/// A dimension: `coef` times the product of `symbols` (sorted, with repetition).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub(crate) struct Dim {
    coef: i64,
    symbols: Factors,
}

impl Dim {
    pub fn known(value: i64) -> Dim {
        Dim { coef: value, symbols: Factors::new() }
    }

    pub(super) fn symbol(id: u32) -> Dim {
        Dim { coef: 1, symbols: smallvec![id] }
    }

    /// The value when it does not depend on a symbol.
    pub fn value(&self) -> Option<i64> {
        self.symbols.is_empty().then_some(self.coef)
    }

    /// The symbol that `self` is, if it is exactly one.
    pub(super) fn as_symbol(&self) -> Option<u32> {
        match (self.coef, self.symbols.as_slice()) {
            (1, [symbol]) => Some(*symbol),
            _ => None,
        }
    }

    fn normalized(coef: i64, symbols: Factors) -> Dim {
        if coef == 0 {
            Dim::known(0)
        } else {
            Dim { coef, symbols }
        }
    }

    pub(super) fn mul(&self, other: &Dim) -> Option<Dim> {
        let mut symbols: Factors = self.symbols.iter().chain(&other.symbols).copied().collect();
        symbols.sort_unstable();
        Some(Dim::normalized(self.coef.checked_mul(other.coef)?, symbols))
    }

    /// Exact division of monomials (integer truncation when both are known, as ONNX's Div).
    pub(super) fn div(&self, other: &Dim) -> Option<Dim> {
        if other.coef == 0 {
            return None;
        }
        // Nothing divided by a non-zero size is nothing, whatever its symbols.
        if self.coef == 0 {
            return Some(Dim::known(0));
        }
        if self.symbols.is_empty() && other.symbols.is_empty() {
            return Some(Dim::known(self.coef.checked_div(other.coef)?));
        }
        if self.coef.checked_rem(other.coef)? != 0 {
            return None;
        }
        let mut symbols = self.symbols.clone();
        for symbol in &other.symbols {
            let at = symbols.iter().position(|s| s == symbol)?;
            symbols.remove(at);
        }
        Some(Dim::normalized(self.coef.checked_div(other.coef)?, symbols))
    }

    pub(super) fn add(&self, other: &Dim) -> Option<Dim> {
        if self.coef == 0 {
            return Some(other.clone());
        }
        if other.coef == 0 {
            return Some(self.clone());
        }
        if self.symbols != other.symbols {
            return None;
        }
        Some(Dim::normalized(self.coef.checked_add(other.coef)?, self.symbols.clone()))
    }

    pub(super) fn neg(&self) -> Option<Dim> {
        Some(Dim::normalized(self.coef.checked_neg()?, self.symbols.clone()))
    }
}

/// The product of `dims`; `None` when it overflows.
pub(super) fn product(dims: &[Dim]) -> Option<Dim> {
    dims.iter().try_fold(Dim::known(1), |p, d| p.mul(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monomials_divide_out_the_batch() {
        let n = Dim::symbol(0);
        let total = n.mul(&Dim::known(64)).unwrap();
        assert_eq!(total.div(&n), Some(Dim::known(64)));
        assert_eq!(total.div(&Dim::known(64)), Some(n.clone()));
        assert_eq!(total.div(&Dim::known(7)), None);
        assert_eq!(n.add(&n), Some(Dim { coef: 2, symbols: smallvec![0] }));
        assert_eq!(n.add(&Dim::known(1)), None);
        assert_eq!(Dim::known(7).div(&Dim::known(2)), Some(Dim::known(3)));
        // An empty tensor reshaped to [N, -1]: the -1 is 0, as onnxruntime infers it.
        assert_eq!(n.mul(&Dim::known(0)).unwrap().div(&n), Some(Dim::known(0)));
        assert_eq!(Dim::known(0).div(&Dim::known(0)), None);
    }
}
