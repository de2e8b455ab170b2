//! The `assess` artifact: scores, rankings and blamed filters from exact counts; the partial
//! artifact a killed run resumes from; shards and their merge.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Counts, LayerRecord, LayerScreen, ScreenSettings};
use crate::error::{Error, Result};

/// One layer of the artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerScores {
    /// Position among the [`assessable`] convolutions.
    pub index: usize,
    pub name: String,
    pub filters: usize,
    /// δ_j = acc_j − acc₀, in percent.
    pub scores: Vec<f64>,
    /// Correct predictions with channel j zeroed (the exact values behind `scores`).
    pub correct: Vec<usize>,
    /// Channels by δ descending, ties by index.
    pub ranking: Vec<usize>,
    /// The first ⌊κ·m⌋ of `ranking`, ascending.
    pub blamed: Vec<usize>,
    /// From the screened method: which counts are exact and the stages run. The other counts
    /// (and their scores) are scaled estimates, and `ranking` puts the blamed filters first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screen: Option<LayerScreen>,
}

/// The `assess` artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assessment {
    pub model_sha256: String,
    pub data_fingerprint: String,
    /// Size of T_val* and the original model's correct predictions and accuracy (percent) on it.
    pub images: usize,
    pub correct0: usize,
    pub acc0: f64,
    pub kappa: f64,
    /// `naive`, `fast` or `screened`.
    pub method: String,
    /// The screened method's settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screen: Option<ScreenSettings>,
    /// Assessable convolutions of the model; `layers` holds all of them unless `shard` is set.
    pub layers_total: usize,
    /// The part of the layers this artifact holds (absent: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
    pub layers: Vec<LayerScores>,
}

/// Channels sorted by `correct` descending (δ descending), ties by index. Integer counts rank
/// exactly where rounded percentages could tie or cross.
pub fn ranking(correct: &[usize]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..correct.len()).collect();
    order.sort_by(|&a, &b| correct[b].cmp(&correct[a]).then(a.cmp(&b)));
    order
}

/// ⌊κ·m⌋ of `filters` m.
pub(super) fn blamed_count(filters: usize, kappa: f64) -> usize {
    ((kappa * filters as f64).floor().max(0.0) as usize).min(filters)
}

/// The first ⌊κ·m⌋ channels of `ranking`, ascending.
pub fn blamed(ranking: &[usize], kappa: f64) -> Vec<usize> {
    let count = blamed_count(ranking.len(), kappa);
    let mut chosen = ranking.iter().take(count).copied().collect::<Vec<_>>();
    chosen.sort_unstable();
    chosen
}

/// Percent of `total`.
fn percent(count: usize, total: usize) -> f64 {
    if total == 0 { 0.0 } else { 100.0 * count as f64 / total as f64 }
}

impl Assessment {
    /// Scores, rankings and blamed filters from exact counts.
    pub fn from_counts(counts: &Counts, kappa: f64, model_sha256: String, data_fingerprint: String, method: &str, layers_total: usize) -> Result<Assessment> {
        if !(0.0..=1.0).contains(&kappa) {
            return Err(Error::Config(format!("kappa {kappa} is not in [0, 1]")));
        }
        let acc0 = percent(counts.correct0, counts.total);
        let layers = counts
            .layers
            .iter()
            .map(|l| {
                let ranking = ranking(&l.correct);
                LayerScores {
                    index: l.index,
                    name: l.name.clone(),
                    filters: l.filters,
                    scores: l.correct.iter().map(|&c| percent(c, counts.total) - acc0).collect(),
                    correct: l.correct.clone(),
                    blamed: blamed(&ranking, kappa),
                    ranking,
                    screen: None,
                }
            })
            .collect();
        Ok(Assessment {
            model_sha256,
            data_fingerprint,
            images: counts.total,
            correct0: counts.correct0,
            acc0,
            kappa,
            method: method.into(),
            screen: None,
            layers_total,
            shard: None,
            layers,
        })
    }

    /// The screened method's result: per layer the blamed filters it settled (first in the
    /// ranking, the rest by count) and how; `records` holds every layer of `self`.
    pub(super) fn screened(mut self, settings: &ScreenSettings, records: &[LayerRecord]) -> Result<Assessment> {
        if settings.kappa != self.kappa {
            return Err(Error::Internal(format!("a screen for κ = {} in an artifact for κ = {}", settings.kappa, self.kappa)));
        }
        for layer in &mut self.layers {
            let screen = records.iter().find(|r| r.counts.index == layer.index).and_then(|r| r.screen.clone());
            let screen = screen.ok_or_else(|| Error::Internal(format!("layer {} has no screen", layer.index)))?;
            let blamed = &screen.blamed;
            layer.ranking.sort_by_key(|j| (!blamed.contains(j), std::cmp::Reverse(layer.correct.get(*j).copied()), *j));
            layer.blamed = blamed.clone();
            layer.screen = Some(screen);
        }
        self.screen = Some(settings.clone());
        Ok(self)
    }

    /// A terminal summary: acc₀ and per layer the best and worst δ and the blamed filters.
    pub fn summary(&self) -> String {
        let mut text = format!("acc0 {:.2} % on {} T_val* images ({} correct), κ = {}\n", self.acc0, self.images, self.correct0, self.kappa);
        let screens: Vec<&LayerScreen> = self.layers.iter().filter_map(|l| l.screen.as_ref()).collect();
        if !screens.is_empty() {
            let filters: usize = self.layers.iter().map(|l| l.filters).sum();
            let exact: usize = screens.iter().map(|s| s.exact.len()).sum();
            let work: usize = screens.iter().map(|s| s.work()).sum();
            let share = percent(work, filters.saturating_mul(self.images));
            text += &format!("screened: {exact} of {filters} filters counted exactly; {share:.1} % of the exact method's masked images run\n");
        }
        text += &format!("{:<32} {:>7} {:>9} {:>9}  blamed\n", "layer", "filters", "best δ", "worst δ");
        for l in &self.layers {
            let best = l.ranking.first().map_or(0.0, |&j| l.scores[j]);
            let worst = l.ranking.last().map_or(0.0, |&j| l.scores[j]);
            let blamed: Vec<String> = l.blamed.iter().map(usize::to_string).collect();
            text += &format!("{:<32} {:>7} {:>+9.3} {:>+9.3}  {}\n", l.name, l.filters, best, worst, blamed.join(","));
        }
        text
    }
}

/// One part of the layers, `index/count` (0-based): layer k belongs to shard k mod count, so the
/// parts get early, wide and late layers alike. Lets an orchestrator fan `assess` out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The layer indices of this shard among `total`.
    pub fn layers(self, total: usize) -> Vec<usize> {
        (0..total).filter(|k| k % self.count == self.index).collect()
    }
}

impl std::str::FromStr for Shard {
    type Err = Error;
    fn from_str(text: &str) -> Result<Shard> {
        let bad = || Error::Config(format!("shard '{text}': expected i/n with 0 ≤ i < n"));
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let (index, count) = (i.trim().parse::<usize>().map_err(|_| bad())?, n.trim().parse::<usize>().map_err(|_| bad())?);
        if index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Serialize for Shard {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Shard {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

/// First line of a partial artifact: what the recorded layers were computed for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct PartialHeader {
    pub(super) model_sha256: String,
    pub(super) data_fingerprint: String,
    pub(super) images: usize,
    pub(super) layers: Vec<usize>,
    /// The screen's settings (absent: an exact method).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) screen: Option<ScreenSettings>,
}

/// Where a run with `--out FILE` records finished layers: `FILE.partial`, JSON lines.
pub fn partial_path(out: &Path) -> std::path::PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".partial");
    name.into()
}

/// One layer's line in the partial artifact, with the SHA-256 of the record's JSON: a record
/// changed on disk is recomputed, never believed.
#[derive(Serialize, Deserialize)]
struct CheckedRecord {
    sha256: String,
    record: LayerRecord,
}

fn record_sha256(record: &LayerRecord) -> Result<String> {
    use sha2::{Digest, Sha256};
    let json = serde_json::to_string(record).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(Sha256::digest(json.as_bytes()).iter().map(|b| format!("{b:02x}")).collect())
}

/// The layers a previous run recorded for the same model, data and layers. Records of another
/// run are dropped silently; a torn line (the run was killed while writing it), a record whose
/// checksum or counts do not hold, or a layer recorded twice is dropped with a warning, and those
/// layers are assessed again.
pub(super) fn read_partial(path: &Path, header: &PartialHeader) -> Vec<LayerRecord> {
    let Ok(text) = crate::onnx::io::read_text(path, crate::onnx::io::TEXT_LIMIT) else { return Vec::new() };
    let mut lines = text.lines();
    match lines.next().map(serde_json::from_str::<PartialHeader>) {
        Some(Ok(found)) if found == *header => {}
        _ => return Vec::new(),
    }
    let mut kept: Vec<LayerRecord> = Vec::new();
    for (number, line) in lines.enumerate() {
        let record = serde_json::from_str::<CheckedRecord>(line).ok().filter(|c| record_sha256(&c.record).ok().as_deref() == Some(c.sha256.as_str()));
        match record.map(|c| c.record) {
            Some(r) if header.layers.contains(&r.counts.index)
                && r.counts.correct.len() == r.counts.filters
                && r.counts.correct.iter().all(|&c| c <= header.images)
                && r.screen.is_some() == header.screen.is_some()
                && !kept.iter().any(|k| k.counts.index == r.counts.index) => kept.push(r),
            _ => crate::progress::info(&format!("warning: {}: record {} is damaged or repeated; its layer is assessed again", path.display(), number + 1)),
        }
    }
    kept
}

/// Appends JSON lines to the partial artifact, each on disk before the next layer starts.
pub(super) struct PartialWriter {
    file: std::fs::File,
    path: std::path::PathBuf,
}

impl PartialWriter {
    /// Rewrites the partial artifact with `header` and the `done` layers, then keeps it open.
    pub(super) fn create(path: std::path::PathBuf, header: &PartialHeader, done: &[LayerRecord]) -> Result<PartialWriter> {
        let mut text = json_line(header)?;
        for layer in done {
            text += &checked_line(layer)?;
        }
        crate::onnx::io::write_atomically(&path, text.as_bytes())?;
        let file = std::fs::OpenOptions::new().append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        Ok(PartialWriter { file, path })
    }

    pub(super) fn append(&mut self, layer: &LayerRecord) -> Result<()> {
        use std::io::Write;
        self.file.write_all(checked_line(layer)?.as_bytes()).map_err(|e| Error::io(&self.path, e))?;
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
    }
}

fn checked_line(layer: &LayerRecord) -> Result<String> {
    json_line(&CheckedRecord { sha256: record_sha256(layer)?, record: layer.clone() })
}

fn json_line(value: &impl Serialize) -> Result<String> {
    Ok(serde_json::to_string(value).map_err(|e| Error::Internal(e.to_string()))? + "\n")
}

/// Writes `assessment` as pretty JSON, atomically.
pub fn save(assessment: &Assessment, path: &Path) -> Result<()> {
    let text = serde_json::to_string_pretty(assessment).map_err(|e| Error::Internal(e.to_string()))? + "\n";
    crate::onnx::io::write_atomically(path, text.as_bytes())
}

/// Reads an artifact written by [`save`].
pub fn load(path: &Path) -> Result<Assessment> {
    let bytes = crate::onnx::io::read_input(path, crate::onnx::io::TEXT_LIMIT)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::data(path, format!("not an assessment artifact: {e}")))
}

/// Joins shard artifacts of one model, data and κ into the artifact of an unsharded run; screened
/// shards only with screened shards of the same settings.
pub fn merge(parts: &[Assessment]) -> Result<Assessment> {
    let first = parts.first().ok_or_else(|| Error::Config("nothing to merge".into()))?;
    let mut merged = Assessment { shard: None, layers: Vec::new(), ..first.clone() };
    for part in parts {
        let same = part.model_sha256 == first.model_sha256
            && part.data_fingerprint == first.data_fingerprint
            && part.images == first.images
            && part.correct0 == first.correct0
            && part.kappa == first.kappa
            && part.layers_total == first.layers_total;
        if !same {
            return Err(Error::Config("the artifacts to merge differ in model, data, κ or acc0".into()));
        }
        if part.screen != first.screen {
            return Err(Error::Config("the artifacts to merge differ in method: a screened artifact merges only with screened shards of the same settings".into()));
        }
        if part.method != merged.method {
            merged.method = "mixed".into();
        }
        for layer in &part.layers {
            if merged.layers.iter().any(|l| l.index == layer.index) {
                return Err(Error::Config(format!("layer {} ({}) is in more than one artifact", layer.index, layer.name)));
            }
            merged.layers.push(layer.clone());
        }
    }
    merged.layers.sort_by_key(|l| l.index);
    if let Some(missing) = (0..merged.layers_total).find(|k| merged.layers.get(*k).is_none_or(|l| l.index != *k)) {
        return Err(Error::Config(format!("layer {missing} is in none of the artifacts (missing shard?)")));
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assess::LayerCounts;

    #[test]
    fn ranking_sorts_by_score_then_index() {
        let correct = [5, 7, 5, 9, 7, 1, 5, 7];
        assert_eq!(ranking(&correct), vec![3, 1, 4, 7, 0, 2, 6, 5]);
        // κ = 0.25 of 8 filters blames 2: the two best, ascending.
        assert_eq!(blamed(&ranking(&correct), 0.25), vec![1, 3]);
        // ⌊0.5·8⌋ = 4: the tie among 1, 4, 7 at score 7 is broken by index, all three in.
        assert_eq!(blamed(&ranking(&correct), 0.5), vec![1, 3, 4, 7]);
        // ⌊0.3·8⌋ = 2; ⌊0.2·3⌋ = 0.
        assert_eq!(blamed(&ranking(&correct), 0.3), vec![1, 3]);
        assert_eq!(blamed(&ranking(&[4, 4, 4]), 0.2), Vec::<usize>::new());
        // Ties among equal counts go to the lower index.
        assert_eq!(blamed(&ranking(&[4, 4, 4, 4]), 0.5), vec![0, 1]);
    }

    #[test]
    fn scores_are_percent_differences() {
        let counts = Counts { total: 200, correct0: 100, layers: vec![LayerCounts { index: 0, name: "c".into(), filters: 4, correct: vec![100, 102, 99, 102] }] };
        let a = Assessment::from_counts(&counts, 0.25, "m".into(), "d".into(), "fast", 1).unwrap();
        assert_eq!(a.acc0, 50.0);
        assert_eq!(a.layers[0].scores, vec![0.0, 1.0, -0.5, 1.0]);
        assert_eq!(a.layers[0].ranking, vec![1, 3, 0, 2]);
        assert_eq!(a.layers[0].blamed, vec![1]);
        assert!(Assessment::from_counts(&counts, 1.5, "m".into(), "d".into(), "fast", 1).is_err());
    }

    /// Scores read back (resume, merge, training) are the scores written, to the last bit: a
    /// merged artifact equals an unsharded run's byte for byte only then.
    #[test]
    fn saved_scores_read_back_bit_for_bit() {
        // 100·33/120 − 100·35/120 is written -1.6666666666666679, which serde_json's default
        // (fast, not exact) float parser read back one ulp off (a merged artifact differed).
        let counts = Counts { total: 120, correct0: 35, layers: vec![LayerCounts { index: 0, name: "c".into(), filters: 2, correct: vec![33, 37] }] };
        let written = Assessment::from_counts(&counts, 0.5, "m".into(), "d".into(), "fast", 1).unwrap();
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("a.json");
        save(&written, &path).unwrap();
        let read = load(&path).unwrap();
        let bits = |a: &Assessment| a.layers[0].scores.iter().map(|s| s.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&read), bits(&written));
    }
}
