#!/usr/bin/env python3
"""Reads ctmask's DICOM outputs of one series with reference readers (highdicom, pydicom) and
checks them against the daemon's own files in the same series folder:
  - seg.dcm (highdicom): for every slice of series.json, the segment masks returned for its source
    SOP instance equal its label-mask PNG (1 = GGO, 2 = consolidation); segment labels and codes;
  - sr.dcm (highdicom, pydicom): a TID 1500 measurement report whose two lesion groups reference
    the SEG's segments; the volumes and the percentage of lung involved equal series.json's;
  - *_sc.dcm (pydicom): RGB, the burned-in annotation flag, a source image reference each.

Usage: scripts/check_dicom_outputs.py SERIES_FOLDER
A series folder: `<output>/<series UID>/` of the daemon with dicom.outputs [seg, sr, sc], or the
one `CTMASK_KEEP_DICOM_OUT=DIR cargo test --release --test integration dicom_out::seg_sr` copies.
Needs highdicom (pulls pydicom, numpy, pillow) in a virtual environment of its own, e.g.
    python3 -m venv .venv-dicom && .venv-dicom/bin/pip install highdicom
(.venv-dicom is git-ignored).
"""

import glob
import json
import math
import os
import sys

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image


def check_seg(folder, report):
    seg = hd.seg.segread(os.path.join(folder, "seg.dcm"))
    assert seg.segmentation_type == hd.seg.SegmentationTypeValues.BINARY
    labels = {n: seg.get_segment_description(n).segment_label for n in (1, 2)}
    assert labels == {1: "GGO", 2: "Consolidation"}, labels
    codes = {n: seg.get_segment_description(n).segmented_property_type.value for n in (1, 2)}
    assert codes == {1: "1217294009", 2: "95436008"}, codes
    lesion_pixels = 0
    for s in report["slices"]:
        uid = s["sop_uid"]
        stem = s["report"][: -len(".json")]
        png = np.asarray(Image.open(os.path.join(folder, f"{stem}_mask.png")))
        masks = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[uid], segment_numbers=[1, 2], assert_missing_frames_are_empty=True
        )[0]
        for i, value in enumerate((1, 2)):
            assert np.array_equal(masks[:, :, i] > 0, png == value), f"slice {uid}, segment {value}"
        lesion_pixels += int((png > 0).sum())
    return len(report["slices"]), lesion_pixels


def numbers(item, tracking="", out=None):
    out = {} if out is None else out
    for child in getattr(item, "ContentSequence", []):
        name = child.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in child else ""
        if name == "112039":
            tracking = child.TextValue
        if child.ValueType == "NUM":
            mv = child.MeasuredValueSequence[0]
            out[f"{tracking}/{name}"] = float(mv.FloatingPointValue)
            assert math.isclose(float(mv.NumericValue), out[f"{tracking}/{name}"], rel_tol=1e-9)
        numbers(child, tracking, out)
    return out


def check_sr(folder, report):
    sr = pydicom.dcmread(os.path.join(folder, "sr.dcm"))
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    n = numbers(sr)
    # highdicom's TID 1500 reader: the GGO and consolidation groups reference SEG segments
    report_sr = hd.sr.srread(os.path.join(folder, "sr.dcm"))
    assert isinstance(report_sr.content, hd.sr.MeasurementReport)
    volumetric = report_sr.content.get_volumetric_roi_measurement_groups()
    assert len(volumetric) == 2, len(volumetric)
    burden = report["burden"]
    for key, value in [
        ("GGO volume/118565006", burden["ggo_ml"]),
        ("Consolidation volume/118565006", burden["consolidation_ml"]),
        ("Lung involvement/LUNGINV", burden["involvement_percent"]),
    ]:
        assert math.isclose(n[key], value, rel_tol=1e-12), (key, n[key], value)
    return n


def check_sc(folder):
    files = sorted(glob.glob(os.path.join(folder, "*_sc.dcm")))
    for f in files:
        ds = pydicom.dcmread(f)
        assert ds.BurnedInAnnotation == "YES" and ds.PhotometricInterpretation == "RGB"
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns, 3)
        assert len(ds.SourceImageSequence) == 1
    return len(files)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    folder = sys.argv[1]
    with open(os.path.join(folder, "series.json")) as f:
        report = json.load(f)
    slices, lesion_pixels = check_seg(folder, report)
    n = check_sr(folder, report)
    scs = check_sc(folder)
    print(f"SEG: {slices} slices x 2 segments equal the mask PNGs ({lesion_pixels} lesion pixels), read by highdicom {hd.__version__}")
    print(f"SR: {len(n)} numbers, volumes and involvement equal series.json (pydicom {pydicom.__version__})")
    print(f"SC: {scs} overlays, RGB with burned-in annotation")


if __name__ == "__main__":
    main()
