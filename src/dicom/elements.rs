//! Small builders over dicom-object's `InMemDicomObject` shared by the SEG, SR and SC writers:
//! put a value, a sequence, a coded entry; copy the Patient and Study modules from a source
//! image; serialise a data set as a DICOM file (preamble, file meta, explicit VR little endian).

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

/// A coded concept: (code value, coding scheme designator, code meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code(pub &'static str, pub &'static str, pub &'static str);

pub fn put(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: impl Into<PrimitiveValue>) {
    obj.put(DataElement::new(tag, vr, value.into()));
}

pub fn put_str(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str) {
    put(obj, tag, vr, value);
}

pub fn put_u16(obj: &mut InMemDicomObject, tag: Tag, value: u16) {
    put(obj, tag, VR::US, PrimitiveValue::from(value));
}

pub fn put_seq(obj: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
    obj.put(DataElement::new(tag, VR::SQ, DataSetSequence::from(items)));
}

/// A code sequence item (Code Sequence Macro).
pub fn code_item(c: Code) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    put_str(&mut o, tags::CODE_VALUE, VR::SH, c.0);
    put_str(&mut o, tags::CODING_SCHEME_DESIGNATOR, VR::SH, c.1);
    put_str(&mut o, tags::CODE_MEANING, VR::LO, c.2);
    o
}

pub fn put_code(obj: &mut InMemDicomObject, tag: Tag, c: Code) {
    put_seq(obj, tag, vec![code_item(c)]);
}

/// A decimal string of up to 16 characters (DS), trailing zeros removed.
pub fn ds(v: f64) -> String {
    for digits in (0..=10).rev() {
        let s = format!("{v:.digits$}");
        let s = if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        };
        if s.len() <= 16 {
            return if s == "-0" { "0".into() } else { s };
        }
    }
    format!("{v:.3e}")
}

pub fn ds_list(values: &[f64]) -> String {
    values.iter().map(|v| ds(*v)).collect::<Vec<_>>().join("\\")
}

/// Attributes copied from the source image: Patient, General Study and Patient Study modules,
/// the character set, and the Frame of Reference. The writers take these as the standard
/// requires (derived objects belong to the source's patient and study).
pub const COPIED: &[Tag] = &[
    tags::SPECIFIC_CHARACTER_SET,
    // Patient
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::ISSUER_OF_PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_SEX,
    tags::OTHER_PATIENT_I_DS_SEQUENCE,
    tags::PATIENT_IDENTITY_REMOVED,
    tags::DEIDENTIFICATION_METHOD,
    // General Study
    tags::STUDY_INSTANCE_UID,
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::STUDY_ID,
    tags::ACCESSION_NUMBER,
    tags::STUDY_DESCRIPTION,
    // Patient Study
    tags::PATIENT_AGE,
    tags::PATIENT_SIZE,
    tags::PATIENT_WEIGHT,
];

/// Type 2 attributes of the copied modules: present (maybe empty) in every object written.
const TYPE2: &[(Tag, VR)] = &[
    (tags::PATIENT_NAME, VR::PN),
    (tags::PATIENT_ID, VR::LO),
    (tags::PATIENT_BIRTH_DATE, VR::DA),
    (tags::PATIENT_SEX, VR::CS),
    (tags::STUDY_DATE, VR::DA),
    (tags::STUDY_TIME, VR::TM),
    (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
    (tags::STUDY_ID, VR::SH),
    (tags::ACCESSION_NUMBER, VR::SH),
];

/// Copies the patient and study attributes of `source` into `obj`.
pub fn copy_patient_study(source: &InMemDicomObject, obj: &mut InMemDicomObject) {
    for tag in COPIED {
        if let Some(e) = source.get(*tag) {
            obj.put(e.clone());
        }
    }
    for (tag, vr) in TYPE2 {
        if obj.get(*tag).is_none() {
            put_str(obj, *tag, *vr, "");
        }
    }
}

/// Text of an attribute, trimmed; None when absent or empty.
pub fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let s = obj.get(tag)?.to_str().ok()?;
    let s = s.trim_end_matches(['\0', ' ']).trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Multi-valued decimals of an attribute.
pub fn floats(obj: &InMemDicomObject, tag: Tag) -> Option<Vec<f64>> {
    obj.get(tag)?.to_multi_float64().ok()
}

/// The whole file (preamble, meta group, data set) in explicit VR little endian.
pub fn file_bytes(obj: InMemDicomObject, sop_class: &str, sop_instance: &str) -> Result<Vec<u8>, String> {
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop_instance)
        .implementation_version_name(format!("CTMASK_{}", env!("CARGO_PKG_VERSION")));
    let file = obj.with_meta(meta).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    file.write_all(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// (DA, TM) of a Unix time in milliseconds, in UTC.
pub fn date_time(ms: i64) -> (String, String) {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil-from-days (proleptic Gregorian), H. Hinnant's algorithm
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        format!("{y:04}{m:02}{d:02}"),
        format!("{:02}{:02}{:02}", rem / 3600, rem / 60 % 60, rem % 60),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_strings_fit_sixteen_characters() {
        assert_eq!(ds(5.0), "5");
        assert_eq!(ds(-0.0), "0");
        assert_eq!(ds(0.703125), "0.703125");
        assert_eq!(ds(-123.456789012345), "-123.4567890123");
        assert!(ds(1.0 / 3.0).len() <= 16);
        assert_eq!(ds_list(&[1.0, 0.5]), "1\\0.5");
    }

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(date_time(0), ("19700101".into(), "000000".into()));
        // 2024-02-29 12:34:56 UTC
        assert_eq!(date_time(1_709_210_096_000), ("20240229".into(), "123456".into()));
    }
}
