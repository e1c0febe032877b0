//! Draws the app state into a frame: a header with the views and the connection, a line about the
//! daemon and its intake (led by a banner while a phantom-trained demo model is loaded), the current view (`tabs/`), a footer with keys, the filter input or a
//! notice, and the popups (help, retry confirmation, job details). Reads state only; the same
//! function renders to the terminal and to `TestBackend` in tests.

use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Flex, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Wrap};

use super::app::{App, Conn, Mode, Tab};
use super::keys::KEYS;
use super::tabs;
use super::text::{age, tail};

pub fn render(app: &App, frame: &mut Frame) {
    let [top, info, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    header(app, frame, top);
    info_line(app, frame, info);
    match app.tab {
        Tab::Queue => tabs::queue::render(app, frame, body),
        Tab::Results => tabs::results::render(app, frame, body),
        Tab::Gpu => tabs::gpu::render(app, frame, body),
        Tab::Log => tabs::log::render(app, frame, body),
    }
    footer_line(app, frame, footer);
    match &app.mode {
        Mode::Help => help(frame),
        Mode::Confirm { job_id, label } => confirm(frame, *job_id, label),
        Mode::Job(id) => tabs::queue::job_popup(app, frame, *id),
        Mode::Normal | Mode::Filter { .. } => {}
    }
}

fn header(app: &App, frame: &mut Frame, area: Rect) {
    let mut spans = vec![Span::styled(" ctmask ", Style::new().bold())];
    for tab in Tab::ALL {
        let text = format!(" {} {} ", tab.index() + 1, tab.title());
        let style = if tab == app.tab {
            Style::new().add_modifier(Modifier::REVERSED | Modifier::BOLD)
        } else {
            Style::new()
        };
        spans.push(Span::styled(text, style));
    }
    frame.render_widget(Line::from(spans), area);
    let mut right = Vec::new();
    if app.frozen.is_some() {
        right.push(Span::styled(" FROZEN ", Style::new().black().on_yellow()));
        right.push(Span::raw(" "));
    }
    right.push(match &app.conn {
        Conn::Up { .. } => Span::styled("● connected ", Style::new().green()),
        Conn::Connecting => Span::styled("○ connecting ", Style::new().yellow()),
        Conn::Down { .. } => Span::styled("✗ disconnected ", Style::new().red().bold()),
    });
    frame.render_widget(Line::from(right).alignment(Alignment::Right), area);
}

fn info_line(app: &App, frame: &mut Frame, area: Rect) {
    let line = match (&app.conn, &app.shown().snapshot) {
        (Conn::Down { reason, retry_in_ms }, _) => Line::from(Span::styled(
            format!(
                " no daemon (retry in {}): {reason} · {}",
                age(*retry_in_ms as f64 / 1000.0),
                app.socket
            ),
            Style::new().white().on_red(),
        )),
        (_, Some(s)) => {
            let intake = if s.intake.paused {
                Span::styled(
                    format!("intake PAUSED: {}", s.intake.reasons.join("; ")),
                    Style::new().black().on_yellow(),
                )
            } else {
                Span::styled("intake running", Style::new().green())
            };
            let mut spans = Vec::new();
            // a phantom-trained model must not be mistaken for one fit for real scans
            if let Some(banner) = crate::protocol::demo_banner(&s.models) {
                let style = Style::new().white().on_magenta().add_modifier(Modifier::BOLD);
                spans.push(Span::styled(format!(" {} ", banner.to_uppercase()), style));
            }
            spans.push(Span::raw(format!(
                " ctmask {} · pid {} · up {} · {} · ",
                s.daemon_version,
                s.pid,
                age(s.uptime_s),
                s.device
            )));
            spans.push(intake);
            Line::from(spans)
        }
        (Conn::Up { server, .. }, None) => Line::from(format!(" {server}: waiting for status")),
        (Conn::Connecting, None) => Line::from(format!(" connecting to {}", app.socket)),
    };
    frame.render_widget(line, area);
}

fn footer_line(app: &App, frame: &mut Frame, area: Rect) {
    let dim = Style::new().fg(Color::DarkGray);
    let line = match &app.mode {
        Mode::Filter { input } => Line::from(vec![
            Span::styled(" filter /", Style::new().bold()),
            Span::raw(input.clone()),
            Span::styled("_", Style::new().add_modifier(Modifier::SLOW_BLINK)),
            Span::styled("   Enter apply · Esc cancel", dim),
        ]),
        _ => match &app.notice {
            Some((text, _)) => Line::from(Span::styled(format!(" {text}"), Style::new().cyan())),
            None => {
                let filter = &app.filters[app.tab.index()];
                let mut spans = Vec::new();
                if !filter.is_empty() {
                    let f = format!(" filter: {} (Esc clears) ·", tail(filter, 20));
                    spans.push(Span::styled(f, Style::new().yellow()));
                }
                spans.push(Span::styled(
                    " q quit  ? help  Tab/1-4 view  Enter open  / filter  p pause  r retry  f freeze",
                    dim,
                ));
                Line::from(spans)
            }
        },
    };
    frame.render_widget(line, area);
}

/// A centred rectangle of at most `w` x `h` cells.
pub fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let [row] = Layout::vertical([Constraint::Length(h.min(area.height))])
        .flex(Flex::Center)
        .areas(area);
    let [cell] = Layout::horizontal([Constraint::Length(w.min(area.width))])
        .flex(Flex::Center)
        .areas(row);
    cell
}

fn help(frame: &mut Frame) {
    let area = centered(frame.area(), 62, KEYS.len() as u16 + 2);
    let lines: Vec<Line> = KEYS
        .iter()
        .map(|h| {
            Line::from(vec![
                Span::styled(format!(" {:<16}", h.keys), Style::new().bold().yellow()),
                Span::raw(h.what),
            ])
        })
        .collect();
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" keys ")),
        area,
    );
}

fn confirm(frame: &mut Frame, job_id: i64, label: &str) {
    let area = centered(frame.area(), 50, 5);
    let text = vec![
        Line::from(format!(" Retry job {job_id} ({})?", tail(label, 30))),
        Line::from(""),
        Line::from(vec![
            Span::styled(" y", Style::new().bold().green()),
            Span::raw(" retry   "),
            Span::styled("n", Style::new().bold().red()),
            Span::raw(" / Esc cancel"),
        ]),
    ];
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(text)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(" retry ")),
        area,
    );
}
