//! `ctmask tui`: a terminal dashboard for the screening daemon, for operators over SSH. It talks
//! only to the daemon's socket protocol (`crate::protocol`) and never reads the database or the
//! outputs. The shape follows ratatui's templates: `app.rs` holds the state and a pure
//! `update(msg) -> effects` (keys in `keys.rs`, whose one table also draws the help), `view.rs`
//! and `tabs/` draw it, `client.rs` keeps the connection on background threads (greeted through
//! `protocol::Client`, as `ctmask status` is; reconnecting when the daemon goes away), and
//! `gpu.rs` samples GPUs through NVML loaded at run time, or CPU and memory from /proc. The
//! golden screens (`golden_screens.rs`) render every view from a fixed picture of a busy daemon.
//!
//! The loop here blocks on one channel (keys, daemon messages, connection changes) with a timeout
//! for the once-a-second tick, and redraws only when something visible changed, at most four
//! times a second, so an idle dashboard costs next to nothing. The terminal (raw mode, alternate
//! screen) is restored on every way out: return, error, and panic through a panic hook.

pub mod app;
pub mod client;
pub mod data;
pub mod gpu;
mod keys;
mod sync;
pub mod tabs;
pub mod text;
pub mod view;

#[cfg(test)]
mod golden_screens;

use std::io::{IsTerminal, Stdout};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use ratatui::crossterm::{cursor, execute};

use app::{App, Effect, Key, Msg};
use client::Client;
use gpu::HostSampler;

/// Host sampling and housekeeping period.
const TICK: Duration = Duration::from_secs(1);
/// Shortest time between two redraws.
const FRAME: Duration = Duration::from_millis(250);
/// Messages handled before the next redraw is considered.
const BATCH: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum TuiError {
    #[error("the dashboard needs a terminal: standard output is not one")]
    NotATerminal,
    #[error("cannot set up the terminal: {0}")]
    Terminal(std::io::Error),
    #[error("cannot draw to the terminal: {0}")]
    Draw(std::io::Error),
    #[error("cannot start the dashboard's {what} thread: {source}")]
    Thread {
        what: &'static str,
        source: std::io::Error,
    },
}

/// Runs the dashboard against the daemon socket at `socket` until the operator quits.
pub fn run(socket: &Path) -> Result<(), TuiError> {
    if !std::io::stdout().is_terminal() {
        return Err(TuiError::NotATerminal);
    }
    let (tx, rx) = mpsc::channel();
    let client = Client::start(socket, tx.clone()).map_err(|source| TuiError::Thread {
        what: "connection",
        source,
    })?;
    let mut screen = Screen::enter()?;
    spawn_input(tx)?;
    let mut app = App::new(socket.display().to_string());
    event_loop(&mut app, &mut screen, &rx, &client)
}

fn event_loop(
    app: &mut App,
    screen: &mut Screen,
    rx: &Receiver<Msg>,
    client: &Client,
) -> Result<(), TuiError> {
    let mut sampler = HostSampler::new();
    let mut next_tick = Instant::now();
    let mut last_draw: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= next_tick {
            let mut fx = app.update(Msg::Host(sampler.sample()));
            fx.extend(app.update(Msg::Tick { now_ms: unix_ms() }));
            if apply(fx, client) {
                return Ok(());
            }
            next_tick += TICK;
            if next_tick <= now {
                next_tick = now + TICK; // after a stall, do not catch up
            }
        }
        let draw_at = last_draw.map_or(now, |t| t + FRAME);
        if app.needs_redraw() && now >= draw_at {
            app.take_redraw();
            (screen.terminal)
                .draw(|frame| view::render(app, frame))
                .map_err(TuiError::Draw)?;
            last_draw = Some(now);
        }
        let wake = if app.needs_redraw() {
            next_tick.min(draw_at.max(now))
        } else {
            next_tick
        };
        let first = match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(msg) => msg,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        let batch = std::iter::once(first).chain(rx.try_iter().take(BATCH));
        for msg in batch {
            if apply(app.update(msg), client) {
                return Ok(());
            }
        }
    }
}

/// Carries out effects; true when the dashboard should quit.
fn apply(effects: Vec<Effect>, client: &Client) -> bool {
    let mut quit = false;
    for effect in effects {
        match effect {
            Effect::Send { generation, request } => client.send(generation, request),
            Effect::Quit => quit = true,
        }
    }
    quit
}

fn unix_ms() -> u64 {
    crate::clock::now_ms().max(0) as u64
}

/// Keys from the terminal, on their own thread (crossterm's `read` blocks).
fn spawn_input(tx: Sender<Msg>) -> Result<(), TuiError> {
    let thread = move || {
        loop {
            let msg = match event::read() {
                Ok(Event::Key(k)) if k.kind != KeyEventKind::Release => match key(k) {
                    Some(k) => Msg::Key(k),
                    None => continue,
                },
                Ok(Event::Resize(..)) => Msg::Resize,
                Ok(_) => continue,
                // The terminal is gone (an SSH session dropped): nobody is watching.
                Err(_) => Msg::Key(Key::Interrupt),
            };
            let last = msg == Msg::Key(Key::Interrupt);
            if tx.send(msg).is_err() || last {
                return;
            }
        }
    };
    std::thread::Builder::new()
        .name("ctmask-tui-input".into())
        .spawn(thread)
        .map(|_| ())
        .map_err(|source| TuiError::Thread {
            what: "input",
            source,
        })
}

/// The terminal's key, as the app knows it.
pub fn key(k: KeyEvent) -> Option<Key> {
    if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
        return Some(Key::Interrupt);
    }
    Some(match k.code {
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Tab => Key::Tab,
        KeyCode::BackTab => Key::BackTab,
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::Left => Key::Left,
        KeyCode::Right => Key::Right,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        KeyCode::Backspace => Key::Backspace,
        _ => return None,
    })
}

/// Whether the terminal is in the dashboard's modes (for the panic hook).
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Raw mode and the alternate screen, undone on drop and on panic.
struct Screen {
    terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl Screen {
    fn enter() -> Result<Screen, TuiError> {
        install_panic_hook();
        enable_raw_mode().map_err(TuiError::Terminal)?;
        ACTIVE.store(true, Ordering::SeqCst);
        let setup = execute!(std::io::stdout(), EnterAlternateScreen, cursor::Hide)
            .and_then(|()| Terminal::new(CrosstermBackend::new(std::io::stdout())));
        match setup {
            Ok(terminal) => Ok(Screen { terminal }),
            Err(e) => {
                restore();
                Err(TuiError::Terminal(e))
            }
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

/// Puts the terminal back as it was; does nothing the second time.
fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = disable_raw_mode();
        let _ = execute!(std::io::stdout(), LeaveAlternateScreen, cursor::Show);
    }
}

/// On a panic anywhere: restore the terminal, then report it as before. A panic on another
/// thread leaves the dashboard unable to go on, so the process ends there.
fn install_panic_hook() {
    static INSTALLED: AtomicBool = AtomicBool::new(false);
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return;
    }
    let previous = std::panic::take_hook();
    let ui_thread = std::thread::current().id();
    std::panic::set_hook(Box::new(move |info| {
        let was_active = ACTIVE.load(Ordering::SeqCst);
        restore();
        previous(info);
        if was_active && std::thread::current().id() != ui_thread {
            std::process::exit(101);
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_terminal_keys() {
        let k = |code| KeyEvent::new(code, KeyModifiers::NONE);
        assert_eq!(key(k(KeyCode::Char('q'))), Some(Key::Char('q')));
        assert_eq!(key(k(KeyCode::BackTab)), Some(Key::BackTab));
        assert_eq!(key(k(KeyCode::F(1))), None);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(key(ctrl_c), Some(Key::Interrupt));
    }

    #[test]
    fn restoring_twice_is_harmless() {
        // Not active: nothing is written to the terminal of the test runner.
        restore();
        restore();
        assert!(!ACTIVE.load(Ordering::SeqCst));
    }
}
