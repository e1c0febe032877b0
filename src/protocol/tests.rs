//! Every request and message round-trips; newer peers are tolerated and garbage refused; lines
//! are limited.

use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::*;

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: T) {
    let line = encode(&value).expect("encode");
    assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
    let back: T = decode(&line).expect("decode");
    assert_eq!(back, value);
}

fn slice_summary() -> SliceSummary {
    SliceSummary {
        job_id: 7,
        frame: None,
        series_key: "1.2.3".into(),
        series_uid: Some("1.2.3".into()),
        sop_uid: Some("1.2.3.4".into()),
        instance_number: Some(4),
        position_z: Some(-120.5),
        pixel_spacing: Some([0.7, 0.7]),
        slice_thickness: Some(1.25),
        file_name: "IM0004.dcm".into(),
        report: "1.2.3.4.json".into(),
        label: Some(Label::Covid),
        probabilities: Some([0.1, 0.2, 0.7]),
        lesion_counts: BTreeMap::from([("ggo".into(), 2)]),
        ggo_px: 120,
        lung_px: Some(9000),
        involvement: BTreeMap::from([("ggo".into(), 0.013)]),
        device: "cuda:0".into(),
        time_ms: 41.5,
        done_ms: 1_700_000_000_000,
        thumbnail: crate::daemon::thumbnail::downsample(4, 2, &[10; 24], 2),
        ..SliceSummary::default()
    }
}

#[test]
fn every_request_round_trips() {
    for r in [
        Request::Hello {
            version: PROTOCOL_VERSION,
            client: "tui".into(),
        },
        Request::Status,
        Request::Subscribe,
        Request::Pause,
        Request::Resume,
        Request::Retry { job_id: 42 },
        Request::RetryForward { id: Some(3) },
        Request::RetryForward { id: None },
        Request::RetryAll,
        Request::Recent { limit: 5, offset: 0 },
        Request::Series {
            key: "1.2.3".into(),
            offset: 10,
            limit: Some(5),
        },
        Request::Thumbnail {
            job_id: 3,
            frame: None,
        },
    ] {
        round_trip(r);
    }
    assert_eq!(
        encode(&Request::Status).expect("encode"),
        "{\"type\":\"status\"}\n"
    );
}

#[test]
fn every_message_round_trips() {
    let snapshot = Snapshot {
        protocol: PROTOCOL_VERSION,
        daemon_version: "0.1.0".into(),
        pid: 12,
        device: "cpu".into(),
        models: vec![ModelInfo {
            name: "segmenter".into(),
            sha256: "ab".into(),
            training_data: None,
        }],
        intake: Intake {
            paused: true,
            reasons: vec!["low disk space".into()],
        },
        counts: QueueCounts {
            pending: 1,
            running: 2,
            done: 3,
            failed: 4,
            quarantined: 5,
        },
        jobs: vec![JobInfo {
            id: 1,
            state: JobState::Failed,
            path: "/in/a.png".into(),
            series: None,
            age_s: 3.5,
            attempts: 2,
            reason: Some("truncated".into()),
            next_retry_s: Some(4.0),
        }],
        disk: Some(DiskInfo {
            path: "/out".into(),
            free_bytes: 1,
            total_bytes: 2,
            free_percent: 50.0,
        }),
        outbox: Some(OutboxStatus {
            pending: 1,
            sent: 2,
            failed: 1,
            items: vec![OutboxItem {
                id: 5,
                destination: "PACS@pacs:104".into(),
                series: "1.2.3".into(),
                kind: "seg".into(),
                state: "failed".into(),
                attempts: 11,
                reason: Some("cannot associate".into()),
                next_retry_s: None,
            }],
        }),
        ..Snapshot::default()
    };
    let event = Event {
        seq: 9,
        time_ms: 5,
        kind: EventKind::SeriesReported,
        message: "series reported".into(),
        job_id: None,
        series: Some("1.2.3".into()),
    };
    let results = Results {
        series: vec![SeriesSummary {
            key: "1.2.3".into(),
            verdict: Verdict::Covid,
            ..SeriesSummary::default()
        }],
        slices: vec![slice_summary()],
        total: Some(1),
    };
    for m in [
        Message::Thumbnail {
            job_id: 7,
            frame: Some(2),
            thumbnail: slice_summary().thumbnail,
        },
        Message::Hello {
            version: 1,
            server: "ctmask 0.1.0".into(),
        },
        Message::Snapshot(Box::new(snapshot)),
        Message::Event(event),
        Message::Results(results),
        Message::Ack {
            request: "pause".into(),
            message: "intake paused".into(),
        },
        Message::Error {
            code: ErrorCode::BadRequest,
            message: "x".into(),
        },
    ] {
        round_trip(m);
    }
}

#[test]
fn tolerates_newer_peers_and_rejects_garbage() {
    let m: Message =
        decode(r#"{"type":"ack","request":"pause","message":"ok","extra":[1,2]}"#).expect("extra field");
    assert_eq!(
        m,
        Message::Ack {
            request: "pause".into(),
            message: "ok".into()
        }
    );
    assert_eq!(
        decode::<Message>(r#"{"type":"gpu_stats","x":1}"#).expect("unknown type"),
        Message::Unknown
    );
    assert_eq!(
        decode::<Request>(r#"{"type":"shutdown"}"#).expect("unknown type"),
        Request::Unknown
    );
    let e: Event = decode(r#"{"seq":1,"time_ms":2,"kind":"new_kind","message":"m"}"#).expect("unknown kind");
    assert_eq!(e.kind, EventKind::Other);
    assert_eq!(
        decode::<Request>(r#"{"type":"recent"}"#).expect("default limit"),
        Request::Recent { limit: 50, offset: 0 }
    );
    assert!(
        decode::<Request>(r#"{"type":"retry"}"#).is_err(),
        "missing job_id"
    );
    assert!(decode::<Request>("not json").is_err());
    assert!(decode::<Request>(r#"{"limit":3}"#).is_err(), "missing type");
}

#[test]
fn reads_lines_and_limits_them() {
    let mut input = std::io::Cursor::new(b"\n{\"type\":\"status\"}\n{\"type\":\"pause\"}".to_vec());
    assert_eq!(
        read_message::<Request, _>(&mut input).expect("first"),
        Some(Request::Status)
    );
    assert_eq!(
        read_message::<Request, _>(&mut input).expect("second"),
        Some(Request::Pause)
    );
    assert_eq!(read_message::<Request, _>(&mut input).expect("end"), None);
    let mut long = std::io::Cursor::new(vec![b'x'; MAX_LINE_BYTES + 10]);
    assert!(matches!(
        read_message::<Request, _>(&mut long),
        Err(ProtocolError::TooLong)
    ));
}
