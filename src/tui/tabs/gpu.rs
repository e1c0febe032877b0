//! The GPU view: per GPU (NVML) utilisation, memory, temperature and power with sparklines of the
//! last minutes; without a GPU, CPU and memory load from /proc and the reason no GPU is shown.
//! Beside it, the daemon's screening throughput (slices per second) with its own sparkline and
//! the model and overhead time per slice. Up/Down scroll when the GPUs do not fit.

use std::collections::VecDeque;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Sparkline, Wrap};

use crate::tui::app::{App, Tab};
use crate::tui::data::{GpuHistory, HostHistory};
use crate::tui::text::{age, bytes, opt};

/// Rows one GPU takes at least and at most, borders included.
const GPU_HEIGHT: (u16, u16) = (7, 15);

pub fn render(app: &App, frame: &mut Frame, area: Rect) {
    let [left, right] = Layout::horizontal([Constraint::Percentage(60), Constraint::Min(24)]).areas(area);
    let host = &app.shown().host;
    if host.gpus.is_empty() {
        no_gpu(host, frame, left);
    } else {
        let fit = usize::from((left.height / GPU_HEIGHT.0).max(1));
        let first = app.selected[Tab::Gpu.index()].min(host.gpus.len().saturating_sub(fit));
        let shown = &host.gpus[first..host.gpus.len().min(first + fit)];
        let each = (left.height / shown.len().max(1) as u16).clamp(GPU_HEIGHT.0, GPU_HEIGHT.1);
        let areas = Layout::vertical(vec![Constraint::Length(each); shown.len()]).split(left);
        for (g, a) in shown.iter().zip(areas.iter()) {
            gpu(g, frame, *a);
        }
    }
    screening(app, frame, right);
}

/// The history squeezed into `width` columns (means of equal groups), newest last.
pub fn fit(history: &VecDeque<u64>, width: usize) -> Vec<u64> {
    let n = history.len();
    if n <= width || width == 0 {
        return history.iter().copied().collect();
    }
    let v: Vec<u64> = history.iter().copied().collect();
    (0..width)
        .map(|i| {
            let g = &v[i * n / width..(i + 1) * n / width];
            g.iter().sum::<u64>() / g.len().max(1) as u64
        })
        .collect()
}

/// A labelled sparkline row: `label` then the bars.
fn spark_row(
    frame: &mut Frame,
    area: Rect,
    label: &str,
    history: &VecDeque<u64>,
    max: Option<u64>,
    color: Color,
) {
    let [l, s] = Layout::horizontal([Constraint::Length(6), Constraint::Min(1)]).areas(area);
    frame.render_widget(Paragraph::new(label.to_string()), l);
    let mut spark = Sparkline::default()
        .data(fit(history, usize::from(s.width)))
        .style(Style::new().fg(color));
    if let Some(m) = max {
        spark = spark.max(m);
    }
    frame.render_widget(spark, s);
}

fn gpu(g: &GpuHistory, frame: &mut Frame, area: Rect) {
    let r = &g.latest;
    let title = format!(" GPU {} · {} ", r.index, r.name);
    let span = Line::from(format!(" last {} ", age(g.util.len() as f64))).right_aligned();
    let block = Block::bordered().title(title).title(span);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [text, util, mem] =
        Layout::vertical([Constraint::Length(1), Constraint::Fill(1), Constraint::Fill(1)]).areas(inner);
    let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
    let mem_text = match (r.mem_used_bytes, r.mem_total_bytes) {
        (Some(u), Some(t)) => format!("{:.1}/{:.0} GiB", gib(u), gib(t)),
        _ => "- GiB".into(),
    };
    let power = match (r.power_w, r.power_limit_w) {
        (Some(p), Some(l)) => format!("{p:.0}/{l:.0} W"),
        (Some(p), None) => format!("{p:.0} W"),
        _ => "- W".into(),
    };
    let temp = r.temperature_c.map_or("-".into(), |t| t.to_string());
    let util_text = r.util_percent.map_or("-".into(), |u| u.to_string());
    let line = format!(" {util_text}% busy · {mem_text} · {temp}°C · {power}");
    frame.render_widget(Paragraph::new(line).bold(), text);
    spark_row(frame, util, " util", &g.util, Some(100), Color::Green);
    spark_row(frame, mem, " mem", &g.mem, Some(100), Color::Magenta);
}

fn no_gpu(host: &HostHistory, frame: &mut Frame, area: Rect) {
    let why = (host.latest.as_ref())
        .and_then(|s| s.no_gpu.clone())
        .unwrap_or_else(|| "not sampled yet".into());
    let block = Block::bordered().title(" no GPU found: CPU and memory instead ");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [reason, cpu_text, cpu, mem_text, mem] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(1),
        Constraint::Fill(1),
        Constraint::Length(1),
        Constraint::Fill(1),
    ])
    .areas(inner);
    let dim = Style::new().fg(Color::DarkGray);
    frame.render_widget(
        Paragraph::new(format!(" {why}"))
            .style(dim)
            .wrap(Wrap { trim: true }),
        reason,
    );
    let latest = host.latest.as_ref();
    let cpu_now = opt(latest.and_then(|s| s.cpu_percent), 0);
    frame.render_widget(
        Line::from(format!(" CPU {cpu_now}% of all cores")).bold(),
        cpu_text,
    );
    spark_row(frame, cpu, " cpu", &host.cpu, Some(100), Color::Green);
    let mem_now = match latest.map(|s| (s.mem_used_bytes, s.mem_total_bytes)) {
        Some((Some(u), Some(t))) => format!("{} of {}", bytes(u), bytes(t)),
        _ => "-".into(),
    };
    frame.render_widget(Line::from(format!(" memory {mem_now} used")).bold(), mem_text);
    spark_row(frame, mem, " mem", &host.mem, Some(100), Color::Magenta);
}

fn screening(app: &App, frame: &mut Frame, area: Rect) {
    let data = app.shown();
    let block = Block::bordered().title(" screening ");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [now, spark_area, rest] =
        Layout::vertical([Constraint::Length(1), Constraint::Length(4), Constraint::Min(0)]).areas(inner);
    let Some(s) = &data.snapshot else {
        frame.render_widget(Paragraph::new(" no status yet"), now);
        return;
    };
    let t = &s.throughput;
    frame.render_widget(Line::from(format!(" {:.2} slices/s", t.slices_per_s)).bold(), now);
    let centi: VecDeque<u64> = (data.throughput.iter())
        .map(|v| (v.max(0.0) * 100.0).round() as u64)
        .collect();
    // Headroom above the highest value, so a steady rate does not fill the box.
    let max = centi.iter().max().map_or(1, |m| (m + m / 4).max(1));
    let spark = Sparkline::default()
        .data(fit(&centi, usize::from(spark_area.width)))
        .max(max)
        .style(Style::new().fg(Color::Cyan));
    frame.render_widget(spark, spark_area);
    let lines = vec![
        Line::from(format!(" over the last {}", age(data.throughput.len() as f64))),
        Line::from(format!(" {} slices since start", t.slices_total)),
        Line::from(format!(" model    {:.0} ms/slice", t.mean_model_ms)),
        Line::from(format!(" overhead {:.0} ms/slice", t.mean_overhead_ms)),
        Line::from(format!(" device   {}", s.device)),
    ];
    frame.render_widget(Paragraph::new(lines), rest);
}
