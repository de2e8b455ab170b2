//! Reports of accuracy under corruption: a terminal table, JSON, Markdown and an SVG chart.
//!
//! Definitions (docs/specification.md §7): std = accuracy on the clean test set; blurσ = accuracy on its σ-blurred
//! copy; nRob = accuracy over the clean set and every blurred copy together; joint = std + nRob. Other
//! corruptions have their own columns and mean the same way (sRob for spatial, with the clean set;
//! `sRob (levels)` without it); with several, joint = std + the mean of their robustness means.
//! A γ-patched model adds the share of samples routed to the replacement filters per condition.
//! The file forms are described in docs/reports.md.

pub mod histogram;
mod svg;
mod table;

use serde::Serialize;

pub use crate::data::corruption::GroupNames;

pub use svg::chart;
pub use table::{markdown, terminal};

/// One corruption's columns: its names and (level key, value) per level.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupValues {
    pub names: GroupNames,
    pub levels: Vec<(String, f64)>,
}

/// One corruption's figures in a row, in percent.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupAccuracy {
    /// Accuracy per level.
    pub accuracy: GroupValues,
    /// The robustness mean (nRob, sRob, …): accuracy over the clean set and every level together,
    /// as the paper's nRob.
    pub rob: f64,
    /// Accuracy over the levels alone (the paper's sRob), reported for every corruption but blur.
    pub levels_only: f64,
}

/// Correct predictions on one corruption's levels: (key, correct, images) per level.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupCounts {
    pub names: GroupNames,
    pub levels: Vec<(String, usize, usize)>,
}

/// One evaluated model (or one routing of a patched model): a row of the table, in percent.
#[derive(Debug, Clone, PartialEq)]
pub struct AccuracyRow {
    pub label: String,
    pub std: f64,
    /// Per corruption, in the order evaluated.
    pub groups: Vec<GroupAccuracy>,
    /// std + the mean of the corruptions' robustness means (std + nRob for blur alone).
    pub joint: f64,
    /// For rows routed by a patched model's flags: the share of samples on the replacement filters.
    pub adapted: Option<Shares>,
}

fn percent(count: usize, images: usize) -> f64 {
    100.0 * count as f64 / images.max(1) as f64
}

impl AccuracyRow {
    /// Builds a row from counts of correct predictions: `clean` of `images` clean images, and each
    /// corruption's levels.
    pub fn from_counts(label: impl Into<String>, images: usize, clean: usize, groups: &[GroupCounts]) -> Self {
        let groups: Vec<GroupAccuracy> = groups
            .iter()
            .map(|g| {
                let correct: usize = g.levels.iter().map(|l| l.1).sum();
                let total: usize = g.levels.iter().map(|l| l.2).sum();
                GroupAccuracy {
                    accuracy: GroupValues { names: g.names.clone(), levels: g.levels.iter().map(|(key, c, n)| (key.clone(), percent(*c, *n))).collect() },
                    rob: percent(clean + correct, images + total),
                    levels_only: percent(correct, total),
                }
            })
            .collect();
        let std = percent(clean, images);
        let joint = std + groups.iter().map(|g| g.rob).sum::<f64>() / groups.len().max(1) as f64;
        AccuracyRow { label: label.into(), std, groups, joint, adapted: None }
    }

    /// The row with the shares of adapted samples attached.
    pub fn with_adapted(self, adapted: Shares) -> Self {
        AccuracyRow { adapted: Some(adapted), ..self }
    }

    /// The robustness mean of the first corruption (nRob for blur).
    pub fn rob(&self) -> f64 {
        self.groups.first().map_or(self.std, |g| g.rob)
    }
}

impl Serialize for AccuracyRow {
    /// `label`, `std`, per corruption its level map and robustness (`blur`, `nrob`; `spatial`,
    /// `srob`, `srob_levels`; ...), `joint`, and `adapted` when set.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("label", &self.label)?;
        map.serialize_entry("std", &self.std)?;
        for group in &self.groups {
            let names = &group.accuracy.names;
            map.serialize_entry(&names.key, &LevelMap(&group.accuracy.levels))?;
            map.serialize_entry(&names.rob_key, &group.rob)?;
            if names.levels_only_title.is_some() {
                map.serialize_entry(&format!("{}_levels", names.rob_key), &group.levels_only)?;
            }
        }
        map.serialize_entry("joint", &self.joint)?;
        if let Some(adapted) = &self.adapted {
            map.serialize_entry("adapted", adapted)?;
        }
        map.end()
    }
}

/// Percentages of the images, per condition: on the clean set, on each corruption's levels, and
/// over all of them together (as nRob).
#[derive(Debug, Clone, PartialEq)]
pub struct Shares {
    pub std: f64,
    pub groups: Vec<GroupValues>,
    pub all: f64,
}

impl Shares {
    /// From counts: `clean` of `images` clean images, and each corruption's levels.
    pub fn from_counts(images: usize, clean: usize, groups: &[GroupCounts]) -> Self {
        let levels = || groups.iter().flat_map(|g| &g.levels);
        Shares {
            std: percent(clean, images),
            groups: groups
                .iter()
                .map(|g| GroupValues { names: g.names.clone(), levels: g.levels.iter().map(|(key, c, n)| (key.clone(), percent(*c, *n))).collect() })
                .collect(),
            all: percent(clean + levels().map(|l| l.1).sum::<usize>(), images + levels().map(|l| l.2).sum::<usize>()),
        }
    }
}

impl Serialize for Shares {
    /// `std`, one level map per corruption (`blur`, `spatial`, ...), `all`.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("std", &self.std)?;
        for group in &self.groups {
            map.serialize_entry(&group.names.key, &LevelMap(&group.levels))?;
        }
        map.serialize_entry("all", &self.all)?;
        map.end()
    }
}

/// What a γ-patched model's report adds: its decision rule as recorded in the model, the batch of
/// the majority-vote row, and how many predictions broke the routing contract.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PatchContext {
    /// The model's `deeppatch.decision` metadata, whatever the rule (null when absent).
    pub decision: serde_json::Value,
    pub majority_batch: usize,
    /// Predictions over all conditions.
    pub predictions: usize,
    /// Samples whose DP-fb prediction differs from PT's (0 by the fallback contract).
    pub fallback_differs: usize,
    /// Samples whose DP-γ prediction differs from the PT or DP-β prediction its flag selects
    /// (0 up to floating-point ties: an adapted sample runs alone, the β model in batches).
    pub served_differs_from_routed: usize,
}

/// A report: what was evaluated, on what, and the rows.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub model: String,
    pub backend: String,
    pub data: String,
    pub images: usize,
    pub rows: Vec<AccuracyRow>,
    /// The row whose figures the JSON repeats at its top level: the model as served.
    pub primary: usize,
    pub patch: Option<PatchContext>,
}

/// The σ as a JSON key and column title: "0.5", "1.0", … (shortest exact form beyond one decimal).
pub fn sigma_key(sigma: f32) -> String {
    if (sigma * 10.0).fract() == 0.0 {
        format!("{sigma:.1}")
    } else {
        format!("{sigma}")
    }
}

/// Levels as a JSON map from their keys.
struct LevelMap<'a>(&'a [(String, f64)]);

impl Serialize for LevelMap<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// The JSON form: the primary row's figures at the top level (`std`, `blur`, `nrob`, `joint`, and
/// `adapted` for a patched model), then the context, the patch context and every row.
pub fn json(report: &Report) -> serde_json::Value {
    let mut value = match report.rows.get(report.primary) {
        Some(row) => serde_json::to_value(row).unwrap_or_default(),
        None => serde_json::json!({}),
    };
    if let Some(object) = value.as_object_mut() {
        object.remove("label");
        object.insert("model".into(), report.model.clone().into());
        object.insert("backend".into(), report.backend.clone().into());
        object.insert("data".into(), report.data.clone().into());
        object.insert("images".into(), report.images.into());
        object.insert("rows".into(), serde_json::to_value(&report.rows).unwrap_or_default());
        if let Some(patch) = &report.patch {
            object.insert("patch".into(), serde_json::to_value(patch).unwrap_or_default());
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blur counts of 100 images per σ.
    pub(crate) fn blur(counts: &[(f32, usize)]) -> Vec<GroupCounts> {
        let levels = counts.iter().map(|&(sigma, c)| (sigma_key(sigma), c, 100)).collect();
        vec![GroupCounts { names: crate::data::CorruptionKind::Blur.names(), levels }]
    }

    pub(super) fn sample() -> Report {
        Report {
            model: "m.onnx".into(),
            backend: "ort".into(),
            data: "test".into(),
            images: 100,
            rows: vec![
                AccuracyRow::from_counts("PT", 100, 80, &blur(&[(0.5, 79), (1.0, 30)])),
                AccuracyRow::from_counts("DP", 100, 81, &blur(&[(0.5, 80), (1.0, 70)])).with_adapted(Shares::from_counts(100, 5, &blur(&[(0.5, 50), (1.0, 96)]))),
            ],
            primary: 0,
            patch: None,
        }
    }

    #[test]
    fn counts_become_the_papers_figures() {
        let row = AccuracyRow::from_counts("PT", 100, 80, &blur(&[(0.5, 79), (1.0, 30)]));
        assert_eq!(row.std, 80.0);
        assert_eq!(row.groups[0].accuracy.levels, vec![("0.5".to_string(), 79.0), ("1.0".to_string(), 30.0)]);
        assert!((row.rob() - 63.0).abs() < 1e-12);
        assert!((row.joint - 143.0).abs() < 1e-12);
        assert!((row.groups[0].levels_only - 54.5).abs() < 1e-12);
    }

    #[test]
    fn json_has_the_contract_keys() {
        let value = json(&sample());
        assert_eq!(value["std"], 80.0);
        assert_eq!(value["blur"]["0.5"], 79.0);
        assert_eq!(value["blur"]["1.0"], 30.0);
        assert_eq!(value["nrob"], 63.0);
        assert_eq!(value["joint"], 143.0);
        assert_eq!(value["rows"][1]["label"], "DP");
        assert_eq!(value.get("adapted"), None);
        assert_eq!(value.get("patch"), None);
        assert_eq!(sigma_key(0.25), "0.25");
        assert_eq!(value.as_object().unwrap().keys().collect::<Vec<_>>(), ["backend", "blur", "data", "images", "joint", "model", "nrob", "rows", "std"]);
    }

    /// Spatial and folder levels: own keys, the mean with and without the clean set, and joint
    /// over both corruptions' means; levels of other sizes than the clean set weigh by their images.
    #[test]
    fn other_corruptions_have_their_own_keys() {
        let spatial = GroupCounts { names: crate::data::CorruptionKind::Spatial.names(), levels: vec![("1/5".into(), 60, 100), ("5/5".into(), 40, 100)] };
        let folder = GroupCounts { names: crate::data::CorruptionKind::Folder("x/field".into()).names(), levels: vec![("night".into(), 10, 20)] };
        let row = AccuracyRow::from_counts("PT", 100, 80, &[spatial, folder]);
        let value = serde_json::to_value(&row).unwrap();
        assert_eq!(value["spatial"]["5/5"], 40.0);
        assert_eq!(value["srob"], 60.0);
        assert_eq!(value["srob_levels"], 50.0);
        assert_eq!(value["folder:field"]["night"], 50.0);
        assert_eq!(value["frob:field"], 75.0);
        assert_eq!(value["joint"], 80.0 + (60.0 + 75.0) / 2.0);
    }

    #[test]
    fn json_of_a_patched_model_leads_with_the_served_row() {
        let mut report = sample();
        report.primary = 1;
        report.patch = Some(PatchContext {
            decision: serde_json::json!({"rule": "cr"}),
            majority_batch: 256,
            predictions: 300,
            fallback_differs: 0,
            served_differs_from_routed: 1,
        });
        let value = json(&report);
        assert_eq!(value["std"], 81.0);
        assert_eq!(value["adapted"]["std"], 5.0);
        assert_eq!(value["adapted"]["blur"]["1.0"], 96.0);
        assert!((value["adapted"]["all"].as_f64().unwrap() - 151.0 / 3.0).abs() < 1e-9);
        assert_eq!(value["rows"][0].get("adapted"), None);
        assert_eq!(value["patch"]["decision"]["rule"], "cr");
        assert_eq!(value["patch"]["served_differs_from_routed"], 1);
    }
}
