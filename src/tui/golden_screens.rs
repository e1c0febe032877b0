//! A fixed picture of a busy daemon (queue, results with thumbnails, events, one GPU) fed through
//! `App::update`, and every view rendered from it to ratatui's `TestBackend` at 80x24 and 120x40,
//! compared with the expected text under `tests/fixtures/tui/`. After a deliberate change to a
//! view, regenerate the expected text (and the text screenshots under `docs/screenshots/`) with
//! `CTMASK_TUI_FIXTURES=write cargo test tui::golden_screens`, and read the diff before committing.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::style::Color;

use super::app::{App, Key, Msg};
use super::gpu::{GpuReading, HostSample};
use super::view;
use crate::protocol::{
    DiskInfo, Event, EventKind, Intake, JobInfo, JobState, Label, Message, ModelInfo, QueueCounts, Results,
    SeriesSummary, SliceSummary, Snapshot, Throughput, Thumbnail, Verdict,
};

/// 2023-11-14 22:13:20 UTC.
pub(crate) const NOW_MS: u64 = 1_700_000_000_000;

fn job(id: i64, state: JobState, file: &str, age_s: f64, attempts: u32, reason: Option<&str>) -> JobInfo {
    JobInfo {
        id,
        state,
        path: format!("/srv/ct/incoming/{file}"),
        series: file
            .contains("IM")
            .then(|| "1.2.840.113619.2.55.3.604688".to_string()),
        age_s,
        attempts,
        reason: reason.map(String::from),
        next_retry_s: (state == JobState::Failed).then_some(42.0),
    }
}

pub(crate) fn snapshot() -> Snapshot {
    Snapshot {
        protocol: 1,
        daemon_version: "0.1.0".into(),
        pid: 4242,
        time_ms: NOW_MS,
        uptime_s: 7380.0,
        device: "cuda:0".into(),
        models: vec![ModelInfo {
            name: "segmenter".into(),
            sha256: "5f2c".into(),
            training_data: None,
        }],
        watch: vec!["/srv/ct/incoming".into()],
        intake: Intake::default(),
        counts: QueueCounts {
            pending: 3,
            running: 1,
            done: 128,
            failed: 2,
            quarantined: 1,
        },
        jobs: vec![
            job(140, JobState::Running, "IM0031.dcm", 1.2, 1, None),
            job(141, JobState::Pending, "IM0032.dcm", 0.8, 0, None),
            job(142, JobState::Pending, "IM0033.dcm", 0.7, 0, None),
            job(143, JobState::Pending, "scan-0007.png", 0.2, 0, None),
            job(
                97,
                JobState::Failed,
                "IM0012.dcm",
                312.0,
                2,
                Some("cuda out of memory"),
            ),
            job(
                88,
                JobState::Failed,
                "chest.jpg",
                905.0,
                1,
                Some("image is 12x9: too small"),
            ),
            job(
                61,
                JobState::Quarantined,
                "broken.dcm",
                4100.0,
                1,
                Some("not a DICOM file: no DICM prefix"),
            ),
        ],
        throughput: Throughput {
            slices_per_s: 2.4,
            slices_total: 1234,
            mean_model_ms: 41.0,
            mean_overhead_ms: 6.0,
        },
        disk: Some(DiskInfo {
            path: "/var/lib/ctmask".into(),
            free_bytes: 120 << 30,
            total_bytes: 200 << 30,
            free_percent: 60.0,
        }),
        outbox: None,
    }
}

/// A 48x48 chest-like overlay: body, two lungs, GGO (yellow) and consolidation (red) blobs.
pub(crate) fn thumbnail(seed: u32) -> Thumbnail {
    let (w, h) = (48i32, 48i32);
    let mut data = Vec::with_capacity((w * h * 3) as usize);
    let inside = |x: i32, y: i32, cx: i32, cy: i32, rx: i32, ry: i32| {
        (x - cx) * (x - cx) * ry * ry + (y - cy) * (y - cy) * rx * rx <= rx * rx * ry * ry
    };
    let lesion_x = 14 + (seed as i32 * 7) % 6;
    for y in 0..h {
        for x in 0..w {
            let p: [u8; 3] = if inside(x, y, lesion_x, 22, 4, 5) && seed % 3 != 2 {
                [230, 200, 40]
            } else if inside(x, y, 33, 28, 3, 3) && seed.is_multiple_of(3) {
                [220, 40, 40]
            } else if inside(x, y, 15, 24, 8, 14) || inside(x, y, 33, 24, 8, 14) {
                [20, 20, 24]
            } else if inside(x, y, 24, 24, 22, 18) {
                [150, 150, 150]
            } else {
                [0, 0, 0]
            };
            data.extend(p);
        }
    }
    Thumbnail {
        width: w as u32,
        height: h as u32,
        channels: 3,
        data,
    }
}

const SERIES_A: &str = "1.2.840.113619.2.55.3.604688";
const SERIES_B: &str = "1.3.12.2.1107.5.1.4.95642";

pub(crate) fn slice(i: u32, series: &str) -> SliceSummary {
    let labels = ["covid", "covid", "control", "pneumonia", "covid", "control"];
    let label = labels[i as usize % labels.len()];
    let probabilities = match label {
        "covid" => [0.05, 0.13, 0.82],
        "pneumonia" => [0.20, 0.71, 0.09],
        _ => [0.90, 0.06, 0.04],
    };
    let ggo = if label == "covid" { 2 } else { 0 };
    SliceSummary {
        job_id: 100 + i64::from(i),
        series_key: series.into(),
        series_uid: Some(series.into()),
        sop_uid: Some(format!("{series}.{i}")),
        instance_number: Some(i as i32 + 1),
        position_z: Some(-120.0 + 2.5 * f64::from(i)),
        pixel_spacing: Some([0.7, 0.7]),
        slice_thickness: Some(2.5),
        file_name: format!("IM{:04}.dcm", i + 1),
        report: format!("{series}.{i}.json"),
        label: Label::parse(label),
        probabilities: Some(probabilities),
        lesion_counts: BTreeMap::from([("ggo".into(), ggo), ("consolidation".into(), ggo / 2)]),
        ggo_px: u64::from(ggo) * 410,
        consolidation_px: u64::from(ggo / 2) * 150,
        lung_px: Some(21_000),
        device: "cuda:0".into(),
        time_ms: 38.0 + f64::from(i % 5),
        done_ms: NOW_MS - u64::from(i) * 400,
        thumbnail: Some(thumbnail(i)),
        ..SliceSummary::default()
    }
}

fn series(key: &str, verdict: Verdict, counts: [u32; 3]) -> SeriesSummary {
    SeriesSummary {
        key: key.into(),
        series_uid: Some(key.into()),
        slice_count: counts.iter().sum(),
        counts: BTreeMap::from([
            ("covid".into(), counts[0]),
            ("pneumonia".into(), counts[1]),
            ("control".into(), counts[2]),
        ]),
        verdict,
        rule: "covid when at least 10% of classified slices are covid (here 50%)".into(),
        ggo_ml: Some(12.4),
        consolidation_ml: Some(1.9),
        involvement_percent: Some(3.2),
        lesion_counts: BTreeMap::from([("consolidation".into(), 3), ("ggo".into(), 8)]),
        revision: 2,
        updated_ms: NOW_MS,
    }
}

pub(crate) fn results() -> Results {
    Results {
        series: vec![
            series(SERIES_A, Verdict::Covid, [4, 1, 3]),
            series(SERIES_B, Verdict::Control, [0, 0, 5]),
            series("dir-9f3a1c", Verdict::Pneumonia, [0, 2, 1]),
        ],
        slices: (0..8).rev().map(|i| slice(i, SERIES_A)).collect(),
        total: None,
    }
}

/// The `series` reply for SERIES_A: all its slices in anatomical order.
pub(crate) fn series_reply() -> Results {
    Results {
        series: vec![series(SERIES_A, Verdict::Covid, [4, 1, 3])],
        slices: (0..8).map(|i| slice(i, SERIES_A)).collect(),
        total: Some(8),
    }
}

pub(crate) fn events() -> Vec<Event> {
    let e = |seq: u64, kind, message: &str, job_id| Event {
        seq,
        time_ms: NOW_MS - (20 - seq) * 7_000,
        kind,
        message: message.into(),
        job_id,
        series: None,
    };
    vec![
        e(
            1,
            EventKind::DaemonStarted,
            "ctmask 0.1.0 started on cuda:0",
            None,
        ),
        e(2, EventKind::Queued, "job 97 queued: IM0012.dcm", Some(97)),
        e(
            3,
            EventKind::Failed,
            "job 97 failed: cuda out of memory",
            Some(97),
        ),
        e(4, EventKind::Done, "job 98 done: covid (0.82)", Some(98)),
        e(
            5,
            EventKind::SeriesReported,
            "series 1.2.840.113619.2.55.3.604688 reported: covid",
            None,
        ),
        e(
            6,
            EventKind::Quarantined,
            "job 61 quarantined: not a DICOM file",
            Some(61),
        ),
        e(7, EventKind::Warning, "disk /var/lib/ctmask at 60% free", None),
        e(8, EventKind::Queued, "job 143 queued: scan-0007.png", Some(143)),
    ]
}

pub(crate) fn gpu_sample(t: u64) -> HostSample {
    HostSample {
        gpus: vec![GpuReading {
            index: 0,
            name: "NVIDIA H100 80GB HBM3".into(),
            util_percent: Some(((t * 37) % 100) as u32),
            mem_used_bytes: Some((30 + (t % 12)) << 30),
            mem_total_bytes: Some(80 << 30),
            temperature_c: Some(61),
            power_w: Some(312.0),
            power_limit_w: Some(700.0),
        }],
        no_gpu: None,
        cpu_percent: Some(12.0),
        mem_used_bytes: Some(24 << 30),
        mem_total_bytes: Some(125 << 30),
    }
}

pub(crate) fn cpu_sample(t: u64) -> HostSample {
    HostSample {
        gpus: Vec::new(),
        no_gpu: Some("NVML not available: libnvidia-ml.so.1 could not be loaded".into()),
        cpu_percent: Some(((t * 13) % 60) as f64),
        mem_used_bytes: Some((5 + t % 3) << 30),
        mem_total_bytes: Some(16 << 30),
    }
}

/// The dashboard after a connection, a snapshot, results, events and 90 host samples.
pub(crate) fn fixture_app(gpu: bool) -> App {
    let mut app = App::new("/run/ctmask/ctmask.sock");
    app.update(Msg::Tick { now_ms: NOW_MS });
    app.update(Msg::Connected {
        generation: 1,
        server: "ctmask 0.1.0 (protocol 1)".into(),
    });
    app.update(Msg::Daemon(Message::Snapshot(Box::new(snapshot()))));
    app.update(Msg::Daemon(Message::Results(results())));
    for e in events() {
        app.update(Msg::Daemon(Message::Event(e)));
    }
    for t in 0..90 {
        app.update(Msg::Host(if gpu { gpu_sample(t) } else { cpu_sample(t) }));
    }
    app
}

/// The views worth a picture, each reached by keys from the fixture.
pub(crate) fn scenes() -> Vec<(&'static str, App)> {
    let keys = |mut app: App, keys: &[Key]| {
        for k in keys {
            app.update(Msg::Key(*k));
        }
        app
    };
    let base = || fixture_app(true);
    // Tab 2 asks for `recent` (events made it stale), Enter for `series`: replies in that order.
    let mut series = keys(base(), &[Key::Char('2'), Key::Enter]);
    series.update(Msg::Daemon(Message::Results(results())));
    series.update(Msg::Daemon(Message::Results(series_reply())));
    let slice = keys(series.clone(), &[Key::Down, Key::Enter]);
    let mut down = base();
    down.update(Msg::Disconnected {
        reason: "connection refused (daemon not running)".into(),
        retry_in_ms: 2000,
    });
    let filter: Vec<Key> = "/covid".chars().map(Key::Char).collect();
    vec![
        ("queue", base()),
        (
            "queue-job",
            keys(base(), &[Key::Down, Key::Down, Key::Down, Key::Down, Key::Enter]),
        ),
        (
            "queue-retry",
            keys(
                base(),
                &[
                    Key::Char('j'),
                    Key::Char('j'),
                    Key::Char('j'),
                    Key::Char('j'),
                    Key::Char('r'),
                ],
            ),
        ),
        ("results", keys(base(), &[Key::Char('2')])),
        (
            "results-filter",
            keys(base(), &[&[Key::Char('2')][..], &filter].concat()),
        ),
        ("series", series),
        ("slice", slice),
        ("gpu", keys(base(), &[Key::Char('3')])),
        ("gpu-none", keys(fixture_app(false), &[Key::Char('3')])),
        ("log", keys(base(), &[Key::Char('4')])),
        ("help", keys(base(), &[Key::Char('?')])),
        ("disconnected", down),
    ]
}

pub(crate) fn render(app: &App, w: u16, h: u16) -> Buffer {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).expect("test backend");
    terminal
        .draw(|f| view::render(app, f))
        .expect("draw to the test backend");
    terminal.backend().buffer().clone()
}

/// The buffer's text, one line per row, trailing spaces dropped.
pub(crate) fn text(buf: &Buffer) -> String {
    let mut out = String::new();
    for y in 0..buf.area.height {
        let line: String = (0..buf.area.width).map(|x| buf[(x, y)].symbol()).collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The buffer with 24-bit colour escapes (for `cat` in a terminal).
pub(crate) fn ansi(buf: &Buffer) -> String {
    let code = |c: Color, fg: bool| match c {
        Color::Rgb(r, g, b) => format!("\x1b[{};2;{r};{g};{b}m", if fg { 38 } else { 48 }),
        Color::Reset => format!("\x1b[{}m", if fg { 39 } else { 49 }),
        other => {
            let n = [
                Color::Black,
                Color::Red,
                Color::Green,
                Color::Yellow,
                Color::Blue,
                Color::Magenta,
                Color::Cyan,
                Color::Gray,
            ]
            .iter()
            .position(|c| *c == other)
            .map_or(if fg { 39 } else { 49 }, |i| i + if fg { 30 } else { 40 });
            format!("\x1b[{n}m")
        }
    };
    // Colours are written where they change only, to keep the file small.
    let mut out = String::new();
    for y in 0..buf.area.height {
        let mut last = None;
        for x in 0..buf.area.width {
            let cell = &buf[(x, y)];
            if last != Some((cell.fg, cell.bg)) {
                out.push_str(&code(cell.fg, true));
                out.push_str(&code(cell.bg, false));
                last = Some((cell.fg, cell.bg));
            }
            out.push_str(cell.symbol());
        }
        out.push_str("\x1b[0m\n");
    }
    out
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_view_matches_its_expected_text() {
    let write = std::env::var("CTMASK_TUI_FIXTURES").is_ok_and(|v| v == "write");
    let dir = root().join("tests/fixtures/tui");
    let mut mismatches = Vec::new();
    for (name, app) in scenes() {
        for (w, h) in [(80, 24), (120, 40)] {
            let buf = render(&app, w, h);
            let got = text(&buf);
            let path = dir.join(format!("{name}-{w}x{h}.txt"));
            if write {
                std::fs::create_dir_all(&dir).expect("fixture folder");
                std::fs::write(&path, &got).expect("write fixture");
                continue;
            }
            let want = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e} (CTMASK_TUI_FIXTURES=write makes it)", path.display()));
            if got != want {
                mismatches.push(format!(
                    "{}:\n--- expected\n{want}--- rendered\n{got}",
                    path.display()
                ));
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

/// Text screenshots for the README (`docs/screenshots/`), written with the fixtures.
#[test]
fn screenshots_are_written_on_request() {
    if !std::env::var("CTMASK_TUI_FIXTURES").is_ok_and(|v| v == "write") {
        return;
    }
    let dir = root().join("docs/screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot folder");
    for (name, app) in scenes() {
        let buf = render(&app, 120, 40);
        std::fs::write(dir.join(format!("{name}.txt")), text(&buf)).expect("write screenshot");
        if name == "slice" {
            std::fs::write(dir.join(format!("{name}.ansi")), ansi(&buf)).expect("write screenshot");
        }
    }
}

#[test]
fn the_slice_view_draws_the_thumbnail_in_colour() {
    let (_, app) = scenes()
        .into_iter()
        .find(|(n, _)| *n == "slice")
        .expect("slice scene");
    let buf = render(&app, 80, 24);
    let blocks: Vec<_> = buf.content.iter().filter(|c| c.symbol() == "▀").collect();
    assert!(blocks.len() > 200, "{} half blocks", blocks.len());
    // The yellow GGO blob of the fixture shows up in some cell.
    assert!(
        blocks
            .iter()
            .any(|c| c.fg == Color::Rgb(230, 200, 40) || c.bg == Color::Rgb(230, 200, 40))
    );
}

#[test]
fn a_phantom_trained_model_shows_the_demo_banner() {
    let plain = text(&render(&fixture_app(true), 120, 40));
    assert!(!plain.contains("DEMO MODEL"));
    let mut app = fixture_app(true);
    let mut s = snapshot();
    s.models[0].training_data = Some("synthetic phantoms".into());
    app.update(Msg::Daemon(Message::Snapshot(Box::new(s))));
    let shown = text(&render(&app, 120, 40));
    let line = shown.lines().nth(1).unwrap_or_default();
    assert!(
        line.contains("DEMO MODEL: NOT FOR REAL SCANS"),
        "the info line: {line}"
    );
}
