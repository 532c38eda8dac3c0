//! Draws a `Figure` with plotters, as SVG (text left to the viewer's fonts) and as PNG
//! (text laid out and rasterised here with `ab_glyph` from the font embedded below, so no
//! system font library is needed).

use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use ab_glyph::FontRef;
use anyhow::{anyhow, bail, Context};
use plotters::coord::combinators::BindKeyPoints;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::plots::{si_label, tick_label, ColorKey, Figure, Panel, Series};
use super::png::PngBackend;

/// DejaVu Sans, cut to Latin, Greek, punctuation, arrows and mathematical operators
/// (Bitstream Vera licence, see `fonts/LICENSE`).
pub(super) static FONT: &[u8] = include_bytes!("fonts/DejaVuSans-subset.ttf");
const FAMILY: &str = "sans-serif";

fn ensure_font() -> anyhow::Result<()> {
    // plotters keeps registered fonts in a process-wide table; once is enough.
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        bail!("the font embedded in neuromfa is unreadable")
    }
}

fn drawing<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing failed: {e}")
}

/// The figure as an SVG document (plotters gives it a `viewBox`, so it scales when inlined).
pub fn svg(figure: &Figure) -> anyhow::Result<String> {
    ensure_font()?;
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, figure.size).into_drawing_area();
        draw_figure(figure, &root)?;
        root.present().map_err(drawing)?;
    }
    Ok(text)
}

/// Writes the figure as a PNG file at `path`.
pub fn png(figure: &Figure, path: &Path) -> anyhow::Result<()> {
    ensure_font()?;
    let font = FontRef::try_from_slice(FONT)
        .map_err(|_| anyhow!("the font embedded in neuromfa is unreadable"))?;
    let backend = PngBackend {
        inner: BitMapBackend::new(path, figure.size),
        font,
    };
    let root = backend.into_drawing_area();
    draw_figure(figure, &root).with_context(|| format!("drawing {}", path.display()))?;
    root.present()
        .map_err(drawing)
        .with_context(|| format!("writing {}", path.display()))
}

fn draw_figure<DB: DrawingBackend>(
    figure: &Figure,
    root: &DrawingArea<DB, Shift>,
) -> anyhow::Result<()> {
    root.fill(&WHITE).map_err(drawing)?;
    let body = root
        .titled(&figure.title, (FAMILY, 22).into_font().color(&BLACK))
        .map_err(drawing)?;
    let (main, key) = match &figure.color_key {
        Some(_) => {
            let (w, _) = body.dim_in_pixel();
            let (main, key) = body.split_horizontally(w.saturating_sub(150));
            (main, Some(key))
        }
        None => (body, None),
    };
    let areas = main.split_evenly((1, figure.panels.len().max(1)));
    for (panel, area) in figure.panels.iter().zip(&areas) {
        draw_panel(area, panel)?;
    }
    if let (Some(color_key), Some(area)) = (&figure.color_key, key) {
        draw_color_key(&area, color_key)?;
    }
    Ok(())
}

/// Data extent of drawn values, padded; non-finite values and (on log axes) values ≤ 0
/// are left out.
fn extent(values: impl Iterator<Item = f64>, log: bool) -> Range<f64> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite() && (!log || *v > 0.0)) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return if log { 1.0..10.0 } else { 0.0..1.0 };
    }
    if log {
        lo / 1.4..hi * 1.4
    } else {
        let pad = if hi > lo {
            (hi - lo) * 0.06
        } else {
            lo.abs().max(1.0) * 0.05
        };
        lo - pad..hi + pad
    }
}

fn x_values(panel: &Panel) -> impl Iterator<Item = f64> + '_ {
    let offset = panel.x.offset;
    panel.series.iter().flat_map(move |s| {
        s.points
            .iter()
            .map(move |p| p.0 + offset)
            .chain(s.band.iter().map(move |b| b.0 + offset))
    })
}

fn y_values(panel: &Panel, secondary: bool) -> impl Iterator<Item = f64> + '_ {
    panel
        .series
        .iter()
        .filter(move |s| s.secondary == secondary)
        .flat_map(|s| {
            s.points
                .iter()
                .map(|p| p.1)
                .chain(s.band.iter().flat_map(|b| [b.1, b.2]))
        })
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
) -> anyhow::Result<()> {
    let x = extent(x_values(panel), panel.x.log);
    // Room at the top for the legend (drawn upper right), so that it covers no data.
    let headroom = if panel.legend {
        let (_, h) = area.dim_in_pixel();
        let plot = (f64::from(h) - 110.0).max(100.0);
        ((panel.series.len() as f64 * 19.0 + 16.0) / plot).min(0.6)
    } else {
        0.0
    };
    let y = with_headroom(extent(y_values(panel, false), false), headroom);
    let y2 = panel
        .y2
        .as_ref()
        .map(|_| with_headroom(extent(y_values(panel, true), false), headroom));
    let x_span = x.end - x.start;
    if panel.x.log {
        let (bold, light) = log_ticks(x.start, x.end);
        let make = || {
            x.clone()
                .log_scale()
                .with_key_points(bold.clone())
                .with_light_points(light.clone())
        };
        draw_panel_on(area, panel, make, x_span, y, y2)
    } else {
        draw_panel_on(area, panel, || x.clone(), x_span, y, y2)
    }
}

/// Labelled and unlabelled ticks of a log axis: plotters labels only powers of ten, which
/// leaves a range within one decade (model sizes of one family) with one label or none.
fn log_ticks(lo: f64, hi: f64) -> (Vec<f64>, Vec<f64>) {
    let decades = (hi / lo).log10();
    let labelled: &[u32] = if decades <= 1.2 {
        &[1, 2, 3, 5, 7]
    } else if decades <= 3.0 {
        &[1, 2, 5]
    } else {
        &[1]
    };
    let (mut bold, mut light) = (Vec::new(), Vec::new());
    let mut power = 10f64.powf(lo.log10().floor());
    while power <= hi {
        for m in 1..=9u32 {
            let v = power * f64::from(m);
            if v >= lo && v <= hi {
                light.push(v);
                if labelled.contains(&m) {
                    bold.push(v);
                }
            }
        }
        power *= 10.0;
    }
    (bold, light)
}

/// Raises the top of a linear range so the data fill the lower `1 - fraction` of it.
fn with_headroom(range: Range<f64>, fraction: f64) -> Range<f64> {
    let span = range.end - range.start;
    range.start..range.end + span * fraction / (1.0 - fraction)
}

/// Points a series draws, offset onto the x axis and finite.
fn drawn(series: &Series, offset: f64) -> Vec<(f64, f64)> {
    series
        .points
        .iter()
        .map(|&(x, y)| (x + offset, y))
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect()
}

/// Band polygon: the upper edge forward, the lower edge back.
fn band_polygon(series: &Series, offset: f64) -> Vec<(f64, f64)> {
    let upper = series.band.iter().map(|&(x, _, hi)| (x + offset, hi));
    let lower = series.band.iter().rev().map(|&(x, lo, _)| (x + offset, lo));
    upper
        .chain(lower)
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect()
}

/// Draws one series' band, line and markers, with its legend entry, through `$draw`
/// (`draw_series` or `draw_secondary_series`): one body for both y axes.
macro_rules! draw_one_series {
    ($chart:expr, $draw:ident, $series:expr, $offset:expr) => {{
        let series: &Series = $series;
        let color = series.color;
        let band = band_polygon(series, $offset);
        if band.len() >= 3 {
            $chart
                .$draw(std::iter::once(Polygon::new(
                    band,
                    color.mix(0.18).filled(),
                )))
                .map_err(drawing)?;
        }
        let points = drawn(series, $offset);
        let style = color.stroke_width(2);
        let anno = if series.dashed {
            $chart
                .$draw(DashedLineSeries::new(points.clone(), 8, 5, style))
                .map_err(drawing)?
        } else {
            $chart
                .$draw(LineSeries::new(points.clone(), style))
                .map_err(drawing)?
        };
        anno.label(series.name.clone()).legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(2))
        });
        if series.markers {
            $chart
                .$draw(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(drawing)?;
        }
    }};
}

fn draw_panel_on<DB, XR>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
    make_x: impl Fn() -> XR,
    x_span: f64,
    y: Range<f64>,
    y2: Option<Range<f64>>,
) -> anyhow::Result<()>
where
    DB: DrawingBackend,
    XR: AsRangedCoord<Value = f64>,
    XR::CoordDescType: ValueFormatter<f64>,
{
    let log_x = panel.x.log;
    let x_format = move |v: &f64| {
        if log_x {
            si_label(*v)
        } else {
            tick_label(*v, x_span)
        }
    };
    let y_span = y.end - y.start;
    let y_format = move |v: &f64| tick_label(*v, y_span);
    let y2_span = y2.as_ref().map_or(1.0, |r| r.end - r.start);
    let y2_format = move |v: &f64| tick_label(*v, y2_span);
    let chart = ChartBuilder::on(area)
        .caption(&panel.title, (FAMILY, 17))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .right_y_label_area_size(if y2.is_some() { 72 } else { 0 })
        .build_cartesian_2d(make_x(), y)
        .map_err(drawing)?;
    let offset = panel.x.offset;
    // The mesh must be drawn after the secondary axis is attached: that moves the right-hand
    // label area from the primary axis to the secondary one.
    macro_rules! primary {
        ($chart:expr) => {{
            $chart
                .configure_mesh()
                .x_desc(panel.x.label.as_str())
                .y_desc(panel.y.label.as_str())
                .x_labels(7)
                .y_labels(8)
                .x_label_formatter(&x_format)
                .y_label_formatter(&y_format)
                .label_style((FAMILY, 13))
                .axis_desc_style((FAMILY, 15))
                .light_line_style(RGBColor(235, 235, 235))
                .bold_line_style(RGBColor(215, 215, 215))
                .draw()
                .map_err(drawing)?;
            for series in panel.series.iter().filter(|s| !s.secondary) {
                draw_one_series!($chart, draw_series, series, offset);
            }
        }};
    }
    match (y2, &panel.y2) {
        (Some(range), Some(axis)) => {
            let mut chart = chart.set_secondary_coord(make_x(), range);
            primary!(chart);
            chart
                .configure_secondary_axes()
                .y_desc(axis.label.as_str())
                .y_label_formatter(&y2_format)
                .label_style((FAMILY, 13))
                .axis_desc_style((FAMILY, 15))
                .draw()
                .map_err(drawing)?;
            for series in panel.series.iter().filter(|s| s.secondary) {
                draw_one_series!(chart, draw_secondary_series, series, offset);
            }
            if panel.legend {
                legend(&mut chart)?;
            }
        }
        _ => {
            let mut chart = chart;
            primary!(chart);
            if panel.legend {
                legend(&mut chart)?;
            }
        }
    }
    Ok(())
}

fn legend<'a, DB: DrawingBackend + 'a, X: Ranged>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, RangedCoordf64>>,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .label_font((FAMILY, 13))
        .draw()
        .map_err(drawing)
}

/// A column of swatches with their labels; with more steps than fit, every k-th label.
fn draw_color_key<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    key: &ColorKey,
) -> anyhow::Result<()> {
    let (_, h) = area.dim_in_pixel();
    let (top, bottom) = (70i32, (h as i32 - 70).max(100));
    area.draw(&Text::new(key.title.clone(), (12, top - 30), (FAMILY, 15)))
        .map_err(drawing)?;
    let n = key.entries.len().max(1);
    let cell = f64::from(bottom - top) / n as f64;
    let every = ((15.0 / cell).ceil() as usize).max(1);
    let label_style =
        TextStyle::from((FAMILY, 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    for (i, (label, color)) in key.entries.iter().enumerate() {
        let y0 = top + (i as f64 * cell) as i32;
        let y1 = top + ((i + 1) as f64 * cell).ceil() as i32;
        area.draw(&Rectangle::new([(12, y0), (34, y1)], color.filled()))
            .map_err(drawing)?;
        // The first and last steps are always labelled; others every k-th, skipping one
        // that would overlap the last label.
        let last = i + 1 == key.entries.len();
        let show = last || (i % every == 0 && i + every < key.entries.len());
        if show {
            area.draw(&Text::new(
                label.clone(),
                (40, (y0 + y1) / 2),
                label_style.clone(),
            ))
            .map_err(drawing)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ticks_label_narrow_ranges_more_densely() {
        let (bold, light) = log_ticks(0.8, 150_000.0);
        assert_eq!(bold, vec![1.0, 10.0, 100.0, 1e3, 1e4, 1e5]);
        assert!(light.len() > bold.len());
        let (bold, _) = log_ticks(1.5e5, 1.3e6);
        assert_eq!(bold, vec![2e5, 3e5, 5e5, 7e5, 1e6]);
    }

    #[test]
    fn headroom_keeps_the_data_below_the_legend() {
        let r = with_headroom(0.0..1.0, 0.25);
        assert!((r.end - 4.0 / 3.0).abs() < 1e-12);
    }
}
