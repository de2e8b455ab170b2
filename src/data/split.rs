//! The deterministic stratified split of the training data into T_train and T_val (docs/specification.md §2):
//! every class keeps its share, and the same seed gives the same split on every platform
//! (ChaCha8 is specified bit for bit, unlike the standard library's or the OS's generators).

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

/// The paper's seed of the split.
pub const DEFAULT_SEED: u64 = 2022;

/// How many images the validation part gets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValSize {
    /// A share of all images in (0, 1), rounded to the nearest image.
    Fraction(f64),
    /// An exact number of images.
    Count(usize),
}

impl Default for ValSize {
    /// 2 %, the paper's 1:49 split.
    fn default() -> Self {
        ValSize::Fraction(0.02)
    }
}

/// Splits the positions of `labels` into (train, val), both sorted. Each class gets its
/// proportional share of the validation size, by largest remainder (ties to the smaller label)
/// so that the shares add up exactly; within a class the images are taken from a ChaCha8
/// shuffle seeded by `seed`, classes in ascending label order.
pub fn stratified_split(labels: &[i64], val: ValSize, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    let total = labels.len();
    let wanted = match val {
        ValSize::Fraction(f) if f > 0.0 && f < 1.0 => (f * total as f64).round() as usize,
        ValSize::Fraction(f) => return Err(Error::Config(format!("validation fraction {f} is not in (0, 1)"))),
        ValSize::Count(n) => n,
    };
    if wanted == 0 || wanted > total {
        return Err(Error::Config(format!("a validation part of {wanted} images cannot be drawn from {total} images")));
    }
    let mut classes: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (position, label) in labels.iter().enumerate() {
        classes.entry(*label).or_default().push(position);
    }
    // Largest remainder, in exact integer arithmetic.
    let share = |members: usize| (wanted as u128 * members as u128 / total as u128) as usize;
    let remainder = |members: usize| wanted as u128 * members as u128 % total as u128;
    let mut quotas: Vec<usize> = classes.values().map(|m| share(m.len())).collect();
    let mut order: Vec<usize> = (0..classes.len()).collect();
    let sizes: Vec<usize> = classes.values().map(Vec::len).collect();
    order.sort_by_key(|&c| std::cmp::Reverse(remainder(sizes[c])));
    let missing = wanted - quotas.iter().sum::<usize>();
    for &c in order.iter().take(missing) {
        quotas[c] += 1;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut train, mut validation) = (Vec::with_capacity(total - wanted), Vec::with_capacity(wanted));
    for (mut members, quota) in classes.into_values().zip(quotas) {
        members.shuffle(&mut rng);
        validation.extend_from_slice(&members[..quota]);
        train.extend_from_slice(&members[quota..]);
    }
    train.sort_unstable();
    validation.sort_unstable();
    Ok((train, validation))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_class_shares_exactly() {
        let labels: Vec<i64> = (0..50_000).map(|i| i % 10).collect();
        let (train, val) = stratified_split(&labels, ValSize::default(), DEFAULT_SEED).unwrap();
        assert_eq!((train.len(), val.len()), (49_000, 1_000));
        for class in 0..10 {
            assert_eq!(val.iter().filter(|&&i| labels[i] == class).count(), 100);
        }
        let mut all: Vec<usize> = train.iter().chain(&val).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..50_000).collect::<Vec<_>>());
        assert!(val.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn largest_remainder_makes_the_total_exact() {
        // Classes of 5, 3 and 2 images, 5 to draw: exact shares 2.5, 1.5, 1.0, floors 2 + 1 + 1;
        // the one image left goes to the tie of remainders' smaller label: 3 + 1 + 1.
        let labels = [0, 0, 0, 0, 0, 1, 1, 1, 2, 2];
        let (_, val) = stratified_split(&labels, ValSize::Count(5), 1).unwrap();
        let per_class: Vec<usize> = (0..3).map(|c| val.iter().filter(|&&i| labels[i] == c).count()).collect();
        assert_eq!(per_class, [3, 1, 1]);
        let (_, val) = stratified_split(&labels, ValSize::Fraction(0.3), 1).unwrap();
        assert_eq!(val.len(), 3);
    }

    #[test]
    fn the_seed_decides() {
        let labels: Vec<i64> = (0..1_000).map(|i| (i * 7 % 13) as i64).collect();
        let first = stratified_split(&labels, ValSize::Count(100), 5).unwrap();
        assert_eq!(first, stratified_split(&labels, ValSize::Count(100), 5).unwrap());
        assert_ne!(first.1, stratified_split(&labels, ValSize::Count(100), 6).unwrap().1);
        // Pinned values: a change of generator or algorithm shows here.
        let (_, val) = stratified_split(&labels, ValSize::Count(4), DEFAULT_SEED).unwrap();
        assert_eq!(val, PINNED);
    }

    const PINNED: [usize; 4] = [0, 418, 565, 719];

    #[test]
    fn rejects_impossible_sizes() {
        let labels = [0, 1, 0, 1];
        assert!(stratified_split(&labels, ValSize::Fraction(1.0), 0).is_err());
        assert!(stratified_split(&labels, ValSize::Fraction(0.01), 0).is_err());
        assert!(stratified_split(&labels, ValSize::Count(5), 0).is_err());
        assert_eq!(stratified_split(&labels, ValSize::Count(4), 0).unwrap().1, vec![0, 1, 2, 3]);
    }
}
