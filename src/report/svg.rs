//! An SVG line chart of accuracy against each corruption's levels (blur: against σ, σ = 0 being the
//! clean test set), one line per row and corruption.

use std::fmt::Write;

use super::Report;

pub(super) const WIDTH: f64 = 700.0;
pub(super) const HEIGHT: f64 = 400.0;
pub(super) const LEFT: f64 = 60.0;
// Room for the legend: "DP-γ batch-256 (nRob 63.0)".
const RIGHT: f64 = 210.0;
pub(super) const TOP: f64 = 30.0;
pub(super) const BOTTOM: f64 = 50.0;
pub(super) const COLOURS: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];

pub(super) fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Opens an SVG document of the charts' size: the root element, a white background, the title.
pub(super) fn open_document(svg: &mut String, title: &str) {
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(svg, r#"<text x="{}" y="18" text-anchor="middle" font-size="14">{}</text>"#, WIDTH / 2.0, escape(title));
}

/// Where each corruption's levels sit on the x axis, from its start: at the level's key where
/// every key is a number (blur's σ), else at 1, 2, … in order.
fn positions(levels: &[(String, f64)]) -> Vec<f64> {
    let numbers: Option<Vec<f64>> = levels.iter().map(|(key, _)| key.parse::<f64>().ok().filter(|v| v.is_finite() && *v > 0.0)).collect();
    numbers.unwrap_or_else(|| (1..=levels.len()).map(|i| i as f64).collect())
}

/// The chart as a standalone SVG document: per corruption, accuracy from the clean set (at the
/// corruption's start) through its levels; corruptions side by side.
pub fn chart(report: &Report) -> String {
    let groups = report.rows.first().map(|r| r.groups.as_slice()).unwrap_or_default();
    // Start of each corruption on the x axis: after the previous one's last level, half a step apart.
    let mut starts = Vec::new();
    let mut end = 0.0f64;
    for (i, group) in groups.iter().enumerate() {
        let start = if i == 0 { 0.0 } else { end + 0.5 };
        starts.push(start);
        end = start + positions(&group.accuracy.levels).into_iter().fold(0.0, f64::max);
    }
    let max_x = end.max(1.0);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |position: f64| LEFT + plot_w * position / max_x;
    let y = |accuracy: f64| TOP + plot_h * (1.0 - accuracy / 100.0);
    let blur_only = groups.len() == 1 && groups[0].accuracy.names.key == "blur";
    let mut svg = String::new();
    let title = if blur_only { "Accuracy under Gaussian blur" } else { "Accuracy under corruption" };
    open_document(&mut svg, &format!("{title}: {}", report.model));
    for step in 0..=10 {
        let accuracy = step as f64 * 10.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{accuracy:.0}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y(accuracy) + 4.0,
            yy = y(accuracy)
        );
    }
    let mut axis = Vec::new();
    for (group, &start) in groups.iter().zip(&starts) {
        let labels = std::iter::once((start, "clean".to_string()))
            .chain(positions(&group.accuracy.levels).into_iter().zip(&group.accuracy.levels).map(|(p, (key, _))| (start + p, key.clone())));
        for (position, label) in labels {
            let _ = writeln!(svg, r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#, x(position), TOP + plot_h + 18.0, escape(&label));
        }
        let names = &group.accuracy.names;
        axis.push(match names.key.as_str() {
            "blur" => "blur σ".to_string(),
            "spatial" => "spatial level k/5".to_string(),
            key => format!("{key} level"),
        });
    }
    let _ = writeln!(svg, r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#, LEFT + plot_w / 2.0, HEIGHT - 10.0, escape(&axis.join(" | ")));
    let _ = writeln!(svg, r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">accuracy (%)</text>"#, TOP + plot_h / 2.0, TOP + plot_h / 2.0);
    for (i, row) in report.rows.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        for (group, &start) in row.groups.iter().zip(&starts) {
            let points: Vec<String> = std::iter::once((start, row.std))
                .chain(positions(&group.accuracy.levels).into_iter().zip(&group.accuracy.levels).map(|(p, (_, a))| (start + p, *a)))
                .map(|(p, a)| format!("{:.1},{:.1}", x(p), y(a)))
                .collect();
            let _ = writeln!(svg, r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#, points.join(" "));
            for point in &points {
                let (px, py) = point.split_once(',').unwrap_or(("0", "0"));
                let _ = writeln!(svg, r#"<circle cx="{px}" cy="{py}" r="3" fill="{colour}"/>"#);
            }
        }
        let means: Vec<String> = row.groups.iter().map(|g| format!("{} {:.1}", g.accuracy.names.rob_title, g.rob)).collect();
        let legend_y = TOP + 20.0 * i as f64 + 10.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{}" x2="{}" y1="{legend_y}" y2="{legend_y}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{}">{} ({})</text>"#,
            WIDTH - RIGHT + 15.0,
            WIDTH - RIGHT + 35.0,
            WIDTH - RIGHT + 40.0,
            legend_y + 4.0,
            escape(&row.label),
            escape(&means.join(", "))
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::super::tests::sample;
    use super::*;

    #[test]
    fn one_polyline_per_row_with_every_point() {
        let svg = chart(&sample());
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 6);
        // PT at σ = 0 with 80 % accuracy: x = LEFT, y = TOP + plot_h * 0.2.
        assert!(svg.contains(&format!("{:.1},{:.1}", LEFT, TOP + (HEIGHT - TOP - BOTTOM) * 0.2)));
        assert!(svg.contains("Accuracy under Gaussian blur") && svg.contains("(nRob 63.0)"));
    }

    /// Blur then spatial: two lines per row, every level labelled, both means in the legend.
    #[test]
    fn corruptions_side_by_side() {
        let spatial = super::super::GroupCounts { names: crate::data::CorruptionKind::Spatial.names(), levels: (1..=5).map(|k| (format!("{k}/5"), 50, 100)).collect() };
        let mut groups = super::super::tests::blur(&[(0.5, 79), (1.0, 30)]);
        groups.push(spatial);
        let mut report = sample();
        report.rows = vec![super::super::AccuracyRow::from_counts("PT", 100, 80, &groups)];
        let svg = chart(&report);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 3 + 6);
        assert!(svg.contains(">5/5</text>") && svg.contains("blur σ | spatial level k/5"), "{svg}");
        assert!(svg.contains("(nRob 63.0, sRob 55.0)"), "{svg}");
    }
}
