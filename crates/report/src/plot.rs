//! Drawing `report.png` and `report.svg`: panels stacked vertically over a shared step axis.
//!
//! Text is rendered with DejaVu Sans embedded in the binary (plotters' `ab_glyph` font
//! path), so the images look the same on a machine without any system font.

use crate::error::ReportError;
use crate::run::Run;
use oomph_rundir::events::Event;
use oomph_rundir::RunDir;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Once;

/// Width of the images in pixels.
pub const WIDTH: u32 = 1200;
/// Height of each panel in pixels (the title adds [`TITLE_HEIGHT`]).
pub const PANEL_HEIGHT: u32 = 300;
/// Height of the title band in pixels.
pub const TITLE_HEIGHT: u32 = 40;

const FONT: &str = "sans-serif";

/// What [`render`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// Path of `report.png`.
    pub png: PathBuf,
    /// Path of `report.svg`.
    pub svg: PathBuf,
    /// The panels drawn, top to bottom: `loss`, `micro-batch`, `throughput`, and `memory`
    /// when the run recorded device memory.
    pub panels: Vec<&'static str>,
    /// Image size in pixels (width, height).
    pub size: (u32, u32),
    /// Optimizer steps plotted.
    pub steps: usize,
    /// Whether the run finished (`summary.json` exists).
    pub finished: bool,
}

/// Draws `report.png` and `report.svg` into `run_dir`.
///
/// Panels, stacked over a shared step axis: train and evaluation loss; micro-batch (largest
/// chunk) and number of chunks, with markers for OOM, grow, restart and resume events;
/// throughput in samples per second; and device memory in use, only when the run recorded
/// it. The title names the run and its effective batch. Works on a running or crashed run
/// (no `summary.json`; unparsable lines such as a torn last line are skipped).
pub fn render(run_dir: &Path) -> Result<Rendered, ReportError> {
    let run = Run::load(run_dir)?;
    let rd = RunDir::new(run_dir);
    if run.steps.is_empty() {
        return Err(ReportError::NoSteps { path: rd.metrics() });
    }
    register_fonts();
    let panels = panels(&run);
    let size = (WIDTH, TITLE_HEIGHT + PANEL_HEIGHT * panels.len() as u32);
    let png_path = rd.report_png();
    let svg_path = rd.report_svg();

    let mut rgb = vec![0u8; (size.0 * size.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
        draw(&root, &run, &panels).map_err(|message| ReportError::Draw { path: png_path.clone(), message })?;
        root.present().map_err(|e| ReportError::Draw { path: png_path.clone(), message: e.to_string() })?;
    }
    let png =
        encode_png(&rgb, size).map_err(|e| ReportError::Draw { path: png_path.clone(), message: e.to_string() })?;
    write_atomic(&png_path, &png)?;

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        draw(&root, &run, &panels).map_err(|message| ReportError::Draw { path: svg_path.clone(), message })?;
        root.present().map_err(|e| ReportError::Draw { path: svg_path.clone(), message: e.to_string() })?;
    }
    write_atomic(&svg_path, svg.as_bytes())?;

    Ok(Rendered { png: png_path, svg: svg_path, panels, size, steps: run.steps.len(), finished: run.summary.is_some() })
}

fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The embedded fonts are valid TrueType files; a failure would only leave text out.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    });
}

fn panels(run: &Run) -> Vec<&'static str> {
    let mut p = vec!["loss", "micro-batch", "throughput"];
    if run.steps.iter().any(|s| s.mem_used.is_some()) {
        p.push("memory");
    }
    p
}

fn encode_png(rgb: &[u8], (w, h): (u32, u32)) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(out)
}

/// Writes through a temporary file and a rename, so a viewer never sees half an image; the
/// error names the image and what failed (the temporary file, or the rename of it to the image).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    oomph_rundir::write_atomically(path, bytes)
        .map_err(|e| ReportError::Write { path: path.to_path_buf(), source: std::io::Error::new(e.source.kind(), e) })
}

// Colours (the "tab10" palette).
const C_TRAIN: RGBColor = RGBColor(31, 119, 180);
const C_EVAL: RGBColor = RGBColor(255, 127, 14);
const C_MICRO: RGBColor = RGBColor(31, 119, 180);
const C_CHUNKS: RGBColor = RGBColor(148, 103, 189);
const C_OOM: RGBColor = RGBColor(214, 39, 40);
const C_GROW: RGBColor = RGBColor(44, 160, 44);
const C_RESTART: RGBColor = RGBColor(0, 0, 0);
const C_RESUME: RGBColor = RGBColor(23, 190, 207);
const C_SPEED: RGBColor = RGBColor(44, 160, 44);
const C_MEM: RGBColor = RGBColor(140, 86, 75);
const C_CAP: RGBColor = RGBColor(127, 127, 127);

type DrawResult = Result<(), String>;

fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

/// `lo..hi` padded by 5% (and widened when flat), from finite values only.
fn padded(values: impl Iterator<Item = f64>, zero_floor: bool) -> Range<f64> {
    let (mut lo, mut hi) =
        values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    if zero_floor {
        lo = lo.min(0.0);
    }
    if hi - lo < 1e-12 {
        let d = if hi.abs() > 1e-12 { hi.abs() * 0.1 } else { 1.0 };
        lo -= d;
        hi += d;
    }
    let pad = (hi - lo) * 0.05;
    let lo = if zero_floor && lo >= 0.0 { lo } else { lo - pad };
    lo..hi + pad
}

/// Steps from one before the first record or event (so that a marker at the first step
/// stands clear of the axis) to the last step, or one past it for an event of the step in
/// progress.
fn x_range(run: &Run) -> Range<i64> {
    let first = run.steps.first().map_or(0, |s| s.step as i64);
    let last = run.steps.last().map_or(1, |s| s.step as i64);
    let first_event = run.events.iter().map(|e| e.step as i64).min().unwrap_or(first);
    let last_event = run.events.iter().map(|e| e.step as i64).max().unwrap_or(last);
    let lo = (first.min(first_event) - 1).max(0);
    let hi = last.max(last_event.min(last + 1));
    if hi <= lo {
        lo..lo + 1
    } else {
        lo..hi
    }
}

/// Points of a line in the unit square of its chart, with segments filled in so that a
/// sparse line still occupies the corners it crosses.
fn unit_line(points: &[(i64, f64)], xr: &Range<i64>, yr: &Range<f64>) -> Vec<(f64, f64)> {
    let w = (xr.end - xr.start).max(1) as f64;
    let h = (yr.end - yr.start).max(1e-12);
    let u = |&(x, y): &(i64, f64)| ((x - xr.start) as f64 / w, (y - yr.start) / h);
    let mut out = Vec::new();
    for pair in points.windows(2) {
        let (a, b) = (u(&pair[0]), u(&pair[1]));
        for i in 0..16 {
            let t = i as f64 / 16.0;
            out.push((a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t));
        }
    }
    out.extend(points.last().map(u));
    out
}

/// The legend corner that covers the fewest plotted points (ties: upper right, upper left,
/// lower right, lower left).
fn quiet_corner(points: &[(f64, f64)], legend_w: f64, legend_h: f64) -> SeriesLabelPosition {
    let corners = [
        (SeriesLabelPosition::UpperRight, 1.0 - legend_w..1.01, 1.0 - legend_h..1.01),
        (SeriesLabelPosition::UpperLeft, -0.01..legend_w, 1.0 - legend_h..1.01),
        (SeriesLabelPosition::LowerRight, 1.0 - legend_w..1.01, -0.01..legend_h),
        (SeriesLabelPosition::LowerLeft, -0.01..legend_w, -0.01..legend_h),
    ];
    let mut best = (usize::MAX, SeriesLabelPosition::UpperRight);
    for (pos, xs, ys) in corners {
        let n = points.iter().filter(|(x, y)| xs.contains(x) && ys.contains(y)).count();
        if n < best.0 {
            best = (n, pos);
        }
    }
    best.1
}

fn line_legend(c: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, run: &Run, panels: &[&str]) -> DrawResult {
    root.fill(&WHITE).map_err(err)?;
    let mut title = format!(
        "{}  \u{2014}  effective batch {}",
        run.name,
        run.effective_batch.map_or("?".into(), |b| b.to_string())
    );
    if run.summary.is_none() {
        title.push_str("  (did not finish)");
    }
    let (top, body) = root.split_vertically(TITLE_HEIGHT);
    top.draw(&Text::new(title, (20, 8), (FONT, 26).into_font().style(FontStyle::Bold).color(&BLACK))).map_err(err)?;
    let t = run.totals();
    let plural = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let stats = [
        plural(t.steps, "step", "steps"),
        plural(t.ooms, "OOM event", "OOM events"),
        plural(t.restarts, "restart", "restarts"),
        plural(t.resumes, "resume", "resumes"),
    ]
    .join("  \u{b7}  ");
    let right = (FONT, 16).into_font().color(&RGBColor(90, 90, 90)).pos(Pos::new(HPos::Right, VPos::Top));
    top.draw(&Text::new(stats, (WIDTH as i32 - 20, 14), right)).map_err(err)?;
    let areas = body.split_evenly((panels.len(), 1));
    let xr = x_range(run);
    for (name, area) in panels.iter().zip(&areas) {
        match *name {
            "loss" => loss_panel(area, run, xr.clone())?,
            "micro-batch" => micro_panel(area, run, xr.clone())?,
            "throughput" => speed_panel(area, run, xr.clone())?,
            "memory" => memory_panel(area, run, xr.clone())?,
            _ => {}
        }
    }
    Ok(())
}

fn chart_on<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    caption: &str,
    xr: Range<i64>,
    yr: Range<f64>,
    right_axis: bool,
) -> Result<
    ChartContext<'a, DB, Cartesian2d<plotters::coord::types::RangedCoordi64, plotters::coord::types::RangedCoordf64>>,
    String,
> {
    ChartBuilder::on(area)
        .margin_left(10)
        .margin_right(if right_axis { 10 } else { 80 })
        .margin_top(4)
        .margin_bottom(4)
        .caption(caption, (FONT, 18))
        .x_label_area_size(40)
        .y_label_area_size(80)
        .right_y_label_area_size(if right_axis { 70 } else { 0 })
        .build_cartesian_2d(xr, yr)
        .map_err(err)
}

/// Tick labels with the same number of decimals across the axis, chosen from its span;
/// thousands and millions get a `k` / `M` suffix.
fn y_fmt(yr: &Range<f64>) -> impl Fn(&f64) -> String {
    let top = yr.start.abs().max(yr.end.abs());
    let (scale, suffix) = if top >= 1e6 {
        (1e6, "M")
    } else if top >= 1e4 {
        (1e3, "k")
    } else {
        (1.0, "")
    };
    let span = ((yr.end - yr.start) / scale).max(1e-12);
    let decimals = (2 - span.log10().floor() as i32).clamp(0, 6) as usize;
    move |v: &f64| {
        let x = v / scale;
        if x.abs() < 0.5 * 10f64.powi(-(decimals as i32)) {
            return "0".into();
        }
        format!("{x:.decimals$}{suffix}")
    }
}

fn mesh<DB: DrawingBackend>(
    chart: &mut ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordi64, plotters::coord::types::RangedCoordf64>,
    >,
    y_desc: &str,
    y_fmt: &dyn Fn(&f64) -> String,
) -> DrawResult {
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(y_desc)
        .y_label_formatter(y_fmt)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(err)
}

fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    pos: SeriesLabelPosition,
) -> DrawResult {
    chart
        .configure_series_labels()
        .position(pos)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .draw()
        .map_err(err)
}

fn loss_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, run: &Run, xr: Range<i64>) -> DrawResult {
    let train: Vec<(i64, f64)> =
        run.steps.iter().filter(|s| s.loss.is_finite()).map(|s| (s.step as i64, s.loss)).collect();
    let eval: Vec<(i64, f64)> =
        run.evals.iter().filter(|e| e.valid_loss.is_finite()).map(|e| (e.step as i64, e.valid_loss)).collect();
    let yr = padded(train.iter().chain(&eval).map(|p| p.1), false);
    let mut pts = unit_line(&train, &xr, &yr);
    pts.extend(unit_line(&eval, &xr, &yr));
    let corner = quiet_corner(&pts, 0.2, 0.3);
    let mut chart = chart_on(area, "loss", xr.clone(), yr.clone(), false)?;
    mesh(&mut chart, "loss", &y_fmt(&yr))?;
    chart
        .draw_series(LineSeries::new(train, C_TRAIN.stroke_width(2)))
        .map_err(err)?
        .label("train loss")
        .legend(line_legend(C_TRAIN));
    if !eval.is_empty() {
        chart
            .draw_series(LineSeries::new(eval.clone(), C_EVAL.stroke_width(2)))
            .map_err(err)?
            .label("eval loss")
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (20, 0)], C_EVAL.stroke_width(2))
                    + Circle::new((10, 0), 4, C_EVAL.filled())
            });
        chart.draw_series(eval.iter().map(|&p| Circle::new(p, 4, C_EVAL.filled()))).map_err(err)?;
    }
    legend(&mut chart, corner)
}

fn micro_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, run: &Run, xr: Range<i64>) -> DrawResult {
    let micro: Vec<(i64, f64)> = run.steps.iter().map(|s| (s.step as i64, s.micro_batch as f64)).collect();
    let chunks: Vec<(i64, f64)> = run.steps.iter().map(|s| (s.step as i64, s.chunks as f64)).collect();
    let at = |step: usize, v: usize| (step as i64, v as f64);
    let mut ooms: Vec<(i64, f64)> = Vec::new();
    let mut grows: Vec<(i64, f64)> = Vec::new();
    let mut restarts: Vec<i64> = Vec::new();
    let mut resumes: Vec<i64> = Vec::new();
    for e in &run.events {
        match &e.event {
            // An evaluation's OOM is not the training micro-batch's.
            Event::Oom { phase, micro_batch, .. } if phase != "eval" => ooms.push(at(e.step, *micro_batch)),
            Event::Policy(oomph_sched::Event::Grow { to, .. }) => grows.push(at(e.step, *to)),
            Event::Restart { .. } => restarts.push(e.step as i64),
            Event::Resume { .. } => resumes.push(e.step as i64),
            _ => {}
        }
    }

    // Headroom above the lines for the legend (about 17 px an entry of ~225 px of plot).
    let entries = 2
        + usize::from(!ooms.is_empty())
        + usize::from(!grows.is_empty())
        + usize::from(!restarts.is_empty())
        + usize::from(!resumes.is_empty());
    let legend_h = ((entries * 17 + 14) as f64 / 225.0).min(0.6);
    let head = 1.05 / (1.0 - legend_h);
    let ymax = micro.iter().chain(&ooms).chain(&grows).map(|p| p.1).fold(1.0, f64::max);
    let yr = 0.0..ymax * head;
    let cmax = chunks.iter().map(|p| p.1).fold(1.0, f64::max);
    let cr = 0.0..cmax * head;
    let mut pts = unit_line(&micro, &xr, &yr);
    pts.extend(unit_line(&chunks, &xr, &cr));
    for &p in ooms.iter().chain(&grows) {
        pts.extend(unit_line(&[p], &xr, &yr));
    }
    let corner = quiet_corner(&pts, 0.22, legend_h);
    let mut chart = chart_on(area, "micro-batch", xr.clone(), yr.clone(), true)?.set_secondary_coord(xr, cr);
    mesh(&mut chart, "micro-batch (largest chunk)", &|v| format!("{v:.0}"))?;
    chart
        .configure_secondary_axes()
        .y_desc("chunks per step")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(err)?;

    let vline = |x: i64| vec![(x, yr.start), (x, yr.end)];
    if !restarts.is_empty() {
        for (i, &x) in restarts.iter().enumerate() {
            let s = chart.draw_series(DashedLineSeries::new(vline(x), 6, 4, C_RESTART.stroke_width(2))).map_err(err)?;
            if i == 0 {
                s.label("restart").legend(line_legend(C_RESTART));
            }
        }
    }
    if !resumes.is_empty() {
        for (i, &x) in resumes.iter().enumerate() {
            let s = chart.draw_series(DashedLineSeries::new(vline(x), 3, 3, C_RESUME.stroke_width(2))).map_err(err)?;
            if i == 0 {
                s.label("resume").legend(line_legend(C_RESUME));
            }
        }
    }
    chart
        .draw_secondary_series(LineSeries::new(chunks, C_CHUNKS.stroke_width(1)))
        .map_err(err)?
        .label("chunks (right axis)")
        .legend(line_legend(C_CHUNKS));
    chart
        .draw_series(LineSeries::new(micro, C_MICRO.stroke_width(2)))
        .map_err(err)?
        .label("micro-batch")
        .legend(line_legend(C_MICRO));
    if !ooms.is_empty() {
        chart
            .draw_series(ooms.iter().map(|&p| Cross::new(p, 6, C_OOM.stroke_width(2))))
            .map_err(err)?
            .label("OOM (failed size)")
            .legend(|(x, y)| Cross::new((x + 10, y), 5, C_OOM.stroke_width(2)));
    }
    if !grows.is_empty() {
        chart
            .draw_series(grows.iter().map(|&p| TriangleMarker::new(p, 6, C_GROW.filled())))
            .map_err(err)?
            .label("grow (size tried)")
            .legend(|(x, y)| TriangleMarker::new((x + 10, y), 5, C_GROW.filled()));
    }
    legend(&mut chart, corner)
}

fn speed_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, run: &Run, xr: Range<i64>) -> DrawResult {
    let speed: Vec<(i64, f64)> = run
        .steps
        .iter()
        .filter(|s| s.samples_per_sec.is_finite())
        .map(|s| (s.step as i64, s.samples_per_sec))
        .collect();
    let yr = padded(speed.iter().map(|p| p.1), true);
    let corner = quiet_corner(&unit_line(&speed, &xr, &yr), 0.35, 0.2);
    let mut chart = chart_on(area, "throughput", xr.clone(), yr.clone(), false)?;
    mesh(&mut chart, "samples / s", &y_fmt(&yr))?;
    chart
        .draw_series(LineSeries::new(speed, C_SPEED.stroke_width(2)))
        .map_err(err)?
        .label("samples per second (retries included)")
        .legend(line_legend(C_SPEED));
    legend(&mut chart, corner)
}

fn memory_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, run: &Run, xr: Range<i64>) -> DrawResult {
    let max = run.steps.iter().flat_map(|s| s.mem_used.into_iter().chain(s.mem_total)).max().unwrap_or(0);
    let (unit, div) = if max >= 1 << 30 { ("GiB", (1u64 << 30) as f64) } else { ("MiB", (1u64 << 20) as f64) };
    let used: Vec<(i64, f64)> =
        run.steps.iter().filter_map(|s| s.mem_used.map(|m| (s.step as i64, m as f64 / div))).collect();
    let total: Vec<(i64, f64)> =
        run.steps.iter().filter_map(|s| s.mem_total.map(|m| (s.step as i64, m as f64 / div))).collect();
    let yr = padded(used.iter().chain(&total).map(|p| p.1), true);
    let mut pts = unit_line(&used, &xr, &yr);
    pts.extend(unit_line(&total, &xr, &yr));
    let corner = quiet_corner(&pts, 0.15, 0.3);
    let mut chart = chart_on(area, "device memory", xr.clone(), yr.clone(), false)?;
    mesh(&mut chart, &format!("memory in use ({unit})"), &y_fmt(&yr))?;
    chart
        .draw_series(LineSeries::new(used, C_MEM.stroke_width(2)))
        .map_err(err)?
        .label("in use")
        .legend(line_legend(C_MEM));
    if !total.is_empty() {
        chart
            .draw_series(DashedLineSeries::new(total, 8, 4, C_CAP.stroke_width(2)))
            .map_err(err)?
            .label("capacity")
            .legend(line_legend(C_CAP));
    }
    legend(&mut chart, corner)
}
