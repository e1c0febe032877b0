//! Tests of the lung field: distance transform, synthetic phantoms against their own lung
//! masks (lesions included) and the real slices in `../shared/data/dicom/`.

use super::*;
use crate::data::synth::{LesionClass, PhantomSpec, phantom_with};
use crate::slice::{SliceOptions, read_slices};

use crate::test_support::shared_dicom;

/// The phantom's lesions as separate masks (4-connected components of mask values 2 and 3).
fn lesion_components(mask: &[u8], n: usize) -> Vec<Vec<bool>> {
    let mut seen = vec![false; n * n];
    let mut out = Vec::new();
    for start in 0..n * n {
        if mask[start] < 2 || seen[start] {
            continue;
        }
        let mut m = vec![false; n * n];
        let mut stack = vec![start];
        seen[start] = true;
        while let Some(i) = stack.pop() {
            m[i] = true;
            let (x, y) = (i % n, i / n);
            for (ok, j) in [
                (x > 0, i.wrapping_sub(1)),
                (x + 1 < n, i + 1),
                (y > 0, i.wrapping_sub(n)),
                (y + 1 < n, i + n),
            ] {
                if ok && mask[j] >= 2 && !seen[j] {
                    seen[j] = true;
                    stack.push(j);
                }
            }
        }
        out.push(m);
    }
    out
}

fn iou(a: &[bool], b: &[bool]) -> f64 {
    let inter = a.iter().zip(b).filter(|(x, y)| **x && **y).count();
    let union = a.iter().zip(b).filter(|(x, y)| **x || **y).count();
    inter as f64 / union.max(1) as f64
}

#[test]
fn distance_transform_is_euclidean() {
    let (w, h) = (7, 5);
    let mut f = vec![false; w * h];
    f[2 * w + 3] = true;
    let d = edt_sq(&f, w, h);
    assert_eq!(d[2 * w + 3], 0.0);
    assert_eq!(d[2 * w + 5], 4.0);
    assert_eq!(d[w + 4], 2.0);
    assert_eq!(d[0], 9.0 + 4.0);
    f[4 * w + 6] = true;
    assert_eq!(edt_sq(&f, w, h)[3 * w + 6], 1.0);
}

#[test]
fn phantom_lungs_with_their_lesions_match_the_generator_mask() {
    for seed in 0..4u64 {
        for class in LesionClass::ALL {
            for z in [0.3, 0.5, 0.7] {
                let spec = PhantomSpec {
                    z,
                    ..PhantomSpec::new(seed, class, 512)
                };
                let ph = phantom_with(&spec);
                let hu: Vec<f32> = ph.hu.iter().map(|&v| f32::from(v)).collect();
                let field = lung_field_hu(&hu, 512, 512, ph.pixel_spacing_mm);
                let truth: Vec<bool> = ph.mask.iter().map(|&m| m >= 1).collect();
                let lesions = lesion_components(&ph.mask, 512);
                let alone = iou(&field.mask, &truth);
                let (with, fractions) = field.with_lesions(&lesions);
                assert!(
                    fractions.iter().all(|&f| f >= 0.95),
                    "seed {seed} {class:?} z {z}: {fractions:?}"
                );
                let score = iou(&with, &truth);
                assert!(score >= 0.95, "seed {seed} {class:?} z {z}: IoU {score:.3}");
                // the air-based field alone holds the lungs of a slice without large lesions
                if class != LesionClass::Cp {
                    assert!(alone >= 0.95, "seed {seed} {class:?} z {z}: IoU {alone:.3} alone");
                }
                // every lesion pixel of the phantom is inside the field
                let lesion = ph.mask.iter().filter(|&&m| m >= 2).count();
                let inside = ph.mask.iter().zip(&with).filter(|&(&m, &f)| m >= 2 && f).count();
                assert!(
                    inside as f64 >= 0.95 * lesion as f64,
                    "seed {seed} {class:?} z {z}: {inside}/{lesion} lesion px inside"
                );
            }
        }
    }
}

#[test]
fn no_lungs_in_the_neck_or_abdomen_and_grey_input_agrees_with_hu() {
    for z in [0.05, 0.95] {
        let ph = phantom_with(&PhantomSpec {
            z,
            ..PhantomSpec::new(2, LesionClass::Control, 256)
        });
        let hu: Vec<f32> = ph.hu.iter().map(|&v| f32::from(v)).collect();
        let field = lung_field_hu(&hu, 256, 256, ph.pixel_spacing_mm);
        assert_eq!((field.lungs, field.pixels()), (0, 0), "z {z}");
    }
    let ph = phantom_with(&PhantomSpec::new(9, LesionClass::Cp, 512));
    let hu: Vec<f32> = ph.hu.iter().map(|&v| f32::from(v)).collect();
    let from_hu = lung_field_hu(&hu, 512, 512, ph.pixel_spacing_mm);
    let grey: Vec<f32> = ph
        .hu
        .iter()
        .map(|&v| {
            let g = crate::slice::lung_window(f32::from(v), -600.0, 1500.0);
            f32::from(g) / 255.0 * 1500.0 - 1350.0
        })
        .collect();
    let from_grey = lung_field_hu(&grey, 512, 512, ph.pixel_spacing_mm);
    assert!(from_hu.lungs >= 2, "lungs {}", from_hu.lungs);
    assert!(iou(&from_hu.mask, &from_grey.mask) > 0.98);
}

fn real(name: &str) -> Slice {
    read_slices(&shared_dicom(name), &SliceOptions::default())
        .expect("the shared slice reads")
        .remove(0)
}

#[test]
fn real_slices_lung_base_chest_crop_and_head() {
    // lung bases, 512x512 at 0.29 mm (a zoomed field of view): the two posterior recesses
    let base = lung_field(&real("ct_siemens_unsigned12_jpeg_lossless_badseq.dcm"));
    let fraction = base.pixels() as f64 / (512.0 * 512.0);
    assert!(base.lungs >= 2, "lungs {}", base.lungs);
    assert!((0.01..0.1).contains(&fraction), "base lung fraction {fraction}");
    // both halves of the image hold lung
    let left = (0..512 * 512).filter(|&i| base.mask[i] && i % 512 < 256).count();
    let right = (0..512 * 512).filter(|&i| base.mask[i] && i % 512 >= 256).count();
    assert!(left > 1500 && right > 1500, "left {left} right {right}");
    // the posterior chest crop: lungs beside the spine, touching the crop's border
    let crop = real("chest_ct1_128_crop_explicit_le.dcm");
    let field = lung_field(&crop);
    let fraction = field.pixels() as f64 / (128.0 * 128.0);
    assert!(field.lungs >= 1, "crop lungs {}", field.lungs);
    assert!((0.1..0.7).contains(&fraction), "crop lung fraction {fraction}");
    let hu = crop.hu.as_ref().expect("dicom has HU");
    // the field is the air-like part of the chest plus what closing adds: mostly lung HU
    let lungish = (0..hu.len()).filter(|&i| field.mask[i] && hu[i] < -500.0).count();
    assert!(lungish as f64 > 0.8 * field.pixels() as f64);
    // no bone in the field
    assert!((0..hu.len()).all(|i| !field.mask[i] || hu[i] < 300.0));
    // the head has no lungs
    let head = lung_field(&real("head_ct_693_j2k_lossy.dcm"));
    assert_eq!((head.lungs, head.pixels()), (0, 0));
}

/// A disc of radius `r` px at `(cx, cy)` as a lesion mask.
fn disc(n: usize, cx: usize, cy: usize, r: usize) -> Vec<bool> {
    (0..n * n)
        .map(|i| (i % n).abs_diff(cx).pow(2) + (i / n).abs_diff(cy).pow(2) <= r * r)
        .collect()
}

#[test]
fn detections_in_the_chest_wall_stay_outside_the_field_with_mirrored_hulls() {
    // what the gate is for: "lesions" in the subcutaneous fat and muscles beside the lungs, and
    // behind the spine, are not taken into the field, though the hulls are mirrored across the
    // midline (the lungs are symmetric enough that a mirrored hull stays inside the ribs)
    for seed in 0..4u64 {
        let ph = phantom_with(&PhantomSpec {
            z: 0.5,
            ..PhantomSpec::new(seed, LesionClass::Control, 512)
        });
        let hu: Vec<f32> = ph.hu.iter().map(|&v| f32::from(v)).collect();
        let field = lung_field_hu(&hu, 512, 512, ph.pixel_spacing_mm);
        assert_eq!(field.lungs, 2, "seed {seed}");
        // the lungs' middle row and their lateral extent
        let lung: Vec<usize> = (0..512 * 512).filter(|&i| ph.mask[i] == 1).collect();
        let cy = lung.iter().map(|&i| i / 512).sum::<usize>() / lung.len();
        let row = |x: usize| ph.mask[cy * 512 + x] == 1;
        let (lo, hi) = (
            (0..512).find(|&x| row(x)).unwrap(),
            (0..512).rev().find(|&x| row(x)).unwrap(),
        );
        // the body's outer edge on that row (skin: first pixel denser than -500 HU)
        let body = |x: usize| hu[cy * 512 + x] > -500.0;
        let skin_l = (0..lo).find(|&x| body(x)).unwrap();
        let skin_r = (hi..512).rev().find(|&x| body(x)).unwrap();
        let spine_back = (cy..512).rev().find(|&y| hu[y * 512 + 256] > -500.0).unwrap();
        let walls = [
            disc(512, (skin_l + lo) / 2, cy, 6),
            disc(512, (skin_r + hi) / 2, cy, 6),
            disc(512, 256, spine_back - 12, 6),
        ];
        let (_, fractions) = field.with_lesions(&walls);
        assert!(
            fractions.iter().all(|&f| f < 0.5),
            "seed {seed}: chest-wall discs taken into the field: {fractions:?}"
        );
    }
}
