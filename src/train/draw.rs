//! T_train° (docs/specification.md §2): every epoch the training images are shuffled and each one is kept clean
//! with probability 0.5, else replaced by a corrupted variant: of a corruption drawn uniformly among
//! those chosen (blur alone by default: blurred with σ drawn uniformly from Σ).

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::corruption::Draw;
use crate::data::Corruption;

/// The (image, corruption) pairs of epoch `epoch`, in training order, for `h×w` images. The draw
/// depends only on `seed`, the epoch, the images and `draws`, so a resumed run draws what an
/// uninterrupted one would.
pub fn epoch_draw(train: &[usize], seed: u64, epoch: usize, draws: &[Draw], h: usize, w: usize) -> Vec<(usize, Corruption)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch as u64);
    let mut order = train.to_vec();
    order.shuffle(&mut rng);
    order
        .into_iter()
        .map(|image| {
            if draws.is_empty() || rng.gen_bool(0.5) {
                return (image, Corruption::Clean);
            }
            // One corruption draws nothing here, so blur alone draws as it always did.
            let draw = if draws.len() == 1 { &draws[0] } else { &draws[rng.gen_range(0..draws.len())] };
            draw.variant(image, &mut rng, h, w)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SIGMAS;

    #[test]
    fn half_clean_and_every_sigma_alike() {
        let train: Vec<usize> = (0..60_000).collect();
        let draw = epoch_draw(&train, 2022, 3, &[Draw::Blur], 32, 32);
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
        let draw = |seed, epoch| epoch_draw(&train, seed, epoch, &[Draw::Blur], 32, 32);
        assert_eq!(draw(1, 0), draw(1, 0));
        assert_ne!(draw(1, 0), draw(1, 1));
        assert_ne!(draw(1, 0), draw(2, 0));
    }

    /// Spatial and folder together: each takes about half of the corrupted images; a folder
    /// replaces the image by one of its own.
    #[test]
    fn several_corruptions_share_the_corrupted_half() {
        let train: Vec<usize> = (0..10_000).collect();
        let draw = epoch_draw(&train, 7, 0, &[Draw::Spatial, Draw::Folder(vec![20_000, 20_001])], 32, 32);
        let spatial = draw.iter().filter(|(_, c)| matches!(c, Corruption::Transform(_))).count();
        let folder = draw.iter().filter(|(i, _)| *i >= 20_000).count();
        assert!((spatial as f64 / 2_500.0 - 1.0).abs() < 0.1 && (folder as f64 / 2_500.0 - 1.0).abs() < 0.1, "{spatial} {folder}");
    }
}
