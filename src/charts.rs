//! PNG charts for reports and training logs: line charts (loss, learning rate, W+/W- curves) and grouped bar
//! charts (a metric per task, before and after reranking).
//!
//! Drawing is pure Rust: plotters renders into an RGB buffer, the `image` crate encodes it, and text is
//! rasterised with ab_glyph from a font embedded in the binary (assets/fonts), so a plot looks the same on every
//! machine and needs no system fonts. The same inputs give byte-identical files. A file is written under a
//! temporary name and renamed into place, so a crash never leaves a truncated PNG behind.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use image::{ImageFormat, RgbImage};
use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::register_font;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Width and height of every chart, in pixels.
pub const CHART_SIZE: (u32, u32) = (800, 480);

/// The family name the embedded font is registered under.
const FONT: &str = "umrank-sans";
const FONT_BYTES: &[u8] = include_bytes!("../assets/fonts/DejaVuSans-subset.ttf");

/// Distinct, colour-blind-friendly series colours (Okabe-Ito), cycled when there are more series.
const COLOURS: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
    RGBColor(240, 228, 66),
];

/// Why a chart could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("{path}: nothing to plot: no series has a finite point")]
    Empty { path: PathBuf },
    #[error("{path}: series {series:?} has {values} values for {categories} categories")]
    Shape {
        path: PathBuf,
        series: String,
        values: usize,
        categories: usize,
    },
    #[error("{path}: drawing failed: {message}")]
    Draw { path: PathBuf, message: String },
    #[error("{path}: cannot write the PNG: {source}")]
    Encode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the embedded plot font is not a valid TrueType file")]
    Font,
}

/// One named line of a [`line_chart`]: `(x, y)` points in drawing order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.into(),
            points,
        }
    }
}

/// One named set of bars of a [`bar_chart`]: a value per category, in category order.
#[derive(Debug, Clone, PartialEq)]
pub struct Bars {
    pub name: String,
    pub values: Vec<f64>,
}

impl Bars {
    pub fn new(name: impl Into<String>, values: Vec<f64>) -> Self {
        Self {
            name: name.into(),
            values,
        }
    }
}

/// Writes a line chart of `series` to the PNG `path`, with a legend naming each series.
///
/// Non-finite points (a diverged loss, a missing value) are left out rather than failing the chart, so a run's
/// curve up to the failure can still be seen; a chart with no finite point at all is an error.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<(), PlotError> {
    let finite: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            s.points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect()
        })
        .collect();
    let all = finite.iter().flatten();
    let (Some(x_range), Some(y_range)) = (
        padded_range(all.clone().map(|p| p.0), 0.0),
        padded_range(all.map(|p| p.1), 0.05),
    ) else {
        return Err(PlotError::Empty {
            path: path.to_owned(),
        });
    };
    render(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(72)
            .build_cartesian_2d(x_range.0..x_range.1, y_range.0..y_range.1)
            .map_err(text)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .draw()
            .map_err(text)?;
        for (index, (s, points)) in series.iter().zip(finite).enumerate() {
            let colour = colour(index);
            let marker = if points.len() <= 30 { 3 } else { 0 };
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)).point_size(marker))
                .map_err(text)?
                .label(s.name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
        }
        draw_legend(&mut chart)
    })
}

/// Writes a grouped bar chart to the PNG `path`: one group per category, one bar per [`Bars`] in each group,
/// each bar labelled with its value to 3 decimals.
///
/// Every [`Bars`] needs a value per category. Non-finite values draw no bar. The y axis starts at 0, which suits
/// metrics in [0, 1]; negative values are drawn below it.
pub fn bar_chart(
    path: &Path,
    title: &str,
    y_label: &str,
    categories: &[String],
    bars: &[Bars],
) -> Result<(), PlotError> {
    if let Some(wrong) = bars.iter().find(|b| b.values.len() != categories.len()) {
        return Err(PlotError::Shape {
            path: path.to_owned(),
            series: wrong.name.clone(),
            values: wrong.values.len(),
            categories: categories.len(),
        });
    }
    let values = || bars.iter().flat_map(|b| b.values.iter().copied());
    if !values().any(f64::is_finite) {
        return Err(PlotError::Empty {
            path: path.to_owned(),
        });
    }
    // 0 is always in range, so the range exists.
    let y_range = padded_range(values().chain([0.0]), 0.12).unwrap_or((0.0, 1.0));
    render(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(72)
            .build_cartesian_2d(CategoryAxis { categories }, y_range.0..y_range.1)
            .map_err(text)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc(y_label)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .draw()
            .map_err(text)?;
        let width = 0.8 / bars.len().max(1) as f64;
        for (index, series) in bars.iter().enumerate() {
            let colour = colour(index);
            let placed: Vec<(f64, f64)> = series
                .values
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite())
                .map(|(group, &v)| (group as f64 - 0.4 + width * index as f64, v))
                .collect();
            chart
                .draw_series(placed.iter().map(|&(left, v)| {
                    Rectangle::new([(left, 0.0), (left + width, v)], colour.filled())
                }))
                .map_err(text)?
                .label(series.name.as_str())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 16, y + 6)], colour.filled())
                });
            let label_style =
                TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
            chart
                .draw_series(placed.iter().map(|&(left, v)| {
                    Text::new(
                        format!("{v:.3}"),
                        (left + width / 2.0, v.max(0.0)),
                        label_style.clone(),
                    )
                }))
                .map_err(text)?;
        }
        draw_legend(&mut chart)
    })
}

/// A bar chart's x axis: category `i` is centred at `i`, and its tick is labelled with the category's name.
struct CategoryAxis<'a> {
    categories: &'a [String],
}

impl Ranged for CategoryAxis<'_> {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let range = self.range();
        let fraction = (value - range.start) / (range.end - range.start);
        limit.0 + (fraction * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        (0..self.categories.len()).map(|i| i as f64).collect()
    }

    fn range(&self) -> std::ops::Range<f64> {
        -0.5..self.categories.len() as f64 - 0.5
    }
}

impl ValueFormatter<f64> for CategoryAxis<'_> {
    /// Without the categories at hand, the position itself.
    fn format(value: &f64) -> String {
        value.to_string()
    }

    fn format_ext(&self, value: &f64) -> String {
        let index = value.round();
        match self.categories.get(index as usize) {
            Some(name) if (value - index).abs() < 1e-6 && index >= 0.0 => name.clone(),
            _ => String::new(),
        }
    }
}

/// The legend box, top right, over a translucent background.
fn draw_legend<'a, X, Y>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, Y>>,
) -> Result<(), String>
where
    X: Ranged,
    Y: Ranged,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 14))
        .draw()
        .map_err(text)
}

/// Draws with `draw` on a white chart-sized canvas and writes it as a PNG to `path`.
fn render(
    path: &Path,
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), String>,
) -> Result<(), PlotError> {
    register_embedded_font()?;
    let (width, height) = CHART_SIZE;
    let mut buffer = vec![0u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, CHART_SIZE).into_drawing_area();
        root.fill(&WHITE)
            .map_err(text)
            .and_then(|()| draw(&root))
            .and_then(|()| root.present().map_err(text))
            .map_err(|message| PlotError::Draw {
                path: path.to_owned(),
                message,
            })?;
    }
    let image = RgbImage::from_raw(width, height, buffer).ok_or_else(|| PlotError::Draw {
        path: path.to_owned(),
        message: "the drawing buffer has the wrong size".to_owned(),
    })?;
    write_atomically(path, &image)
}

fn write_atomically(path: &Path, image: &RgbImage) -> Result<(), PlotError> {
    let mut png = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut png, ImageFormat::Png)
        .map_err(|source| PlotError::Encode {
            path: path.to_owned(),
            source,
        })?;
    crate::atomic::write_atomically(path, png.get_ref()).map_err(|e| PlotError::Io {
        path: e.path,
        source: e.source,
    })
}

/// Registers the embedded font with plotters once per process.
fn register_embedded_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let registered =
        *REGISTERED.get_or_init(|| register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok());
    if registered {
        Ok(())
    } else {
        Err(PlotError::Font)
    }
}

/// `(low, high)` of the finite `values`, widened by `margin` of the span on each side, and to a unit span around a
/// single value so that the axis is never empty. `None` when no value is finite.
fn padded_range(values: impl Iterator<Item = f64>, margin: f64) -> Option<(f64, f64)> {
    let (low, high) =
        values
            .filter(|v| v.is_finite())
            .fold(None, |range: Option<(f64, f64)>, v| {
                Some(range.map_or((v, v), |(low, high)| (low.min(v), high.max(v))))
            })?;
    let span = high - low;
    if span <= f64::EPSILON * high.abs().max(1.0) {
        return Some((low - 0.5, high + 0.5));
    }
    Some((low - margin * span, high + margin * span))
}

fn colour(index: usize) -> RGBColor {
    COLOURS[index % COLOURS.len()]
}

fn text(error: impl std::fmt::Display) -> String {
    error.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_range_widens_by_the_margin_and_around_a_single_value() {
        assert_eq!(padded_range([1.0, 3.0].into_iter(), 0.25), Some((0.5, 3.5)));
        assert_eq!(padded_range([2.0, 2.0].into_iter(), 0.1), Some((1.5, 2.5)));
        assert_eq!(
            padded_range([f64::NAN, 1.0, f64::INFINITY, 2.0].into_iter(), 0.0),
            Some((1.0, 2.0))
        );
        assert_eq!(padded_range([f64::NAN].into_iter(), 0.1), None);
    }
}
