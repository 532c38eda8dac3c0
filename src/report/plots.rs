//! What each plot shows, as plain data: the renderer draws exactly these points, and
//! `plot-data.json` is written from the same values, so the two cannot disagree.

use std::collections::BTreeMap;

use plotters::style::RGBColor;
use serde::Serialize;

/// One axis. A value `v` is drawn at `v + offset` (steps on a log axis are drawn at
/// `step + 1`, since step 0 has no logarithm).
#[derive(Debug, Clone)]
pub struct Axis {
    pub label: String,
    pub log: bool,
    pub offset: f64,
}

impl Axis {
    pub fn linear(label: &str) -> Self {
        Axis {
            label: label.to_string(),
            log: false,
            offset: 0.0,
        }
    }

    pub fn log(label: &str) -> Self {
        Axis {
            label: label.to_string(),
            log: true,
            offset: 0.0,
        }
    }

    /// Training steps on a log axis, drawn at step + 1.
    pub fn steps() -> Self {
        Axis {
            label: "training step + 1 (log)".to_string(),
            log: true,
            offset: 1.0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    pub color: RGBColor,
    /// Data values, before the axis offset.
    pub points: Vec<(f64, f64)>,
    /// (x, low, high): a shaded band, e.g. ±1 sd; empty for none.
    pub band: Vec<(f64, f64, f64)>,
    /// On the right-hand y axis.
    pub secondary: bool,
    pub dashed: bool,
    /// A dot at each point (off for dense curves such as spectra).
    pub markers: bool,
}

impl Series {
    pub fn line(name: impl Into<String>, color: RGBColor, points: Vec<(f64, f64)>) -> Self {
        Series {
            name: name.into(),
            color,
            points,
            band: Vec::new(),
            secondary: false,
            dashed: false,
            markers: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    /// Prefix of this panel's series names in `plot-data.json` (panels of one figure may
    /// share legend names).
    pub key: String,
    pub x: Axis,
    pub y: Axis,
    pub y2: Option<Axis>,
    pub series: Vec<Series>,
    pub legend: bool,
}

impl Panel {
    /// A figure's only panel: no title or key of its own, a legend, no right-hand axis.
    pub fn only(x: Axis, y: Axis, series: Vec<Series>) -> Self {
        Panel {
            title: String::new(),
            key: String::new(),
            x,
            y,
            y2: None,
            series,
            legend: true,
        }
    }
}

/// A discrete colour key (one swatch per step) drawn to the right of the panels.
#[derive(Debug, Clone)]
pub struct ColorKey {
    pub title: String,
    pub entries: Vec<(String, RGBColor)>,
}

#[derive(Debug, Clone)]
pub struct Figure {
    /// File stem: `<stem>.svg`, `<stem>.png`.
    pub stem: String,
    pub title: String,
    /// One sentence for the HTML report: what is drawn and how.
    pub caption: String,
    pub size: (u32, u32),
    pub panels: Vec<Panel>,
    pub color_key: Option<ColorKey>,
}

/// Colours for models and benchmarks (matplotlib's tab10, familiar from the paper's plots).
pub fn categorical(i: usize) -> RGBColor {
    const TAB10: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    let (r, g, b) = TAB10[i % TAB10.len()];
    RGBColor(r, g, b)
}

/// Blue for the earliest of `n` steps to red for the latest, by rank: steps are spaced
/// roughly logarithmically, so by value nearly all would be blue.
pub fn step_color(rank: usize, n: usize) -> RGBColor {
    let t = if n > 1 {
        rank as f64 / (n - 1) as f64
    } else {
        0.0
    };
    let lerp = |a: f64, b: f64| (a + (b - a) * t).round().clamp(0.0, 255.0) as u8;
    RGBColor(lerp(30.0, 215.0), lerp(70.0, 25.0), lerp(220.0, 30.0))
}

/// `plot-data.json`'s entry for one figure.
#[derive(Debug, Serialize)]
pub struct FigureData {
    pub title: String,
    pub panels: Vec<PanelData>,
    /// Series key → [[x, y], ...], the values drawn (before any axis offset).
    pub series: BTreeMap<String, Vec<[f64; 2]>>,
    /// Series key → [[x, low, high], ...] where a band is drawn.
    pub bands: BTreeMap<String, Vec<[f64; 3]>>,
}

#[derive(Debug, Serialize)]
pub struct PanelData {
    pub title: String,
    pub x_label: String,
    pub x_log: bool,
    /// Points are drawn at x + x_offset.
    pub x_offset: f64,
    pub y_label: String,
    pub y2_label: Option<String>,
}

/// The key of a series in `plot-data.json`.
pub fn series_key(panel: &Panel, series: &Series) -> String {
    if panel.key.is_empty() {
        series.name.clone()
    } else {
        format!("{}: {}", panel.key, series.name)
    }
}

impl Figure {
    pub fn data(&self) -> FigureData {
        let mut series = BTreeMap::new();
        let mut bands = BTreeMap::new();
        for panel in &self.panels {
            for s in &panel.series {
                let key = series_key(panel, s);
                series.insert(key.clone(), s.points.iter().map(|&(x, y)| [x, y]).collect());
                if !s.band.is_empty() {
                    bands.insert(key, s.band.iter().map(|&(x, l, h)| [x, l, h]).collect());
                }
            }
        }
        FigureData {
            title: self.title.clone(),
            panels: self
                .panels
                .iter()
                .map(|p| PanelData {
                    title: p.title.clone(),
                    x_label: p.x.label.clone(),
                    x_log: p.x.log,
                    x_offset: p.x.offset,
                    y_label: p.y.label.clone(),
                    y2_label: p.y2.as_ref().map(|a| a.label.clone()),
                })
                .collect(),
            series,
            bands,
        }
    }
}

/// Lower-case letters, digits and single dashes: `EleutherAI/pythia-160m` →
/// `eleutherai-pythia-160m`.
pub fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || c == '.' {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_matches('-').to_string();
    if out.is_empty() {
        "model".to_string()
    } else {
        out
    }
}

/// Tick labels for linear axes: enough decimals for the axis' span, trailing zeros dropped,
/// never `-0`.
pub fn tick_label(v: f64, span: f64) -> String {
    let decimals = if span > 0.0 && span.is_finite() {
        (2.0 - span.log10().floor()).clamp(0.0, 8.0) as usize
    } else {
        3
    };
    let mut text = format!("{v:.decimals$}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    if text == "-0" {
        text = "0".to_string();
    }
    text
}

/// Tick labels for log axes: 1, 10, 100, 1k, 10k, 1M, 1B.
pub fn si_label(v: f64) -> String {
    let a = v.abs();
    let (scaled, suffix) = if a >= 1e9 {
        (v / 1e9, "B")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let text = if (scaled - scaled.round()).abs() < 1e-9 {
        format!("{}", scaled.round())
    } else {
        format!("{scaled:.2}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    };
    format!("{text}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_and_labels() {
        assert_eq!(
            slug("EleutherAI/pythia-160m-deduped"),
            "eleutherai-pythia-160m-deduped"
        );
        assert_eq!(slug("org/pythia-1.4b"), "org-pythia-1.4b");
        assert_eq!(slug("///"), "model");
        assert_eq!(si_label(1.0), "1");
        assert_eq!(si_label(10000.0), "10k");
        assert_eq!(si_label(1.5e8), "150M");
        assert_eq!(si_label(2.5e3), "2.5k");
        assert_eq!(tick_label(-1e-17, 0.6), "0");
        assert_eq!(tick_label(0.1, 0.6), "0.1");
        assert_eq!(tick_label(1.25, 0.6), "1.25");
        assert_eq!(tick_label(1500.0, 3000.0), "1500");
    }

    #[test]
    fn steps_run_from_blue_to_red() {
        let first = step_color(0, 5);
        let last = step_color(4, 5);
        assert!(first.2 > first.0 && last.0 > last.2);
    }
}
