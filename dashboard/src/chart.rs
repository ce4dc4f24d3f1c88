//! Charts as SVG strings, drawn with `plotters`' SVG backend: time series (lines and
//! shaded bands) over UTC time, and bar charts over named categories.
//!
//! Every chart knows what it drew — [`Chart::lines`] line series of [`Chart::line_points`]
//! points in all, [`Chart::bands`] shaded bands, [`Chart::bars`] bars — so the page can
//! state it (`data-lines`, `data-line-points`, `data-bands`, `data-bars` on the
//! `<figure>`) and a test can count what a browser shows against it: a data line is a
//! `<polyline>` of stroke width [`LINE_WIDTH`] (axes and ticks are 1 px), a band a
//! `<polygon>`, a bar a `<rect>` filled with a palette colour (the background is white).
//! Legends are HTML beside the SVG (readable on a phone).

use std::ops::Range;

use plotters::prelude::*;

/// Width and height of the SVG's coordinate system, px. The page scales it to the
/// screen width (`viewBox`), so the same drawing reads at 1280×800 and on a phone.
pub const SIZE: (u32, u32) = (960, 380);

/// Stroke width of data lines, px: axes, ticks and grid lines are 1 px.
pub const LINE_WIDTH: u32 = 2;

/// The colours of the series, in order (colour-blind-safe, from the Okabe–Ito palette).
pub const PALETTE: [(u8, u8, u8); 6] = [
    (0, 114, 178),
    (213, 94, 0),
    (0, 158, 115),
    (204, 121, 167),
    (230, 159, 0),
    (86, 180, 233),
];

/// A drawn chart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chart {
    /// The SVG document.
    pub svg: String,
    /// Line series drawn (one `<polyline>` each).
    pub lines: usize,
    /// Points of all line series.
    pub line_points: usize,
    /// Bands drawn (one `<polygon>` each).
    pub bands: usize,
    /// Bars drawn (one filled `<rect>` each).
    pub bars: usize,
    /// Legend entries: name and colour (`#rrggbb`).
    pub legend: Vec<(String, String)>,
}

/// One series of a time chart.
#[derive(Debug, Clone, PartialEq)]
pub enum Series {
    /// A line through (epoch ms, value) points.
    Line {
        /// Legend name.
        name: String,
        /// Points, by time.
        points: Vec<(i64, f64)>,
    },
    /// A shaded band between a lower and an upper value at each time.
    Band {
        /// Legend name.
        name: String,
        /// (epoch ms, lower, upper), by time.
        points: Vec<(i64, f64, f64)>,
    },
}

/// A chart could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("drawing the chart {title:?}: {message}")]
pub struct ChartError {
    /// The chart's title.
    pub title: String,
    /// plotters' error.
    pub message: String,
}

/// `#rrggbb` of a palette colour.
pub fn hex((r, g, b): (u8, u8, u8)) -> String {
    format!("#{r:02x}{g:02x}{b:02x}")
}

/// The UTC time of an epoch-ms instant, as precise as a chart spanning `span_ms` needs:
/// `HH:MM:SS` up to an hour, `HH:MM` up to a day, `MM-DD HH:MM` beyond.
fn time_label(ms: i64, span_ms: i64) -> String {
    let fmt = if span_ms <= 3_600_000 {
        "%H:%M:%S"
    } else if span_ms <= 86_400_000 {
        "%H:%M"
    } else {
        "%m-%d %H:%M"
    };
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format(fmt).to_string())
        .unwrap_or_default()
}

/// A value range with some room above and below, never empty.
fn padded(lo: f64, hi: f64, from_zero: bool) -> Range<f64> {
    let (lo, hi) = if from_zero {
        (lo.min(0.0), hi)
    } else {
        (lo, hi)
    };
    let span = hi - lo;
    let pad = if span > 0.0 {
        span * 0.08
    } else {
        lo.abs().max(1.0) * 0.1
    };
    let lo = if from_zero && lo >= 0.0 {
        0.0
    } else {
        lo - pad
    };
    lo..hi + pad
}

fn err(title: &str) -> impl Fn(String) -> ChartError + '_ {
    move |message| ChartError {
        title: title.to_string(),
        message,
    }
}

/// Makes the SVG scale with the page: a `viewBox`, and width/height left to CSS.
fn responsive(svg: String) -> String {
    let (w, h) = SIZE;
    let head = format!(r#"<svg width="{w}" height="{h}" "#);
    if svg.contains("viewBox") {
        return svg.replacen(&head, "<svg ", 1);
    }
    svg.replacen(
        &head,
        &format!(r#"<svg viewBox="0 0 {w} {h}" preserveAspectRatio="xMidYMid meet" "#),
        1,
    )
}

/// A time chart: x is UTC time (epoch ms), y is `y_desc` (name the unit). `from_zero`
/// starts the y axis at zero (counts, rates).
pub fn time_chart(
    title: &str,
    y_desc: &str,
    series: &[Series],
    from_zero: bool,
) -> Result<Chart, ChartError> {
    let e = err(title);
    let (mut x0, mut x1, mut y0, mut y1) = (i64::MAX, i64::MIN, f64::INFINITY, f64::NEG_INFINITY);
    let mut see = |x: i64, y: f64| {
        if y.is_finite() {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    };
    for s in series {
        match s {
            Series::Line { points, .. } => points.iter().for_each(|&(x, y)| see(x, y)),
            Series::Band { points, .. } => points.iter().for_each(|&(x, lo, hi)| {
                see(x, lo);
                see(x, hi);
            }),
        }
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0, 60_000, 0.0, 1.0);
    }
    if x0 == x1 {
        x1 = x0 + 60_000;
        x0 -= 60_000;
    }
    let span = x1 - x0;
    let mut svg = String::new();
    let mut chart = Chart::default();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
        let mut c = ChartBuilder::on(&root)
            .margin(14)
            .margin_right(44)
            .x_label_area_size(48)
            .y_label_area_size(78)
            .build_cartesian_2d(x0..x1, padded(y0, y1, from_zero))
            .map_err(|x| e(x.to_string()))?;
        c.configure_mesh()
            .x_desc("time (UTC)")
            .y_desc(y_desc)
            .x_labels(8)
            .y_labels(6)
            .x_label_formatter(&|x| time_label(*x, span))
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 17))
            .light_line_style(RGBColor(236, 236, 236))
            .bold_line_style(RGBColor(210, 210, 210))
            .draw()
            .map_err(|x| e(x.to_string()))?;
        for (i, s) in series.iter().enumerate() {
            let rgb = PALETTE[i % PALETTE.len()];
            let color = RGBColor(rgb.0, rgb.1, rgb.2);
            match s {
                Series::Band { name, points } if !points.is_empty() => {
                    let outline: Vec<(i64, f64)> = points
                        .iter()
                        .map(|&(x, _, hi)| (x, hi))
                        .chain(points.iter().rev().map(|&(x, lo, _)| (x, lo)))
                        .collect();
                    c.draw_series(std::iter::once(Polygon::new(outline, color.mix(0.22))))
                        .map_err(|x| e(x.to_string()))?;
                    chart.bands += 1;
                    chart.legend.push((name.clone(), hex(rgb)));
                }
                Series::Line { name, points } if !points.is_empty() => {
                    c.draw_series(LineSeries::new(
                        points.iter().copied(),
                        color.stroke_width(LINE_WIDTH),
                    ))
                    .map_err(|x| e(x.to_string()))?;
                    chart.lines += 1;
                    chart.line_points += points.len();
                    chart.legend.push((name.clone(), hex(rgb)));
                }
                _ => {}
            }
        }
        root.present().map_err(|x| e(x.to_string()))?;
    }
    chart.svg = responsive(svg);
    Ok(chart)
}

/// A bar chart: one bar per (category, value), y is `y_desc` (name the unit).
pub fn bar_chart(title: &str, y_desc: &str, bars: &[(String, f64)]) -> Result<Chart, ChartError> {
    let e = err(title);
    let hi = bars.iter().map(|b| b.1).fold(0.0_f64, f64::max);
    // The last index: a segmented range has a segment for each value of `0..=last`.
    let last = u32::try_from(bars.len().saturating_sub(1)).unwrap_or(u32::MAX);
    let mut svg = String::new();
    let mut chart = Chart::default();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
        let mut c = ChartBuilder::on(&root)
            .margin(14)
            .margin_right(44)
            .x_label_area_size(48)
            .y_label_area_size(78)
            .build_cartesian_2d((0..last).into_segmented(), padded(0.0, hi, true))
            .map_err(|x| e(x.to_string()))?;
        c.configure_mesh()
            .disable_x_mesh()
            .y_desc(y_desc)
            .x_labels(bars.len().max(1))
            .y_labels(6)
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => bars
                    .get(*i as usize)
                    .map(|b| b.0.clone())
                    .unwrap_or_default(),
                _ => String::new(),
            })
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 17))
            .light_line_style(RGBColor(236, 236, 236))
            .bold_line_style(RGBColor(210, 210, 210))
            .draw()
            .map_err(|x| e(x.to_string()))?;
        for (i, (_, v)) in bars.iter().enumerate() {
            let rgb = PALETTE[i % PALETTE.len()];
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), *v),
                ],
                RGBColor(rgb.0, rgb.1, rgb.2).filled(),
            );
            bar.set_margin(0, 0, 10, 10);
            c.draw_series(std::iter::once(bar))
                .map_err(|x| e(x.to_string()))?;
            chart.bars += 1;
        }
        root.present().map_err(|x| e(x.to_string()))?;
    }
    chart.svg = responsive(svg);
    Ok(chart)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_chart_draws_one_data_polyline_per_line_and_one_polygon_per_band() {
        let line = Series::Line {
            name: "mean".into(),
            points: vec![(0, 1.0), (60_000, 2.0), (120_000, 1.5)],
        };
        let band = Series::Band {
            name: "p50–p99".into(),
            points: vec![(0, 0.5, 1.5), (60_000, 1.0, 3.0), (120_000, 1.0, 2.0)],
        };
        let c = time_chart("t", "value (°C)", &[band, line], false).unwrap();
        assert_eq!((c.lines, c.line_points, c.bands, c.bars), (1, 3, 1, 0));
        let lines: Vec<&str> = c
            .svg
            .split("<polyline")
            .skip(1)
            .filter(|p| p.contains(&format!("stroke-width=\"{LINE_WIDTH}\"")))
            .collect();
        assert_eq!(lines.len(), 1, "{}", c.svg);
        assert_eq!(c.svg.matches("<polygon").count(), 1);
        assert!(
            c.svg.contains("viewBox=\"0 0 960 380\""),
            "{}",
            &c.svg[..200]
        );
        assert!(c.svg.contains("time (UTC)") && c.svg.contains("value (°C)"));
        assert!(c.svg.contains("00:01:00"), "x labels are UTC times");
    }

    #[test]
    fn a_bar_chart_draws_one_filled_rect_per_bar_and_labels_the_categories() {
        let c = bar_chart("b", "USD", &[("Lambda".into(), 0.5), ("S3".into(), 0.25)]).unwrap();
        assert_eq!(c.bars, 2);
        let filled = c.svg.matches("<rect").count() - c.svg.matches("fill=\"#FFFFFF\"").count();
        assert_eq!(filled, 2, "{}", c.svg);
        assert!(
            c.svg.contains("\nLambda\n") && c.svg.contains("\nS3\n"),
            "{}",
            c.svg
        );
        // One slot per bar: the bars fill the plot's width, with no empty slot at the end.
        let xs: Vec<f64> = c
            .svg
            .split("<rect")
            .skip(1)
            .filter(|r| !r.contains("fill=\"#FFFFFF\""))
            .map(|r| {
                let i = r.find("width=\"").unwrap() + 7;
                r[i..i + r[i..].find('"').unwrap()].parse().unwrap()
            })
            .collect();
        let (w, _) = SIZE;
        // The plot is ~840 of the 960 px: two bars in three slots would cover ~500.
        assert!(xs.iter().sum::<f64>() > f64::from(w) * 0.7, "{xs:?}");
    }
}
