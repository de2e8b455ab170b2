//! Reports of accuracy under corruption: a terminal table, JSON, Markdown and an SVG chart.
//!
//! Definitions (BRIEF §6): std = accuracy on the clean test set; blurσ = accuracy on its σ-blurred
//! copy; nRob = accuracy over the clean set and every blurred copy together; joint = std + nRob.

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
}

impl AccuracyRow {
    /// Builds a row from counts of correct predictions: `clean` and one count per σ, all over
    /// `images` images.
    pub fn from_counts(label: impl Into<String>, images: usize, clean: usize, blurred: &[(f32, usize)]) -> Self {
        let percent = |correct: usize| 100.0 * correct as f64 / images.max(1) as f64;
        let all: usize = clean + blurred.iter().map(|(_, c)| c).sum::<usize>();
        let std = percent(clean);
        let nrob = 100.0 * all as f64 / (images.max(1) * (blurred.len() + 1)) as f64;
        AccuracyRow {
            label: label.into(),
            std,
            blur: blurred.iter().map(|&(sigma, c)| (sigma, percent(c))).collect(),
            nrob,
            joint: std + nrob,
        }
    }
}

/// A report: what was evaluated, on what, and the rows.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub model: String,
    pub backend: String,
    pub data: String,
    pub images: usize,
    pub rows: Vec<AccuracyRow>,
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

/// The JSON form: the first row's figures at the top level (`std`, `blur`, `nrob`, `joint`), then
/// the context and every row.
pub fn json(report: &Report) -> serde_json::Value {
    let mut value = match report.rows.first() {
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
                AccuracyRow::from_counts("DP", 100, 81, &[(0.5, 80), (1.0, 70)]),
            ],
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
        assert_eq!(sigma_key(0.25), "0.25");
    }
}
