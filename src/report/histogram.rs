//! An SVG histogram of one quantity for several groups of samples (e.g. CR on T_val and on T_val*),
//! bars side by side per bin, in the style of the accuracy chart (`report::svg`).

use std::fmt::Write;

use super::svg::{escape, open_document, BOTTOM, COLOURS, HEIGHT, LEFT, TOP, WIDTH};

/// Room for the legend at the right.
const RIGHT: f64 = 170.0;

/// Bin counts of `values` over `bins` equal bins spanning [low, high].
pub fn counts(values: &[f64], low: f64, high: f64, bins: usize) -> Vec<usize> {
    let bins = bins.max(1);
    let mut counts = vec![0; bins];
    let width = (high - low) / bins as f64;
    for &v in values.iter().filter(|v| v.is_finite()) {
        let bin = if width > 0.0 { ((v - low) / width).floor() as isize } else { 0 };
        counts[bin.clamp(0, bins as isize - 1) as usize] += 1;
    }
    counts
}

/// The histogram as a standalone SVG document: each group's share of its samples per bin.
pub fn histogram(title: &str, axis: &str, groups: &[(&str, &Vec<f64>)], bins: usize) -> String {
    let finite = || groups.iter().flat_map(|(_, v)| v.iter().copied()).filter(|v| v.is_finite());
    let low = finite().fold(f64::INFINITY, f64::min);
    let high = finite().fold(f64::NEG_INFINITY, f64::max);
    let (low, high) = if low.is_finite() && high > low { (low, high) } else if low.is_finite() { (low - 0.5, low + 0.5) } else { (0.0, 1.0) };
    let shares: Vec<Vec<f64>> = groups
        .iter()
        .map(|(_, values)| counts(values, low, high, bins).iter().map(|&c| c as f64 / values.len().max(1) as f64).collect())
        .collect();
    let top = shares.iter().flatten().copied().fold(0.0, f64::max).max(1e-9);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let bin_w = plot_w / bins.max(1) as f64;
    let bar_w = bin_w / groups.len().max(1) as f64;
    let mut svg = String::new();
    open_document(&mut svg, title);
    for step in 0..=4 {
        let share = top * step as f64 / 4.0;
        let y = TOP + plot_h * (1.0 - share / top);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{:.0} %</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0,
            share * 100.0
        );
    }
    for (g, group) in shares.iter().enumerate() {
        for (b, share) in group.iter().enumerate() {
            let height = plot_h * share / top;
            let _ = writeln!(
                svg,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{height:.1}" fill="{}" fill-opacity="0.8"/>"#,
                LEFT + b as f64 * bin_w + g as f64 * bar_w,
                TOP + plot_h - height,
                bar_w,
                COLOURS[g % COLOURS.len()]
            );
        }
    }
    for (x, value) in [(LEFT, low), (LEFT + plot_w / 2.0, (low + high) / 2.0), (LEFT + plot_w, high)] {
        let _ = writeln!(svg, r#"<text x="{x:.1}" y="{}" text-anchor="middle">{value:.3}</text>"#, TOP + plot_h + 18.0);
    }
    let _ = writeln!(svg, r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#, LEFT + plot_w / 2.0, HEIGHT - 10.0, escape(axis));
    for (g, (name, values)) in groups.iter().enumerate() {
        let y = TOP + 20.0 * g as f64 + 10.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{}" y="{:.1}">{} (n = {})</text>"#,
            LEFT + plot_w + 12.0,
            y - 10.0,
            COLOURS[g % COLOURS.len()],
            LEFT + plot_w + 30.0,
            y,
            escape(name),
            values.len()
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_put_the_maximum_in_the_last_bin() {
        assert_eq!(counts(&[0.0, 0.25, 0.5, 1.0, f64::NAN], 0.0, 1.0, 4), [1, 1, 1, 1]);
    }

    #[test]
    fn draws_one_bar_per_group_and_bin() {
        let svg = histogram("t", "x", &[("a", &vec![0.0, 1.0]), ("b", &vec![0.5])], 5);
        assert_eq!(svg.matches("fill-opacity").count(), 10);
        assert!(svg.contains("a (n = 2)") && svg.ends_with("</svg>\n"));
    }
}
