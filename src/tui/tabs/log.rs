//! The Log view: the daemon's recent events (the backlog it sends on `subscribe`, then each new
//! one) interleaved with the dashboard's own lines (connection lost and found, acks, refusals,
//! protocol errors), newest first, with their time in UTC.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Style};
use ratatui::widgets::{Block, Cell, Row};

use crate::protocol::EventKind;
use crate::tui::app::{App, Tab};
use crate::tui::data::{LogLine, kind_name};
use crate::tui::text::clock_utc;

pub fn render(app: &App, frame: &mut Frame, area: Rect) {
    let visible = app.visible_log();
    let title = format!(" events: {} (times UTC, newest first) ", visible.len());
    let rows = visible.iter().map(|l| row(l)).collect();
    let widths = vec![Constraint::Length(8), Constraint::Length(10), Constraint::Fill(1)];
    let (table, mut state) = super::table(
        vec!["time", "what", "message"],
        rows,
        widths,
        Block::bordered().title(title),
        Some(app.selected[Tab::Log.index()]),
    );
    frame.render_stateful_widget(table, area, &mut state);
}

fn kind_style(kind: Option<EventKind>) -> Style {
    use EventKind as K;
    match kind {
        None => Style::new().fg(Color::Cyan),
        Some(K::Failed | K::Warning) => Style::new().fg(Color::Yellow),
        Some(K::Quarantined | K::DaemonStopping) => Style::new().fg(Color::Red),
        Some(K::Done | K::SeriesReported) => Style::new().fg(Color::Green),
        _ => Style::new(),
    }
}

fn row(l: &LogLine) -> Row<'static> {
    Row::new(vec![
        Cell::from(clock_utc(l.time_ms)),
        Cell::from(kind_name(l.kind)).style(kind_style(l.kind)),
        Cell::from(l.text.clone()),
    ])
}
