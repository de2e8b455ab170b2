//! Reports of accuracy under corruption: a terminal table, JSON, Markdown and an SVG chart.
//!
//! Definitions (docs/specification.md §7): std = accuracy on the clean test set; blurσ = accuracy on its σ-blurred
//! copy; nRob = accuracy over the clean set and every blurred copy together; joint = std + nRob.
//! A γ-patched model adds the share of samples routed to the replacement filters per condition.
//! The file forms are described in docs/reports.md.

pub mod histogram;
mod svg;
mod table;

use serde::Serialize;

pub use svg::chart;
pub use table::{markdown, terminal};

/// One evaluated model (or one routing of a patched model): a row of the table, in percent.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AccuracyRow {
    pub label: String,
    pub std: f64,
    /// (σ, accuracy) in the order evaluated.
    #[serde(serialize_with = "blur_as_map")]
    pub blur: Vec<(f32, f64)>,
    pub nrob: f64,
    pub joint: f64,
    /// For rows routed by a patched model's flags: the share of samples on the replacement filters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapted: Option<Shares>,
}

impl AccuracyRow {
    /// Builds a row from counts of correct predictions: `clean` and one count per σ, all over
    /// `images` images.
    pub fn from_counts(label: impl Into<String>, images: usize, clean: usize, blurred: &[(f32, usize)]) -> Self {
        let Shares { std, blur, all: nrob } = Shares::from_counts(images, clean, blurred);
        AccuracyRow { label: label.into(), std, blur, nrob, joint: std + nrob, adapted: None }
    }

    /// The row with the shares of adapted samples attached.
    pub fn with_adapted(self, adapted: Shares) -> Self {
        AccuracyRow { adapted: Some(adapted), ..self }
    }
}

/// Percentages of the images, per condition: on the clean set, on each blurred copy, and over all
/// of them together (the mean of the conditions, as nRob).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Shares {
    pub std: f64,
    #[serde(serialize_with = "blur_as_map")]
    pub blur: Vec<(f32, f64)>,
    pub all: f64,
}

impl Shares {
    /// From counts: `clean` and one count per σ, each over `images` images.
    pub fn from_counts(images: usize, clean: usize, blurred: &[(f32, usize)]) -> Self {
        let percent = |count: usize| 100.0 * count as f64 / images.max(1) as f64;
        let total: usize = clean + blurred.iter().map(|(_, c)| c).sum::<usize>();
        Shares {
            std: percent(clean),
            blur: blurred.iter().map(|&(sigma, c)| (sigma, percent(c))).collect(),
            all: 100.0 * total as f64 / (images.max(1) * (blurred.len() + 1)) as f64,
        }
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

fn blur_as_map<S: serde::Serializer>(blur: &[(f32, f64)], serializer: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = serializer.serialize_map(Some(blur.len()))?;
    for (sigma, accuracy) in blur {
        map.serialize_entry(&sigma_key(*sigma), accuracy)?;
    }
    map.end()
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

    pub(super) fn sample() -> Report {
        Report {
            model: "m.onnx".into(),
            backend: "ort".into(),
            data: "test".into(),
            images: 100,
            rows: vec![
                AccuracyRow::from_counts("PT", 100, 80, &[(0.5, 79), (1.0, 30)]),
                AccuracyRow::from_counts("DP", 100, 81, &[(0.5, 80), (1.0, 70)]).with_adapted(Shares::from_counts(100, 5, &[(0.5, 50), (1.0, 96)])),
            ],
            primary: 0,
            patch: None,
        }
    }

    #[test]
    fn counts_become_the_papers_figures() {
        let row = AccuracyRow::from_counts("PT", 100, 80, &[(0.5, 79), (1.0, 30)]);
        assert_eq!(row.std, 80.0);
        assert_eq!(row.blur, vec![(0.5, 79.0), (1.0, 30.0)]);
        assert!((row.nrob - 63.0).abs() < 1e-12);
        assert!((row.joint - 143.0).abs() < 1e-12);
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
