//! What each key does to the dashboard's state (part of `App::update`). The modes decide first:
//! the filter input takes every printable key, a confirmation takes only y/n, help and the job
//! popup close on Esc. In the normal mode a key does what `KEYS` binds it to, and the help popup
//! is drawn from the same table, so the two cannot disagree.

use super::app::{App, Effect, Key, Mode, Pane, Tab};
use super::data::{SeriesDetail, anatomical_order};
use crate::protocol::{JobState, Request};

/// What a key does in the normal mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Quit,
    Help,
    NextView,
    PreviousView,
    /// The view at this index of `Tab::ALL`.
    View(usize),
    Up,
    Down,
    PageUp,
    PageDown,
    First,
    Last,
    SeriesPane,
    SlicesPane,
    Open,
    Back,
    Filter,
    PauseResume,
    Retry,
    Freeze,
    ResendForwards,
}

/// One line of the help popup: the keys as it names them, what they do, and the bindings the
/// normal mode dispatches on.
#[derive(Debug)]
pub struct KeyHelp {
    pub keys: &'static str,
    pub what: &'static str,
    pub bindings: &'static [(Key, Action)],
}

/// Every key of the normal mode, in the help popup's order.
pub const KEYS: &[KeyHelp] = &[
    KeyHelp {
        keys: "q  Ctrl-C",
        what: "quit",
        bindings: &[(Key::Char('q'), Action::Quit), (Key::Interrupt, Action::Quit)],
    },
    KeyHelp {
        keys: "?",
        what: "this help (Esc closes)",
        bindings: &[(Key::Char('?'), Action::Help)],
    },
    KeyHelp {
        keys: "Tab  Shift-Tab",
        what: "next / previous view",
        bindings: &[(Key::Tab, Action::NextView), (Key::BackTab, Action::PreviousView)],
    },
    KeyHelp {
        keys: "1 2 3 4",
        what: "Queue / Results / GPU / Log",
        bindings: &[
            (Key::Char('1'), Action::View(0)),
            (Key::Char('2'), Action::View(1)),
            (Key::Char('3'), Action::View(2)),
            (Key::Char('4'), Action::View(3)),
        ],
    },
    KeyHelp {
        keys: "Up Down  j k",
        what: "move the selection",
        bindings: &[
            (Key::Up, Action::Up),
            (Key::Down, Action::Down),
            (Key::Char('j'), Action::Down),
            (Key::Char('k'), Action::Up),
        ],
    },
    KeyHelp {
        keys: "PgUp PgDn  g G",
        what: "move by a page / to the ends (Home End)",
        bindings: &[
            (Key::PageUp, Action::PageUp),
            (Key::PageDown, Action::PageDown),
            (Key::Char('g'), Action::First),
            (Key::Char('G'), Action::Last),
            (Key::Home, Action::First),
            (Key::End, Action::Last),
        ],
    },
    KeyHelp {
        keys: "Left Right  h l",
        what: "series list / slices list (Results)",
        bindings: &[
            (Key::Left, Action::SeriesPane),
            (Key::Right, Action::SlicesPane),
            (Key::Char('h'), Action::SeriesPane),
            (Key::Char('l'), Action::SlicesPane),
        ],
    },
    KeyHelp {
        keys: "Enter",
        what: "open: job, series, slice",
        bindings: &[(Key::Enter, Action::Open)],
    },
    KeyHelp {
        keys: "Esc",
        what: "back; clear the filter",
        bindings: &[(Key::Esc, Action::Back)],
    },
    KeyHelp {
        keys: "/",
        what: "filter the view (Enter apply, Esc cancel)",
        bindings: &[(Key::Char('/'), Action::Filter)],
    },
    KeyHelp {
        keys: "p",
        what: "pause or resume intake in the daemon",
        bindings: &[(Key::Char('p'), Action::PauseResume)],
    },
    KeyHelp {
        keys: "r",
        what: "retry the selected failed job (y/n)",
        bindings: &[(Key::Char('r'), Action::Retry)],
    },
    KeyHelp {
        keys: "f",
        what: "freeze / unfreeze the display",
        bindings: &[(Key::Char('f'), Action::Freeze)],
    },
    KeyHelp {
        keys: "F",
        what: "resend failed DICOM forwards",
        bindings: &[(Key::Char('F'), Action::ResendForwards)],
    },
];

/// The normal mode's action for `key`, if `KEYS` binds it.
pub fn action(key: Key) -> Option<Action> {
    KEYS.iter()
        .flat_map(|h| h.bindings)
        .find(|(k, _)| *k == key)
        .map(|&(_, a)| a)
}

impl App {
    pub(super) fn on_key(&mut self, key: Key) -> Vec<Effect> {
        if key == Key::Interrupt {
            return vec![Effect::Quit];
        }
        self.mark_dirty();
        match std::mem::replace(&mut self.mode, Mode::Normal) {
            Mode::Normal => self.normal_key(key),
            Mode::Filter { input } => {
                self.filter_key(input, key);
                Vec::new()
            }
            Mode::Confirm { job_id, label } => match key {
                Key::Char('y' | 'Y') => self.send_or_explain(Request::Retry { job_id }, "retry"),
                Key::Char('n' | 'N') | Key::Esc => {
                    self.notify(format!("job {job_id} left as it is"));
                    Vec::new()
                }
                _ => {
                    self.mode = Mode::Confirm { job_id, label };
                    Vec::new()
                }
            },
            Mode::Help => match key {
                Key::Char('q') => vec![Effect::Quit],
                Key::Esc | Key::Char('?') | Key::Enter => Vec::new(),
                _ => {
                    self.mode = Mode::Help;
                    Vec::new()
                }
            },
            Mode::Job(id) => match key {
                Key::Char('q') => vec![Effect::Quit],
                Key::Esc | Key::Enter => Vec::new(),
                Key::Char('r') => {
                    self.ask_retry();
                    Vec::new()
                }
                _ => {
                    self.mode = Mode::Job(id);
                    Vec::new()
                }
            },
        }
    }

    fn normal_key(&mut self, key: Key) -> Vec<Effect> {
        let Some(action) = action(key) else {
            return Vec::new();
        };
        match action {
            Action::Quit => return vec![Effect::Quit],
            Action::Help => self.mode = Mode::Help,
            Action::NextView => return self.switch_tab(Tab::ALL[(self.tab.index() + 1) % 4]),
            Action::PreviousView => return self.switch_tab(Tab::ALL[(self.tab.index() + 3) % 4]),
            Action::View(i) => return self.switch_tab(Tab::ALL[i]),
            Action::Up => self.move_by(-1),
            Action::Down => self.move_by(1),
            Action::PageUp => self.move_by(-10),
            Action::PageDown => self.move_by(10),
            Action::First => self.move_by(isize::MIN / 2),
            Action::Last => self.move_by(isize::MAX / 2),
            Action::SeriesPane if self.in_results_lists() => self.pane = Pane::Series,
            Action::SlicesPane if self.in_results_lists() => self.pane = Pane::Slices,
            Action::SeriesPane | Action::SlicesPane => {}
            Action::Open => return self.open(),
            Action::Back => self.back(),
            Action::Filter => {
                let input = self.filters[self.tab.index()].clone();
                self.mode = Mode::Filter { input };
            }
            Action::PauseResume => return self.pause_or_resume(),
            Action::Retry => self.ask_retry(),
            Action::ResendForwards => {
                return self
                    .send_or_explain(Request::RetryForward { id: None }, "resend failed DICOM forwards");
            }
            Action::Freeze => self.toggle_freeze(),
        }
        Vec::new()
    }

    fn filter_key(&mut self, mut input: String, key: Key) {
        match key {
            Key::Enter => {
                self.filters[self.tab.index()] = input;
                self.reset_selection();
            }
            Key::Esc => self.reset_selection(),
            Key::Backspace => {
                input.pop();
                self.mode = Mode::Filter { input };
                self.reset_selection();
            }
            Key::Char(c) if !c.is_control() => {
                input.push(c);
                self.mode = Mode::Filter { input };
                self.reset_selection();
            }
            _ => self.mode = Mode::Filter { input },
        }
    }

    fn reset_selection(&mut self) {
        self.selected[self.tab.index()] = 0;
        self.slice_selected = 0;
    }

    fn switch_tab(&mut self, tab: Tab) -> Vec<Effect> {
        self.tab = tab;
        if tab == Tab::Results && self.results_stale() && self.connected() {
            return vec![self.request(Request::Recent {
                limit: super::sync::RECENT_LIMIT,
                offset: 0,
            })];
        }
        Vec::new()
    }

    fn in_results_lists(&self) -> bool {
        self.tab == Tab::Results && self.series.is_none() && self.slice.is_none()
    }

    /// The list the arrows move in, as (selected index, length).
    fn cursor(&mut self) -> Option<(&mut usize, usize)> {
        let len = match self.tab {
            Tab::Queue => self.visible_jobs().len(),
            Tab::Results if self.slice.is_some() => return None,
            Tab::Results if self.series.is_some() => {
                let d = self.series.as_mut().expect("checked just above");
                let len = d.slices.len();
                return Some((&mut d.selected, len));
            }
            Tab::Results if self.pane == Pane::Slices => {
                let len = self.visible_slices().len();
                return Some((&mut self.slice_selected, len));
            }
            Tab::Results => self.visible_series().len(),
            Tab::Gpu => self.shown().host.gpus.len(),
            Tab::Log => self.visible_log().len(),
        };
        Some((&mut self.selected[self.tab.index()], len))
    }

    fn move_by(&mut self, delta: isize) {
        if let Some((sel, len)) = self.cursor() {
            let last = len.saturating_sub(1) as isize;
            *sel = (*sel as isize).saturating_add(delta).clamp(0, last) as usize;
        }
    }

    fn open(&mut self) -> Vec<Effect> {
        match self.tab {
            Tab::Queue => {
                let sel = self.selected[Tab::Queue.index()];
                if let Some(id) = self.visible_jobs().get(sel).map(|j| j.id) {
                    self.mode = Mode::Job(id);
                }
            }
            Tab::Results if self.slice.is_some() => {}
            Tab::Results if self.series.is_some() => {
                let d = self.series.as_ref().expect("checked just above");
                self.slice = d.slices.get(d.selected).cloned().map(Box::new);
            }
            Tab::Results if self.pane == Pane::Slices => {
                let slice = self.visible_slices().get(self.slice_selected).copied();
                self.slice = slice.cloned().map(Box::new);
            }
            Tab::Results => return self.open_series(),
            Tab::Gpu | Tab::Log => {}
        }
        Vec::new()
    }

    fn open_series(&mut self) -> Vec<Effect> {
        let sel = self.selected[Tab::Results.index()];
        let Some(summary) = self.visible_series().get(sel).map(|s| (*s).clone()) else {
            return Vec::new();
        };
        let mut slices: Vec<_> = (self.shown().results.slices.iter())
            .filter(|s| s.series_key == summary.key)
            .cloned()
            .collect();
        anatomical_order(&mut slices);
        let key = summary.key.clone();
        self.series = Some(SeriesDetail {
            key: key.clone(),
            summary: Some(summary),
            slices,
            loading: self.connected(),
            selected: 0,
        });
        if self.connected() {
            vec![self.request(Request::Series {
                key,
                offset: 0,
                limit: None,
            })]
        } else {
            Vec::new()
        }
    }

    fn back(&mut self) {
        let tab = self.tab.index();
        if self.tab == Tab::Results && self.slice.is_some() {
            self.slice = None;
        } else if self.tab == Tab::Results && self.series.is_some() {
            self.series = None;
        } else if !self.filters[tab].is_empty() {
            self.filters[tab].clear();
        } else {
            self.notice = None;
        }
    }

    fn pause_or_resume(&mut self) -> Vec<Effect> {
        let by_operator = (self.live.snapshot.as_ref())
            .is_some_and(|s| s.intake.reasons.iter().any(|r| r.contains("operator")));
        if by_operator {
            self.send_or_explain(Request::Resume, "resume intake")
        } else {
            self.send_or_explain(Request::Pause, "pause intake")
        }
    }

    fn ask_retry(&mut self) {
        if self.tab != Tab::Queue {
            self.notify("r retries the failed job selected in the Queue view");
            return;
        }
        let sel = self.selected[Tab::Queue.index()];
        let Some(job) = self.visible_jobs().get(sel).map(|j| (*j).clone()) else {
            self.notify("no job selected");
            return;
        };
        if matches!(job.state, JobState::Failed | JobState::Quarantined) {
            let name = match job.path.rsplit('/').next() {
                Some(n) if !n.is_empty() => n.to_string(),
                _ => format!("job {}", job.id),
            };
            self.mode = Mode::Confirm {
                job_id: job.id,
                label: name,
            };
        } else {
            let state = job.state.as_str();
            let id = job.id;
            self.notify(format!(
                "job {id} is {state}: only failed or quarantined jobs can be retried"
            ));
        }
    }

    fn toggle_freeze(&mut self) {
        if self.frozen.take().is_some() {
            self.notify("display live again");
        } else {
            self.frozen = Some(self.live.clone());
            self.notify("display frozen: press f to follow the daemon again");
        }
    }

    fn send_or_explain(&mut self, request: Request, what: &str) -> Vec<Effect> {
        if self.connected() {
            self.notify(format!("asked the daemon to {what}"));
            vec![self.request(request)]
        } else {
            self.notify(format!("cannot {what}: not connected to the daemon"));
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How the help popup names a key.
    fn name(key: Key) -> String {
        match key {
            Key::Char(c) => c.to_string(),
            Key::Interrupt => "Ctrl-C".into(),
            Key::BackTab => "Shift-Tab".into(),
            Key::PageUp => "PgUp".into(),
            Key::PageDown => "PgDn".into(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn help_names_every_bound_key_and_every_key_does_what_its_line_says() {
        let mut seen = Vec::new();
        for h in KEYS {
            for &(key, act) in h.bindings {
                assert!(!seen.contains(&key), "{key:?} bound twice");
                seen.push(key);
                let shown = h.keys.split_whitespace().any(|k| k == name(key)) || h.what.contains(&name(key));
                assert!(
                    shown,
                    "{key:?} is bound on the line {:?} but not named there",
                    h.keys
                );
                assert_eq!(action(key), Some(act));
            }
            for k in h.keys.split_whitespace() {
                assert!(
                    h.bindings.iter().any(|&(key, _)| name(key) == k),
                    "help names {k} on {:?} but binds no such key",
                    h.keys
                );
            }
        }
        assert_eq!(action(Key::Char('x')), None);
        assert_eq!(action(Key::Backspace), None);
    }
}
