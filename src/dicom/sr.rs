//! The measurement report of a reported series: a Comprehensive 3D SR following TID 1500
//! (Measurement Report): language, the device observer (ctmask), the procedure reported, the
//! image library (every source slice), imaging measurements (one measurement group per lesion
//! class: volume in mL, slices with that class, the referenced SEG segment when a SEG was
//! written; one group for the percentage of lung involved; one for the slice counts per
//! classifier label) and the series verdict as a coded finding under qualitative evaluations.
//! Every number is the one in `series.json`: NUM items carry the DS text and the exact binary
//! value (Floating Point Value), so a reader compares them without rounding.
//!
//! Coded concepts: the TID 1500/1501/4019/1002 concept names (DCM); findings as in the SEG
//! (CID 7151 extended with SNOMED CT, see `seg.rs`); Volume SCT 118565006 (CID 7470 family);
//! procedure SCT 169069000 "CT of chest" (CID 100); verdicts SCT 840539006 "COVID-19" (disease
//! caused by SARS-CoV-2), SCT 233604007 "Pneumonia" and SCT 17621005 "Normal" (CID 6335-style
//! findings). Percent of lung involved and the slice counts have no standard concept: they use
//! the private coding scheme `99CTMASK`, as PS3.16 §8 allows for local concepts.

use dicom_core::{PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::elements::{Code, copy_patient_study, date_time, ds, file_bytes, put, put_code, put_seq, put_str};
use super::seg::{self, CATEGORY, CONSOLIDATION, GGO, LUNG, put_equipment};
use super::source::SeriesSource;
use super::uids::derived_uid;
use crate::daemon::series::SeriesReport;

/// Comprehensive 3D SR Storage.
pub const SR_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.88.34";
pub const SR_SERIES_NUMBER: &str = "9902";

const REPORT: Code = Code("126000", "DCM", "Imaging Measurement Report");
const LANGUAGE: Code = Code("121049", "DCM", "Language of Content Item and Descendants");
const ENGLISH: Code = Code("en-US", "RFC5646", "English (United States)");
const OBSERVER_TYPE: Code = Code("121005", "DCM", "Observer Type");
const DEVICE: Code = Code("121007", "DCM", "Device");
const DEVICE_UID: Code = Code("121012", "DCM", "Device Observer UID");
const DEVICE_NAME: Code = Code("121013", "DCM", "Device Observer Name");
const DEVICE_MANUFACTURER: Code = Code("121014", "DCM", "Device Observer Manufacturer");
const PROCEDURE: Code = Code("121058", "DCM", "Procedure reported");
const CT_CHEST: Code = Code("169069000", "SCT", "CT of chest");
const IMAGE_LIBRARY: Code = Code("111028", "DCM", "Image Library");
const IMAGE_LIBRARY_GROUP: Code = Code("126200", "DCM", "Image Library Group");
const MEASUREMENTS: Code = Code("126010", "DCM", "Imaging Measurements");
const GROUP: Code = Code("125007", "DCM", "Measurement Group");
const TRACKING_ID: Code = Code("112039", "DCM", "Tracking Identifier");
const TRACKING_UID: Code = Code("112040", "DCM", "Tracking Unique Identifier");
pub const FINDING: Code = Code("121071", "DCM", "Finding");
const FINDING_SITE: Code = Code("363698007", "SCT", "Finding Site");
const REFERENCED_SEGMENT: Code = Code("121191", "DCM", "Referenced Segment");
const SOURCE_SERIES: Code = Code("121232", "DCM", "Source series for segmentation");
pub const VOLUME: Code = Code("118565006", "SCT", "Volume");
pub const INVOLVEMENT: Code = Code("LUNGINV", "99CTMASK", "Percent of lung involved");
pub const LESION_SLICES: Code = Code("LESIONSLICES", "99CTMASK", "Slices with this finding");
const ALGORITHM_NAME: Code = Code("111001", "DCM", "Algorithm Name");
const ALGORITHM_VERSION: Code = Code("111003", "DCM", "Algorithm Version");
const ALGORITHM_PARAMETERS: Code = Code("111002", "DCM", "Algorithm Parameters");
const QUALITATIVE: Code = Code("C0034375", "UMLS", "Qualitative Evaluations");
const COMMENT: Code = Code("121106", "DCM", "Comment");
const ML: Code = Code("mL", "UCUM", "milliliter");
const PERCENT: Code = Code("%", "UCUM", "percent");
const SLICES: Code = Code("{slices}", "UCUM", "slices");
pub const COVID: Code = Code("840539006", "SCT", "COVID-19");
pub const PNEUMONIA: Code = Code("233604007", "SCT", "Pneumonia");
pub const NORMAL: Code = Code("17621005", "SCT", "Normal");

/// Slices per classifier label, as NUM concepts of the private scheme.
pub fn label_count_code(label: &str) -> Option<Code> {
    Some(match label {
        "control" => Code("SLICESCONTROL", "99CTMASK", "Slices classified control"),
        "pneumonia" => Code("SLICESPNEUMONIA", "99CTMASK", "Slices classified pneumonia"),
        "covid" => Code("SLICESCOVID", "99CTMASK", "Slices classified COVID-19"),
        "unclassified" => Code("SLICESUNCLASS", "99CTMASK", "Slices not classified"),
        _ => return None,
    })
}

fn item(rel: &str, vt: &str, concept: Option<Code>) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    put_str(&mut o, tags::RELATIONSHIP_TYPE, VR::CS, rel);
    put_str(&mut o, tags::VALUE_TYPE, VR::CS, vt);
    if let Some(c) = concept {
        put_code(&mut o, tags::CONCEPT_NAME_CODE_SEQUENCE, c);
    }
    o
}

fn container(rel: &str, concept: Code, children: Vec<InMemDicomObject>) -> InMemDicomObject {
    let mut o = item(rel, "CONTAINER", Some(concept));
    put_str(&mut o, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    put_seq(&mut o, tags::CONTENT_SEQUENCE, children);
    o
}

fn text(rel: &str, concept: Code, value: &str) -> InMemDicomObject {
    let mut o = item(rel, "TEXT", Some(concept));
    put_str(&mut o, tags::TEXT_VALUE, VR::UT, value);
    o
}

fn code(rel: &str, concept: Code, value: Code) -> InMemDicomObject {
    let mut o = item(rel, "CODE", Some(concept));
    put_code(&mut o, tags::CONCEPT_CODE_SEQUENCE, value);
    o
}

fn uidref(rel: &str, concept: Code, uid: &str) -> InMemDicomObject {
    let mut o = item(rel, "UIDREF", Some(concept));
    put_str(&mut o, tags::UID, VR::UI, uid);
    o
}

fn num(concept: Code, value: f64, unit: Code) -> InMemDicomObject {
    let mut o = item("CONTAINS", "NUM", Some(concept));
    let mut mv = InMemDicomObject::new_empty();
    put_str(&mut mv, tags::NUMERIC_VALUE, VR::DS, &ds(value));
    put(
        &mut mv,
        tags::FLOATING_POINT_VALUE,
        VR::FD,
        PrimitiveValue::from(value),
    );
    put_code(&mut mv, tags::MEASUREMENT_UNITS_CODE_SEQUENCE, unit);
    put_seq(&mut o, tags::MEASURED_VALUE_SEQUENCE, vec![mv]);
    o
}

fn sop_ref(class: &str, instance: &str) -> InMemDicomObject {
    let mut r = InMemDicomObject::new_empty();
    put_str(&mut r, tags::REFERENCED_SOP_CLASS_UID, VR::UI, class);
    put_str(&mut r, tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, instance);
    r
}

fn algorithm(report: &SeriesReport) -> Vec<InMemDicomObject> {
    let mut v = vec![
        text("HAS CONCEPT MOD", ALGORITHM_NAME, "ctmask COVID-CT-Mask-Net"),
        text("HAS CONCEPT MOD", ALGORITHM_VERSION, env!("CARGO_PKG_VERSION")),
    ];
    for m in &report.models {
        v.push(text(
            "HAS CONCEPT MOD",
            ALGORITHM_PARAMETERS,
            &format!("model {} sha256 {}", m.name, m.sha256),
        ));
    }
    v
}

/// The verdict as a coded finding (None for `unclassified`).
pub fn verdict_code(label: &str) -> Option<Code> {
    match label {
        "covid" => Some(COVID),
        "pneumonia" => Some(PNEUMONIA),
        "control" => Some(NORMAL),
        _ => None,
    }
}

/// The SR of a series: (SOP instance UID, file bytes). `seg_uid`: the SEG written with it, if any.
pub fn build(
    src: &SeriesSource,
    report: &SeriesReport,
    seg_uid: Option<&str>,
) -> Result<(String, Vec<u8>), String> {
    let series_uid = derived_uid(&[&src.series_uid, "sr-series"]);
    let when = report.reported_ms.to_string();
    let revision = report.revision.to_string();
    let sop_uid = derived_uid(&[&src.series_uid, "sr", &revision, &when]);
    let (date, time) = date_time(report.reported_ms);
    let study_uid = super::elements::text(&src.header, tags::STUDY_INSTANCE_UID)
        .ok_or("the source has no StudyInstanceUID")?;

    let mut o = InMemDicomObject::new_empty();
    copy_patient_study(&src.header, &mut o);
    put_str(&mut o, tags::SOP_CLASS_UID, VR::UI, SR_STORAGE);
    put_str(&mut o, tags::SOP_INSTANCE_UID, VR::UI, &sop_uid);
    put_str(&mut o, tags::INSTANCE_CREATION_DATE, VR::DA, &date);
    put_str(&mut o, tags::INSTANCE_CREATION_TIME, VR::TM, &time);
    put_str(&mut o, tags::MODALITY, VR::CS, "SR");
    put_str(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, &series_uid);
    put_str(&mut o, tags::SERIES_NUMBER, VR::IS, SR_SERIES_NUMBER);
    put_str(
        &mut o,
        tags::SERIES_DESCRIPTION,
        VR::LO,
        "ctmask measurements (research use only)",
    );
    put_seq(&mut o, tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE, vec![]);
    put_equipment(&mut o, report);
    // SR Document General
    put_str(&mut o, tags::INSTANCE_NUMBER, VR::IS, &revision);
    put_str(&mut o, tags::COMPLETION_FLAG, VR::CS, "COMPLETE");
    put_str(&mut o, tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED");
    put_str(&mut o, tags::CONTENT_DATE, VR::DA, &date);
    put_str(&mut o, tags::CONTENT_TIME, VR::TM, &time);
    put_seq(&mut o, tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, vec![]);
    let mut evidence_series = vec![{
        let mut s = InMemDicomObject::new_empty();
        put_str(&mut s, tags::SERIES_INSTANCE_UID, VR::UI, &src.series_uid);
        put_seq(
            &mut s,
            tags::REFERENCED_SOP_SEQUENCE,
            src.images
                .iter()
                .map(|i| sop_ref(&i.sop_class_uid, &i.sop_instance_uid))
                .collect(),
        );
        s
    }];
    if let Some(seg_uid) = seg_uid {
        let mut s = InMemDicomObject::new_empty();
        put_str(
            &mut s,
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            &derived_uid(&[&src.series_uid, "seg-series"]),
        );
        put_seq(
            &mut s,
            tags::REFERENCED_SOP_SEQUENCE,
            vec![sop_ref(seg::SEG_STORAGE, seg_uid)],
        );
        evidence_series.push(s);
    }
    let mut evidence = InMemDicomObject::new_empty();
    put_str(&mut evidence, tags::STUDY_INSTANCE_UID, VR::UI, &study_uid);
    put_seq(&mut evidence, tags::REFERENCED_SERIES_SEQUENCE, evidence_series);
    put_seq(
        &mut o,
        tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
        vec![evidence],
    );

    // Content: TID 1500
    put_str(&mut o, tags::VALUE_TYPE, VR::CS, "CONTAINER");
    put_code(&mut o, tags::CONCEPT_NAME_CODE_SEQUENCE, REPORT);
    put_str(&mut o, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    let mut template = InMemDicomObject::new_empty();
    put_str(&mut template, tags::MAPPING_RESOURCE, VR::CS, "DCMR");
    put_str(&mut template, tags::TEMPLATE_IDENTIFIER, VR::CS, "1500");
    put_seq(&mut o, tags::CONTENT_TEMPLATE_SEQUENCE, vec![template]);

    let mut content = vec![
        code("HAS CONCEPT MOD", LANGUAGE, ENGLISH),
        code("HAS OBS CONTEXT", OBSERVER_TYPE, DEVICE),
        uidref("HAS OBS CONTEXT", DEVICE_UID, &derived_uid(&["device", "ctmask"])),
        text("HAS OBS CONTEXT", DEVICE_NAME, "ctmask"),
        text("HAS OBS CONTEXT", DEVICE_MANUFACTURER, "ctmask"),
        code("HAS CONCEPT MOD", PROCEDURE, CT_CHEST),
    ];
    let images = src
        .images
        .iter()
        .map(|i| {
            let mut img = item("CONTAINS", "IMAGE", None);
            put_seq(
                &mut img,
                tags::REFERENCED_SOP_SEQUENCE,
                vec![sop_ref(&i.sop_class_uid, &i.sop_instance_uid)],
            );
            img
        })
        .collect();
    content.push(container(
        "CONTAINS",
        IMAGE_LIBRARY,
        vec![container("CONTAINS", IMAGE_LIBRARY_GROUP, images)],
    ));

    let mut groups = Vec::new();
    let classes = [
        (
            1u16,
            "GGO",
            GGO,
            report.burden.ggo_ml,
            report.slices.iter().filter(|s| s.ggo_px > 0).count(),
        ),
        (
            2,
            "Consolidation",
            CONSOLIDATION,
            report.burden.consolidation_ml,
            report.slices.iter().filter(|s| s.consolidation_px > 0).count(),
        ),
    ];
    for (segment, name, finding, volume, slices) in classes {
        let mut g = vec![
            text("HAS OBS CONTEXT", TRACKING_ID, &format!("{name} volume")),
            uidref("HAS OBS CONTEXT", TRACKING_UID, &derived_uid(&[&sop_uid, name])),
            code("CONTAINS", FINDING, finding),
            code("HAS CONCEPT MOD", FINDING_SITE, LUNG),
        ];
        if let Some(seg_uid) = seg_uid {
            let mut r = sop_ref(seg::SEG_STORAGE, seg_uid);
            put(
                &mut r,
                tags::REFERENCED_SEGMENT_NUMBER,
                VR::US,
                PrimitiveValue::from(segment),
            );
            let mut img = item("CONTAINS", "IMAGE", Some(REFERENCED_SEGMENT));
            put_seq(&mut img, tags::REFERENCED_SOP_SEQUENCE, vec![r]);
            g.push(img);
            g.push(uidref("CONTAINS", SOURCE_SERIES, &src.series_uid));
        }
        g.extend(algorithm(report));
        if let Some(v) = volume {
            g.push(num(VOLUME, v, ML));
        }
        g.push(num(LESION_SLICES, slices as f64, SLICES));
        groups.push(container("CONTAINS", GROUP, g));
    }
    let mut g = vec![
        text("HAS OBS CONTEXT", TRACKING_ID, "Lung involvement"),
        uidref(
            "HAS OBS CONTEXT",
            TRACKING_UID,
            &derived_uid(&[&sop_uid, "involvement"]),
        ),
        code("CONTAINS", FINDING, CATEGORY),
        code("HAS CONCEPT MOD", FINDING_SITE, LUNG),
    ];
    g.extend(algorithm(report));
    if let Some(p) = report.burden.involvement_percent {
        g.push(num(INVOLVEMENT, p, PERCENT));
    }
    groups.push(container("CONTAINS", GROUP, g));
    let mut g = vec![
        text("HAS OBS CONTEXT", TRACKING_ID, "Slice classification"),
        uidref(
            "HAS OBS CONTEXT",
            TRACKING_UID,
            &derived_uid(&[&sop_uid, "slices"]),
        ),
    ];
    g.extend(algorithm(report));
    for (label, n) in &report.counts {
        if let Some(c) = label_count_code(label) {
            g.push(num(c, f64::from(*n), SLICES));
        }
    }
    groups.push(container("CONTAINS", GROUP, g));
    content.push(container("CONTAINS", MEASUREMENTS, groups));

    let mut evaluations = Vec::new();
    if let Some(c) = verdict_code(report.verdict.label.as_str()) {
        evaluations.push(code("CONTAINS", FINDING, c));
    }
    evaluations.push(text(
        "CONTAINS",
        COMMENT,
        &format!(
            "series verdict {} by rule {}: {}; {}",
            report.verdict.label,
            report.verdict.rule,
            report.verdict.description,
            crate::DISCLAIMER
        ),
    ));
    content.push(container("CONTAINS", QUALITATIVE, evaluations));
    put_seq(&mut o, tags::CONTENT_SEQUENCE, content);
    let mut scheme = InMemDicomObject::new_empty();
    put_str(&mut scheme, tags::CODING_SCHEME_DESIGNATOR, VR::SH, "99CTMASK");
    put_str(
        &mut scheme,
        tags::CODING_SCHEME_NAME,
        VR::ST,
        "ctmask local concepts",
    );
    put_str(
        &mut scheme,
        tags::CODING_SCHEME_RESPONSIBLE_ORGANIZATION,
        VR::ST,
        "ctmask",
    );
    put_seq(&mut o, tags::CODING_SCHEME_IDENTIFICATION_SEQUENCE, vec![scheme]);
    let bytes = file_bytes(o, SR_STORAGE, &sop_uid)?;
    Ok((sop_uid, bytes))
}
