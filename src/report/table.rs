//! Tables: aligned text for the terminal and GitHub-flavoured Markdown.

use super::{sigma_key, AccuracyRow, Report};

fn header(rows: &[AccuracyRow]) -> Vec<String> {
    let sigmas: Vec<String> = rows.first().map(|r| r.blur.iter().map(|(s, _)| format!("blur{}", sigma_key(*s))).collect()).unwrap_or_default();
    let mut columns = vec!["model".to_string(), "std".to_string()];
    columns.extend(sigmas);
    columns.extend(["nRob".to_string(), "joint".to_string()]);
    columns
}

fn cells(row: &AccuracyRow) -> Vec<String> {
    let mut cells = vec![row.label.clone(), format!("{:.2}", row.std)];
    cells.extend(row.blur.iter().map(|(_, a)| format!("{a:.2}")));
    cells.extend([format!("{:.2}", row.nrob), format!("{:.2}", row.joint)]);
    cells
}

/// An aligned plain-text table.
pub fn terminal(report: &Report) -> String {
    let mut lines = vec![header(&report.rows)];
    lines.extend(report.rows.iter().map(cells));
    let widths: Vec<usize> = (0..lines[0].len()).map(|c| lines.iter().map(|l| l.get(c).map_or(0, String::len)).max().unwrap_or(0)).collect();
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
    for row in &report.rows {
        out.push_str(&format!("| {} |\n", cells(row).join(" | ")));
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
    fn terminal_aligns_columns() {
        let text = terminal(&sample());
        let lines: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].starts_with("PT   ") && lines[1].ends_with("143.00"), "{text}");
    }
}
