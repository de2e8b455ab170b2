//! The learning-rate schedule: cosine annealing stepped once per epoch, as PyTorch's
//! `CosineAnnealingLR(optimizer, T_max)` with `eta_min = 0`.

use std::f64::consts::PI;

/// The learning rate of epoch `epoch` (0-based) for initial rate `base` and period `t_max`:
/// base · (1 + cos(π · epoch / T_max)) / 2. PyTorch computes the same value recursively; the closed
/// form is what its `_get_closed_form_lr` returns and differs from the recursion only in rounding.
pub fn cosine(base: f64, epoch: usize, t_max: usize) -> f64 {
    base * (1.0 + (PI * epoch as f64 / t_max.max(1) as f64).cos()) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_pytorch_cosine_annealing() {
        // PyTorch's documented formula η_t = η_max (1 + cos(π t / T_max)) / 2, evaluated in Python
        // for lr 0.01, T_max 200, after 0, 1, 2, 100 and 200 scheduler steps.
        let expected = [(0, 0.01), (1, 0.009999383162408304), (2, 0.009997532801828659), (100, 0.005), (200, 0.0)];
        for (epoch, lr) in expected {
            assert!((cosine(0.01, epoch, 200) - lr).abs() < 1e-15, "epoch {epoch}: {}", cosine(0.01, epoch, 200));
        }
    }

    #[test]
    fn the_recursive_form_agrees() {
        // PyTorch's recursive update, written out: lr_t = (1 + cos(π t/T)) / (1 + cos(π (t−1)/T)) · lr_{t−1}.
        let (base, t_max) = (0.01, 200usize);
        let mut lr = base;
        for t in 1..=50 {
            let (now, before) = ((PI * t as f64 / t_max as f64).cos(), (PI * (t - 1) as f64 / t_max as f64).cos());
            lr *= (1.0 + now) / (1.0 + before);
            assert!((lr - cosine(base, t, t_max)).abs() < 1e-15);
        }
    }
}
