//! Screening end to end: slices screened once (copies and renames are not screened again), series
//! reported, bad files quarantined while good ones go on. Helpers come from `mod.rs`.

use super::*;

#[test]
fn screens_slices_reports_series_and_never_rescreens_copies() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = settings(tmp.path());
    let (watch, out) = (s.watch[0].clone(), s.output.clone());
    // Present before start: the start-up scan takes them together (one series report each).
    drop_file(&watch, "a.png", &png(250));
    drop_file(&watch, "b.png", &png(251)); // same content as a.png would be one job
    drop_file(&watch, "c.png", &png(20));
    std::fs::copy(
        shared_dicom("chest_ct1_128_crop_explicit_le.dcm"),
        watch.join("ct.dcm"),
    )
    .expect("copy dicom");
    let d = start(s.clone(), Duration::ZERO);
    assert!(
        wait_until(Duration::from_secs(10), || series_reports(&out).len() == 2
            && slice_reports(&out).len() == 4),
        "reports missing: {:?}",
        files_named(&out, "")
    );
    assert_eq!(files_named(&out, "_mask.png").len(), 4);
    assert_eq!(files_named(&out, "_overlay.png").len(), 4);

    let reports: Vec<serde_json::Value> = series_reports(&out).iter().map(|p| json(p)).collect();
    let loose = reports
        .iter()
        .find(|r| r["series_key"].as_str().is_some_and(|k| k.starts_with("dir-")))
        .expect("png series");
    assert_eq!(loose["schema"], series::SeriesReport::SCHEMA);
    assert_eq!(
        (loose["slice_count"].as_u64(), loose["revision"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(loose["counts"]["covid"], 2);
    assert_eq!(loose["verdict"]["rule"], "covid_fraction");
    assert_eq!(loose["verdict"]["label"], "covid", "2 of 3 slices >= 10 %");
    let ct = reports
        .iter()
        .find(|r| r["series_uid"].is_string())
        .expect("dicom series keyed by its UID");
    assert_eq!(ct["slice_count"], 1);
    let ct_slice = json(
        &out.join(ct["series_key"].as_str().expect("key"))
            .join(ct["slices"][0]["report"].as_str().expect("name")),
    );
    assert_eq!(ct_slice["input"]["format"], "dicom");
    assert_eq!(ct_slice["research_use_only"], true);
    assert_eq!(ct_slice["disclaimer"], crate::DISCLAIMER);
    assert!(ct_slice["input"]["sop_uid"].is_string() && ct_slice["input"]["pixel_spacing"].is_array());
    assert!(
        !std::fs::read_to_string(&slice_reports(&out)[0])
            .expect("read")
            .to_lowercase()
            .contains("patient")
    );

    // A copy and a rename of screened content are not screened again; a late slice re-reports.
    std::fs::copy(watch.join("a.png"), watch.join("a-copy.png")).expect("copy");
    std::fs::rename(watch.join("b.png"), watch.join("b2.png")).expect("rename");
    drop_file(&watch, "late.png", &png(30));
    let loose_path = out
        .join(loose["series_key"].as_str().expect("key"))
        .join(series::SERIES_FILE);
    assert!(
        wait_until(Duration::from_secs(10), || json(&loose_path)["revision"] == 2),
        "late slice not re-reported"
    );
    assert_eq!(json(&loose_path)["slice_count"], 4);
    std::thread::sleep(Duration::from_millis(300));
    let snapshot = fetch_snapshot(&d.socket).expect("status");
    assert_eq!(
        (
            snapshot.counts.done,
            snapshot.counts.pending,
            snapshot.counts.quarantined
        ),
        (5, 0, 0)
    );
    assert_eq!(snapshot.models[0].name, "pixel-test-double");
    let Message::Results(results) = d
        .client()
        .request(&Request::Recent { limit: 10, offset: 0 })
        .expect("recent")
    else {
        panic!("not results")
    };
    assert_eq!(results.slices.len(), 5);
    assert!(results.slices.iter().all(|s| s.thumbnail.is_some()));
    assert_eq!(results.series.len(), 2);
    let key = loose["series_key"].as_str().expect("key").to_string();
    let Message::Results(one) = d
        .client()
        .request(&Request::Series {
            key: key.clone(),
            offset: 0,
            limit: None,
        })
        .expect("series")
    else {
        panic!("not results")
    };
    assert_eq!((one.series.len(), one.slices.len()), (1, 4));
    assert_eq!(one.series[0].key, key);
    assert!(
        d.client()
            .request(&Request::Series {
                key: "nope".into(),
                offset: 0,
                limit: None,
            })
            .is_err()
    );
    assert_eq!(d.stop(), 5, "screened exactly once each");

    // Restart: nothing is screened again.
    let d = start(s, Duration::ZERO);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(fetch_snapshot(&d.socket).expect("status").counts.done, 5);
    assert_eq!(d.stop(), 0);
}

#[test]
fn bad_files_are_quarantined_while_good_ones_are_screened() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = DaemonSettings {
        max_file_bytes: 100_000,
        show_input_paths: true, // jobs found by name below (relative to the watch folder)
        ..settings(tmp.path())
    };
    let (watch, out) = (s.watch[0].clone(), s.output.clone());
    let d = start(s, Duration::ZERO);
    let good = png(250);
    drop_file(&watch, "empty.png", b"");
    drop_file(&watch, "garbage.dcm", b"this is not an image at all");
    drop_file(&watch, "truncated.png", &good[..good.len() / 2]);
    drop_file(&watch, "huge.dcm", &vec![1u8; 100_001]);
    std::fs::copy(shared_dicom("mr_64_explicit_le.dcm"), watch.join("mr.dcm")).expect("copy mr");
    drop_file(&watch, "panics.png", &png(13));
    drop_file(&watch, "fails.png", &png(7));
    drop_file(&watch, "good.png", &good);
    let mut client = d.client();
    let quarantined = |c: &mut Client| match c.request(&Request::Status) {
        Ok(Message::Snapshot(s)) => s,
        other => panic!("no snapshot: {other:?}"),
    };
    assert!(
        wait_until(Duration::from_secs(10), || quarantined(&mut client)
            .counts
            .quarantined
            == 7),
        "{:?}",
        quarantined(&mut client).jobs
    );
    let snap = quarantined(&mut client);
    assert_eq!(snap.counts.done, 1);
    let reason = |name: &str| {
        snap.jobs
            .iter()
            .find(|j| j.path.ends_with(name))
            .and_then(|j| j.reason.clone())
            .unwrap_or_default()
    };
    assert_eq!(reason("empty.png"), "empty file");
    assert!(
        reason("garbage.dcm").starts_with("unknown format"),
        "{}",
        reason("garbage.dcm")
    );
    assert!(
        reason("truncated.png").starts_with("corrupt"),
        "{}",
        reason("truncated.png")
    );
    assert!(
        reason("huge.dcm").starts_with("file too large"),
        "{}",
        reason("huge.dcm")
    );
    assert_eq!(reason("mr.dcm"), "not CT: modality MR");
    assert!(
        reason("panics.png").contains("screener panicked: test double told to panic"),
        "{}",
        reason("panics.png")
    );
    assert!(
        reason("fails.png").contains("test double told to fail"),
        "{}",
        reason("fails.png")
    );
    let fails = snap
        .jobs
        .iter()
        .find(|j| j.path.ends_with("fails.png"))
        .expect("job");
    assert_eq!(fails.attempts, 2, "one retry after the first failure");
    assert_eq!(slice_reports(&out).len(), 1);

    // The operator retries a quarantined job; unknown ids are refused.
    assert!(matches!(
        client.request(&Request::Retry { job_id: fails.id }),
        Ok(Message::Ack { .. })
    ));
    assert!(client.request(&Request::Retry { job_id: 9999 }).is_err());
    assert!(wait_until(Duration::from_secs(5), || quarantined(&mut client)
        .jobs
        .iter()
        .any(|j| j.id == fails.id && j.attempts == 2)));
    d.stop();
}

/// A multi-frame object longer than a batch is screened a batch at a time (the reader decodes
/// the first batch, the worker the rest as it goes): every frame reported, each screened once,
/// the job done once with all its frames.
#[test]
fn a_multiframe_object_longer_than_a_batch_is_screened_a_batch_at_a_time() {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut s = settings(tmp.path());
    s.batch_size = 2;
    let (watch, out) = (s.watch[0].clone(), s.output.clone());
    let mut obj = dicom_object::OpenFileOptions::new()
        .open_file(shared_dicom("chest_ct1_128_crop_explicit_le.dcm"))
        .expect("chest CT");
    let frame: Vec<u16> = obj
        .get(tags::PIXEL_DATA)
        .expect("pixels")
        .to_bytes()
        .expect("bytes")
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    // 7 frames, each a little brighter than the one before (7 = 2 + 2 + 2 + 1)
    let all: Vec<u16> = (0..7u16)
        .flat_map(|k| frame.iter().map(move |v| v + 10 * k))
        .collect();
    obj.put(DataElement::new(
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        PrimitiveValue::from("7"),
    ));
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(all.into()),
    ));
    let mut bytes = Vec::new();
    obj.write_all(&mut bytes).expect("write");
    drop_file(&watch, "multi.dcm", &bytes);
    let d = start(s, Duration::ZERO);
    assert!(
        wait_until(Duration::from_secs(20), || slice_reports(&out).len() == 7
            && series_reports(&out).len() == 1
            && fetch_snapshot(&d.socket).is_ok_and(|s| s.counts.done == 1)),
        "reports: {:?}",
        files_named(&out, "")
    );
    let frames: std::collections::BTreeSet<u64> = slice_reports(&out)
        .iter()
        .map(|p| json(p)["input"]["frame"].as_u64().expect("frame number"))
        .collect();
    assert_eq!(frames.len(), 7, "{frames:?}");
    let series = json(&series_reports(&out)[0]);
    assert_eq!(series["slice_count"], 7);
    assert_eq!(d.stop(), 7, "each frame screened once");
}
