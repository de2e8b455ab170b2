//! SENSEI's selection for the DP+SS pipeline (`train.selection: sensei`, docs/training.md): each
//! spatial variant drawn for T_train° becomes the worst of [`SENSEI_CANDIDATES`] variants of its
//! image — the drawn one and more drawn from the full ranges — scored by the cross-entropy of the
//! β model as it stands at the start of the epoch. The images drawn clean stay clean.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::TrainData;
use crate::backend::{BackendOptions, Pool};
use crate::config::{Config, SENSEI_CANDIDATES};
use crate::data::spatial::SpatialParams;
use crate::data::{Batch, BatchStream, Corruption};
use crate::error::{Error, Result};
use crate::eval::ModelIo;
use crate::onnx::proto::ModelProto;
use crate::progress::Progress;
use crate::tensor::Tensor;

/// Replaces the spatial variant of every pair of `items` that has one by the candidate with the
/// highest loss under `beta`; the candidates depend only on the seed, the epoch and the pair's place.
pub fn select(items: &mut [(usize, Corruption)], beta: &ModelProto, data: &TrainData, config: &Config, io: &ModelIo, options: &BackendOptions, epoch: usize) -> Result<()> {
    let (h, w) = (data.images.images.height(), data.images.images.width());
    let spatial: Vec<usize> = (0..items.len()).filter(|&p| matches!(items[p].1, Corruption::Transform(_))).collect();
    if spatial.is_empty() {
        return Ok(());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(config.data.seed ^ 0x5345_4e53_4549_0000);
    rng.set_stream(epoch as u64);
    let candidates: Vec<(usize, Corruption)> = spatial
        .iter()
        .flat_map(|&p| {
            let (image, drawn) = items[p].clone();
            let more: Vec<(usize, Corruption)> = (1..SENSEI_CANDIDATES).map(|_| (image, Corruption::Transform(SpatialParams::sample_full(&mut rng, h, w)))).collect();
            std::iter::once((image, drawn)).chain(more)
        })
        .collect();
    let losses = losses(beta, data, config, io, options, candidates.clone(), epoch)?;
    for (slot, &p) in spatial.iter().enumerate() {
        let range = slot * SENSEI_CANDIDATES..(slot + 1) * SENSEI_CANDIDATES;
        let worst = range.clone().max_by(|&a, &b| losses[a].total_cmp(&losses[b]).then(b.cmp(&a))).unwrap_or(range.start);
        items[p] = candidates[worst].clone();
    }
    Ok(())
}

/// The cross-entropy of `model` on every pair of `candidates`, in order.
fn losses(model: &ModelProto, data: &TrainData, config: &Config, io: &ModelIo, options: &BackendOptions, candidates: Vec<(usize, Corruption)>, epoch: usize) -> Result<Vec<f64>> {
    let mut pool = Pool::open(&prost::Message::encode_to_vec(model), options)?;
    let logits_at = pool.output_names().iter().position(|n| *n == io.output).ok_or_else(|| Error::Internal(format!("backend lost output '{}'", io.output)))?;
    let mut progress = Progress::new(format!("epoch {}/{}: SENSEI selection", epoch + 1, config.train.epochs), candidates.len());
    let mut stream = BatchStream::mixed(data.images.clone(), candidates, data.preprocess.clone(), config.eval.batch_size);
    let mut losses = Vec::new();
    loop {
        let mut group: Vec<Batch> = stream.by_ref().take(pool.workers()).collect::<Result<_>>()?;
        if group.is_empty() {
            break;
        }
        let inputs: Vec<Tensor> = group.iter_mut().map(|batch| Tensor::F32(std::mem::take(&mut batch.input))).collect();
        let outputs = pool.map(&inputs, |session, input| session.run(&[(io.input.as_str(), input)]))?;
        for (outputs, batch) in outputs.iter().zip(&group) {
            for (row, &label) in outputs[logits_at].as_f32()?.axis_iter(ndarray::Axis(0)).zip(&batch.labels) {
                losses.push(cross_entropy(row.iter().copied(), label));
            }
        }
        progress.advance(group.iter().map(|batch| batch.labels.len()).sum());
    }
    progress.finish();
    Ok(losses)
}

/// `log Σ exp(z) − z[label]` in f64; a label beyond the logits or NaN logits give +∞ (the worst).
fn cross_entropy(logits: impl Iterator<Item = f32>, label: i64) -> f64 {
    let values: Vec<f64> = logits.map(f64::from).collect();
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let Some(&target) = usize::try_from(label).ok().and_then(|l| values.get(l)) else { return f64::INFINITY };
    if !max.is_finite() || target.is_nan() {
        return f64::INFINITY;
    }
    max + values.iter().map(|v| (v - max).exp()).sum::<f64>().ln() - target
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Selection;
    use crate::data::{CorruptionKind, Corruptions};

    /// On tiny_cnn and the bundled images: clean pairs stay, each spatial pair keeps its image and
    /// gets a variant at least as costly as the drawn one, and the choice repeats.
    #[test]
    fn the_costliest_candidate_is_trained_on() {
        let mut config = Config::from_file(&crate::test_support::fixture("cifar10.yaml")).unwrap();
        config.data.corruption = Corruptions(vec![CorruptionKind::Spatial]);
        config.data.val_size = Some(20);
        config.train.selection = Selection::Sensei;
        config.eval.batch_size = 64;
        let data = TrainData::load_data(&config).unwrap();
        let model = crate::onnx::load_model(&crate::test_support::fixture("models/tiny_cnn_cifar10.onnx")).unwrap();
        let io = ModelIo::resolve(&model, &config.preprocess).unwrap();
        let options = BackendOptions::default();
        let drawn: Vec<(usize, Corruption)> = data.epoch_draw(config.data.seed, 0).into_iter().take(30).collect();
        let mut chosen = drawn.clone();
        select(&mut chosen, &model, &data, &config, &io, &options, 0).unwrap();
        let loss = |items: &[(usize, Corruption)]| losses(&model, &data, &config, &io, &options, items.to_vec(), 0).unwrap();
        let (before, after) = (loss(&drawn), loss(&chosen));
        let mut raised = 0;
        for (p, (d, c)) in drawn.iter().zip(&chosen).enumerate() {
            assert_eq!(d.0, c.0, "pair {p} keeps its image");
            match d.1 {
                Corruption::Clean => assert_eq!(c.1, Corruption::Clean),
                _ => {
                    assert!(matches!(c.1, Corruption::Transform(_)) && after[p] >= before[p] - 1e-4, "pair {p}: {} < {}", after[p], before[p]);
                    raised += usize::from(after[p] > before[p]);
                }
            }
        }
        assert!(raised > 3, "{raised}");
        let mut again = drawn.clone();
        select(&mut again, &model, &data, &config, &io, &options, 0).unwrap();
        assert_eq!(again, chosen);
    }

    #[test]
    fn cross_entropy_of_logits() {
        assert!((cross_entropy([0.0f32, 0.0].into_iter(), 1) - std::f64::consts::LN_2).abs() < 1e-12);
        assert!(cross_entropy([10.0f32, 0.0].into_iter(), 0) < cross_entropy([10.0f32, 0.0].into_iter(), 1));
        assert_eq!(cross_entropy([1.0f32].into_iter(), 3), f64::INFINITY);
        assert!((cross_entropy([1000.0f32, 0.0].into_iter(), 1) - 1000.0).abs() < 1e-9, "no overflow");
    }
}
