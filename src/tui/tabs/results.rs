//! The Results view: recent series (verdict, slices per class, GGO and consolidation volumes,
//! lung involvement) above recent slices (label, class probabilities, lesion counts, burden,
//! device and model time). Left/Right picks the list, Enter opens a series or a slice
//! (`detail.rs`), Esc comes back.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::widgets::{Block, Cell, Paragraph, Row};

use super::detail;
use crate::protocol::{Label, SeriesSummary, SliceSummary, Verdict};
use crate::tui::app::{App, Pane, Tab};
use crate::tui::text::{opt, tail};

pub fn render(app: &App, frame: &mut Frame, area: Rect) {
    if let Some(slice) = &app.slice {
        return detail::slice(slice, frame, area);
    }
    if let Some(series) = &app.series {
        return detail::series(series, frame, area);
    }
    let results = &app.shown().results;
    if results.series.is_empty() && results.slices.is_empty() {
        let text = Paragraph::new(" no screened slices yet").block(Block::bordered());
        frame.render_widget(text, area);
        return;
    }
    let [top, bottom] = Layout::vertical([Constraint::Percentage(45), Constraint::Min(4)]).areas(area);
    series_table(app, frame, top);
    slices_table(app, frame, bottom);
}

fn focus_block(title: String, focused: bool) -> Block<'static> {
    let block = Block::bordered().title(title);
    if focused {
        block.border_style(Style::new().fg(Color::Cyan))
    } else {
        block
    }
}

fn series_table(app: &App, frame: &mut Frame, area: Rect) {
    let visible = app.visible_series();
    let focused = app.pane == Pane::Series;
    let title = format!(" series: {} ", visible.len());
    // The key column's width: what the borders, the other columns, the gaps and the highlight
    // symbol leave. UIDs differ at their end, so long keys keep their end.
    let key_width = usize::from(area.width.saturating_sub(2 + 48 + 6 + 2)).max(8);
    let rows = visible.iter().map(|s| series_row(s, key_width)).collect();
    let widths = vec![
        Constraint::Fill(1),
        Constraint::Length(6),
        Constraint::Length(12),
        Constraint::Length(10),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(6),
    ];
    let header = vec![
        "series",
        "slices",
        "verdict",
        "cov/pn/ct",
        "GGO ml",
        "cons ml",
        "inv %",
    ];
    let selected = focused.then_some(app.selected[Tab::Results.index()]);
    let (table, mut state) = super::table(header, rows, widths, focus_block(title, focused), selected);
    frame.render_stateful_widget(table, area, &mut state);
}

/// The colour of a verdict, or of a slice's label (`Verdict::of_slice`).
pub fn verdict_style(verdict: Verdict) -> Style {
    match verdict {
        Verdict::Covid => Style::new().fg(Color::Red).bold(),
        Verdict::Pneumonia => Style::new().fg(Color::Yellow),
        Verdict::Control => Style::new().fg(Color::Green),
        Verdict::Unclassified => Style::new().fg(Color::DarkGray),
    }
}

fn series_row(s: &SeriesSummary, key_width: usize) -> Row<'static> {
    let count = |l: Label| s.counts.get(l.as_str()).copied().unwrap_or(0);
    Row::new(vec![
        Cell::from(tail(&s.key, key_width)),
        Cell::from(s.slice_count.to_string()),
        Cell::from(s.verdict.as_str()).style(verdict_style(s.verdict)),
        Cell::from(format!(
            "{}/{}/{}",
            count(Label::Covid),
            count(Label::Pneumonia),
            count(Label::Control)
        )),
        Cell::from(opt(s.ggo_ml, 1)),
        Cell::from(opt(s.consolidation_ml, 1)),
        Cell::from(opt(s.involvement_percent, 1)),
    ])
}

fn slices_table(app: &App, frame: &mut Frame, area: Rect) {
    let visible = app.visible_slices();
    let focused = app.pane == Pane::Slices;
    let title = format!(" recent slices: {} ", visible.len());
    let rows = visible.iter().map(|s| slice_row(s)).collect();
    let widths = vec![
        Constraint::Fill(1),
        Constraint::Length(9),
        Constraint::Length(14),
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Length(5),
    ];
    let header = vec!["file", "label", "P ct/pn/cov", "GGO/cn", "burd%", "device", "ms"];
    let selected = focused.then_some(app.slice_selected);
    let (table, mut state) = super::table(header, rows, widths, focus_block(title, focused), selected);
    frame.render_stateful_widget(table, area, &mut state);
}

/// Probabilities in the classifier's order: control, pneumonia, covid.
pub fn probabilities(p: Option<[f32; 3]>) -> String {
    match p {
        Some([a, b, c]) => format!("{a:.2} {b:.2} {c:.2}"),
        None => "-".into(),
    }
}

/// `GGO/consolidation` lesion counts.
pub fn lesions(s: &SliceSummary) -> String {
    let n = |k: &str| s.lesion_counts.get(k).copied().unwrap_or(0);
    format!("{}/{}", n("ggo"), n("consolidation"))
}

/// Lesion pixels over lung pixels, in percent.
pub fn burden(s: &SliceSummary) -> Option<f64> {
    let lung = s.lung_px.filter(|&l| l > 0)?;
    Some(100.0 * (s.ggo_px + s.consolidation_px) as f64 / lung as f64)
}

fn slice_row(s: &SliceSummary) -> Row<'static> {
    let label = s.label.map_or("-", Label::as_str);
    Row::new(vec![
        Cell::from(tail(&s.file_name, 40)),
        Cell::from(label).style(verdict_style(Verdict::of_slice(s.label))),
        Cell::from(probabilities(s.probabilities)),
        Cell::from(lesions(s)),
        Cell::from(opt(burden(s), 1)),
        Cell::from(tail(&s.device, 7)),
        Cell::from(format!("{:.0}", s.time_ms)),
    ])
}
