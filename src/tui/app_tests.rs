//! `App::update` for every message and key, without a terminal or a socket.

use super::*;
use crate::protocol::{Event, EventKind, Intake, JobState};
use crate::tui::data::HISTORY_CAP;
use crate::tui::golden_screens::{NOW_MS, events, fixture_app, gpu_sample, results, series_reply, snapshot};
use crate::tui::sync::{RECENT_LIMIT, REQUEST_TIMEOUT_MS};

fn sends(fx: &[Effect]) -> Vec<Request> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Send { request, .. } => Some(request.clone()),
            Effect::Quit => None,
        })
        .collect()
}

fn press(app: &mut App, keys: &str) -> Vec<Effect> {
    keys.chars()
        .flat_map(|c| app.update(Msg::Key(Key::Char(c))))
        .collect()
}

fn key(app: &mut App, k: Key) -> Vec<Effect> {
    app.update(Msg::Key(k))
}

fn recent() -> Request {
    Request::Recent {
        limit: RECENT_LIMIT,
        offset: 0,
    }
}

#[test]
fn connecting_asks_for_status_and_results_on_that_connection() {
    let mut app = App::new("/s.sock");
    assert_eq!(app.conn, Conn::Connecting);
    let fx = app.update(Msg::Connected {
        generation: 7,
        server: "ctmask 0.1.0".into(),
    });
    assert_eq!(sends(&fx), vec![Request::Status, recent()]);
    assert!(fx.iter().all(|e| matches!(e, Effect::Send { generation: 7, .. })));
    assert!(app.connected());
    assert!(app.live.log[0].text.contains("connected to ctmask 0.1.0"));
}

#[test]
fn losing_the_daemon_is_shown_and_logged_once() {
    let mut app = fixture_app(true);
    let down = || Msg::Disconnected {
        reason: "connection refused".into(),
        retry_in_ms: 500,
    };
    let before = app.live.log.len();
    assert!(app.update(down()).is_empty());
    app.update(down());
    assert_eq!(app.live.log.len(), before + 1, "same reason: logged once");
    assert!(matches!(&app.conn, Conn::Down { retry_in_ms: 500, .. }));
    assert!(
        sends(&app.update(Msg::Tick {
            now_ms: NOW_MS + 60_000
        }))
        .is_empty()
    );
    // Data from before stays on screen; reconnecting asks again.
    assert!(app.shown().snapshot.is_some());
    let fx = app.update(Msg::Connected {
        generation: 2,
        server: "s".into(),
    });
    assert_eq!(sends(&fx), vec![Request::Status, recent()]);
}

#[test]
fn replies_are_matched_to_requests_in_order() {
    let mut app = fixture_app(true);
    assert_eq!(app.shown().snapshot.as_ref().map(|s| s.pid), Some(4242));
    assert_eq!(app.shown().results.series.len(), 3);
    // Open a series: `series` in flight; the reply fills the detail, not the results list.
    press(&mut app, "2");
    app.update(Msg::Daemon(Message::Results(results())));
    let fx = key(&mut app, Key::Enter);
    assert_eq!(
        sends(&fx),
        vec![Request::Series {
            key: results().series[0].key.clone(),
            offset: 0,
            limit: None,
        }]
    );
    assert!(
        app.series
            .as_ref()
            .is_some_and(|d| d.loading && d.slices.len() == 8)
    );
    let mut reply = series_reply();
    reply.slices.truncate(3);
    app.update(Msg::Daemon(Message::Results(reply)));
    let d = app.series.as_ref().expect("detail");
    assert!(!d.loading);
    assert_eq!(d.slices.len(), 3);
    assert_eq!(app.live.results.slices.len(), 8, "recent list untouched");
}

#[test]
fn a_refused_series_request_stops_loading_and_keeps_recent_slices() {
    let mut app = fixture_app(true);
    press(&mut app, "2");
    app.update(Msg::Daemon(Message::Results(results())));
    key(&mut app, Key::Enter);
    app.update(Msg::Daemon(Message::Error {
        code: crate::protocol::ErrorCode::UnknownRequest,
        message: "request type not supported by this daemon".into(),
    }));
    let d = app.series.as_ref().expect("detail");
    assert!(!d.loading);
    assert_eq!(
        d.slices.len(),
        8,
        "the recent slices of the series, in anatomical order"
    );
    let z: Vec<_> = d.slices.iter().map(|s| s.position_z.unwrap_or(0.0)).collect();
    assert!(z.windows(2).all(|w| w[0] <= w[1]), "{z:?}");
    assert!(app.notice.as_ref().is_some_and(|n| n.0.contains("not supported")));
    assert!(app.live.log[0].text.contains("unknown_request"));
}

#[test]
fn events_are_logged_once_and_refresh_status_and_results() {
    let mut app = fixture_app(true);
    let n = app.live.log.len();
    for e in events() {
        app.update(Msg::Daemon(Message::Event(e))); // the backlog again after a reconnect
    }
    assert_eq!(app.live.log.len(), n);
    assert_eq!(app.live.log[0].kind, Some(EventKind::Queued), "newest first");
    // Events made status and results stale: the next tick asks (results only on that view).
    let fx = app.update(Msg::Tick { now_ms: NOW_MS + 100 });
    assert_eq!(sends(&fx), vec![Request::Status]);
    let fx = press(&mut app, "2");
    assert_eq!(sends(&fx), vec![recent()]);
    // Nothing more while both are in flight.
    assert!(
        sends(&app.update(Msg::Tick {
            now_ms: NOW_MS + 1100
        }))
        .is_empty()
    );
}

#[test]
fn status_is_polled_and_an_overdue_request_is_repeated() {
    let mut app = fixture_app(true);
    app.update(Msg::Tick { now_ms: NOW_MS + 100 }); // stale from events: asks
    assert!(
        sends(&app.update(Msg::Tick {
            now_ms: NOW_MS + 2500
        }))
        .is_empty(),
        "in flight"
    );
    app.update(Msg::Daemon(Message::Snapshot(Box::new(snapshot()))));
    assert!(
        sends(&app.update(Msg::Tick {
            now_ms: NOW_MS + 2000
        }))
        .is_empty()
    );
    let fx = app.update(Msg::Tick {
        now_ms: NOW_MS + 4200,
    });
    assert_eq!(sends(&fx), vec![Request::Status], "every two seconds");
    let fx = app.update(Msg::Tick {
        now_ms: NOW_MS + 4200 + REQUEST_TIMEOUT_MS,
    });
    assert_eq!(sends(&fx), vec![Request::Status], "no answer for too long");
}

#[test]
fn acks_errors_and_protocol_errors_become_notices() {
    let mut app = fixture_app(true);
    let fx = app.update(Msg::Daemon(Message::Ack {
        request: "pause".into(),
        message: "intake paused by operator".into(),
    }));
    assert_eq!(sends(&fx), vec![Request::Status], "see the change at once");
    assert_eq!(
        app.notice.as_ref().map(|n| n.0.as_str()),
        Some("intake paused by operator")
    );
    app.update(Msg::Daemon(Message::Error {
        code: crate::protocol::ErrorCode::RetryRefused,
        message: "job 5 is done".into(),
    }));
    assert!(app.notice.as_ref().is_some_and(|n| n.0.contains("job 5 is done")));
    assert!(
        app.update(Msg::ProtocolError("malformed message: x".into()))
            .is_empty()
    );
    assert!(app.live.log[0].text.contains("protocol error: malformed message"));
    // Notices fade.
    app.update(Msg::Tick {
        now_ms: NOW_MS + NOTICE_MS + 1,
    });
    assert_eq!(app.notice, None);
    // Unknown messages and a late hello change nothing.
    let before = app.live.clone();
    app.update(Msg::Daemon(Message::Unknown));
    app.update(Msg::Daemon(Message::Hello {
        version: 1,
        server: "x".into(),
    }));
    assert_eq!(app.live, before);
}

#[test]
fn host_samples_build_capped_histories() {
    let mut app = fixture_app(true);
    assert_eq!(app.live.host.gpus[0].util.len(), 90);
    for t in 0..400 {
        app.update(Msg::Host(gpu_sample(t)));
    }
    let h = &app.live.host;
    assert_eq!((h.gpus[0].util.len(), h.cpu.len()), (HISTORY_CAP, HISTORY_CAP));
    assert_eq!(h.gpus[0].util.back(), Some(&((399 * 37 % 100) as u64)));
    assert_eq!(app.live.throughput.len(), HISTORY_CAP);
    assert_eq!(app.live.throughput.back(), Some(&2.4));
    assert!(app.take_redraw());
    assert!(!app.take_redraw());
    app.update(Msg::Resize);
    assert!(app.needs_redraw());
}

#[test]
fn quitting_from_any_mode() {
    let mut app = fixture_app(true);
    assert_eq!(press(&mut app, "q"), vec![Effect::Quit]);
    press(&mut app, "/");
    assert!(press(&mut app, "q").is_empty(), "q is text in the filter");
    assert_eq!(key(&mut app, Key::Interrupt), vec![Effect::Quit]);
    key(&mut app, Key::Esc);
    press(&mut app, "?");
    assert_eq!(press(&mut app, "q"), vec![Effect::Quit]);
}

#[test]
fn help_opens_and_closes() {
    let mut app = fixture_app(true);
    press(&mut app, "?");
    assert_eq!(app.mode, Mode::Help);
    press(&mut app, "j");
    assert_eq!(app.mode, Mode::Help, "other keys keep it open");
    key(&mut app, Key::Esc);
    assert_eq!(app.mode, Mode::Normal);
    press(&mut app, "??");
    assert_eq!(app.mode, Mode::Normal);
}

#[test]
fn views_switch_with_tab_and_digits() {
    let mut app = fixture_app(true);
    key(&mut app, Key::Tab);
    assert_eq!(app.tab, Tab::Results);
    key(&mut app, Key::BackTab);
    key(&mut app, Key::BackTab);
    assert_eq!(app.tab, Tab::Log);
    for (c, tab) in [
        ('3', Tab::Gpu),
        ('1', Tab::Queue),
        ('4', Tab::Log),
        ('2', Tab::Results),
    ] {
        press(&mut app, &c.to_string());
        assert_eq!(app.tab, tab);
    }
    press(&mut app, "5");
    assert_eq!(app.tab, Tab::Results);
}

#[test]
fn arrows_and_vi_keys_move_within_the_list() {
    let mut app = fixture_app(true);
    let sel = |app: &App| app.selected[Tab::Queue.index()];
    press(&mut app, "jj");
    key(&mut app, Key::Down);
    assert_eq!(sel(&app), 3);
    press(&mut app, "k");
    key(&mut app, Key::Up);
    assert_eq!(sel(&app), 1);
    key(&mut app, Key::PageDown);
    assert_eq!(sel(&app), 6, "clamped to the 7 jobs");
    key(&mut app, Key::PageUp);
    assert_eq!(sel(&app), 0);
    press(&mut app, "G");
    assert_eq!(sel(&app), 6);
    key(&mut app, Key::Home);
    press(&mut app, "kk");
    assert_eq!(sel(&app), 0);
    key(&mut app, Key::End);
    press(&mut app, "g");
    assert_eq!(sel(&app), 0);
    // Results: left/right pick the list; each keeps its own selection.
    press(&mut app, "2");
    press(&mut app, "j");
    key(&mut app, Key::Right);
    assert_eq!(app.pane, Pane::Slices);
    press(&mut app, "jjj");
    press(&mut app, "h");
    assert_eq!(app.pane, Pane::Series);
    key(&mut app, Key::Left);
    press(&mut app, "l");
    assert_eq!((app.selected[Tab::Results.index()], app.slice_selected), (1, 3));
    // GPU and Log move too.
    press(&mut app, "4j");
    assert_eq!(app.selected[Tab::Log.index()], 1);
    press(&mut app, "3j");
    assert_eq!(app.selected[Tab::Gpu.index()], 0, "one GPU");
}

#[test]
fn enter_and_esc_walk_results_details() {
    let mut app = fixture_app(true);
    press(&mut app, "2");
    app.update(Msg::Daemon(Message::Results(results())));
    key(&mut app, Key::Enter);
    app.update(Msg::Daemon(Message::Results(series_reply())));
    press(&mut app, "jj");
    key(&mut app, Key::Enter);
    assert_eq!(
        app.slice.as_ref().map(|s| s.file_name.as_str()),
        Some("IM0003.dcm")
    );
    press(&mut app, "j"); // nothing to move in a slice
    key(&mut app, Key::Esc);
    assert!(app.slice.is_none() && app.series.is_some());
    key(&mut app, Key::Esc);
    assert!(app.series.is_none());
    // From the slices list straight to a slice.
    key(&mut app, Key::Right);
    press(&mut app, "j");
    key(&mut app, Key::Enter);
    assert_eq!(
        app.slice.as_ref().map(|s| s.file_name.as_str()),
        Some("IM0007.dcm")
    );
    key(&mut app, Key::Esc);
    // Queue: a job's details; GPU and Log have none.
    press(&mut app, "1jjjj");
    key(&mut app, Key::Enter);
    assert_eq!(app.mode, Mode::Job(97));
    key(&mut app, Key::Esc);
    assert_eq!(app.mode, Mode::Normal);
    press(&mut app, "3");
    key(&mut app, Key::Enter);
    press(&mut app, "4");
    key(&mut app, Key::Enter);
    assert_eq!(app.mode, Mode::Normal);
}

#[test]
fn opening_a_series_offline_uses_the_recent_slices() {
    let mut app = fixture_app(true);
    app.update(Msg::Disconnected {
        reason: "gone".into(),
        retry_in_ms: 1000,
    });
    press(&mut app, "2");
    assert!(key(&mut app, Key::Enter).is_empty());
    let d = app.series.as_ref().expect("detail");
    assert!(!d.loading);
    assert_eq!(d.slices.first().map(|s| s.file_name.as_str()), Some("IM0001.dcm"));
}

#[test]
fn the_filter_applies_as_typed_and_esc_cancels() {
    let mut app = fixture_app(true);
    press(&mut app, "2/cov");
    assert_eq!(app.mode, Mode::Filter { input: "cov".into() });
    assert_eq!(app.visible_series().len(), 1);
    assert_eq!(app.visible_slices().len(), 5);
    key(&mut app, Key::Backspace);
    press(&mut app, "v");
    key(&mut app, Key::Enter);
    assert_eq!(app.filters[Tab::Results.index()], "cov");
    assert_eq!(app.visible_series().len(), 1);
    // Editing again and cancelling keeps the applied filter.
    press(&mut app, "/xyz");
    assert!(app.visible_series().is_empty());
    key(&mut app, Key::Esc);
    assert_eq!(app.visible_series().len(), 1);
    // Esc in the list clears it; filters are per view.
    key(&mut app, Key::Esc);
    assert_eq!(app.visible_series().len(), 3);
    press(&mut app, "1/failed");
    key(&mut app, Key::Enter);
    assert_eq!(
        app.visible_jobs().iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![97, 88]
    );
    press(&mut app, "4/quarantine");
    key(&mut app, Key::Enter);
    assert_eq!(app.visible_log().len(), 1);
    press(&mut app, "/");
    key(&mut app, Key::Tab);
    assert!(
        matches!(app.mode, Mode::Filter { .. }),
        "other keys leave the input alone"
    );
}

#[test]
fn p_pauses_or_resumes_what_the_operator_paused() {
    let mut app = fixture_app(true);
    assert_eq!(sends(&press(&mut app, "p")), vec![Request::Pause]);
    let mut paused = snapshot();
    paused.intake = Intake {
        paused: true,
        reasons: vec!["paused by operator".into(), "low disk space: 3% free".into()],
    };
    app.update(Msg::Daemon(Message::Snapshot(Box::new(paused.clone()))));
    assert_eq!(sends(&press(&mut app, "p")), vec![Request::Resume]);
    paused.intake.reasons.remove(0); // paused by the disk alone: p pauses on top of it
    app.update(Msg::Daemon(Message::Snapshot(Box::new(paused))));
    assert_eq!(sends(&press(&mut app, "p")), vec![Request::Pause]);
    app.update(Msg::Disconnected {
        reason: "gone".into(),
        retry_in_ms: 1000,
    });
    assert!(press(&mut app, "p").is_empty());
    assert!(app.notice.as_ref().is_some_and(|n| n.0.contains("not connected")));
}

#[test]
fn r_retries_a_failed_job_after_confirmation() {
    let mut app = fixture_app(true);
    press(&mut app, "r"); // job 140 is running
    assert_eq!(app.mode, Mode::Normal);
    assert!(app.notice.as_ref().is_some_and(|n| n.0.contains("running")));
    press(&mut app, "jjjjr");
    assert_eq!(
        app.mode,
        Mode::Confirm {
            job_id: 97,
            label: "IM0012.dcm".into()
        }
    );
    assert!(press(&mut app, "x").is_empty(), "only y or n answer");
    assert_eq!(sends(&press(&mut app, "y")), vec![Request::Retry { job_id: 97 }]);
    assert_eq!(app.mode, Mode::Normal);
    press(&mut app, "jr");
    assert!(press(&mut app, "n").is_empty());
    press(&mut app, "r");
    assert!(key(&mut app, Key::Esc).is_empty());
    // The quarantined one, from its popup.
    press(&mut app, "j");
    key(&mut app, Key::Enter);
    press(&mut app, "r");
    assert!(matches!(app.mode, Mode::Confirm { job_id: 61, .. }));
    assert_eq!(sends(&press(&mut app, "Y")), vec![Request::Retry { job_id: 61 }]);
    // F resends every failed DICOM forward.
    assert_eq!(
        sends(&press(&mut app, "F")),
        vec![Request::RetryForward { id: None }]
    );
    // Elsewhere r explains where it works.
    press(&mut app, "2r");
    assert_eq!(app.mode, Mode::Normal);
    assert!(app.notice.as_ref().is_some_and(|n| n.0.contains("Queue")));
}

#[test]
fn f_freezes_the_display_but_not_the_data() {
    let mut app = fixture_app(true);
    press(&mut app, "f");
    assert!(app.frozen.is_some());
    app.take_redraw();
    let mut s = snapshot();
    s.counts.pending = 99;
    s.jobs.retain(|j| j.state != JobState::Failed);
    app.update(Msg::Daemon(Message::Snapshot(Box::new(s))));
    app.update(Msg::Host(gpu_sample(1)));
    assert!(!app.needs_redraw(), "frozen: nothing visible changed");
    assert_eq!(app.shown().snapshot.as_ref().map(|s| s.counts.pending), Some(3));
    assert_eq!(app.visible_jobs().len(), 7);
    press(&mut app, "f");
    assert_eq!(app.shown().snapshot.as_ref().map(|s| s.counts.pending), Some(99));
    assert_eq!(app.visible_jobs().len(), 5);
}

#[test]
fn other_keys_do_nothing() {
    let mut app = fixture_app(true);
    let before = (app.tab, app.selected, app.mode.clone());
    for k in [
        Key::Char('x'),
        Key::Char('Z'),
        Key::Backspace,
        Key::Left,
        Key::Right,
    ] {
        assert!(key(&mut app, k).is_empty());
    }
    assert_eq!((app.tab, app.selected, app.mode.clone()), before);
}

#[test]
fn an_open_series_is_refreshed_when_reported_again() {
    let mut app = fixture_app(true);
    press(&mut app, "2");
    app.update(Msg::Daemon(Message::Results(results())));
    key(&mut app, Key::Enter);
    app.update(Msg::Daemon(Message::Results(series_reply())));
    let key_ = results().series[0].key.clone();
    let reported = |seq| {
        Msg::Daemon(Message::Event(Event {
            seq,
            time_ms: NOW_MS + seq,
            kind: EventKind::SeriesReported,
            message: "series reported".into(),
            job_id: None,
            series: Some(key_.clone()),
        }))
    };
    app.update(reported(100));
    let fx = app.update(Msg::Tick { now_ms: NOW_MS + 500 });
    assert!(
        sends(&fx).contains(&Request::Series {
            key: key_.clone(),
            offset: 0,
            limit: None,
        }),
        "{fx:?}"
    );
    press(&mut app, "f");
    app.update(reported(101));
    let fx = app.update(Msg::Tick {
        now_ms: NOW_MS + 1500,
    });
    assert!(
        !sends(&fx).iter().any(|r| matches!(r, Request::Series { .. })),
        "frozen"
    );
}
