//! An SVG line chart of accuracy against blur σ (σ = 0 is the clean test set), one line per row.

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

/// The chart as a standalone SVG document.
pub fn chart(report: &Report) -> String {
    let max_sigma = report.rows.iter().flat_map(|r| r.blur.iter().map(|(s, _)| *s as f64)).fold(1.0, f64::max);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |sigma: f64| LEFT + plot_w * sigma / max_sigma;
    let y = |accuracy: f64| TOP + plot_h * (1.0 - accuracy / 100.0);
    let mut svg = String::new();
    open_document(&mut svg, &format!("Accuracy under Gaussian blur: {}", report.model));
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
    let sigmas: Vec<f64> = std::iter::once(0.0).chain(report.rows.first().into_iter().flat_map(|r| r.blur.iter().map(|(s, _)| *s as f64))).collect();
    for &sigma in &sigmas {
        let label = if sigma == 0.0 { "clean".to_string() } else { super::sigma_key(sigma as f32) };
        let _ = writeln!(svg, r#"<text x="{:.1}" y="{}" text-anchor="middle">{label}</text>"#, x(sigma), TOP + plot_h + 18.0);
    }
    let _ = writeln!(svg, r#"<text x="{}" y="{}" text-anchor="middle">blur σ</text>"#, LEFT + plot_w / 2.0, HEIGHT - 10.0);
    let _ = writeln!(svg, r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">accuracy (%)</text>"#, TOP + plot_h / 2.0, TOP + plot_h / 2.0);
    for (i, row) in report.rows.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<String> = std::iter::once((0.0, row.std))
            .chain(row.blur.iter().map(|&(s, a)| (s as f64, a)))
            .map(|(s, a)| format!("{:.1},{:.1}", x(s), y(a)))
            .collect();
        let _ = writeln!(svg, r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#, points.join(" "));
        for point in &points {
            let (px, py) = point.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(svg, r#"<circle cx="{px}" cy="{py}" r="3" fill="{colour}"/>"#);
        }
        let legend_y = TOP + 20.0 * i as f64 + 10.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{}" x2="{}" y1="{legend_y}" y2="{legend_y}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{}">{} (nRob {:.1})</text>"#,
            WIDTH - RIGHT + 15.0,
            WIDTH - RIGHT + 35.0,
            WIDTH - RIGHT + 40.0,
            legend_y + 4.0,
            escape(&row.label),
            row.nrob
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
    }
}
