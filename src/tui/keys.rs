//! What each key does to the dashboard's state (part of `App::update`). The modes decide first:
//! the filter input takes every printable key, a confirmation takes only y/n, help and the job
//! popup close on Esc. In the normal mode the keys are the ones `view::HELP` lists.

use super::app::{App, Effect, Key, Mode, Pane, Tab};
use super::data::{SeriesDetail, anatomical_order};
use crate::protocol::{JobState, Request};

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
        match key {
            Key::Char('q') => return vec![Effect::Quit],
            Key::Char('?') => self.mode = Mode::Help,
            Key::Tab => return self.switch_tab(Tab::ALL[(self.tab.index() + 1) % 4]),
            Key::BackTab => return self.switch_tab(Tab::ALL[(self.tab.index() + 3) % 4]),
            Key::Char(c @ '1'..='4') => {
                return self.switch_tab(Tab::ALL[usize::from(c as u8 - b'1')]);
            }
            Key::Up | Key::Char('k') => self.move_by(-1),
            Key::Down | Key::Char('j') => self.move_by(1),
            Key::PageUp => self.move_by(-10),
            Key::PageDown => self.move_by(10),
            Key::Home | Key::Char('g') => self.move_by(isize::MIN / 2),
            Key::End | Key::Char('G') => self.move_by(isize::MAX / 2),
            Key::Left | Key::Char('h') if self.in_results_lists() => self.pane = Pane::Series,
            Key::Right | Key::Char('l') if self.in_results_lists() => self.pane = Pane::Slices,
            Key::Enter => return self.open(),
            Key::Esc => self.back(),
            Key::Char('/') => {
                let input = self.filters[self.tab.index()].clone();
                self.mode = Mode::Filter { input };
            }
            Key::Char('p') => return self.pause_or_resume(),
            Key::Char('r') => self.ask_retry(),
            Key::Char('F') => {
                return self
                    .send_or_explain(Request::RetryForward { id: None }, "resend failed DICOM forwards");
            }
            Key::Char('f') => self.toggle_freeze(),
            _ => {}
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
