//! T_train° (docs/specification.md §2): every epoch the training images are shuffled and each one is kept clean
//! with probability 0.5, else blurred with σ drawn uniformly from Σ.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::SIGMAS;
use crate::data::Corruption;

/// The (image, corruption) pairs of epoch `epoch`, in training order. The draw depends only on
/// `seed`, the epoch and the images, so a resumed run draws what an uninterrupted one would.
pub fn epoch_draw(train: &[usize], seed: u64, epoch: usize) -> Vec<(usize, Corruption)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch as u64);
    let mut order = train.to_vec();
    order.shuffle(&mut rng);
    order
        .into_iter()
        .map(|image| {
            let corruption =
                if rng.gen_bool(0.5) { Corruption::Clean } else { Corruption::Blur(SIGMAS[rng.gen_range(0..SIGMAS.len())]) };
            (image, corruption)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_clean_and_every_sigma_alike() {
        let train: Vec<usize> = (0..60_000).collect();
        let draw = epoch_draw(&train, 2022, 3);
        let mut sorted: Vec<usize> = draw.iter().map(|(i, _)| *i).collect();
        sorted.sort_unstable();
        assert_eq!(sorted, train, "every image exactly once");
        let clean = draw.iter().filter(|(_, c)| *c == Corruption::Clean).count();
        assert!((clean as f64 / 60_000.0 - 0.5).abs() < 0.01, "{clean}");
        for sigma in SIGMAS {
            let count = draw.iter().filter(|(_, c)| *c == Corruption::Blur(sigma)).count() as f64;
            assert!((count / 30_000.0 - 1.0 / 6.0).abs() < 0.01, "σ {sigma}: {count}");
        }
    }

    #[test]
    fn epochs_differ_and_repeat() {
        let train: Vec<usize> = (0..100).collect();
        assert_eq!(epoch_draw(&train, 1, 0), epoch_draw(&train, 1, 0));
        assert_ne!(epoch_draw(&train, 1, 0), epoch_draw(&train, 1, 1));
        assert_ne!(epoch_draw(&train, 1, 0), epoch_draw(&train, 2, 0));
    }
}
