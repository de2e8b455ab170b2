//! The screened method: the exact method's blamed filters without every filter's exact count.
//!
//! Per layer, stage by stage on growing subsets of T_val* (whole validation images, each with all
//! its corrupted copies, in a seeded order): the fast method counts the filters still open on the
//! stage's new images, recording per image which answers each mask turns right or wrong. Open
//! filters have run on the same images, so each pair of them gets an interval on the difference
//! of their counts over all of T_val* from the differences of their changes image by image
//! ([`Paired`]). A filter that the intervals put beyond doubt among the first ⌊κ·m⌋ of the
//! ranking, or beyond doubt after them, is settled and not run again; the others run on the next,
//! larger stage, and those that reach the whole of T_val* have exact counts (docs/assessment.md).

use std::collections::HashMap;

use ndarray::{ArrayViewD, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::{fast, Original, ValStar};
use crate::analysis::ConvInfo;
use crate::backend::BackendOptions;
use crate::error::{Error, Result};
use crate::eval::ModelIo;
use crate::onnx::proto::ModelProto;
use crate::tensor::Tensor;

/// What the screen ran with; recorded in the artifact and the partial file's header, so a resumed
/// run and merged shards use the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScreenSettings {
    /// κ whose boundary the screen settles: the blamed set holds for this κ alone.
    pub kappa: f64,
    /// Seed of the order in which validation images join the stages.
    pub seed: u64,
    /// The first stage's validation images: this share of T_val, at least `first_min` (all of
    /// T_val when it has fewer).
    pub first_share: f64,
    pub first_min: usize,
    /// Each later stage holds this many times the images of all stages before it.
    pub growth: usize,
    /// Half-width of a filter's interval, in standard errors of its estimated count.
    pub z: f64,
}

impl ScreenSettings {
    /// The settings for κ and the data seed: a first stage of 1/8 of T_val (at least 16 images),
    /// doubling, intervals of ±3 standard errors (docs/assessment.md has the measurements).
    pub fn new(kappa: f64, seed: u64) -> ScreenSettings {
        ScreenSettings { kappa, seed, first_share: 0.125, first_min: 16, growth: 2, z: 3.0 }
    }

    /// Validation images covered after each stage, of `total`.
    fn schedule(&self, total: usize) -> Vec<usize> {
        let first = (total as f64 * self.first_share).ceil() as usize;
        let mut covered = first.max(self.first_min).min(total);
        let mut schedule = vec![covered];
        while covered < total {
            covered = covered.saturating_mul(self.growth.max(2)).min(total);
            schedule.push(covered);
        }
        schedule
    }
}

/// How a screened layer's counts were settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerScreen {
    /// The blamed filters as the screen settled them (the artifact's `blamed`).
    pub blamed: Vec<usize>,
    /// Filters whose counts are exact (they ran on all of T_val*); the others' are scaled estimates.
    pub exact: Vec<usize>,
    /// Per stage run: its T_val* images and the filters run on them.
    pub stages: Vec<StageRun>,
}

impl LayerScreen {
    /// Masked images run, filters × images summed over the stages.
    pub fn work(&self) -> usize {
        self.stages.iter().map(|s| s.images.saturating_mul(s.filters)).sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRun {
    pub images: usize,
    pub filters: usize,
}

/// T_val* split into the stages' disjoint increments.
pub(super) struct Stages {
    increments: Vec<Increment>,
    /// Validation images (K), the most corrupted copies of one, the original model's correct
    /// predictions on all of T_val*.
    clusters: usize,
    copies: usize,
    correct0: usize,
}

/// The T_val* images of the validation images one stage adds.
struct Increment {
    data: ValStar,
    original: Original,
    /// Per image of `data`, in order: its validation image's position among this increment's.
    cluster: Vec<usize>,
    /// Validation images this increment adds, and all increments up to it.
    size: usize,
    covered: usize,
}

impl Stages {
    pub(super) fn new(data: &ValStar, original: &Original, settings: &ScreenSettings) -> Result<Stages> {
        for ((batch, labels), correct) in data.batches.iter().zip(&data.labels).zip(&original.correct) {
            if batch.shape().first() != Some(&labels.len()) || correct.len() != labels.len() {
                return Err(Error::Internal("T_val*'s batches, labels and predictions differ in size".into()));
            }
        }
        let mut copies: HashMap<usize, usize> = HashMap::new();
        for &source in data.sources.iter().flatten() {
            *copies.entry(source).or_default() += 1;
        }
        let mut order: Vec<usize> = copies.keys().copied().collect();
        order.sort_unstable();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(settings.seed));
        let rank: HashMap<usize, usize> = order.iter().enumerate().map(|(r, &s)| (s, r)).collect();
        let batch_size = data.labels.first().map_or(1, Vec::len).max(1);
        let mut increments = Vec::new();
        let mut start = 0;
        for covered in settings.schedule(order.len()) {
            let mut picked = Vec::new();
            for (b, sources) in data.sources.iter().enumerate() {
                for (i, source) in sources.iter().enumerate() {
                    if let Some(&r) = rank.get(source).filter(|&&r| (start..covered).contains(&r)) {
                        picked.push((b, i, r - start));
                    }
                }
            }
            increments.push(Increment::new(data, original, &picked, batch_size, covered - start, covered)?);
            start = covered;
        }
        Ok(Stages { increments, clusters: order.len(), copies: copies.values().copied().max().unwrap_or(1), correct0: original.count() })
    }
}

impl Increment {
    /// The images `picked` ((batch, row, cluster) in T_val* order) as a T_val* of their own.
    fn new(data: &ValStar, original: &Original, picked: &[(usize, usize, usize)], batch_size: usize, size: usize, covered: usize) -> Result<Increment> {
        let missing = || Error::Internal("a picked T_val* image is not there".into());
        let mut subset = ValStar { batches: Vec::new(), labels: Vec::new(), sources: Vec::new(), images: size, fingerprint: data.fingerprint.clone() };
        let mut correct = Vec::new();
        for chunk in picked.chunks(batch_size) {
            let rows: Vec<ArrayViewD<f32>> = chunk
                .iter()
                .map(|&(b, i, _)| {
                    let batch = data.batches.get(b).ok_or_else(missing)?.as_f32()?;
                    Ok(batch.index_axis(Axis(0), i))
                })
                .collect::<Result<_>>()?;
            subset.batches.push(Tensor::F32(ndarray::stack(Axis(0), &rows).map_err(|e| Error::Internal(e.to_string()))?));
            let at = |b: usize, i: usize| -> Result<(i64, usize, bool)> {
                let label = *data.labels.get(b).and_then(|l| l.get(i)).ok_or_else(missing)?;
                let source = *data.sources.get(b).and_then(|s| s.get(i)).ok_or_else(missing)?;
                let ok = *original.correct.get(b).and_then(|c| c.get(i)).ok_or_else(missing)?;
                Ok((label, source, ok))
            };
            let rows: Vec<(i64, usize, bool)> = chunk.iter().map(|&(b, i, _)| at(b, i)).collect::<Result<_>>()?;
            subset.labels.push(rows.iter().map(|r| r.0).collect());
            subset.sources.push(rows.iter().map(|r| r.1).collect());
            correct.push(rows.iter().map(|r| r.2).collect());
        }
        let cluster = picked.iter().map(|&(_, _, c)| c).collect();
        Ok(Increment { data: subset, original: Original { correct, kept: Default::default() }, cluster, size, covered })
    }
}

/// Where a filter stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum State {
    Blamed,
    Open,
    Cleared,
}

/// One filter: the validation images it ran on (the first `covered` of the order) and where it stands.
#[derive(Debug, Clone, Copy)]
struct Filter {
    covered: usize,
    state: State,
}

/// Per filter, its changes in correct predictions per validation image (a cluster total,
/// −copies … +copies), summed; paired: all open filters have run on the same
/// images, so two of them are compared on the differences of their changes image by image, which
/// cancel where both masks flip the same fragile images.
struct Paired {
    /// Validation images the open filters covered, and per filter Σ change and Σ change² (over
    /// the images it covered).
    covered: usize,
    sums: Vec<i64>,
    squares: Vec<i64>,
    /// Σ change_j · change_k over the images, `m × m`.
    products: Vec<i64>,
    filters: usize,
}

impl Paired {
    fn new(filters: usize) -> Paired {
        Paired { covered: 0, sums: vec![0; filters], squares: vec![0; filters], products: vec![0; filters.saturating_mul(filters)], filters }
    }

    /// Adds one validation image's changes, `(filter, change)` for the filters it changed.
    fn add(&mut self, changes: &[(usize, i64)]) {
        for &(j, a) in changes {
            for &(k, b) in changes {
                if let Some(p) = self.products.get_mut(j * self.filters + k) {
                    *p += a * b;
                }
            }
        }
    }

    /// The interval (integers, both ends in) on count_k − count_j over all of T_val*: the mean
    /// paired difference scaled to all K validation images, ± z standard errors of sampling
    /// without replacement; one flipped image is added to the spread so that a sample in which
    /// the two never differ does not claim certainty. A point once every image is covered.
    fn difference(&self, k: usize, j: usize, clusters: usize, z: f64) -> (f64, f64) {
        let get = |v: &[i64], i: usize| v.get(i).copied().unwrap_or(0) as f64;
        let n = self.covered as f64;
        let total = clusters as f64;
        let sum = get(&self.sums, k) - get(&self.sums, j);
        let centre = total * sum / n.max(1.0);
        if self.covered >= clusters {
            return (centre, centre);
        }
        if self.covered < 2 {
            return (f64::NEG_INFINITY, f64::INFINITY);
        }
        let squares = get(&self.squares, k) + get(&self.squares, j) - 2.0 * get(&self.products, j * self.filters + k);
        let spread = (squares - sum * sum / n).max(0.0) + 1.0;
        let half = z * (total * total * (1.0 - n / total) * spread / (n - 1.0) / n).sqrt();
        ((centre - half).ceil(), (centre + half).floor())
    }
}

/// Settles each open filter that the paired intervals put beyond doubt among the blamed ones
/// (fewer open filters than the blamed places left could rank above it) or after them (at least
/// that many rank above it whatever the counts in their intervals); ties rank by index, as in
/// the exact ranking. Settled filters take no part: a blamed one holds a place, a cleared one none.
fn settle(filters: &mut [Filter], paired: &Paired, clusters: usize, blamed: usize, z: f64) {
    let places = blamed.saturating_sub(filters.iter().filter(|f| f.state == State::Blamed).count());
    let open: Vec<usize> = (0..filters.len()).filter(|&j| filters.get(j).is_some_and(|f| f.state == State::Open)).collect();
    let decisions: Vec<(usize, Option<State>)> = open
        .iter()
        .map(|&j| {
            let (mut possibly, mut surely) = (0, 0);
            for &k in open.iter().filter(|&&k| k != j) {
                let (low, high) = paired.difference(k, j, clusters, z);
                possibly += usize::from(high > 0.0 || (high == 0.0 && k < j));
                surely += usize::from(low > 0.0 || (low == 0.0 && k < j));
            }
            let decision = if possibly < places {
                Some(State::Blamed)
            } else if surely >= places {
                Some(State::Cleared)
            } else {
                None
            };
            (j, decision)
        })
        .collect();
    for (j, decision) in decisions {
        if let (Some(filter), Some(state)) = (filters.get_mut(j), decision) {
            filter.state = state;
        }
    }
}

/// Screens one layer: the count per filter (exact, or the scaled estimate of a filter settled
/// before it covered T_val*) and how the layer was settled.
pub(super) fn layer(model: &ModelProto, conv: &ConvInfo, io: &ModelIo, stages: &Stages, options: &BackendOptions, settings: &ScreenSettings) -> Result<(Vec<usize>, LayerScreen)> {
    let blamed = super::artifact::blamed_count(conv.filters, settings.kappa);
    let mut filters = vec![Filter { covered: 0, state: State::Open }; conv.filters];
    let mut paired = Paired::new(conv.filters);
    let mut runs = Vec::new();
    let copies = i64::try_from(stages.copies).map_err(|_| Error::Internal("too many copies of one image".into()))?;
    for increment in &stages.increments {
        let open: Vec<bool> = filters.iter().map(|f| f.state == State::Open).collect();
        let count = open.iter().filter(|&&o| o).count();
        if count == 0 {
            break;
        }
        let run = fast::layer(model, conv, io, &increment.data, options, &increment.original, Some(&open))?;
        runs.push(StageRun { images: increment.data.len(), filters: count });
        // Per validation image of the increment, the open filters' changes.
        let mut changes: Vec<Vec<(usize, i64)>> = vec![Vec::new(); increment.size];
        for (j, flips) in run.flips.iter().enumerate().filter(|(j, _)| open.get(*j) == Some(&true)) {
            for &(image, gained) in flips {
                let image_changes = increment.cluster.get(image).and_then(|&c| changes.get_mut(c)).ok_or_else(|| Error::Internal("a flipped image outside the stage".into()))?;
                let step = if gained { 1 } else { -1 };
                match image_changes.last_mut() {
                    Some((last, change)) if *last == j => *change += step,
                    _ => image_changes.push((j, step)),
                }
            }
        }
        for image_changes in &changes {
            for &(j, change) in image_changes {
                if change.abs() > copies {
                    return Err(Error::Internal("a validation image changed more often than it has copies".into()));
                }
                if let (Some(sum), Some(square)) = (paired.sums.get_mut(j), paired.squares.get_mut(j)) {
                    *sum += change;
                    *square += change * change;
                }
            }
            paired.add(image_changes);
        }
        for filter in filters.iter_mut().filter(|f| f.state == State::Open) {
            filter.covered = increment.covered;
        }
        paired.covered = increment.covered;
        settle(&mut filters, &paired, stages.clusters, blamed, settings.z);
    }
    let images: usize = stages.increments.iter().map(|i| i.data.len()).sum();
    // Exact once every validation image is covered, else the change scaled to all of them.
    let estimate = |f: &Filter, sum: i64| stages.correct0 as f64 + stages.clusters as f64 * sum as f64 / (f.covered as f64).max(1.0);
    let correct: Vec<usize> = filters.iter().zip(&paired.sums).map(|(f, &sum)| estimate(f, sum).round().clamp(0.0, images as f64) as usize).collect();
    // Settled blamed filters first, then those still open (exact by now), then the cleared ones.
    let mut order: Vec<usize> = (0..filters.len()).collect();
    order.sort_by_key(|&j| (filters.get(j).map(|f| f.state), std::cmp::Reverse(correct.get(j).copied()), j));
    let mut chosen: Vec<usize> = order.into_iter().take(blamed).collect();
    chosen.sort_unstable();
    let exact = filters.iter().enumerate().filter(|(_, f)| f.covered >= stages.clusters).map(|(j, _)| j).collect();
    Ok((correct, LayerScreen { blamed: chosen, exact, stages: runs }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_start_at_an_eighth_and_double() {
        let settings = ScreenSettings::new(0.25, 2022);
        assert_eq!(settings.schedule(1000), vec![125, 250, 500, 1000]);
        assert_eq!(settings.schedule(60), vec![16, 32, 60]);
        assert_eq!(settings.schedule(10), vec![10]);
    }

    #[test]
    fn paired_intervals_settle_filters_beyond_the_boundary_only() {
        // Four filters over 8 of 100 validation images: 0 gains on every image, 3 loses on every
        // image, 1 and 2 change on the same fragile images alike.
        let mut paired = Paired::new(4);
        for image in 0..8 {
            let mut changes = vec![(0, 2), (3, -2)];
            if image % 2 == 0 {
                changes.extend([(1, 1), (2, 1)]);
            }
            for &(j, c) in &changes {
                paired.sums[j] += c;
                paired.squares[j] += c * c;
            }
            paired.add(&changes);
        }
        paired.covered = 8;
        let open = Filter { covered: 8, state: State::Open };
        let mut filters = vec![open; 4];
        settle(&mut filters, &paired, 100, 2, 3.0);
        // 1 and 2 never differ, so only the pseudo-flip keeps them apart: both open at the boundary.
        assert_eq!(filters.iter().map(|f| f.state).collect::<Vec<_>>(), vec![State::Blamed, State::Open, State::Open, State::Cleared]);
        // On all images the differences are exact: equal counts rank by index, 1 before 2.
        paired.covered = 100;
        settle(&mut filters, &paired, 100, 2, 3.0);
        assert_eq!(filters.iter().map(|f| f.state).collect::<Vec<_>>(), vec![State::Blamed, State::Blamed, State::Cleared, State::Cleared]);
    }
}
