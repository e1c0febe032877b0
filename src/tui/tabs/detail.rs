//! The detail views under Results. A series: its verdict and rule, lesion volumes and involvement,
//! a strip of its slices in anatomical order marking the COVID-like ones, and the slice table. A
//! slice: the overlay thumbnail the protocol carries drawn in half-block characters (`▀`, upper
//! pixel as foreground and lower as background colour: two square-ish pixels per cell, which works
//! over any SSH session with colour), beside the slice's numbers.

use ratatui::Frame;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Widget};

use super::results::{burden, lesions, probabilities, verdict_style};
use crate::protocol::{Label, SliceSummary, Thumbnail, Verdict};
use crate::tui::data::SeriesDetail;
use crate::tui::text::{opt, tail};

pub fn series(d: &SeriesDetail, frame: &mut Frame, area: Rect) {
    let [head, strip, table] =
        Layout::vertical([Constraint::Length(6), Constraint::Length(3), Constraint::Min(3)]).areas(area);
    let covid = d.slices.iter().filter(|s| s.label == Some(Label::Covid)).count();
    let total = d.summary.as_ref().map_or(0, |s| s.slice_count);
    let loading = if d.loading { " · loading…" } else { "" };
    let mut lines = Vec::new();
    if let Some(s) = &d.summary {
        lines.push(Line::from(vec![
            Span::raw(" verdict ").bold(),
            Span::styled(s.verdict.as_str().to_uppercase(), verdict_style(s.verdict)),
            Span::raw(format!(" · report revision {}", s.revision)),
        ]));
        lines.push(Line::from(format!(" rule    {}", s.rule)).style(Style::new().fg(Color::DarkGray)));
        lines.push(Line::from(format!(
            " burden  GGO {} ml · consolidation {} ml · involvement {} %",
            opt(s.ggo_ml, 1),
            opt(s.consolidation_ml, 1),
            opt(s.involvement_percent, 1)
        )));
    }
    let counts: Vec<String> = (d.summary.iter())
        .flat_map(|s| s.lesion_counts.iter().map(|(k, v)| format!("{v} {k}")))
        .collect();
    let counts = if counts.is_empty() {
        "no lesions".into()
    } else {
        counts.join(", ")
    };
    lines.push(Line::from(format!(
        " slices  {covid} COVID-like of {} shown ({total} in series) · {counts}{loading}",
        d.slices.len()
    )));
    let title = format!(" series {} (Esc back) ", tail(&d.key, 50));
    frame.render_widget(Paragraph::new(lines).block(Block::bordered().title(title)), head);
    render_strip(&d.slices, frame, strip);
    slice_table(d, frame, table);
}

/// One mark per slice (or group of slices), first to last: `█` COVID-like, `▒` pneumonia,
/// `·` control, ` ` not classified.
pub fn strip(slices: &[SliceSummary], width: usize) -> String {
    if slices.is_empty() || width == 0 {
        return String::new();
    }
    let cells = width.min(slices.len());
    (0..cells)
        .map(|c| {
            let group = &slices[c * slices.len() / cells..((c + 1) * slices.len() / cells)];
            let has = |l: Label| group.iter().any(|s| s.label == Some(l));
            if has(Label::Covid) {
                '█'
            } else if has(Label::Pneumonia) {
                '▒'
            } else if has(Label::Control) {
                '·'
            } else {
                ' '
            }
        })
        .collect()
}

fn render_strip(slices: &[SliceSummary], frame: &mut Frame, area: Rect) {
    let text = strip(slices, area.width.saturating_sub(2) as usize);
    let spans: Vec<Span> = text
        .chars()
        .map(|c| {
            let style = match c {
                '█' => Style::new().fg(Color::Red),
                '▒' => Style::new().fg(Color::Yellow),
                _ => Style::new().fg(Color::Green),
            };
            Span::styled(c.to_string(), style)
        })
        .collect();
    let block = Block::bordered().title(" anatomical order: █ COVID-like ▒ pneumonia · control ");
    frame.render_widget(Paragraph::new(Line::from(spans)).block(block), area);
}

fn slice_table(d: &SeriesDetail, frame: &mut Frame, area: Rect) {
    let rows = d.slices.iter().enumerate().map(|(i, s)| {
        let label = s.label.map_or("-", Label::as_str);
        let covid = if s.label == Some(Label::Covid) { "●" } else { "" };
        let z = s.position_z.or(s.slice_location);
        Row::new(vec![
            Cell::from((i + 1).to_string()),
            Cell::from(s.instance_number.map_or("-".into(), |n| n.to_string())),
            Cell::from(opt(z, 1)),
            Cell::from(tail(&s.file_name, 30)),
            Cell::from(covid).red(),
            Cell::from(label).style(verdict_style(Verdict::of_slice(s.label))),
            Cell::from(probabilities(s.probabilities)),
            Cell::from(lesions(s)),
            Cell::from(opt(burden(s), 1)),
        ])
    });
    let widths = vec![
        Constraint::Length(4),
        Constraint::Length(5),
        Constraint::Length(7),
        Constraint::Fill(1),
        Constraint::Length(1),
        Constraint::Length(9),
        Constraint::Length(14),
        Constraint::Length(6),
        Constraint::Length(5),
    ];
    let header = vec![
        "#",
        "inst",
        "z mm",
        "file",
        "",
        "label",
        "P ct/pn/cov",
        "GGO/cn",
        "burd%",
    ];
    let block = Block::bordered().title(" slices (Enter: slice) ");
    let (table, mut state) = super::table(header, rows.collect(), widths, block, Some(d.selected));
    frame.render_stateful_widget(table, area, &mut state);
}

pub fn slice(s: &SliceSummary, frame: &mut Frame, area: Rect) {
    let block = Block::bordered().title(format!(" slice {} (Esc back) ", tail(&s.file_name, 40)));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let image_w = match &s.thumbnail {
        Some(t) => image_width(t, inner),
        None => 0,
    };
    let [image, _gap, info] = Layout::horizontal([
        Constraint::Length(image_w.max(12)),
        Constraint::Length(1),
        Constraint::Min(20),
    ])
    .areas(inner);
    match &s.thumbnail {
        Some(t) => frame.render_widget(HalfBlocks(t), image),
        None => frame.render_widget(Paragraph::new("no thumbnail"), image),
    }
    frame.render_widget(Paragraph::new(slice_lines(s)), info);
}

/// Columns the thumbnail takes when fitted into `area` (at most half of it).
fn image_width(t: &Thumbnail, area: Rect) -> u16 {
    if t.width == 0 || t.height == 0 {
        return 0;
    }
    let max_w = f64::from(area.width / 2);
    let scale = (max_w / f64::from(t.width)).min(2.0 * f64::from(area.height) / f64::from(t.height));
    (f64::from(t.width) * scale).floor() as u16
}

fn slice_lines(s: &SliceSummary) -> Vec<Line<'static>> {
    let field = |k: &str, v: String| Line::from(vec![Span::raw(format!("{k:<11}")).bold(), v.into()]);
    let label = s.label.map_or("-", Label::as_str);
    let mut lines = vec![
        field("series", tail(&s.series_key, 28)),
        field(
            "instance",
            s.instance_number.map_or("-".into(), |n| n.to_string()),
        ),
        field("z", format!("{} mm", opt(s.position_z.or(s.slice_location), 2))),
        Line::from(vec![
            Span::raw(format!("{:<11}", "label")).bold(),
            Span::styled(label, verdict_style(Verdict::of_slice(s.label))),
        ]),
    ];
    if let Some(p) = s.probabilities {
        for (name, v) in Label::ALL.iter().zip(p) {
            let filled = (v.clamp(0.0, 1.0) * 12.0).round() as usize;
            let bar = format!("{}{}", "█".repeat(filled), "░".repeat(12 - filled));
            lines.push(field(&format!(" {name}"), format!("{v:.2} {bar}")));
        }
    }
    lines.extend([
        field("lesions", format!("{} GGO/consolidation", lesions(s))),
        field("GGO", format!("{} px", s.ggo_px)),
        field("consol.", format!("{} px", s.consolidation_px)),
        field("lung", s.lung_px.map_or("-".into(), |l| format!("{l} px"))),
        field("burden", format!("{} %", opt(burden(s), 2))),
        field("device", format!("{} · {:.0} ms", s.device, s.time_ms)),
        field("report", tail(&s.report, 28)),
    ]);
    lines
}

/// A thumbnail drawn with `▀`: each cell shows two pixels, scaled (nearest) to fit the area.
pub struct HalfBlocks<'a>(pub &'a Thumbnail);

impl Widget for HalfBlocks<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let t = self.0;
        if t.width == 0 || t.height == 0 || area.is_empty() {
            return;
        }
        let scale = (f64::from(area.width) / f64::from(t.width))
            .min(2.0 * f64::from(area.height) / f64::from(t.height));
        let pw = ((f64::from(t.width) * scale).floor() as u16).clamp(1, area.width);
        let ph = ((f64::from(t.height) * scale).floor() as u32).max(1);
        let rows = (ph.div_ceil(2) as u16).min(area.height);
        let pixel = |cx: u16, py: u32| {
            let x = ((f64::from(cx) / scale) as u32).min(t.width - 1);
            let y = ((f64::from(py) / scale) as u32).min(t.height - 1);
            (py < ph).then(|| t.pixel(x, y)).flatten()
        };
        let rgb = |p: Option<[u8; 3]>| p.map_or(Color::Reset, |[r, g, b]| Color::Rgb(r, g, b));
        for cy in 0..rows {
            for cx in 0..pw {
                let (top, bottom) = (pixel(cx, 2 * u32::from(cy)), pixel(cx, 2 * u32::from(cy) + 1));
                if let Some(cell) = buf.cell_mut((area.x + cx, area.y + cy)) {
                    cell.set_symbol("▀")
                        .set_style(Style::new().fg(rgb(top)).bg(rgb(bottom)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_blocks_put_two_pixels_in_a_cell() {
        // 2x2: red, green / blue, white.
        let t = Thumbnail {
            width: 2,
            height: 2,
            channels: 3,
            data: vec![255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255],
        };
        let mut buf = Buffer::empty(Rect::new(0, 0, 4, 4));
        HalfBlocks(&t).render(Rect::new(0, 0, 2, 1), &mut buf);
        let a = &buf[(0, 0)];
        assert_eq!(a.symbol(), "▀");
        assert_eq!((a.fg, a.bg), (Color::Rgb(255, 0, 0), Color::Rgb(0, 0, 255)));
        let b = &buf[(1, 0)];
        assert_eq!((b.fg, b.bg), (Color::Rgb(0, 255, 0), Color::Rgb(255, 255, 255)));
        assert_eq!(buf[(2, 0)].symbol(), " ", "nothing drawn outside the image");
        // Scaled up into 4x2 cells: each source pixel covers 2x2 pixels.
        let mut big = Buffer::empty(Rect::new(0, 0, 4, 2));
        HalfBlocks(&t).render(big.area, &mut big);
        assert_eq!(
            (big[(1, 0)].fg, big[(1, 0)].bg),
            (Color::Rgb(255, 0, 0), Color::Rgb(255, 0, 0))
        );
        assert_eq!(big[(3, 1)].bg, Color::Rgb(255, 255, 255));
    }

    #[test]
    fn strip_marks_covid_like_slices_in_order() {
        let s = |l: Option<&str>| SliceSummary {
            label: l.and_then(Label::parse),
            ..SliceSummary::default()
        };
        let slices = [
            s(Some("control")),
            s(Some("covid")),
            s(None),
            s(Some("pneumonia")),
        ];
        assert_eq!(strip(&slices, 10), "·█ ▒");
        assert_eq!(strip(&slices, 2), "█▒", "groups show their worst class");
        assert_eq!(strip(&[], 5), "");
    }
}
