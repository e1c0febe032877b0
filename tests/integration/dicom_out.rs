//! DICOM out: a synthetic DICOM series with seeded label masks goes through the daemon's own
//! output writers (per-slice PNGs, series.json) and then the DICOM writers. The SEG, SR and SC
//! files pass `dciodvfy` without errors; the SEG read back with dicom-rs has, frame by frame, the
//! label-mask PNGs' pixels and references the right source instances; the SR's numbers are
//! series.json's, bit for bit; the SC overlays carry the burned-in notice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use ctmask::daemon::outputs::{SliceContext, write_slice};
use ctmask::daemon::series;
use ctmask::daemon::settings::SeriesSettings;
use ctmask::data::synth::{ClassChoice, Layout, SynthOptions, run_synth};
use ctmask::dicom::{ObjectKind, Written, write_series};
use ctmask::findings::{Classification, Finding};
use ctmask::protocol::ModelInfo;
use ctmask::slice::{SliceOptions, read_slices};
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, open_file};

/// A seeded generator of the test's own (xorshift), for the masks.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Label mask of slice `i`: a GGO disc and a consolidation disc at seeded places; slice 1 is empty.
fn mask(rng: &mut Rng, i: usize, w: usize, h: usize) -> Vec<u8> {
    let mut m = vec![0u8; w * h];
    if i == 1 {
        return m;
    }
    for (value, r) in [(1u8, 9i64), (2, 5)] {
        let cx = (rng.next() % (w as u64 - 24) + 12) as i64;
        let cy = (rng.next() % (h as u64 - 24) + 12) as i64;
        for y in 0..h as i64 {
            for x in 0..w as i64 {
                if (x - cx).pow(2) + (y - cy).pow(2) <= r * r {
                    m[y as usize * w + x as usize] = value;
                }
            }
        }
    }
    m
}

pub struct Series {
    pub dir: tempfile::TempDir,
    pub output: PathBuf,
    pub inputs: Vec<PathBuf>,
    pub report: series::SeriesReport,
    pub masks: BTreeMap<String, Vec<u8>>,
}

/// A 5-slice synthetic series screened "by hand": real files, real writers, seeded masks.
pub fn screened_series(seed: u64) -> Series {
    let dir = tempfile::tempdir().unwrap();
    run_synth(&SynthOptions {
        out: dir.path().join("in"),
        layout: Layout::Dicom,
        count: 5,
        seed,
        class: ClassChoice::Covid,
        size: 64,
        preview: false,
        zoom: 0.0,
    })
    .unwrap();
    let inputs = super::common::walk_files(&dir.path().join("in"), "dcm");
    assert_eq!(inputs.len(), 5);
    let output = dir.path().join("out");
    let models = vec![ModelInfo {
        name: "seg".into(),
        sha256: "ab".repeat(32),
        training_data: None,
    }];
    let mut rng = Rng(seed | 1);
    let mut summaries = Vec::new();
    let mut masks = BTreeMap::new();
    for (i, path) in inputs.iter().enumerate() {
        let slice = read_slices(path, &SliceOptions::default()).unwrap().remove(0);
        let (w, h) = (slice.width as usize, slice.height as usize);
        let m = mask(&mut rng, i, w, h);
        masks.insert(slice.meta.sop_uid.clone().unwrap(), m.clone());
        let finding = Finding {
            classification: Some(Classification {
                label: if i == 1 { "control" } else { "covid" }.into(),
                probabilities: [0.1, 0.1, 0.8],
                logits: [0.0; 3],
                no_detections: false,
            }),
            width: w as u32,
            height: h as u32,
            overlay_rgb: slice.rgb.clone(),
            label_mask: m,
            lung_field_px: Some((w * h / 3) as u64),
            device: "cpu".into(),
            ..Finding::default()
        };
        let ctx = SliceContext {
            job_id: i as i64 + 1,
            path,
            sha256: &format!("{i:064}"),
            models: &models,
        };
        summaries.push(write_slice(&output, &ctx, &slice, &finding).unwrap().record);
    }
    let key = summaries[0].series_key.clone();
    let report = series::build(&key, summaries, &SeriesSettings::default(), 1, &models);
    report.write(&output).unwrap();
    Series {
        dir,
        output,
        inputs,
        report,
        masks,
    }
}

pub fn write_all(s: &Series) -> Vec<Written> {
    let inputs = s.inputs.clone();
    write_series(
        &s.output,
        &[ObjectKind::Seg, ObjectKind::Sr, ObjectKind::Sc],
        &s.report,
        |id| vec![inputs[(id - 1) as usize].clone()],
    )
    .unwrap()
}

pub fn dciodvfy_errors(f: &Path) -> Option<Vec<String>> {
    let o = Command::new("dciodvfy").arg(f).output().ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    Some(
        text.lines()
            .filter(|l| l.starts_with("Error"))
            .map(str::to_string)
            .collect(),
    )
}

fn text(o: &InMemDicomObject, tag: Tag) -> String {
    o.element(tag)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches(['\0', ' '])
        .to_string()
}

fn items(o: &InMemDicomObject, tag: Tag) -> &[InMemDicomObject] {
    o.element(tag).unwrap().items().unwrap()
}

fn concept(o: &InMemDicomObject) -> Option<String> {
    o.get(tags::CONCEPT_NAME_CODE_SEQUENCE)
        .and_then(|e| e.items())
        .map(|i| text(&i[0], tags::CODE_VALUE))
}

#[test]
fn seg_sr_and_sc_pass_dciodvfy_and_match_the_reports() {
    let s = screened_series(4242);
    let written = write_all(&s);
    assert_eq!(written.len(), 2 + 5, "{written:?}");
    // CTMASK_KEEP_DICOM_OUT=DIR keeps the series folder (for scripts/check_dicom_outputs.py)
    if let Ok(keep) = std::env::var("CTMASK_KEEP_DICOM_OUT") {
        let folder = s.output.join(&s.report.series_key);
        for e in std::fs::read_dir(&folder).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, Path::new(&keep).join(p.file_name().unwrap())).unwrap();
        }
    }
    if dciodvfy_errors(&written[0].path).is_some() {
        for w in &written {
            let errors = dciodvfy_errors(&w.path).unwrap();
            assert!(
                errors.is_empty(),
                "{:?} {}: {errors:#?}",
                w.kind,
                w.path.display()
            );
        }
    } else {
        eprintln!(
            "SKIPPED (dciodvfy part): dciodvfy is not installed (make test installs dicom3tools when run as root)"
        );
    }

    // SEG: frame (segment - 1) * n + i + 1 is slice i (anatomical order) of that segment.
    let seg = open_file(&written[0].path).unwrap();
    let n = s.report.slices.len();
    let rows = seg.element(tags::ROWS).unwrap().to_int::<usize>().unwrap();
    let cols = seg.element(tags::COLUMNS).unwrap().to_int::<usize>().unwrap();
    assert_eq!(
        seg.element(tags::NUMBER_OF_FRAMES)
            .unwrap()
            .to_int::<usize>()
            .unwrap(),
        2 * n
    );
    assert_eq!(text(&seg, tags::MODALITY), "SEG");
    assert_eq!(
        text(&seg, tags::PATIENT_ID),
        "SYNTH",
        "patient copied from the source"
    );
    assert_eq!(text(&seg, tags::SEGMENTATION_TYPE), "BINARY");
    let segments = items(&seg, tags::SEGMENT_SEQUENCE);
    assert_eq!(segments.len(), 2);
    assert_eq!(text(&segments[0], tags::SEGMENT_ALGORITHM_TYPE), "AUTOMATIC");
    let type_code = |i: usize| {
        text(
            &items(&segments[i], tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE)[0],
            tags::CODE_VALUE,
        )
    };
    assert_eq!(
        (type_code(0), type_code(1)),
        ("1217294009".into(), "95436008".into())
    );
    let bits = seg
        .element(tags::PIXEL_DATA)
        .unwrap()
        .to_bytes()
        .unwrap()
        .to_vec();
    let frames = items(&seg, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
    let source_uids: Vec<String> = s
        .report
        .slices
        .iter()
        .map(|x| x.sop_uid.clone().unwrap())
        .collect();
    let mut lesion_pixels = 0;
    for (f, group) in frames.iter().enumerate() {
        let (segment, i) = (f / n + 1, f % n);
        let deriv = &items(group, tags::DERIVATION_IMAGE_SEQUENCE)[0];
        let src = &items(deriv, tags::SOURCE_IMAGE_SEQUENCE)[0];
        assert_eq!(
            text(src, tags::REFERENCED_SOP_INSTANCE_UID),
            source_uids[i],
            "frame {f}"
        );
        let ident = &items(group, tags::SEGMENT_IDENTIFICATION_SEQUENCE)[0];
        assert_eq!(
            ident
                .element(tags::REFERENCED_SEGMENT_NUMBER)
                .unwrap()
                .to_int::<usize>()
                .unwrap(),
            segment
        );
        // the label-mask PNG the daemon wrote for this slice
        let stem = s.report.slices[i].report.trim_end_matches(".json").to_string();
        let png = image::open(
            s.output
                .join(&s.report.series_key)
                .join(format!("{stem}_mask.png")),
        )
        .unwrap()
        .to_luma8()
        .into_raw();
        assert_eq!(png, s.masks[&source_uids[i]], "the PNG is the mask given");
        assert_eq!(png.len(), rows * cols);
        for (p, &label) in png.iter().enumerate() {
            let bit = f * rows * cols + p;
            let on = bits[bit / 8] >> (bit % 8) & 1 == 1;
            assert_eq!(on, label == segment as u8, "frame {f} pixel {p}");
            lesion_pixels += usize::from(on);
        }
    }
    assert!(lesion_pixels > 500, "{lesion_pixels}");
    let referenced = items(
        &items(&seg, tags::REFERENCED_SERIES_SEQUENCE)[0],
        tags::REFERENCED_INSTANCE_SEQUENCE,
    );
    assert_eq!(referenced.len(), n);

    // SR: volumes and involvement as in series.json, exactly.
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(s.output.join(&s.report.series_key).join("series.json")).unwrap(),
    )
    .unwrap();
    let sr = open_file(&written[1].path).unwrap();
    assert_eq!(text(&sr, tags::MODALITY), "SR");
    let mut numbers = BTreeMap::new();
    let mut findings = Vec::new();
    fn walk(
        o: &InMemDicomObject,
        path: String,
        numbers: &mut BTreeMap<String, f64>,
        findings: &mut Vec<String>,
    ) {
        let Some(content) = o.get(tags::CONTENT_SEQUENCE).and_then(|e| e.items()) else {
            return;
        };
        let mut tracking = String::new();
        for item in content {
            let vt = text(item, tags::VALUE_TYPE);
            let name = concept(item).unwrap_or_default();
            if name == "112039" {
                tracking = text(item, tags::TEXT_VALUE);
            }
            if vt == "NUM" {
                let mv = &items(item, tags::MEASURED_VALUE_SEQUENCE)[0];
                let v = mv
                    .element(tags::FLOATING_POINT_VALUE)
                    .unwrap()
                    .to_float64()
                    .unwrap();
                let shown: f64 = text(mv, tags::NUMERIC_VALUE).parse().unwrap();
                assert!((shown - v).abs() <= 1e-9 * v.abs().max(1.0));
                numbers.insert(format!("{tracking}/{name}"), v);
            }
            if vt == "CODE" && name == "121071" && path.ends_with("C0034375") {
                findings.push(text(
                    &items(item, tags::CONCEPT_CODE_SEQUENCE)[0],
                    tags::CODE_VALUE,
                ));
            }
            walk(item, format!("{path}/{name}"), numbers, findings);
        }
    }
    walk(&sr, String::new(), &mut numbers, &mut findings);
    // bit for bit against the report written; serde_json's parser may be one ulp off the file
    let b = &s.report.burden;
    assert_eq!(numbers["GGO volume/118565006"], b.ggo_ml.unwrap());
    assert_eq!(
        numbers["Consolidation volume/118565006"],
        b.consolidation_ml.unwrap()
    );
    assert_eq!(
        numbers["Lung involvement/LUNGINV"],
        b.involvement_percent.unwrap()
    );
    let burden = &json["burden"];
    for (key, v) in [
        ("ggo_ml", b.ggo_ml),
        ("consolidation_ml", b.consolidation_ml),
        ("involvement_percent", b.involvement_percent),
    ] {
        let j = burden[key].as_f64().unwrap();
        assert!((j - v.unwrap()).abs() <= 1e-12 * j.abs(), "{key}: {j} vs {v:?}");
    }
    assert_eq!(
        numbers["Slice classification/SLICESCOVID"],
        json["counts"]["covid"].as_f64().unwrap()
    );
    assert_eq!(numbers["Slice classification/SLICESCONTROL"], 1.0);
    assert_eq!(numbers["GGO volume/LESIONSLICES"], 4.0);
    assert!(burden["ggo_ml"].as_f64().unwrap() > 0.0);
    assert_eq!(json["verdict"]["label"], "covid");
    assert_eq!(
        findings,
        vec!["840539006".to_string()],
        "COVID-19 as the coded verdict"
    );

    // SC: one per slice, the notice burned in, referencing its source.
    for (w, uid) in written[2..].iter().zip(&source_uids) {
        let sc = open_file(&w.path).unwrap();
        assert_eq!(text(&sc, tags::BURNED_IN_ANNOTATION), "YES");
        let src = &items(&sc, tags::SOURCE_IMAGE_SEQUENCE)[0];
        assert_eq!(&text(src, tags::REFERENCED_SOP_INSTANCE_UID), uid);
        let px = sc.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap().to_vec();
        let yellow = px
            .chunks(3)
            .take(cols * 24)
            .filter(|p| *p == [255, 255, 0])
            .count();
        assert!(yellow > 50, "{yellow} notice pixels");
    }
    assert_eq!(
        text(&sr, tags::STUDY_INSTANCE_UID),
        text(&open_file(&s.inputs[0]).unwrap(), tags::STUDY_INSTANCE_UID)
    );
    drop(s.dir);
}

#[test]
fn a_re_report_reissues_new_instances_in_the_same_series() {
    let mut s = screened_series(7);
    let first = write_all(&s);
    s.report.revision = 2;
    s.report.reported_ms += 1000;
    let second = write_all(&s);
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(
            a.path, b.path,
            "same file names: the newest revision replaces the file"
        );
        assert_ne!(a.sop_instance_uid, b.sop_instance_uid);
        let series = |w: &Written| text(&open_file(&w.path).unwrap(), tags::SERIES_INSTANCE_UID);
        // first's file is replaced: compare with the UID the writer derives, read from the second
        let expected = ctmask::dicom::uids::derived_uid(&[
            s.report.series_uid.as_deref().unwrap(),
            &format!("{}-series", a.kind.as_str()),
        ]);
        assert_eq!(series(b), expected, "{:?}", a.kind);
    }
    let seg = open_file(&second[0].path).unwrap();
    assert_eq!(text(&seg, tags::SOP_INSTANCE_UID), second[0].sop_instance_uid);
    assert_eq!(text(&seg, tags::INSTANCE_NUMBER), "2");
}
