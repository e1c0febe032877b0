//! Screen captures and burned-in annotations are refused: a dose report, a protocol page or a
//! screenshot of a viewer carries the patient's name and other text in its pixels, which would
//! then land in overlays and thumbnails, and it is not an acquired CT slice anyway. Refused:
//! the Secondary Capture SOP classes (single- and multi-frame), ImageType `DERIVED\SECONDARY`
//! (except `DERIVED\SECONDARY\AXIAL`, the label of many scanners' axial reconstructions) or
//! any ImageType value `SCREEN SAVE`, and BurnedInAnnotation `YES`.

use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::Rejection;

/// Secondary Capture Image Storage and the four multi-frame SC classes (PS3.4 B.5).
const SECONDARY_CAPTURE: [(&str, &str); 5] = [
    ("1.2.840.10008.5.1.4.1.1.7", "Secondary Capture Image Storage"),
    (
        "1.2.840.10008.5.1.4.1.1.7.1",
        "Multi-frame Single Bit Secondary Capture",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.7.2",
        "Multi-frame Grayscale Byte Secondary Capture",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.7.3",
        "Multi-frame Grayscale Word Secondary Capture",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.7.4",
        "Multi-frame True Color Secondary Capture",
    ),
];

/// Why an object with these attributes is a screen capture or carries burned-in text, if it is.
pub(super) fn capture_reason(
    sop_class: &str,
    image_type: &[String],
    burned_in: Option<&str>,
) -> Option<String> {
    let sop_class = sop_class.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    if let Some((_, name)) = SECONDARY_CAPTURE.iter().find(|(uid, _)| *uid == sop_class) {
        return Some(format!("screen capture: {name}"));
    }
    let values: Vec<String> = image_type.iter().map(|v| v.trim().to_ascii_uppercase()).collect();
    if values.iter().any(|v| v == "SCREEN SAVE") {
        return Some("screen capture: ImageType SCREEN SAVE".into());
    }
    // DERIVED\SECONDARY is a screen capture unless value 3 says it is an axial image: many
    // scanners label their axial reconstructions DERIVED\SECONDARY\AXIAL, and those are CT
    if values.first().map(String::as_str) == Some("DERIVED")
        && values.get(1).map(String::as_str) == Some("SECONDARY")
        && values.get(2).map(String::as_str) != Some("AXIAL")
    {
        return Some(format!("screen capture: ImageType {}", values.join("\\")));
    }
    if burned_in.is_some_and(|b| b.trim().eq_ignore_ascii_case("YES")) {
        return Some("burned-in annotation: BurnedInAnnotation YES".into());
    }
    None
}

/// The check `dicom.rs::screen` makes: `capture::check(obj)?;`.
pub(super) fn check(obj: &InMemDicomObject) -> Result<(), Rejection> {
    let str_of = |tag| obj.get(tag).and_then(|e| e.to_str().ok()).map(|s| s.to_string());
    let image_type: Vec<String> = obj
        .get(tags::IMAGE_TYPE)
        .and_then(|e| e.to_multi_str().ok())
        .map(|v| v.to_vec())
        .unwrap_or_default();
    match capture_reason(
        &str_of(tags::SOP_CLASS_UID).unwrap_or_default(),
        &image_type,
        str_of(tags::BURNED_IN_ANNOTATION).as_deref(),
    ) {
        Some(reason) => Err(Rejection::NotAnImage(reason)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, PrimitiveValue, VR};

    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";

    fn obj(sop_class: &str, image_type: &[&str], burned_in: Option<&str>) -> InMemDicomObject {
        let mut o = InMemDicomObject::new_empty();
        o.put(DataElement::new(
            tags::SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(sop_class),
        ));
        if !image_type.is_empty() {
            let values: Vec<String> = image_type.iter().map(|s| s.to_string()).collect();
            o.put(DataElement::new(
                tags::IMAGE_TYPE,
                VR::CS,
                PrimitiveValue::Strs(values.into()),
            ));
        }
        if let Some(b) = burned_in {
            o.put(DataElement::new(
                tags::BURNED_IN_ANNOTATION,
                VR::CS,
                PrimitiveValue::from(b),
            ));
        }
        o
    }

    fn reason(o: &InMemDicomObject) -> Option<String> {
        check(o).err().map(|r| r.to_string())
    }

    #[test]
    fn acquired_ct_passes() {
        assert_eq!(
            reason(&obj(CT, &["ORIGINAL", "PRIMARY", "AXIAL"], Some("NO"))),
            None
        );
        assert_eq!(reason(&obj(CT, &["DERIVED", "PRIMARY", "AXIAL"], None)), None);
        assert_eq!(reason(&obj(&format!("{CT}\0"), &[], None)), None);
    }

    #[test]
    fn screen_captures_and_burned_in_text_are_refused_with_their_reason() {
        assert_eq!(
            reason(&obj(
                "1.2.840.10008.5.1.4.1.1.7\0",
                &["ORIGINAL", "PRIMARY"],
                None
            ))
            .as_deref(),
            Some("not an image: screen capture: Secondary Capture Image Storage")
        );
        assert_eq!(
            reason(&obj("1.2.840.10008.5.1.4.1.1.7.2", &[], None)).as_deref(),
            Some("not an image: screen capture: Multi-frame Grayscale Byte Secondary Capture")
        );
        assert_eq!(
            reason(&obj(CT, &["DERIVED", "SECONDARY", "OTHER"], None)).as_deref(),
            Some("not an image: screen capture: ImageType DERIVED\\SECONDARY\\OTHER")
        );
        assert_eq!(
            reason(&obj(CT, &["DERIVED", "SECONDARY"], None)).as_deref(),
            Some("not an image: screen capture: ImageType DERIVED\\SECONDARY")
        );
        // an axial reconstruction labelled DERIVED\SECONDARY\AXIAL is CT, not a capture
        assert_eq!(reason(&obj(CT, &["DERIVED", "SECONDARY", "AXIAL"], None)), None);
        assert_eq!(
            reason(&obj(CT, &["ORIGINAL", "PRIMARY", "SCREEN SAVE"], None)).as_deref(),
            Some("not an image: screen capture: ImageType SCREEN SAVE")
        );
        assert_eq!(
            reason(&obj(CT, &["ORIGINAL", "PRIMARY", "AXIAL"], Some("YES "))).as_deref(),
            Some("not an image: burned-in annotation: BurnedInAnnotation YES")
        );
        // the pure rule, for readers without a parsed object
        assert_eq!(capture_reason(CT, &["secondary".into()], Some("no")), None);
    }
}
