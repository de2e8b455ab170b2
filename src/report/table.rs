//! Tables: aligned text for the terminal and GitHub-flavoured Markdown.

use super::{AccuracyRow, Report, Shares};

/// Label of the line that follows the served row of a patched model.
const ADAPTED_LABEL: &str = "adapted %";

fn header(rows: &[AccuracyRow]) -> Vec<String> {
    let mut columns = vec!["model".to_string(), "std".to_string()];
    for group in rows.first().map(|r| r.groups.as_slice()).unwrap_or_default() {
        let names = &group.accuracy.names;
        columns.extend(group.accuracy.levels.iter().map(|(key, _)| format!("{}{key}", names.column_prefix)));
        columns.push(names.rob_title.clone());
        columns.extend(names.levels_only_title.clone());
    }
    columns.push("joint".to_string());
    columns
}

fn cells(row: &AccuracyRow) -> Vec<String> {
    let mut cells = vec![row.label.clone(), format!("{:.2}", row.std)];
    for group in &row.groups {
        cells.extend(group.accuracy.levels.iter().map(|(_, a)| format!("{a:.2}")));
        cells.push(format!("{:.2}", group.rob));
        cells.extend(group.accuracy.names.levels_only_title.as_ref().map(|_| format!("{:.2}", group.levels_only)));
    }
    cells.push(format!("{:.2}", row.joint));
    cells
}

/// The share of adapted samples per condition; the means and joint are left empty, as in the paper.
fn adapted_cells(shares: &Shares) -> Vec<String> {
    let mut cells = vec![ADAPTED_LABEL.to_string(), format!("{:.2}", shares.std)];
    for group in &shares.groups {
        cells.extend(group.levels.iter().map(|(_, s)| format!("{s:.2}")));
        cells.push(String::new());
        cells.extend(group.names.levels_only_title.as_ref().map(|_| String::new()));
    }
    cells.push(String::new());
    cells
}

/// Every line of the table body: the rows, and the adapted shares after the primary (served) row.
fn body(report: &Report) -> Vec<Vec<String>> {
    let mut lines = Vec::new();
    for (i, row) in report.rows.iter().enumerate() {
        lines.push(cells(row));
        if let Some(shares) = row.adapted.as_ref().filter(|_| i == report.primary) {
            lines.push(adapted_cells(shares));
        }
    }
    lines
}

/// What a patched model's report says below the table: the rule and the contract checks.
fn patch_notes(report: &Report) -> Vec<String> {
    let Some(patch) = &report.patch else { return Vec::new() };
    vec![
        format!(
            "decision: {}; DP-γ batch-{}: one decision per {} consecutive images by majority of the flags; oracle: clean images on PT, corrupted ones on DP-β.",
            decision_summary(&patch.decision),
            patch.majority_batch,
            patch.majority_batch
        ),
        format!(
            "DP-fb differs from PT on {} of {} predictions; DP-γ differs from the PT or DP-β prediction its flag selects on {}.",
            patch.fallback_differs, patch.predictions, patch.served_differs_from_routed
        ),
    ]
}

/// The recorded decision in one short line, whatever the rule: `rule (field value, …)`, arrays
/// (a probe's weights) by their length only; the JSON report keeps every value.
fn decision_summary(decision: &serde_json::Value) -> String {
    let Some(fields) = decision.as_object() else { return decision.to_string() };
    let rule = fields.get("rule").and_then(|r| r.as_str()).unwrap_or("unknown rule");
    let described: Vec<String> = fields
        .iter()
        .filter(|(key, _)| *key != "rule")
        .map(|(key, value)| match value.as_array() {
            Some(values) => format!("{key}: {} values", values.len()),
            None => format!("{key} {}", value.as_str().map_or_else(|| value.to_string(), String::from)),
        })
        .collect();
    format!("{rule} ({})", described.join(", "))
}

/// An aligned plain-text table (widths in characters: labels hold β and γ).
pub fn terminal(report: &Report) -> String {
    let mut lines = vec![header(&report.rows)];
    lines.extend(body(report));
    let widths: Vec<usize> = (0..lines[0].len()).map(|c| lines.iter().map(|l| l.get(c).map_or(0, |cell| cell.chars().count())).max().unwrap_or(0)).collect();
    let mut out = format!("{} on {} images ({}), backend {}\n", report.model, report.images, report.data, report.backend);
    for line in &lines {
        let padded: Vec<String> = line
            .iter()
            .enumerate()
            .map(|(c, cell)| if c == 0 { format!("{cell:<w$}", w = widths[c]) } else { format!("{cell:>w$}", w = widths[c]) })
            .collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    }
    for note in patch_notes(report) {
        out.push_str(&note);
        out.push('\n');
    }
    out
}

/// A Markdown table with a one-line caption.
pub fn markdown(report: &Report) -> String {
    let head = header(&report.rows);
    let mut out = format!(
        "Accuracy (%) of `{}` on {} images of `{}`, backend {}.\n\n| {} |\n|{}|\n",
        report.model,
        report.images,
        report.data,
        report.backend,
        head.join(" | "),
        head.iter().enumerate().map(|(c, _)| if c == 0 { "---" } else { "---:" }).collect::<Vec<_>>().join("|")
    );
    for line in body(report) {
        out.push_str(&format!("| {} |\n", line.join(" | ")));
    }
    for note in patch_notes(report) {
        out.push('\n');
        out.push_str(&note);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::sample;
    use super::*;

    #[test]
    fn markdown_lists_every_column() {
        let text = markdown(&sample());
        assert!(text.contains("| model | std | blur0.5 | blur1.0 | nRob | joint |"), "{text}");
        assert!(text.contains("| PT | 80.00 | 79.00 | 30.00 | 63.00 | 143.00 |"), "{text}");
    }

    #[test]
    fn spatial_columns_and_both_means() {
        let spatial = super::super::GroupCounts {
            names: crate::data::CorruptionKind::Spatial.names(),
            levels: (1..=5).map(|k| (format!("{k}/5"), 50 - k, 100)).collect(),
        };
        let mut report = sample();
        report.rows = vec![AccuracyRow::from_counts("PT", 100, 90, &[spatial])];
        let text = markdown(&report);
        assert!(text.contains("| model | std | spat1/5 | spat2/5 | spat3/5 | spat4/5 | spat5/5 | sRob | sRob (levels) | joint |"), "{text}");
        assert!(text.contains("| PT | 90.00 | 49.00 | 48.00 | 47.00 | 46.00 | 45.00 | 54.17 | 47.00 | 144.17 |"), "{text}");
    }

    #[test]
    fn terminal_aligns_columns() {
        let text = terminal(&sample());
        let lines: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].starts_with("PT   ") && lines[1].ends_with("143.00"), "{text}");
    }

    #[test]
    fn adapted_shares_follow_the_served_row() {
        let mut report = sample();
        report.primary = 1;
        let text = markdown(&report);
        assert!(text.contains("| DP | 81.00 | 80.00 | 70.00 | 77.00 | 158.00 |\n| adapted % | 5.00 | 50.00 | 96.00 |  |  |\n"), "{text}");
        let lines: Vec<String> = terminal(&report).lines().map(String::from).collect();
        assert_eq!(lines.len(), 5);
        assert!(lines[4].starts_with("adapted %") && lines[4].ends_with("96.00"), "{lines:?}");
        report.primary = 0;
        assert!(!terminal(&report).contains(ADAPTED_LABEL));
    }

    #[test]
    fn decisions_are_summarised_whatever_the_rule() {
        let cr = serde_json::json!({"rule": "cr", "boundary": 0.45, "direction": "below", "mu_aug": null});
        assert_eq!(decision_summary(&cr), "cr (boundary 0.45, direction below, mu_aug null)");
        let probe = serde_json::json!({"rule": "probe", "bias": 0.5, "weights": [1.0, 2.0, 3.0]});
        assert_eq!(decision_summary(&probe), "probe (bias 0.5, weights: 3 values)");
        assert_eq!(decision_summary(&serde_json::Value::Null), "null");
    }
}
