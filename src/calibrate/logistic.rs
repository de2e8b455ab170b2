//! The probe's logistic regression: features standardised on all samples, label 1 for blurred
//! samples, both classes weighted equally (each class's weights sum to ½), an L2 penalty on the
//! weights, fitted by Newton's method with step halving — deterministic, no random start.

use crate::units::Decision;

/// A fitted probe, its parameters as the spec stores them (float32).
pub struct Probe {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub weights: Vec<f32>,
    pub bias: f32,
}

impl Probe {
    /// The logit of one sample's features, as the patched model computes it (in f64).
    pub fn logit(&self, features: &[f64]) -> f64 {
        let terms = features.iter().enumerate().map(|(i, f)| f64::from(self.weights[i]) * (f - f64::from(self.mean[i])) / f64::from(self.std[i]));
        terms.sum::<f64>() + f64::from(self.bias)
    }

    pub fn decision(&self) -> Decision {
        Decision::Probe { mean: self.mean.clone(), std: self.std.clone(), weights: self.weights.clone(), bias: self.bias }
    }
}

/// Fits the probe on `features` (one row per sample) with labels `positive` (blurred).
pub fn fit(features: &[Vec<f64>], positive: &[bool], l2: f64) -> Probe {
    let d = features.first().map_or(0, Vec::len);
    let n = features.len().max(1) as f64;
    let mean: Vec<f64> = (0..d).map(|j| features.iter().map(|f| f[j]).sum::<f64>() / n).collect();
    let std: Vec<f64> = (0..d)
        .map(|j| {
            let s = (features.iter().map(|f| (f[j] - mean[j]).powi(2)).sum::<f64>() / n).sqrt();
            // A constant feature carries nothing; any positive scale keeps it harmless.
            if s > 1e-12 { s } else { 1.0 }
        })
        .collect();
    // The stored (float32) standardisation, so the fit sees what the model will compute.
    let mean: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
    let std: Vec<f32> = std.iter().map(|&s| s as f32).collect();
    let rows: Vec<Vec<f64>> = features
        .iter()
        .map(|f| {
            let mut x: Vec<f64> = (0..d).map(|j| (f[j] - f64::from(mean[j])) / f64::from(std[j])).collect();
            x.push(1.0);
            x
        })
        .collect();
    let positives = positive.iter().filter(|&&p| p).count().max(1) as f64;
    let negatives = positive.iter().filter(|&&p| !p).count().max(1) as f64;
    let weight: Vec<f64> = positive.iter().map(|&p| if p { 0.5 / positives } else { 0.5 / negatives }).collect();
    let label: Vec<f64> = positive.iter().map(|&p| f64::from(u8::from(p))).collect();

    let loss = |theta: &[f64]| -> f64 {
        let data: f64 = rows
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let z = dot(x, theta);
                // log(1 + e^z) − y z, stable for large |z|.
                weight[i] * (z.max(0.0) + (-z.abs()).exp().ln_1p() - label[i] * z)
            })
            .sum();
        data + 0.5 * l2 * theta[..d].iter().map(|w| w * w).sum::<f64>()
    };
    let mut theta = vec![0.0; d + 1];
    let mut current = loss(&theta);
    for _ in 0..100 {
        let mut gradient = vec![0.0; d + 1];
        let mut hessian = vec![vec![0.0; d + 1]; d + 1];
        for (i, x) in rows.iter().enumerate() {
            let p = 1.0 / (1.0 + (-dot(x, &theta)).exp());
            let g = weight[i] * (p - label[i]);
            let h = weight[i] * p * (1.0 - p);
            for (a, row) in hessian.iter_mut().enumerate() {
                gradient[a] += g * x[a];
                for (cell, xb) in row.iter_mut().zip(x) {
                    *cell += h * x[a] * xb;
                }
            }
        }
        for a in 0..d {
            gradient[a] += l2 * theta[a];
            hessian[a][a] += l2;
        }
        let Some(step) = solve(hessian, gradient) else { break };
        let mut scale = 1.0;
        let mut next: Vec<f64>;
        loop {
            next = theta.iter().zip(&step).map(|(t, s)| t - scale * s).collect();
            let value = loss(&next);
            if value <= current || scale < 1e-6 {
                current = value.min(current);
                break;
            }
            scale /= 2.0;
        }
        let moved = theta.iter().zip(&next).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        theta = next;
        if moved < 1e-10 {
            break;
        }
    }
    Probe { mean, std, weights: theta[..d].iter().map(|&w| w as f32).collect(), bias: theta[d] as f32 }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Solves `a · x = b` by Gaussian elimination with partial pivoting; None when singular.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for column in 0..n {
        let pivot = (column..n).max_by(|&i, &j| a[i][column].abs().total_cmp(&a[j][column].abs()))?;
        if a[pivot][column].abs() < 1e-300 {
            return None;
        }
        a.swap(column, pivot);
        b.swap(column, pivot);
        let pivot_row = a[column].clone();
        for row in column + 1..n {
            let factor = a[row][column] / pivot_row[column];
            for (x, p) in a[row][column..].iter_mut().zip(&pivot_row[column..]) {
                *x -= factor * p;
            }
            b[row] -= factor * b[column];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let rest: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - rest) / a[row][row];
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separates_two_clusters_with_balanced_classes() {
        // Three clean samples around 0, one blurred far out, and a useless constant feature.
        let features = vec![vec![0.0, 5.0], vec![0.1, 5.0], vec![-0.1, 5.0], vec![3.0, 5.0]];
        let positive = [false, false, false, true];
        let probe = fit(&features, &positive, 1e-3);
        let logits: Vec<f64> = features.iter().map(|f| probe.logit(f)).collect();
        assert!(logits[..3].iter().all(|&l| l < 0.0) && logits[3] > 0.0, "{logits:?}");
        assert_eq!(probe.std[1], 1.0);
        // Deterministic.
        assert_eq!(fit(&features, &positive, 1e-3).weights, probe.weights);
    }

    #[test]
    fn solves_a_small_system() {
        let x = solve(vec![vec![0.0, 2.0], vec![1.0, 1.0]], vec![4.0, 3.0]).unwrap();
        assert!((x[0] - 1.0).abs() < 1e-12 && (x[1] - 2.0).abs() < 1e-12);
        assert!(solve(vec![vec![1.0, 2.0], vec![2.0, 4.0]], vec![1.0, 2.0]).is_none());
    }
}
