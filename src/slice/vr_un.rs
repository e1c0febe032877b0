//! Elements stored with VR UN (unknown) whose tag the standard dictionary knows are read with
//! their dictionary VR, as pydicom does. Many converters write UN for data that came from
//! implicit-VR files; read as UN, Modality "CT" is the bytes 67\84 and Rows is four bytes.
//!
//! PS3.5 6.2.2: the value of a UN element is encoded as in Implicit VR Little Endian. So each
//! such element is re-read through dicom-rs itself: its tag, its length and its value bytes
//! form a one-element implicit-VR data set, which dicom-rs parses with the dictionary (a
//! sequence, undefined length included, comes back as a sequence of items). In an explicit
//! big-endian file pydicom takes a UN value's numbers in the file's byte order: each fixed-size
//! binary value is byte-swapped before the re-read, so both byte orders read as pydicom does.
//! Private tags (odd groups) stay UN. Items of sequences are resolved the same way, recursively.
//! dicom-rs has no such pass (it reads UN as bytes), hence this file.

use std::io::Cursor;

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::value::Value;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::{TransferSyntaxRegistry, entries};

/// Nested sequences deeper than this are left as they are (a forged file).
const MAX_DEPTH: u32 = 8;

/// Re-read every UN element of a known tag in `obj` (and in its sequences' items).
pub(super) fn resolve(obj: &mut InMemDicomObject, big_endian: bool) {
    resolve_at(obj, big_endian, 0);
}

fn resolve_at(obj: &mut InMemDicomObject, big_endian: bool, depth: u32) {
    if depth > MAX_DEPTH {
        return;
    }
    let unknown: Vec<Tag> = obj
        .iter()
        .filter(|e| e.vr() == VR::UN && e.header().tag.group() % 2 == 0)
        .map(|e| e.header().tag)
        .collect();
    for tag in unknown {
        let Some(vr) = dictionary_vr(obj, tag) else {
            continue;
        };
        let Some(elem) = obj.get(tag) else { continue };
        let resolved = match elem.value() {
            // dicom-rs already parsed an undefined-length UN as a sequence (implicit VR LE)
            Value::Sequence(seq) => Some(DataElement::new(tag, VR::SQ, Value::Sequence(seq.clone()))),
            Value::Primitive(p) => {
                let mut bytes = p.to_bytes().into_owned();
                if big_endian && let Some(unit) = binary_unit(vr) {
                    swap_units(&mut bytes, unit);
                }
                reread(tag, &bytes)
            }
            Value::PixelSequence(_) => None,
        };
        if let Some(e) = resolved {
            obj.put(e);
        }
    }
    // items of sequences, whether they were UN or not
    let sequences: Vec<Tag> = obj
        .iter()
        .filter(|e| matches!(e.value(), Value::Sequence(_)))
        .map(|e| e.header().tag)
        .collect();
    for tag in sequences {
        let Some(elem) = obj.get(tag) else { continue };
        let Value::Sequence(seq) = elem.value() else {
            continue;
        };
        let mut seq = seq.clone();
        if !seq.items().iter().any(|item| {
            item.iter()
                .any(|e| e.vr() == VR::UN || matches!(e.value(), Value::Sequence(_)))
        }) {
            continue;
        }
        for item in seq.items_mut().iter_mut() {
            resolve_at(item, big_endian, depth + 1);
        }
        obj.put(DataElement::new(tag, VR::SQ, Value::Sequence(seq)));
    }
}

/// The tag's VR in the standard dictionary; US or SS by PixelRepresentation where it depends
/// on it; `None` for unknown tags and for OB/OW pixel or overlay data whose bytes need no change.
fn dictionary_vr(obj: &InMemDicomObject, tag: Tag) -> Option<VR> {
    let entry = StandardDataDictionary.by_tag(tag)?;
    match entry.vr() {
        VirtualVr::Exact(VR::UN) => None,
        VirtualVr::Exact(vr) => Some(vr),
        VirtualVr::Xs => {
            let signed = obj
                .get(dicom_dictionary_std::tags::PIXEL_REPRESENTATION)
                .and_then(|e| e.to_int::<u16>().ok())
                == Some(1);
            Some(if signed { VR::SS } else { VR::US })
        }
        VirtualVr::Lt => Some(VR::US),
        // pixel data as UN: OW when samples are wider than a byte (the re-read gives the
        // implicit-VR reading of the bytes, which is what dicom-pixeldata expects)
        VirtualVr::Px | VirtualVr::Ox => Some(VR::OW),
        _ => None,
    }
}

/// The size of one value of a fixed-size binary VR (the unit a big-endian file swaps).
fn binary_unit(vr: VR) -> Option<usize> {
    match vr {
        VR::US | VR::SS | VR::OW | VR::AT => Some(2),
        VR::UL | VR::SL | VR::FL | VR::OL | VR::OF => Some(4),
        VR::FD | VR::OD | VR::UV | VR::SV | VR::OV => Some(8),
        _ => None,
    }
}

fn swap_units(bytes: &mut [u8], unit: usize) {
    for chunk in bytes.chunks_exact_mut(unit) {
        chunk.reverse();
    }
}

/// Parse `tag`, its length and `value` as a one-element implicit VR little-endian data set.
fn reread(tag: Tag, value: &[u8]) -> Option<dicom_object::mem::InMemElement> {
    let len = u32::try_from(value.len()).ok()?;
    let mut set = Vec::with_capacity(value.len() + 8);
    set.extend_from_slice(&tag.group().to_le_bytes());
    set.extend_from_slice(&tag.element().to_le_bytes());
    set.extend_from_slice(&len.to_le_bytes());
    set.extend_from_slice(value);
    let ts = TransferSyntaxRegistry
        .get(entries::IMPLICIT_VR_LITTLE_ENDIAN.uid())
        .expect("implicit VR little endian is built in");
    let parsed = InMemDicomObject::read_dataset_with_ts(Cursor::new(set), ts).ok()?;
    parsed.get(tag).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::PrimitiveValue;
    use dicom_dictionary_std::tags;

    fn un(tag: Tag, bytes: &[u8]) -> dicom_object::mem::InMemElement {
        DataElement::new(tag, VR::UN, PrimitiveValue::from(bytes.to_vec()))
    }

    #[test]
    fn known_tags_get_their_dictionary_vr_in_both_byte_orders() {
        for big_endian in [false, true] {
            let mut obj = InMemDicomObject::new_empty();
            obj.put(un(tags::MODALITY, b"CT"));
            obj.put(un(tags::IMAGE_TYPE, b"ORIGINAL\\PRIMARY\\AXIAL "));
            let rows = if big_endian {
                512u16.to_be_bytes()
            } else {
                512u16.to_le_bytes()
            };
            obj.put(un(tags::ROWS, &rows));
            obj.put(un(tags::RESCALE_INTERCEPT, b"-1024 "));
            obj.put(un(Tag(0x0009, 0x0010), b"PRIVATE "));
            resolve(&mut obj, big_endian);
            let m = obj.get(tags::MODALITY).unwrap();
            assert_eq!((m.vr(), m.to_str().unwrap().as_ref()), (VR::CS, "CT"));
            let it = obj.get(tags::IMAGE_TYPE).unwrap().to_multi_str().unwrap();
            assert_eq!(it.len(), 3, "{it:?}");
            assert_eq!(obj.get(tags::ROWS).unwrap().to_int::<u32>().unwrap(), 512);
            assert_eq!(
                obj.get(tags::RESCALE_INTERCEPT).unwrap().to_float64().unwrap(),
                -1024.0
            );
            assert_eq!(
                obj.get(Tag(0x0009, 0x0010)).unwrap().vr(),
                VR::UN,
                "private stays UN"
            );
        }
    }

    #[test]
    fn a_defined_length_sequence_is_read_as_items() {
        // (0008,1140) ReferencedImageSequence, one item holding ReferencedSOPInstanceUID
        let uid = b"1.2.3.4\0";
        let mut item = Vec::new();
        item.extend_from_slice(&0x0008u16.to_le_bytes());
        item.extend_from_slice(&0x1155u16.to_le_bytes());
        item.extend_from_slice(&(uid.len() as u32).to_le_bytes());
        item.extend_from_slice(uid);
        let mut seq = Vec::new();
        seq.extend_from_slice(&0xFFFEu16.to_le_bytes());
        seq.extend_from_slice(&0xE000u16.to_le_bytes());
        seq.extend_from_slice(&(item.len() as u32).to_le_bytes());
        seq.extend_from_slice(&item);
        let mut obj = InMemDicomObject::new_empty();
        obj.put(un(tags::REFERENCED_IMAGE_SEQUENCE, &seq));
        resolve(&mut obj, false);
        let e = obj.get(tags::REFERENCED_IMAGE_SEQUENCE).unwrap();
        assert_eq!(e.vr(), VR::SQ);
        let items = e.items().unwrap();
        let got = items[0]
            .get(tags::REFERENCED_SOP_INSTANCE_UID)
            .unwrap()
            .to_str()
            .unwrap();
        assert_eq!(got.trim_end_matches('\0'), "1.2.3.4");
    }

    #[test]
    fn garbage_values_never_panic() {
        let mut obj = InMemDicomObject::new_empty();
        obj.put(un(tags::ROWS, &[1]));
        obj.put(un(
            tags::REFERENCED_IMAGE_SEQUENCE,
            &[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0x7F],
        ));
        resolve(&mut obj, false);
        resolve(&mut obj, true);
    }
}
