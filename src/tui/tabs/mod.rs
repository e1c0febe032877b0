//! One file per view: Queue (jobs and intake), Results (series and slices, with the series and
//! slice details in `detail.rs`), GPU (host load and throughput) and Log (events). Each exposes
//! `render(app, frame, area)` and shares the table style below.

pub mod detail;
pub mod gpu;
pub mod log;
pub mod queue;
pub mod results;

use ratatui::style::{Modifier, Style};
use ratatui::widgets::{Block, HighlightSpacing, Row, Table, TableState};

/// The selected row's look in every table.
pub fn highlight() -> Style {
    Style::new().add_modifier(Modifier::REVERSED)
}

pub fn header_style() -> Style {
    Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)
}

/// A table with a header and the shared look, and its state with `selected` in view.
pub fn table<'a>(
    header: Vec<&'a str>,
    rows: Vec<Row<'a>>,
    widths: Vec<ratatui::layout::Constraint>,
    block: Block<'a>,
    selected: Option<usize>,
) -> (Table<'a>, TableState) {
    let n = rows.len();
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(header_style()))
        .block(block)
        .row_highlight_style(highlight())
        .highlight_symbol("> ")
        .highlight_spacing(HighlightSpacing::Always);
    let state = TableState::new().with_selected(selected.filter(|_| n > 0).map(|s| s.min(n - 1)));
    (table, state)
}
