//! The Queue view: intake (running or paused, and why), queue counts, disk and throughput, then
//! the pending, running, failed and quarantined jobs with their age, attempts, series and the
//! reason of failures. Enter opens one job in a popup with its full path and reason.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row, Wrap};

use crate::protocol::{JobInfo, JobState, Snapshot};
use crate::tui::app::{App, Tab};
use crate::tui::text::{age, bytes, tail};
use crate::tui::view::centered;

pub fn render(app: &App, frame: &mut Frame, area: Rect) {
    let Some(snapshot) = &app.shown().snapshot else {
        let text = Paragraph::new(" no status from the daemon yet").block(Block::bordered());
        frame.render_widget(text, area);
        return;
    };
    let lines = summary_lines(snapshot);
    let [summary, jobs] =
        Layout::vertical([Constraint::Length(lines.len() as u16), Constraint::Min(3)]).areas(area);
    frame.render_widget(Paragraph::new(lines), summary);

    let visible = app.visible_jobs();
    let title = format!(" jobs: {} of {} ", visible.len(), snapshot.jobs.len());
    let rows: Vec<Row> = visible.iter().map(|j| job_row(j)).collect();
    let widths = vec![
        Constraint::Length(5),
        Constraint::Length(11),
        Constraint::Length(6),
        Constraint::Length(5),
        Constraint::Fill(1),
        Constraint::Fill(2),
    ];
    let header = vec!["id", "state", "age", "tries", "file", "reason"];
    let (table, mut state) = super::table(
        header,
        rows,
        widths,
        Block::bordered().title(title),
        Some(app.selected[Tab::Queue.index()]),
    );
    frame.render_stateful_widget(table, jobs, &mut state);
}

fn summary_lines(s: &Snapshot) -> Vec<Line<'static>> {
    let intake = if s.intake.paused {
        Span::styled(
            format!("PAUSED: {}", s.intake.reasons.join("; ")),
            Style::new().fg(Color::Yellow).bold(),
        )
    } else {
        Span::styled("running", Style::new().fg(Color::Green))
    };
    let watch = if s.watch.is_empty() {
        String::new()
    } else {
        format!(" · watching {}", s.watch.join(", "))
    };
    let c = &s.counts;
    let disk = match &s.disk {
        Some(d) => format!(
            "{} free of {} ({:.0}%) at {}",
            bytes(d.free_bytes),
            bytes(d.total_bytes),
            d.free_percent,
            tail(&d.path, 30)
        ),
        None => "unknown".into(),
    };
    let mut lines = vec![
        Line::from(vec![Span::raw(" intake  "), intake, Span::raw(watch)]),
        Line::from(format!(
            " queue   {} pending · {} running · {} failed · {} quarantined · {} done",
            c.pending, c.running, c.failed, c.quarantined, c.done
        )),
        Line::from(format!(
            " disk    {disk} · {:.2} slices/s",
            s.throughput.slices_per_s
        )),
    ];
    // DICOM forwarding, when configured: failed sends stand out (`ctmask status --retry-forward`).
    if let Some(o) = &s.outbox {
        let failed = Span::styled(
            format!("{} failed", o.failed),
            if o.failed > 0 {
                Style::new().fg(Color::Red).bold()
            } else {
                Style::new()
            },
        );
        let reason = o
            .items
            .iter()
            .find_map(|i| i.reason.clone())
            .map(|r| format!(" · last error: {r}"))
            .unwrap_or_default();
        lines.push(Line::from(vec![
            Span::raw(format!(" forward {} pending · ", o.pending)),
            failed,
            Span::raw(format!(" · {} sent{reason}", o.sent)),
        ]));
    }
    lines
}

fn state_style(state: JobState) -> Style {
    match state {
        JobState::Running => Style::new().fg(Color::Cyan),
        JobState::Failed => Style::new().fg(Color::Yellow),
        JobState::Quarantined => Style::new().fg(Color::Red),
        _ => Style::new(),
    }
}

/// The input's name when the daemon shows paths (`show_input_paths`), `-` otherwise.
fn file_name(path: &str) -> &str {
    match path.rsplit('/').next() {
        Some(name) if !name.is_empty() => name,
        _ => "-",
    }
}

fn job_row(j: &JobInfo) -> Row<'static> {
    let reason = j.reason.clone().unwrap_or_default();
    Row::new(vec![
        Cell::from(j.id.to_string()),
        Cell::from(j.state.as_str()).style(state_style(j.state)),
        Cell::from(age(j.age_s)),
        Cell::from(j.attempts.to_string()),
        Cell::from(file_name(&j.path).to_string()),
        Cell::from(reason),
    ])
}

/// Enter on a job: everything about it, wrapped.
pub fn job_popup(app: &App, frame: &mut Frame, id: i64) {
    let Some(job) = (app.shown().snapshot.iter())
        .flat_map(|s| s.jobs.iter())
        .find(|j| j.id == id)
    else {
        return;
    };
    let area = centered(frame.area(), 72, 12);
    let field = |k: &str, v: String| Line::from(vec![Span::raw(format!(" {k:<9}")).bold(), v.into()]);
    let mut lines = vec![
        field("state", job.state.as_str().to_string()),
        field(
            "file",
            if job.path.is_empty() {
                "- (the daemon's show_input_paths is off)".into()
            } else {
                job.path.clone()
            },
        ),
        field("series", job.series.clone().unwrap_or_else(|| "-".into())),
        field("age", age(job.age_s)),
        field("attempts", job.attempts.to_string()),
        field("reason", job.reason.clone().unwrap_or_else(|| "-".into())),
    ];
    if let Some(next) = job.next_retry_s {
        lines.push(field("next try", format!("in {}", age(next))));
    }
    let hint = if matches!(job.state, JobState::Failed | JobState::Quarantined) {
        " r retry · Esc close"
    } else {
        " Esc close"
    };
    lines.push(Line::from(hint).style(Style::new().fg(Color::DarkGray)));
    frame.render_widget(Clear, area);
    let title = format!(" job {id} ");
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(title)),
        area,
    );
}
